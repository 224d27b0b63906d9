/**
 * Firebox's Node.js runtime: the process that serves one Lambda sandbox's invocations.
 *
 * Run as `node /var/runtime/nodejs/bootstrap.mjs` with the Lambda variables set (the contract
 * is the docstring of `firebox/runtimes/api.py`), or imported by a stem cell (`stem.mjs`), which
 * long-polls its specialisation with the exported `RuntimeClient` and calls the exported
 * `main()` once it has its function's environment. One self-contained ES module, Node built-ins
 * only (and trace_env.node beside it, if bin/setup could build it: see `TraceIdVariable`). It
 * behaves as AWS's `aws-lambda-nodejs-runtime-interface-client`:
 *
 *   init:  console patched to Lambda's log format; `_HANDLER` ("dir/file.export.path") resolved
 *          in LAMBDA_TASK_ROOT as AWS does: extensionless file, then file.js (require, or import
 *          when the nearest package.json says "type": "module"), file.mjs (import), file.cjs
 *          (require), then a module resolvable from the task root. Failure -> log "Uncaught
 *          Exception", POST /runtime/init/error, exit 129.
 *   loop:  GET /next -> handler(event, context, callback) -> POST /response or /error, with the
 *          next GET /next written right behind it (HTTP/1.1 pipelining on one kept-alive
 *          connection, node:net: see `Connection`), as the Python runtime does.
 *
 * Completion, as on AWS:
 *   - a returned promise settles the invocation when it settles (async handlers);
 *   - callback(err, result) / context.done / succeed / fail settle it; with
 *     context.callbackWaitsForEmptyEventLoop === true (the default) a successful callback's
 *     result is posted only once the event loop is empty (Node's 'beforeExit' event: the same
 *     mechanism AWS uses; timers, sockets and other ref'ed handles the function left behind
 *     delay the response, and may make it time out, exactly as on AWS);
 *   - a non-async handler that returns without calling back answers `null` once the event loop
 *     is empty; an async handler whose promise never settles answers Runtime.NodeJsExit then.
 * What differs from AWS: AWS freezes the sandbox between invocations, so timers left running
 * after a response (callbackWaitsForEmptyEventLoop = false) pause; here they keep running.
 * Response streaming (`awslambda.streamifyResponse`) is not offered.
 */

import net from 'node:net';
import fs from 'node:fs';
import path from 'node:path';
import util from 'node:util';
import Module, { createRequire } from 'node:module';
import { pathToFileURL } from 'node:url';

const require = createRequire(import.meta.url);
const API_PREFIX = '/2018-06-01/runtime';
const ERROR_TYPE_HEADER = 'Lambda-Runtime-Function-Error-Type';
const USER_AGENT = `firebox-nodejs/${process.version}`;

// --- errors ---------------------------------------------------------------------------------

function defineRuntimeError(name, init) {
  const cls = {
    [name]: class extends Error {
      constructor(reason, promise) {
        super(reason);
        if (init) init(this, reason, promise);
      }
    },
  }[name];
  cls.prototype.name = `Runtime.${name}`;
  return cls;
}

const ImportModuleError = defineRuntimeError('ImportModuleError');
const HandlerNotFound = defineRuntimeError('HandlerNotFound');
const MalformedHandlerName = defineRuntimeError('MalformedHandlerName');
const UserCodeSyntaxError = defineRuntimeError('UserCodeSyntaxError');
const UnhandledPromiseRejection = defineRuntimeError('UnhandledPromiseRejection', (error, reason, promise) => {
  error.reason = reason;
  error.promise = promise;
});
const NodeJsExit = defineRuntimeError('NodeJsExit');
const NODEJS_EXIT_MESSAGE =
  'The Lambda runtime client detected an unexpected Node.js exit code. This is most commonly caused by ' +
  'a Promise that was never settled. For more information, see ' +
  'https://nodejs.org/docs/latest/api/process.html#exit-codes';

function isErrorLike(obj) {
  return (
    obj && typeof obj.name === 'string' && typeof obj.message === 'string' && typeof obj.stack === 'string' &&
    obj.name && obj.message && obj.stack
  );
}

