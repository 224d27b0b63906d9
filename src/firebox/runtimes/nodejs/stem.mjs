/**
 * Firebox's Node.js stem cell: a pre-started Node.js sandbox that is not yet any function's.
 *
 * Started as `node /var/runtime/nodejs/stem.mjs` in a normal isolated sandbox whose `/var/task`
 * is still EMPTY and whose environment holds only neutral values (TZ, LANG, PATH,
 * LD_LIBRARY_PATH, LAMBDA_TASK_ROOT, LAMBDA_RUNTIME_DIR and AWS_LAMBDA_RUNTIME_API, identical
 * for every Node.js function). It:
 *
 * 1. imports the bootstrap (`bootstrap.mjs`: V8 and Node's own start-up, the ES module loader
 *    and the rest of what the runtime needs are paid before any function asks), requires
 *    `warmup.cjs` once (then drops it from `require.cache`) and runs the hot paths of the
 *    runtime's own HTTP client (`rehearseRuntimeClient`: node:net, no connection): V8 compiles
 *    both lazily, on first use, and would otherwise do it inside the function's init. node:http
 *    is never loaded here: a function that uses it loads it in its own init, as on AWS, and the
 *    others do not carry it (node:http and a warm-up server cost a cell 1.4 MB, measured);
 * 2. long-polls `GET /2018-06-01/runtime/firebox/specialize`, the Firebox-private route served
 *    only to stem cells, with that client; the platform answers once it has put one function's
 *    code in /var/task, with that function's complete Lambda environment as a JSON object;
 * 3. replaces `process.env` with it (Node passes each change to the C environment, and a change
 *    of TZ to V8's date cache), shows `bootstrap.mjs` as `process.argv[1]`, and runs the
 *    bootstrap's `main()` with the same client (its kept-alive connection carries the first
 *    `/next`): console set up from AWS_LAMBDA_LOG_FORMAT / _LEVEL, NODE_PATH and
 *    the module loader's global paths set (`Module._initPaths`), the handler loaded (CommonJS or
 *    ES module), then the `/invocation/next` loop.
 *
 * A function whose variables act at process start (NODE_OPTIONS, NODE_PATH, NODE_EXTRA_CA_CERTS,
 * UV_THREADPOOL_SIZE, LANG, LC_*, TZ, OPENSSL_*...) never gets a cell (the worker's
 * `stem_eligible`). From step 3 on the process is exactly a bootstrap-started runtime of that
 * function; the sandbox is never handed to any other function. Node built-ins only.
 */

import { createRequire } from 'node:module';
import { fileURLToPath } from 'node:url';

const STEM = Symbol.for('firebox.stem');
const BOOTSTRAP = new URL('./bootstrap.mjs', import.meta.url);

/** The function's environment (an object), from the platform's answer to the long poll. */
async function waitForFunction(client) {
  const answer = await client.request('GET', '/firebox/specialize');
  if (answer.status !== 200) throw new Error(`specialize answered ${answer.status}`);
  const environment = JSON.parse(answer.body.toString('utf8'));
  if (!environment || typeof environment !== 'object' || Array.isArray(environment)) {
    throw new Error('specialize answered a non-object');
  }
  return environment;
}

/** Run Node's CommonJS file loading once (it compiles lazily) and leave no trace of it. */
function warmCommonJsLoader() {
  const require = createRequire(import.meta.url);
  const warmup = require.resolve('./warmup.cjs');
  require(warmup);
  delete require.cache[warmup];
}

globalThis[STEM] = true;
const { main, RuntimeClient, rehearseRuntimeClient } = await import(BOOTSTRAP.href);
delete globalThis[STEM];
warmCommonJsLoader();
try {
  await rehearseRuntimeClient();
} catch (err) {
  process.stderr.write(`firebox stem cell: warming the HTTP client failed: ${err.message}\n`);
}

const address = process.env.AWS_LAMBDA_RUNTIME_API || '';
let client;
let environment;
try {
  client = new RuntimeClient(address);
  environment = await waitForFunction(client);
} catch (err) {
  process.stderr.write(`firebox stem cell: ${err.message}\n`);
  process.exit(1);
}
for (const name of Object.keys(process.env)) delete process.env[name];
for (const [name, value] of Object.entries(environment)) process.env[name] = String(value);
process.env.AWS_LAMBDA_RUNTIME_API = address;
process.argv[1] = fileURLToPath(BOOTSTRAP); // what a bootstrap-started runtime shows
main(client); // its kept-alive connection carries the first /next
