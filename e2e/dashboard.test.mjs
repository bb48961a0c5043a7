// Browser end-to-end tests: Debian's headless Chromium (driven by playwright-core) against the
// real runwire binary and a real Postgres database of its own.
//
// Run with `node --test` after `cargo build` (scripts/test does both).

import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { spawn, execFileSync } from "node:child_process";
import { createServer } from "node:net";
import { mkdirSync } from "node:fs";
import { join } from "node:path";
import pg from "pg";
import { chromium } from "playwright-core";
import { runwireBinary } from "./support.mjs";

const ADMIN_URL = process.env.DATABASE_URL || "postgres://postgres@127.0.0.1:5432/postgres";
const BIN = runwireBinary();
const CHROMIUM = process.env.CHROMIUM || "/usr/bin/chromium";
const SECRET = "e2e-dashboard-secret-0123456789abcdef";
const ARTIFACTS = new URL("./artifacts/", import.meta.url).pathname;
// The contract: the page shows a change within a second of the commit.
const WITHIN = 1000;

let admin, db, dbName, server, base, browser, world, adminToken;

function freePort() {
  return new Promise((resolve, reject) => {
    const s = createServer();
    s.listen(0, "127.0.0.1", () => {
      const { port } = s.address();
      s.close(() => resolve(port));
    });
    s.on("error", reject);
  });
}

async function waitFor(fn, what, timeoutMs = 15000) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    try {
      const v = await fn();
      if (v) return v;
    } catch {
      /* not yet */
    }
    if (Date.now() > deadline) throw new Error("timed out waiting for " + what);
    await new Promise((r) => setTimeout(r, 25));
  }
}

async function metric(name) {
  const text = await (await fetch(base + "/metrics")).text();
  const line = text.split("\n").find((l) => l.startsWith(name + " "));
  return line ? Number(line.split(" ")[1]) : NaN;
}

const one = async (sql, params) => (await db.query(sql, params)).rows[0];

before(async () => {
  dbName = "runwire_e2e_" + process.pid + "_" + Math.floor(Math.random() * 1e6);
  admin = new pg.Client({ connectionString: ADMIN_URL });
  await admin.connect();
  await admin.query(`CREATE DATABASE ${dbName}`);
  const url = new URL(ADMIN_URL);
  url.pathname = "/" + dbName;
  const port = await freePort();
  base = `http://127.0.0.1:${port}`;
  server = spawn(BIN, ["serve", "--migrate"], {
    env: {
      ...process.env,
      DATABASE_URL: url.toString(),
      RUNWIRE_JWT_SECRET: SECRET,
      RUNWIRE_BIND: `127.0.0.1:${port}`,
      RUST_LOG: "warn",
    },
    stdio: ["ignore", "inherit", "inherit"],
  });
  await waitFor(async () => (await fetch(base + "/readyz")).ok, "runwire to be ready");
  db = new pg.Client({ connectionString: url.toString() });
  await db.connect();

  const user = async (email) => (await one("INSERT INTO users (email) VALUES ($1) RETURNING id", [email])).id;
  const owner = await user("owner@e2e");
  const ws = (await one("INSERT INTO workspaces (name) VALUES ('E2E Workspace') RETURNING id")).id;
  const tenantA = (await one("INSERT INTO tenants (workspace_id, name) VALUES ($1, 'Alpha Tenant') RETURNING id", [ws])).id;
  const tenantB = (await one("INSERT INTO tenants (workspace_id, name) VALUES ($1, 'Beta Tenant') RETURNING id", [ws])).id;
  await db.query("INSERT INTO workspace_memberships VALUES ($1, $2, 'owner')", [ws, owner]);
  await db.query("INSERT INTO tenant_memberships VALUES ($1, $2, 'owner'), ($3, $2, 'manager')", [tenantA, owner, tenantB]);
  world = { owner, ws, tenantA, tenantB };
  adminToken = execFileSync(BIN, ["token", "--user", String(owner)], {
    env: { ...process.env, RUNWIRE_JWT_SECRET: SECRET },
  })
    .toString()
    .trim();

  // playwright-core gives each launch a fresh, temporary profile (--user-data-dir).
  browser = await chromium.launch({
    executablePath: CHROMIUM,
    args: [
      "--headless",
      "--no-sandbox",
      "--disable-gpu",
      "--disable-quic",
      "--no-first-run",
      "--disable-background-networking",
      "--disable-component-update",
      "--disable-sync",
    ],
  });
});