/** The body posted to /error and /init/error. */
function toRapidResponse(error) {
  try {
    if (util.types.isNativeError(error) || isErrorLike(error)) {
      return { errorType: error.name, errorMessage: error.message, trace: error.stack.split('\n') };
    }
    return { errorType: typeof error, errorMessage: String(error), trace: [] };
  } catch (_err) {
    return {
      errorType: 'handled',
      errorMessage:
        'callback called with Error argument, but there was a problem while retrieving one or more of its message, name, and stack',
    };
  }
}

function withEnumerableProperties(error) {
  if (error instanceof Error) {
    const ret = Object.assign({ errorType: error.name, errorMessage: error.message, code: error.code }, error);
    if (typeof error.stack === 'string') ret.stack = error.stack.split('\n');
    return ret;
  }
  return error;
}

/** "\t{...}": how AWS's runtime writes an error into a text log record. */
function toFormatted(error) {
  try {
    return '\t' + JSON.stringify(error, (_k, v) => withEnumerableProperties(v));
  } catch (_err) {
    return '\t' + JSON.stringify(toRapidResponse(error));
  }
}

function intoError(err) {
  return err instanceof Error ? err : new Error(err);
}

// --- logging: console.* in Lambda's format ---------------------------------------------------

const REQUEST_ID_SYMBOL = Symbol.for('aws.lambda.runtime.requestId');
const currentRequestId = {
  get: () => globalThis[REQUEST_ID_SYMBOL],
  set: (id) => {
    globalThis[REQUEST_ID_SYMBOL] = id;
  },
};

const LEVELS = Object.freeze({
  TRACE: { name: 'TRACE', priority: 1 },
  DEBUG: { name: 'DEBUG', priority: 2 },
  INFO: { name: 'INFO', priority: 3 },
  WARN: { name: 'WARN', priority: 4 },
  ERROR: { name: 'ERROR', priority: 5 },
  FATAL: { name: 'FATAL', priority: 6 },
});

function writeStdout(line) {
  try {
    process.stdout.write(line.replace(/\n/g, '\r') + '\n');
  } catch (_err) {
    // nobody reads the log: never let that fail an invocation
  }
}

function logText(level, message, ...params) {
  writeStdout(`${new Date().toISOString()}\t${currentRequestId.get()}\t${level.name}\t${util.format(message, ...params)}`);
}

function jsonErrorReplacer(_key, value) {
  if (value instanceof Error) {
    return Object.assign(
      {
        errorType: value?.constructor?.name ?? 'UnknownError',
        errorMessage: value.message,
        stackTrace: typeof value.stack === 'string' ? value.stack.split('\n') : value.stack,
      },
      value,
    );
  }
  return value;
}

function formatJsonMessage(requestId, timestamp, level, ...messageParams) {
  const result = { timestamp, level: level.name, requestId };
  if (messageParams.length === 1) {
    result.message = messageParams[0];
    try {
      return JSON.stringify(result, jsonErrorReplacer);
    } catch (_err) {
      result.message = util.format(result.message);
      return JSON.stringify(result);
    }
  }
  result.message = util.format(...messageParams);
  for (const param of messageParams) {
    if (param instanceof Error) {
      result.errorType = param?.constructor?.name ?? 'UnknownError';
      result.errorMessage = param.message;
      result.stackTrace = typeof param.stack === 'string' ? param.stack.split('\n') : [];
      break;
    }
  }
  return JSON.stringify(result);
}

function logJson(level, message, ...params) {
  writeStdout(formatJsonMessage(currentRequestId.get(), new Date().toISOString(), level, message, ...params));
}

const structuredConsole = {};

function patchConsole() {
  const json = process.env.AWS_LAMBDA_LOG_FORMAT?.toUpperCase() === 'JSON';
  const log = json ? logJson : logText;
  const minimum = LEVELS[process.env.AWS_LAMBDA_LOG_LEVEL?.toUpperCase()] ?? LEVELS.TRACE;
  const nop = () => {};
  const at = (level) => (level.priority >= minimum.priority ? (msg, ...params) => log(level, msg, ...params) : nop);
  console.trace = at(LEVELS.TRACE);
  console.debug = at(LEVELS.DEBUG);
  console.info = at(LEVELS.INFO);
  console.log = console.info;
  console.warn = at(LEVELS.WARN);
  console.error = at(LEVELS.ERROR);
  console.fatal = (msg, ...params) => log(LEVELS.FATAL, msg, ...params);
  structuredConsole.logError = json
    ? (_msg, err) => console.error(intoError(err))
    : (msg, err) => console.error(msg, toFormatted(intoError(err)));
}

