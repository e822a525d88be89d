/*
 * rawws.js: the django-rawws browser client. A WebSocket that reconnects by itself.
 *
 *   const ws = new RawWS(RawWS.url("/ws/rooms/lobby/"), {
 *     onMessage(data) { ... },            // each message, JSON-decoded
 *     onState(state, detail) { ... },     // "connecting" | "open" | "reconnecting" | "closed"
 *   });
 *   ws.send({type: "message", text: "hi"});   // true if sent, false if not open
 *
 * Reconnects with exponential backoff and full jitter, except after a close
 * code that says retrying would fail again (see shouldReconnect below and
 * docs/javascript-client.md). No dependencies; a plain <script> defines the
 * global RawWS, CommonJS (node) gets it from require().
 */
(function (root, factory) {
  "use strict";
  var RawWS = factory(root);
  if (typeof module === "object" && module && module.exports) {
    module.exports = RawWS;
  } else {
    root.RawWS = RawWS;
  }
})(typeof globalThis !== "undefined" ? globalThis : this, function (root) {
  "use strict";

  var CONNECTING = "connecting";
  var OPEN = "open";
  var RECONNECTING = "reconnecting";
  var CLOSED = "closed";

  var DEFAULTS = {
    json: true,
    protocols: undefined,
    minDelay: 1000, // ms: the first retry waits up to this long
    maxDelay: 30000, // ms: no retry waits longer
    factor: 2, // each failed attempt doubles the ceiling
    stableAfter: 5000, // ms open before the backoff starts over
    connectTimeout: 10000, // ms a socket may stay CONNECTING before it is given up
    maxAttempts: Infinity, // failed attempts in a row before giving up ("closed")
    reconnectOnOnline: true, // retry at once when the browser says it is back online
    resume: true, // unwrap resumable groups' envelopes; reconnect with ?last_id.<group>=<id>
    onMessage: null,
    onGap: null, // function (group): messages of a resumable group were lost; reload its history
    onPresence: null, // function (group, members, message): a group's presence list changed
    onState: null,
    onOpen: null,
    onClose: null,
    onError: null,
    shouldReconnect: null, // function (closeEvent) -> boolean, replaces the default rule
    // Injectable for tests; the browser's own by default.
    WebSocket: null,
    setTimeout: null,
    clearTimeout: null,
    random: null,
    window: null,
  };

  /**
   * Whether a connection closed with `code` should be opened again.
   *
   * Not retried: 1000 (the server ended the conversation on purpose), 1002,
   * 1003, 1007, 1010 (the server refused what this client sends: a retry
   * would repeat it), 3000/3003 (IANA: unauthorized, forbidden) and 4000-4499
   * (the application's "don't retry" range, like HTTP 4xx: 4401 not logged
   * in, 4403 forbidden, 4404 no such thing).
   * Retried: everything else, notably 1001 (server going away), 1006
   * (connection lost, or the handshake refused: a browser can't tell), 1008
   * (django-rawws closes a client that reads too slowly with 1008), 1009,
   * 1011, 1012 (service restart), 1013 (try again later) and 4500-4999.
   */
  function shouldReconnect(code) {
    if (code === 1000 || code === 1002 || code === 1003 || code === 1007 || code === 1010) {
      return false;
    }
    if (code === 3000 || code === 3003) {
      return false;
    }
    if (code >= 4000 && code <= 4499) {
      return false;
    }
    return true;
  }

  /**
   * Backoff ceiling for the `attempt`-th retry in a row (1-based):
   * min(maxDelay, minDelay * factor^(attempt - 1)). The delay itself is drawn
   * uniformly in [0, ceiling) ("full jitter"), so clients cut off together by
   * a restart don't come back together.
   */
  function backoffCeiling(attempt, options) {
    var ceiling = options.minDelay * Math.pow(options.factor, Math.max(0, attempt - 1));
    return Math.min(options.maxDelay, ceiling);
  }

  /**
   * The ws:// or wss:// URL of `path` on the page's own host: wss:// when the
   * page came over https://. An absolute ws:// or wss:// URL is returned as is.
   */
  function url(path, location) {
    if (/^wss?:\/\//i.test(path)) {
      return path;
    }
    location = location || root.location;
    var scheme = location.protocol === "https:" ? "wss://" : "ws://";
    return scheme + location.host + (path.charAt(0) === "/" ? path : "/" + path);
  }

  function RawWS(target, options) {
    if (!(this instanceof RawWS)) {
      return new RawWS(target, options);
    }
    var opts = {};
    var key;
    for (key in DEFAULTS) {
      opts[key] = DEFAULTS[key];
    }
    for (key in options || {}) {
      if (!Object.prototype.hasOwnProperty.call(DEFAULTS, key)) {
        throw new TypeError("RawWS: unknown option " + JSON.stringify(key));
      }
      if (options[key] !== undefined) {
        opts[key] = options[key];
      }
    }
    opts.WebSocket = opts.WebSocket || root.WebSocket;
    if (typeof opts.WebSocket !== "function") {
      throw new TypeError("RawWS: no WebSocket implementation (pass options.WebSocket)");
    }
    opts.setTimeout = opts.setTimeout || root.setTimeout.bind(root);
    opts.clearTimeout = opts.clearTimeout || root.clearTimeout.bind(root);
    opts.random = opts.random || Math.random;
    opts.window = opts.window || (typeof root.addEventListener === "function" ? root : null);

    /** A URL string, or a function returning one, called before every attempt. */
    this.target = target;
    this.options = opts;
    /** "connecting", "open", "reconnecting" or "closed". */
    this.state = null;
    /** Failed attempts since the last stable connection. */
    this.attempt = 0;
    /** The current WebSocket, or null between attempts. */
    this.socket = null;
    /** The close event that ended the last connection, or null. */
    this.lastClose = null;
    /** The last message id seen per resumable group: sent back at each reconnect. */
    this.lastIds = {};
    /** Who is in each presence group, by connection id: {group: {conn: entry}}. */
    this.presence = {};

    this._everOpened = false;
    this._retryTimer = null;
    this._connectTimer = null;
    this._stableTimer = null;
    this._onOnline = null;
    this._listen();
    this._open();
  }

  RawWS.CONNECTING = CONNECTING;
  RawWS.OPEN = OPEN;
  RawWS.RECONNECTING = RECONNECTING;
  RawWS.CLOSED = CLOSED;
  RawWS.DEFAULTS = DEFAULTS;
  RawWS.shouldReconnect = shouldReconnect;
  RawWS.backoffCeiling = backoffCeiling;
  RawWS.url = url;
  RawWS.isEnvelope = isEnvelope;
  RawWS.withLastIds = withLastIds;

  /** Send `data` (JSON-encoded unless options.json is false). True if it went out, false if not open. */
  RawWS.prototype.send = function (data) {
    var socket = this.socket;
    if (this.state !== OPEN || !socket || socket.readyState !== 1) {
      return false;
    }
    socket.send(this.options.json ? JSON.stringify(data) : data);
    return true;
  };

  /** Close for good (no reconnect): the state becomes "closed". */
  RawWS.prototype.close = function (code, reason) {
    this._stopTimers();
    this._unlisten();
    var socket = this._detach();
    if (socket) {
      this._closeSocket(socket, code === undefined ? 1000 : code, reason || "");
    }
    this._setState(CLOSED, {code: code === undefined ? 1000 : code, reason: reason || "", byClient: true});
  };

  /** Drop the current connection (if any) and connect again now, with the backoff reset. */
  RawWS.prototype.reconnect = function () {
    this._stopTimers();
    var socket = this._detach();
    if (socket) {
      this._closeSocket(socket, 1000, "reconnecting");
    }
    this.attempt = 0;
    this._listen();
    this._open();
  };

  /** Bytes queued by send() and not yet sent, as the browser reports them. */
  Object.defineProperty(RawWS.prototype, "bufferedAmount", {
    get: function () {
      return this.socket ? this.socket.bufferedAmount || 0 : 0;
    },
  });

  // ------------------------------------------------------------------ internals

  /**
   * The URL of the next attempt. A function target is called each time, so
   * the page can put a resume point in the query string (the chat sends the
   * last message id it shows). The resume-after-reconnect support (last id
   * per group) will add its parameters here.
   */
  RawWS.prototype._attemptUrl = function () {
    var target = typeof this.target === "function" ? this.target() : this.target;
    return this.options.resume ? withLastIds(target, this.lastIds) : target;
  };

  /**
   * Every decoded message passes here before onMessage. A resumable group's
   * envelope {"id", "group", "data"} is unwrapped (onMessage gets `data`, and
   * {id, group} as a third argument) and its id recorded for the next
   * reconnect; the server's control messages "rawws.gap" and
   * "rawws.presence" go to onGap and onPresence when given (to onMessage
   * otherwise). See docs/groups.md.
   */
  RawWS.prototype._dispatch = function (data, event) {
    var onMessage = this.options.onMessage;
    if (this.options.resume && this.options.json && isEnvelope(data)) {
      this.lastIds[data.group] = data.id;
      if (onMessage) {
        onMessage.call(this, data.data, event, {id: data.id, group: data.group});
      }
      return;
    }
    if (this.options.json && data && typeof data === "object" && typeof data.group === "string") {
      if (data.type === "rawws.gap" && this.options.onGap) {
        this.options.onGap.call(this, data.group);
        return;
      }
      if (data.type === "rawws.presence") {
        var members = this._updatePresence(data);
        if (this.options.onPresence) {
          this.options.onPresence.call(this, data.group, members, data);
          return;
        }
      }
    }
    if (onMessage) {
      onMessage.call(this, data, event);
    }
  };

  /** Apply a presence snapshot or change; return the group's members, sorted by connection id. */
  RawWS.prototype._updatePresence = function (message) {
    var group = message.group;
    var members = this.presence[group] || {};
    var i;
    if (Array.isArray(message.members)) {
      members = {};
      for (i = 0; i < message.members.length; i++) {
        members[message.members[i].conn] = message.members[i];
      }
    }
    for (i = 0; Array.isArray(message.joined) && i < message.joined.length; i++) {
      members[message.joined[i].conn] = message.joined[i];
    }
    for (i = 0; Array.isArray(message.left) && i < message.left.length; i++) {
      delete members[message.left[i].conn];
    }
    this.presence[group] = members;
    return Object.keys(members)
      .sort()
      .map(function (conn) {
        return members[conn];
      });
  };

  /** Exactly {"id": string, "group": string, "data": ...}: what a resumable group sends. */
  function isEnvelope(data) {
    if (!data || typeof data !== "object" || Array.isArray(data)) {
      return false;
    }
    var keys = Object.keys(data);
    return (
      keys.length === 3 &&
      typeof data.id === "string" &&
      typeof data.group === "string" &&
      Object.prototype.hasOwnProperty.call(data, "data")
    );
  }

  /** `target` with a last_id.<group>=<id> query parameter per group (before any #fragment). */
  function withLastIds(target, lastIds) {
    var params = [];
    for (var group in lastIds) {
      if (Object.prototype.hasOwnProperty.call(lastIds, group)) {
        params.push("last_id." + encodeURIComponent(group) + "=" + encodeURIComponent(lastIds[group]));
      }
    }
    if (!params.length) {
      return target;
    }
    var hash = target.indexOf("#");
    var fragment = hash >= 0 ? target.slice(hash) : "";
    var base = hash >= 0 ? target.slice(0, hash) : target;
    return base + (base.indexOf("?") >= 0 ? "&" : "?") + params.join("&") + fragment;
  }

  /** Retry at once, rather than at the end of the backoff, when the browser comes back online. */
  RawWS.prototype._listen = function () {
    var win = this.options.window;
    if (!this.options.reconnectOnOnline || !win || this._onOnline) {
      return;
    }
    var self = this;
    this._onOnline = function () {
      if (self.state === RECONNECTING && self._retryTimer !== null) {
        self._clearTimer("_retryTimer");
        self._open();
      }
    };
    win.addEventListener("online", this._onOnline);
  };

  RawWS.prototype._unlisten = function () {
    if (this._onOnline) {
      this.options.window.removeEventListener("online", this._onOnline);
      this._onOnline = null;
    }
  };

  RawWS.prototype._open = function () {
    var opts = this.options;
    var socket;
    this._setState(this._everOpened || this.attempt > 0 ? RECONNECTING : CONNECTING, {attempt: this.attempt});
    try {
      var target = this._attemptUrl();
      socket = opts.protocols === undefined ? new opts.WebSocket(target) : new opts.WebSocket(target, opts.protocols);
    } catch (error) {
      // A malformed URL or a refused scheme fails the same way on every attempt.
      this._report(error);
      this._setState(CLOSED, {code: 1006, reason: String(error && error.message), byClient: false});
      return;
    }
    this.socket = socket;
    try {
      socket.binaryType = "arraybuffer";
    } catch (error) {
      // Not every implementation lets it be set; strings are what JSON needs anyway.
    }
    var self = this;
    var opened = false;
    socket.onopen = function (event) {
      if (self.socket === socket) {
        opened = true;
        self._opened(event);
      }
    };
    socket.onmessage = function (event) {
      if (self.socket === socket) {
        self._received(event);
      }
    };
    socket.onerror = function (event) {
      if (self.socket !== socket) {
        return;
      }
      self._report(event);
      if (!opened) {
        // The attempt failed. A browser fires close (1006) next; node 20's
        // WebSocket never does, and the socket would hang in CONNECTING.
        self._abandon(socket, "");
      }
      // On an open socket a close event follows, and decides what happens next.
    };
    socket.onclose = function (event) {
      if (self.socket === socket) {
        self._closed(event);
      }
    };
    this._connectTimer = opts.setTimeout(function () {
      self._connectTimer = null;
      if (self.socket === socket && !opened) {
        self._abandon(socket, "connect timeout");
      }
    }, opts.connectTimeout);
  };

  /** Give up an attempt that didn't open: its later events are ignored, and a retry is planned. */
  RawWS.prototype._abandon = function (socket, reason) {
    this._detach();
    try {
      socket.close();
    } catch (error) {
      // Closing a socket that never opened may throw in some implementations.
    }
    this._closed({code: 1006, reason: reason, wasClean: false});
  };

  RawWS.prototype._opened = function (event) {
    var self = this;
    this._clearTimer("_connectTimer");
    this._everOpened = true;
    this._stableTimer = this.options.setTimeout(function () {
      self._stableTimer = null;
      self.attempt = 0;
    }, this.options.stableAfter);
    this._setState(OPEN, {attempt: this.attempt});
    if (this.options.onOpen) {
      this.options.onOpen.call(this, event);
    }
  };

  RawWS.prototype._received = function (event) {
    var data = event.data;
    if (this.options.json) {
      if (typeof data !== "string") {
        this._report(new Error("RawWS: a binary message arrived where JSON text was expected"));
        return;
      }
      try {
        data = JSON.parse(data);
      } catch (error) {
        this._report(error);
        return;
      }
    }
    this._dispatch(data, event);
  };

  RawWS.prototype._closed = function (event) {
    this._clearTimer("_connectTimer");
    this._clearTimer("_stableTimer");
    this.socket = null;
    this.lastClose = event;
    if (this.options.onClose) {
      this.options.onClose.call(this, event);
    }
    if (this.state === CLOSED) {
      return; // onClose called close()
    }
    var retry = this.options.shouldReconnect ? this.options.shouldReconnect(event) : shouldReconnect(event.code);
    this.attempt += 1;
    if (!retry || this.attempt > this.options.maxAttempts) {
      this._setState(CLOSED, {code: event.code, reason: event.reason || "", byClient: false});
      return;
    }
    var delay = Math.floor(this.options.random() * backoffCeiling(this.attempt, this.options));
    var self = this;
    this._retryTimer = this.options.setTimeout(function () {
      self._retryTimer = null;
      self._open();
    }, delay);
    this._setState(RECONNECTING, {attempt: this.attempt, delay: delay, code: event.code, reason: event.reason || ""}, true);
  };

  RawWS.prototype._setState = function (state, detail, always) {
    if (state === this.state && !always) {
      return;
    }
    this.state = state;
    if (this.options.onState) {
      this.options.onState.call(this, state, detail || {});
    }
  };

  RawWS.prototype._report = function (error) {
    if (this.options.onError) {
      this.options.onError.call(this, error);
    }
  };

  RawWS.prototype._detach = function () {
    var socket = this.socket;
    this.socket = null;
    if (socket) {
      socket.onopen = socket.onmessage = socket.onerror = socket.onclose = null;
    }
    return socket;
  };

  /**
   * Close a detached socket. A browser refuses codes other than 1000 and
   * 3000-4999 (and long reasons) with an exception: report it, and close
   * without a code rather than leave the socket open.
   */
  RawWS.prototype._closeSocket = function (socket, code, reason) {
    try {
      socket.close(code, reason);
    } catch (error) {
      this._report(error);
      try {
        socket.close();
      } catch (ignored) {
        // Nothing more to do: the socket is detached and will be collected.
      }
    }
  };

  RawWS.prototype._clearTimer = function (name) {
    if (this[name] !== null) {
      this.options.clearTimeout(this[name]);
      this[name] = null;
    }
  };

  RawWS.prototype._stopTimers = function () {
    this._clearTimer("_retryTimer");
    this._clearTimer("_connectTimer");
    this._clearTimer("_stableTimer");
  };

  return RawWS;
});
