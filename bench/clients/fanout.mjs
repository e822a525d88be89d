// fan-out: `receivers` connections on a broadcast endpoint, one more that
// sends `messages` texts at `rate` per second; every receiver checks what
// arrives: delivered, duplicates, reordering, latency from the send.
//
// The sender and the receivers share this process and its clock, so a
// latency is "time of the receive callback - time of the send call"; it
// includes this event loop's own delay, reported as client CPU.
//
// `frozen` more connections join the broadcast and then stop reading (their
// socket is paused, so the kernel buffers fill and the server has to hold or
// drop what it sends them); their local ports go with "ready" so that the
// orchestrator can watch their server side in /proc/net/tcp. After the
// drain they read again for up to `resume_s` seconds, to see what the server
// left them: how many messages, and whether and how it closed them. Node
// cannot shrink a TCP socket's receive buffer, so theirs is the kernel's
// default (tcp_rmem), which autotuning does not grow while nothing is read.
// `drained_barrier: true` stops at a "drained" barrier before that, so that
// the orchestrator stops watching before the frozen ones move again.
//
// Phases: "ready" (all connected; the orchestrator reads the server's CPU)
// -> send and drain (-> "drained" -> frozen ones resume) -> "done".

import { barrier, config, cpuSeconds, dropAll, emit, hardDeadline, nowMs, openMany, percentiles, run } from "./common.mjs";

run(async () => {
  const cfg = config();
  const { url, receivers, messages, rate, size = 32, drain_timeout_s = 15, deadline_s = 300 } = cfg;
  const { frozen = 0, resume_s = 3, drained_barrier = false } = cfg;
  const state = { phase: "connecting" };
  hardDeadline(deadline_s, () => state);

  const sentAt = new Float64Array(messages).fill(-1);
  const seen = new Uint8Array(receivers * messages);
  const lastSeq = new Int32Array(receivers).fill(-1);
  const samples = new Float64Array(receivers * messages);
  let count = 0; // unique deliveries = latency samples
  let duplicates = 0;
  let reordered = 0;
  let foreign = 0;
  let allDelivered = null;
  const expected = receivers * messages;

  const listen = (ws, r) => {
    ws.on("message", (data, isBinary) => {
      const now = nowMs();
      // The sequence number leads the text; decode no more than its digits.
      const seq = isBinary ? NaN : parseInt(data.toString("latin1", 0, Math.min(data.length, 16)), 10);
      if (!(seq >= 0 && seq < messages) || sentAt[seq] < 0) {
        foreign += 1;
        return;
      }
      const slot = r * messages + seq;
      if (seen[slot]) {
        duplicates += 1;
        return;
      }
      seen[slot] = 1;
      if (seq < lastSeq[r]) reordered += 1;
      else lastSeq[r] = seq;
      samples[count++] = now - sentAt[seq];
      if (count === expected && allDelivered) allDelivered();
    });
  };

  const opened = await openMany(url, receivers, { inFlight: 100, onSocket: listen });
  const stalled = await openMany(url, frozen, { inFlight: 100 });
  const frozenSockets = stalled.sockets.filter(Boolean);
  const frozenClosedWhilePaused = [];
  for (const frozenWs of frozenSockets) {
    frozenWs._socket.pause();
    frozenWs.once("close", (code) => frozenClosedWhilePaused.push(code));
  }
  const sender = await openMany(url, 1);
  const ws = sender.sockets[0];
  if (!ws) throw new Error(`the sender could not connect: ${JSON.stringify(sender.errors)}`);
  const connected = opened.sockets.filter(Boolean).length;
  await barrier("ready", {
    connected,
    failed: opened.failed,
    errors: opened.errors,
    frozen_connected: frozenSockets.length,
    frozen_failed: stalled.failed,
    frozen_ports: frozenSockets.map((frozenWs) => frozenWs._socket.localPort),
  });

  state.phase = "sending";
  const drained = new Promise((resolve) => (allDelivered = resolve));
  const cpu0 = process.cpuUsage();
  const t0 = nowMs();
  const interval = 1000 / rate;
  // Send on an absolute schedule so a late tick does not shift the rest.
  for (let seq = 0; seq < messages; seq++) {
    const wait = t0 + seq * interval - nowMs();
    if (wait > 0) await new Promise((resolve) => setTimeout(resolve, wait));
    sentAt[seq] = nowMs();
    ws.send(String(seq).padEnd(size, " "));
  }
  const sendElapsed = (nowMs() - t0) / 1000;
  state.phase = "draining";
  if (count < expected) {
    await Promise.race([drained, new Promise((resolve) => setTimeout(resolve, drain_timeout_s * 1000))]);
  }
  const elapsed = (nowMs() - t0) / 1000;
  const cpu = cpuSeconds(cpu0);
  const delivered = count;
  if (drained_barrier) await barrier("drained", { delivered, elapsed_s: elapsed });

  // The frozen ones read again: what did the server leave them?
  state.phase = "resuming";
  const closedWhilePaused = frozenClosedWhilePaused.length;
  const frozenCloseCodes = {};
  let frozenReceived = 0;
  let frozenOpen = frozenSockets.length - closedWhilePaused;
  let allClosed = null;
  const closedOrTimeout = new Promise((resolve) => {
    allClosed = resolve;
    setTimeout(resolve, frozenOpen > 0 ? resume_s * 1000 : 0);
  });
  for (const frozenWs of frozenSockets) {
    if (frozenWs.readyState === frozenWs.CLOSED) continue;
    frozenWs.on("message", () => (frozenReceived += 1));
    frozenWs.once("close", (code) => {
      frozenCloseCodes[code] = (frozenCloseCodes[code] ?? 0) + 1;
      frozenOpen -= 1;
      if (frozenOpen === 0) allClosed();
    });
    frozenWs._socket.resume();
  }
  await closedOrTimeout;
  emit("done", {
    connected,
    failed: opened.failed,
    errors: opened.errors,
    expected,
    expected_per_receiver: messages,
    delivered,
    delivered_pct: (100 * delivered) / expected,
    missing: expected - delivered,
    duplicates,
    reordered,
    foreign,
    send_elapsed_s: sendElapsed,
    elapsed_s: elapsed,
    latency_ms: percentiles(samples, count),
    client_cpu_s: cpu,
    frozen: frozenSockets.length,
    frozen_closed_while_paused: closedWhilePaused,
    frozen_received_after_resume: frozenReceived,
    frozen_close_codes: frozenCloseCodes,
    frozen_open_at_end: frozenOpen,
  });
  dropAll(opened.sockets);
  dropAll(frozenSockets);
  ws.terminate();
});