// --- the Runtime API client -----------------------------------------------------------------

/**
 * One HTTP/1.1 connection to the Runtime API (node:net, not node:http: the http client's
 * request and response objects cost more CPU than the rest of an invocation). Requests written
 * together are answered in order (pipelining). The socket is unref'ed whenever no answer is
 * awaited, so an idle connection never keeps the event loop alive while a handler runs (which
 * 'beforeExit' relies on).
 */
class Connection {
  /** `socket`: connecting (net.connect), or never connected (`rehearseRuntimeClient`). */
  constructor(socket) {
    this.socket = socket;
    this.socket.setNoDelay(true);
    this.buffer = Buffer.alloc(0);
    this.waiting = []; // one { resolve, reject } per answer still to come, in request order
    this.answered = 0; // answers read on this connection
    this.usable = true;
    this.open = null; // the head of an answer whose body ends with the connection
    this.socket.on('data', (chunk) => this.onData(chunk));
    this.socket.on('error', (err) => this.fail(err));
    this.socket.on('close', () => this.ended());
  }

  get busy() {
    return this.waiting.length > 0;
  }

  /** Write `data` (`count` requests); resolves to their answers, in order. */
  send(data, count) {
    this.socket.ref();
    const answers = [];
    for (let i = 0; i < count; i += 1) answers.push(new Promise((resolve, reject) => this.waiting.push({ resolve, reject })));
    this.socket.write(data);
    return answers;
  }

  onData(chunk) {
    this.buffer = this.buffer.length ? Buffer.concat([this.buffer, chunk]) : chunk;
    for (;;) {
      const answer = this.parse();
      if (answer === undefined) return;
      this.answered += 1;
      if (answer.status >= 100 && answer.status < 200) continue; // interim: the real one follows
      if (/\bclose\b/i.test(answer.headers.connection || '')) this.usable = false;
      const waiter = this.waiting.shift();
      if (!this.busy) this.socket.unref();
      if (waiter) waiter.resolve(answer);
    }
  }

  /** The first whole answer in the buffer, taken off it; undefined while incomplete. */
  parse() {
    const end = this.buffer.indexOf('\r\n\r\n');
    if (end < 0) return undefined;
    const lines = this.buffer.toString('latin1', 0, end).split('\r\n');
    const status = Number(lines[0].split(' ')[1]);
    if (!lines[0].startsWith('HTTP/') || !Number.isInteger(status)) {
      this.fail(new Error(`bad status line '${lines[0].slice(0, 100)}'`));
      return undefined;
    }
    const headers = {};
    for (let i = 1; i < lines.length; i += 1) {
      const colon = lines[i].indexOf(':');
      if (colon < 0) continue;
      const name = lines[i].slice(0, colon).trim().toLowerCase();
      const value = lines[i].slice(colon + 1).trim();
      headers[name] = name in headers ? `${headers[name]}, ${value}` : value;
    }
    let start = end + 4;
    let body;
    if (status === 204 || status === 304 || (status >= 100 && status < 200)) {
      body = Buffer.alloc(0);
    } else if (/\bchunked\b/i.test(headers['transfer-encoding'] || '')) {
      const chunks = [];
      for (;;) {
        const lineEnd = this.buffer.indexOf('\r\n', start);
        if (lineEnd < 0) return undefined;
        const size = parseInt(this.buffer.toString('latin1', start, lineEnd).split(';')[0], 16) || 0;
        if (size === 0) { // then trailer lines, if any, and a blank line
          const after = lineEnd + 2;
          if (this.buffer.length < after + 2) return undefined;
          const blank = this.buffer[after] === 13 && this.buffer[after + 1] === 10 ? after - 2 : this.buffer.indexOf('\r\n\r\n', after);
          if (blank < 0) return undefined;
          start = blank + 4;
          break;
        }
        if (this.buffer.length < lineEnd + 2 + size + 2) return undefined;
        chunks.push(this.buffer.subarray(lineEnd + 2, lineEnd + 2 + size));
        start = lineEnd + 2 + size + 2;
      }
      body = Buffer.concat(chunks);
    } else if (headers['content-length'] !== undefined) {
      const length = Number(headers['content-length']);
      if (this.buffer.length < start + length) return undefined;
      body = this.buffer.subarray(start, start + length);
      start += length;
    } else {
      this.open = { status, headers, start }; // delimited by the end of the connection: see ended()
      return undefined;
    }
    this.buffer = this.buffer.subarray(start);
    return { status, headers, body };
  }

