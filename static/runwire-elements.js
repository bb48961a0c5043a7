/*
 * runwire-elements.js — live views as web components, for pages that prefer one script tag:
 *
 *   <script src="https://ops.example.com/runwire/runwire-elements.js"></script>
 *   <runwire-feed workspace="3" token="…" refresh-url="/runwire/token"></runwire-feed>
 *   <runwire-run run="42" token="…"></runwire-run>
 *
 * <runwire-feed workspace> shows a workspace's active runs (progress bar, elapsed time, ETA)
 * and the recently finished ones, from one stream (the workspace feed); <runwire-run run>
 * one run until it is terminal. Both are built on runwire.js's public API (`new Runwire`,
 * `watchWorkspace`, `watchRun`), which this script loads from beside itself when the page
 * has not.
 *
 * Attributes: `url` (where runwire answers; default: where this script came from), `token`
 * (or the `token` property), `refresh-url` (or a `refreshToken` property: a function giving
 * a new token). When runwire refuses the token or it expires, the element asks for a new one
 * — `POST refresh-url` with the old token as `Authorization: Bearer` and the page's cookies;
 * the answer is the token, as text or `{"token": "…"}` — and carries on, so a wall screen
 * runs for weeks. It fires `runwire-error` (detail: the error) when it gives up.
 *
 * Elapsed time and ETA come from runwire (`elapsed_seconds`, `progress.eta_seconds`, as of
 * the state's `updated_at`) and tick locally between changes. Everything renders in shadow
 * DOM; style it from outside with CSS parts (`runwire-feed::part(run)`, `::part(bar)`, …; the
 * list is in docs/api.md) and custom properties (`--runwire-bg`, `--runwire-fg`,
 * `--runwire-muted`, `--runwire-accent`, `--runwire-ok`, `--runwire-bad`, `--runwire-track`,
 * `--runwire-font`). All text from the database is set with textContent.
 */
