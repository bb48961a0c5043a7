// The Laravel example (examples/laravel, Debian's Laravel 8 under PHP's built-in server),
// which uses the runwire/laravel package (integrations/laravel) from a composer path
// repository instead of wire:poll: Chromium against the real runwire binary and Postgres.
// The Blade components keep the plain pages live; the Livewire components (run by the
// example's stand-in for Livewire, which cannot be installed here) refresh through the
// listeners the package's RefreshesOnRunwire trait produces, via laravel-echo and runwire's
// Echo connector.
//
// The host applies runwire's migration with `php artisan migrate` (the package's migration);
// runwire then runs `serve` without --migrate (it only checks that the migration is in place).

import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import {
  createDatabase,
  startRunwire,
  startLaravel,
  laravelEnv,
  laravelMigrate,
  launchChromium,
  openPage,
  waitFor,
  freePort,
} from "./support.mjs";

const SECRET = "e2e-laravel-shared-secret-0123456789abcdef";
const WRONG_SECRET = "e2e-laravel-some-other-secret-0123456789ab";
// The contract: the page shows a change within a second of the commit.
const WITHIN = 1000;

let db, runwire, laravel, shortTtl, wrongSecret, browser, world;

before(async () => {
  db = await createDatabase("runwire_e2e_laravel");
  const storage = mkdtempSync(join(tmpdir(), "runwire-laravel-migrate-"));
  laravelMigrate(laravelEnv({ databaseName: db.name, runwireUrl: "", secret: SECRET, storage }));
  rmSync(storage, { recursive: true, force: true });

  const user = async (email) => (await db.one("INSERT INTO users (email) VALUES ($1) RETURNING id", [email])).id;
  const owner = await user("owner@laravel.e2e");
  const ws = (await db.one("INSERT INTO workspaces (name) VALUES ('Laravel E2E') RETURNING id")).id;
  const tenant = (await db.one("INSERT INTO tenants (workspace_id, name) VALUES ($1, 'Contoso') RETURNING id", [ws])).id;
  await db.query("INSERT INTO workspace_memberships VALUES ($1, $2, 'owner')", [ws, owner]);
  await db.query("INSERT INTO tenant_memberships VALUES ($1, $2, 'owner')", [tenant, owner]);
  world = { owner, ws, tenant };

  // Three instances of the app: as shipped, with 3-second tokens, and with a secret runwire
  // does not share (every token it mints is refused). runwire allows their origins (CORS).
  const ports = [await freePort(), await freePort(), await freePort()];
  const origins = ports.map((p) => `http://127.0.0.1:${p}`);
  runwire = await startRunwire({
    databaseUrl: db.url,
    secret: SECRET,
    env: { RUNWIRE_ALLOWED_ORIGINS: origins.join(",") },
  });
  const app = (port, options) => startLaravel({ port, databaseName: db.name, runwireUrl: runwire.base, ...options });
  [laravel, shortTtl, wrongSecret] = await Promise.all([
    app(ports[0], { secret: SECRET }),
    app(ports[1], { secret: SECRET, ttl: 3 }),
    app(ports[2], { secret: WRONG_SECRET }),
  ]);
  browser = await launchChromium();
});

after(async () => {
  await browser?.close();
  await Promise.all([laravel, shortTtl, wrongSecret].map((a) => a?.stop()));
  await runwire?.stop();
  await db?.drop();
});

const newRun = async (status = "queued") =>
  (await db.one("INSERT INTO operation_runs (workspace_id, tenant_id, type, status) VALUES ($1, $2, 'backup', $3) RETURNING id", [world.ws, world.tenant, status])).id;

/** Signs in (the example's dev login) and opens `path` in a new tab of `context`. */
function open(app, path, context) {
  return openPage(context || browser, `${app.base}/dev/login/${world.owner}?next=${encodeURIComponent(path)}`);
}

/** Every request a page makes from now on, by origin. */
function recordRequests(page) {
  const seen = [];
  page.on("request", (r) => seen.push({ url: r.url(), method: r.method(), at: Date.now() }));
  return seen;
}

