// Unit tests of django_rawws/static/django_rawws/rawws.js: state, backoff and
// reconnect rules, with a fake WebSocket class and a fake clock injected, so
// every delay is exact and nothing waits on real time.
// Run: node --test tests/js/   (tests/test_js_client.py runs it from pytest)
"use strict";

const test = require("node:test");
const assert = require("node:assert/strict");
const path = require("node:path");

const RawWS = require(path.join(__dirname, "..", "..", "django_rawws", "static", "django_rawws", "rawws.js"));

// ------------------------------------------------------------------ fakes

class FakeClock {
  constructor() {
    this.now = 0;
    this.nextId = 1;
    this.timers = new Map();
    this.setTimeout = (fn, ms) => {
      const id = this.nextId++;
      this.timers.set(id, {at: this.now + ms, fn});
      return id;
    };
    this.clearTimeout = (id) => {
      this.timers.delete(id);
    };
  }

  /** Move time forward by `ms`, running every timer due on the way, in order. */
  advance(ms) {
    const end = this.now + ms;
    for (;;) {
      let next = null;
      for (const [id, timer] of this.timers) {
        if (timer.at <= end && (next === null || timer.at < next[1].at)) {
          next = [id, timer];
        }
      }
      if (next === null) {
        break;
      }
      this.timers.delete(next[0]);
      this.now = next[1].at;
      next[1].fn();
    }
    this.now = end;
  }

  pending() {
    return [...this.timers.values()].map((timer) => timer.at - this.now).sort((a, b) => a - b);
  }
}

function fakeWebSocketClass() {
  const sockets = [];
  class FakeWebSocket {
    constructor(url, protocols) {
      this.url = url;
      this.protocols = protocols;
      this.readyState = 0;
      this.sent = [];
      this.closedWith = null;
      this.bufferedAmount = 0;
      this.onopen = this.onmessage = this.onerror = this.onclose = null;
      sockets.push(this);
    }
    send(data) {
      this.sent.push(data);
    }
    close(code, reason) {
      this.closedWith = {code, reason};
      this.readyState = 2;
    }
    // What the network does:
    open() {
      this.readyState = 1;
      this.onopen && this.onopen({type: "open"});
    }
    receive(data) {
      this.onmessage && this.onmessage({type: "message", data});
    }
    serverClose(code, reason = "") {
      this.readyState = 3;
      this.onclose && this.onclose({type: "close", code, reason, wasClean: code !== 1006});
    }
    drop() {
      this.readyState = 3;
      this.onerror && this.onerror({type: "error"});
      this.onclose && this.onclose({type: "close", code: 1006, reason: "", wasClean: false});
    }
  }
  return {FakeWebSocket, sockets};
}

class FakeWindow {
  constructor() {
    this.listeners = {};
  }
  addEventListener(type, fn) {
    (this.listeners[type] = this.listeners[type] || []).push(fn);
  }
  removeEventListener(type, fn) {
    this.listeners[type] = (this.listeners[type] || []).filter((f) => f !== fn);
  }
  dispatch(type) {
    for (const fn of this.listeners[type] || []) fn({type});
  }
}

/** A RawWS wired to fakes; `states`, `messages` and `errors` record the callbacks. */
function setup(options = {}, target = "ws://example.test/ws/") {
  const clock = new FakeClock();
  const {FakeWebSocket, sockets} = fakeWebSocketClass();
  const win = new FakeWindow();
  const states = [];
  const messages = [];
  const errors = [];
  const randoms = options.randoms ? [...options.randoms] : null;
  delete options.randoms;
  const ws = new RawWS(target, {
    WebSocket: FakeWebSocket,
    setTimeout: clock.setTimeout,
    clearTimeout: clock.clearTimeout,
    random: randoms ? () => (randoms.length > 1 ? randoms.shift() : randoms[0]) : () => 0.5,
    window: win,
    onState: (state, detail) => states.push([state, detail]),
    onMessage: (data) => messages.push(data),
    onError: (error) => errors.push(error),
    ...options,
  });
  const last = () => sockets[sockets.length - 1];
  return {ws, clock, sockets, last, win, states, messages, errors};
}

const stateNames = (states) => states.map(([state]) => state);

// ------------------------------------------------------------ connecting

test("a new client is connecting, then open when the socket opens", () => {
  const {ws, last, states} = setup();
  assert.equal(ws.state, "connecting");
  assert.equal(last().url, "ws://example.test/ws/");
  last().open();
  assert.equal(ws.state, "open");
  assert.deepEqual(stateNames(states), ["connecting", "open"]);
});

