// Browser end-to-end tests: Debian's headless Chromium (driven by playwright-core) against the
// real runwire binary and a real Postgres database of its own.
//
// Run with `node --test` after `cargo build` (scripts/test does both).

import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { mkdirSync } from "node:fs";
import { join } from "node:path";
import { createDatabase, startRunwire, launchChromium, openPage, watchRun, waitFor } from "./support.mjs";

const SECRET = "e2e-dashboard-secret-0123456789abcdef";
const ARTIFACTS = new URL("./artifacts/", import.meta.url).pathname;
// The contract: the page shows a change within a second of the commit.
const WITHIN = 1000;

let db, runwire, browser, world, adminToken;
/** The dashboard's feed: runwire.js streams it on /v1/streams (`multi`), the page's one stream. */
const feedOpen = () => runwire.metric('runwire_streams_open{kind="multi"}');

before(async () => {
  db = await createDatabase("runwire_e2e");
  runwire = await startRunwire({ databaseUrl: db.url, secret: SECRET, args: ["--migrate"] });

  const user = async (email) => (await db.one("INSERT INTO users (email) VALUES ($1) RETURNING id", [email])).id;
  const owner = await user("owner@e2e");
  const ws = (await db.one("INSERT INTO workspaces (name) VALUES ('E2E Workspace') RETURNING id")).id;
  const tenantA = (await db.one("INSERT INTO tenants (workspace_id, name) VALUES ($1, 'Alpha Tenant') RETURNING id", [ws])).id;
  const tenantB = (await db.one("INSERT INTO tenants (workspace_id, name) VALUES ($1, 'Beta Tenant') RETURNING id", [ws])).id;
  await db.query("INSERT INTO workspace_memberships VALUES ($1, $2, 'owner')", [ws, owner]);
  await db.query("INSERT INTO tenant_memberships VALUES ($1, $2, 'owner'), ($3, $2, 'manager')", [tenantA, owner, tenantB]);
  world = { owner, ws, tenantA, tenantB };
  adminToken = runwire.token(owner);
  browser = await launchChromium();
});

after(async () => {
  await browser?.close();
  await runwire?.stop();
  await db?.drop();
});

async function openDashboard(workspace = world.ws) {
  const { page, errors } = await openPage(browser, `${runwire.base}/#token=${adminToken}&workspace=${workspace}`, { viewport: { width: 1360, height: 860 } });
  await page.waitForSelector('#live[data-state="on"]', { timeout: 15000 });
  return { page, errors };
}

/**
 * A runwire.js tab watching a new run of the workspace as the admin (`options` go to
 * watchRun and may replace the token); `requests` lists the URLs the tab asks for meanwhile.
 */
async function watchNewRun(type, status, options = {}) {
  const run = (await db.one("INSERT INTO operation_runs (workspace_id, type, status) VALUES ($1, $2, $3) RETURNING id", [world.ws, type, status])).id;
  const page = await runwire.page(browser);
  const requests = [];
  page.on("request", (r) => requests.push(r.url())); // before the client starts: its first stream counts
  await watchRun(page, run, { token: adminToken, ...options });
  return { run, page, requests };
}