  /** The API closed the connection: an answer without length ends here; the rest fail. */
  ended() {
    if (this.open && this.waiting.length) {
      const { status, headers, start } = this.open;
      this.open = null;
      this.answered += 1;
      this.waiting.shift().resolve({ status, headers, body: this.buffer.subarray(start) });
    }
    this.fail(Object.assign(new Error('the Runtime API closed the connection'), { code: 'ECONNRESET' }));
  }

  fail(err) {
    if (!this.usable && !this.busy) return;
    this.usable = false;
    const waiting = this.waiting;
    this.waiting = [];
    for (const waiter of waiting) waiter.reject(err);
    this.socket.destroy();
  }

  close() {
    this.usable = false;
    this.socket.destroy();
  }
}

export class RuntimeClient {
  constructor(address) {
    const at = (address || '').lastIndexOf(':');
    const port = Number(address.slice(at + 1));
    if (at < 0 || !Number.isInteger(port)) throw new Error(`AWS_LAMBDA_RUNTIME_API must be host:port, not '${address}'`);
    this.hostname = address.slice(0, at).replace(/^\[|\]$/g, '') || '127.0.0.1';
    this.port = port;
    this.host = address;
    this.connection = null; // kept alive between invocations
    this.pendingNext = null; // the answer to a GET /next sent behind the last result, if any
  }

  encode(method, urlPath, body, headers) {
    let head = `${method} ${API_PREFIX}${urlPath} HTTP/1.1\r\nHost: ${this.host}\r\nUser-Agent: ${USER_AGENT}\r\n`;
    for (const name of Object.keys(headers || {})) head += `${name}: ${headers[name]}\r\n`;
    if (body !== undefined) head += `Content-Length: ${Buffer.byteLength(body)}\r\n`;
    return body === undefined ? `${head}\r\n` : `${head}\r\n${body}`;
  }

  /**
   * Send a request (and, with `thenNext`, GET /next right behind it, in the same write); resolves
   * to its answer, the next event's answer then waiting in `pendingNext`. A request made while
   * the kept connection awaits an answer (an error posted by a stray callback during a /next
   * long poll) goes on a connection of its own: it must not queue behind the poll.
   */
  async request(method, urlPath, body, headers, thenNext = false) {
    const data = this.encode(method, urlPath, body, headers) + (thenNext ? this.encode('GET', '/invocation/next') : '');
    for (let attempt = 1; ; attempt += 1) {
      const own = this.connection !== null && this.connection.busy;
      let connection = own ? null : this.connection;
      const reused = connection !== null && connection.usable;
      if (!reused) {
        connection = new Connection(net.connect({ host: this.hostname, port: this.port }));
        if (!own) this.connection = connection;
      }
      const before = connection.answered;
      const answers = connection.send(data, thenNext ? 2 : 1);
      if (thenNext) {
        // An unanswered /next took no event: if the API hung up after the first answer, ask again.
        this.pendingNext = answers[1].catch(() => null);
      }
      try {
        const answer = await answers[0];
        if (own) connection.close();
        return answer;
      } catch (err) {
        // A kept-alive connection the API had closed (nothing came back): one fresh try.
        if (reused && attempt === 1 && connection.answered === before) continue;
        if (own) connection.close();
        throw err;
      }
    }
  }

  async nextInvocation() {
    const pending = this.pendingNext;
    this.pendingNext = null;
    const res = (pending && (await pending)) || (await this.request('GET', '/invocation/next'));
    if (res.status !== 200) {
      throw new RuntimeAPIError(`GET /next answered ${res.status}: ${res.body.toString('utf8', 0, 200)}`);
    }
    return { bodyJson: res.body.toString('utf8'), headers: res.headers };
  }

  /** Serialises synchronously (throws if it cannot, as AWS's client does), posts, then `callback`. */
  postInvocationResponse(response, id, callback, thenNext = false) {
    const body = trySerializeResponse(response);
    this.post(`/invocation/${encodeURIComponent(id)}/response`, body, {}, callback, thenNext);
  }

