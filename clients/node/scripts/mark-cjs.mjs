// dist/cjs holds CommonJS files under a package whose "type" is "module":
// this marks the folder as CommonJS so Node loads them with require().
import { writeFileSync } from "node:fs";

writeFileSync(new URL("../dist/cjs/package.json", import.meta.url), '{ "type": "commonjs" }\n');
