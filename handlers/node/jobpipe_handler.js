// jobpipe_handler.js - zero-dependency helper (Node 20, CommonJS) for writing
// jobpipe handlers in persistent mode. It speaks the line protocol described
// in docs/handler-protocol.md so a handler only has to provide a function.
//
//   const { serve, progress } = require('./jobpipe_handler');
//   serve(async (job, { signal }) => {
//     progress(job, 'working');
//     return { echo: job.input };
//   }, { init: async () => loadModel() });
'use strict';

const fs = require('fs');
const readline = require('readline');
const { Console } = require('console');

// Protocol lines go to fd 1 with fs.writeSync. Everything else that would
// normally reach stdout (console.log, process.stdout.write) is sent to stderr
// by protectStdout(). Node cannot move fd 1 without native code, so native
// addons or child processes sharing fd 1 are NOT protected (see the docs).
const PROTOCOL_FD = 1;
const sleepCell = new Int32Array(new SharedArrayBuffer(4));

let protectedStdout = false;

function log(message) {
  try {
    process.stderr.write(`jobpipe_handler: ${message}\n`);
  } catch (_) {
    // stderr is gone: nothing to do
  }
}

function writeAll(buf) {
  let off = 0;
  while (off < buf.length) {
    try {
      off += fs.writeSync(PROTOCOL_FD, buf, off, buf.length - off);
    } catch (err) {
      if (err.code === 'EAGAIN') {
        // fd 1 may be non-blocking if something created process.stdout
        // before serve() ran; wait a moment and retry.
        Atomics.wait(sleepCell, 0, 0, 2);
        continue;
      }
      if (err.code === 'EPIPE') {
        log('stdout closed by jobpipe, exiting');
        process.exit(1);
      }
      throw err;
    }
  }
}

function isPlainObject(value) {
  return value !== null && typeof value === 'object' && !Array.isArray(value);
}

function has(obj, key) {
  return Object.prototype.hasOwnProperty.call(obj, key);
}

// A \udXXX surrogate escape preceded by an even number of backslashes, that
// is, an escape and not escaped text.
const LONE_SURROGATE = /(?<!\\)(?:\\\\)*\\ud[89a-f][0-9a-f]{2}/;

// Serialise one protocol object and write it as a single line. If the value
// cannot be serialised (BigInt, cycle, ...), a final line becomes an error
// line for the same id and a partial line is dropped.
function send(obj) {
  let line;
  try {
    line = JSON.stringify(obj);
    // JSON.stringify writes a lone surrogate as a \udXXX escape (paired
    // ones as the character itself); jobpipe rejects such text as not
    // Unicode, so it is refused here, where the job can still be answered.
    if (LONE_SURROGATE.test(line)) {
      throw new Error('text with a lone surrogate (\\ud800-\\udfff) is not Unicode');
    }
  } catch (err) {
    if (!has(obj, 'id') || has(obj, 'ready')) throw err;
    const msg = errorText(err);
    log(`cannot serialise answer for job ${JSON.stringify(obj.id)}: ${msg}`);
    if (has(obj, 'stream') || has(obj, 'progress')) return;
    const fallback = { id: obj.id, error: `result is not JSON-serialisable: ${msg}` };
    if (obj.refresh_worker === true) fallback.refresh_worker = true;
    line = JSON.stringify(fallback);
  }
  writeAll(Buffer.from(line + '\n', 'utf8'));
}

function jsonValue(value) {
  // JSON.stringify would silently drop a key whose value is undefined.
  return value === undefined ? null : value;
}

/**
 * Report progress for a running job: {"id": ..., "progress": value}.
 * `job` is the job object given to the handler (or just its id).
 */
function progress(job, value) {
  const id = isPlainObject(job) ? job.id : job;
  send({ id, progress: jsonValue(value) });
}

/**
 * Say the job is alive without progress: {"id": ..., "heartbeat": true}.
 * Resets the job's --stall-timeout; call it from the code that makes
 * progress, not from a timer, or a hung engine would look alive.
 */
function heartbeat(job) {
  const id = isPlainObject(job) ? job.id : job;
  send({ id, heartbeat: true });
}

function errorText(err) {
  if (err instanceof Error || (isPlainObject(err) && typeof err.message === 'string')) {
    const name = err.name || 'Error';
    return err.message ? `${name}: ${err.message}` : name;
  }
  return String(err);
}

function stringifyError(value) {
  if (typeof value === 'string') return value;
  if (value instanceof Error) return errorText(value);
  if (value !== null && typeof value === 'object') {
    try {
      return JSON.stringify(value);
    } catch (_) {
      // fall through
    }
  }
  return String(value);
}

// Build the final protocol line for a handler's return value.
function finalLine(id, result) {
  const line = { id };
  let refresh = false;
  if (isPlainObject(result)) {
    if (typeof result.refresh_worker === 'boolean') {
      refresh = result.refresh_worker;
      result = { ...result };
      delete result.refresh_worker;
    }
    if (result.error !== undefined && result.error !== null) {
      line.error = stringifyError(result.error);
      if (has(result, 'output')) line.output = jsonValue(result.output);
    } else {
      line.output = result;
    }
  } else {
    line.output = jsonValue(result);
  }
  if (refresh) line.refresh_worker = true;
  return line;
}

function isThenable(value) {
  return value !== null && (typeof value === 'object' || typeof value === 'function') &&
    typeof value.then === 'function';
}

