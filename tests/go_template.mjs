// Renders a Go text/template with Go's own engine (compiled to WebAssembly in the npm package
// @evertdespiegeleer/go-template), for the Ollama TEMPLATE tests.
// stdin: {"module": path of the package's dist/main.js, "template": "...", "data": [object, ...]}
// stdout: a JSON list with one rendering per object.
import fs from 'node:fs';
import { pathToFileURL } from 'node:url';

const request = JSON.parse(fs.readFileSync(0, 'utf8'));
const { parse } = await import(pathToFileURL(request.module).href);
const rendered = [];
for (const data of request.data) rendered.push(await parse(request.template, data));
process.stdout.write(JSON.stringify(rendered));
