/*
 * runwire client: live status of operation runs and review packs, pushed by runwire over
 * Server-Sent Events, instead of wire:poll. This file is the one source: it is served as the
 * ES module `/runwire.mjs`; `scripts/build-client` wraps it into the global script
 * `/runwire.js` (`window.runwire`); `/runwire.d.ts` declares the same API.
 *
 *   import { Runwire } from "https://ops.example.com/runwire/runwire.mjs";
 *   const rw = new Runwire({ url: "https://ops.example.com/runwire", token: () => fetchToken() });
 *   rw.watchRun(42, { onState: (run) => render(run), onEnd: ({ reason }) => {}, onError: (e) => {} });
 *   rw.watchReviewPack(7, { onState: (card) => renderPack(card) });
 *   rw.watchWorkspace(3, { onSnapshot: (snapshot) => {}, onState: (runOrCard) => {} });
 *
 * or, through Laravel Echo: `new Echo({ broadcaster: RunwireConnector, url, token })`.
 *
 * What it owns:
 * - The wire: a fetch-based SSE reader whose parser follows the HTML standard (`id:` is
 *   sent back as `Last-Event-ID` on reconnect, `retry:` is honoured as the shortest pause,
 *   BOM, CR, LF and CRLF, chunks split anywhere). The token travels in the `Authorization`
 *   header, never in a URL.
 * - Connections as explicit state machines (idle → connecting → open → waiting → …) and the
 *   client's `readyState` (connecting, open, reconnecting, idle, failed, closed).
 * - One connection per page for every run, review-pack and workspace-feed subscription
 *   (`/v1/streams`, which carries one feed; a second workspace's feed has a connection of its
 *   own); and one per browser rather than per tab: tabs of one origin whose
 *   user runwire confirmed to be the same (`GET /v1/session`) elect a leader (Web Locks) that
 *   streams the union of their subscriptions and relays the states (BroadcastChannel). A tab
 *   whose refreshed token names another user moves to that user's group.
 * - Never a storm: every reconnect waits with backoff and jitter (1 s doubling to 30 s, at
 *   least `retry:` or `Retry-After`); a refused token calls the token function again at most
 *   3 times in a row, then every subscription gets a `RunwireError` and the client stops.
 * - The Echo connector (`RunwireConnector`) and its quiet refresh events for Livewire.
 *
 * What it must not do: decide access or "terminal" (runwire does; the client follows the
 * states and `end` reasons it is sent), keep a token anywhere but in memory, or let a page's
 * handler that throws break the client.
 */

export const VERSION = "0.1.0";

const BACKOFF_MIN_MS = 1000;
const BACKOFF_MAX_MS = 30000;
/** Refreshed tokens in a row that runwire may refuse before the client gives up. */
const MAX_AUTH_TRIES = 3;
/** A stream that lived this long was healthy: the next drop starts the backoff over. */
const HEALTHY_MS = 10000;
/** A new leader waits this long for the other tabs' subscriptions before connecting. */
const GATHER_MS = 100;
/** Ids one /v1/streams connection may carry, a feed's included (the server's limit); the rest wait their turn. */
const MAX_ITEMS = 100;
/** Quiet refresh listeners fire at most once per this many ms per group. */
const REFRESH_INTERVAL_MS = 250;

const root = typeof window !== "undefined" ? window : globalThis;

// ---- errors -------------------------------------------------------------------------------

/**
 * Every error the client reports: `status` is the HTTP status behind it (0 when there was
 * none) and `reason` a stable word to branch on (`unauthorized`, `unknown_channel`, …).
 */
export class RunwireError extends Error {
  constructor(message, { status = 0, reason = "error", cause } = {}) {
    super(message);
    this.name = "RunwireError";
    this.status = status;
    this.reason = reason;
    if (cause !== undefined) this.cause = cause;
  }
}

/** Calls a page's handler; one that throws must not break the client. */
function call(fn, ...args) {
  if (typeof fn !== "function") return;
  try {
    fn(...args);
  } catch (e) {
    setTimeout(() => {
      throw e;
    }, 0);
  }
}

/** Full jitter in the upper half: attempt 0 waits 0.5–1 s, then 1–2 s, … up to 15–30 s. */
function backoff(attempt) {
  const d = Math.min(BACKOFF_MAX_MS, BACKOFF_MIN_MS * 2 ** Math.min(attempt, 10));
  return d / 2 + Math.random() * (d / 2);
}

// ---- the SSE parser -----------------------------------------------------------------------

/**
 * The event-stream format of the HTML standard, fed text as it arrives. Calls
 * `onEvent({type, data, lastEventId})` for each complete event with data, and
 * `onRetry(ms)` for each valid `retry:` field. `lastEventId` survives events (and is the
 * value to send back as `Last-Event-ID`).
 */
export class EventStreamParser {
  constructor(onEvent, onRetry, lastEventId = "") {
    this.onEvent = onEvent;
    this.onRetry = onRetry || null;
    this.lastEventId = lastEventId;
    this._id = lastEventId;
    this._type = "";
    this._data = "";
    this._rest = "";
    this._started = false;
    this._afterCR = false;
  }

  /** Feeds decoded text; lines may be split anywhere, also between CR and LF. */
  feed(chunk) {
    let text = String(chunk);
    if (!text) return;
    if (!this._started) {
      this._started = true;
      if (text.charCodeAt(0) === 0xfeff) text = text.slice(1);
    }
    if (this._afterCR) {
      this._afterCR = false;
      if (text.charAt(0) === "\n") text = text.slice(1);
    }
    const buffer = this._rest + text;
    const eol = /[\r\n]/g;
    let start = 0;
    let match;
    while ((match = eol.exec(buffer))) {
      let next = match.index + 1;
      if (match[0] === "\r") {
        if (next === buffer.length) this._afterCR = true;
        else if (buffer.charAt(next) === "\n") next++;
      }
      this._line(buffer.slice(start, match.index));
      start = next;
      eol.lastIndex = next;
    }
    this._rest = buffer.slice(start);
  }

  /** The stream ended: an event without its blank line is dropped, as the standard says. */
  end() {
    this._rest = "";
    this._data = "";
    this._type = "";
  }

  _line(line) {
    if (line === "") return this._dispatch();
    if (line.charAt(0) === ":") return;
    const colon = line.indexOf(":");
    const field = colon < 0 ? line : line.slice(0, colon);
    let value = colon < 0 ? "" : line.slice(colon + 1);
    if (value.charAt(0) === " ") value = value.slice(1);
    if (field === "event") this._type = value;
    else if (field === "data") this._data += value + "\n";
    else if (field === "id") {
      if (value.indexOf("\0") < 0) this._id = value;
    } else if (field === "retry") {
      if (/^[0-9]+$/.test(value) && this.onRetry) this.onRetry(Number(value));
    }
  }

  _dispatch() {
    this.lastEventId = this._id;
    if (this._data === "") {
      this._type = "";
      return;
    }
    const event = { type: this._type || "message", data: this._data.slice(0, -1), lastEventId: this.lastEventId };
    this._type = "";
    this._data = "";
    this.onEvent(event);
  }
}

/** Feeds a response body to `parser` until it ends; rejects if the read fails or is aborted. */
async function pump(body, parser) {
  const reader = body.getReader();
  const decoder = new TextDecoder();
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    parser.feed(decoder.decode(value, { stream: true }));
  }
  parser.feed(decoder.decode());
  parser.end();
}

function discard(response) {
  if (response.body && response.body.cancel) response.body.cancel().catch(() => {});
}

// ---- one streaming connection -------------------------------------------------------------

/** The two item kinds: how each is named on the wire, addressed, and told apart. */
const KINDS = {
  run: {
    type: "operation_run",
    param: "runs",
    snapshotPath: (id) => "/v1/runs/" + encodeURIComponent(id),
    idOf: (state) => String(state.id),
  },
  pack: {
    type: "review_pack",
    param: "review_pack_tenants",
    snapshotPath: (id) => "/v1/tenants/" + encodeURIComponent(id) + "/review-pack",
    idOf: (state) => String(state.tenant_id),
  },
};
const KIND_NAMES = ["run", "pack"];