function isGeneratorObject(value) {
  const tag = Object.prototype.toString.call(value);
  return tag === '[object Generator]' || tag === '[object AsyncGenerator]';
}

function isAsyncFunction(fn) {
  const name = fn && fn.constructor && fn.constructor.name;
  return name === 'AsyncFunction' || name === 'AsyncGeneratorFunction';
}

function protectStdout() {
  if (protectedStdout) return;
  protectedStdout = true;
  const err = process.stderr;
  // process.stdout is a lazy getter; replacing it before first use keeps
  // Node from ever wrapping fd 1 in a stream.
  Object.defineProperty(process, 'stdout', {
    configurable: true,
    enumerable: true,
    get() {
      return err;
    },
  });
  // The global console may already hold the real stdout stream: point every
  // console method at stderr.
  const errConsole = new Console({ stdout: err, stderr: err });
  for (const key of Object.keys(console)) {
    if (typeof console[key] === 'function' && typeof errConsole[key] === 'function') {
      console[key] = errConsole[key];
    }
  }
}

function parseLine(text) {
  const trimmed = text.trim();
  if (!trimmed) return null;
  let obj;
  try {
    obj = JSON.parse(trimmed);
  } catch (err) {
    log(`ignoring input line that is not valid JSON (${err.message}): ${trimmed.slice(0, 200)}`);
    return null;
  }
  if (!isPlainObject(obj)) {
    log(`ignoring input line that is not a JSON object: ${trimmed.slice(0, 200)}`);
    return null;
  }
  if (!has(obj, 'id')) {
    log(`ignoring input object without an "id": ${trimmed.slice(0, 200)}`);
    return null;
  }
  if (obj.cancel === true) return obj;
  if (!has(obj, 'input')) {
    log(`job ${JSON.stringify(obj.id)} has no "input" key`);
    send({ id: obj.id, error: 'malformed job: missing "input"' });
    return null;
  }
  return obj;
}

/**
 * Run a persistent jobpipe handler.
 *
 * handler(job, { signal }) may be a plain function, an async function, or a
 * (async) generator function. options.init (sync or async) runs before the
 * {"ready": true} line. Async (generator) functions run concurrently; set
 * options.concurrent to true/false to override the detection (e.g. for
 * transpiled code). The process exits with status 0 on EOF on stdin, after
 * the jobs already started have finished.
 */
function serve(handler, options = {}) {
  if (typeof handler !== 'function') throw new TypeError('serve(handler): handler must be a function');
  protectStdout();
  const concurrent = options.concurrent === undefined ? isAsyncFunction(handler) : !!options.concurrent;

  const jobs = new Map(); // key of id -> { ctrl, cancelled }
  const inflight = new Set();
  let tail = Promise.resolve();

  const keyOf = (id) => JSON.stringify(id);

  async function runJob(job, state) {
    const id = job.id;
    try {
      if (state.cancelled) {
        send({ id, error: 'cancelled' });
        return;
      }
      let result;
      try {
        result = handler(job, { signal: state.ctrl.signal });
        if (isThenable(result)) result = await result;
        if (isGeneratorObject(result)) {
          for await (const part of result) {
            if (state.cancelled) break;
            send({ id, stream: jsonValue(part) });
          }
          result = [];
        }
      } catch (err) {
        if (state.cancelled) {
          send({ id, error: 'cancelled' });
        } else {
          log(`job ${JSON.stringify(id)} failed:`);
          log(err && err.stack ? err.stack : String(err));
          send({ id, error: errorText(err) });
        }
        return;
      }
      send(state.cancelled ? { id, error: 'cancelled' } : finalLine(id, result));
    } finally {
      jobs.delete(keyOf(id));
    }
  }

  function onLine(text) {
    const obj = parseLine(text);
    if (obj === null) return;
    const key = keyOf(obj.id);
    if (obj.cancel === true) {
      const state = jobs.get(key);
      if (!state) {
        log(`cancel for job ${key} which is not running`);
      } else if (!state.cancelled) {
        state.cancelled = true;
        state.ctrl.abort(new Error('cancelled'));
      }
      return;
    }
    if (jobs.has(key)) {
      log(`ignoring job ${key}: a job with this id is already running`);
      return;
    }
    const state = { ctrl: new AbortController(), cancelled: false };
    jobs.set(key, state);
    let p;
    if (concurrent) {
      p = runJob(obj, state);
    } else {
      tail = tail.then(() => runJob(obj, state));
      p = tail;
    }
    inflight.add(p);
    p.finally(() => inflight.delete(p));
  }

  async function main() {
    try {
      if (typeof options.init === 'function') await options.init();
    } catch (err) {
      log('init failed:');
      log(err && err.stack ? err.stack : String(err));
      process.exit(1);
    }
    send({ ready: true });
    const rl = readline.createInterface({ input: process.stdin, crlfDelay: Infinity, terminal: false });
    rl.on('line', onLine);
    rl.on('close', async () => {
      // EOF: let the jobs already started finish, then exit.
      await Promise.allSettled([...inflight]);
      process.exit(0);
    });
  }

  main().catch((err) => {
    log(err && err.stack ? err.stack : String(err));
    process.exit(1);
  });
}

module.exports = { serve, progress, heartbeat };

if (require.main === module) {
  process.stderr.write('jobpipe_handler.js is a library; see handlers/node/echo.js\n');
  process.exit(2);
}