(function () {
  "use strict";
  if (!window.customElements || customElements.get("runwire-feed")) return;

  var script = document.currentScript;
  var HERE = script && script.src ? script.src.replace(/\/[^/]*$/, "") : location.origin;
  /** How many finished runs a feed lists. */
  var FINISHED_SHOWN = 10;

  /**
   * Clients by (url, token, refresh): the elements of one page that share them share their
   * connections (twenty <runwire-run> elements are one multiplexed stream, not twenty of the
   * browser's six connections per origin).
   */
  var clients = new Map();

  var clientLoading = null;
  /** runwire.js's `Runwire`, loaded from beside this script if the page has not. */
  function loadClient(base) {
    if (window.Runwire) return Promise.resolve(window.Runwire);
    if (!clientLoading) {
      clientLoading = new Promise(function (resolve, reject) {
        var s = document.createElement("script");
        s.src = base + "/runwire.js";
        s.onload = function () { window.Runwire ? resolve(window.Runwire) : reject(new Error("runwire.js did not load")); };
        s.onerror = function () { reject(new Error("cannot load " + s.src)); };
        document.head.appendChild(s);
      });
    }
    return clientLoading;
  }

  // ---- formatting ---------------------------------------------------------------------------

  function duration(seconds) {
    if (seconds === null || seconds === undefined || !isFinite(seconds)) return "";
    var s = Math.max(0, Math.round(seconds));
    if (s < 60) return s + " s";
    if (s < 3600) return Math.floor(s / 60) + " min" + (s % 60 && s < 600 ? " " + (s % 60) + " s" : "");
    var h = Math.floor(s / 3600);
    var m = Math.floor((s % 3600) / 60);
    return h + " h" + (m ? " " + m + " min" : "");
  }

  function label(text) {
    var t = String(text === null || text === undefined ? "" : text).replace(/_/g, " ");
    return t.charAt(0).toUpperCase() + t.slice(1);
  }

  /** Seconds since a state's `updated_at` (its times are as of then); 0 if unknown. */
  function since(run) {
    var at = Date.parse(run.updated_at);
    return isFinite(at) ? Math.max(0, (Date.now() - at) / 1000) : 0;
  }

  /** Elapsed time now: final for a finished run, else ticking on from the state's. */
  function elapsedNow(run) {
    if (typeof run.elapsed_seconds !== "number") return null;
    return run.terminal ? run.elapsed_seconds : run.elapsed_seconds + since(run);
  }

  function etaNow(run) {
    var p = run.progress;
    if (!p || typeof p.eta_seconds !== "number" || run.terminal) return null;
    return Math.max(0, p.eta_seconds - since(run));
  }

  function el(tag, part, text) {
    var e = document.createElement(tag);
    if (part) e.setAttribute("part", part);
    if (text !== undefined && text !== null) e.textContent = String(text);
    return e;
  }

  var STYLE =
    ":host([hidden]){display:none}:host{display:block;font-family:var(--runwire-font,system-ui,sans-serif);color:var(--runwire-fg,#1f2937);background:var(--runwire-bg,transparent)}" +
    "[hidden]{display:none!important}" +
    "h2{font-size:.8em;text-transform:uppercase;letter-spacing:.06em;color:var(--runwire-muted,#6b7280);margin:1em 0 .5em}" +
    "ul{list-style:none;margin:0;padding:0}" +
    "[part~=run]{padding:.6em .2em;border-bottom:1px solid var(--runwire-track,#e5e7eb)}" +
    "[part~=run-head]{display:flex;justify-content:space-between;gap:1em}" +
    "[part~=name]{font-weight:600}" +
    "[part~=status]{color:var(--runwire-accent,#4f46e5)}" +
    "[part~=track]{height:.45em;border-radius:.3em;background:var(--runwire-track,#e5e7eb);margin:.45em 0;overflow:hidden}" +
    "[part~=bar]{height:100%;width:0;background:var(--runwire-accent,#4f46e5);transition:width .4s}" +
    "[part~=meta]{display:flex;gap:1.2em;font-size:.85em;color:var(--runwire-muted,#6b7280);font-variant-numeric:tabular-nums}" +
    "[part~=finished-run]{display:flex;justify-content:space-between;gap:1em;padding:.35em .2em;font-size:.9em}" +
    "[part~=outcome][data-outcome=succeeded]{color:var(--runwire-ok,#059669)}" +
    "[part~=outcome][data-outcome=failed]{color:var(--runwire-bad,#dc2626)}" +
    "[part~=empty],[part~=notice]{color:var(--runwire-muted,#6b7280);font-size:.9em}" +
    "[part~=header]{display:flex;justify-content:space-between;align-items:baseline}" +
    "[part~=title]{font-size:1.1em;font-weight:600}" +
    "[part~=live]{font-size:.8em;color:var(--runwire-muted,#6b7280)}" +
    "[part~=live][data-live=true]{color:var(--runwire-ok,#059669)}";

  var sheet = null;
  /**
   * The elements' styles: a constructed style sheet where the browser has them (a page whose
   * Content-Security-Policy allows no inline styles, like the embeddable view's, still
   * applies it), else a <style> element.
   */
  function style(root) {
    try {
      if (!sheet) {
        sheet = new CSSStyleSheet();
        sheet.replaceSync(STYLE);
      }
      root.adoptedStyleSheets = [sheet];
    } catch (e) {
      root.appendChild(el("style", null, STYLE));
    }
  }

  /** What both elements share: the client, the token and its refresh, the ticking clock. */
  class RunwireElement extends HTMLElement {
    constructor() {
      super();
      this.attachShadow({ mode: "open" });
      this._token = null;
      this.refreshToken = null;
      this._client = null;
      this._sub = null;
      this._tick = null;
    }

    get token() { return this._token || this.getAttribute("token"); }
    set token(value) { this._token = value; }

    get baseUrl() { return (this.getAttribute("url") || HERE).replace(/\/$/, ""); }

    connectedCallback() {
      var self = this;
      this._render();
      // Nothing to watch until the page sets the id (it may set the token first).
      if (!this.getAttribute(this.constructor.watches)) return;
      loadClient(this.baseUrl).then(
        function (Runwire) { if (self.isConnected && !self._client) self._start(Runwire); },
        function (e) { self._fail(e); }
      );
      clearInterval(this._tick);
      this._tick = setInterval(function () { self._ticked(); }, 1000);
    }

    disconnectedCallback() {
      clearInterval(this._tick);
      if (this._sub) this._sub.close();
      if (this._client) {
        var shared = this._clientKey && clients.get(this._clientKey);
        if (!shared) this._client.close();
        else if (--shared.users === 0) {
          clients.delete(this._clientKey);
          shared.client.close();
        }
      }
      this._sub = this._client = null;
    }

    /** A new token: from the `refreshToken` property, else `refresh-url`. */
    _refresh() {
      var self = this;
      var url = this.getAttribute("refresh-url");
      var next = typeof this.refreshToken === "function"
        ? Promise.resolve(this.refreshToken())
        : url
          ? fetch(url, {
              method: "POST",
              credentials: "include",
              headers: this.token ? { Authorization: "Bearer " + this.token } : {},
            }).then(function (r) {
              if (!r.ok) throw new Error("refresh-url answered " + r.status);
              var json = (r.headers.get("content-type") || "").indexOf("json") >= 0;
              return json ? r.json().then(function (b) { return b && b.token; }) : r.text();
            })
          : Promise.reject(new Error("no refresh-url"));
      return next.then(function (token) {
        token = token && String(token).trim();
        if (!token) throw new Error("the refresh gave no token");
        self._token = token;
        // runwire.js reads its `token` for each connection it opens.
        if (self._client) self._client.token = token;
        self.dispatchEvent(new CustomEvent("runwire-token", { detail: { token: token } }));
        return token;
      });
    }

    /** The page's client for this element's url, token and refresh (see `clients`). */
    _newClient(Runwire) {
      var self = this;
      var hasRefresh = typeof this.refreshToken === "function" || this.hasAttribute("refresh-url");
      this._clientKey = [this.baseUrl, this.token || "", this.getAttribute("refresh-url") || "",
        typeof this.refreshToken === "function" ? "fn" : ""].join("\n");
      var shared = clients.get(this._clientKey);
      if (!shared || typeof this.refreshToken === "function") {
        shared = {
          users: 0,
          client: new Runwire({
            url: this.baseUrl,
            baseUrl: this.baseUrl,
            token: this.token || undefined,
            refreshToken: hasRefresh ? function () { return self._refresh(); } : undefined,
          }),
        };
        if (typeof this.refreshToken !== "function") clients.set(this._clientKey, shared);
        else this._clientKey = null;
      }
      shared.users += 1;
      return shared.client;
    }

    attributeChangedCallback(name, old, value) {
      if (this.isConnected && old !== value) {
        this.disconnectedCallback();
        this.connectedCallback();
      }
    }

    _fail(error) {
      this._notice("Not connected: " + (error && error.message ? error.message : error));
      this.dispatchEvent(new CustomEvent("runwire-error", { detail: error }));
    }

    _notice(text) {
      var n = this.shadowRoot.querySelector("[part~=notice]");
      if (n) { n.textContent = text; n.hidden = !text; }
    }

    /** A run as one list item: name, status, progress bar, elapsed, ETA. */
    _runItem(run) {
      var li = el("li", "run");
      li.setAttribute("data-run-id", run.id);
      li.setAttribute("data-status", run.status);
      var head = el("div", "run-head");
      head.appendChild(el("span", "name", label(run.run_type) + (this._tenantName ? " · " + this._tenantName(run.tenant_id) : "")));
      head.appendChild(el("span", "status", label(run.status)));
      li.appendChild(head);
      var p = run.progress;
      var track = el("div", "track");
      var bar = el("div", "bar");
      bar.style.width = p && typeof p.fraction === "number" ? Math.round(p.fraction * 1000) / 10 + "%" : "0%";
      track.appendChild(bar);
      track.hidden = !p;
      li.appendChild(track);
      var meta = el("div", "meta");
      var fraction = el("span", "fraction", p && typeof p.fraction === "number" ? Math.round(p.fraction * 100) + " %" : "");
      var counts = el("span", "counts", p ? p.processed + " / " + p.total : "");
      var elapsed = el("span", "elapsed");
      var eta = el("span", "eta");
      [fraction, counts, elapsed, eta].forEach(function (e) { meta.appendChild(e); });
      li.appendChild(meta);
      li._run = run;
      this._clock(li);
      return li;
    }

    /** Updates a run item's elapsed time and ETA to now. */
    _clock(li) {
      var run = li._run;
      var elapsed = elapsedNow(run);
      var eta = etaNow(run);
      var e = li.querySelector("[part~=elapsed]");
      var t = li.querySelector("[part~=eta]");
      var verb = run.status === "queued" ? "waiting " : run.terminal ? "took " : "running ";
      e.textContent = elapsed === null ? "" : verb + duration(elapsed);
      t.textContent = eta === null ? "" : "ETA " + duration(eta);
      t.setAttribute("data-eta-seconds", eta === null ? "" : String(Math.round(eta)));
    }

    _ticked() {
      var self = this;
      this.shadowRoot.querySelectorAll("[part~=run]").forEach(function (li) {
        if (li._run && !li._run.terminal) self._clock(li);
      });
    }
  }

  /** <runwire-feed workspace="ID">: a workspace's active and recently finished runs. */
  class RunwireFeed extends RunwireElement {
    static get observedAttributes() { return ["workspace"]; }
    static get watches() { return "workspace"; }

    constructor() {
      super();
      this._active = new Map();
      this._finished = [];
      this._tenants = new Map();
    }

    _render() {
      var root = this.shadowRoot;
      root.replaceChildren();
      style(root);
      var feed = el("div", "feed");
      var header = el("header", "header");
      this._title = el("span", "title", "Workspace " + (this.getAttribute("workspace") || ""));
      this._live = el("span", "live", "Connecting…");
      header.appendChild(this._title);
      header.appendChild(this._live);
      feed.appendChild(header);
      feed.appendChild(el("p", "notice")).hidden = true;
      feed.appendChild(el("h2", "heading active-heading", "Active"));
      this._list = feed.appendChild(el("ul", "list active"));
      this._empty = feed.appendChild(el("p", "empty", "Nothing running."));
      feed.appendChild(el("h2", "heading finished-heading", "Recently finished"));
      this._finishedList = feed.appendChild(el("ul", "list finished"));
      root.appendChild(feed);
    }

    _tenantName(id) {
      if (id === null || id === undefined) return "workspace-wide";
      return this._tenants.get(id) || "tenant " + id;
    }

    _start(Runwire) {
      var self = this;
      var workspace = this.getAttribute("workspace");
      this._client = this._newClient(Runwire);
      // The workspace's name and tenant names (a scoped token may read this snapshot).
      fetch(this.baseUrl + "/v1/workspaces/" + encodeURIComponent(workspace), {
        headers: this.token ? { Authorization: "Bearer " + this.token } : {},
        credentials: this.token ? "omit" : "include",
      }).then(function (r) { return r.ok ? r.json() : null; }).then(function (ws) {
        if (!ws) return;
        self._title.textContent = ws.name;
        (ws.tenants || []).forEach(function (t) { self._tenants.set(t.id, t.name); });
        self._renderAll();
      }, function () {});
      // runwire.js before issue 18 calls onSnapshot(runs, snapshot), onRun and onReviewPack;
      // after it, onSnapshot(snapshot) and onState. Both are handled until it lands.
      this._sub = this._client.watchWorkspace(workspace, {
        onSnapshot: function (a, b) { self._snapshot(b || a); },
        onState: function (state) { self._changed(state); },
        onRun: function (run) { self._changed(run); },
        onEnd: function (end) { self._ended(end); },
        onError: function (e) { self._fail(e); },
      });
    }

    _snapshot(snapshot) {
      var self = this;
      this._active.clear();
      (snapshot.runs || []).forEach(function (r) { self._active.set(r.id, r); });
      this._finished = (snapshot.recently_finished || []).slice(0, FINISHED_SHOWN);
      this._live.textContent = "● Live";
      this._live.setAttribute("data-live", "true");
      this._notice("");
      this._renderAll();
    }

    _changed(state) {
      if (!state || state.type !== "operation_run") return;
      var shown = this._active.get(state.id);
      if (shown && shown.version > state.version) return;
      if (state.terminal) {
        this._active.delete(state.id);
        this._finished = [state].concat(this._finished.filter(function (r) { return r.id !== state.id; }))
          .slice(0, FINISHED_SHOWN);
      } else {
        this._active.set(state.id, state);
      }
      this._renderAll();
    }

    _ended(end) {
      this._live.textContent = "Ended: " + ((end && end.reason) || "closed");
      this._live.setAttribute("data-live", "false");
    }

    _renderAll() {
      var self = this;
      var runs = Array.from(this._active.values()).sort(function (a, b) { return b.id - a.id; });
      this._list.replaceChildren.apply(this._list, runs.map(function (r) { return self._runItem(r); }));
      this._empty.hidden = runs.length > 0;
      this._finishedList.replaceChildren.apply(this._finishedList, this._finished.map(function (run) {
        var li = el("li", "finished-run");
        li.setAttribute("data-run-id", run.id);
        li.appendChild(el("span", "name", label(run.run_type) + " · " + self._tenantName(run.tenant_id)));
        var outcome = el("span", "outcome", label(run.outcome === "pending" ? run.status : run.outcome));
        outcome.setAttribute("data-outcome", run.outcome);
        li.appendChild(outcome);
        li.appendChild(el("span", "elapsed", duration(run.elapsed_seconds)));
        return li;
      }));
    }
  }

  /** <runwire-run run="ID">: one run, live until it is terminal. */
  class RunwireRun extends RunwireElement {
    static get observedAttributes() { return ["run"]; }
    static get watches() { return "run"; }

    _render() {
      var root = this.shadowRoot;
      root.replaceChildren();
      style(root);
      root.appendChild(el("p", "notice", "Connecting…"));
      this._holder = root.appendChild(el("ul", "list"));
    }

    _start(Runwire) {
      var self = this;
      this._client = this._newClient(Runwire);
      this._sub = this._client.watchRun(this.getAttribute("run"), {
        onState: function (run) {
          self._notice("");
          self._holder.replaceChildren(self._runItem(run));
          self.dispatchEvent(new CustomEvent("runwire-state", { detail: run }));
        },
        onError: function (e) { self._fail(e); },
      });
    }
  }

  customElements.define("runwire-feed", RunwireFeed);
  customElements.define("runwire-run", RunwireRun);
})();