/** The kind of a state by its `type` ("run", "pack"), or null for a type this client does not know. */
function kindOf(state) {
  const type = state && state.type;
  return KIND_NAMES.find((k) => KINDS[k].type === type) || null;
}

const emptyKeys = () => ({ run: new Set(), pack: new Set() });

/** What a refusal of an item means as an end reason. */
function refusalReason(status, streamReason) {
  if (status === 403) return "forbidden";
  if (status === 404) return streamReason === "gone" ? "gone" : "not_found";
  return "bad_request";
}

/**
 * One streaming request and its reconnect policy, as a state machine:
 *
 *   idle ──ensure/restart──▶ connecting ──snapshot──▶ open
 *     ▲                         │  │                    │
 *     │   end, 204, refused, 401│  │error, 429/5xx      │dropped without `end`
 *     └─────────────────────────┘  ▼                    ▼
 *                               waiting ◀───────────────┘   (backoff, then connecting)
 *
 * `spec.path()` says what to stream (null: nothing); the spec hears events (`onEvent`), the
 * `end` event (`onEnd`), refusals (`onRefused(status)`) and state changes (`onState`); a 401
 * goes to the client's one auth path.
 */
class Connection {
  constructor(client, spec) {
    this.client = client;
    this.spec = spec;
    this.state = "idle";
    this._ctrl = null; // AbortController of the request in flight or the open stream
    this._timer = null; // the scheduled reconnect while waiting
    this._failures = 0; // drops in a row, for the backoff
    this._path = null; // what the last request asked for; ids belong to it
    this._lastEventId = "";
    this._retryMs = 0; // the server's `retry:`
  }

  /** Connects unless connecting, open or waiting to. */
  ensure() {
    if (this.state === "idle") this._open();
  }

  /** Connects now, closing the current stream: for a changed subscription set. */
  restart() {
    this._halt();
    this._open();
  }

  stop() {
    this._halt();
    this._set("idle");
  }

  /** Reconnects after the backoff, `retry:` and `minMs`, whichever is longest. */
  retry(minMs = 0) {
    this._halt();
    const delay = Math.max(minMs, this._retryMs, backoff(this._failures++));
    this._set("waiting");
    this._timer = setTimeout(() => {
      this._timer = null;
      this._open();
    }, delay);
  }

  _halt() {
    if (this._timer) clearTimeout(this._timer);
    this._timer = null;
    if (this._ctrl) this._ctrl.abort();
    this._ctrl = null;
  }

  _set(state) {
    if (this.state === state) return;
    this.state = state;
    if (this.spec.onState) this.spec.onState(state);
  }

  _open() {
    const path = this.spec.path();
    if (!path || !this.client._mayConnect()) return this._set("idle");
    if (path !== this._path) {
      this._path = path;
      this._lastEventId = "";
    }
    const ctrl = new AbortController();
    this._ctrl = ctrl;
    this._set("connecting");
    const headers = { Accept: "text/event-stream" };
    if (this._lastEventId) headers["Last-Event-ID"] = this._lastEventId;
    this.client
      ._fetch(path, { signal: ctrl.signal, headers, cache: "no-store" })
      .then((response) => {
        if (this._ctrl !== ctrl) return discard(response);
        if (response.status === 200) return this._read(response, ctrl);
        discard(response);
        this._ctrl = null;
        return this._refused(response);
      })
      .catch(() => {
        // A network error, or the stream broke mid-way.
        if (this._ctrl !== ctrl) return;
        this._ctrl = null;
        this.retry();
      });
  }

  _read(response, ctrl) {
    const opened = Date.now();
    const healthy = () => {
      // Only a stream that lived a while resets the backoff: a server that ends every stream
      // at once must not set the pace.
      if (Date.now() - opened >= HEALTHY_MS) this._failures = 0;
    };
    const parser = new EventStreamParser(
      (event) => {
        if (this._ctrl !== ctrl) return;
        this._lastEventId = event.lastEventId;
        let body;
        try {
          body = JSON.parse(event.data);
        } catch (e) {
          return; // not runwire's JSON: nothing to apply
        }
        if (event.type === "end") {
          ctrl.abort();
          this._ctrl = null;
          healthy();
          this._set("idle");
          this.spec.onEnd(body);
          return;
        }
        if (event.type === "snapshot" || event.type === "workspace_snapshot") {
          this.client._authWorked();
          this._set("open");
        }
        this.spec.onEvent(event.type, body);
      },
      (ms) => {
        this._retryMs = ms;
      },
      this._lastEventId,
    );
    return pump(response.body, parser).then(() => {
      // Closed without `end` (shutdown, lifetime, a proxy): reconnect, after a pause.
      if (this._ctrl !== ctrl) return;
      this._ctrl = null;
      this._lastEventId = parser.lastEventId;
      healthy();
      this.retry();
    });
  }

  _refused(response) {
    const status = response.status;
    if (status === 204) {
      // runwire already sent this set's terminal state (our Last-Event-ID): it is over.
      this._set("idle");
      return this.spec.onEnd({ reason: "terminal" });
    }
    if (status === 401) {
      this._set("idle");
      return this.client._unauthorized();
    }
    if (status === 400 || status === 403 || status === 404) {
      this._set("idle");
      return this.spec.onRefused(status);
    }
    // 429, 503, 5xx: the server says how long to wait, the backoff says at least as long.
    const after = Number(response.headers.get("Retry-After"));
    this.retry(after > 0 ? after * 1000 : 0);
  }
}

// ---- the hub: the one place that holds connections ----------------------------------------

/**
 * Streams the union of every tab's subscriptions (its own client's and, when leading, the
 * ones other tabs announced) and hands each message to `deliver`, which applies it to this
 * tab and relays it to the others. Messages: `item` (a state), `itemEnd` (an item is over,
 * with its reason), `feed`, `feedEnd`, `status` (the connections' aggregate state).
 *
 * One connection (`items`, on /v1/streams) carries every item and one workspace feed (`feed`:
 * runwire's limit per stream); a feed beyond that one has a connection of its own (`feeds`).
 */
class Hub {
  constructor(client, deliver) {
    this.client = client;
    this.deliver = deliver;
    this.tabs = new Map(); // tab id -> its announced subscriptions
    this.streaming = emptyKeys(); // what the item connection was opened with
    this.done = emptyKeys(); // wanted items that ended (terminal, refused, gone)
    this.states = { run: new Map(), pack: new Map() }; // latest state per wanted item
    this.feed = null; // the workspace whose feed the shared connection carries
    this.streamingFeed = null; // the feed the shared connection was opened with
    this.feedShown = false; // whether that connection has sent the feed's snapshot yet
    this.feedsDone = new Set(); // wanted feeds that ended (refused, access lost)
    this.feeds = new Map(); // workspace id -> Connection, for feeds beyond `feed`
    this.scheduled = null;
    this.status = null; // the first plan always tells the page
    this.items = new Connection(client, {
      path: () => this._itemsPath(),
      onEvent: (type, body) => {
        if (type === "snapshot" || type === "update") this._itemState(body);
        else if (type === "workspace_snapshot") {
          this.feedShown = true;
          this.deliver({ t: "feed", id: String(body.workspace_id), type: "snapshot", body });
        } else if (type === "workspace_update") {
          this.deliver({ t: "feed", id: String(body.workspace_id), type: "update", body: body.state });
        }
      },
      onEnd: (body) => this._itemsEnded(body),
      onRefused: () => this._probe(null),
      onState: () => this._statusChanged(),
    });
  }

  _wanted() {
    const items = emptyKeys();
    const feeds = new Set();
    const add = (subs) => {
      KIND_NAMES.forEach((k) => subs.items[k].forEach((id) => items[k].add(String(id))));
      subs.feeds.forEach((id) => feeds.add(String(id)));
    };
    add(this.client._subscriptions());
    this.tabs.forEach(add);
    return { items, feeds };
  }

