/*
 * The room page: history is in the HTML (rendered and escaped by Django),
 * live messages come over the WebSocket through RawWS (django_rawws/rawws.js).
 * A reconnect asks with ?after= for what came after the last message shown (the
 * consumer reads it from the database, which survives a server restart); a
 * message that comes twice (in that history and live) is shown once, by id.
 * User data only ever reaches the page through textContent, never innerHTML.
 */
(function () {
  "use strict";

  var config = JSON.parse(document.getElementById("chat-config").textContent);
  // The server renders the room's absolute ws:// or wss:// URL ({% ws_url %}); a page
  // without it falls back to a path on the page's own host.
  var chat = document.getElementById("chat");
  var wsUrl = (chat && chat.dataset.wsUrl) || RawWS.url(config.wsPath);
  var list = document.getElementById("messages");
  var stateLabel = document.getElementById("connection-state");
  var form = document.getElementById("composer");
  var input = document.getElementById("message-text");
  var button = document.getElementById("send");
  var online = document.getElementById("online");

  // The ids shown, so a message that comes twice (history and live) shows once.
  var shown = new Set();
  var lastId = config.lastId;
  Array.prototype.forEach.call(list.querySelectorAll("li[data-id]"), function (item) {
    shown.add(Number(item.dataset.id));
  });

  var timeFormat = new Intl.DateTimeFormat(undefined, {hour: "2-digit", minute: "2-digit"});

  function localTime(iso) {
    return timeFormat.format(new Date(iso));
  }

  // The server wrote times in UTC: show the reader's own time zone instead.
  Array.prototype.forEach.call(list.querySelectorAll("time[datetime]"), function (time) {
    time.textContent = localTime(time.getAttribute("datetime"));
  });

  function atBottom() {
    return list.scrollHeight - list.scrollTop - list.clientHeight < 40;
  }

  function element(tag, className, text) {
    var node = document.createElement(tag);
    if (className) {
      node.className = className;
    }
    if (text !== undefined) {
      node.textContent = text;
    }
    return node;
  }

  function addMessage(message) {
    if (shown.has(message.id)) {
      return;
    }
    shown.add(message.id);
    lastId = Math.max(lastId, message.id);
    // The consumer marks the reader's own messages ("mine").
    var item = element("li", message.mine ? "message mine" : "message");
    item.dataset.id = String(message.id);
    var time = element("time", "", localTime(message.created));
    time.setAttribute("datetime", message.created);
    item.appendChild(time);
    item.appendChild(element("span", "author", message.author));
    item.appendChild(element("span", "text", message.text));
    // In id order, even if two senders' messages arrive crossed.
    var before = null;
    for (var node = list.lastElementChild; node; node = node.previousElementSibling) {
      if (!node.dataset.id || Number(node.dataset.id) < message.id) {
        break;
      }
      before = node;
    }
    list.insertBefore(item, before);
  }

  function addNotice(text) {
    list.appendChild(element("li", "notice", text));
  }

  function show(update) {
    var stick = atBottom();
    update();
    if (stick) {
      list.scrollTop = list.scrollHeight;
    }
  }

  // Presence entries are per connection: a user with two tabs is listed once, by name.
  function showOnline(members) {
    if (!online) {
      return;
    }
    var names = [];
    members.forEach(function (member) {
      if (typeof member.name === "string" && names.indexOf(member.name) < 0) {
        names.push(member.name);
      }
    });
    names.sort();
    online.textContent = "";
    names.forEach(function (name) {
      online.appendChild(element("li", name === config.user ? "me" : "", name));
    });
  }

  var labels = {
    connecting: "connecting…",
    open: "connected",
    reconnecting: "reconnecting…",
    closed: "disconnected",
  };

  function setState(state, detail) {
    var label = labels[state];
    if (state === "reconnecting" && detail.delay !== undefined) {
      label = "reconnecting in " + Math.ceil(detail.delay / 1000) + " s…";
    }
    stateLabel.textContent = label;
    stateLabel.className = "state state-" + state;
    input.disabled = button.disabled = state !== "open";
  }

  var socket = new RawWS(
    // Called before every attempt: a reconnect asks for what came after the last message shown.
    function () {
      return wsUrl + "?after=" + lastId;
    },
    {
      onState: setState,
      onPresence: function (group, members) {
        showOnline(members);
      },
      onMessage: function (data) {
        show(function () {
          if (data.type === "history") {
            if (data.truncated) {
              addNotice("Some messages were missed while disconnected: reload the page to see them all.");
            }
            data.messages.forEach(addMessage);
          } else if (data.type === "message") {
            addMessage(data);
          } else if (data.type === "join") {
            addNotice(data.user + " joined");
          } else if (data.type === "leave") {
            addNotice(data.user + " left");
          } else if (data.type === "error") {
            addNotice("Not sent: " + data.error);
          }
        });
      },
    }
  );

  form.addEventListener("submit", function (event) {
    event.preventDefault();
    var text = input.value.trim();
    if (text && socket.send({type: "message", text: text})) {
      input.value = "";
    }
    input.focus();
  });

  list.scrollTop = list.scrollHeight;
})();