test("the example's tables are Laravel's own column types (json, timestamp without time zone, int4 tenant ids, varchar)", async () => {
  const { rows } = await db.query(
    `SELECT table_name || '.' || column_name AS col, data_type FROM information_schema.columns
      WHERE table_schema = 'public' AND (table_name, column_name) IN
        (('operation_runs', 'summary_counts'), ('operation_runs', 'updated_at'), ('operation_runs', 'status'),
         ('operation_runs', 'tenant_id'), ('tenants', 'id'), ('review_packs', 'created_at'), ('operation_runs', 'id'))
      ORDER BY 1`,
  );
  assert.deepEqual(Object.fromEntries(rows.map((r) => [r.col, r.data_type])), {
    "operation_runs.id": "bigint",
    "operation_runs.status": "character varying",
    "operation_runs.summary_counts": "json",
    "operation_runs.tenant_id": "integer",
    "operation_runs.updated_at": "timestamp without time zone",
    "review_packs.created_at": "timestamp without time zone",
    "tenants.id": "integer",
  });
});

test("the run page (<x-runwire::run>) shows queued → running → progress → completed as each commits, asking Laravel nothing more", async () => {
  const run = await newRun();
  const { page, errors } = await open(laravel, `/operations/${run}`);
  const requests = recordRequests(page);
  const box = "#run";
  await page.waitForSelector(`${box}[data-status="queued"]`);
  // Connected: wait until runwire holds the stream before changing anything.
  await waitFor(async () => (await runwire.metric('runwire_streams_open{kind="multi"}')) === 1, "the page's stream");

  await db.query("UPDATE operation_runs SET status = 'running', started_at = now(), summary_counts = '{\"total\": 8, \"processed\": 0}' WHERE id = $1", [run]);
  await page.waitForSelector(`${box}[data-status="running"]`, { timeout: WITHIN });

  await db.query("UPDATE operation_runs SET summary_counts = '{\"total\": 8, \"processed\": 5}' WHERE id = $1", [run]);
  await page.waitForFunction(() => document.querySelector("#run .runwire-counts").textContent === "5 / 8", null, { timeout: WITHIN });
  assert.equal(await page.$eval(`${box} progress`, (p) => p.value), 5);

  await db.query("UPDATE operation_runs SET status = 'completed', outcome = 'succeeded', completed_at = now() WHERE id = $1", [run]);
  await page.waitForSelector(`${box}[data-status="completed"][data-terminal="true"][data-ended="terminal"]`, { timeout: WITHIN });
  assert.equal(await page.textContent(`${box} .runwire-outcome`), "succeeded");

  // The stream ended by itself, and the page never went back to Laravel.
  await waitFor(async () => (await runwire.streamsOpen()) === 0, "the stream to close");
  const toLaravel = requests.filter((r) => r.url.startsWith(laravel.base));
  assert.deepEqual(toLaravel, [], "no request to Laravel after the page loaded");
  assert.deepEqual(errors, []);
  await page.close();
});

test("the review-pack card (<x-runwire::review-pack>) follows generating → ready, then a newer pack", async () => {
  const first = (await db.one("INSERT INTO review_packs (workspace_id, tenant_id, status) VALUES ($1, $2, 'queued') RETURNING id", [world.ws, world.tenant])).id;
  const { page, errors } = await open(laravel, `/tenants/${world.tenant}`);
  const card = "#review-pack";
  await page.waitForSelector(`${card}[data-pack-id="${first}"][data-status="queued"]`);
  await waitFor(async () => (await runwire.streamsOpen()) === 1, "the card's stream");

  await db.query("UPDATE review_packs SET status = 'generating' WHERE id = $1", [first]);
  await page.waitForSelector(`${card}[data-status="generating"]`, { timeout: WITHIN });
  await db.query("UPDATE review_packs SET status = 'ready', generated_at = now() WHERE id = $1", [first]);
  await page.waitForSelector(`${card}[data-status="ready"]`, { timeout: WITHIN });
  await waitFor(async () => (await runwire.streamsOpen()) === 0, "the finished card to close its stream");

  // The operator asks for a new pack: the app inserts it, the card follows it to the end.
  await page.click("#generate-pack");
  const second = (await waitFor(() => db.one("SELECT id FROM review_packs WHERE tenant_id = $1 AND id > $2", [world.tenant, first]), "the new pack")).id;
  await page.waitForSelector(`${card}[data-pack-id="${second}"][data-status="queued"]`, { timeout: 5000 });
  await db.query("UPDATE review_packs SET status = 'generating' WHERE id = $1", [second]);
  await page.waitForSelector(`${card}[data-status="generating"]`, { timeout: WITHIN });

  // A newer pack made elsewhere while the card is live replaces it in the stream.
  const third = (await db.one("INSERT INTO review_packs (workspace_id, tenant_id, status) VALUES ($1, $2, 'generating') RETURNING id", [world.ws, world.tenant])).id;
  await page.waitForSelector(`${card}[data-pack-id="${third}"][data-status="generating"]`, { timeout: WITHIN });
  await db.query("UPDATE review_packs SET status = 'ready', generated_at = now() WHERE id = $1", [third]);
  await page.waitForSelector(`${card}[data-pack-id="${third}"][data-status="ready"]`, { timeout: WITHIN });
  assert.deepEqual(errors, []);
  await page.close();
});

