// churn: `cycles` short-lived connections from `workers` concurrent lanes.
// One cycle: open, send one `size`-byte text, wait for its echo, start the
// close handshake (1000) and wait until the connection is closed, i.e. the
// server's close frame has come and the TCP connection has ended. The cycle
// time is from `new WebSocket` to that "close" event.
//
// A cycle fails when any step errors, the echo differs, the close code is
// not 1000, or it takes longer than `cycle_timeout_s`.
//
// Phases: warm-up cycles -> "ready" (the orchestrator reads the server's CPU
// time) -> timed cycles -> "done" with the figures.

import { WebSocket, barrier, config, cpuSeconds, emit, hardDeadline, nowMs, percentiles, run } from "./common.mjs";

run(async () => {
  const cfg = config();
  const { url, cycles, workers = 8, size = 32, warmup = 100, cycle_timeout_s = 10, deadline_s = 300 } = cfg;
  const state = { phase: "warmup", completed: 0 };
  hardDeadline(deadline_s, () => state);

  // Resolves to null on success, else the reason it failed.
  const cycle = (n) =>
    new Promise((resolve) => {
      const payload = `churn ${n} `.padEnd(size, ".");
      const ws = new WebSocket(url, { perMessageDeflate: false, handshakeTimeout: cycle_timeout_s * 1000 });
      let step = "open";
      let failure = null;
      let settled = false;
      const settle = (reason) => {
        if (settled) return;
        settled = true;
        clearTimeout(guard);
        resolve(reason);
      };
      const guard = setTimeout(() => {
        settle(`timeout waiting for ${step}`);
        ws.terminate();
      }, cycle_timeout_s * 1000);
      ws.once("open", () => {
        step = "echo";
        ws.send(payload);
      });
      ws.once("message", (data, isBinary) => {
        if (isBinary || data.toString() !== payload) failure = "echo differs";
        step = "close";
        ws.close(1000);
      });
      ws.on("error", (err) => {
        failure ??= `${step}: ${String(err.code ?? err.message).slice(0, 60)}`;
      });
      ws.once("unexpected-response", (_req, res) => {
        failure ??= `HTTP ${res.statusCode}`;
        ws.terminate();
      });
      ws.once("close", (code) => {
        if (!failure && step !== "close") failure = `closed (${code}) waiting for ${step}`;
        else if (!failure && code !== 1000) failure = `close code ${code}`;
        settle(failure);
      });
    });

  // `lanes` workers each run cycles one after the other until `count` are done.
  const runCycles = async (count, lanes, samples) => {
    const errors = {};
    let failed = 0;
    let taken = 0;
    let next = 0;
    const lane = async () => {
      while (next < count) {
        const n = next++;
        const start = nowMs();
        const reason = await cycle(n);
        state.completed += 1;
        if (reason === null) {
          if (samples) samples[taken++] = nowMs() - start;
        } else {
          failed += 1;
          errors[reason] = (errors[reason] ?? 0) + 1;
        }
      }
    };
    await Promise.all(Array.from({ length: Math.min(lanes, count) }, lane));
    return { failed, errors, taken };
  };

  const warm = await runCycles(warmup, workers, null);
  await barrier("ready", { warmup, warmup_failed: warm.failed, warmup_errors: warm.errors });

  state.phase = "timed";
  state.completed = 0;
  const samples = new Float64Array(cycles);
  const cpu0 = process.cpuUsage();
  const t0 = nowMs();
  const result = await runCycles(cycles, workers, samples);
  const elapsed = (nowMs() - t0) / 1000;
  emit("done", {
    cycles,
    workers,
    completed: result.taken,
    failed: result.failed,
    errors: result.errors,
    elapsed_s: elapsed,
    per_s: result.taken / elapsed,
    latency_ms: percentiles(samples, result.taken),
    client_cpu_s: cpuSeconds(cpu0),
  });
});