  _itemsPath() {
    const wanted = this._wanted().items;
    const query = [];
    const streaming = emptyKeys();
    const feed = this.feed !== null && !this.feedsDone.has(this.feed) ? this.feed : null;
    let room = MAX_ITEMS - (feed === null ? 0 : 1);
    KIND_NAMES.forEach((k) => {
      const ids = Array.from(wanted[k])
        .filter((id) => !this.done[k].has(id))
        .slice(0, room);
      room -= ids.length;
      ids.forEach((id) => streaming[k].add(id));
      if (ids.length) query.push(KINDS[k].param + "=" + ids.map(encodeURIComponent).join(","));
    });
    this.streaming = streaming;
    this.streamingFeed = feed;
    this.feedShown = false;
    if (feed !== null) query.push("workspaces=" + encodeURIComponent(feed));
    return query.length ? "/v1/streams?" + query.join("&") : null;
  }

  /**
   * Re-plans the connections once per burst of subscription changes: after the current task
   * (a microtask, which browsers do not throttle in hidden tabs, where a leader may well be),
   * or after `delay` ms.
   */
  schedule(delay) {
    if (this.scheduled) return;
    const ticket = (this.scheduled = {});
    const run = () => {
      if (this.scheduled !== ticket) return; // stopped meanwhile
      this.scheduled = null;
      this._plan();
    };
    if (delay) setTimeout(run, delay);
    else Promise.resolve().then(run);
  }

  _plan() {
    const wanted = this._wanted();
    this._catchUp(this.client._subscriptions(), this.client._tab);
    // Forget what nobody wants any more, so a later subscription starts fresh.
    KIND_NAMES.forEach((k) => {
      this.done[k].forEach((id) => {
        if (!wanted.items[k].has(id)) this.done[k].delete(id);
      });
      this.states[k].forEach((_, id) => {
        if (!wanted.items[k].has(id)) this.states[k].delete(id);
      });
    });
    this.feedsDone.forEach((id) => {
      if (!wanted.feeds.has(id)) this.feedsDone.delete(id);
    });
    // The shared connection's feed: the one it carries while it is wanted, else the first
    // wanted one (which leaves a connection of its own, if it had one).
    const open = Array.from(wanted.feeds).filter((id) => !this.feedsDone.has(id));
    if (!open.includes(this.feed)) this.feed = open.length ? open[0] : null;
    // Items: reconnect only to add something; a shrinking set keeps its connection.
    let missing = false;
    let any = false;
    KIND_NAMES.forEach((k) => {
      wanted.items[k].forEach((id) => {
        if (this.done[k].has(id)) return;
        any = true;
        if (!this.streaming[k].has(id)) missing = true;
      });
    });
    // A feed never ends on its own: one that is no longer wanted (or another) reconnects too.
    const feedChanged = this.feed !== this.streamingFeed;
    if (!any && this.feed === null) this.items.stop();
    else if ((missing || feedChanged) && this.items.state !== "waiting") this.items.restart();
    else this.items.ensure();
    // Other feeds: one connection each.
    this.feeds.forEach((conn, id) => {
      if (!open.includes(id) || id === this.feed) {
        conn.stop();
        this.feeds.delete(id);
      }
    });
    open.forEach((id) => {
      if (id !== this.feed && !this.feeds.has(id)) {
        const conn = this._feedConnection(id);
        this.feeds.set(id, conn);
        conn.ensure();
      }
    });
    this._statusChanged();
  }

  _feedConnection(id) {
    const conn = new Connection(this.client, {
      path: () => "/v1/workspaces/" + encodeURIComponent(id) + "/runs/events",
      onEvent: (type, body) => {
        if (type === "snapshot" || type === "update") this.deliver({ t: "feed", id, type, body });
      },
      onEnd: (body) => {
        const reason = String((body && body.reason) || "unknown");
        if (reason === "token_expired") return this.client._unauthorized();
        if (reason === "unavailable") return conn.retry();
        this._dropFeed(id, conn);
        this._feedEnded(id, reason);
      },
      onRefused: (status) => {
        this._dropFeed(id, conn);
        this._feedEnded(id, refusalReason(status));
      },
      onState: () => this._statusChanged(),
    });
    return conn;
  }

  _dropFeed(id, conn) {
    conn.stop();
    if (this.feeds.get(id) === conn) this.feeds.delete(id);
    this._statusChanged();
  }

  _feedEnded(id, reason) {
    this.feedsDone.add(id);
    this.deliver({ t: "feedEnd", id, reason });
  }

  /** The connections' aggregate, as the page sees it. */
  _status() {
    const states = [this.items.state];
    this.feeds.forEach((conn) => states.push(conn.state));
    if (states.includes("waiting")) return "reconnecting";
    if (states.includes("connecting")) return "connecting";
    if (states.includes("open")) return "open";
    return "idle";
  }

  _statusChanged() {
    const status = this._status();
    if (status === this.status) return;
    this.status = status;
    this.deliver({ t: "status", status });
  }

  _itemState(state) {
    const kind = kindOf(state);
    if (!kind) return;
    const id = KINDS[kind].idOf(state);
    this.states[kind].set(id, state);
    if (state.terminal) this.done[kind].add(id);
    this.deliver({ t: "item", kind, id, state });
  }

  _itemEnded(kind, id, reason) {
    this.done[kind].add(id);
    this.deliver({ t: "itemEnd", kind, id, reason });
  }

  _itemsEnded(body) {
    const reason = String((body && body.reason) || "unknown");
    this.streaming = emptyKeys();
    if (reason === "terminal") return this.schedule(); // anything still wanted reconnects
    if (reason === "token_expired") return this.client._unauthorized();
    if (reason === "unavailable") return this.items.retry();
    // forbidden, gone, or a reason this client does not know: find out item by item.
    this._probe(reason);
  }

  /**
   * After a refused set: ask each item's JSON snapshot, and the feed's workspace, which one
   * failed, then carry on.
   */
  _probe(streamReason) {
    const client = this.client;
    const wanted = this._wanted().items;
    const checks = [];
    const feed = this.streamingFeed;
    if (feed !== null && !this.feedsDone.has(feed)) {
      const check = client._fetch("/v1/workspaces/" + encodeURIComponent(feed), {}).then(
        (r) => {
          discard(r);
          if (r.status === 400 || r.status === 403 || r.status === 404) {
            // Lost while streaming (the stream ended `forbidden`): as the feed's own stream says it.
            this._feedEnded(feed, streamReason === "forbidden" ? "forbidden" : refusalReason(r.status));
          }
          return r.status;
        },
        () => 0,
      );
      checks.push(check);
    }
    KIND_NAMES.forEach((k) => {
      wanted[k].forEach((id) => {
        if (this.done[k].has(id)) return;
        const check = client._fetch(KINDS[k].snapshotPath(id), {}).then(
          (r) => {
            if (r.ok) {
              return r.json().then((state) => {
                this._itemState(state);
                return 200;
              });
            }
            if (r.status === 400 || r.status === 403 || r.status === 404) {
              discard(r);
              this._itemEnded(k, id, refusalReason(r.status, streamReason));
              return r.status;
            }
            // A row runwire cannot decode is over for the client too (not worth retrying).
            return r
              .json()
              .catch(() => null)
              .then((body) => {
                if (body && body.error && body.error.code === "unreadable") this._itemEnded(k, id, "unreadable");
                return r.status;
              });
          },
          () => 0,
        );
        checks.push(check);
      });
    });
    Promise.all(checks).then((statuses) => {
      if (!client._mayConnect()) return;
      if (statuses.includes(401)) return client._unauthorized();
      // The rest (and anything overloaded or unreachable) after a pause: whatever made the
      // set fail may recur, and the backoff keeps that from becoming a loop.
      this.items.retry();
    });
  }

  /** A tab's announced subscriptions (null: it left). */
  setTab(tab, subs) {
    if (subs) this.tabs.set(tab, subs);
    else this.tabs.delete(tab);
    if (subs) {
      this._catchUp(subs, tab);
      this.deliver({ t: "status", status: this.status, to: tab });
    }
    this.schedule();
  }