test("an expired token is refreshed through the package's token route and the page stays live", async () => {
  const run = await newRun("running");
  const { page, errors } = await open(shortTtl, `/operations/${run}`);
  const tokens = [];
  page.on("response", (r) => {
    if (r.url() === `${shortTtl.base}/runwire/token`) tokens.push(r.status());
  });
  await page.waitForSelector(`#run[data-status="running"]`);
  // The page's token lives 3 s: runwire ends the stream with token_expired, the page asks
  // Laravel for a new one (GET /runwire/token, the package's route behind the login) and
  // reconnects.
  await waitFor(() => tokens.length >= 1, "a token refresh", 10000);
  assert.ok(tokens.every((status) => status === 200), `token route answers: ${tokens}`);
  await waitFor(async () => (await runwire.metric('runwire_streams_open{kind="multi"}')) === 1, "the stream to reopen", 5000);
  await db.query("UPDATE operation_runs SET summary_counts = '{\"total\": 4, \"processed\": 3}' WHERE id = $1", [run]);
  await page.waitForFunction(() => document.querySelector("#run .runwire-counts").textContent === "3 / 4", null, { timeout: WITHIN });
  await db.query("UPDATE operation_runs SET status = 'completed', outcome = 'succeeded' WHERE id = $1", [run]);
  await page.waitForSelector(`#run[data-status="completed"]`, { timeout: WITHIN });
  assert.equal(await page.isHidden("#runwire-error"), true);
  assert.deepEqual(errors, []);
  await page.close();
});

test("a token runwire keeps refusing: 3 refreshes, then an error, fewer than 10 requests in 10 s", async () => {
  const run = await newRun("running");
  // Signed in first, so that everything from the page's load on is recorded.
  const { page } = await open(wrongSecret, "/");
  const requests = recordRequests(page);
  const started = Date.now();
  await page.goto(`${wrongSecret.base}/operations/${run}`);
  await page.waitForSelector("#runwire-error:not([hidden])", { timeout: 10000 });
  assert.equal(await page.getAttribute("#runwire-error", "data-status"), "401");
  assert.match(await page.textContent("#runwire-error"), /Live updates stopped/);
  // Watch the rest of the 10 s: nothing more.
  await page.waitForTimeout(Math.max(0, 10000 - (Date.now() - started)));
  const refreshes = requests.filter((r) => r.url === `${wrongSecret.base}/runwire/token`);
  const streams = requests.filter((r) => r.url.startsWith(runwire.base + "/v1/"));
  console.log(`# refused token: ${refreshes.length} refreshes, ${streams.length} runwire requests, ${requests.length} in all in 10 s`);
  assert.equal(refreshes.length, 3, "three refreshes");
  assert.ok(refreshes.length + streams.length < 10, `fewer than 10 requests to runwire and the token route in 10 s (${refreshes.length + streams.length})`);
  await page.close();
});

