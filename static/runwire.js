/*
 * runwire.js — live status for operation runs and review packs, instead of wire:poll.
 *
 *   const rw = new Runwire({ baseUrl: "https://runwire.example.com", token });
 *   rw.watchRun(42, { onState: (run) => render(run), onEnd: () => {} });
 *   rw.watchReviewPack(7, { onState: (card) => renderPack(card) });
 *   rw.watchWorkspace(3, { onSnapshot: (runs) => {}, onRun: (run) => {}, onConnectionChange });
 *
 * - Every run and review-pack subscription of a page shares ONE connection (the multiplexed
 *   /v1/streams endpoint), so a dashboard never hits the browser's 6-connections-per-origin
 *   limit. Adding or removing a subscription reopens that one connection with the new set.
 * - A subscription ends by itself once its item is terminal (onEnd), and the connection
 *   closes when nothing active is left: a finished page costs nothing.
 * - While the tab is hidden the connections are closed; when it is visible again they reopen
 *   and the fresh snapshot catches the page up.
 * - hold() / release(): defer applying updates while a modal or action is open; release()
 *   applies only the newest state of each item.
 * - A 401 (expired token) calls options.refreshToken() for a new token and reconnects.
 *
 * Authentication: pass `token` (sent as ?access_token=, EventSource cannot send headers), or
 * call `await Runwire.startSession(baseUrl, token)` once to trade it for an HttpOnly cookie and
 * pass `withCredentials: true` (cross-origin) or nothing (same origin).
 */
