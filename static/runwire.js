/*
 * runwire.js — live status for operation runs and review packs, instead of wire:poll.
 *
 *   const rw = new Runwire({ baseUrl: "https://ops.example.com/runwire", token, refreshToken });
 *   rw.watchRun(42, { onState: (run) => render(run), onEnd: () => {}, onError: (e) => {} });
 *   rw.watchReviewPack(7, { onState: (card) => renderPack(card) });
 *   rw.watchWorkspace(3, {
 *     onSnapshot: (runs, snapshot) => {}, // replace everything the page shows
 *     onRun: (run) => {},                 // a run was created or changed (terminal ones too)
 *     onReviewPack: (card) => {},         // a tenant's review-pack card changed
 *     onConnectionChange: (live) => {},
 *   });
 *
 * - Every run and review-pack subscription shares ONE connection (the multiplexed /v1/streams
 *   endpoint); each workspace feed has its own.
 * - One connection per browser, not per tab: tabs of one origin and one user elect a leader
 *   (Web Locks) that streams the union of every tab's subscriptions and relays the states to
 *   the others (BroadcastChannel). When the leader closes, another tab takes over and catches
 *   up from a fresh snapshot. Without those APIs (or without a known user) each tab connects
 *   on its own.
 * - A subscription ends by itself once its item is terminal (onEnd); the connection closes
 *   when nothing active is left: a finished page costs nothing.
 * - A workspace feed is everything a dashboard shows, on one stream that does not end because
 *   runs or packs finish. onSnapshot(runs, snapshot) gets the active runs and the whole
 *   snapshot — `snapshot.recently_finished` (runs finished in the last 24 h, newest first) and
 *   `snapshot.review_packs` (the card `{type: "review_pack", tenant_id, terminal, pack}` of
 *   every tenant whose packs the user may view). A snapshot may come again at any time and
 *   replaces everything. Then onRun(run) for every run change and onReviewPack(card) for every
 *   card change (a pack's new status, a newer pack), as they commit; no timer, no re-watch.
 * - While a tab is hidden its subscriptions are not streamed; when it is visible again a
 *   fresh snapshot catches it up.
 * - Never a reconnect storm: every reconnect (network error, dropped stream, 429/503, 401)
 *   waits with exponential backoff and jitter, 1 s doubling to 30 s. A 401 (or an `end` with
 *   reason token_expired) calls options.refreshToken() for a new token; after 3 consecutive
 *   refreshes that did not give a working token (a refreshToken that throws, rejects or
 *   returns nothing counts too), it stops and calls onError({status: 401, cause}).
 * - hold() / release(): defer applying updates while a modal or action is open; release()
 *   applies only the newest state of each item.
 *
 * Authentication: pass `token` (sent as ?access_token=, no CORS preflight needed), or call
 * `await Runwire.startSession(baseUrl, token)` once to trade it for an HttpOnly cookie and pass
 * `withCredentials: true` (cross-origin) or nothing (same origin).
 */