  /**
   * A subscriber that joined a connection already running gets what it missed: the latest
   * state of items it waits for, and a fresh snapshot of feeds it waits for (a feed's state
   * is a list, rebuilt only by a snapshot; the other subscribers simply replace theirs).
   */
  _catchUp(subs, tab) {
    KIND_NAMES.forEach((k) => {
      subs.waiting[k].forEach((id) => {
        const state = this.states[k].get(String(id));
        if (state) this.deliver({ t: "item", kind: k, id: String(id), state, to: tab });
      });
    });
    subs.fresh.forEach((id) => {
      // (The shared connection's feed snapshot, if still to come, serves the newcomer too.)
      if (String(id) === this.streamingFeed && this.feedShown && this.items.state === "open") this.items.restart();
      const conn = this.feeds.get(String(id));
      if (conn && conn.state === "open") conn.restart();
    });
  }

  /** Re-opens everything now (a fresh token). */
  reconnect() {
    this.streaming = emptyKeys();
    this.items.stop();
    this.feeds.forEach((conn) => conn.stop());
    this.feeds.clear();
    this._plan();
  }

  stop() {
    this.scheduled = null;
    this.items.stop();
    this.feeds.forEach((conn) => conn.stop());
    this.feeds.clear();
  }
}

// ---- the client ---------------------------------------------------------------------------

/**
 * A page's runwire client. Options:
 * - `url`: where runwire answers (`baseUrl` is the same), e.g. "https://ops.example.com/runwire".
 * - `token`: a token string, or a (possibly async) function returning one; a function is
 *   called first and again whenever runwire refuses the token. `refreshToken` is the older
 *   name of that function next to a string `token`. Without either, the session cookie
 *   (`Runwire.startSession`) authenticates.
 * - `withCredentials`: send the cookie cross-origin. `onError(RunwireError)`,
 *   `onStateChange(readyState)`. `shareConnection: false` keeps this tab's connections its
 *   own; `pauseWhenHidden: false` keeps streaming while the tab is hidden.
 *
 * `readyState`: `connecting` (starting, or connecting), `open` (states are arriving),
 * `reconnecting` (waiting to retry), `idle` (nothing to stream), `failed` (runwire kept
 * refusing the token: every subscription got onError; final) and `closed` (after close()).
 */
export class Runwire {
  constructor(options = {}) {
    this.baseUrl = String(options.url || options.baseUrl || "").replace(/\/$/, "");
    this.withCredentials = !!options.withCredentials;
    this.onError = options.onError || null;
    this.onStateChange = options.onStateChange || null;
    this.readyState = "connecting";
    const token = options.token;
    this._tokenFn = typeof token === "function" ? token : options.refreshToken || null;
    this._token = typeof token === "string" && token ? token : null;
    this._needsToken = typeof token === "function"; // the function gives the first token too
    this._authTries = 0;
    this._refreshing = false;
    this._items = { run: new Map(), pack: new Map() }; // id -> { kind, id, handlers, state, version, pending }
    this._feeds = new Map(); // workspace id -> Set of feed subscriptions
    this._held = 0;
    this._pending = new Set(); // items and feed subscriptions with held states
    this._hidden = false;
    this._listeners = []; // [target, type, fn]: everything close() removes
    this._tab = Math.random().toString(36).slice(2) + Date.now().toString(36);
    this._hub = null; // set while this tab holds the connections
    this._group = null; // the tab group this tab is in: { user, channel, releaseLock, lockAbort }
    this._user = null; // the user runwire confirmed for our credentials
    this._boot = 0; // generation of the start-up sequence; a newer one cancels older steps

    if (options.pauseWhenHidden !== false && root.document) {
      this._hidden = root.document.visibilityState === "hidden";
      this._listen(root.document, "visibilitychange", () => {
        this._setHidden(root.document.visibilityState === "hidden");
      });
    }
    this._share =
      options.shareConnection !== false &&
      typeof root.BroadcastChannel === "function" &&
      !!(root.navigator && root.navigator.locks) &&
      typeof AbortController === "function";
    this._start();
  }

  /** Trades a bearer token for the HttpOnly `runwire_token` cookie. */
  static startSession(url, token) {
    const base = String(url || "").replace(/\/$/, "");
    return fetch(base + "/v1/session", {
      method: "POST",
      credentials: "include",
      headers: { Authorization: "Bearer " + token },
    }).then((r) => {
      if (!r.ok) throw new RunwireError("runwire refused the session: " + r.status, { status: r.status, reason: "unauthorized" });
      return r.json();
    });
  }

  /**
   * The page's shared client, made on the first call from `options` or, without them, from
   * the JSON in `<script type="application/json" id="runwire-config">` (what the Laravel
   * package's `@runwireScripts` renders): `{url, token, tokenUrl}`, where `tokenUrl` is a
   * same-origin URL that answers a fresh token as text when runwire refuses the current one.
   * Configured that way, it reports giving up as a `runwire:error` event on window.
   */
  static page(options) {
    if (!pageClient) pageClient = new Runwire(options || pageConfig());
    return pageClient;
  }

  /**
   * Keeps server-rendered elements live: every `[data-runwire-run="{id}"]` and
   * `[data-runwire-review-pack="{tenant id}"]` in `rootElement` (itself included). Each state
   * sets the element's `data-status` (a pack's status, or `none`), `data-terminal`, the text
   * of its `[data-runwire-field]` children (`status`, `outcome`, `counts`: "processed /
   * total"; `pack`: the pack's id), its `progress[data-runwire-field="progress"]`, and
   * dispatches `runwire:state` on it (`detail`: the state); the end sets `data-ended` to the
   * reason. An element rendered terminal (`data-terminal="true"`) is not watched until a
   * `runwire:follow` event on it says there is something new to follow (a newly requested
   * review pack). Returns one handle that stops them all.
   */
  bind(rootElement) {
    const handles = [];
    const found = [];
    const selector = "[data-runwire-run], [data-runwire-review-pack]";
    if (rootElement.matches && rootElement.matches(selector)) found.push(rootElement);
    if (rootElement.querySelectorAll) found.push(...rootElement.querySelectorAll(selector));
    found.forEach((el) => {
      if (el.__runwireBound) return;
      el.__runwireBound = true;
      let sub = null;
      const follow = () => {
        if (sub) sub.close();
        el.removeAttribute("data-ended");
        const handlers = {
          onState: (state) => renderInto(el, state),
          onEnd: ({ reason }) => el.setAttribute("data-ended", reason),
        };
        const run = el.getAttribute("data-runwire-run");
        sub = run ? this.watchRun(run, handlers) : this.watchReviewPack(el.getAttribute("data-runwire-review-pack"), handlers);
      };
      el.addEventListener("runwire:follow", follow);
      if (el.getAttribute("data-terminal") !== "true") follow();
      handles.push(() => {
        el.removeEventListener("runwire:follow", follow);
        el.__runwireBound = false;
        if (sub) sub.close();
      });
    });
    return { close: () => handles.forEach((close) => close()) };
  }

  /** Follows one run until it is terminal. */
  watchRun(runId, handlers) {
    return this._watch("run", runId, handlers);
  }

  /** Follows a tenant's latest review pack until it is terminal. */
  watchReviewPack(tenantId, handlers) {
    return this._watch("pack", tenantId, handlers);
  }

  /** Subscribes to many items at once; returns one handle that closes them all. */
  watchMany(items, handlers) {
    const subs = [];
    (items.runs || []).forEach((id) => subs.push(this.watchRun(id, handlers)));
    (items.reviewPackTenants || []).forEach((id) => subs.push(this.watchReviewPack(id, handlers)));
    return { close: () => subs.forEach((s) => s.close()) };
  }

