// runwire as a Laravel Echo broadcaster in Chromium: laravel-echo 2.x from npm on a page of
// another origin than runwire, which loads the client either as the ES module
// (`import { RunwireConnector } from ".../runwire.mjs"`, fetched with CORS) or as the global
// script (`runwire.RunwireConnector`). Every test runs in both modes: they behave the same.

import { test, before, after, afterEach } from "node:test";
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { createDatabase, startRunwire, startSite, freePort, launchChromium, waitFor, ROOT } from "./support.mjs";

const SECRET = "e2e-echo-secret-0123456789abcdef0123456";
const ECHO = join(ROOT, "e2e/node_modules/laravel-echo/dist");

let db, runwire, site, browser, world;

before(async () => {
  db = await createDatabase("runwire_e2e_echo");
  const sitePort = await freePort();
  const origin = `http://127.0.0.1:${sitePort}`;
  runwire = await startRunwire({ databaseUrl: db.url, secret: SECRET, args: ["--migrate"], env: { RUNWIRE_ALLOWED_ORIGINS: origin } });
  const user = async (email) => Number((await db.one("INSERT INTO users (email) VALUES ($1) RETURNING id", [email])).id);
  const alice = await user("alice@echo.e2e");
  const ws = Number((await db.one("INSERT INTO workspaces (name) VALUES ('Echo E2E') RETURNING id")).id);
  const tenant = async (name) => Number((await db.one("INSERT INTO tenants (workspace_id, name) VALUES ($1, $2) RETURNING id", [ws, name])).id);
  const [mine, other] = [await tenant("Mine"), await tenant("Not mine")];
  await db.query("INSERT INTO workspace_memberships VALUES ($1, $2, 'owner')", [ws, alice]);
  await db.query("INSERT INTO tenant_memberships VALUES ($1, $2, 'owner')", [mine, alice]);
  world = { alice, ws, mine, other, token: runwire.token(alice, 600) };

  const html = (head) => `<!doctype html><html><head><meta charset="utf-8"><link rel="icon" href="data:,">${head}</head><body></body></html>`;
  site = await startSite({
    "/echo.js": ["text/javascript", readFileSync(join(ECHO, "echo.js"))],
    "/echo.iife.js": ["text/javascript", readFileSync(join(ECHO, "echo.iife.js"))],
    // As a host's bundle would: laravel-echo from npm, the connector from runwire.
    "/module.html": [
      "text/html",
      html(`<script type="module">
        import Echo from "/echo.js";
        import { RunwireConnector } from "${runwire.base}/runwire.mjs";
        window.makeEcho = (options) => new Echo({ broadcaster: RunwireConnector, ...options });
      </script>`),
    ],
    "/global.html": [
      "text/html",
      html(`<script src="${runwire.base}/runwire.js"></script>
        <script src="/echo.iife.js"></script>
        <script>window.makeEcho = (options) => new Echo.default({ broadcaster: runwire.RunwireConnector, ...options });</script>`),
    ],
  }, sitePort);
  browser = await launchChromium();
});

// A failed test must not leave its streams open for the next one.
let contexts = [];
afterEach(async () => {
  await Promise.all(contexts.map((c) => c.close().catch(() => {})));
  contexts = [];
});

after(async () => {
  await browser?.close();
  await site?.stop();
  await runwire?.stop();
  await db?.drop();
});

const newRun = async (tenant = world.mine, status = "running") =>
  Number((await db.one("INSERT INTO operation_runs (workspace_id, tenant_id, type, status) VALUES ($1, $2, 'sync', $3) RETURNING id", [world.ws, tenant, status])).id);
const setRun = (run, set) => db.query(`UPDATE operation_runs SET ${set} WHERE id = $1`, [run]);
const multiOpen = () => runwire.metric('runwire_streams_open{kind="multi"}');

/**
 * A tab of the site in `mode` with window.echo made from `options` (the token function by
 * default: it counts its calls in window.tokenCalls). window.log collects what listeners hear.
 */
