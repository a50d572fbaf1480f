"""Serves a WSGI app with Werkzeug's threaded server: serve_wsgi.py MODULE:ATTR PORT."""

import importlib
import sys

from werkzeug.serving import run_simple

module, _, attr = sys.argv[1].partition(":")
app = getattr(importlib.import_module(module), attr)
run_simple("127.0.0.1", int(sys.argv[2]), app, threaded=True)