  /**
   * The workspace feed, everything a dashboard shows on one stream: `onSnapshot(snapshot)`
   * first and whenever runwire sends it again (replace everything you show), then
   * `onState(state)` for every run (`type: "operation_run"`) and review-pack card
   * (`type: "review_pack"`) that changes. It does not end because runs or packs finish.
   */
  watchWorkspace(workspaceId, handlers) {
    const id = String(workspaceId);
    // `changes`: the newest state of each changed item since the last flush, by kind and id.
    const feed = { id, handlers: handlers || {}, snapshot: null, changes: new Map(), seen: false };
    if (!this._feeds.has(id)) this._feeds.set(id, new Set());
    this._feeds.get(id).add(feed);
    this._changed();
    return {
      close: () => {
        const set = this._feeds.get(id);
        if (!set || !set.delete(feed)) return;
        this._pending.delete(feed);
        if (set.size === 0) this._feeds.delete(id);
        this._changed();
      },
    };
  }

  /** Defers applying states (e.g. while a modal is open). Calls nest. */
  hold() {
    this._held++;
  }

  /** Applies the newest held state of each item, once. */
  release() {
    if (this._held > 0) this._held--;
    if (this._held > 0) return;
    const pending = Array.from(this._pending);
    this._pending.clear();
    pending.forEach((p) => this._flush(p));
  }

  /** Whether hold() is in effect. */
  get held() {
    return this._held > 0;
  }

  /** Closes every connection and subscription and removes every listener this client added. */
  close() {
    this._boot++;
    this._setState("closed");
    KIND_NAMES.forEach((k) => this._items[k].clear());
    this._feeds.clear();
    this._pending.clear();
    this._leaveGroup();
    this._listeners.forEach(([target, type, fn]) => target.removeEventListener(type, fn));
    this._listeners = [];
  }

  // ---- start-up: a token, the user it names, then lead or follow ---------------------------

  _final() {
    return this.readyState === "closed" || this.readyState === "failed";
  }

  async _start() {
    const boot = ++this._boot;
    if (this._needsToken) {
      this._needsToken = false;
      const token = await this._callTokenFn().catch(() => null);
      if (boot !== this._boot) return;
      if (!token) return this._unauthorized();
      this._token = token;
    }
    if (!this._share) return this._lead();
    const user = await this._whoAmI(boot);
    if (boot !== this._boot || user === undefined) return;
    if (user === null) return this._lead(); // runwire cannot say: this tab shares with nobody
    this._joinGroup(user);
  }

  /**
   * The user runwire confirms for our credentials (`GET /v1/session`); null if it cannot
   * tell (an older runwire), undefined if the 401 path took over or a newer start-up did.
   * Retries with backoff while runwire is unreachable.
   */
  async _whoAmI(boot) {
    for (let attempt = 0; ; attempt++) {
      let r;
      try {
        r = await this._fetch("/v1/session", { cache: "no-store" });
      } catch (e) {
        r = null;
      }
      if (boot !== this._boot) return undefined;
      if (r && r.status === 401) {
        discard(r);
        this._unauthorized();
        return undefined;
      }
      if (r && r.ok) {
        const body = await r.json().catch(() => null);
        if (boot !== this._boot) return undefined;
        return body && body.user_id != null ? String(body.user_id) : null;
      }
      if (r && r.status < 500 && r.status !== 429) {
        discard(r);
        return null;
      }
      if (r) discard(r);
      this._setState("reconnecting");
      await new Promise((resolve) => setTimeout(resolve, backoff(attempt)));
      if (boot !== this._boot) return undefined;
    }
  }

  _callTokenFn() {
    return Promise.resolve()
      .then(() => this._tokenFn())
      .then((token) => {
        if (!token) throw new Error("the token function returned no token");
        return String(token).trim();
      });
  }

  /** This tab holds the connections (for itself, and for the others when sharing). */
  _lead() {
    this._hub = new Hub(this, (m) => {
      this._receive(m);
      this._post(m);
    });
    this._hub.schedule(this._group ? GATHER_MS : 0);
  }

  _joinGroup(user) {
    const name = "runwire|" + absoluteBase(this.baseUrl) + "|" + user;
    const group = { user, channel: new root.BroadcastChannel(name), releaseLock: null, lockAbort: new AbortController(), listeners: [] };
    this._group = group;
    this._user = user;
    const onMessage = (e) => {
      const m = e.data || {};
      if (m.t === "subs" || m.t === "bye") {
        if (this._hub && m.tab !== this._tab) this._hub.setTab(m.tab, m.t === "subs" ? m.subs : null);
        return;
      }
      if (m.t === "hello") return this._announce();
      this._receive(m);
    };
    group.channel.addEventListener("message", onMessage);
    group.listeners.push([group.channel, "message", onMessage]);
    if (root.addEventListener) {
      const bye = () => this._post({ t: "bye", tab: this._tab });
      root.addEventListener("pagehide", bye);
      group.listeners.push([root, "pagehide", bye]);
    }
    root.navigator.locks
      .request(name, { signal: group.lockAbort.signal }, () => {
        if (this._group !== group) return undefined;
        group.lockAbort = null;
        this._post({ t: "hello" });
        this._lead();
        return new Promise((resolve) => {
          group.releaseLock = resolve;
        });
      })
      .catch(() => {
        /* aborted: this tab left the group */
      });
    // Until a leader answers, announce what this tab wants (a leader replays it on "hello").
    this._announce();
  }

  /** Leaves the tab group (and the lead, letting another tab take it). */
  _leaveGroup() {
    if (this._hub) this._hub.stop();
    this._hub = null;
    const group = this._group;
    this._group = null;
    if (!group) return;
    group.channel.postMessage({ t: "bye", tab: this._tab });
    group.listeners.forEach(([target, type, fn]) => target.removeEventListener(type, fn));
    group.channel.close();
    if (group.releaseLock) group.releaseLock();
    if (group.lockAbort) group.lockAbort.abort();
  }

  // ---- subscriptions of this tab ----------------------------------------------------------

  _watch(kind, rawId, handlers) {
    const id = String(rawId);
    const items = this._items[kind];
    let item = items.get(id);
    if (!item) {
      item = { kind, id, handlers: new Set(), state: null, version: null, pending: null };
      items.set(id, item);
      this._changed();
    }
    const h = handlers || {};
    item.handlers.add(h);
    if (item.state) call(h.onState, item.state);
    return {
      close: () => {
        item.handlers.delete(h);
        if (item.handlers.size === 0 && items.get(id) === item) {
          items.delete(id);
          this._pending.delete(item);
          this._changed();
        }
      },
    };
  }

  /** What this tab wants streamed: nothing while hidden. */
  _subscriptions() {
    const subs = { items: { run: [], pack: [] }, feeds: [], fresh: [], waiting: { run: [], pack: [] } };
    if (this._hidden || this._final()) return subs;
    KIND_NAMES.forEach((k) => {
      this._items[k].forEach((item, id) => {
        subs.items[k].push(id);
        if (item.version === null) subs.waiting[k].push(id);
      });
    });
    this._feeds.forEach((set, id) => {
      subs.feeds.push(id);
      set.forEach((f) => {
        if (!f.seen && !subs.fresh.includes(id)) subs.fresh.push(id);
      });
    });
    return subs;
  }

  _announce() {
    this._post({ t: "subs", tab: this._tab, subs: this._subscriptions() });
  }

  _changed() {
    if (this._final()) return;
    if (this._hub) this._hub.schedule();
    else this._announce();
  }

  _setHidden(hidden) {
    if (hidden === this._hidden) return;
    this._hidden = hidden;
    this._changed();
  }

  _setState(state) {
    // failed and closed are final; only close() moves on from failed.
    if (this.readyState === state || (this._final() && !(state === "closed" && this.readyState === "failed"))) return;
    this.readyState = state;
    call(this.onStateChange, state);
  }

  // ---- states arriving (from this tab's hub or the leader's) ------------------------------

  _receive(m) {
    if (this._final() || (m.to && m.to !== this._tab)) return;
    if (m.t === "item") return this._itemState(m.kind, m.id, m.state);
    if (m.t === "itemEnd") return this._itemEnd(m.kind, m.id, m.reason);
    if (m.t === "feed") return this._feedEvent(m.id, m.type, m.body);
    if (m.t === "feedEnd") return this._feedEnd(m.id, m.reason);
    if (m.t === "status") return this._setState(m.status);
    return undefined;
  }

