// The chat page's script, example_project/chat/static/chat/room.js, run in a
// vm context with a small fake DOM (only what the page uses) and RawWS over a
// fake WebSocket. Checks the wiring: URLs with the resume point (?after=), dedupe and
// order by id, notices, the online list, the state label, the composer, and that user data only
// ever goes through textContent (the fake elements throw on innerHTML).
"use strict";

const test = require("node:test");
const assert = require("node:assert/strict");
const fs = require("node:fs");
const path = require("node:path");
const vm = require("node:vm");

const ROOT = path.join(__dirname, "..", "..");
const RawWS = require(path.join(ROOT, "django_rawws", "static", "django_rawws", "rawws.js"));
const ROOM_JS = fs.readFileSync(path.join(ROOT, "example_project", "chat", "static", "chat", "room.js"), "utf8");

// ------------------------------------------------------------------ fake DOM

class FakeElement {
  constructor(tagName, attributes = {}) {
    this.tagName = tagName.toUpperCase();
    this.children = [];
    this.parent = null;
    this.className = "";
    this.dataset = {};
    this.attributes = {};
    this.listeners = {};
    this.text = "";
    this.value = "";
    this.disabled = false;
    this.scrollTop = 0;
    this.clientHeight = 100;
    for (const [name, value] of Object.entries(attributes)) this.setAttribute(name, value);
  }
  get scrollHeight() {
    return 100 + 20 * this.children.length;
  }
  set innerHTML(value) {
    throw new Error("innerHTML used with " + JSON.stringify(value));
  }
  get innerHTML() {
    throw new Error("innerHTML read");
  }
  get textContent() {
    return this.children.length ? this.children.map((child) => child.textContent).join("") : this.text;
  }
  set textContent(value) {
    this.children = [];
    this.text = String(value);
  }
  setAttribute(name, value) {
    if (name.startsWith("data-")) this.dataset[name.slice(5)] = String(value);
    else if (name === "class") this.className = String(value);
    else this.attributes[name] = String(value);
  }
  getAttribute(name) {
    if (name.startsWith("data-")) return this.dataset[name.slice(5)] ?? null;
    return this.attributes[name] ?? null;
  }
  hasAttribute(name) {
    return this.getAttribute(name) !== null;
  }
  appendChild(child) {
    return this.insertBefore(child, null);
  }
  insertBefore(child, reference) {
    if (child.parent) child.parent.children.splice(child.parent.children.indexOf(child), 1);
    const index = reference === null ? this.children.length : this.children.indexOf(reference);
    assert.ok(index >= 0, "insertBefore: reference is not a child");
    this.children.splice(index, 0, child);
    child.parent = this;
    return child;
  }
  get lastElementChild() {
    return this.children[this.children.length - 1] || null;
  }
  get previousElementSibling() {
    const siblings = this.parent ? this.parent.children : [];
    return siblings[siblings.indexOf(this) - 1] || null;
  }
  querySelectorAll(selector) {
    const match = /^(\w+)\[([\w-]+)\]$/.exec(selector);
    assert.ok(match, "unsupported selector " + selector);
    const found = [];
    const walk = (node) => {
      for (const child of node.children) {
        if (child.tagName === match[1].toUpperCase() && child.hasAttribute(match[2])) found.push(child);
        walk(child);
      }
    };
    walk(this);
    return found;
  }
  addEventListener(type, listener) {
    (this.listeners[type] = this.listeners[type] || []).push(listener);
  }
  dispatch(type) {
    let prevented = false;
    for (const listener of this.listeners[type] || []) listener({type, preventDefault: () => (prevented = true)});
    return prevented;
  }
  focus() {}
}

function historyItem(id, author, text, iso) {
  const item = new FakeElement("li", {"data-id": id});
  item.className = "message";
  const time = new FakeElement("time", {datetime: iso});
  time.textContent = "12:00";
  const who = new FakeElement("span");
  who.className = "author";
  who.textContent = author;
  const body = new FakeElement("span");
  body.className = "text";
  body.textContent = text;
  item.appendChild(time);
  item.appendChild(who);
  item.appendChild(body);
  return item;
}

