// chat-orm: `clients` connections to `${url}${room}/`, spread round-robin over
// `rooms` rooms (client c is in room c % rooms), send chat messages open-loop:
// at each rate of `rates` for `step_s` seconds, messages leave on a fixed
// timetable whatever the replies, each from the next client in turn. The
// server saves each one and sends it to everyone in the sender's room, the
// sender included. Every receiver records what arrives.
//
// A message is {"message": "<seq> ...", "author": "client-<c>"}; the reply
// carries the same "message", whose leading integer identifies it. Latency
// is "receive callback - send call" on this process's clock, and includes
// this event loop's own delay (reported: client CPU, send lag).
//
// After each rate's sends, a drain of up to `drain_s` seconds waits for the
// rest; deliveries after the drain count as late, not delivered. A rate is
// held when 100% is delivered within it and p99 < `p99_limit_ms`; stepping
// stops after the first rate not held (still reported).
//
// Phases: "ready" (all connected) -> per rate: send, drain, "step" (a
// barrier: the harness reads its own figures, then says go) -> "done".

import { barrier, config, cpuSeconds, dropAll, emit, hardDeadline, nowMs, openMany, percentiles, run } from "./common.mjs";

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

run(async () => {
  const cfg = config();
  const {
    url,
    clients,
    rooms,
    rates,
    step_s,
    drain_s,
    p99_limit_ms = 100,
    size = 32,
    deadline_s = 300,
  } = cfg;
  const state = { phase: "connecting" };
  hardDeadline(deadline_s, () => state);

  const planned = rates.map((rate) => Math.round(rate * step_s));
  const firstSeq = planned.map((_, i) => planned.slice(0, i).reduce((a, b) => a + b, 0));
  const total = planned.reduce((a, b) => a + b, 0);
  const sentAt = new Float64Array(total).fill(-1);
  const roomOfSeq = new Int16Array(total).fill(-1);
  const stepOfSeq = new Uint8Array(total);
  rates.forEach((_, i) => stepOfSeq.fill(i, firstSeq[i], firstSeq[i] + planned[i]));
  const seen = new Uint8Array(clients * total);

  const newStep = (i) => ({
    rate: rates[i],
    planned: planned[i],
    sent: 0,
    send_skipped: 0, // the sender's socket was no longer open
    expected: 0,
    delivered: 0,
    late: 0,
    duplicates: 0,
    misrouted: 0,
    samples: new Float64Array(planned[i] * Math.ceil(clients / rooms)),
    open: false, // counting deliveries (sending or draining)
    draining: false, // all sent: the last delivery ends the drain
    allDelivered: null,
  });
  const steps = rates.map((_, i) => newStep(i));
  let foreign = 0;
  let closedEarly = 0;
  let finished = false;

  const listen = (ws, c) => {
    const room = c % rooms;
    ws.on("close", () => {
      if (!finished) closedEarly += 1;
    });
    ws.on("message", (data, isBinary) => {
      const now = nowMs();
      let seq = NaN;
      if (!isBinary) {
        try {
          seq = parseInt(JSON.parse(data.toString()).message, 10);
        } catch {
          seq = NaN;
        }
      }
      if (!(seq >= 0 && seq < total) || sentAt[seq] < 0) {
        foreign += 1;
        return;
      }
      const step = steps[stepOfSeq[seq]];
      if (roomOfSeq[seq] !== room) {
        step.misrouted += 1;
        return;
      }
      const slot = c * total + seq;
      if (seen[slot]) {
        step.duplicates += 1;
        return;
      }
      seen[slot] = 1;
      if (!step.open) {
        step.late += 1;
        return;
      }
      step.samples[step.delivered++] = now - sentAt[seq];
      if (step.draining && step.delivered === step.expected) step.allDelivered();
    });
  };

  const base = url.endsWith("/") ? url : url + "/";
  const origin = `http://${new URL(base).host}`;
  const sockets = new Array(clients).fill(null);
  const errors = {};
  let failed = 0;
  // One openMany per room, so that each socket knows its index (room r: clients r, r + rooms, ...).
  for (let r = 0; r < rooms; r++) {
    const members = Math.floor(clients / rooms) + (r < clients % rooms ? 1 : 0);
    const opened = await openMany(`${base}r${r}/`, members, {
      inFlight: 50,
      onSocket: (ws, i) => listen(ws, r + i * rooms),
      wsOptions: { origin },
    });
    opened.sockets.forEach((ws, i) => (sockets[r + i * rooms] = ws));
    failed += opened.failed;
    for (const [reason, n] of Object.entries(opened.errors)) errors[reason] = (errors[reason] ?? 0) + n;
  }
  const members = new Array(rooms).fill(0);
  sockets.forEach((ws, c) => ws && (members[c % rooms] += 1));
  const senders = sockets.map((ws, c) => (ws ? c : -1)).filter((c) => c >= 0);
  const connected = senders.length;
  if (!connected) throw new Error(`no client could connect: ${JSON.stringify(errors)}`);
  await barrier("ready", { connected, failed, errors, members });

  const cpu0 = process.cpuUsage();
  const results = [];
  for (let i = 0; i < rates.length; i++) {
    const step = steps[i];
    state.phase = `sending at ${step.rate}/s`;
    const drained = new Promise((resolve) => (step.allDelivered = resolve));
    const stepCpu0 = process.cpuUsage();
    const interval = 1000 / step.rate;
    let lagMax = 0;
    let lagOver10 = 0;
    step.open = true;
    const t0 = nowMs();
    // An absolute timetable: a late tick sends what is due at once, shifting nothing after it.
    for (let k = 0; k < step.planned; k++) {
      const due = t0 + k * interval;
      const wait = due - nowMs();
      if (wait > 0) await sleep(wait);
      const sender = senders[(k + i) % connected];
      const ws = sockets[sender];
      if (ws.readyState !== ws.OPEN) {
        step.send_skipped += 1;
        continue;
      }
      const seq = firstSeq[i] + k;
      const room = sender % rooms;
      roomOfSeq[seq] = room;
      step.expected += members[room];
      const lag = nowMs() - due;
      if (lag > lagMax) lagMax = lag;
      if (lag > 10) lagOver10 += 1;
      sentAt[seq] = nowMs();
      ws.send(JSON.stringify({ message: String(seq).padEnd(size, " "), author: `client-${sender}` }));
      step.sent += 1;
    }
    const sendElapsed = (nowMs() - t0) / 1000;
    state.phase = `draining at ${step.rate}/s`;
    step.draining = true;
    if (step.delivered < step.expected) await Promise.race([drained, sleep(drain_s * 1000)]);
    step.open = false;
    step.draining = false;
    const elapsed = (nowMs() - t0) / 1000;
    const latency = percentiles(step.samples, step.delivered);
    const deliveredPct = step.expected ? (100 * step.delivered) / step.expected : null;
    const held = step.sent > 0 && step.delivered === step.expected && latency.p99 < p99_limit_ms;
    const result = {
      rate: step.rate,
      planned: step.planned,
      sent: step.sent,
      send_skipped: step.send_skipped,
      achieved_rate: step.sent / sendElapsed,
      send_lag_max_ms: lagMax,
      sends_over_10ms_late: lagOver10,
      expected: step.expected,
      delivered: step.delivered,
      delivered_pct: deliveredPct,
      missing: step.expected - step.delivered,
      duplicates: step.duplicates,
      misrouted: step.misrouted,
      latency_ms: latency,
      held,
      send_elapsed_s: sendElapsed,
      elapsed_s: elapsed,
      client_cpu_s: cpuSeconds(stepCpu0),
    };
    results.push(result);
    const more = held && i + 1 < rates.length;
    await barrier("step", { ...result, more });
    if (!more) break;
  }
  // Messages of a step that arrived after its drain (counted while later steps ran).
  results.forEach((result, i) => (result.late = steps[i].late));
  finished = true;
  emit("done", {
    connected,
    failed,
    errors,
    members,
    steps: results,
    sent: results.reduce((n, s) => n + s.sent, 0),
    foreign,
    closed_early: closedEarly,
    client_cpu_s: cpuSeconds(cpu0),
  });
  dropAll(sockets);
});