  _itemState(kind, id, state) {
    const item = this._items[kind].get(id);
    if (!item) return;
    // The same state again (a reconnect, another tab) is no change. Compared whole but for
    // `version`: with logical replication a state read when a stream (re)opens carries the
    // position of that read, so the same state can come again with another version.
    const version = JSON.stringify(state, (key, value) => (key === "version" ? undefined : value));
    if (version === item.version) return;
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
  }

  _itemEnd(kind, id, reason) {
    const item = this._items[kind].get(id);
    if (!item) return;
    this._items[kind].delete(id);
    this._pending.delete(item);
    this._changed();
    item.handlers.forEach((h) => call(h.onEnd, { reason }));
  }

  _feedEvent(id, type, body) {
    const kind = type === "snapshot" ? null : kindOf(body);
    if (type !== "snapshot" && !kind) return; // an item type this client does not know
    (this._feeds.get(id) || new Set()).forEach((feed) => {
      if (type === "snapshot") {
        feed.seen = true;
        feed.snapshot = body; // supersedes every held update
        feed.changes.clear();
      } else {
        feed.changes.set(kind + ":" + KINDS[kind].idOf(body), body);
      }
      if (this._held > 0) this._pending.add(feed);
      else this._flush(feed);
    });
  }

  _feedEnd(id, reason) {
    const feeds = this._feeds.get(id);
    if (!feeds) return;
    this._feeds.delete(id);
    this._changed();
    feeds.forEach((f) => call(f.handlers.onEnd, { reason }));
  }

  /** Applies what an item or a feed subscription has pending. */
  _flush(p) {
    if (p.handlers instanceof Set) {
      const state = p.pending;
      p.pending = null;
      if (!state) return;
      p.handlers.forEach((h) => {
        call(h.onState, state);
        if (state.terminal) call(h.onEnd, { reason: "terminal", state });
      });
      return;
    }
    const snapshot = p.snapshot;
    const changes = Array.from(p.changes.values());
    p.snapshot = null;
    p.changes = new Map();
    if (snapshot) call(p.handlers.onSnapshot, snapshot);
    changes.forEach((state) => call(p.handlers.onState, state));
  }

  // ---- network and credentials ------------------------------------------------------------

  _mayConnect() {
    return !this._final() && !this._refreshing;
  }

  _fetch(path, init) {
    const headers = Object.assign({}, init.headers);
    if (this._token) headers.Authorization = "Bearer " + this._token;
    const options = Object.assign({}, init, { headers, credentials: this.withCredentials ? "include" : "same-origin" });
    return fetch(this.baseUrl + path, options);
  }

  /** A stream delivered its snapshot: the token works. */
  _authWorked() {
    this._authTries = 0;
  }

  /**
   * The one 401 path, for every request: pause everything, ask for a new token (after a
   * backoff from the second try on), confirm whom it names and carry on; give up after
   * MAX_AUTH_TRIES tokens in a row that runwire refused.
   */
  _unauthorized() {
    if (this._refreshing || this._final()) return;
    if (this._hub) this._hub.stop();
    if (!this._tokenFn || this._authTries >= MAX_AUTH_TRIES) {
      const message = this._tokenFn
        ? "runwire refused " + MAX_AUTH_TRIES + " refreshed tokens in a row"
        : "runwire refused the token and there is no token function to ask for another";
      return this._fail(new RunwireError(message, { status: 401, reason: "unauthorized" }));
    }
    const attempt = this._authTries++;
    const boot = this._boot;
    this._refreshing = true;
    this._setState("connecting");
    setTimeout(
      () => {
        if (boot !== this._boot) return void (this._refreshing = false);
        this._callTokenFn().then(
          (token) => {
            this._refreshing = false;
            if (boot !== this._boot) return;
            this._token = token;
            this._resume();
          },
          () => {
            this._refreshing = false;
            if (boot !== this._boot) return;
            this._unauthorized();
          },
        );
      },
      attempt === 0 ? 0 : backoff(attempt - 1),
    );
  }

  /** Goes on with a fresh token: in the same tab group if it names the same user, else re-keyed. */
  async _resume() {
    if (!this._group) {
      if (this._hub) return this._hub.reconnect();
      return this._start();
    }
    const boot = ++this._boot;
    const user = await this._whoAmI(boot);
    if (boot !== this._boot || user === undefined) return;
    if (user === this._user && this._group) {
      if (this._hub) this._hub.reconnect();
      return;
    }
    this._leaveGroup();
    if (user === null) return this._lead();
    this._joinGroup(user);
  }

  /** Stops for good: every subscription hears why, and another tab (with its own token) may lead. */
  _fail(error) {
    const items = [];
    KIND_NAMES.forEach((k) => this._items[k].forEach((item) => items.push(item)));
    const feeds = [];
    this._feeds.forEach((set) => set.forEach((f) => feeds.push(f)));
    this._setState("failed");
    this._boot++;
    this._leaveGroup();
    KIND_NAMES.forEach((k) => this._items[k].clear());
    this._feeds.clear();
    this._pending.clear();
    call(this.onError, error);
    items.forEach((item) => item.handlers.forEach((h) => call(h.onError, error)));
    feeds.forEach((f) => call(f.handlers.onError, error));
  }

  // ---- sharing one connection between tabs ------------------------------------------------

  _listen(target, type, fn) {
    target.addEventListener(type, fn);
    this._listeners.push([target, type, fn]);
  }

  _post(m) {
    if (this._group) this._group.channel.postMessage(m);
  }
}

let pageClient = null;

/** `Runwire.page()`'s options from the page: the JSON `@runwireScripts` renders. */
function pageConfig() {
  const node = root.document && root.document.getElementById("runwire-config");
  if (!node) throw new RunwireError("Runwire.page() needs options or a <script id=\"runwire-config\"> element", { reason: "no_config" });
  const config = JSON.parse(node.textContent);
  // The page hears that live updates stopped as a `runwire:error` event on window.
  const onError = (error) => {
    if (typeof root.CustomEvent === "function") root.dispatchEvent(new root.CustomEvent("runwire:error", { detail: error }));
  };
  const options = { url: config.url, token: config.token || undefined, onError };
  if (config.tokenUrl) {
    const fetchToken = () =>
      fetch(config.tokenUrl, { credentials: "same-origin", headers: { Accept: "text/plain" }, cache: "no-store" }).then((r) => {
        if (!r.ok) throw new RunwireError("the token route answered " + r.status, { status: r.status, reason: "token_route" });
        return r.text();
      });
    if (options.token) options.refreshToken = fetchToken;
    else options.token = fetchToken;
  }
  return options;
}

/** What `bind` shows of a state in a server-rendered element. */
function renderInto(el, state) {
  const field = (name, text) => {
    el.querySelectorAll('[data-runwire-field="' + name + '"]').forEach((node) => {
      node.textContent = text;
    });
  };
  if (state.type === "review_pack") {
    const pack = state.pack;
    el.setAttribute("data-status", pack ? pack.status : "none");
    el.setAttribute("data-pack-id", pack ? String(pack.id) : "");
    field("status", pack ? pack.status : el.getAttribute("data-none-text") || "none");
    field("pack", pack ? String(pack.id) : "");
  } else {
    const counts = state.summary_counts || {};
    const total = Number(counts.total) || 0;
    const processed = Number(counts.processed) || 0;
    el.setAttribute("data-status", state.status);
    field("status", state.status);
    field("outcome", state.outcome);
    field("counts", total ? processed + " / " + total : "");
    el.querySelectorAll('progress[data-runwire-field="progress"]').forEach((bar) => {
      bar.hidden = !total;
      bar.max = total;
      bar.value = processed;
    });
  }
  el.setAttribute("data-terminal", state.terminal ? "true" : "false");
  if (typeof root.CustomEvent === "function") el.dispatchEvent(new root.CustomEvent("runwire:state", { detail: state }));
}

/** runwire's URL made absolute, without a trailing slash: what tabs share by. */
function absoluteBase(url) {
  try {
    return new URL(url || "/", root.location ? root.location.href : undefined).href.replace(/\/$/, "");
  } catch (e) {
    return url || "";
  }
}

