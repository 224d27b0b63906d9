/**
 * Firebox's Node.js stem cell: a pre-started Node.js sandbox that is not yet any function's.
 *
 * Started as `node /var/runtime/nodejs/stem.mjs` in a normal isolated sandbox whose `/var/task`
 * is still EMPTY and whose environment holds only neutral values (TZ, LANG, PATH,
 * LD_LIBRARY_PATH, LAMBDA_TASK_ROOT, LAMBDA_RUNTIME_DIR and AWS_LAMBDA_RUNTIME_API, identical
 * for every Node.js function). It:
 *
 * 1. imports the bootstrap (`bootstrap.mjs`: V8 and Node's own start-up, the ES module loader
 *    and the rest of what the runtime needs are paid before any function asks), and requires
 *    `warmup.cjs` once (then drops it from `require.cache`) and makes two HTTP requests to a
 *    throw-away server on the sandbox's loopback (then closes both): Node compiles its CommonJS
 *    loader and its HTTP client lazily, on first use, and would otherwise do it inside the
 *    function's init (the specialize answer below comes through node:http; the runtime itself
 *    speaks HTTP over node:net);
 * 2. long-polls `GET /2018-06-01/runtime/firebox/specialize`, the Firebox-private route served
 *    only to stem cells; the platform answers once it has put one function's code in /var/task,
 *    with that function's complete Lambda environment as a JSON object;
 * 3. replaces `process.env` with it (Node passes each change to the C environment, and a change
 *    of TZ to V8's date cache), shows `bootstrap.mjs` as `process.argv[1]`, and runs the
 *    bootstrap's `main()`: console set up from AWS_LAMBDA_LOG_FORMAT / _LEVEL, NODE_PATH and
 *    the module loader's global paths set (`Module._initPaths`), the handler loaded (CommonJS or
 *    ES module), then the `/invocation/next` loop.
 *
 * A function whose variables act at process start (NODE_OPTIONS, NODE_PATH, NODE_EXTRA_CA_CERTS,
 * UV_THREADPOOL_SIZE, LANG, LC_*, TZ, OPENSSL_*...) never gets a cell (the worker's
 * `stem_eligible`). From step 3 on the process is exactly a bootstrap-started runtime of that
 * function; the sandbox is never handed to any other function. Node built-ins only.
 */

import http from 'node:http';
import { createRequire } from 'node:module';
import { fileURLToPath } from 'node:url';

const STEM = Symbol.for('firebox.stem');
const SPECIALIZE_PATH = '/2018-06-01/runtime/firebox/specialize';
const BOOTSTRAP = new URL('./bootstrap.mjs', import.meta.url);

/** The function's environment (an object), from the platform's answer to the long poll. */
function waitForFunction(address) {
  return new Promise((resolve, reject) => {
    const at = address.lastIndexOf(':');
    const port = Number(address.slice(at + 1));
    if (at < 0 || !Number.isInteger(port)) {
      reject(new Error(`AWS_LAMBDA_RUNTIME_API must be host:port, not '${address}'`));
      return;
    }
    const hostname = address.slice(0, at).replace(/^\[|\]$/g, '') || '127.0.0.1';
    const options = { hostname, port, path: SPECIALIZE_PATH, agent: false, headers: { 'User-Agent': 'firebox-stem' } };
    const req = http.get(options, (res) => {
      const chunks = [];
      res.on('data', (chunk) => chunks.push(chunk));
      res.on('error', reject);
      res.on('end', () => {
        if (res.statusCode !== 200) {
          reject(new Error(`specialize answered ${res.statusCode}`));
          return;
        }
        try {
          const environment = JSON.parse(Buffer.concat(chunks).toString('utf8'));
          if (!environment || typeof environment !== 'object' || Array.isArray(environment)) {
            throw new Error('specialize answered a non-object');
          }
          resolve(environment);
        } catch (err) {
          reject(err);
        }
      });
    });
    req.on('error', reject);
  });
}

/** Run Node's CommonJS file loading once (it compiles lazily) and leave no trace of it. */
function warmCommonJsLoader() {
  const require = createRequire(import.meta.url);
  const warmup = require.resolve('./warmup.cjs');
  require(warmup);
  delete require.cache[warmup];
}

/**
 * Run Node's HTTP client once (a GET, then a POST with a JSON body on the same kept-alive
 * connection), against a throw-away server on the sandbox's own loopback, closed afterwards: the
 * specialize long poll uses it. Node compiles that code lazily too: without this, parsing the specialize answer and
 * the first `/next` cost the function's init 10 to 20 ms more (measured in a sandbox).
 */
async function warmHttpClient() {
  const server = http.createServer((req, res) => {
    req.resume();
    req.on('end', () => res.end('{"status":"OK"}'));
  });
  await new Promise((resolve, reject) => server.listen(0, '127.0.0.1', resolve).on('error', reject));
  const agent = new http.Agent({ keepAlive: true });
  const exchange = (method, body) =>
    new Promise((resolve, reject) => {
      const headers = body === undefined ? {} : { 'Content-Type': 'application/json', 'Content-Length': Buffer.byteLength(body) };
      const req = http.request({ host: '127.0.0.1', port: server.address().port, path: '/', method, agent, headers }, (res) => {
        const chunks = [];
        res.on('data', (chunk) => chunks.push(chunk));
        res.on('end', () => resolve(JSON.parse(Buffer.concat(chunks).toString('utf8'))));
        res.on('error', reject);
      });
      req.on('error', reject);
      req.end(body);
    });
  try {
    await exchange('GET');
    await exchange('POST', JSON.stringify({ warm: true }));
  } finally {
    agent.destroy();
    server.closeAllConnections?.();
    await new Promise((resolve) => server.close(resolve));
  }
}

globalThis[STEM] = true;
const { main } = await import(BOOTSTRAP.href);
delete globalThis[STEM];
warmCommonJsLoader();
try {
  await warmHttpClient();
} catch (err) {
  process.stderr.write(`firebox stem cell: warming the HTTP client failed: ${err.message}\n`);
}

const address = process.env.AWS_LAMBDA_RUNTIME_API || '';
let environment;
try {
  environment = await waitForFunction(address);
} catch (err) {
  process.stderr.write(`firebox stem cell: ${err.message}\n`);
  process.exit(1);
}
for (const name of Object.keys(process.env)) delete process.env[name];
for (const [name, value] of Object.entries(environment)) process.env[name] = String(value);
process.env.AWS_LAMBDA_RUNTIME_API = address;
process.argv[1] = fileURLToPath(BOOTSTRAP); // what a bootstrap-started runtime shows
main();