test("protocols are passed to the WebSocket constructor", () => {
  const {last} = setup({protocols: ["chat.v1"]});
  assert.deepEqual(last().protocols, ["chat.v1"]);
});

test("send returns false until open, then sends JSON and returns true", () => {
  const {ws, last} = setup();
  assert.equal(ws.send({type: "message", text: "early"}), false);
  last().open();
  assert.equal(ws.send({type: "message", text: "héllo"}), true);
  assert.deepEqual(last().sent, ['{"type":"message","text":"héllo"}']);
});

test("with json off, send passes data through and messages arrive undecoded", () => {
  const {ws, last, messages} = setup({json: false});
  last().open();
  ws.send("raw text");
  last().receive("not json {");
  assert.deepEqual(last().sent, ["raw text"]);
  assert.deepEqual(messages, ["not json {"]);
});

test("incoming JSON is decoded for onMessage", () => {
  const {last, messages, errors} = setup();
  last().open();
  last().receive('{"type":"message","id":7}');
  assert.deepEqual(messages, [{type: "message", id: 7}]);
  assert.deepEqual(errors, []);
});

test("invalid JSON and binary messages go to onError, not onMessage", () => {
  const {last, messages, errors} = setup();
  last().open();
  last().receive("{oops");
  last().receive(new ArrayBuffer(3));
  assert.deepEqual(messages, []);
  assert.equal(errors.length, 2);
  assert.ok(errors[0] instanceof SyntaxError);
  assert.match(errors[1].message, /binary message/);
});

test("every decoded message passes through _dispatch (the resume hook) before onMessage", () => {
  const {ws, last, messages} = setup();
  const seen = [];
  const original = ws._dispatch;
  ws._dispatch = function (data, event) {
    seen.push(data);
    original.call(this, data, event);
  };
  last().open();
  last().receive('{"n":1}');
  assert.deepEqual(seen, [{n: 1}]);
  assert.deepEqual(messages, [{n: 1}]);
});

test("unknown options are refused, so a typo doesn't pass silently", () => {
  assert.throws(() => new RawWS("ws://x/", {onmessage() {}}), TypeError);
});

test("without any WebSocket implementation the constructor says so", () => {
  assert.throws(() => new RawWS("ws://x/", {WebSocket: undefined, window: null}), /no WebSocket implementation/);
});

// ------------------------------------------------------------ reconnecting

test("a dropped connection reconnects after a full-jitter delay below minDelay", () => {
  const {ws, clock, sockets, last, states} = setup({randoms: [0.25]});
  last().open();
  last().drop();
  assert.equal(ws.state, "reconnecting");
  assert.deepEqual(states.at(-1), ["reconnecting", {attempt: 1, delay: 250, code: 1006, reason: ""}]);
  assert.deepEqual(clock.pending(), [250]);
  clock.advance(249);
  assert.equal(sockets.length, 1);
  clock.advance(1);
  assert.equal(sockets.length, 2);
  last().open();
  assert.equal(ws.state, "open");
});

test("the backoff ceiling doubles per failed attempt up to maxDelay", () => {
  const {ws, clock, last} = setup({randoms: [0.999999]});
  const delays = [];
  for (let i = 0; i < 8; i++) {
    last().drop();
    delays.push(clock.pending()[0]);
    clock.advance(clock.pending()[0]);
  }
  assert.deepEqual(delays, [999, 1999, 3999, 7999, 15999, 29999, 29999, 29999]);
  assert.equal(ws.attempt, 8);
});

test("backoffCeiling is minDelay * factor^(attempt-1), capped", () => {
  const options = {minDelay: 100, factor: 3, maxDelay: 1000};
  assert.deepEqual([1, 2, 3, 4, 5].map((n) => RawWS.backoffCeiling(n, options)), [100, 300, 900, 1000, 1000]);
});

test("the delay is drawn over the whole range, from zero (full jitter)", () => {
  const {clock, last} = setup({randoms: [0]});
  last().drop();
  assert.deepEqual(clock.pending(), [0]);
});

test("the backoff starts over once a connection stayed open stableAfter ms", () => {
  const {ws, clock, last} = setup({randoms: [0.999999]});
  for (let i = 0; i < 3; i++) {
    last().drop();
    clock.advance(clock.pending()[0]);
  }
  assert.equal(ws.attempt, 3);
  last().open();
  clock.advance(4999);
  assert.equal(ws.attempt, 3);
  clock.advance(1);
  assert.equal(ws.attempt, 0);
  last().drop();
  assert.deepEqual(clock.pending(), [999]);
});