// ---- quiet refreshes ----------------------------------------------------------------------

/**
 * Coalesces and defers a refresh: `trigger()` asks for one; `fire()` runs at most once per
 * `interval` ms — the first right after the current task (so the states of one burst, say a
 * snapshot of several items, make one refresh), the rest at the end of the interval — and
 * never while `deferred()` says so, then once, as soon as it no longer does (checked every
 * interval; nothing is requested meanwhile).
 */
export class RefreshGate {
  constructor(fire, { interval = REFRESH_INTERVAL_MS, deferred = () => false, now = () => Date.now() } = {}) {
    this.fire = fire;
    this.interval = interval;
    this.deferred = deferred;
    this.now = now;
    this.pending = false;
    this._last = -Infinity;
    this._timer = null;
  }

  trigger() {
    this.pending = true;
    if (!this._timer) this._schedule(Math.max(0, this._last + this.interval - this.now()));
  }

  cancel() {
    this.pending = false;
    if (this._timer) clearTimeout(this._timer);
    this._timer = null;
  }

  _schedule(wait) {
    this._timer = setTimeout(() => this._run(), wait);
  }

  _run() {
    this._timer = null;
    if (!this.pending) return;
    const wait = this.deferred() ? this.interval : this._last + this.interval - this.now();
    if (wait > 0) return this._schedule(wait);
    this.pending = false;
    this._last = this.now();
    call(this.fire);
  }
}

/**
 * Whether the Livewire component `id` has a Filament action (a modal) mounted, the moment
 * its polling would pause: any of Filament's `mounted*Action(s)` properties is set.
 */
function filamentActionMounted(id) {
  const livewire = root.Livewire;
  if (!id || !livewire || typeof livewire.find !== "function") return false;
  let wire;
  try {
    wire = livewire.find(id);
  } catch (e) {
    return false;
  }
  if (!wire) return false;
  const read = (name) => (typeof wire.get === "function" ? wire.get(name) : wire[name]);
  return ["mountedActions", "mountedTableActions", "mountedTableBulkAction", "mountedFormComponentActions", "mountedInfolistActions"].some((name) => {
    let value;
    try {
      value = read(name);
    } catch (e) {
      return false;
    }
    return Array.isArray(value) ? value.length > 0 : !!value;
  });
}

/** `$refresh` of the Livewire component `id` through Livewire's own JavaScript API. */
function refreshLivewire(id) {
  const wire = root.Livewire && typeof root.Livewire.find === "function" ? root.Livewire.find(id) : null;
  if (!wire) return;
  if (typeof wire.$refresh === "function") wire.$refresh();
  else if (typeof wire.call === "function") wire.call("$refresh");
}

// ---- Laravel Echo -------------------------------------------------------------------------

/** `runs.{id}`, `tenants.{id}.review-pack`, `workspaces.{id}.runs` → what to watch, or null. */
function parseChannel(name) {
  let m = /^runs\.([1-9][0-9]*)$/.exec(name);
  if (m) return { kind: "run", id: m[1] };
  m = /^tenants\.([1-9][0-9]*)\.review-pack$/.exec(name);
  if (m) return { kind: "pack", id: m[1] };
  m = /^workspaces\.([1-9][0-9]*)\.runs$/.exec(name);
  if (m) return { kind: "workspace", id: m[1] };
  return null;
}

/** Echo's event names: `.updated` (no namespace) and `updated` mean the same here. */
function eventName(event) {
  return String(event).replace(/^[.\\]/, "");
}

/**
 * One Echo channel: a runwire subscription, opened by the first listener and closed by
 * `leave`. Events: `updated` (the state: the snapshot first, then every change; on a
 * workspace channel each run), `ended` (`{reason}`, once), `snapshot` and
 * `review-pack.updated` (workspace channels), and the quiet `refresh[.group]` (see
 * RunwireConnector).
 */
class RunwireChannel {
  constructor(connector, name) {
    this.name = name;
    this._connector = connector;
    this._target = parseChannel(name);
    this._listeners = new Map(); // event -> Set of callbacks
    this._all = new Set(); // listenToAll callbacks
    this._onSubscribed = new Set();
    this._onError = new Set();
    this._sub = null;
    this._error = null;
    this._ended = false;
    this._subscribed = false;
    this._versions = new Map(); // item key -> the version last seen, for refresh
  }

  listen(event, callback) {
    const name = eventName(event);
    if (!this._listeners.has(name)) this._listeners.set(name, new Set());
    this._listeners.get(name).add(callback);
    if (/^refresh(\.|$)/.test(name)) this._connector._joinRefresh(this, name, callback);
    this._open();
    return this;
  }

  stopListening(event, callback) {
    const name = eventName(event);
    const set = this._listeners.get(name);
    if (set) {
      if (callback) set.delete(callback);
      else set.clear();
      if (set.size === 0) this._listeners.delete(name);
    }
    if (/^refresh(\.|$)/.test(name)) this._connector._leaveRefresh(this, name, callback);
    return this;
  }

  listenToAll(callback) {
    this._all.add(callback);
    this._open();
    return this;
  }

  stopListeningToAll(callback) {
    if (callback) this._all.delete(callback);
    else this._all.clear();
    return this;
  }

  subscribed(callback) {
    this._onSubscribed.add(callback);
    if (this._subscribed) call(callback);
    this._open();
    return this;
  }

  error(callback) {
    this._onError.add(callback);
    if (this._error) call(callback, this._error);
    this._open();
    return this;
  }

  // Echo's other channel methods: runwire has no notifications and no whispers.
  notification() {
    return this;
  }

  stopListeningForNotification() {
    return this;
  }

  listenForWhisper() {
    return this;
  }

  stopListeningForWhisper() {
    return this;
  }

  whisper() {
    return this;
  }

  /** Follows the channel's item again after it ended (a newer review pack, say). */
  _reopen() {
    if (this._sub || this._error) return;
    this._ended = false;
    this._open();
  }

  _open() {
    if (this._sub || this._error || this._ended) return;
    if (!this._target) {
      return this._fail(
        new RunwireError("runwire has no channel " + JSON.stringify(this.name) + " (runs.{id}, tenants.{id}.review-pack, workspaces.{id}.runs)", {
          status: 400,
          reason: "unknown_channel",
        }),
      );
    }
    const client = this._connector.client;
    const { kind, id } = this._target;
    const onEnd = ({ reason, state }) => {
      this._sub = null;
      this._ended = true;
      this._emit("ended", { reason });
      // A terminal state already asked for its refresh; an item that went away did not.
      if (!state) this._refresh();
    };
    const onError = (error) => {
      this._sub = null;
      this._fail(error);
    };
    if (kind === "workspace") {
      this._sub = client.watchWorkspace(id, {
        onSnapshot: (snapshot) => {
          this._gotFirst();
          this._emit("snapshot", snapshot);
          (snapshot.runs || []).forEach((run) => this._emit("updated", run));
          (snapshot.review_packs || []).forEach((card) => this._emit("review-pack.updated", card));
          this._refresh();
        },
        onState: (state) => {
          this._emit(state.type === "review_pack" ? "review-pack.updated" : "updated", state);
          this._refresh();
        },
        onEnd,
        onError,
      });
      return;
    }
    const handlers = {
      onState: (state) => {
        this._gotFirst();
        this._emit("updated", state);
        this._refresh();
      },
      onEnd,
      onError,
    };
    this._sub = kind === "run" ? client.watchRun(id, handlers) : client.watchReviewPack(id, handlers);
  }

  _gotFirst() {
    if (this._subscribed) return;
    this._subscribed = true;
    this._onSubscribed.forEach((cb) => call(cb));
  }

  _emit(event, payload) {
    const set = this._listeners.get(event);
    if (set) Array.from(set).forEach((cb) => call(cb, payload));
    this._all.forEach((cb) => call(cb, "." + event, payload));
  }

  _refresh() {
    this._connector._refreshed(this);
  }