after(async () => {
  await browser?.close();
  await db?.end();
  if (server) {
    const exited = new Promise((r) => server.once("exit", r));
    server.kill("SIGTERM");
    await exited;
  }
  await admin?.query(`DROP DATABASE IF EXISTS ${dbName} WITH (FORCE)`);
  await admin?.end();
});

async function openDashboard() {
  const page = await browser.newPage({ viewport: { width: 1360, height: 860 } });
  const errors = [];
  page.on("pageerror", (e) => errors.push(e.message));
  await page.goto(`${base}/#token=${adminToken}&workspace=${world.ws}`);
  await page.waitForSelector('#live[data-state="on"]', { timeout: 15000 });
  return { page, errors };
}

test("the dashboard shows a run go queued → running → completed, each within a second", async () => {
  const { page, errors } = await openDashboard();
  assert.ok(!(await page.url()).includes("token="), "the token leaves the address bar");

  const run = (await one("INSERT INTO operation_runs (workspace_id, tenant_id, type) VALUES ($1, $2, 'backup') RETURNING id", [world.ws, world.tenantA])).id;
  const card = `li.run[data-run-id="${run}"]`;
  await page.waitForSelector(`${card}[data-status="queued"]`, { timeout: WITHIN });
  assert.match(await page.textContent(card), /Backup · Alpha Tenant/);

  await db.query("UPDATE operation_runs SET status = 'running', started_at = now(), summary_counts = '{\"total\": 10, \"processed\": 0}' WHERE id = $1", [run]);
  await page.waitForSelector(`${card}[data-status="running"]`, { timeout: WITHIN });

  await db.query("UPDATE operation_runs SET summary_counts = '{\"total\": 10, \"processed\": 5}' WHERE id = $1", [run]);
  await page.waitForFunction((sel) => document.querySelector(sel)?.textContent.includes("5 / 10"), card, { timeout: WITHIN });

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
  const pack = (await one("INSERT INTO review_packs (workspace_id, tenant_id, status) VALUES ($1, $2, 'generating') RETURNING id", [world.ws, world.tenantB])).id;
  const { page } = await openDashboard();
  const box = `.pack[data-tenant-id="${world.tenantB}"]`;
  await page.waitForSelector(`${box}[data-status="generating"]`, { timeout: 5000 });
  await db.query("UPDATE review_packs SET status = 'ready', generated_at = now(), expires_at = now() + interval '30 days' WHERE id = $1", [pack]);
  await page.waitForSelector(`${box}[data-status="ready"]`, { timeout: WITHIN });
  assert.match(await page.textContent(box), /Generated/);
  await page.close();
});

test("a plain EventSource stops for good after the terminal state (204 on reconnect)", async () => {
  const run = (await one("INSERT INTO operation_runs (workspace_id, type, status) VALUES ($1, 'sync', 'running') RETURNING id", [world.ws])).id;
  const page = await browser.newPage();
  await page.goto(base + "/healthz"); // any same-origin page
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
  const run = (await one("INSERT INTO operation_runs (workspace_id, type, status) VALUES ($1, 'restore', 'running') RETURNING id", [world.ws])).id;
  const page = await browser.newPage();
  await page.goto(base + "/healthz");
  await page.addScriptTag({ url: "/runwire.js" });
  const streamRequests = [];
  page.on("request", (r) => {
    if (r.url().includes("/v1/streams")) streamRequests.push(r.url());
  });
  await page.evaluate(
    ({ run, token }) => {
      window.states = [];
      window.ended = false;
      window.rw = new Runwire({ token });
      window.rw.watchRun(run, {
        onState: (s) => window.states.push(s.status),
        onEnd: () => (window.ended = true),
      });
    },
    { run, token: adminToken },
  );
  await page.waitForFunction(() => window.states.length === 1);
  await db.query("UPDATE operation_runs SET status = 'completed', outcome = 'failed' WHERE id = $1", [run]);
  await page.waitForFunction(() => window.ended, null, { timeout: WITHIN });
  await page.waitForFunction(() => !window.rw._hub.items.active());
  assert.deepEqual(await page.evaluate(() => window.states), ["running", "completed"]);
  await page.waitForTimeout(2500);
  assert.equal(streamRequests.length, 1, "no reconnect after end");
  await page.close();
});