test("a connection that closes before it was stable keeps the backoff growing", () => {
  const {ws, clock, last} = setup({randoms: [0.999999]});
  last().drop();
  clock.advance(clock.pending()[0]);
  last().open();
  clock.advance(1000);
  last().serverClose(1011);
  assert.equal(ws.attempt, 2);
  assert.deepEqual(clock.pending(), [1999]);
});

test("the target function is called before every attempt (where a resume point goes)", () => {
  let lastId = 0;
  const {clock, sockets, last} = setup({}, () => "ws://example.test/ws/?after=" + lastId);
  last().open();
  lastId = 41;
  last().drop();
  clock.advance(clock.pending()[0]);
  assert.deepEqual(
    sockets.map((socket) => socket.url),
    ["ws://example.test/ws/?after=0", "ws://example.test/ws/?after=41"]
  );
});

test("a socket stuck connecting is given up after connectTimeout and retried", () => {
  const {ws, clock, sockets, states} = setup({connectTimeout: 3000, randoms: [0.5]});
  clock.advance(2999);
  assert.equal(ws.state, "connecting");
  clock.advance(1);
  assert.notEqual(sockets[0].closedWith, null);
  assert.deepEqual(states.at(-1), ["reconnecting", {attempt: 1, delay: 500, code: 1006, reason: "connect timeout"}]);
  clock.advance(500);
  assert.equal(sockets.length, 2);
});

test("events of a socket given up are ignored", () => {
  const {ws, clock, sockets, messages} = setup({connectTimeout: 10});
  clock.advance(10);
  sockets[0].open();
  sockets[0].receive('{"late":true}');
  sockets[0].serverClose(4403);
  assert.equal(ws.state, "reconnecting");
  assert.deepEqual(messages, []);
});

test("an error before open fails the attempt even if no close event follows (node 20's WebSocket)", () => {
  const {ws, clock, sockets, last, errors} = setup({randoms: [0.5]});
  last().onerror({type: "error"});
  assert.equal(errors.length, 1);
  assert.equal(ws.state, "reconnecting");
  assert.notEqual(sockets[0].closedWith, null);
  sockets[0].serverClose(1006); // a browser's close event after the error: ignored
  assert.deepEqual(clock.pending(), [500]);
  clock.advance(500);
  assert.equal(sockets.length, 2);
});

test("an error on an open socket waits for its close event to decide", () => {
  const {ws, last} = setup();
  last().open();
  last().onerror({type: "error"});
  assert.equal(ws.state, "open");
  last().serverClose(4403);
  assert.equal(ws.state, "closed");
});

test("a refused first connection goes to reconnecting, not closed", () => {
  const {ws, last, states} = setup();
  last().drop();
  assert.equal(ws.state, "reconnecting");
  assert.deepEqual(stateNames(states), ["connecting", "reconnecting"]);
});

test("each scheduled retry is reported, even while already reconnecting", () => {
  const {clock, last, states} = setup();
  last().drop();
  clock.advance(clock.pending()[0]);
  last().drop();
  assert.deepEqual(
    states.filter(([state]) => state === "reconnecting").map(([, detail]) => detail.attempt),
    [1, 2]
  );
});

test("maxAttempts failed attempts in a row end in closed", () => {
  const {ws, clock, sockets, last} = setup({maxAttempts: 2});
  last().drop();
  clock.advance(clock.pending()[0]);
  last().drop();
  clock.advance(clock.pending()[0]);
  last().drop();
  assert.equal(ws.state, "closed");
  assert.equal(sockets.length, 3);
  assert.deepEqual(clock.pending(), []);
});

test("the online event retries at once instead of waiting out the backoff", () => {
  const {ws, clock, sockets, last, win} = setup({randoms: [0.999999]});
  last().drop();
  assert.equal(sockets.length, 1);
  win.dispatch("online");
  assert.equal(sockets.length, 2);
  assert.deepEqual(clock.pending(), [10000]); // only the new socket's connect timeout
  assert.equal(ws.state, "reconnecting");
});

// ------------------------------------------------------------ which codes retry

for (const code of [1000, 1002, 1003, 1007, 1010, 3000, 3003, 4000, 4401, 4403, 4404, 4499]) {
  test(`close code ${code} from the server ends in closed, without a retry`, () => {
    const {ws, clock, sockets, last, states} = setup();
    last().open();
    last().serverClose(code, "no");
    assert.equal(ws.state, "closed");
    assert.deepEqual(states.at(-1), ["closed", {code, reason: "no", byClient: false}]);
    clock.advance(60000);
    assert.equal(sockets.length, 1);
  });
}