(function (global) {
  "use strict";

  var BACKOFF_MIN_MS = 1000;
  var BACKOFF_MAX_MS = 30000;
  /** Refreshes in a row that may fail before the client gives up. */
  var MAX_AUTH_TRIES = 3;
  /** A stream that lived this long was healthy: the next drop starts the backoff over. */
  var HEALTHY_MS = 10000;
  /** A new leader waits this long for the other tabs' subscriptions before connecting. */
  var GATHER_MS = 100;
  /** Items one /v1/streams connection may carry (the server's limit); the rest wait their turn. */
  var MAX_ITEMS = 100;

  /** The two item kinds: how each is named on the wire, addressed, streamed and identified. */
  var KINDS = {
    run: {
      type: "operation_run",
      param: "runs",
      snapshotPath: function (id) { return "/v1/runs/" + encodeURIComponent(id); },
      idOf: function (state) { return String(state.id); },
      versionOf: function (state) { return String(state.version); },
    },
    pack: {
      type: "review_pack",
      param: "review_pack_tenants",
      snapshotPath: function (id) { return "/v1/tenants/" + encodeURIComponent(id) + "/review-pack"; },
      idOf: function (state) { return String(state.tenant_id); },
      versionOf: function (state) { return state.pack ? state.pack.id + "." + state.pack.version : "0.0"; },
    },
  };
  var KIND_NAMES = ["run", "pack"];

  /** The kind of a state by its `type` ("run", "pack"), or null for a type this client does not know. */
  function kindOf(state) {
    var type = state && state.type;
    for (var i = 0; i < KIND_NAMES.length; i++) {
      if (KINDS[KIND_NAMES[i]].type === type) return KIND_NAMES[i];
    }
    return null;
  }

  /** Full jitter in the upper half: attempt 0 waits 0.5–1 s, then 1–2 s, … up to 15–30 s. */
  function backoff(attempt) {
    var d = Math.min(BACKOFF_MAX_MS, BACKOFF_MIN_MS * Math.pow(2, Math.min(attempt, 10)));
    return d / 2 + Math.random() * (d / 2);
  }

  function emptyKeys() {
    return { run: new Set(), pack: new Set() };
  }

  function emptyStates() {
    return { run: new Map(), pack: new Map() };
  }

  function call(fn) {
    if (typeof fn !== "function") return;
    try {
      fn.apply(null, Array.prototype.slice.call(arguments, 1));
    } catch (e) {
      setTimeout(function () { throw e; }, 0); // a page's handler must not break the client
    }
  }

  /** The user a token speaks for (its `sub`), or null. Used only to keep users' tabs apart. */
  function tokenSubject(token) {
    try {
      var part = String(token).split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
      var sub = JSON.parse(atob(part + "===".slice((part.length + 3) % 4))).sub;
      return sub === undefined || sub === null ? null : String(sub);
    } catch (e) {
      return null;
    }
  }

  // The user of the session cookie, learned from Runwire.startSession, per runwire base URL.
  var sessionUsers = new Map();

  /** runwire's base URL made absolute, without a trailing slash: what tabs share by. */
  function absoluteBase(baseUrl) {
    try {
      return new URL(baseUrl || "/", global.location ? global.location.href : undefined).href.replace(/\/$/, "");
    } catch (e) {
      return baseUrl || "";
    }
  }

  // ---- SSE over fetch --------------------------------------------------------------------

  /** Calls onEvent(type, data) for each SSE message of a response; resolves when it ends. */
  function readEvents(response, onEvent) {
    var reader = response.body.getReader();
    var decoder = new TextDecoder();
    var buffer = "";
    var type = "";
    var data = [];
    function line(text) {
      if (text.charAt(text.length - 1) === "\r") text = text.slice(0, -1);
      if (text === "") {
        if (data.length) onEvent(type || "message", data.join("\n"));
        type = "";
        data = [];
        return;
      }
      if (text.charAt(0) === ":") return;
      var colon = text.indexOf(":");
      var field = colon < 0 ? text : text.slice(0, colon);
      var value = colon < 0 ? "" : text.slice(colon + 1);
      if (value.charAt(0) === " ") value = value.slice(1);
      if (field === "event") type = value;
      else if (field === "data") data.push(value);
    }
    function pump() {
      return reader.read().then(function (chunk) {
        if (chunk.done) return;
        buffer += decoder.decode(chunk.value, { stream: true });
        var lines = buffer.split("\n");
        buffer = lines.pop();
        lines.forEach(line);
        return pump();
      });
    }
    return pump();
  }

  /**
   * One streaming connection and its reconnect policy. `spec.path()` says what to stream
   * (null: nothing); the spec hears events (`onEvent`), `end` (`onEnd`), refusals
   * (`onRefused(status)`) and connection changes (`onConnection(on)`); a 401 goes to the
   * client's one auth path. Every reconnect waits with backoff.
   */
  function Connection(client, spec) {
    this.client = client;
    this.spec = spec;
    this.ctrl = null; // AbortController of the request in flight or the open stream
    this.timer = null; // a scheduled (re)connect
    this.failures = 0; // drops in a row, for the backoff
    this.connected = false;
  }

  Connection.prototype.active = function () {
    return !!(this.ctrl || this.timer);
  };

  /** Connects now (closing the current stream): for a changed subscription set. */
  Connection.prototype.restart = function () {
    this.stop();
    this._open();
  };

  /** Connects unless connected or already waiting to. */
  Connection.prototype.ensure = function () {
    if (!this.active()) this._open();
  };

  Connection.prototype.stop = function () {
    if (this.timer) clearTimeout(this.timer);
    this.timer = null;
    if (this.ctrl) this.ctrl.abort();
    this.ctrl = null;
    this._setConnected(false);
  };

  /** Reconnects after the backoff (at least `minMs`). */
  Connection.prototype.retry = function (minMs) {
    this.stop();
    var self = this;
    var delay = Math.max(minMs || 0, backoff(this.failures++));
    this.timer = setTimeout(function () {
      self.timer = null;
      self._open();
    }, delay);
  };

  Connection.prototype._setConnected = function (on) {
    if (this.connected === on) return;
    this.connected = on;
    if (this.spec.onConnection) this.spec.onConnection(on);
  };

  Connection.prototype._open = function () {
    var client = this.client;
    var path = this.spec.path();
    if (!path || client._stopped || client._refreshing) return;
    var self = this;
    var ctrl = new AbortController();
    this.ctrl = ctrl;
    var opened = Date.now();
    var current = function () { return self.ctrl === ctrl; };
    client._fetch(path, { signal: ctrl.signal, headers: { Accept: "text/event-stream" }, cache: "no-store" })
      .then(function (response) {
        if (!current()) return;
        var status = response.status;
        if (status === 200) {
          return readEvents(response, function (type, data) {
            if (!current()) return;
            var body = JSON.parse(data);
            if (type === "end") {
              ctrl.abort();
              self.ctrl = null;
              // Only a stream that lived a while resets the backoff: a server that ends every
              // stream at once (for a reason this client does not know) must not set the pace.
              if (Date.now() - opened >= HEALTHY_MS) self.failures = 0;
              self._setConnected(false);
              self.spec.onEnd(body);
              return;
            }
            if (type === "snapshot") {
              client._authWorked();
              self._setConnected(true);
            }
            self.spec.onEvent(type, body);
          }).then(function () {
            // Closed without `end` (shutdown, lifetime, a proxy): reconnect, after a pause.
            if (!current()) return;
            if (Date.now() - opened >= HEALTHY_MS) self.failures = 0;
            self.retry();
          });
        }
        if (response.body && response.body.cancel) response.body.cancel().catch(function () {});
        self.ctrl = null;
        if (status === 204) return self.spec.onEnd({ reason: "terminal" });
        if (status === 401) return client._unauthorized({ status: 401 });
        if (status === 400 || status === 403 || status === 404) return self.spec.onRefused(status);
        // 429, 503, 5xx: the server says how long to wait, the backoff says at least as long.
        var after = Number(response.headers.get("Retry-After"));
        self.retry(after > 0 ? after * 1000 : 0);
      })
      .catch(function () {
        if (current()) self.retry(); // network error, or the stream broke mid-way
      });
  };

  // ---- the hub: the one place that holds connections -------------------------------------

  /**
   * Streams the union of every tab's subscriptions (its own `client`'s and, when leading, the
   * ones other tabs announced) and hands each state to `deliver(message)`, which applies it
   * to this tab and relays it to the others.
   */
  function Hub(client, deliver) {
    var self = this;
    this.client = client;
    this.deliver = deliver;
    this.tabs = new Map(); // tab id -> { items: {run: [ids], pack: [ids]}, feeds: [ids] }
    this.streaming = emptyKeys(); // what the item connection was opened with
    this.terminal = emptyKeys(); // wanted items whose terminal state was seen
    this.refused = emptyKeys(); // wanted items runwire refused (403/404)
    this.states = { run: new Map(), pack: new Map() }; // latest state per wanted item
    this.feeds = new Map(); // workspace id -> Connection
    this.scheduled = null;
    this.items = new Connection(client, {
      path: function () { return self._itemsPath(); },
      onEvent: function (type, state) {
        if (type === "snapshot" || type === "update") self._itemState(state);
      },
      onEnd: function (body) { self._itemsEnded(body); },
      onRefused: function () { self._probe(); },
      onConnection: function (on) { self.deliver({ t: "conn", on: on }); },
    });
  }

  Hub.prototype._wanted = function () {
    var items = emptyKeys();
    var feeds = new Set();
    var add = function (sub) {
      KIND_NAMES.forEach(function (k) { sub.items[k].forEach(function (id) { items[k].add(String(id)); }); });
      sub.feeds.forEach(function (id) { feeds.add(String(id)); });
    };
    add(this.client._subscriptions());
    this.tabs.forEach(add);
    return { items: items, feeds: feeds };
  };

  Hub.prototype._itemsPath = function () {
    var wanted = this._wanted().items;
    var self = this;
    var query = [];
    var streaming = emptyKeys();
    var room = MAX_ITEMS;
    KIND_NAMES.forEach(function (k) {
      var ids = Array.from(wanted[k]).filter(function (id) {
        return !self.terminal[k].has(id) && !self.refused[k].has(id);
      }).slice(0, room);
      room -= ids.length;
      ids.forEach(function (id) { streaming[k].add(id); });
      if (ids.length) query.push(KINDS[k].param + "=" + ids.map(encodeURIComponent).join(","));
    });
    this.streaming = streaming;
    return query.length ? "/v1/streams?" + query.join("&") : null;
  };

  /**
   * Re-plans the connections once per burst of subscription changes: after the current task
   * (a microtask, which browsers do not throttle in hidden tabs, where a leader may well be),
   * or after `delay` ms.
   */
  Hub.prototype.schedule = function (delay) {
    var self = this;
    if (this.scheduled) return;
    var ticket = (this.scheduled = {});
    var run = function () {
      if (self.scheduled !== ticket) return; // stopped meanwhile
      self.scheduled = null;
      self._plan();
    };
    if (delay) setTimeout(run, delay);
    else Promise.resolve().then(run);
  };

  Hub.prototype._plan = function () {
    var self = this;
    var wanted = this._wanted();
    this._catchUp(this.client._subscriptions(), this.client._tab);
    // Forget what nobody wants any more, so a later subscription starts fresh.
    KIND_NAMES.forEach(function (k) {
      [self.terminal[k], self.refused[k]].forEach(function (set) {
        set.forEach(function (id) { if (!wanted.items[k].has(id)) set.delete(id); });
      });
      self.states[k].forEach(function (_, id) { if (!wanted.items[k].has(id)) self.states[k].delete(id); });
    });
    // Items: reconnect only to add something; a shrinking set keeps its connection.
    var missing = false;
    var any = false;
    KIND_NAMES.forEach(function (k) {
      wanted.items[k].forEach(function (id) {
        if (self.terminal[k].has(id) || self.refused[k].has(id)) return;
        any = true;
        if (!self.streaming[k].has(id)) missing = true;
      });
    });
    if (!any) this.items.stop();
    else if (missing && !this.items.timer) this.items.restart();
    else this.items.ensure();
    // Feeds: one connection each.
    this.feeds.forEach(function (conn, id) {
      if (!wanted.feeds.has(id)) {
        conn.stop();
        self.feeds.delete(id);
      }
    });
    wanted.feeds.forEach(function (id) {
      if (!self.feeds.has(id)) {
        var conn = self._feedConnection(id);
        self.feeds.set(id, conn);
        conn.ensure();
      }
    });
  };

  Hub.prototype._feedConnection = function (id) {
    var self = this;
    var conn = new Connection(this.client, {
      path: function () { return "/v1/workspaces/" + encodeURIComponent(id) + "/runs/events"; },
      onEvent: function (type, body) {
        if (type === "snapshot" || type === "update") self.deliver({ t: "feed", id: id, type: type, body: body });
      },
      onEnd: function (body) {
        if (body.reason === "token_expired") return self.client._unauthorized({ status: 401, reason: body.reason });
        if (body.reason === "unavailable") return conn.retry();
        self._dropFeed(id, conn);
        self.deliver({ t: "feedEnd", id: id, body: body });
      },
      onRefused: function (status) {
        self._dropFeed(id, conn);
        self.deliver({ t: "feedError", id: id, error: { status: status } });
      },
      onConnection: function (on) { self.deliver({ t: "feedConn", id: id, on: on }); },
    });
    return conn;
  };

  Hub.prototype._dropFeed = function (id, conn) {
    conn.stop();
    if (this.feeds.get(id) === conn) this.feeds.delete(id);
  };

  Hub.prototype._itemState = function (state) {
    var kind = kindOf(state);
    if (!kind) return;
    var id = KINDS[kind].idOf(state);
    this.states[kind].set(id, state);
    if (state.terminal) this.terminal[kind].add(id);
    this.deliver({ t: "item", kind: kind, id: id, state: state });
  };

  Hub.prototype._itemsEnded = function (body) {
    var reason = body && body.reason;
    this.streaming = emptyKeys();
    if (reason === "terminal") return this.schedule(); // anything still wanted reconnects
    if (reason === "token_expired") return this.client._unauthorized({ status: 401, reason: reason });
    if (reason === "unavailable") return this.items.retry();
    // forbidden, gone, or a reason this client does not know: find out item by item.
    this._probe();
  };

  /** After a refused set: ask each item's JSON snapshot which one failed, then carry on. */
  Hub.prototype._probe = function () {
    var self = this;
    var client = this.client;
    var wanted = this._wanted().items;
    var checks = [];
    KIND_NAMES.forEach(function (k) {
      wanted[k].forEach(function (id) {
        if (self.terminal[k].has(id) || self.refused[k].has(id)) return;
        checks.push(client._fetch(KINDS[k].snapshotPath(id), {}).then(function (r) {
          if (r.ok) return r.json().then(function (state) { self._itemState(state); return 200; });
          if (r.status === 403 || r.status === 404 || r.status === 400) {
            self.refused[k].add(id);
            self.deliver({ t: "itemError", kind: k, id: id, error: { status: r.status } });
          }
          return r.status;
        }, function () { return 0; }));
      });
    });
    Promise.all(checks).then(function (statuses) {
      if (client._stopped) return;
      if (statuses.indexOf(401) >= 0) return client._unauthorized({ status: 401 });
      // The rest (and anything overloaded or unreachable) after a pause: whatever made the
      // set fail may recur, and the backoff keeps that from becoming a loop.
      self.items.retry();
    });
  };

  /** A tab's announced subscriptions (null: it left). */
  Hub.prototype.setTab = function (tab, subs) {
    if (subs) this.tabs.set(tab, subs);
    else this.tabs.delete(tab);
    if (subs) {
      this._catchUp(subs, tab);
      this.deliver({ t: "conn", on: this.items.connected, to: tab });
    }
    this.schedule();
  };

  /**
   * A subscriber that joined a connection already running gets what it missed: the latest
   * state of items it waits for, and a fresh snapshot of feeds it waits for (a feed's state
   * is a list, rebuilt only by a snapshot; the other subscribers simply replace theirs).
   */
  Hub.prototype._catchUp = function (subs, tab) {
    var self = this;
    KIND_NAMES.forEach(function (k) {
      subs.waiting[k].forEach(function (id) {
        var state = self.states[k].get(String(id));
        if (state) self.deliver({ t: "item", kind: k, id: String(id), state: state, to: tab });
      });
    });
    subs.fresh.forEach(function (id) {
      var conn = self.feeds.get(String(id));
      if (conn && conn.connected) conn.restart();
    });
  };

  /** Re-open everything now (a fresh token). */
  Hub.prototype.reconnect = function () {
    this.streaming = emptyKeys();
    this.items.stop();
    this.feeds.forEach(function (conn) { conn.stop(); });
    this.feeds.clear();
    this._plan();
  };

  Hub.prototype.stop = function () {
    this.scheduled = null;
    this.items.stop();
    this.feeds.forEach(function (conn) { conn.stop(); });
    this.feeds.clear();
  };

  // ---- the client ------------------------------------------------------------------------

  function Runwire(options) {
    options = options || {};
    var self = this;
    this.baseUrl = (options.baseUrl || "").replace(/\/$/, "");
    this.token = options.token || null;
    this.refreshToken = options.refreshToken || null;
    this.onError = options.onError || null;
    this.withCredentials = !!options.withCredentials;
    this.pauseWhenHidden = options.pauseWhenHidden !== false;
    this.onConnectionChange = options.onConnectionChange || function () {};
    this._items = { run: new Map(), pack: new Map() }; // id -> { kind, id, handlers, state, version, pending }
    this._feeds = new Map(); // workspace id -> Set of feed subscriptions
    this._held = 0;
    this._pending = new Set(); // items and feed subscriptions with held states
    this._hidden = false;
    this._stopped = false;
    this._authTries = 0;
    this._refreshing = false;
    this._listeners = []; // [target, type, fn]: everything close() removes
    this._tab = Math.random().toString(36).slice(2) + Date.now().toString(36);
    this._hub = null; // set while this tab holds the connections
    this._channel = null;
    this._releaseLock = null;
    this._lockAbort = null;
    this._user = options.user != null ? String(options.user) : tokenSubject(this.token);
    if (this._user == null && sessionUsers.has(this._base())) this._user = sessionUsers.get(this._base());

    if (this.pauseWhenHidden && global.document) {
      this._hidden = global.document.visibilityState === "hidden";
      this._listen(global.document, "visibilitychange", function () {
        self._setHidden(global.document.visibilityState === "hidden");
      });
    }
    var share = options.shareConnection !== false && this._user != null &&
      typeof global.BroadcastChannel === "function" && global.navigator && global.navigator.locks &&
      typeof AbortController === "function";
    if (share) this._joinTabs();
    else this._lead();
  }

  /** Trades a bearer token for the HttpOnly `runwire_token` cookie. */
  Runwire.startSession = function (baseUrl, token) {
    var base = (baseUrl || "").replace(/\/$/, "");
    return fetch(base + "/v1/session", {
      method: "POST",
      credentials: "include",
      headers: { Authorization: "Bearer " + token },
    }).then(function (r) {
      if (!r.ok) throw new Error("runwire session refused: " + r.status);
      return r.json();
    }).then(function (session) {
      sessionUsers.set(absoluteBase(base), String(session.user_id));
      return session;
    });
  };

  Runwire.prototype.watchRun = function (runId, handlers) {
    return this._watch("run", runId, handlers);
  };

  Runwire.prototype.watchReviewPack = function (tenantId, handlers) {
    return this._watch("pack", tenantId, handlers);
  };

  /** Subscribes to many items at once; returns one handle that closes them all. */
  Runwire.prototype.watchMany = function (items, handlers) {
    var self = this;
    var subs = [];
    (items.runs || []).forEach(function (id) { subs.push(self.watchRun(id, handlers)); });
    (items.reviewPackTenants || []).forEach(function (id) { subs.push(self.watchReviewPack(id, handlers)); });
    return { close: function () { subs.forEach(function (s) { s.close(); }); } };
  };

  /**
   * The workspace feed, everything a dashboard shows on one stream:
   * - onSnapshot(runs, snapshot): the active runs, and the whole snapshot with
   *   `recently_finished` and `review_packs` (one card per tenant whose packs the user may
   *   view). It may come again at any time: replace everything you show with it.
   * - onRun(run): a run was created or changed, terminal ones included.
   * - onReviewPack(card): a tenant's review-pack card changed (`{type: "review_pack",
   *   tenant_id, terminal, pack}`; a newer pack replaces the older one in its card).
   * - onConnectionChange(live), onEnd(body) (access ended), onError(error).
   * It does not end because runs or packs finish.
   */
  Runwire.prototype.watchWorkspace = function (workspaceId, handlers) {
    var self = this;
    var id = String(workspaceId);
    // `changes`: the newest state of each changed item since the last flush, per kind.
    var feed = { id: id, handlers: handlers || {}, snapshot: null, changes: emptyStates(), seen: false };
    if (!this._feeds.has(id)) this._feeds.set(id, new Set());
    this._feeds.get(id).add(feed);
    this._changed();
    return {
      close: function () {
        var set = self._feeds.get(id);
        if (!set || !set.delete(feed)) return;
        self._pending.delete(feed);
        if (set.size === 0) self._feeds.delete(id);
        self._changed();
      },
    };
  };

  /** Defers applying updates (e.g. while a modal is open). Calls nest. */
  Runwire.prototype.hold = function () {
    this._held++;
  };

  /** Applies the newest held state of each item, once. */
  Runwire.prototype.release = function () {
    if (this._held > 0) this._held--;
    if (this._held > 0) return;
    var pending = Array.from(this._pending);
    this._pending.clear();
    var self = this;
    pending.forEach(function (p) { self._flush(p); });
  };

  /** Closes every connection and subscription and removes every listener this client added. */
  Runwire.prototype.close = function () {
    this._stopped = true;
    KIND_NAMES.forEach(function (k) { this._items[k].clear(); }, this);
    this._feeds.clear();
    this._pending.clear();
    if (this._hub) this._hub.stop();
    this._hub = null;
    if (this._channel) {
      this._post({ t: "bye", tab: this._tab });
      this._channel.close();
      this._channel = null;
    }
    if (this._releaseLock) this._releaseLock();
    this._releaseLock = null;
    if (this._lockAbort) this._lockAbort.abort();
    this._lockAbort = null;
    this._listeners.forEach(function (l) { l[0].removeEventListener(l[1], l[2]); });
    this._listeners = [];
  };

  // ---- subscriptions of this tab ---------------------------------------------------------

  Runwire.prototype._watch = function (kind, rawId, handlers) {
    var self = this;
    var id = String(rawId);
    var items = this._items[kind];
    var item = items.get(id);
    if (!item) {
      item = { kind: kind, id: id, handlers: new Set(), state: null, version: null, pending: null };
      items.set(id, item);
      this._changed();
    }
    var h = handlers || {};
    item.handlers.add(h);
    if (item.state) this._deliver(item.state, h);
    return {
      close: function () {
        item.handlers.delete(h);
        if (item.handlers.size === 0 && items.get(id) === item) {
          items.delete(id);
          self._changed();
        }
      },
    };
  };

  /** What this tab wants streamed: nothing while hidden. */
  Runwire.prototype._subscriptions = function () {
    var subs = { items: { run: [], pack: [] }, feeds: [], fresh: [], waiting: { run: [], pack: [] } };
    if (this._hidden || this._stopped) return subs;
    KIND_NAMES.forEach(function (k) {
      this._items[k].forEach(function (item, id) {
        subs.items[k].push(id);
        if (item.version === null) subs.waiting[k].push(id);
      });
    }, this);
    this._feeds.forEach(function (set, id) {
      subs.feeds.push(id);
      set.forEach(function (f) { if (!f.seen && subs.fresh.indexOf(id) < 0) subs.fresh.push(id); });
    });
    return subs;
  };

  Runwire.prototype._changed = function () {
    if (this._stopped) return;
    if (this._hub) this._hub.schedule();
    else this._post({ t: "subs", tab: this._tab, subs: this._subscriptions() });
  };

  Runwire.prototype._setHidden = function (hidden) {
    if (hidden === this._hidden) return;
    this._hidden = hidden;
    this._changed();
  };

  // ---- states arriving (from this tab's hub or the leader's) -----------------------------

  Runwire.prototype._receive = function (m) {
    if (this._stopped || (m.to && m.to !== this._tab)) return;
    if (m.t === "item") return this._itemState(m.kind, m.id, m.state);
    if (m.t === "itemError") return this._itemError(m.kind, m.id, m.error);
    if (m.t === "feed") return this._feedEvent(m.id, m.type, m.body);
    if (m.t === "feedEnd") return this._feedDone(m.id, "onEnd", m.body);
    if (m.t === "feedError") return this._feedDone(m.id, "onError", m.error);
    if (m.t === "feedConn") {
      (this._feeds.get(m.id) || new Set()).forEach(function (f) { call(f.handlers.onConnectionChange, m.on); });
      return;
    }
    if (m.t === "conn") return call(this.onConnectionChange, m.on);
    if (m.t === "fatal") return this._fail(m.error);
  };

  Runwire.prototype._itemState = function (kind, id, state) {
    var item = this._items[kind].get(id);
    if (!item) return;
    var version = KINDS[kind].versionOf(state);
    if (version === item.version) return; // the same state again (a reconnect, another tab)
    item.version = version;
    item.state = state;
    if (state.terminal) {
      // Finished: the subscription ends; watching the id again starts afresh.
      this._items[kind].delete(id);
      this._changed();
    }
    item.pending = state;
    if (this._held > 0) this._pending.add(item);
    else this._flush(item);
  };

  Runwire.prototype._itemError = function (kind, id, error) {
    var item = this._items[kind].get(id);
    if (!item) return;
    this._items[kind].delete(id);
    this._changed();
    var err = { status: error.status, id: id, kind: kind };
    item.handlers.forEach(function (h) { call(h.onError, err); });
  };

  Runwire.prototype._feedEvent = function (id, type, body) {
    var self = this;
    var kind = type === "snapshot" ? null : kindOf(body);
    if (type !== "snapshot" && !kind) return; // an item type this client does not know
    (this._feeds.get(id) || new Set()).forEach(function (feed) {
      if (type === "snapshot") {
        feed.seen = true;
        feed.snapshot = body; // supersedes every held update
        KIND_NAMES.forEach(function (k) { feed.changes[k].clear(); });
      } else {
        feed.changes[kind].set(KINDS[kind].idOf(body), body);
      }
      if (self._held > 0) self._pending.add(feed);
      else self._flush(feed);
    });
  };

  Runwire.prototype._feedDone = function (id, hook, body) {
    var feeds = this._feeds.get(id);
    if (!feeds) return;
    this._feeds.delete(id);
    this._changed();
    feeds.forEach(function (f) { call(f.handlers[hook], body); });
  };

  /** Applies what an item or a feed subscription has pending. */
  Runwire.prototype._flush = function (p) {
    var self = this;
    if (p.handlers instanceof Set) {
      var state = p.pending;
      p.pending = null;
      if (state) p.handlers.forEach(function (h) { self._deliver(state, h); });
      return;
    }
    var snapshot = p.snapshot;
    var runs = Array.from(p.changes.run.values());
    var cards = Array.from(p.changes.pack.values());
    p.snapshot = null;
    p.changes = emptyStates();
    if (snapshot) call(p.handlers.onSnapshot, snapshot.runs || [], snapshot);
    runs.forEach(function (run) { call(p.handlers.onRun, run); });
    cards.forEach(function (card) { call(p.handlers.onReviewPack, card); });
  };

  Runwire.prototype._deliver = function (state, h) {
    call(h.onState, state);
    if (state.terminal) call(h.onEnd, state);
  };

  // ---- network and credentials -----------------------------------------------------------

  Runwire.prototype._base = function () {
    return absoluteBase(this.baseUrl);
  };

  Runwire.prototype._fetch = function (path, init) {
    var url = this.baseUrl + path;
    if (this.token) url += (url.indexOf("?") < 0 ? "?" : "&") + "access_token=" + encodeURIComponent(this.token);
    init.credentials = this.withCredentials ? "include" : "same-origin";
    return fetch(url, init);
  };

  /** A stream delivered its snapshot: the token works. */
  Runwire.prototype._authWorked = function () {
    this._authTries = 0;
  };

  /**
   * The one 401 path, for every connection: pause everything, ask the page for a new token
   * (after a backoff from the second try on) and reconnect; give up after MAX_AUTH_TRIES.
   */
  Runwire.prototype._unauthorized = function (cause) {
    var self = this;
    var hub = this._hub;
    if (!hub || this._refreshing || this._stopped) return;
    hub.stop();
    if (!this.refreshToken || this._authTries >= MAX_AUTH_TRIES) {
      return this._giveUp({
        status: 401,
        cause: this.refreshToken ? "runwire refused " + MAX_AUTH_TRIES + " refreshed tokens in a row" : "runwire refused the token and there is no refreshToken hook",
        reason: cause && cause.reason,
      });
    }
    var attempt = this._authTries++;
    this._refreshing = true;
    setTimeout(function () {
      if (self._stopped || self._hub !== hub) {
        self._refreshing = false;
        return;
      }
      Promise.resolve()
        .then(function () { return self.refreshToken(); })
        .then(function (token) {
          if (!token) throw new Error("refreshToken returned no token");
          return token;
        })
        .then(function (token) {
          self._refreshing = false;
          if (self._stopped || self._hub !== hub) return;
          self.token = token;
          hub.reconnect();
        }, function (e) {
          self._refreshing = false;
          if (self._stopped || self._hub !== hub) return;
          self._unauthorized({ status: 401, reason: "refresh_failed", error: String(e && e.message || e) });
        });
    }, attempt === 0 ? 0 : backoff(attempt - 1));
  };

  /** Stops for good: tell the page, and let another tab (with its own token) lead. */
  Runwire.prototype._giveUp = function (error) {
    this._fail(error);
    if (this._hub) this._hub.stop();
    this._hub = null;
    this._noLead = true;
    if (this._releaseLock) {
      this._releaseLock();
      this._releaseLock = null;
      this._post({ t: "subs", tab: this._tab, subs: this._subscriptions() });
    }
  };

  Runwire.prototype._fail = function (error) {
    call(this.onError, error);
    KIND_NAMES.forEach(function (k) {
      this._items[k].forEach(function (item) {
        item.handlers.forEach(function (h) { call(h.onError, { status: error.status, cause: error.cause, id: item.id, kind: k }); });
      });
    }, this);
    this._feeds.forEach(function (set) { set.forEach(function (f) { call(f.handlers.onError, error); }); });
  };

  // ---- sharing one connection between tabs -----------------------------------------------

  Runwire.prototype._listen = function (target, type, fn) {
    target.addEventListener(type, fn);
    this._listeners.push([target, type, fn]);
  };

  Runwire.prototype._post = function (m) {
    if (this._channel) this._channel.postMessage(m);
  };

  /** This tab holds the connections (for itself, and for the others when sharing). */
  Runwire.prototype._lead = function () {
    var self = this;
    this._hub = new Hub(this, function (m) {
      self._receive(m);
      self._post(m);
    });
    this._hub.schedule(this._channel ? GATHER_MS : 0);
  };

  Runwire.prototype._joinTabs = function () {
    var self = this;
    var name = "runwire|" + this._base() + "|" + this._user;
    this._channel = new global.BroadcastChannel(name);
    this._listen(this._channel, "message", function (e) {
      var m = e.data || {};
      if (m.t === "subs" || m.t === "bye") {
        if (self._hub && m.tab !== self._tab) self._hub.setTab(m.tab, m.t === "subs" ? m.subs : null);
        return;
      }
      if (m.t === "hello") return self._post({ t: "subs", tab: self._tab, subs: self._subscriptions() });
      self._receive(m);
    });
    if (global.addEventListener) {
      this._listen(global, "pagehide", function () { self._post({ t: "bye", tab: self._tab }); });
    }
    this._lockAbort = new AbortController();
    global.navigator.locks.request(name, { signal: this._lockAbort.signal }, function () {
      if (self._stopped || self._noLead) return;
      self._lockAbort = null;
      self._post({ t: "hello" });
      self._lead();
      return new Promise(function (resolve) { self._releaseLock = resolve; });
    }).catch(function () { /* aborted by close() */ });
    // Until a leader answers, announce what this tab wants (a leader replays it on "hello").
    this._post({ t: "subs", tab: this._tab, subs: this._subscriptions() });
  };

  global.Runwire = Runwire;
  if (typeof module !== "undefined" && module.exports) module.exports = Runwire;
})(typeof window !== "undefined" ? window : globalThis);