test("the dashboard shows a run go queued → running → completed, each within a second", async () => {
  const { page, errors } = await openDashboard();
  assert.ok(!(await page.url()).includes("token="), "the token leaves the address bar");

  const run = (await db.one("INSERT INTO operation_runs (workspace_id, tenant_id, type) VALUES ($1, $2, 'backup') RETURNING id", [world.ws, world.tenantA])).id;
  const card = `li.run[data-run-id="${run}"]`;
  await page.waitForSelector(`${card}[data-status="queued"]`, { timeout: WITHIN });
  assert.match(await page.textContent(card), /Backup · Alpha Tenant/);

  await db.query("UPDATE operation_runs SET status = 'running', started_at = now(), summary_counts = '{\"total\": 10, \"processed\": 0}' WHERE id = $1", [run]);
  await page.waitForSelector(`${card}[data-status="running"]`, { timeout: WITHIN });

  // Half done 20 s after it started (as the host's updated_at says): at most 20 s to go (the
  // pace runwire saw since "0 of 10" a moment ago is blended in, which shortens it).
  await db.query(
    "UPDATE operation_runs SET summary_counts = '{\"total\": 10, \"processed\": 5}', started_at = now() - interval '20 seconds', updated_at = now() WHERE id = $1",
    [run],
  );
  await page.waitForFunction((sel) => document.querySelector(sel)?.textContent.includes("5 / 10"), card, { timeout: WITHIN });
  const eta = Number(await page.getAttribute(`${card} .eta`, "data-eta-seconds"));
  assert.ok(eta > 0 && eta <= 21, `an ETA of at most 20 s, got ${eta}`);

  // Open the run's detail view, then finish the run.
  await page.click(card);
  await page.waitForSelector('#detail[data-final="false"]', { timeout: WITHIN });
  await db.query("UPDATE operation_runs SET status = 'completed', outcome = 'succeeded', completed_at = now() WHERE id = $1", [run]);
  await page.waitForSelector(`#finished-runs tr[data-run-id="${run}"]`, { timeout: WITHIN });
  await page.waitForSelector(`${card}`, { state: "detached", timeout: WITHIN });
  await page.waitForSelector('#detail[data-final="true"]', { timeout: WITHIN });
  assert.match(await page.textContent(`#finished-runs tr[data-run-id="${run}"]`), /succeeded/);

  mkdirSync(ARTIFACTS, { recursive: true });
  await page.screenshot({ path: join(ARTIFACTS, "dashboard.png") });
  assert.deepEqual(errors, []);
  await page.close();
});

test("the review-pack card goes generating → ready", async () => {
  const pack = (await db.one("INSERT INTO review_packs (workspace_id, tenant_id, status) VALUES ($1, $2, 'generating') RETURNING id", [world.ws, world.tenantB])).id;
  const { page } = await openDashboard();
  const box = `.pack[data-tenant-id="${world.tenantB}"]`;
  await page.waitForSelector(`${box}[data-status="generating"]`, { timeout: 5000 });
  await db.query("UPDATE review_packs SET status = 'ready', generated_at = now(), expires_at = now() + interval '30 days' WHERE id = $1", [pack]);
  await page.waitForSelector(`${box}[data-status="ready"]`, { timeout: WITHIN });
  assert.match(await page.textContent(box), /Generated/);
  await page.close();
});