test("six tabs share one runwire stream; closing the leader hands over within 2 s and no tab misses a terminal state", async () => {
  const context = await browser.newContext();
  const opened = await runwire.metric('runwire_streams_opened_total{kind="multi"}');
  const runs = [];
  for (let i = 0; i < 5; i++) runs.push(await newRun("running"));
  const pack = (await db.one("INSERT INTO review_packs (workspace_id, tenant_id, status) VALUES ($1, $2, 'generating') RETURNING id", [world.ws, world.tenant])).id;
  const tabs = [];
  for (const run of runs) tabs.push({ ...(await open(laravel, `/operations/${run}`, context)), run });
  tabs.push({ ...(await open(laravel, `/tenants/${world.tenant}`, context)), pack });
  for (const t of tabs) {
    await t.page.waitForSelector(t.run ? `#run[data-status="running"]` : `#review-pack[data-status="generating"]`);
  }
  await waitFor(async () => (await runwire.streamsOpen()) === 1, "one stream for six tabs");
  const leaders = async () => {
    const flags = await Promise.all(tabs.map((t) => (t.page.isClosed() ? false : t.page.evaluate(() => !!runwire.Runwire.page()._hub))));
    return tabs.filter((_, i) => flags[i]);
  };
  const [leader] = await leaders();
  assert.equal((await leaders()).length, 1, "exactly one tab leads");

  // An update reaches every tab through the leader.
  await db.query("UPDATE operation_runs SET summary_counts = '{\"total\": 2, \"processed\": 1}' WHERE id = ANY($1)", [runs]);
  for (const t of tabs.filter((t) => t.run)) {
    await t.page.waitForFunction(() => document.querySelector("#run .runwire-counts").textContent === "1 / 2", null, { timeout: WITHIN });
  }

  // Close the leader, and finish a run while nobody holds the stream.
  const before = await runwire.metric('runwire_streams_opened_total{kind="multi"}');
  const closedAt = Date.now();
  await leader.page.close();
  const victim = runs.find((r) => r !== leader.run);
  await db.query("UPDATE operation_runs SET status = 'completed', outcome = 'succeeded' WHERE id = $1", [victim]);
  await waitFor(async () => (await runwire.metric('runwire_streams_opened_total{kind="multi"}')) > before && (await leaders()).length === 1, "another tab to take over", 2000);
  const handover = Date.now() - closedAt;
  console.log(`# handover: ${handover} ms; streams opened while six tabs came up: ${before - opened}`);
  await waitFor(async () => (await runwire.streamsOpen()) === 1, "one stream again", 2000);

  const rest = tabs.filter((t) => t !== leader);
  const victimTab = rest.find((t) => t.run === victim);
  await victimTab.page.waitForSelector(`#run[data-status="completed"]`, { timeout: 2000 });

  // Every remaining tab gets its terminal state.
  await db.query("UPDATE operation_runs SET status = 'completed', outcome = 'succeeded' WHERE id = ANY($1)", [runs]);
  await db.query("UPDATE review_packs SET status = 'ready' WHERE id = $1", [pack]);
  for (const t of rest) {
    await t.page.waitForSelector(t.run ? `#run[data-status="completed"]` : `#review-pack[data-status="ready"]`, { timeout: WITHIN });
  }
  await waitFor(async () => (await runwire.streamsOpen()) === 0, "the stream to end once everything is terminal");
  for (const t of rest) assert.deepEqual(t.errors, []);
  await context.close();
});

/**
 * Opens `path` of the example as the owner and records, in the page and by the page's clock,
 * every call the stand-in for Livewire sends to the page's component: refreshes (`__dispatch`
 * of the trait's listener, or `$refresh` for what it follows) and actions (mountAction, …).
 * `calls()` and `refreshes()` read them.
 */
