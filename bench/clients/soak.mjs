// soak: `connections` steady connections each sending a `size`-byte text every
// `interval_ms` (only when its previous echo has come back, so nothing piles
// up), while a churn loop opens `churn_per_s` connections a second, each
// echoing once and closing cleanly. Runs `duration_s` seconds, then reports.
//
// Phases: "ready" (steady connections open; the orchestrator starts sampling
// the server's /proc) -> soak -> "done" with the counts.

import { barrier, config, cpuSeconds, dropAll, emit, hardDeadline, nowMs, openMany, run, WebSocket } from "./common.mjs";

run(async () => {
  const cfg = config();
  const {
    url,
    connections = 200,
    interval_ms = 100,
    churn_per_s = 20,
    churn_in_flight = 50,
    duration_s = 180,
    size = 32,
  } = cfg;
  const stats = {
    echoed: 0,
    mismatched: 0,
    skipped: 0, // a tick came while the previous echo was still outstanding
    steady_closed: 0,
    churned: 0,
    churn_failed: 0,
    churn_skipped: 0, // churn slots skipped because `churn_in_flight` were busy
  };
  const churnErrors = {};
  let state = { phase: "connecting", stats };
  hardDeadline(cfg.deadline_s ?? duration_s + 120, () => state);

  const { sockets, failed, errors } = await openMany(url, connections, { inFlight: 50 });
  const live = sockets.filter(Boolean);
  await barrier("ready", { connected: live.length, failed, errors });
  state.phase = "soak";

  const cpu0 = process.cpuUsage();
  const t0 = nowMs();
  const timers = [];

  // Steady traffic: one timer per connection, phases spread over the interval.
  live.forEach((ws, i) => {
    const payload = `soak ${i} `.padEnd(size, ".");
    let waiting = false;
    ws.on("message", (data, isBinary) => {
      waiting = false;
      if (isBinary || data.toString() !== payload) stats.mismatched += 1;
      stats.echoed += 1;
    });
    ws.on("close", () => {
      stats.steady_closed += 1;
    });
    const start = setTimeout(() => {
      timers.push(
        setInterval(() => {
          if (ws.readyState !== WebSocket.OPEN) return;
          if (waiting) {
            stats.skipped += 1;
            return;
          }
          waiting = true;
          ws.send(payload);
        }, interval_ms),
      );
    }, (i * interval_ms) / live.length);
    timers.push(start);
  });

  // Churn: open, echo once, close with a close handshake; bounded in flight.
  let inFlight = 0;
  const churnFail = (reason) => {
    stats.churn_failed += 1;
    churnErrors[reason] = (churnErrors[reason] ?? 0) + 1;
  };
  const churnOne = (n) => {
    inFlight += 1;
    const payload = `churn ${n} `.padEnd(size, ".");
    const ws = new WebSocket(url, { perMessageDeflate: false, handshakeTimeout: 10000 });
    let echoed = false;
    let settled = false;
    const settle = (ok, reason) => {
      if (settled) return;
      settled = true;
      clearTimeout(guard);
      inFlight -= 1;
      if (ok) stats.churned += 1;
      else churnFail(reason);
    };
    const guard = setTimeout(() => {
      settle(false, echoed ? "close timeout" : "echo timeout");
      ws.terminate();
    }, 10000);
    ws.once("open", () => ws.send(payload));
    ws.once("message", (data, isBinary) => {
      echoed = true;
      if (isBinary || data.toString() !== payload) stats.mismatched += 1;
      else stats.echoed += 1;
      ws.close(1000);
    });
    ws.on("error", (err) => settle(false, String(err.code ?? err.message).slice(0, 80)));
    ws.once("unexpected-response", (_req, res) => {
      settle(false, `HTTP ${res.statusCode}`);
      ws.terminate();
    });
    ws.once("close", (code) => settle(echoed && code === 1000, echoed ? `close ${code}` : "closed before echo"));
  };
  let churnCount = 0;
  if (churn_per_s > 0) {
    const churnTick = Math.max(1, Math.round(1000 / churn_per_s));
    timers.push(
      setInterval(() => {
        if (inFlight >= churn_in_flight) {
          stats.churn_skipped += 1;
          return;
        }
        churnOne(churnCount++);
      }, churnTick),
    );
  }

  await new Promise((resolve) => setTimeout(resolve, duration_s * 1000));
  for (const timer of timers) clearInterval(timer);
  // Let the churn connections in flight finish (bounded by their own guard).
  const drainUntil = nowMs() + 11000;
  while (inFlight > 0 && nowMs() < drainUntil) await new Promise((resolve) => setTimeout(resolve, 50));
  const elapsed = (nowMs() - t0) / 1000;
  emit("done", {
    connected: live.length,
    failed,
    errors,
    ...stats,
    churn_errors: churnErrors,
    churn_opened: churnCount,
    elapsed_s: elapsed,
    client_cpu_s: cpuSeconds(cpu0),
  });
  dropAll(sockets);
});