  _fail(error) {
    this._error = error;
    if (this._onError.size === 0 && root.console) root.console.warn("runwire: " + error.message);
    this._onError.forEach((cb) => call(cb, error));
  }

  /** `Echo.leave`: no callback runs after this. */
  _leave() {
    if (this._sub) this._sub.close();
    this._sub = null;
    this._listeners.forEach((set, name) => {
      if (/^refresh(\.|$)/.test(name)) set.forEach((cb) => this._connector._leaveRefresh(this, name, cb));
    });
    this._listeners.clear();
    this._all.clear();
    this._onSubscribed.clear();
    this._onError.clear();
    this._ended = true;
  }
}

/**
 * runwire as a Laravel Echo broadcaster (laravel-echo 2.x takes a connector class as
 * `broadcaster`):
 *
 *   window.Echo = new Echo({ broadcaster: RunwireConnector, url: "https://runwire.example",
 *                            token: async () => (await fetch("/runwire/token")).text() });
 *   Echo.private(`runs.${id}`).listen(".updated", (run) => …).listen(".ended", ({ reason }) => …);
 *
 * Channels: `runs.{id}`, `tenants.{id}.review-pack`, `workspaces.{id}.runs` (public and
 * private names are the same channel: runwire checks access itself). Every channel of the
 * page shares the connector's one client, so one connection (and one per browser, shared
 * between tabs).
 *
 * `.refresh` (or `.refresh.{group}`) is for pages that re-render on change — Livewire
 * components calling `$refresh` — and is as quiet as the polling it replaces: it fires when a
 * channel's item changed (and once for the first state, which may be newer than what the page
 * rendered), at most once per 250 ms per group (all channels with the same group), not while
 * the tab is hidden, `client.hold()` is in effect or the group is busy, and then once when
 * that is over. A group named after a Livewire component id is busy while a Filament action
 * is mounted on that component; `busy: (group) => boolean` replaces that check.
 */
export class RunwireConnector {
  constructor(options = {}) {
    this.options = options;
    this.channels = {};
    if (options.client instanceof Runwire) {
      // A shared client (say `Runwire.page()`): hear its state changes too.
      this.client = options.client;
      const previous = this.client.onStateChange;
      this.client.onStateChange = (state) => {
        call(previous, state);
        this._statusChanged(state);
      };
    } else {
      this.client = new Runwire({
        url: options.url || options.baseUrl || options.host || "",
        token: options.token || options.bearerToken || undefined,
        refreshToken: options.refreshToken,
        withCredentials: options.withCredentials,
        onError: options.onError,
        onStateChange: (state) => this._statusChanged(state),
      });
    }
    this._statusListeners = new Set();
    this._busy = typeof options.busy === "function" ? options.busy : filamentActionMounted;
    this._groups = new Map(); // refresh group -> { gate, members: Map(channel -> Set of callbacks), last }
    this._solo = 0;
    this._refreshers = new Map(); // Livewire component id -> its refresh callback, for follow
    this._onFollow = (e) => this._follow(e.detail);
    if (root.addEventListener) root.addEventListener("runwire-follow", this._onFollow);
  }

  /** Echo calls this for a fresh connection; the client connects as channels are joined. */
  connect() {}

  listen(name, event, callback) {
    return this.channel(name).listen(event, callback);
  }

  channel(name) {
    return this.privateChannel(name);
  }

  privateChannel(name) {
    const key = String(name).replace(/^private-/, "");
    if (!this.channels[key]) this.channels[key] = new RunwireChannel(this, key);
    return this.channels[key];
  }

  presenceChannel(name) {
    throw new RunwireError("runwire has no presence channels (" + name + ")", { status: 400, reason: "unknown_channel" });
  }

  leave(name) {
    this.leaveChannel(name);
  }

  leaveChannel(name) {
    const key = String(name).replace(/^(private-|presence-)/, "");
    const channel = this.channels[key];
    if (!channel) return;
    delete this.channels[key];
    channel._leave();
  }

  /** runwire has no socket ids (Echo sends them to exclude the sender; runwire has none). */
  socketId() {
    return undefined;
  }

  connectionStatus() {
    return echoStatus(this.client.readyState);
  }

  onConnectionChange(callback) {
    this._statusListeners.add(callback);
    return () => this._statusListeners.delete(callback);
  }

  disconnect() {
    if (root.removeEventListener) root.removeEventListener("runwire-follow", this._onFollow);
    Object.keys(this.channels).forEach((name) => this.leaveChannel(name));
    this._groups.forEach((group) => group.gate.cancel());
    this._groups.clear();
    this.client.close();
  }

  /**
   * The `runwire-follow` window event (`detail: {group, channels}`), which the Livewire trait's
   * `runwireFollow()` dispatches after an action started something new (a review pack): opens
   * those channels again, and their changes refresh the Livewire component `group` through
   * its quiet refresh group. Livewire registers a component's listeners only when it mounts;
   * this is how a component follows what it did not know then.
   */
  _follow(detail) {
    const group = detail && detail.group != null ? String(detail.group) : null;
    const names = detail && Array.isArray(detail.channels) ? detail.channels : [];
    names.forEach((name) => {
      const channel = this.privateChannel(String(name));
      if (group) {
        if (!this._refreshers.has(group)) this._refreshers.set(group, () => refreshLivewire(group));
        const refresh = this._refreshers.get(group);
        const event = "refresh." + group;
        if (!channel._listeners.has(event)) channel._listeners.set(event, new Set());
        channel._listeners.get(event).add(refresh);
        this._joinRefresh(channel, event, refresh);
      }
      channel._reopen();
    });
  }

  _statusChanged(state) {
    const status = echoStatus(state);
    this._statusListeners.forEach((cb) => call(cb, status));
  }

  _groupOf(name, callback) {
    const m = /^refresh\.(.+)$/.exec(name);
    if (m) return m[1];
    // An ungrouped refresh listener is a group of its own.
    if (!callback._runwireGroup) callback._runwireGroup = "\0" + ++this._solo;
    return callback._runwireGroup;
  }

  _joinRefresh(channel, name, callback) {
    const key = this._groupOf(name, callback);
    let group = this._groups.get(key);
    if (!group) {
      group = { members: new Map(), last: null };
      group.gate = new RefreshGate(() => this._fireRefresh(group), {
        deferred: () => (root.document && root.document.visibilityState === "hidden") || this.client.held || !!this._busy(key),
      });
      this._groups.set(key, group);
    }
    if (!group.members.has(channel)) group.members.set(channel, new Set());
    group.members.get(channel).add(callback);
  }

  _leaveRefresh(channel, name, callback) {
    if (!callback) {
      this._groups.forEach((group, key) => this._dropMember(key, group, channel, null));
      return;
    }
    const key = this._groupOf(name, callback);
    const group = this._groups.get(key);
    if (group) this._dropMember(key, group, channel, callback);
  }

  _dropMember(key, group, channel, callback) {
    const set = group.members.get(channel);
    if (!set) return;
    if (callback) set.delete(callback);
    else set.clear();
    if (set.size === 0) group.members.delete(channel);
    if (group.last === channel) group.last = null;
    if (group.members.size === 0) {
      group.gate.cancel();
      this._groups.delete(key);
    }
  }

  /** A channel's item changed: every refresh group it is in asks for one refresh. */
  _refreshed(channel) {
    this._groups.forEach((group) => {
      if (!group.members.has(channel)) return;
      group.last = channel;
      group.gate.trigger();
    });
  }

  /** One refresh for the group: one callback (they all refresh the same component). */
  _fireRefresh(group) {
    const channel = group.last && group.members.has(group.last) ? group.last : group.members.keys().next().value;
    if (!channel) return;
    const callbacks = Array.from(group.members.get(channel));
    if (callbacks.length) call(callbacks[0], { channel: channel.name });
  }
}

/** The client's readyState as Echo's ConnectionStatus. */
function echoStatus(state) {
  if (state === "open") return "connected";
  if (state === "connecting") return "connecting";
  if (state === "reconnecting") return "reconnecting";
  if (state === "failed") return "failed";
  return "disconnected";
}

export { Runwire as default };
