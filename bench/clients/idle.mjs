// idle: open `connections` WebSockets and hold them; then check that
// `probe` of them, picked at random, still echo.
//
// `deflate: true` offers permessage-deflate as browsers do (Chrome sends
// "permessage-deflate; client_max_window_bits", which is ws's offer for
// `perMessageDeflate: {}`) and counts the connections that negotiated it.
//
// Phases: "opened" (the orchestrator reads the server's memory and threads)
// -> probe -> "done".

import { WebSocket, barrier, config, cpuSeconds, dropAll, emit, hardDeadline, nowMs, openMany, run } from "./common.mjs";

run(async () => {
  const cfg = config();
  const { url, connections, probe = 100, in_flight = 200, probe_timeout_s = 10, deflate = false, deadline_s = 600 } = cfg;
  const state = { phase: "opening" };
  hardDeadline(deadline_s, () => state);

  const cpu0 = process.cpuUsage();
  const t0 = nowMs();
  const wsOptions = deflate ? { perMessageDeflate: {} } : {};
  const { sockets, failed, errors } = await openMany(url, connections, { inFlight: in_flight, wsOptions });
  const openElapsed = (nowMs() - t0) / 1000;
  const opened = sockets.filter(Boolean).length;
  const openCpu = cpuSeconds(cpu0);
  // What the servers answered to the offer: connections per accepted parameter set.
  let deflateNegotiated = 0;
  const deflateParams = {};
  for (const ws of sockets) {
    if (!ws?.extensions.split(",").includes("permessage-deflate")) continue;
    deflateNegotiated += 1;
    const key = JSON.stringify(ws._extensions["permessage-deflate"].params ?? {});
    deflateParams[key] = (deflateParams[key] ?? 0) + 1;
  }
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
    deflate_offered: deflate,
    deflate_negotiated: deflateNegotiated,
    deflate_params: deflateParams,
  });
  dropAll(sockets);
});