  postInvocationError(error, id, callback, thenNext = false) {
    const body = trySerializeResponse(toRapidResponse(error));
    this.post(`/invocation/${encodeURIComponent(id)}/error`, body, { [ERROR_TYPE_HEADER]: 'Unhandled' }, callback, thenNext);
  }

  postInitError(error, callback) {
    const response = toRapidResponse(error);
    const errorType = String(response.errorType || 'Unhandled').replace(/[^\x20-\x7e]/g, '?');
    this.post('/init/error', trySerializeResponse(response), { [ERROR_TYPE_HEADER]: errorType }, callback);
  }

  /** `thenNext`: the caller's callback asks for the next event: ask for it now, in the same write. */
  post(urlPath, body, headers, callback, thenNext = false) {
    this.request('POST', urlPath, body, { 'Content-Type': 'application/json', ...headers }, thenNext).then(
      () => callback(),
      () => platformGone(),
    );
  }
}

class RuntimeAPIError extends Error {}

/**
 * Run the client's hot paths once, with no Runtime API and no connection: encode a result with
 * the next GET behind it, read an event and a 202 as they arrive. V8 compiles lazily, so a stem
 * cell (stem.mjs) calls this before it knows its function, and the function's init does not
 * compile them. A throw-away server to talk to would cost the cell 0.8 MB more (measured).
 */
export function rehearseRuntimeClient() {
  const client = new RuntimeClient('127.0.0.1:9001');
  client.encode('POST', '/invocation/rehearsal/response', '{"rehearsal":true}', { 'Content-Type': 'application/json' });
  const connection = new Connection(new net.Socket());
  const answers = connection.send('', 2);
  connection.onData(Buffer.from('HTTP/1.1 202 Accepted\r\nContent-Type: application/json\r\nContent-Length: 15\r\n\r\n{"status":"OK"}'));
  connection.onData(Buffer.from('HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nLambda-Runtime-Aws-Request-Id: rehearsal\r\n'));
  connection.onData(Buffer.from('Lambda-Runtime-Deadline-Ms: 0\r\nContent-Length: 2\r\n\r\n{}'));
  connection.close();
  return Promise.all(answers).then((read) => read.map((answer) => JSON.parse(answer.body.toString('utf8'))));
}

function trySerializeResponse(body) {
  try {
    return JSON.stringify(body === undefined ? null : body);
  } catch (_err) {
    throw new Error('Unable to stringify response body');
  }
}

/** The Runtime API went away: the sandbox is being torn down. Leave quietly. */
function platformGone(err) {
  if (err instanceof RuntimeAPIError) process.stderr.write(`firebox runtime: ${err.message}\n`);
  process.exit(1);
}

// --- loading the handler ----------------------------------------------------------------------

const FUNCTION_EXPR = /^([^.]*)\.(.*)$/;

function moduleRootAndHandler(fullHandlerString) {
  const handlerString = path.basename(fullHandlerString);
  const moduleRoot = fullHandlerString.substring(0, fullHandlerString.indexOf(handlerString));
  return [moduleRoot, handlerString];
}

function splitHandlerString(handler) {
  const match = handler.match(FUNCTION_EXPR);
  if (!match || match.length !== 3) throw new MalformedHandlerName('Bad handler');
  return [match[1], match[2]];
}

function resolveHandler(object, nestedProperty) {
  return nestedProperty.split('.').reduce((nested, key) => nested && nested[key], object);
}

function tryRequireFile(file, extension) {
  const filePath = file + (extension || '');
  return fs.existsSync(filePath) ? require(filePath) : undefined;
}

async function tryAwaitImport(file, extension) {
  const filePath = file + (extension || '');
  return fs.existsSync(filePath) ? await import(pathToFileURL(filePath).href) : undefined;
}

function hasFolderPackageJsonTypeModule(folder) {
  if (folder.endsWith('/node_modules')) return false;
  const pj = path.join(folder, 'package.json');
  if (fs.existsSync(pj)) {
    try {
      const pkg = JSON.parse(fs.readFileSync(pj, 'utf8'));
      if (pkg) return pkg.type === 'module';
    } catch (e) {
      console.warn(`${pj} cannot be read, it will be ignored for ES module detection purposes.`, e);
      return false;
    }
  }
  if (folder === '/' || path.dirname(folder) === folder) return false;
  return hasFolderPackageJsonTypeModule(path.resolve(folder, '..'));
}

