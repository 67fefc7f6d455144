/**
 * `make web`: the page of serve/web, the JS package of serve/js and one export, served on a
 * loopback port with the headers WASM threads need (cross-origin isolation: COOP and COEP).
 *
 *     node serve/web/server.js [--port 8080] [--host 127.0.0.1] [--export export/char]
 *
 *     /            serve/web/ (the page)
 *     /js/         serve/js/src/ and onnxruntime-web's dist/ (the package and its WASM)
 *     /model/      the export folder
 *
 * Only files under those folders are served, only by GET or HEAD. Without an export the page says
 * which commands make one. Prints "serving http://HOST:PORT/" once it listens (port 0: a free one).
 * @module
 */

import { createReadStream, statSync } from 'node:fs';
import { createServer } from 'node:http';
import { dirname, extname, join, normalize, resolve, sep } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';

const HERE = dirname(fileURLToPath(import.meta.url));
const JS = resolve(HERE, '..', 'js');
const TYPES = { '.html': 'text/html; charset=utf-8', '.js': 'text/javascript; charset=utf-8',
  '.mjs': 'text/javascript; charset=utf-8', '.css': 'text/css; charset=utf-8', '.json': 'application/json',
  '.wasm': 'application/wasm', '.onnx': 'application/octet-stream', '.model': 'application/octet-stream',
  '.png': 'image/png' };
const ISOLATION = { 'Cross-Origin-Opener-Policy': 'same-origin', 'Cross-Origin-Embedder-Policy': 'require-corp',
  'Cross-Origin-Resource-Policy': 'same-origin' };

const { values: args } = parseArgs({ options: {
  port: { type: 'string', default: process.env.PORT ?? '8080' },
  host: { type: 'string', default: '127.0.0.1' },
  export: { type: 'string', default: 'export/char' },
} });
const port = Number(args.port);
if (!Number.isInteger(port) || port < 0 || port > 65535) {
  console.error(`--port must be an integer from 0 to 65535, got ${args.port}`);
  process.exit(2);
}
const ortDist = join(JS, 'node_modules', 'onnxruntime-web', 'dist');
try { statSync(ortDist); } catch {
  console.error(`onnxruntime-web is not installed in ${JS}: run \`make install\` (or \`cd serve/js && ONNXRUNTIME_NODE_INSTALL=skip npm ci\`)`);
  process.exit(2);
}

/** URL prefix -> folder. The longest prefix that matches wins. */
const ROOTS = [['/js/ort/', ortDist], ['/js/', join(JS, 'src')], ['/model/', resolve(args.export)], ['/', HERE]];

/** The file a URL path names inside its root, or null. */
function locate(pathname) {
  const [prefix, root] = ROOTS.find(([p]) => pathname.startsWith(p));
  let rest;
  try { rest = decodeURIComponent(pathname.slice(prefix.length)); } catch { return null; }
  if (rest === '' && prefix === '/') rest = 'index.html';
  const path = normalize(join(root, rest));
  if (!path.startsWith(root + sep) || rest.includes('\0')) return null;
  try { return statSync(path).isFile() ? path : null; } catch { return null; }
}

const server = createServer((request, response) => {
  const { pathname } = new URL(request.url, 'http://localhost');
  if (request.method !== 'GET' && request.method !== 'HEAD') {
    response.writeHead(405, { Allow: 'GET, HEAD', ...ISOLATION }).end();
    return;
  }
  if (pathname === '/export.json') { // what the page needs to know before it loads anything
    const body = JSON.stringify({ export: args.export, present: locate('/model/manifest.json') !== null });
    response.writeHead(200, { 'Content-Type': TYPES['.json'], 'Cache-Control': 'no-store', ...ISOLATION }).end(body);
    return;
  }
  const path = locate(pathname);
  if (path === null) {
    response.writeHead(404, { 'Content-Type': 'text/plain; charset=utf-8', ...ISOLATION }).end(`not found: ${pathname}\n`);
    return;
  }
  response.writeHead(200, { 'Content-Type': TYPES[extname(path)] ?? 'application/octet-stream',
    'Cache-Control': 'no-cache', ...ISOLATION });
  if (request.method === 'HEAD') response.end();
  else createReadStream(path).pipe(response);
});

server.on('error', (e) => {
  console.error(`cannot serve on ${args.host}:${port} (${e.code}): choose another port, e.g. make web PORT=8081`);
  process.exit(2);
});
server.listen(port, args.host, () => {
  const { port: bound } = server.address();
  if (locate('/model/manifest.json') === null) {
    console.log(`no export at ${args.export}: the page will say so; make one with \`make train && make export\``);
  }
  console.log(`serving http://${args.host}:${bound}/ (model ${args.export})`);
});
for (const signal of ['SIGINT', 'SIGTERM']) process.on(signal, () => server.close(() => process.exit(0)));