async function openLive(path, context) {
  const page = await (context || browser).newPage();
  const errors = [];
  page.on("pageerror", (e) => errors.push(e.message));
  await page.addInitScript(() => {
    window.componentCalls = [];
    const fetch = window.fetch;
    window.fetch = function (url, init) {
      if (String(url).endsWith("/livewire-stand-in/update")) {
        const [call] = JSON.parse(init.body).calls;
        window.componentCalls.push({ at: performance.now(), method: call.method, listener: call.method === "__dispatch" ? call.params[0] : null });
      }
      return fetch.apply(this, arguments);
    };
  });
  await page.goto(`${laravel.base}/dev/login/${world.owner}?next=${encodeURIComponent(path)}`);
  const component = await page.evaluate(() => {
    const el = document.querySelector("[wire\\:id]");
    return { id: el.getAttribute("wire:id"), listeners: JSON.parse(el.getAttribute("wire:effects")).listeners };
  });
  const calls = () => page.evaluate(() => window.componentCalls);
  const refreshes = async () => (await calls()).filter((c) => c.method === "__dispatch" || c.method === "$refresh");
  return { page, errors, calls, refreshes, component };
}

const setVisibility = (page, state) =>
  page.evaluate((state) => {
    Object.defineProperty(document, "visibilityState", { configurable: true, get: () => state });
    document.dispatchEvent(new Event("visibilitychange"));
  }, state);

/** Waits for `n` refreshes, then `ms` more: no other may arrive meanwhile. */
async function settle(page, refreshes, n, ms = 800) {
  await waitFor(async () => (await refreshes()).length >= n, `${n} refreshes`, 5000);
  await page.waitForTimeout(ms);
  assert.equal((await refreshes()).length, n, `exactly ${n} refreshes`);
}

test("a Livewire component with RefreshesOnRunwire refreshes on push through its Echo listener, at most once per 250 ms", async () => {
  const run = await newRun("running");
  const { page, errors, refreshes, component } = await open_live_run(run);
  // The trait's listener, registered as Livewire registers echo listeners.
  assert.deepEqual(component.listeners, [`echo-private:runs.${run},.refresh.${component.id}`]);
  // The first state may be newer than the render: one refresh when the stream opens.
  await settle(page, refreshes, 1);
  assert.ok((await refreshes()).every((c) => c.listener === component.listeners[0]), "the trait's listener, through __dispatch");
  await waitFor(async () => (await runwire.metric('runwire_streams_open{kind="multi"}')) === 1, "the page's stream");

  await db.query("UPDATE operation_runs SET status = 'running', summary_counts = '{\"total\": 20, \"processed\": 0}' WHERE id = $1", [run]);
  await page.waitForFunction(() => document.querySelector("#live-run .counts").textContent === "0 / 20", null, { timeout: WITHIN });

  // A burst: 20 progress updates in about a second.
  const from = (await refreshes()).length;
  const started = Date.now();
  for (let n = 1; n <= 20; n++) {
    await db.query(`UPDATE operation_runs SET summary_counts = '{"total": 20, "processed": ${n}}' WHERE id = $1`, [run]);
    await new Promise((r) => setTimeout(r, 50));
  }
  const ended = Date.now();
  await page.waitForFunction(() => document.querySelector("#live-run .counts").textContent === "20 / 20", null, { timeout: WITHIN });
  await page.waitForTimeout(500);
  const burst = (await refreshes()).slice(from).map((c) => c.at);
  const gaps = burst.slice(1).map((t, i) => t - burst[i]);
  console.log(`# livewire: 20 updates in ${ended - started} ms → ${burst.length} refreshes, gaps ${gaps.map(Math.round).join(", ")} ms`);
  assert.ok(gaps.every((g) => g >= 249), `no two refreshes within 250 ms: ${gaps}`);
  assert.ok(burst.length <= Math.ceil((ended - started) / 250) + 2, `${burst.length} refreshes for 20 updates`);

  const finished = Date.now();
  await db.query("UPDATE operation_runs SET status = 'completed', outcome = 'succeeded' WHERE id = $1", [run]);
  await page.waitForSelector('#live-run[data-status="completed"]', { timeout: WITHIN });
  console.log(`# livewire: terminal state rendered after ${Date.now() - finished} ms`);
  await waitFor(async () => (await runwire.streamsOpen()) === 0, "the stream to end with the run");
  assert.deepEqual(errors, []);
  await page.close();
});

/** The Livewire run viewer of `run`, its first refresh done. */
async function open_live_run(run) {
  const live = await openLive(`/live/operations/${run}`);
  await live.page.waitForSelector("#live-run");
  return live;
}