/** Load room.js into a page with `history` already rendered; return the handles a test needs. */
function loadPage(history = []) {
  const sockets = [];
  class FakeWebSocket {
    constructor(url) {
      this.url = url;
      this.readyState = 0;
      this.sent = [];
      sockets.push(this);
    }
    send(data) {
      this.sent.push(JSON.parse(data));
    }
    close() {
      this.readyState = 3;
    }
  }
  const timers = [];
  const location = {protocol: "http:", host: "127.0.0.1:8000"};
  function PageRawWS(target, options) {
    return new RawWS(target, {
      ...options,
      WebSocket: FakeWebSocket,
      setTimeout: (fn, ms) => timers.push({fn, ms}),
      clearTimeout: () => {},
      random: () => 0.5,
      window: null,
    });
  }
  PageRawWS.url = (p) => RawWS.url(p, location);

  const elements = {
    "chat-config": new FakeElement("script"),
    messages: new FakeElement("ol"),
    "connection-state": new FakeElement("span"),
    composer: new FakeElement("form"),
    "message-text": new FakeElement("input"),
    send: new FakeElement("button"),
    online: new FakeElement("ul"),
  };
  const lastId = history.length ? history[history.length - 1][0] : 0;
  elements["chat-config"].textContent = JSON.stringify({
    room: "lobby",
    user: "alice",
    wsPath: "/ws/rooms/lobby/",
    lastId,
    maxLength: 2000,
  });
  for (const [id, author, text] of history) {
    elements.messages.appendChild(historyItem(id, author, text, "2026-01-02T03:04:05+00:00"));
  }
  elements["message-text"].disabled = elements.send.disabled = true;
  const document = {
    getElementById: (id) => elements[id] || null,
    createElement: (tag) => new FakeElement(tag),
  };
  vm.runInNewContext(ROOM_JS, {document, RawWS: PageRawWS, location, Intl, JSON, Math, Number, String, Date, Set, Array});
  const socket = () => sockets[sockets.length - 1];
  const rows = () =>
    elements.messages.children.map((item) =>
      item.className === "notice" ? ["notice", item.textContent] : [Number(item.dataset.id), item.children[1].textContent, item.children[2].textContent]
    );
  const receive = (data) => socket().onmessage({data: JSON.stringify(data)});
  const open = () => {
    socket().readyState = 1;
    socket().onopen({});
  };
  return {elements, sockets, socket, rows, receive, open, timers};
}

const USER_IDS = {alice: 1, bob: 2, carol: 3};

// A message as the consumer shapes it for the page's reader, alice ("mine" is hers).
const message = (id, author, text) => ({
  type: "message",
  id,
  room: "lobby",
  author,
  author_id: USER_IDS[author] || 99,
  text,
  created: "2026-01-02T03:04:05+00:00",
  mine: author === "alice",
});

// ------------------------------------------------------------------ tests

test("the page connects to its room on its own host, resuming after the last message shown", () => {
  const page = loadPage([[3, "bob", "hi"], [7, "alice", "yo"]]);
  assert.equal(page.socket().url, "ws://127.0.0.1:8000/ws/rooms/lobby/?after=7");
  assert.equal(page.elements["connection-state"].textContent, "connecting…");
  assert.equal(page.elements["message-text"].disabled, true);
});

test("the server's times are rewritten in the reader's time zone", () => {
  const page = loadPage([[3, "bob", "hi"]]);
  const time = page.elements.messages.children[0].children[0];
  assert.notEqual(time.textContent, "12:00");
  assert.match(time.textContent, /\d/);
});

test("once open, the state says connected and the composer is enabled", () => {
  const page = loadPage();
  page.open();
  assert.equal(page.elements["connection-state"].textContent, "connected");
  assert.equal(page.elements["connection-state"].className, "state state-open");
  assert.equal(page.elements["message-text"].disabled, false);
  assert.equal(page.elements.send.disabled, false);
});

test("messages already shown are not shown twice, and others go in id order", () => {
  const page = loadPage([[3, "bob", "three"]]);
  page.open();
  page.receive({type: "history", messages: [message(3, "bob", "three"), message(4, "bob", "four")], truncated: false});
  page.receive(message(6, "carol", "six"));
  page.receive(message(5, "alice", "five")); // crossed on the way
  page.receive(message(6, "carol", "six"));
  assert.deepEqual(page.rows(), [
    [3, "bob", "three"],
    [4, "bob", "four"],
    [5, "alice", "five"],
    [6, "carol", "six"],
  ]);
  assert.equal(page.elements.messages.children[2].className, "message mine");
});

test("user text is set as text, never parsed as HTML", () => {
  const page = loadPage();
  page.open();
  page.receive(message(1, "<b>mallory</b>", "<img src=x onerror=alert(1)>"));
  const item = page.elements.messages.children[0];
  assert.equal(item.children[1].textContent, "<b>mallory</b>");
  assert.equal(item.children[2].textContent, "<img src=x onerror=alert(1)>");
  assert.equal(item.children[2].children.length, 0);
});