async function openEcho(mode, { token = world.token, echoOptions = "{}" } = {}) {
  const context = await browser.newContext();
  contexts.push(context);
  const page = await context.newPage();
  const errors = [];
  page.on("pageerror", (e) => errors.push(e.message));
  await page.goto(`${site.base}/${mode}.html`);
  await page.waitForFunction(() => typeof window.makeEcho === "function");
  await page.evaluate(
    ({ base, token, echoOptions }) => {
      window.log = [];
      window.tokenCalls = 0;
      window.echo = window.makeEcho({
        url: base,
        token: async () => {
          window.tokenCalls++;
          return token;
        },
        ...eval("(" + echoOptions + ")"),
      });
      window.record = (what) => (payload) => window.log.push([what, JSON.parse(JSON.stringify(payload ?? null)), Date.now()]);
    },
    { base: runwire.base, token, echoOptions },
  );
  return { context, page, errors };
}

const heard = (page, what) => page.evaluate((what) => window.log.filter(([w]) => w === what).map(([, p]) => p), what);

for (const mode of ["module", "global"]) {
  test(`${mode}: runs, review packs and workspace feeds deliver .updated (current state first) and .ended once`, async () => {
    const earlier = await newRun(world.mine, "queued");
    const run = await newRun();
    const forbidden = await newRun(world.other);
    const pack = Number((await db.one("INSERT INTO review_packs (workspace_id, tenant_id, status) VALUES ($1, $2, 'generating') RETURNING id", [world.ws, world.mine])).id);
    const { context, page, errors } = await openEcho(mode);
    await page.evaluate(
      ({ run, forbidden, tenant, ws }) => {
        echo.private(`runs.${run}`).listen(".updated", record("run")).listen(".ended", record("run ended"));
        echo.private(`runs.${forbidden}`).listen(".updated", record("forbidden")).listen(".ended", record("forbidden ended"));
        echo.private(`tenants.${tenant}.review-pack`).listen(".updated", record("pack")).listen(".ended", record("pack ended"));
        echo.private(`workspaces.${ws}.runs`).listen(".updated", record("feed")).listen(".review-pack.updated", record("feed pack"));
      },
      { run, forbidden, tenant: world.mine, ws: world.ws },
    );
    await page.waitForFunction(() => ["run", "pack", "feed", "forbidden ended"].every((w) => window.log.some(([x]) => x === w)));
    assert.deepEqual((await heard(page, "run")).map((s) => s.status), ["running"], "the current state first");
    assert.equal((await heard(page, "pack"))[0].pack.status, "generating");
    // The workspace channel: once per run in the snapshot (the active runs it may see).
    const snapshotRuns = (await heard(page, "feed")).map((r) => r.id);
    assert.ok(snapshotRuns.includes(run) && snapshotRuns.includes(earlier) && !snapshotRuns.includes(forbidden), `snapshot runs ${snapshotRuns}`);
    assert.ok((await heard(page, "feed")).every((s) => s.type === "operation_run"), ".updated carries runs");
    assert.deepEqual((await heard(page, "feed pack")).map((c) => [c.tenant_id, c.pack.status]), [[world.mine, "generating"]], "cards have their own event");
    assert.deepEqual(await heard(page, "forbidden ended"), [{ reason: "forbidden" }]);
    assert.deepEqual(await heard(page, "forbidden"), [], "nothing of a run it may not see");

    await setRun(run, `summary_counts = '{"total": 4, "processed": 2}'`);
    for (const channel of ["run", "feed"]) {
      await page.waitForFunction(({ run, channel }) => window.log.some(([w, s]) => w === channel && s.id === run && s.summary_counts && s.summary_counts.processed === 2), { run, channel });
    }
    await setRun(run, "status = 'completed', outcome = 'succeeded'");
    await db.query("UPDATE review_packs SET status = 'ready', generated_at = now() WHERE id = $1", [pack]);
    await page.waitForFunction(() => ["run ended", "pack ended"].every((w) => window.log.some(([x]) => x === w)));
    await page.waitForFunction((run) => window.log.some(([w, s]) => w === "feed" && s.id === run && s.status === "completed"), run);
    await page.waitForTimeout(300); // anything more would come now
    assert.deepEqual((await heard(page, "run")).map((s) => [s.status, s.summary_counts && s.summary_counts.processed]), [
      ["running", undefined],
      ["running", 2],
      ["completed", 2],
    ]);
    assert.deepEqual(await heard(page, "run ended"), [{ reason: "terminal" }], ".ended once");
    assert.deepEqual((await heard(page, "pack")).map((c) => c.pack.status), ["generating", "ready"]);
    assert.deepEqual(await heard(page, "pack ended"), [{ reason: "terminal" }]);
    assert.equal(await page.evaluate(() => echo.connectionStatus()), "connected", "the feed is still open");

    // A run deleted while watched ends with `gone`.
    const doomed = await newRun();
    await page.evaluate((run) => echo.private(`runs.${run}`).listen(".updated", record("doomed")).listen(".ended", record("doomed ended")), doomed);
    await page.waitForFunction(() => window.log.some(([w]) => w === "doomed"));
    await db.query("DELETE FROM operation_runs WHERE id = $1", [doomed]);
    await page.waitForFunction(() => window.log.some(([w]) => w === "doomed ended"));
    assert.deepEqual(await heard(page, "doomed ended"), [{ reason: "gone" }]);
    // A workspace channel ends when access to the workspace is lost.
    const lost = Number((await db.one("INSERT INTO workspaces (name) VALUES ('Left behind') RETURNING id")).id);
    await db.query("INSERT INTO workspace_memberships VALUES ($1, $2, 'member')", [lost, world.alice]);
    await page.evaluate((ws) => echo.private(`workspaces.${ws}.runs`).listen(".snapshot", record("lost snapshot")).listen(".ended", record("lost ended")), lost);
    await page.waitForFunction(() => window.log.some(([w]) => w === "lost snapshot"));
    await db.query("DELETE FROM workspace_memberships WHERE workspace_id = $1", [lost]);
    await page.waitForFunction(() => window.log.some(([w]) => w === "lost ended"));
    assert.deepEqual(await heard(page, "lost ended"), [{ reason: "forbidden" }]);

    await setRun(earlier, "status = 'failed'");
    assert.deepEqual(errors, []);
    await context.close();
  });

  test(`${mode}: three channels on one page hold one stream, and Echo.leave stops callbacks at once`, async () => {
    const [a, b] = [await newRun(), await newRun()];
    const openedBefore = await runwire.metric('runwire_streams_opened_total{kind="multi"}');
    const { context, page, errors } = await openEcho(mode);
    await page.evaluate(
      ({ a, b, tenant }) => {
        echo.private(`runs.${a}`).listen(".updated", record("a"));
        echo.private(`runs.${b}`).listen(".updated", record("b"));
        echo.private(`tenants.${tenant}.review-pack`).listen(".updated", record("pack"));
      },
      { a, b, tenant: world.mine },
    );
    await page.waitForFunction(() => ["a", "b", "pack"].every((w) => window.log.some(([x]) => x === w)));
    await waitFor(async () => (await multiOpen()) === 1, "one stream");
    assert.equal((await runwire.metric('runwire_streams_opened_total{kind="multi"}')) - openedBefore, 1, "one stream opened for three channels");

    // Leave `a`: its next state reaches nobody, while `b`'s (written after it) arrives.
    await page.evaluate((a) => echo.leave(`runs.${a}`), a);
    await setRun(a, `summary_counts = '{"processed": 1}'`);
    await setRun(b, `summary_counts = '{"processed": 1}'`);
    await page.waitForFunction(() => window.log.some(([w, s]) => w === "b" && s.summary_counts && s.summary_counts.processed === 1));
    await page.waitForTimeout(300);
    assert.equal((await heard(page, "a")).length, 1, "nothing for `a` after leave");
    assert.deepEqual(Object.keys(await page.evaluate(() => ({ ...echo.connector.channels }))).sort(), [`runs.${b}`, `tenants.${world.mine}.review-pack`].sort());
    assert.equal(await multiOpen(), 1, "still one stream");

    // Leaving every channel ends the page's stream.
    await page.evaluate(() => echo.leaveAllChannels());
    await waitFor(async () => (await multiOpen()) === 0, "the stream to close");
    await db.query("UPDATE operation_runs SET status = 'completed' WHERE id = ANY($1)", [[a, b]]);
    assert.deepEqual(errors, []);
    await context.close();
  });

  test(`${mode}: three channel kinds on one page hold one stream, each delivering .updated`, async () => {
    // The feed's workspace (and the pack's tenant) are this test's own, so losing it at the
    // end touches nothing else; the run is in the shared workspace.
    const ws = Number((await db.one("INSERT INTO workspaces (name) VALUES ('One stream') RETURNING id")).id);
    await db.query("INSERT INTO workspace_memberships VALUES ($1, $2, 'owner')", [ws, world.alice]);
    const feedRun = Number((await db.one("INSERT INTO operation_runs (workspace_id, type, status) VALUES ($1, 'sync', 'running') RETURNING id", [ws])).id);
    const run = await newRun();
    const tenant = Number((await db.one("INSERT INTO tenants (workspace_id, name) VALUES ($1, 'One stream') RETURNING id", [ws])).id);
    await db.query("INSERT INTO tenant_memberships VALUES ($1, $2, 'owner')", [tenant, world.alice]);
    const pack = Number((await db.one("INSERT INTO review_packs (workspace_id, tenant_id, status) VALUES ($1, $2, 'generating') RETURNING id", [ws, tenant])).id);
    const opened = () => runwire.metric('runwire_streams_opened_total{kind="multi"}');
    const openedBefore = await opened();
    const { context, page, errors } = await openEcho(mode);
    await page.evaluate(
      ({ run, tenant, ws }) => {
        echo.private(`runs.${run}`).listen(".updated", record("run")).listen(".ended", record("run ended"));
        echo.private(`tenants.${tenant}.review-pack`).listen(".updated", record("pack")).listen(".ended", record("pack ended"));
        echo.private(`workspaces.${ws}.runs`).listen(".updated", record("feed")).listen(".ended", record("feed ended"));
      },
      { run, tenant, ws },
    );
    await page.waitForFunction(() => ["run", "pack", "feed"].every((w) => window.log.some(([x]) => x === w)));
    await waitFor(async () => (await multiOpen()) === 1, "one stream");
    await waitFor(async () => (await runwire.streamsOpen()) === 1, "one open stream in all: no feed stream of its own");
    assert.equal((await opened()) - openedBefore, 1, "one stream opened for three channels");
    assert.deepEqual((await heard(page, "run")).map((s) => [s.id, s.status]), [[run, "running"]]);
    assert.deepEqual((await heard(page, "pack")).map((c) => c.pack.id), [pack]);
    assert.deepEqual((await heard(page, "feed")).map((s) => [s.id, s.status]), [[feedRun, "running"]], "once per run in the snapshot");

    // Each delivers its changes on the one stream.
    await setRun(feedRun, `summary_counts = '{"processed": 1}'`);
    await setRun(run, `summary_counts = '{"processed": 1}'`);
    await db.query("UPDATE review_packs SET status = 'ready', generated_at = now() WHERE id = $1", [pack]);
    await page.waitForFunction(() => window.log.some(([w]) => w === "pack ended"));
    await page.waitForFunction(
      ({ run, feedRun }) =>
        window.log.some(([w, s]) => w === "run" && s.id === run && s.summary_counts && s.summary_counts.processed === 1) &&
        window.log.some(([w, s]) => w === "feed" && s.id === feedRun && s.summary_counts && s.summary_counts.processed === 1),
      { run, feedRun },
    );
    await page.waitForTimeout(300); // anything more would come now
    assert.deepEqual((await heard(page, "feed")).map((s) => [s.id, s.summary_counts && s.summary_counts.processed]), [
      [feedRun, undefined],
      [feedRun, 1],
    ], "once per run change");
    assert.deepEqual((await heard(page, "pack")).map((c) => c.pack.status), ["generating", "ready"]);
    assert.deepEqual(await heard(page, "pack ended"), [{ reason: "terminal" }]);
    assert.equal(await runwire.streamsOpen(), 1, "still one stream");
    assert.equal((await opened()) - openedBefore, 1, "and the same one");

    // The workspace lost: the stream ends `forbidden`, the workspace channel hears it once,
    // and the run goes on, on the page's one stream again.
    await db.query("DELETE FROM workspace_memberships WHERE workspace_id = $1", [ws]);
    await page.waitForFunction(() => window.log.some(([w]) => w === "feed ended"));
    await setRun(run, `summary_counts = '{"processed": 2}'`);
    await page.waitForFunction((run) => window.log.some(([w, s]) => w === "run" && s.id === run && s.summary_counts && s.summary_counts.processed === 2), run, { timeout: 10000 });
    await setRun(feedRun, `summary_counts = '{"processed": 2}'`);
    await page.waitForTimeout(300);
    assert.deepEqual(await heard(page, "feed ended"), [{ reason: "forbidden" }], ".ended once, with the reason");
    assert.equal((await heard(page, "feed")).length, 2, "nothing of the lost workspace after it");
    assert.deepEqual(await heard(page, "run ended"), []);
    await waitFor(async () => (await runwire.streamsOpen()) === 1, "one stream for the run");
    await setRun(run, "status = 'completed'");
    await setRun(feedRun, "status = 'completed'");
    assert.deepEqual(errors, []);
    await context.close();
  });

  test(`${mode}: a refused token calls the token function again, then errors without a storm`, async () => {
    const run = await newRun();
    const { context, page } = await openEcho(mode, { token: "not.a.token" });
    const requests = [];
    page.on("request", (r) => {
      if (r.url().startsWith(runwire.base + "/v1/")) requests.push(r.url());
    });
    const started = Date.now();
    await page.evaluate((run) => {
      echo
        .private(`runs.${run}`)
        .listen(".updated", record("state"))
        .error((e) => window.log.push(["error", { name: e.name, isError: e instanceof Error, status: e.status, reason: e.reason }, Date.now()]));
    }, run);
    await page.waitForFunction(() => window.log.some(([w]) => w === "error"), null, { timeout: 10000 });
    await page.waitForTimeout(Math.max(0, 10000 - (Date.now() - started)));
    assert.deepEqual(await heard(page, "error"), [{ name: "RunwireError", isError: true, status: 401, reason: "unauthorized" }]);
    assert.equal(await page.evaluate(() => window.tokenCalls), 4, "the first token, then 3 more after refusals");
    assert.ok(requests.length < 10, `${requests.length} requests to runwire in 10 s`);
    assert.equal(await page.evaluate(() => echo.connectionStatus()), "failed");
    assert.deepEqual(await heard(page, "state"), []);
    console.log(`# ${mode}: refused token: ${requests.length} requests to runwire in 10 s`);
    await setRun(run, "status = 'completed'");
    await context.close();
  });

  test(`${mode}: .refresh fires once per burst per group (≤ 1 per 250 ms), waits while hidden or busy, then fires once`, async () => {
    const [a, b, c] = [await newRun(), await newRun(), await newRun()];
    const { context, page, errors } = await openEcho(mode, { echoOptions: "{ busy: (group) => group === 'g' && window.busy === true }" });
    await page.evaluate(
      ({ a, b, c }) => {
        window.fires = { g: [], solo: [] };
        echo.private(`runs.${a}`).listen(".refresh.g", () => window.fires.g.push(Date.now()));
        echo.private(`runs.${b}`).listen(".refresh.g", () => window.fires.g.push(Date.now()));
        echo.private(`runs.${c}`).listen(".refresh", () => window.fires.solo.push(Date.now()));
      },
      { a, b, c },
    );
    const fires = () => page.evaluate(() => ({ g: window.fires.g.length, solo: window.fires.solo.length }));
    // The first states (the page may have rendered older ones): one refresh per group.
    await page.waitForFunction(() => window.fires.g.length >= 1 && window.fires.solo.length >= 1);
    await page.waitForTimeout(400);
    assert.deepEqual(await fires(), { g: 1, solo: 1 });

    // A burst: 20 changes to both runs of the group over a second.
    const burstStart = Date.now();
    for (let n = 1; n <= 20; n++) {
      await setRun(a, `summary_counts = '{"processed": ${n}}'`);
      await setRun(b, `summary_counts = '{"processed": ${n}}'`);
      await new Promise((r) => setTimeout(r, 50));
    }
    const burstEnd = Date.now();
    await page.waitForTimeout(500);
    const times = await page.evaluate(() => window.fires.g.slice(1));
    const gaps = times.slice(1).map((t, i) => t - times[i]);
    console.log(`# ${mode}: 40 changes in ${burstEnd - burstStart} ms → ${times.length} refreshes, gaps ${gaps.join(", ")} ms`);
    assert.ok(gaps.every((g) => g >= 245), `no two refreshes of a group within 250 ms: ${gaps}`);
    assert.ok(times.length >= 2 && times.length <= Math.ceil((burstEnd - burstStart) / 250) + 2, `${times.length} refreshes`);
    assert.ok(times.at(-1) >= burstEnd - 300, "the last change gets its refresh");
    assert.equal((await fires()).solo, 1, "another group is not refreshed by the group's changes");

    // Hidden: the tab stops streaming; nothing fires; visible again: one refresh catches up.
    const setVisibility = (state) =>
      page.evaluate((state) => {
        Object.defineProperty(document, "visibilityState", { configurable: true, get: () => state });
        document.dispatchEvent(new Event("visibilitychange"));
      }, state);
    const before = await fires();
    await setVisibility("hidden");
    await waitFor(async () => (await multiOpen()) === 0, "the hidden tab's stream to close");
    for (let n = 21; n <= 25; n++) await setRun(a, `summary_counts = '{"processed": ${n}}'`);
    await page.waitForTimeout(600);
    assert.deepEqual(await fires(), before, "nothing while hidden");
    await setVisibility("visible");
    await page.waitForFunction((n) => window.fires.g.length === n + 1, before.g);
    await page.waitForTimeout(600);
    assert.equal((await fires()).g, before.g + 1, "one refresh when visible again");

    // Busy (a Filament action mounted, here the `busy` option): deferred, then once.
    await page.evaluate(() => (window.busy = true));
    const busyBefore = await fires();
    for (let n = 26; n <= 30; n++) {
      await setRun(b, `summary_counts = '{"processed": ${n}}'`);
      await setRun(c, `summary_counts = '{"processed": ${n}}'`);
    }
    await page.waitForFunction((n) => window.fires.solo.length > n, busyBefore.solo);
    await page.waitForTimeout(600);
    assert.equal((await fires()).g, busyBefore.g, "nothing while busy");
    await page.evaluate(() => (window.busy = false));
    await page.waitForFunction((n) => window.fires.g.length === n + 1, busyBefore.g);
    await page.waitForTimeout(600);
    assert.equal((await fires()).g, busyBefore.g + 1, "one refresh once the action is closed");

    // hold() (a modal of the page's own) defers the same way.
    await page.evaluate(() => echo.connector.client.hold());
    const held = await fires();
    await setRun(a, `summary_counts = '{"processed": 31}'`);
    await page.waitForTimeout(600);
    assert.equal((await fires()).g, held.g);
    await page.evaluate(() => echo.connector.client.release());
    await page.waitForFunction((n) => window.fires.g.length === n + 1, held.g);
    await db.query("UPDATE operation_runs SET status = 'completed' WHERE id = ANY($1)", [[a, b, c]]);
    assert.deepEqual(errors, []);
    await context.close();
  });
}