test("a hidden tab stops its streams and catches up when visible again", async () => {
  const { page } = await openDashboard();
  await waitFor(async () => (await metric('runwire_streams_open{kind="workspace"}')) === 1, "the feed stream to be open");

  const setVisibility = (state) =>
    page.evaluate((state) => {
      Object.defineProperty(document, "visibilityState", { configurable: true, get: () => state });
      Object.defineProperty(document, "hidden", { configurable: true, get: () => state === "hidden" });
      document.dispatchEvent(new Event("visibilitychange"));
    }, state);

  await setVisibility("hidden");
  await waitFor(async () => (await metric('runwire_streams_open{kind="workspace"}')) === 0, "the server to see the stream close");
  assert.equal(await page.getAttribute("#live", "data-state"), "paused");

  // Changes while hidden reach nobody...
  const run = (await one("INSERT INTO operation_runs (workspace_id, tenant_id, type, status) VALUES ($1, $2, 'inventory', 'running') RETURNING id", [world.ws, world.tenantA])).id;
  assert.equal(await page.$(`li.run[data-run-id="${run}"]`), null);

  // ...and the fresh snapshot on becoming visible catches the page up.
  await setVisibility("visible");
  await page.waitForSelector(`li.run[data-run-id="${run}"][data-status="running"]`, { timeout: 5000 });
  await waitFor(async () => (await metric('runwire_streams_open{kind="workspace"}')) === 1, "the feed to reopen");
  await db.query("UPDATE operation_runs SET status = 'completed', outcome = 'succeeded' WHERE id = $1", [run]);
  await page.waitForSelector(`#finished-runs tr[data-run-id="${run}"]`, { timeout: WITHIN });
  await page.close();
});

test("runwire.js: hold() defers updates and release() applies only the newest state", async () => {
  const run = (await one("INSERT INTO operation_runs (workspace_id, type, status) VALUES ($1, 'sync', 'running') RETURNING id", [world.ws])).id;
  const page = await browser.newPage();
  await page.goto(base + "/healthz");
  await page.addScriptTag({ url: "/runwire.js" });
  await page.evaluate(
    ({ run, token }) => {
      window.applied = [];
      window.raw = [];
      window.rw = new Runwire({ token });
      window.rw.watchRun(run, { onState: (s) => window.applied.push(s.summary_counts.processed ?? null) });
      // An independent plain EventSource tells the test when the server has sent each update.
      const es = new EventSource(`/v1/runs/${run}/events?access_token=${token}`);
      es.addEventListener("update", (e) => window.raw.push(JSON.parse(e.data).summary_counts.processed));
    },
    { run, token: adminToken },
  );
  await page.waitForFunction(() => window.applied.length === 1);
  await page.evaluate(() => window.rw.hold()); // e.g. a modal opened
  for (const n of [1, 2, 3]) {
    await db.query(`UPDATE operation_runs SET summary_counts = '{"processed": ${n}}' WHERE id = $1`, [run]);
    await page.waitForFunction((n) => window.raw.includes(n), n);
  }
  assert.deepEqual(await page.evaluate(() => window.applied), [null], "nothing applied while held");
  await page.evaluate(() => window.rw.release());
  assert.deepEqual(await page.evaluate(() => window.applied), [null, 3], "only the newest state");
  await page.close();
});

test("runwire.js: a 401 asks the page for a fresh token and reconnects", async () => {
  const run = (await one("INSERT INTO operation_runs (workspace_id, type, status) VALUES ($1, 'backup', 'queued') RETURNING id", [world.ws])).id;
  const page = await browser.newPage();
  await page.goto(base + "/healthz");
  await page.addScriptTag({ url: "/runwire.js" });
  await page.evaluate(
    ({ run, token }) => {
      window.refreshes = 0;
      window.states = [];
      window.rw = new Runwire({
        token: "an.expired.token",
        refreshToken: () => {
          window.refreshes++;
          return Promise.resolve(token);
        },
      });
      window.rw.watchRun(run, { onState: (s) => window.states.push(s.status) });
    },
    { run, token: adminToken },
  );
  await page.waitForFunction(() => window.states.length === 1, null, { timeout: 10000 });
  assert.equal(await page.evaluate(() => window.refreshes), 1);
  await db.query("UPDATE operation_runs SET status = 'running' WHERE id = $1", [run]);
  await page.waitForFunction(() => window.states.includes("running"), null, { timeout: WITHIN });
  await page.close();
});
