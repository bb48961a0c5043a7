/*
 * The live operations dashboard served at `/` (or under a proxy's prefix, `/runwire/`: every
 * URL it uses is relative to the page). Open it as
 *   /#token=<access token>&workspace=<id>[&refresh_url=<url>]
 * (the fragment never reaches a server log). With `refresh_url`, an expired or refused token
 * is exchanged there for a new one (POST with the old token as a bearer token and the page's
 * cookies; the answer is the token, as text or {"token": …}), so a wall screen runs for
 * weeks. The token is traded for an HttpOnly cookie, then
 * everything on the page comes from one stream, the workspace feed: its snapshot fills the
 * active runs, "Recently finished" and the review-pack cards (and replaces them whenever it
 * comes again), and its updates move runs and cards as they commit. Nothing polls. Only an
 * opened run's detail view watches that run on the multiplexed stream, until it is terminal.
 * All text from the database is inserted with textContent: statuses are free text.
 */
(function () {
  "use strict";

  var $ = function (id) { return document.getElementById(id); };
  // Where runwire answers: the page's own directory, so the dashboard works behind a path
  // prefix (a proxy's /runwire/) as well as at the root. Never a root-absolute URL.
  var BASE = new URL(".", location.href).href.replace(/\/$/, "");
  var state = {
    workspace: null,
    tenants: new Map(), // id -> { name, role, can_view_review_pack }
    active: new Map(), // run id -> run
    finished: [], // newest first: the snapshot's recently_finished, then runs finishing live
    selected: null,
    detailSub: null,
  };
  var rw = null;

  var TYPE_LABELS = {
    sync: "Sync", backup: "Backup", restore: "Restore", import: "Import", export: "Export",
    inventory: "Inventory", compliance_scan: "Compliance scan", policy_sync: "Policy sync",
  };

  function el(tag, cls, text) {
    var e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined && text !== null) e.textContent = String(text);
    return e;
  }

  function typeLabel(t) {
    return TYPE_LABELS[t] || String(t).replace(/_/g, " ").replace(/^./, function (c) { return c.toUpperCase(); });
  }

  function tenantName(id) {
    if (id === null || id === undefined) return "Workspace-wide";
    var t = state.tenants.get(id);
    return t ? t.name : "Tenant #" + id;
  }

  function ago(iso) {
    if (!iso) return "";
    var s = Math.max(0, Math.round((Date.now() - Date.parse(iso)) / 1000));
    if (s < 5) return "just now";
    if (s < 60) return s + " s ago";
    if (s < 3600) return Math.floor(s / 60) + " min ago";
    return Math.floor(s / 3600) + " h ago";
  }

  function progress(run) {
    var c = run.summary_counts || {};
    var total = Number(c.total) || 0;
    var done = (Number(c.processed) || 0) + (Number(c.failed) || 0);
    if (!total) return null;
    return { pct: Math.min(100, Math.round((done / total) * 100)), done: done, total: total, failed: Number(c.failed) || 0 };
  }

  function duration(seconds) {
    var s = Math.max(0, Math.round(seconds));
    if (s < 60) return s + " s";
    if (s < 3600) return Math.floor(s / 60) + " min" + (s < 600 && s % 60 ? " " + (s % 60) + " s" : "");
    return Math.floor(s / 3600) + " h " + Math.floor((s % 3600) / 60) + " min";
  }

  /**
   * Elapsed time and ETA now: runwire computes them as of the state's `updated_at`
   * (elapsed_seconds, progress.eta_seconds); between changes they tick on here.
   */
  function timing(run) {
    var at = Date.parse(run.updated_at);
    var since = isFinite(at) ? Math.max(0, (Date.now() - at) / 1000) : 0;
    var elapsed = typeof run.elapsed_seconds === "number" ? run.elapsed_seconds + (run.terminal ? 0 : since) : null;
    var p = run.progress;
    var eta = p && typeof p.eta_seconds === "number" && !run.terminal ? Math.max(0, p.eta_seconds - since) : null;
    return { elapsed: elapsed, eta: eta };
  }

  function pill(value) {
    var p = el("span", "pill " + String(value).replace(/[^a-z_]/gi, ""), String(value).replace(/_/g, " "));
    p.setAttribute("data-value", value);
    return p;
  }

  // ---- rendering ---------------------------------------------------------------------------

  function renderActive() {
    var list = $("active-runs");
    var runs = Array.from(state.active.values()).sort(function (a, b) { return b.id - a.id; });
    list.replaceChildren();
    runs.forEach(function (run) {
      var li = el("li", "run" + (state.selected === run.id ? " selected" : ""));
      li.setAttribute("data-run-id", run.id);
      li.setAttribute("data-status", run.status);
      li.appendChild(el("div", "icon", typeLabel(run.run_type).slice(0, 2).toUpperCase()));
      li.appendChild(el("div", "title", typeLabel(run.run_type) + " · " + tenantName(run.tenant_id)));
      var right = el("div", "");
      right.appendChild(pill(run.status));
      li.appendChild(right);
      var p = progress(run);
      var t = timing(run);
      var meta = "#" + run.id + " · " + (run.status === "queued" ? "queued " + ago(run.created_at) : "started " + ago(run.started_at || run.created_at));
      if (p) meta += " · " + p.done + " / " + p.total + (p.failed ? " (" + p.failed + " failed)" : "");
      var metaLine = el("div", "meta", meta);
      if (t.eta !== null) {
        var eta = el("span", "eta", " · ETA " + duration(t.eta));
        eta.setAttribute("data-eta-seconds", String(Math.round(t.eta)));
        metaLine.appendChild(eta);
      }
      li.appendChild(metaLine);
      var bar = el("div", "bar");
      var fill = el("span");
      fill.style.width = (p ? p.pct : run.status === "running" ? 8 : 0) + "%";
      bar.appendChild(fill);
      li.appendChild(bar);
      li.addEventListener("click", function () { select(run.id); });
      list.appendChild(li);
    });
    $("active-count").textContent = String(runs.length);
    $("active-empty").hidden = runs.length > 0;
  }

  function renderFinished() {
    var body = $("finished-runs");
    body.replaceChildren();
    state.finished.slice(0, 8).forEach(function (run) {
      var tr = el("tr");
      tr.setAttribute("data-run-id", run.id);
      tr.appendChild(el("td", "", typeLabel(run.run_type) + " #" + run.id));
      tr.appendChild(el("td", "", tenantName(run.tenant_id)));
      var td = el("td");
      td.appendChild(pill(run.outcome === "pending" ? run.status : run.outcome));
      tr.appendChild(td);
      var took = timing(run).elapsed;
      tr.appendChild(el("td", "", ago(run.completed_at || run.updated_at) + (took !== null ? " · took " + duration(took) : "")));
      tr.addEventListener("click", function () { select(run.id); });
      body.appendChild(tr);
    });
  }

  /** A change from the feed: a run (created or changed, terminal ones too) or a pack card. */
  function onState(item) {
    if (item.type === "review_pack") return renderPack(item);
    if (item.type !== "operation_run") return;
    var run = item;
    if (run.terminal) {
      state.active.delete(run.id);
      state.finished = [run].concat(state.finished.filter(function (r) { return r.id !== run.id; })).slice(0, 50);
      renderFinished();
    } else {
      state.active.set(run.id, run);
    }
    renderActive();
  }

  function renderDetail(run, final) {
    $("detail").hidden = false;
    $("detail-id").textContent = "#" + run.id;
    var dl = $("detail-body");
    dl.replaceChildren();
    var p = progress(run);
    var t = timing(run);
    var rate = run.progress && run.progress.rate_per_second;
    var rows = [
      ["Operation", typeLabel(run.run_type)],
      ["Tenant", tenantName(run.tenant_id)],
      ["Status", pill(run.status)],
      ["Outcome", pill(run.outcome)],
      ["Progress", p ? p.done + " of " + p.total + " (" + p.pct + " %)" : "—"],
      ["Elapsed", t.elapsed !== null ? duration(t.elapsed) : "—"],
      ["ETA", t.eta !== null ? duration(t.eta) + (rate ? " at " + (Math.round(rate * 100) / 100) + " / s" : "") : "—"],
      ["Queued", run.created_at ? new Date(run.created_at).toLocaleTimeString() : "—"],
      ["Started", run.started_at ? new Date(run.started_at).toLocaleTimeString() : "—"],
      ["Completed", run.completed_at ? new Date(run.completed_at).toLocaleTimeString() : "—"],
      ["Version", run.version],
    ];
    rows.forEach(function (r) {
      dl.appendChild(el("dt", "", r[0]));
      var dd = el("dd");
      if (r[1] instanceof Node) dd.appendChild(r[1]); else dd.textContent = String(r[1]);
      dl.appendChild(dd);
    });
    $("detail-foot").textContent = final ? "Final state — the stream has closed." : "Live — updates as the run changes.";
    $("detail").setAttribute("data-final", final ? "true" : "false");
  }

  function select(runId) {
    if (state.detailSub) state.detailSub.close();
    state.selected = runId;
    renderActive();
    state.detailSub = rw.watchRun(runId, {
      onState: function (run) { renderDetail(run, run.terminal); },
      onEnd: function (end) {
        if (end.reason !== "terminal") $("detail-foot").textContent = "Not available (" + end.reason + ").";
      },
      onError: function (e) { $("detail-foot").textContent = "Not available (" + e.status + ")."; },
    });
  }

  /** The card of a tenant, created (in tenant order) if the page has none yet. */
  function packBox(tenantId) {
    var packs = $("packs");
    var boxes = Array.from(packs.children);
    var box = boxes.find(function (b) { return b.getAttribute("data-tenant-id") === String(tenantId); });
    if (box) return box;
    box = el("div", "pack");
    box.setAttribute("data-tenant-id", tenantId);
    var next = boxes.find(function (b) { return Number(b.getAttribute("data-tenant-id")) > tenantId; });
    packs.insertBefore(box, next || null);
    $("packs-empty").hidden = true;
    return box;
  }

  function renderPack(card) {
    var box = packBox(card.tenant_id);
    box.replaceChildren();
    box.appendChild(el("div", "name", tenantName(card.tenant_id)));
    var status = card.pack ? card.pack.status : "none";
    box.setAttribute("data-status", status);
    box.setAttribute("data-pack-id", card.pack ? card.pack.id : "");
    var right = el("div");
    right.appendChild(card.pack ? pill(status) : el("span", "pill queued", "no pack"));
    box.appendChild(right);
    var meta = !card.pack
      ? "No review pack has been generated yet."
      : status === "ready"
        ? "Generated " + ago(card.pack.generated_at) + (card.pack.expires_at ? " · expires " + new Date(card.pack.expires_at).toLocaleDateString() : "")
        : status === "generating" || status === "queued"
          ? "Pack #" + card.pack.id + " requested " + ago(card.pack.created_at)
          : "Pack #" + card.pack.id + " · " + status;
    box.appendChild(el("div", "meta", meta));
  }

  /** A snapshot's cards replace every card: tenants no longer in it are out of sight. */
  function renderPacks(cards) {
    var shown = new Set(cards.map(function (c) { return String(c.tenant_id); }));
    Array.from($("packs").children).forEach(function (box) {
      if (!shown.has(box.getAttribute("data-tenant-id"))) box.remove();
    });
    cards.forEach(renderPack);
    $("packs-empty").hidden = cards.length > 0;
  }

  function onSnapshot(snapshot) {
    state.active.clear();
    (snapshot.runs || []).forEach(function (r) { state.active.set(r.id, r); });
    state.finished = (snapshot.recently_finished || []).slice();
    renderActive();
    renderFinished();
    renderPacks(snapshot.review_packs || []);
    setLive(true);
  }

  function setLive(on) {
    var live = $("live");
    var hidden = document.visibilityState === "hidden";
    live.setAttribute("data-state", hidden ? "paused" : on ? "on" : "off");
    $("live-text").textContent = hidden ? "Paused" : on ? "Live" : "Reconnecting…";
  }

  // ---- start -----------------------------------------------------------------------------

  /**
   * A new token from `refreshUrl`, traded for a new session cookie at once (the stream
   * authenticates with the cookie, which would otherwise go on carrying the expired token).
   */
  function refresher(refreshUrl, current) {
    return function () {
      return fetch(refreshUrl, {
        method: "POST",
        credentials: "include",
        headers: current ? { Authorization: "Bearer " + current } : {},
      })
        .then(function (r) {
          if (!r.ok) throw new Error("refresh_url answered " + r.status);
          var json = (r.headers.get("content-type") || "").indexOf("json") >= 0;
          return json ? r.json().then(function (b) { return b && b.token; }) : r.text();
        })
        .then(function (token) {
          token = token && String(token).trim();
          if (!token) throw new Error("refresh_url gave no token");
          current = token;
          return Runwire.startSession(BASE, token).then(function () { return token; });
        });
    };
  }

  function start(token, workspaceId, refreshUrl) {
    $("connect").hidden = true;
    // Without a token, an earlier session cookie may still be valid.
    (token ? runwire.Runwire.startSession(BASE, token) : Promise.resolve())
      .then(function () {
        return fetch(BASE + "/v1/workspaces/" + encodeURIComponent(workspaceId), { credentials: "same-origin" });
      })
      .then(function (r) {
        if (!r.ok) throw new Error("workspace " + r.status);
        return r.json();
      })
      .then(function (ws) {
        state.workspace = ws;
        ws.tenants.forEach(function (t) { state.tenants.set(t.id, t); });
        $("workspace-name").textContent = ws.name;
        document.title = ws.name + " · Operations · runwire";
        $("app").hidden = false;
        rw = new runwire.Runwire(Object.assign(
          { url: BASE, onStateChange: function (s) { setLive(s === "open"); } },
          refreshUrl ? { refreshToken: refresher(refreshUrl, token) } : {}
        ));
        window.runwireClient = rw;
        var feed = rw.watchWorkspace(ws.id, {
          onSnapshot: onSnapshot,
          onState: onState,
          onEnd: function () { setLive(false); $("live-text").textContent = "Access ended"; },
        });
        window.runwireFeed = feed;
        document.addEventListener("visibilitychange", function () { setLive(true); });
        setInterval(function () { renderActive(); renderFinished(); }, 5000); // refresh "x ago"
      })
      .catch(function (e) {
        $("connect").hidden = false;
        $("live-text").textContent = "Not connected";
        var p = el("p", "empty", "Could not open the dashboard: " + e.message);
        $("connect").appendChild(p);
      });
  }

  $("detail-close").addEventListener("click", function () {
    if (state.detailSub) state.detailSub.close();
    state.detailSub = null;
    state.selected = null;
    $("detail").hidden = true;
    renderActive();
  });

  var params = new URLSearchParams(location.hash.slice(1));
  var token = params.get("token");
  var workspace = params.get("workspace");
  var refreshUrl = params.get("refresh_url");
  if (workspace) {
    // Keep the token out of the address bar once it has been used (the refresh URL stays:
    // a reload needs it).
    var keep = "#workspace=" + encodeURIComponent(workspace) + (refreshUrl ? "&refresh_url=" + encodeURIComponent(refreshUrl) : "");
    history.replaceState(null, "", location.pathname + keep);
    start(token, workspace, refreshUrl);
  } else {
    $("connect").hidden = false;
  }
  $("connect-form").addEventListener("submit", function (e) {
    e.preventDefault();
    var f = new FormData(e.target);
    start(String(f.get("token")).trim(), String(f.get("workspace")).trim());
  });
})();