test("the trait's refreshes wait while the tab is hidden and while a Filament-style action is mounted, then come once", async () => {
  const run = await newRun("running");
  const { page, errors, calls, refreshes } = await open_live_run(run);
  await settle(page, refreshes, 1);
  const progress = (n) => db.query(`UPDATE operation_runs SET summary_counts = '{"total": 50, "processed": ${n}}' WHERE id = $1`, [run]);

  // Hidden: no request at all (the tab's stream closes too); visible: one refresh.
  await setVisibility(page, "hidden");
  await waitFor(async () => (await runwire.streamsOpen()) === 0, "the hidden tab's stream to close");
  for (let n = 1; n <= 5; n++) await progress(n);
  await page.waitForTimeout(800);
  assert.equal((await refreshes()).length, 1, "nothing while hidden");
  await setVisibility(page, "visible");
  await settle(page, refreshes, 2);
  await page.waitForFunction(() => document.querySelector("#live-run .counts").textContent === "5 / 50");

  // A mounted action (a modal): the component is not refreshed under it.
  await page.click("#edit");
  await page.waitForSelector("#modal");
  await waitFor(async () => (await page.evaluate((id) => Livewire.find(id).get("mountedActions").length, await page.evaluate(() => document.querySelector("[wire\\:id]").getAttribute("wire:id")))) === 1, "the action to be mounted");
  for (let n = 6; n <= 10; n++) await progress(n);
  await page.waitForTimeout(800);
  assert.equal((await refreshes()).length, 2, "nothing while the action is mounted");
  assert.equal(await page.textContent("#live-run .counts"), "5 / 50", "the modal's page is left alone");
  await page.click("#close");
  await settle(page, refreshes, 3);
  await page.waitForFunction(() => document.querySelector("#live-run .counts").textContent === "10 / 50");
  assert.deepEqual(
    (await calls()).map((c) => c.method),
    ["__dispatch", "__dispatch", "mountAction", "unmountAction", "__dispatch"],
    "one refresh after the hidden spell, one after the action",
  );
  await db.query("UPDATE operation_runs SET status = 'completed' WHERE id = $1", [run]);
  assert.deepEqual(errors, []);
  await page.close();
});

test("a Livewire review-pack card with no pack at mount follows the pack its Generate action starts (runwireFollow)", async () => {
  const tenant = (await db.one("INSERT INTO tenants (workspace_id, name) VALUES ($1, 'Fabrikam') RETURNING id", [world.ws])).id;
  await db.query("INSERT INTO tenant_memberships VALUES ($1, $2, 'owner')", [tenant, world.owner]);
  const { page, errors, calls, refreshes, component } = await openLive(`/live/tenants/${tenant}`);
  await page.waitForSelector('#live-pack[data-status="none"]');
  assert.deepEqual(component.listeners, [], "nothing to follow yet: no listener, no stream");
  await page.waitForTimeout(300);
  assert.equal(await runwire.streamsOpen(), 0);

  await page.click("#generate");
  const pack = (await waitFor(() => db.one("SELECT id FROM review_packs WHERE tenant_id = $1", [tenant]), "the new pack")).id;
  await page.waitForSelector(`#live-pack[data-pack-id="${pack}"][data-status="queued"]`, { timeout: 5000 });
  await waitFor(async () => (await runwire.streamsOpen()) === 1, "the card's stream");
  for (const status of ["generating", "ready"]) {
    await db.query("UPDATE review_packs SET status = $2 WHERE id = $1", [pack, status]);
    await page.waitForSelector(`#live-pack[data-status="${status}"]`, { timeout: WITHIN });
  }
  await waitFor(async () => (await runwire.streamsOpen()) === 0, "the stream to end with the pack");
  assert.equal((await calls())[0].method, "generate");
  const follows = await refreshes();
  assert.ok(follows.every((c) => c.method === "$refresh"), "followed through Livewire.find(id).$refresh()");
  assert.ok(follows.length >= 2 && follows.length <= 3, `${follows.length} refreshes: the new pack, generating, ready`);
  assert.deepEqual(errors, []);
  await page.close();
});
