// Drives one RawWS against a real server for tests/test_js_client.py.
//
//   node [--experimental-websocket] tests/js/live_driver.js <ws-url> '<options JSON>'
//
// Prints one JSON line per callback: {"state": s, "detail": d}, {"message": m},
// {"error": text}. Reads one JSON command per line on stdin: {"send": value},
// {"close": [code, reason]}, {"reconnect": true}. When stdin ends it closes
// nothing: node exits by itself once no socket or timer is left, which is how
// a test sees that a closed client schedules no retry.
"use strict";

const path = require("node:path");
const readline = require("node:readline");

const RawWS = require(path.join(__dirname, "..", "..", "django_rawws", "static", "django_rawws", "rawws.js"));

if (typeof WebSocket !== "function") {
  process.stderr.write("no global WebSocket: node >= 22, or node 20 with --experimental-websocket\n");
  process.exit(2);
}

const [url, optionsJson] = process.argv.slice(2);
const emit = (record) => process.stdout.write(JSON.stringify(record) + "\n");

const client = new RawWS(url, {
  ...JSON.parse(optionsJson || "{}"),
  onState: (state, detail) => emit({state, detail}),
  onMessage: (message) => emit({message}),
  onError: (error) => emit({error: String((error && error.message) || (error && error.type) || error)}),
});

readline.createInterface({input: process.stdin}).on("line", (line) => {
  const command = JSON.parse(line);
  if ("send" in command) {
    emit({sent: client.send(command.send)});
  } else if ("close" in command) {
    client.close(...command.close);
  } else if ("reconnect" in command) {
    client.reconnect();
  }
});