for (const code of [1001, 1005, 1006, 1008, 1009, 1011, 1012, 1013, 1014, 3008, 4500, 4999]) {
  test(`close code ${code} from the server is retried`, () => {
    const {ws, clock, sockets, last} = setup();
    last().open();
    last().serverClose(code);
    assert.equal(ws.state, "reconnecting");
    clock.advance(1000);
    assert.equal(sockets.length, 2);
  });
}

test("shouldReconnect replaces the default rule", () => {
  const {ws, last} = setup({shouldReconnect: (event) => event.code === 4403});
  last().open();
  last().serverClose(4403);
  assert.equal(ws.state, "reconnecting");
  const other = setup({shouldReconnect: () => false});
  other.last().open();
  other.last().serverClose(1001);
  assert.equal(other.ws.state, "closed");
});

// ------------------------------------------------------------ closing

test("close() closes the socket with 1000 and never reconnects", () => {
  const {ws, clock, sockets, last, states, win} = setup();
  last().open();
  ws.close();
  assert.deepEqual(sockets[0].closedWith, {code: 1000, reason: ""});
  assert.deepEqual(states.at(-1), ["closed", {code: 1000, reason: "", byClient: true}]);
  sockets[0].serverClose(1000); // the close reply, after the handlers were detached
  clock.advance(60000);
  win.dispatch("online");
  assert.equal(sockets.length, 1);
  assert.equal(ws.send({}), false);
});

test("close() with a code the browser refuses still closes the socket, and reports the refusal", () => {
  const {ws, last, errors} = setup();
  last().open();
  const socket = last();
  const calls = [];
  socket.close = (...args) => {
    calls.push(args);
    if (args.length && args[0] !== 1000 && (args[0] < 3000 || args[0] > 4999)) {
      throw new Error("InvalidAccessError");
    }
  };
  ws.close(1001, "leaving");
  assert.deepEqual(calls, [[1001, "leaving"], []]);
  assert.equal(errors.length, 1);
  assert.equal(ws.state, "closed");
});

test("close() while waiting to reconnect cancels the retry", () => {
  const {ws, clock, sockets, last} = setup();
  last().drop();
  ws.close(4000, "bye");
  assert.equal(ws.state, "closed");
  assert.deepEqual(clock.pending(), []);
  assert.equal(sockets.length, 1);
});

test("onClose may call close() to stop the reconnect", () => {
  let client;
  const {ws, clock, sockets, last} = setup({
    onClose(event) {
      if (event.code === 1012) this.close();
    },
  });
  client = ws;
  last().open();
  last().serverClose(1012);
  assert.equal(client.state, "closed");
  clock.advance(60000);
  assert.equal(sockets.length, 1);
});

test("reconnect() drops the socket and connects again now, backoff reset", () => {
  const {ws, clock, sockets, last} = setup();
  last().drop();
  clock.advance(clock.pending()[0]);
  last().drop();
  ws.reconnect();
  assert.equal(ws.attempt, 0);
  assert.equal(sockets.length, 3);
  sockets[1].serverClose(1011); // a stale socket: ignored
  assert.equal(ws.state, "connecting"); // never open yet, and the backoff starts over
  last().open();
  assert.equal(ws.state, "open");
  assert.deepEqual(clock.pending(), [5000]); // only the stability timer
});

test("reconnect() after close() starts again", () => {
  const {ws, sockets, last} = setup();
  ws.close();
  ws.reconnect();
  assert.equal(sockets.length, 2);
  last().open();
  assert.equal(ws.state, "open");
});

// ------------------------------------------------------------ URL helper

test("RawWS.url uses ws:// for an http page and wss:// for an https page, on the page's host", () => {
  assert.equal(RawWS.url("/ws/rooms/lobby/", {protocol: "http:", host: "localhost:8000"}), "ws://localhost:8000/ws/rooms/lobby/");
  assert.equal(RawWS.url("/ws/x/?a=1", {protocol: "https:", host: "chat.example"}), "wss://chat.example/ws/x/?a=1");
  assert.equal(RawWS.url("ws/x/", {protocol: "http:", host: "h"}), "ws://h/ws/x/");
  assert.equal(RawWS.url("wss://other.example/ws/", {protocol: "http:", host: "h"}), "wss://other.example/ws/");
});