test("join, leave, error and truncated-history notices are shown as text", () => {
  const page = loadPage();
  page.open();
  page.receive({type: "join", user: "bob"});
  page.receive({type: "leave", user: "bob"});
  page.receive({type: "error", error: "a message can't be empty"});
  page.receive({type: "history", messages: [], truncated: true});
  assert.deepEqual(page.rows(), [
    ["notice", "bob joined"],
    ["notice", "bob left"],
    ["notice", "Not sent: a message can't be empty"],
    ["notice", "Some messages were missed while disconnected: reload the page to see them all."],
  ]);
});

test("submitting sends the trimmed text as JSON and clears the input", () => {
  const page = loadPage();
  page.open();
  page.elements["message-text"].value = "  hello  ";
  assert.equal(page.elements.composer.dispatch("submit"), true);
  assert.deepEqual(page.socket().sent, [{type: "message", text: "hello"}]);
  assert.equal(page.elements["message-text"].value, "");
});

test("submitting while disconnected sends nothing and keeps the text", () => {
  const page = loadPage();
  page.elements["message-text"].value = "draft";
  page.elements.composer.dispatch("submit");
  assert.deepEqual(page.socket().sent, []);
  assert.equal(page.elements["message-text"].value, "draft");
});

test("a lost connection shows the wait, and reconnects after the newest message received", () => {
  const page = loadPage([[3, "bob", "three"]]);
  page.open();
  page.receive(message(9, "bob", "nine"));
  page.socket().onclose({code: 1001, reason: ""});
  assert.equal(page.elements["connection-state"].textContent, "reconnecting in 1 s…");
  assert.equal(page.elements["message-text"].disabled, true);
  const retry = page.timers.filter((timer) => timer.ms === 500).pop();
  retry.fn();
  assert.equal(page.sockets.length, 2);
  assert.equal(page.socket().url, "ws://127.0.0.1:8000/ws/rooms/lobby/?after=9");
});

test("the online list follows the presence snapshot and changes, each name once, as text", () => {
  const page = loadPage();
  page.open();
  const online = () => page.elements.online.children.map((item) => [item.textContent, item.className]);
  const presence = (change) => page.receive({type: "rawws.presence", group: "room.lobby", ...change});
  presence({members: [{conn: "c2", user: 1, name: "alice"}, {conn: "c1", user: 2, name: "<b>bob</b>"}]});
  assert.deepEqual(online(), [["<b>bob</b>", ""], ["alice", "me"]]);
  presence({joined: [{conn: "c3", user: 2, name: "<b>bob</b>"}]}); // bob's second tab
  presence({joined: [{conn: "c4", user: 3, name: "carol"}]});
  assert.deepEqual(online(), [["<b>bob</b>", ""], ["alice", "me"], ["carol", ""]]);
  presence({left: [{conn: "c1", user: 2, name: "<b>bob</b>"}]});
  assert.deepEqual(online(), [["<b>bob</b>", ""], ["alice", "me"], ["carol", ""]]);
  presence({left: [{conn: "c3", user: 2, name: "<b>bob</b>"}, {conn: "c4", user: 3, name: "carol"}]});
  assert.deepEqual(online(), [["alice", "me"]]);
  assert.equal(page.elements.online.children[0].children.length, 0);
  // A reconnect's snapshot replaces the list.
  presence({members: [{conn: "c9", user: 3, name: "carol"}]});
  assert.deepEqual(online(), [["carol", ""]]);
  // Presence is not a chat message: nothing in the message list.
  assert.deepEqual(page.rows(), []);
});

test("the reader's own messages are marked by the consumer's \"mine\", not by the author", () => {
  const page = loadPage();
  page.open();
  page.receive(message(4, "alice", "four"));
  page.receive({...message(5, "alice", "five"), mine: false}); // another user who is also called alice
  page.receive({...message(6, "bob", "six"), mine: true});
  assert.deepEqual(
    page.elements.messages.children.map((item) => item.className),
    ["message mine", "message", "message mine"]
  );
});

test("after a reconnect, the history repeating live messages shows each once, in id order", () => {
  const page = loadPage([[3, "bob", "three"]]);
  page.open();
  page.receive(message(5, "bob", "five"));
  page.socket().onclose({code: 1001, reason: ""});
  page.timers.filter((timer) => timer.ms === 500).pop().fn();
  assert.equal(page.socket().url, "ws://127.0.0.1:8000/ws/rooms/lobby/?after=5");
  page.open();
  page.receive(message(7, "carol", "seven")); // live, ahead of the history
  page.receive({type: "history", messages: [message(6, "alice", "six"), message(7, "carol", "seven")], truncated: false});
  assert.deepEqual(page.rows().map((row) => row[0]), [3, 5, 6, 7]);
});
