// Cross-process fan-out: `receivers` connections spread round-robin over
// `urls` (one per server process), and a sender on `sender_url` that sends
// `messages` texts at `rate` per second. The servers share the group through
// Redis; every receiver checks what arrives: delivered, duplicates,
// reordering, latency from the send (one process, one clock, as fanout.mjs).
//
// Phases: "ready" -> send and drain -> "done".

import { barrier, config, cpuSeconds, dropAll, emit, hardDeadline, nowMs, openMany, percentiles, run } from "./common.mjs";

const urls_of = (cfg) => [...(cfg.urls ?? []), cfg.sender_url];

run(async () => {
  const cfg = config();
  for (const u of urls_of(cfg)) {
    if (new URL(u).hostname !== "127.0.0.1") throw new Error(`refusing to load anything but 127.0.0.1 (got ${u})`);
  }
  const { urls, sender_url, receivers, messages, rate, size = 32, drain_timeout_s = 15, deadline_s = 300 } = cfg;
  const state = { phase: "connecting" };
  hardDeadline(deadline_s, () => state);

  const sentAt = new Float64Array(messages).fill(-1);
  const seen = new Uint8Array(receivers * messages);
  const lastSeq = new Int32Array(receivers).fill(-1);
  const samples = new Float64Array(receivers * messages);
  let count = 0;
  let duplicates = 0;
  let reordered = 0;
  let foreign = 0;
  let allDelivered = null;
  const expected = receivers * messages;

  const listenAs = (offset, stride) => (ws, i) => {
    const r = offset + i * stride;
    ws.on("message", (data, isBinary) => {
      const now = nowMs();
      const seq = isBinary ? NaN : parseInt(data.toString(), 10);
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

  // Receiver r goes to urls[r % urls.length].
  const groups = await Promise.all(
    urls.map((url, s) => {
      const n = Math.floor(receivers / urls.length) + (s < receivers % urls.length ? 1 : 0);
      return openMany(url, n, { inFlight: 100, onSocket: listenAs(s, urls.length) });
    }),
  );
  const sockets = groups.flatMap((g) => g.sockets);
  const sender = await openMany(sender_url, 1);
  const ws = sender.sockets[0];
  if (!ws) throw new Error(`the sender could not connect: ${JSON.stringify(sender.errors)}`);
  const connected = sockets.filter(Boolean).length;
  const errors = groups.flatMap((g) => g.errors);
  const failed = groups.reduce((total, g) => total + g.failed, 0);
  await barrier("ready", { connected, failed, errors, per_server: groups.map((g) => g.sockets.filter(Boolean).length) });

  state.phase = "sending";
  const drained = new Promise((resolve) => (allDelivered = resolve));
  const cpu0 = process.cpuUsage();
  const t0 = nowMs();
  const interval = 1000 / rate;
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
  emit("done", {
    connected,
    failed,
    errors,
    expected,
    delivered: count,
    delivered_pct: (100 * count) / expected,
    missing: expected - count,
    duplicates,
    reordered,
    foreign,
    send_elapsed_s: sendElapsed,
    elapsed_s: elapsed,
    latency_ms: percentiles(samples, count),
    client_cpu_s: cpuSeconds(cpu0),
  });
  dropAll(sockets);
  ws.terminate();
});
