"""Embeds the script twin in the package at build time.

The one source is the repository's twin/ratelimit.lua; a build from this
directory copies it into the wheel as redis_exact_ratelimit/ratelimit.lua,
and into the sdist, whose own wheel build then finds it there."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hatchling.builders.hooks.plugin.interface import BuildHookInterface


class TwinHook(BuildHookInterface):  # type: ignore[type-arg]
    def initialize(self, version: str, build_data: dict[str, Any]) -> None:
        root = Path(self.root)
        candidates = [root.parent.parent / "twin" / "ratelimit.lua", root / "ratelimit.lua"]
        source = next((path for path in candidates if path.is_file()), None)
        if source is None:
            raise FileNotFoundError(f"the script twin is missing: looked for {', '.join(map(str, candidates))}")
        if not source.read_text(encoding="utf-8").startswith("#!lua name=ratelimit"):
            raise ValueError(f"{source} does not start with '#!lua name=ratelimit'")
        target = "redis_exact_ratelimit/ratelimit.lua" if self.target_name == "wheel" else "ratelimit.lua"
        build_data["force_include"][str(source)] = target
