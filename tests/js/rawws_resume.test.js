// Unit tests of rawws.js's resume and presence support: envelopes unwrapped,
// last ids recorded per group and sent back as ?last_id.<group>=<id> at the
// next attempt, gap and presence messages routed to their callbacks.
// A fake WebSocket class and a fake clock, as in rawws.test.js.
// Run: node --test tests/js/   (tests/test_js_client.py runs it from pytest)
"use strict";

const test = require("node:test");
const assert = require("node:assert/strict");
const path = require("node:path");

const RawWS = require(path.join(__dirname, "..", "..", "django_rawws", "static", "django_rawws", "rawws.js"));

function harness(options = {}) {
  const sockets = [];
  class FakeWebSocket {
    constructor(url) {
      this.url = url;
      this.readyState = 0;
      sockets.push(this);
    }
    send() {}
    close() {
      this.readyState = 2;
    }
    open() {
      this.readyState = 1;
      this.onopen && this.onopen({type: "open"});
    }
    receive(value) {
      this.onmessage && this.onmessage({type: "message", data: JSON.stringify(value)});
    }
    drop() {
      this.readyState = 3;
      this.onclose && this.onclose({type: "close", code: 1006, reason: "", wasClean: false});
    }
  }
  const timers = [];
  const got = [];
  const client = new RawWS(options.target || "ws://127.0.0.1/ws/rooms/lobby/", {
    WebSocket: FakeWebSocket,
    setTimeout: (fn) => timers.push(fn),
    clearTimeout: () => {},
    random: () => 0,
    window: null,
    onMessage: (data, event, meta) => got.push({data, meta}),
    ...options.extra,
  });
  // Run the (zero-delay, random() = 0) retry timer planned after a drop.
  const retry = () => timers.splice(0).forEach((fn) => fn());
  return {client, sockets, got, retry};
}

test("an envelope is unwrapped and its id recorded per group", () => {
  const {client, sockets, got} = harness();
  sockets[0].open();
  sockets[0].receive({id: "17-0", group: "room.lobby", data: {text: "hi"}});
  sockets[0].receive({id: "18-0", group: "room.lobby", data: "second"});
  sockets[0].receive({type: "message", text: "not an envelope"});
  assert.deepEqual(got, [
    {data: {text: "hi"}, meta: {id: "17-0", group: "room.lobby"}},
    {data: "second", meta: {id: "18-0", group: "room.lobby"}},
    {data: {type: "message", text: "not an envelope"}, meta: undefined},
  ]);
  assert.deepEqual(client.lastIds, {"room.lobby": "18-0"});
});

test("a reconnect sends the last id of every group in the URL", () => {
  const {sockets, retry} = harness({target: () => "ws://127.0.0.1/ws/rooms/lobby/?after=3"});
  assert.equal(sockets[0].url, "ws://127.0.0.1/ws/rooms/lobby/?after=3");
  sockets[0].open();
  sockets[0].receive({id: "5-1", group: "room.lobby", data: 1});
  sockets[0].receive({id: "9-0", group: "user:7", data: 2});
  sockets[0].drop();
  retry();
  assert.equal(sockets.length, 2);
  assert.equal(
    sockets[1].url,
    "ws://127.0.0.1/ws/rooms/lobby/?after=3&last_id.room.lobby=5-1&last_id.user%3A7=9-0",
  );
});

test("with resume off nothing is unwrapped and the URL is left alone", () => {
  const {client, sockets, got, retry} = harness({extra: {resume: false}});
  sockets[0].open();
  const envelope = {id: "5-1", group: "room.lobby", data: 1};
  sockets[0].receive(envelope);
  assert.deepEqual(got[0].data, envelope);
  assert.deepEqual(client.lastIds, {});
  sockets[0].drop();
  retry();
  assert.equal(sockets[1].url, "ws://127.0.0.1/ws/rooms/lobby/");
});

test("a gap goes to onGap when given, to onMessage otherwise", () => {
  const gaps = [];
  const {sockets, got} = harness({extra: {onGap: (group) => gaps.push(group)}});
  sockets[0].open();
  sockets[0].receive({type: "rawws.gap", group: "room.lobby"});
  assert.deepEqual(gaps, ["room.lobby"]);
  assert.deepEqual(got, []);
  const plain = harness();
  plain.sockets[0].open();
  plain.sockets[0].receive({type: "rawws.gap", group: "room.lobby"});
  assert.deepEqual(plain.got[0].data, {type: "rawws.gap", group: "room.lobby"});
});

test("presence snapshots and changes keep a member list per group", () => {
  const seen = [];
  const {client, sockets, got} = harness({extra: {onPresence: (group, members) => seen.push([group, members])}});
  sockets[0].open();
  const ada = {conn: "a.1", name: "ada"};
  const bob = {conn: "b.2", name: "bob"};
  sockets[0].receive({type: "rawws.presence", group: "room.lobby", members: [ada]});
  sockets[0].receive({type: "rawws.presence", group: "room.lobby", joined: [bob]});
  sockets[0].receive({type: "rawws.presence", group: "room.lobby", left: [ada]});
  assert.deepEqual(seen, [
    ["room.lobby", [ada]],
    ["room.lobby", [ada, bob]],
    ["room.lobby", [bob]],
  ]);
  assert.deepEqual(client.presence, {"room.lobby": {"b.2": bob}});
  assert.deepEqual(got, []);
});