async function tryRequire(appRoot, moduleRoot, module) {
  const lambdaStylePath = path.resolve(appRoot, moduleRoot, module);
  const extensionless = tryRequireFile(lambdaStylePath);
  if (extensionless) return extensionless;
  const pjHasModule = hasFolderPackageJsonTypeModule(path.dirname(lambdaStylePath));
  if (!pjHasModule) {
    const loaded = tryRequireFile(lambdaStylePath, '.js');
    if (loaded) return loaded;
  }
  const loaded =
    (pjHasModule && (await tryAwaitImport(lambdaStylePath, '.js'))) ||
    (await tryAwaitImport(lambdaStylePath, '.mjs')) ||
    tryRequireFile(lambdaStylePath, '.cjs');
  if (loaded) return loaded;
  // Not a file: a package resolvable from the task root (node_modules, NODE_PATH).
  const nodeStylePath = require.resolve(module, { paths: [appRoot, path.resolve(appRoot, moduleRoot)] });
  return require(nodeStylePath);
}

async function loadUserApp(appRoot, moduleRoot, module) {
  try {
    return await tryRequire(appRoot, moduleRoot, module);
  } catch (e) {
    if (e instanceof SyntaxError) throw new UserCodeSyntaxError(e);
    if (e && e.code === 'MODULE_NOT_FOUND') throw new ImportModuleError(e);
    throw e;
  }
}

async function loadHandler(appRoot, fullHandlerString) {
  if (fullHandlerString.includes('..')) {
    throw new MalformedHandlerName(
      `'${fullHandlerString}' is not a valid handler name. Use absolute paths when specifying root directories in handler names.`,
    );
  }
  const [moduleRoot, moduleAndHandler] = moduleRootAndHandler(fullHandlerString);
  const [module, handlerPath] = splitHandlerString(moduleAndHandler);
  const userApp = await loadUserApp(appRoot, moduleRoot, module);
  const handlerFunc = resolveHandler(userApp, handlerPath);
  if (!handlerFunc) throw new HandlerNotFound(`${fullHandlerString} is undefined or not exported`);
  if (typeof handlerFunc !== 'function') throw new HandlerNotFound(`${fullHandlerString} is not a function`);
  return handlerFunc;
}

// --- one invocation ---------------------------------------------------------------------------

let beforeExitListener = () => {};
const beforeExit = {
  set: (listener) => {
    beforeExitListener = listener;
  },
  reset: () => {
    beforeExitListener = () => {};
  },
};

/** callback, the callback part of the context, and markCompleted (AWS's CallbackContext). */
function buildCallbackContext(client, id, scheduleNext) {
  // Every post here is followed by the next GET /next (`scheduleNext`): sent with it.
  const postError = (err, callback) => {
    structuredConsole.logError('Invoke Error', err);
    client.postInvocationError(err, id, callback, true);
  };
  let isCompleteInvoked = false;
  const complete = (result, callback) => {
    if (isCompleteInvoked) {
      console.error('Invocation has already been reported as done. Cannot call complete more than once per invocation.');
      return;
    }
    isCompleteInvoked = true;
    client.postInvocationResponse(result, id, callback, true);
  };
  let waitForEmptyEventLoop = true;
  const callback = (err, result) => {
    beforeExit.reset();
    if (err !== undefined && err !== null) {
      postError(err, scheduleNext);
    } else if (!waitForEmptyEventLoop) {
      complete(result, scheduleNext);
    } else {
      beforeExit.set(() => setImmediate(() => complete(result, scheduleNext)));
    }
  };
  const done = (err, result) => {
    beforeExit.reset();
    if (err !== undefined && err !== null) postError(err, scheduleNext);
    else complete(result, scheduleNext);
  };
  const succeed = (result) => done(null, result);
  const fail = (err) => (err === undefined || err === null ? done('handled') : done(err, null));
  const context = {
    get callbackWaitsForEmptyEventLoop() {
      return waitForEmptyEventLoop;
    },
    set callbackWaitsForEmptyEventLoop(value) {
      waitForEmptyEventLoop = value;
    },
    succeed,
    fail,
    done,
  };
  // Only the first of callback / succeed / fail / done counts.
  let finished = false;
  const onlyFirst = (fn) =>
    function (...args) {
      if (!finished) {
        fn(...args);
        finished = true;
      }
    };
  context.succeed = onlyFirst(context.succeed);
  context.fail = onlyFirst(context.fail);
  context.done = onlyFirst(context.done);
  return [onlyFirst(callback), context, () => (isCompleteInvoked = true)];
}

