// Shared plumbing of the load generators driven by bench/run.py.
//
// Each client takes one JSON argument (its configuration) and talks to the
// orchestrator in JSON lines: it prints {"phase": NAME, ...} at each
// barrier and, when the orchestrator has to measure the server there, waits
// for one line on stdin before going on. The last line is {"phase": "done"}
// (or {"phase": "error"}). Everything is bounded: a hard deadline ends the
// process whatever it is waiting for.

import { createInterface } from "node:readline";
import WebSocket from "ws";

export { WebSocket };

export function config() {
  const cfg = JSON.parse(process.argv[2] ?? "{}");
  const url = new URL(cfg.url);
  if (url.hostname !== "127.0.0.1") {
    throw new Error(`refusing to load anything but 127.0.0.1 (got ${url.hostname})`);
  }
  return cfg;
}

export function emit(phase, fields = {}) {
  process.stdout.write(JSON.stringify({ phase, ...fields }) + "\n");
}

// The deadline of the whole run: past it, report what is known and exit.
export function hardDeadline(seconds, state) {
  const timer = setTimeout(() => {
    emit("error", { error: `client deadline of ${seconds}s reached`, state: state() });
    process.exit(3);
  }, seconds * 1000);
  timer.unref();
}

const stdinLines = createInterface({ input: process.stdin });
const waiting = [];
const buffered = [];
stdinLines.on("line", (line) => {
  const resolve = waiting.shift();
  if (resolve) resolve(line);
  else buffered.push(line);
});
let stdinClosed = false;
stdinLines.on("close", () => {
  stdinClosed = true;
  // Waiting for an orchestrator that went away: nobody is left to report to.
  if (waiting.length) process.exit(4);
});

// Print a barrier and wait for the orchestrator's go-ahead.
export function barrier(phase, fields = {}) {
  emit(phase, { wait: true, ...fields });
  if (buffered.length) return Promise.resolve(buffered.shift());
  if (stdinClosed) process.exit(4);
  return new Promise((resolve) => waiting.push(resolve));
}

export function cpuSeconds(since) {
  const usage = process.cpuUsage(since);
  return { user: usage.user / 1e6, system: usage.system / 1e6, total: (usage.user + usage.system) / 1e6 };
}

export function nowMs() {
  return Number(process.hrtime.bigint()) / 1e6;
}

// Percentiles by the nearest-rank method over a typed array (sorted in place).
export function percentiles(samples, count) {
  if (!count) return { p50: null, p99: null, max: null, count: 0 };
  const view = samples.subarray(0, count).sort();
  const rank = (p) => view[Math.min(count - 1, Math.max(0, Math.ceil((p / 100) * count) - 1))];
  return { p50: rank(50), p99: rank(99), max: view[count - 1], count };
}

// Open `count` connections with at most `inFlight` handshakes at once.
// Resolves to {sockets, failed, errors}; sockets[i] is null when i failed.
// `wsOptions` go to ws's constructor over the defaults (no permessage-deflate).
export async function openMany(
  url,
  count,
  { inFlight = 200, timeoutMs = 30000, onSocket = null, wsOptions = {} } = {},
) {
  const sockets = new Array(count).fill(null);
  const errors = {};
  let failed = 0;
  let next = 0;
  const openOne = (index) =>
    new Promise((resolve) => {
      let settled = false;
      const ws = new WebSocket(url, { perMessageDeflate: false, handshakeTimeout: timeoutMs, ...wsOptions });
      if (onSocket) onSocket(ws, index);
      const settle = (ok, reason) => {
        if (settled) return;
        settled = true;
        if (ok) {
          sockets[index] = ws;
          ws.on("error", () => {}); // a later failure shows as a missing reply or an early close
        } else {
          failed += 1;
          errors[reason] = (errors[reason] ?? 0) + 1;
          ws.terminate();
        }
        resolve();
      };
      ws.once("open", () => settle(true));
      ws.once("error", (err) => settle(false, String(err.code ?? err.message).slice(0, 80)));
      ws.once("unexpected-response", (_req, res) => settle(false, `HTTP ${res.statusCode}`));
      ws.once("close", () => settle(false, "closed before open"));
    });
  const lane = async () => {
    while (next < count) {
      const index = next++;
      await openOne(index);
    }
  };
  await Promise.all(Array.from({ length: Math.min(inFlight, count) }, lane));
  return { sockets, failed, errors };
}

// Close everything without waiting for close handshakes: the run is over.
export function dropAll(sockets) {
  for (const ws of sockets) if (ws) ws.terminate();
}

export function run(main) {
  main().then(
    () => process.exit(0),
    (err) => {
      emit("error", { error: String(err?.stack ?? err) });
      process.exit(2);
    },
  );
}
