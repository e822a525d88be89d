// idle: open `connections` WebSockets and hold them; then check that
// `probe` of them, picked at random, still echo.
//
// Phases: "opened" (the orchestrator reads the server's memory and threads)
// -> probe -> "done".

import { WebSocket, barrier, config, cpuSeconds, dropAll, emit, hardDeadline, nowMs, openMany, run } from "./common.mjs";

run(async () => {
  const cfg = config();
  const { url, connections, probe = 100, in_flight = 200, probe_timeout_s = 10, deadline_s = 600 } = cfg;
  const state = { phase: "opening" };
  hardDeadline(deadline_s, () => state);

  const cpu0 = process.cpuUsage();
  const t0 = nowMs();
  const { sockets, failed, errors } = await openMany(url, connections, { inFlight: in_flight });
  const openElapsed = (nowMs() - t0) / 1000;
  const opened = sockets.filter(Boolean).length;
  const openCpu = cpuSeconds(cpu0);
  await barrier("opened", { opened, failed, errors, open_elapsed_s: openElapsed });

  state.phase = "probing";
  const live = sockets.filter((ws) => ws && ws.readyState === WebSocket.OPEN);
  // Partial Fisher-Yates: `probe` distinct random picks.
  const picks = [];
  for (let i = 0; i < Math.min(probe, live.length); i++) {
    const j = i + Math.floor(Math.random() * (live.length - i));
    [live[i], live[j]] = [live[j], live[i]];
    picks.push(live[i]);
  }
  let echoed = 0;
  await Promise.all(
    picks.map(
      (ws, i) =>
        new Promise((resolve) => {
          const payload = `probe ${i}`;
          const timer = setTimeout(resolve, probe_timeout_s * 1000);
          ws.once("message", (data, isBinary) => {
            if (!isBinary && data.toString() === payload) echoed += 1;
            clearTimeout(timer);
            resolve();
          });
          ws.send(payload);
        }),
    ),
  );
  emit("done", {
    requested: connections,
    opened,
    failed,
    errors,
    open_elapsed_s: openElapsed,
    open_per_s: opened / openElapsed,
    // Opened, then closed by the server while idle (before or during the probe).
    closed_early: opened - sockets.filter((ws) => ws && ws.readyState === WebSocket.OPEN).length,
    probe_sent: picks.length,
    probe_ok: echoed,
    client_cpu_open_s: openCpu,
  });
  dropAll(sockets);
});
