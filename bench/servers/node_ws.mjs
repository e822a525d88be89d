// A peer: Node's `ws` server (bench/node_modules), echo + broadcast.
//
// Written as ws's README shows for several endpoints on one port: an HTTP
// server whose "upgrade" event hands each request to the WebSocketServer of
// its path (`noServer: true`). ws's defaults (permessage-deflate off, no
// bufferutil/utf-8-validate installed, so its JavaScript fallbacks) except
// `maxPayload`, 16 MiB like our echo route. The broadcast loops over the
// clients of its server, skipping those no longer open, like ws's own example.
//
//   node bench/servers/node_ws.mjs --port PORT [--host 127.0.0.1]

import { createServer } from "node:http";
import { parseArgs } from "node:util";
import { WebSocket, WebSocketServer } from "ws";

const ECHO_PATH = "/ws/echo/";
const BROADCAST_PATH = "/ws/broadcast/";
const MAX_MESSAGE_SIZE = 16 * 1024 * 1024;
// After SIGTERM, exit by this time even if a socket lingers.
const STOP_GRACE_MS = 3000;

const { values: args } = parseArgs({
  options: {
    host: { type: "string", default: "127.0.0.1" },
    port: { type: "string" },
    // Accepted like the Python servers' option; Node has one thread here.
    workers: { type: "string" },
  },
});
if (args.port === undefined) {
  console.error("--port is required");
  process.exit(2);
}

const echo = new WebSocketServer({ noServer: true, maxPayload: MAX_MESSAGE_SIZE });
echo.on("connection", (socket) => {
  socket.on("message", (data, isBinary) => socket.send(data, { binary: isBinary }));
});

const broadcast = new WebSocketServer({ noServer: true, maxPayload: MAX_MESSAGE_SIZE });
broadcast.on("connection", (socket) => {
  socket.on("message", (data, isBinary) => {
    if (isBinary) return;
    for (const member of broadcast.clients) {
      if (member.readyState === WebSocket.OPEN) member.send(data, { binary: false });
    }
  });
});

const routes = new Map([
  [ECHO_PATH, echo],
  [BROADCAST_PATH, broadcast],
]);

const server = createServer((request, response) => {
  response.writeHead(404).end();
});
server.on("upgrade", (request, socket, head) => {
  const target = routes.get(new URL(request.url, "http://localhost").pathname);
  if (target === undefined) {
    socket.end("HTTP/1.1 404 Not Found\r\nConnection: close\r\nContent-Length: 0\r\n\r\n");
    return;
  }
  target.handleUpgrade(request, socket, head, (ws) => target.emit("connection", ws, request));
});

function stop() {
  // Stop accepting, close every WebSocket with 1001 (going away), then exit.
  setTimeout(() => process.exit(0), STOP_GRACE_MS).unref();
  server.close(() => process.exit(0));
  for (const wss of routes.values()) {
    for (const client of wss.clients) client.close(1001, "server stopping");
    wss.close();
  }
  server.closeIdleConnections();
}
process.on("SIGTERM", stop);
process.on("SIGINT", stop);

server.listen(Number(args.port), args.host, () => {
  const { address, port } = server.address();
  console.log(`listening on ${address}:${port}`);
});
