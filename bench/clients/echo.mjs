// echo: `clients` connections, each doing `rounds` closed-loop round trips of
// a `size`-byte message; latency per round trip, content checked.
//
// Options: `binary` sends `size` random bytes (a different payload per
// connection) instead of text, compared byte for byte; `mask: "zero"` makes
// every frame this client sends carry the all-zero masking key (ws then skips
// masking; a server that notices can skip unmasking), "random" (the default)
// keeps ws's random keys as browsers use.
//
// Phases: "ready" (connected and warmed up; the orchestrator reads the
// server's CPU time) -> timed run -> "done" with the figures.

import { randomFillSync } from "node:crypto";
import { barrier, config, cpuSeconds, dropAll, emit, hardDeadline, nowMs, openMany, percentiles, run } from "./common.mjs";

run(async () => {
  const cfg = config();
  const { url, clients, rounds, warmup = 50, size = 32, binary = false, mask = "random", deadline_s = 300 } = cfg;
  if (mask !== "random" && mask !== "zero") throw new Error(`mask must be "random" or "zero", got ${mask}`);
  let state = { phase: "connecting", completed: 0 };
  hardDeadline(deadline_s, () => state);

  const wsOptions = mask === "zero" ? { generateMask: (key) => key.fill(0) } : {};
  const { sockets, failed, errors } = await openMany(url, clients, { inFlight: 50, wsOptions });
  const live = sockets.filter(Boolean);
  const payloads = live.map((_, i) => (binary ? randomFillSync(Buffer.alloc(size)) : `echo ${i} `.padEnd(size, ".")));
  // ws masks a copy of a Buffer it is given, so `payload` stays what was sent.
  const differs = binary
    ? (data, isBinary, payload) => !isBinary || !payload.equals(data)
    : (data, isBinary, payload) => isBinary || data.toString() !== payload;

  // Closed loop on every connection: send, wait for the echo, send again.
  // Resolves with the count of round trips done; records latencies.
  const loop = (ws, payload, count, samples, offset, stats) =>
    new Promise((resolve) => {
      let done = 0;
      let sentAt = 0;
      const finish = () => {
        ws.off("message", onMessage);
        ws.off("close", finish);
        resolve(done);
      };
      const onMessage = (data, isBinary) => {
        const now = nowMs();
        if (differs(data, isBinary, payload)) stats.mismatched += 1;
        if (samples) samples[offset + done] = now - sentAt;
        done += 1;
        state.completed += 1;
        if (done >= count) return finish();
        sentAt = nowMs();
        ws.send(payload);
      };
      ws.on("message", onMessage);
      ws.on("close", finish);
      if (count <= 0) return finish();
      sentAt = nowMs();
      ws.send(payload);
    });

  state.phase = "warmup";
  const warm = { mismatched: 0 };
  await Promise.all(live.map((ws, i) => loop(ws, payloads[i], warmup, null, 0, warm)));

  await barrier("ready", { connected: live.length, failed, errors });
  state = { phase: "timed", completed: 0 };
  const samples = new Float64Array(live.length * rounds);
  const stats = { mismatched: 0 };
  const cpu0 = process.cpuUsage();
  const t0 = nowMs();
  const counts = await Promise.all(live.map((ws, i) => loop(ws, payloads[i], rounds, samples, i * rounds, stats)));
  const elapsed = (nowMs() - t0) / 1000;
  const cpu = cpuSeconds(cpu0);

  // Samples are laid out per connection; pack the ones actually taken.
  let packed = 0;
  counts.forEach((n, i) => {
    samples.copyWithin(packed, i * rounds, i * rounds + n);
    packed += n;
  });
  const messages = counts.reduce((a, b) => a + b, 0);
  emit("done", {
    connected: live.length,
    failed,
    errors,
    expected: clients * rounds,
    messages,
    mismatched: stats.mismatched + warm.mismatched,
    elapsed_s: elapsed,
    msg_per_s: messages / elapsed,
    latency_ms: percentiles(samples, packed),
    client_cpu_s: cpu,
  });
  dropAll(sockets);
});