(function (global) {
  "use strict";

  var RUN = "run";
  var PACK = "pack";

  function Runwire(options) {
    options = options || {};
    this.baseUrl = (options.baseUrl || "").replace(/\/$/, "");
    this.token = options.token || null;
    this.refreshToken = options.refreshToken || null;
    this.withCredentials = !!options.withCredentials;
    this.pauseWhenHidden = options.pauseWhenHidden !== false;
    this.onConnectionChange = options.onConnectionChange || function () {};
    this.EventSource = options.EventSource || global.EventSource;
    this._items = new Map(); // "run:42" -> { kind, id, handlers: Set, state, done }
    this._feeds = new Set(); // workspace feed channels
    this._multi = null; // the shared EventSource for runs and packs
    this._scheduled = false;
    this._held = 0;
    this._pending = new Map(); // key -> function applying the newest held state
    this._hidden = false;
    var self = this;
    if (this.pauseWhenHidden && global.document) {
      this._hidden = global.document.visibilityState === "hidden";
      global.document.addEventListener("visibilitychange", function () {
        self._setHidden(global.document.visibilityState === "hidden");
      });
    }
  }

  /** Trades a bearer token for the HttpOnly `runwire_token` cookie. */
  Runwire.startSession = function (baseUrl, token) {
    return fetch((baseUrl || "").replace(/\/$/, "") + "/v1/session", {
      method: "POST",
      credentials: "include",
      headers: { Authorization: "Bearer " + token },
    }).then(function (r) {
      if (!r.ok) throw new Error("runwire session refused: " + r.status);
      return r.json();
    });
  };

  Runwire.prototype.watchRun = function (runId, handlers) {
    return this._watch(RUN, runId, handlers);
  };

  Runwire.prototype.watchReviewPack = function (tenantId, handlers) {
    return this._watch(PACK, tenantId, handlers);
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
   * The workspace operations feed: onSnapshot(runs) with the active runs (replace your list),
   * then onRun(run) for every change, terminal ones included. It does not end on its own.
   */
  Runwire.prototype.watchWorkspace = function (workspaceId, handlers) {
    var self = this;
    var feed = {
      path: "/v1/workspaces/" + encodeURIComponent(workspaceId) + "/runs/events",
      handlers: handlers || {},
      source: null,
      closed: false,
      close: function () {
        feed.closed = true;
        self._feeds.delete(feed);
        if (feed.source) feed.source.close();
        feed.source = null;
      },
    };
    this._feeds.add(feed);
    this._openFeed(feed);
    return { close: feed.close };
  };

  /** Defers applying updates (e.g. while a modal is open). Calls nest. */
  Runwire.prototype.hold = function () {
    this._held++;
  };

  /** Applies the newest held state of each item, once. */
  Runwire.prototype.release = function () {
    if (this._held > 0) this._held--;
    if (this._held > 0) return;
    var pending = Array.from(this._pending.values());
    this._pending.clear();
    pending.forEach(function (apply) { apply(); });
  };

  /** Closes every connection and subscription. */
  Runwire.prototype.close = function () {
    this._items.clear();
    this._feeds.forEach(function (f) { f.close(); });
    this._closeMulti();
  };

  // ---- internals -------------------------------------------------------------------------

  Runwire.prototype._watch = function (kind, id, handlers) {
    var self = this;
    var key = kind + ":" + id;
    var item = this._items.get(key);
    if (!item) {
      item = { kind: kind, id: String(id), handlers: new Set(), state: null, done: false };
      this._items.set(key, item);
      this._schedule();
    }
    var h = handlers || {};
    item.handlers.add(h);
    if (item.state) this._deliver(key, item, item.state, h);
    return {
      close: function () {
        item.handlers.delete(h);
        if (item.handlers.size === 0 && self._items.get(key) === item) {
          self._items.delete(key);
          self._schedule();
        }
      },
    };
  };

  Runwire.prototype._url = function (path) {
    var url = this.baseUrl + path;
    if (this.token) url += (url.indexOf("?") < 0 ? "?" : "&") + "access_token=" + encodeURIComponent(this.token);
    return url;
  };

  // Batches subscription changes made in one tick into one reconnect.
  Runwire.prototype._schedule = function () {
    var self = this;
    if (this._scheduled) return;
    this._scheduled = true;
    setTimeout(function () {
      self._scheduled = false;
      self._openMulti();
    }, 0);
  };

  Runwire.prototype._activeItems = function () {
    return Array.from(this._items.values()).filter(function (i) { return !i.done; });
  };

  Runwire.prototype._closeMulti = function () {
    if (this._multi) {
      this._multi.close();
      this._multi = null;
      this.onConnectionChange(false);
    }
  };

  Runwire.prototype._openMulti = function () {
    this._closeMulti();
    var active = this._activeItems();
    if (active.length === 0 || this._hidden) return;
    var runs = active.filter(function (i) { return i.kind === RUN; }).map(function (i) { return i.id; });
    var packs = active.filter(function (i) { return i.kind === PACK; }).map(function (i) { return i.id; });
    var query = [];
    if (runs.length) query.push("runs=" + runs.join(","));
    if (packs.length) query.push("review_pack_tenants=" + packs.join(","));
    var self = this;
    var source = new this.EventSource(this._url("/v1/streams?" + query.join("&")), {
      withCredentials: this.withCredentials,
    });
    this._multi = source;
    var onState = function (e) {
      var state = JSON.parse(e.data);
      var key = (state.type === "review_pack" ? PACK + ":" + state.tenant_id : RUN + ":" + state.id);
      var item = self._items.get(key);
      if (item) self._accept(key, item, state);
    };
    source.addEventListener("open", function () { self.onConnectionChange(true); });
    source.addEventListener("snapshot", onState);
    source.addEventListener("update", onState);
    source.addEventListener("end", function () {
      // Every item is terminal: stop for good (EventSource would otherwise reconnect).
      if (self._multi === source) self._closeMulti();
    });
    source.addEventListener("error", function () {
      if (self._multi !== source) return;
      if (source.readyState === 2) {
        // Refused (401/403/404/429/503) or 204: EventSource gives up. Find out why.
        self._multi = null;
        self.onConnectionChange(false);
        self._diagnose(active);
      } else {
        self.onConnectionChange(false); // network blip: EventSource reconnects by itself
      }
    });
  };

  // After a refused stream: probe each item's JSON snapshot to learn which one failed, report
  // it, and reconnect with the rest (or with a fresh token after a 401).
  Runwire.prototype._diagnose = function (items) {
    var self = this;
    Promise.all(items.map(function (item) {
      var path = item.kind === RUN ? "/v1/runs/" + item.id : "/v1/tenants/" + item.id + "/review-pack";
      return fetch(self._url(path), { credentials: self.withCredentials ? "include" : "same-origin" })
        .then(function (r) {
          if (r.ok) return r.json().then(function (state) { self._accept(item.kind + ":" + item.id, item, state); return 200; });
          return r.status;
        })
        .catch(function () { return 0; });
    })).then(function (statuses) {
      if (statuses.indexOf(401) >= 0 && self.refreshToken) {
        return Promise.resolve(self.refreshToken()).then(function (token) {
          self.token = token;
          self._schedule();
        });
      }
      var retry = false;
      statuses.forEach(function (status, i) {
        var item = items[i];
        if (status === 200) return;
        if (status === 403 || status === 404 || status === 401) {
          item.done = true;
          item.handlers.forEach(function (h) { if (h.onError) h.onError({ status: status, id: item.id }); });
        } else {
          retry = true; // overloaded or unreachable: try again shortly
        }
      });
      if (self._activeItems().length) setTimeout(function () { self._schedule(); }, retry ? 5000 : 0);
    });
  };

  Runwire.prototype._accept = function (key, item, state) {
    var self = this;
    item.state = state;
    var apply = function () {
      item.handlers.forEach(function (h) { self._deliver(key, item, state, h); });
    };
    if (this._held > 0) this._pending.set(key, apply);
    else apply();
    if (state.terminal && !item.done) {
      item.done = true;
      // Stop watching it; the server ends the shared stream once everything is terminal.
    }
  };

  Runwire.prototype._deliver = function (key, item, state, h) {
    if (h.onState) h.onState(state);
    if (state.terminal && h.onEnd) h.onEnd(state);
  };

  Runwire.prototype._openFeed = function (feed) {
    var self = this;
    if (feed.closed || this._hidden) return;
    var source = new this.EventSource(this._url(feed.path), { withCredentials: this.withCredentials });
    feed.source = source;
    var connected = function (on) { if (feed.handlers.onConnectionChange) feed.handlers.onConnectionChange(on); };
    source.addEventListener("open", function () { connected(true); });
    source.addEventListener("snapshot", function (e) {
      var body = JSON.parse(e.data);
      self._hold_or_apply("feed:" + feed.path, function () {
        if (feed.handlers.onSnapshot) feed.handlers.onSnapshot(body.runs, body);
      });
    });
    source.addEventListener("update", function (e) {
      var run = JSON.parse(e.data);
      self._hold_or_apply("feedrun:" + feed.path + ":" + run.id, function () {
        if (feed.handlers.onRun) feed.handlers.onRun(run);
      });
    });
    source.addEventListener("end", function (e) {
      source.close();
      feed.source = null;
      if (feed.handlers.onEnd) feed.handlers.onEnd(JSON.parse(e.data));
    });
    source.addEventListener("error", function () {
      connected(false);
      if (source.readyState === 2 && feed.source === source) {
        feed.source = null;
        fetch(self._url(feed.path.replace(/\/runs\/events$/, "")), {
          credentials: self.withCredentials ? "include" : "same-origin",
        }).then(function (r) {
          if (r.status === 401 && self.refreshToken) {
            return Promise.resolve(self.refreshToken()).then(function (t) { self.token = t; self._openFeed(feed); });
          }
          if (r.ok) setTimeout(function () { self._openFeed(feed); }, 2000);
          else if (feed.handlers.onError) feed.handlers.onError({ status: r.status });
        }).catch(function () { setTimeout(function () { self._openFeed(feed); }, 5000); });
      }
    });
  };

  Runwire.prototype._hold_or_apply = function (key, apply) {
    if (this._held > 0) {
      // A held snapshot supersedes every held run update of that feed.
      if (key.indexOf("feed:") === 0) {
        var prefix = "feedrun:" + key.slice(5) + ":";
        var self = this;
        Array.from(this._pending.keys()).forEach(function (k) { if (k.indexOf(prefix) === 0) self._pending.delete(k); });
      }
      this._pending.set(key, apply);
    } else {
      apply();
    }
  };

  Runwire.prototype._setHidden = function (hidden) {
    if (hidden === this._hidden) return;
    this._hidden = hidden;
    var self = this;
    if (hidden) {
      this._closeMulti();
      this._feeds.forEach(function (f) { if (f.source) { f.source.close(); f.source = null; } });
    } else {
      this._schedule();
      this._feeds.forEach(function (f) { if (!f.source) self._openFeed(f); });
    }
  };

  global.Runwire = Runwire;
  if (typeof module !== "undefined" && module.exports) module.exports = Runwire;
})(typeof window !== "undefined" ? window : globalThis);