function parseJsonHeader(value, name) {
  if (value === undefined) return undefined;
  try {
    return JSON.parse(value);
  } catch (err) {
    throw new Error(`Cannot parse ${name} as json: ${err.toString()}`);
  }
}

/**
 * `_X_AMZN_TRACE_ID`, set for each invocation as AWS's runtime sets it, without setenv's leak.
 * `process.env.X = v` is setenv(3), and glibc's setenv keeps a copy of every distinct value it
 * was ever given, for good: a trace ID is new for every invocation, so a warm sandbox grew by
 * ~110 bytes per invocation (bench/warm_memory.py). The addon's putenv(3) makes the environment
 * point into a Buffer of ours instead, rewritten in place for each value (a bigger one, which
 * the addon keeps alive like every other, when a value does not fit): process.env reads the environment through getenv, so it sees the
 * value, as do children and native code. Without the addon (bin/setup builds it when gcc and
 * Node's headers are there), process.env, leak included.
 */
export class TraceIdVariable {
  static NAME = '_X_AMZN_TRACE_ID';

  constructor(addon = loadTraceEnvAddon()) {
    this.addon = addon;
    this.prefix = Buffer.from(`${TraceIdVariable.NAME}=`);
    this.buffer = null; // the last Buffer handed to putenv (the addon holds every one for good)
  }

  set(value) {
    if (this.addon === null || value.includes('\0')) {
      process.env[TraceIdVariable.NAME] = value;
      return;
    }
    const start = this.prefix.length;
    const end = start + Buffer.byteLength(value);
    let { buffer } = this;
    if (buffer === null || buffer.length <= end) { // (room for the terminating NUL)
      buffer = Buffer.allocUnsafeSlow(Math.max(256, 2 * end)); // (never from the pool: it is ours alone)
      this.prefix.copy(buffer);
      this.buffer = buffer;
    }
    buffer.write(value, start);
    buffer[end] = 0;
    this.addon.putenv(buffer); // each time: the function may have set or unset the variable itself
  }
}

function loadTraceEnvAddon() {
  try {
    return require('./trace_env.node');
  } catch {
    return null;
  }
}

const traceIdVariable = new TraceIdVariable();

function attachEnvironmentData(context, headers) {
  if (headers['lambda-runtime-trace-id']) traceIdVariable.set(headers['lambda-runtime-trace-id']);
  else delete process.env._X_AMZN_TRACE_ID;
  const deadline = Number(headers['lambda-runtime-deadline-ms']);
  return Object.assign(
    context,
    {
      functionVersion: process.env.AWS_LAMBDA_FUNCTION_VERSION,
      functionName: process.env.AWS_LAMBDA_FUNCTION_NAME,
      memoryLimitInMB: process.env.AWS_LAMBDA_FUNCTION_MEMORY_SIZE,
      logGroupName: process.env.AWS_LAMBDA_LOG_GROUP_NAME,
      logStreamName: process.env.AWS_LAMBDA_LOG_STREAM_NAME,
    },
    {
      clientContext: parseJsonHeader(headers['lambda-runtime-client-context'], 'ClientContext'),
      identity: parseJsonHeader(headers['lambda-runtime-cognito-identity'], 'CognitoIdentity'),
      invokedFunctionArn: headers['lambda-runtime-invoked-function-arn'],
      awsRequestId: headers['lambda-runtime-aws-request-id'],
      tenantId: headers['lambda-runtime-aws-tenant-id'],
      getRemainingTimeInMillis: () => deadline - Date.now(),
    },
  );
}

function isPromise(obj) {
  return obj && obj.then && typeof obj.then === 'function';
}

class Runtime {
  constructor(client, handler, errorCallbacks) {
    this.client = client;
    this.handler = handler;
    this.isAsync = handler?.constructor?.name === 'AsyncFunction';
    this.errorCallbacks = errorCallbacks;
  }