test("\"Recently finished\" is filled on load from the feed's snapshot: the last 24 h, newest first", async (t) => {
  // A workspace of its own, so the runs other tests finish do not crowd the list.
  const ws = (await db.one("INSERT INTO workspaces (name) VALUES ('Finished Workspace') RETURNING id")).id;
  const tenant = (await db.one("INSERT INTO tenants (workspace_id, name) VALUES ($1, 'Gamma Tenant') RETURNING id", [ws])).id;
  await db.query("INSERT INTO workspace_memberships VALUES ($1, $2, 'owner')", [ws, world.owner]);
  await db.query("INSERT INTO tenant_memberships VALUES ($1, $2, 'owner')", [tenant, world.owner]);
  const run = async (type, status, outcome, finishedAgo) =>
    Number(
      (
        await db.one(
        `INSERT INTO operation_runs (workspace_id, tenant_id, type, status, outcome, created_at, started_at, completed_at)
         VALUES ($1, $2, $3, $4, $5, now() - $6::interval - interval '5 minutes', now() - $6::interval - interval '4 minutes', now() - $6::interval)
         RETURNING id`,
        [ws, tenant, type, status, outcome, finishedAgo],
      )
    ).id,
    );
  const hourAgo = await run("backup", "completed", "succeeded", "1 hour");
  const threeHoursAgo = await run("export", "completed", "failed", "3 hours");
  const dayAgo = await run("sync", "completed", "succeeded", "25 hours");
  const active = Number((await db.one("INSERT INTO operation_runs (workspace_id, tenant_id, type, status) VALUES ($1, $2, 'inventory', 'running') RETURNING id", [ws, tenant])).id);

  const { page, errors } = await openDashboard(ws);
  t.after(() => page.close()); // also when an assertion fails: its feed must not outlive the test
  // The snapshot that made the page live filled the list: nothing more to wait for.
  const rows = await page.$$eval("#finished-runs tr", (trs) => trs.map((tr) => [Number(tr.dataset.runId), tr.textContent]));
  assert.deepEqual(
    rows.map((r) => r[0]),
    [hourAgo, threeHoursAgo],
    "the runs finished 1 h and 3 h ago, newest first; not the one finished 25 h ago",
  );
  // Started 4 minutes before it completed: runwire's final elapsed time says so.
  assert.match(rows[0][1], /^Backup #\d+Gamma Tenantsucceeded1 h ago · took 4 min$/);
  assert.match(rows[1][1], /failed/);
  assert.ok(!rows.some((r) => r[0] === dayAgo));
  assert.ok(await page.$(`li.run[data-run-id="${active}"]`), "the active run is listed as active");

  // A run finishing now goes on top of the loaded ones.
  await db.query("UPDATE operation_runs SET status = 'completed', outcome = 'succeeded', completed_at = now() WHERE id = $1", [active]);
  await page.waitForSelector(`#finished-runs tr:first-child[data-run-id="${active}"]`, { timeout: WITHIN });
  assert.deepEqual(await page.$$eval("#finished-runs tr", (trs) => trs.map((tr) => Number(tr.dataset.runId))), [active, hourAgo, threeHoursAgo]);
  assert.deepEqual(errors, []);
});

test("the cards follow a minute of pack changes on the feed alone: each state within a second, no stream re-opened", async (t) => {
  const { page, errors } = await openDashboard();
  t.after(() => page.close());
  const box = (tenant) => `.pack[data-tenant-id="${tenant}"]`;
  const tenants = [world.tenantA, world.tenantB].map(Number);
  for (const tenant of tenants) await page.waitForSelector(box(tenant), { timeout: WITHIN });
  await waitFor(async () => (await feedOpen()) === 1, "the feed stream to be open");
  const openedBefore = await runwire.metricSum("runwire_streams_opened_total");
  const requests = [];
  page.on("request", (r) => {
    if (new URL(r.url()).pathname.startsWith("/v1/")) requests.push(r.url());
  });

  // Each tenant's packs: one that goes generating → ready, then newer ones queued →
  // generating → ready or failed, forever; each step yields what the card must show.
  async function* packs(tenant, parity) {
    for (let cycle = 0; ; cycle++) {
      const first = cycle === 0 ? "generating" : "queued";
      const id = Number((await db.one("INSERT INTO review_packs (workspace_id, tenant_id, status) VALUES ($1, $2, $3) RETURNING id", [world.ws, tenant, first])).id);
      yield { id, status: first };
      if (first === "queued") {
        await db.query("UPDATE review_packs SET status = 'generating' WHERE id = $1", [id]);
        yield { id, status: "generating" };
      }
      if ((cycle + parity) % 2 === 0) {
        await db.query("UPDATE review_packs SET status = 'ready', generated_at = now(), expires_at = now() + interval '30 days' WHERE id = $1", [id]);
        yield { id, status: "ready" };
      } else {
        await db.query("UPDATE review_packs SET status = 'failed' WHERE id = $1", [id]);
        yield { id, status: "failed" };
      }
    }
  }
  const flows = tenants.map((tenant, i) => packs(tenant, i));
  const shows = new Map(); // tenant -> what its card must show now
  const MINUTE = 60000;
  const EVERY = 2000; // a change every 2 s, alternating tenants: each card changes every 4 s
  const latencies = [];
  const started = Date.now();
  for (let step = 0; Date.now() - started < MINUTE; step++) {
    const due = started + step * EVERY;
    await new Promise((r) => setTimeout(r, Math.max(0, due - Date.now())));
    const tenant = tenants[step % 2];
    const before = Date.now(); // before the commit: an upper bound of commit → screen
    const { value: want } = await flows[step % 2].next();
    await page.waitForSelector(`${box(tenant)}[data-pack-id="${want.id}"][data-status="${want.status}"]`, { timeout: WITHIN });
    latencies.push(Date.now() - before);
    shows.set(tenant, want);
    // The other card did not move.
    const cards = await page.$$eval(".pack", (els) => els.map((e) => [Number(e.dataset.tenantId), Number(e.dataset.packId), e.dataset.status]));
    for (const [tid, w] of shows) {
      assert.deepEqual(cards.find((c) => c[0] === tid), [tid, w.id, w.status], `card of tenant ${tid} at step ${step}`);
    }
  }
  const elapsed = Date.now() - started;
  const openedAfter = await runwire.metricSum("runwire_streams_opened_total");
  latencies.sort((a, b) => a - b);
  t.diagnostic(
    `${latencies.length} pack changes in ${elapsed} ms; commit → card: p50 ${latencies[latencies.length >> 1]} ms, max ${latencies[latencies.length - 1]} ms; streams opened during the minute: ${openedAfter - openedBefore}; page requests to /v1/: ${requests.length}`,
  );
  assert.ok(elapsed >= MINUTE && latencies.length >= 28, "a minute of changes on both tenants");
  assert.ok(latencies[latencies.length - 1] <= WITHIN, "every state within a second of its commit");
  assert.equal(openedAfter - openedBefore, 0, "no stream (re-)opened while the packs changed");
  assert.equal(await feedOpen(), 1, "the feed stayed open");
  assert.equal(await runwire.metricSum("runwire_streams_open"), 1, "no stream per card");
  assert.deepEqual(requests, [], "the page asked runwire nothing during the minute");
  assert.deepEqual(errors, []);
});

test("a plain EventSource stops for good after the terminal state (204 on reconnect)", async () => {
  const run = (await db.one("INSERT INTO operation_runs (workspace_id, type, status) VALUES ($1, 'sync', 'running') RETURNING id", [world.ws])).id;
  const page = await browser.newPage();
  await page.goto(runwire.base + "/healthz"); // any same-origin page
  const streamRequests = [];
  page.on("request", (r) => {
    if (r.url().includes(`/v1/runs/${run}/events`)) streamRequests.push(r.url());
  });
  await page.evaluate(
    ({ run, token }) => {
      window.seen = [];
      // Deliberately never calls close(): the server's 204 must stop it.
      window.es = new EventSource(`/v1/runs/${run}/events?access_token=${token}`);
      ["snapshot", "update", "end"].forEach((t) => window.es.addEventListener(t, (e) => window.seen.push(t)));
    },
    { run, token: adminToken },
  );
  await page.waitForFunction(() => window.seen.includes("snapshot"));
  await db.query("UPDATE operation_runs SET status = 'completed', outcome = 'succeeded' WHERE id = $1", [run]);
  // EventSource reconnects after `end` (retry: 1000), gets 204, and closes for good.
  await page.waitForFunction(() => window.es.readyState === 2, null, { timeout: 10000 });
  assert.deepEqual(await page.evaluate(() => window.seen), ["snapshot", "update", "end"]);
  const count = streamRequests.length;
  assert.equal(count, 2, "one stream, one reconnect answered 204");
  // And no loop afterwards: the closed EventSource makes no further request.
  await page.waitForTimeout(2500);
  assert.equal(streamRequests.length, count);
  await page.close();
});

test("runwire.js closes its stream on end and does not reconnect", async () => {
  const { run, page, requests } = await watchNewRun("restore", "running");
  await page.waitForFunction(() => window.states.length === 1);
  await db.query("UPDATE operation_runs SET status = 'completed', outcome = 'failed' WHERE id = $1", [run]);
  await page.waitForFunction(() => window.ended, null, { timeout: WITHIN });
  await page.waitForFunction(() => window.rw.readyState === "idle");
  assert.deepEqual(await page.evaluate(() => window.states), ["running", "completed"]);
  await page.waitForTimeout(2500);
  assert.equal(requests.filter((u) => u.includes("/v1/streams")).length, 1, "no reconnect after end");
  await page.close();
});

test("a hidden tab stops its streams and catches up when visible again", async () => {
  const { page } = await openDashboard();
  await waitFor(async () => (await feedOpen()) === 1, "the feed stream to be open");

  const setVisibility = (state) =>
    page.evaluate((state) => {
      Object.defineProperty(document, "visibilityState", { configurable: true, get: () => state });
      Object.defineProperty(document, "hidden", { configurable: true, get: () => state === "hidden" });
      document.dispatchEvent(new Event("visibilitychange"));
    }, state);

  await setVisibility("hidden");
  await waitFor(async () => (await feedOpen()) === 0, "the server to see the stream close");
  assert.equal(await page.getAttribute("#live", "data-state"), "paused");

  // Changes while hidden reach nobody...
  const run = (await db.one("INSERT INTO operation_runs (workspace_id, tenant_id, type, status) VALUES ($1, $2, 'inventory', 'running') RETURNING id", [world.ws, world.tenantA])).id;
  assert.equal(await page.$(`li.run[data-run-id="${run}"]`), null);

  // ...and the fresh snapshot on becoming visible catches the page up.
  await setVisibility("visible");
  await page.waitForSelector(`li.run[data-run-id="${run}"][data-status="running"]`, { timeout: 5000 });
  await waitFor(async () => (await feedOpen()) === 1, "the feed to reopen");
  await db.query("UPDATE operation_runs SET status = 'completed', outcome = 'succeeded' WHERE id = $1", [run]);
  await page.waitForSelector(`#finished-runs tr[data-run-id="${run}"]`, { timeout: WITHIN });
  await page.close();
});

test("runwire.js: hold() defers updates and release() applies only the newest state", async () => {
  // window.states: the processed counts the client applied.
  const { run, page } = await watchNewRun("sync", "running", { pick: "processed" });
  await page.evaluate(
    ({ run, token }) => {
      window.raw = [];
      // An independent plain EventSource tells the test when the server has sent each update.
      const es = new EventSource(`/v1/runs/${run}/events?access_token=${token}`);
      es.addEventListener("snapshot", () => (window.rawOpen = true));
      es.addEventListener("update", (e) => window.raw.push(JSON.parse(e.data).summary_counts.processed));
    },
    { run, token: adminToken },
  );
  // Both streams are past their snapshots before the first update is written.
  await page.waitForFunction(() => window.states.length === 1 && window.rawOpen === true);
  await page.evaluate(() => window.rw.hold()); // e.g. a modal opened
  for (const n of [1, 2, 3]) {
    await db.query(`UPDATE operation_runs SET summary_counts = '{"processed": ${n}}' WHERE id = $1`, [run]);
    await page.waitForFunction((n) => window.raw.includes(n), n);
  }
  assert.deepEqual(await page.evaluate(() => window.states), [null], "nothing applied while held");
  await page.evaluate(() => window.rw.release());
  assert.deepEqual(await page.evaluate(() => window.states), [null, 3], "only the newest state");
  await page.close();
});

test("runwire.js: a 401 asks the page for a fresh token and reconnects", async () => {
  const { run, page } = await watchNewRun("backup", "queued", { token: "an.expired.token", refresh: { token: adminToken } });
  await page.waitForFunction(() => window.states.length === 1, null, { timeout: 10000 });
  assert.equal(await page.evaluate(() => window.refreshes), 1);
  await db.query("UPDATE operation_runs SET status = 'running' WHERE id = $1", [run]);
  await page.waitForFunction(() => window.states.includes("running"), null, { timeout: WITHIN });
  await page.close();
});