  scheduleIteration() {
    setImmediate(() => {
      this.handleOnce().then(
        () => {},
        (err) => {
          if (err instanceof RuntimeAPIError || err?.code) return platformGone(err);
          console.log(`Unexpected Top Level Error: ${err.toString()}`);
          this.errorCallbacks.uncaughtException(err);
        },
      );
    });
  }

  async handleOnce() {
    const { bodyJson, headers } = await this.client.nextInvocation();
    const invokeId = headers['lambda-runtime-aws-request-id'];
    currentRequestId.set(invokeId);
    const [callback, callbackContext, markCompleted] = buildCallbackContext(
      this.client,
      invokeId,
      this.scheduleIteration.bind(this),
    );
    try {
      this.errorCallbacks.uncaughtException = (error) => {
        this.client.postInvocationError(error, invokeId, () => process.exit(129));
      };
      this.errorCallbacks.unhandledRejection = (error) => {
        this.client.postInvocationError(error, invokeId, () => process.exit(128));
      };
      beforeExit.set(() => {
        markCompleted();
        if (this.isAsync) {
          const error = new NodeJsExit(NODEJS_EXIT_MESSAGE);
          structuredConsole.logError('Invoke Error', error);
          this.client.postInvocationError(error, invokeId, () => this.scheduleIteration(), true);
        } else {
          this.client.postInvocationResponse(null, invokeId, () => this.scheduleIteration(), true);
        }
      });
      const result = this.handler(JSON.parse(bodyJson), attachEnvironmentData(callbackContext, headers), callback);
      if (isPromise(result)) {
        result.then(callbackContext.succeed, callbackContext.fail).catch(callbackContext.fail);
      }
    } catch (err) {
      callback(err);
    }
  }
}

// --- main -----------------------------------------------------------------------------------

function setupNodePath(taskRoot) {
  if (process.env.NODE_PATH) return; // the function's own setting wins, as on AWS
  const major = process.versions.node.split('.')[0];
  const libs = (process.env.FIREBOX_RUNTIME_LIBS || '').split(':').filter(Boolean);
  process.env.NODE_PATH = [`/opt/nodejs/node${major}/node_modules`, '/opt/nodejs/node_modules', ...libs, taskRoot].join(':');
  Module._initPaths?.(); // eslint-disable-line no-underscore-dangle -- re-read NODE_PATH for require()
}

/**
 * Run the runtime. A stem cell passes the client it long-polled its specialisation with (its
 * kept-alive connection then carries the first /next); a started bootstrap makes its own.
 */
export async function main(stemClient = null) {
  patchConsole();
  const taskRoot = process.env.LAMBDA_TASK_ROOT || '/var/task';
  setupNodePath(taskRoot);
  try {
    process.chdir(taskRoot);
  } catch (_err) {
    // keep the working directory we were given
  }
  let client = stemClient;
  try {
    client ??= new RuntimeClient(process.env.AWS_LAMBDA_RUNTIME_API);
  } catch (err) {
    process.stderr.write(`firebox runtime: ${err.message}\n`);
    process.exit(1);
  }
  const errorCallbacks = {
    uncaughtException: (error) => client.postInitError(error, () => process.exit(129)),
    unhandledRejection: (error) => client.postInitError(error, () => process.exit(128)),
  };
  process.on('uncaughtException', (error) => {
    structuredConsole.logError('Uncaught Exception', error);
    errorCallbacks.uncaughtException(error);
  });
  process.on('unhandledRejection', (reason, promise) => {
    const error = new UnhandledPromiseRejection(reason, promise);
    structuredConsole.logError('Unhandled Promise Rejection', error);
    errorCallbacks.unhandledRejection(error);
  });
  beforeExit.reset();
  process.on('beforeExit', () => beforeExitListener());

  let handler;
  try {
    handler = await loadHandler(taskRoot, process.env._HANDLER || '');
  } catch (error) {
    structuredConsole.logError('Uncaught Exception', error);
    errorCallbacks.uncaughtException(error);
    return;
  }
  new Runtime(client, handler, errorCallbacks).scheduleIteration();
}

// A stem cell (stem.mjs) imports this module before it knows its function, and calls main() then.
if (!globalThis[Symbol.for('firebox.stem')]) main();
