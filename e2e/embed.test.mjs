// The embeddable live view in Chromium (issue 17): a page of another origin listed in
// --embed-origins frames /embed/workspaces/{id} with a scoped token and shows a run appear,
// move (progress, ETA) and finish, live; a page of an origin not listed cannot frame it; the
// scoped token is refused everywhere but its workspace's feed; an expired token is refreshed
// through refresh_url and the view goes on.

import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { createServer } from "node:http";
import { execFileSync } from "node:child_process";
import { createDatabase, startRunwire, launchChromium, openPage, runwireBinary, freePort, waitFor } from "./support.mjs";

const SECRET = "e2e-embed-secret-0123456789abcdef-xyz";
const WITHIN = 1000;

let db, runwire, browser, world, listed, unlisted;

/** `runwire token --scope workspace:W`, as an operator mints an embed token. */
function scopedToken(user, workspace, ttl = "30d") {
  const args = ["token", "--user", String(user), "--scope", `workspace:${workspace}`, "--ttl", ttl];
  return execFileSync(runwireBinary(), args, { env: { ...process.env, RUNWIRE_JWT_SECRET: SECRET } }).toString().trim();
}

/**
 * A host of another origin: `/wall` frames the embed at `src`, `/token` is its refresh URL
 * (it answers the embed's CORS preflight and mints a new scoped token, recording the bearer
 * token it was shown).
 */
async function host(port, frameSrc) {
  const seen = { refreshes: [] };
  const server = createServer((req, res) => {
    const cors = {
      "access-control-allow-origin": runwire.base,
      "access-control-allow-credentials": "true",
      "access-control-allow-headers": "authorization",
      "access-control-allow-methods": "POST",
    };
    if (req.url === "/token" && req.method === "OPTIONS") return res.writeHead(204, cors).end();
    if (req.url === "/token" && req.method === "POST") {
      seen.refreshes.push(req.headers.authorization || "");
      const token = scopedToken(world.viewer, world.ws);
      return res.writeHead(200, { ...cors, "content-type": "application/json" }).end(JSON.stringify({ token }));
    }
    if (req.url === "/components") {
      res.writeHead(200, { "content-type": "text/html" });
      return res.end(componentsPage());
    }
    if (req.url === "/wall") {
      res.writeHead(200, { "content-type": "text/html" });
      return res.end(`<!doctype html><title>wall</title><iframe id="embed" src="${frameSrc()}" style="width:900px;height:600px"></iframe>`);
    }
    res.writeHead(404).end();
  });
  await new Promise((r) => server.listen(port, "127.0.0.1", r));
  return { origin: `http://127.0.0.1:${port}`, seen, close: () => new Promise((r) => server.close(r)) };
}

before(async () => {
  db = await createDatabase("runwire_e2e_embed");
  const [listedPort, unlistedPort] = [await freePort(), await freePort()];
  runwire = await startRunwire({
    databaseUrl: db.url,
    secret: SECRET,
    args: [
      "--migrate",
      "--embed-origins", `http://127.0.0.1:${listedPort}`,
      // The web components test: a page of that origin calls runwire directly.
      "--allowed-origins", `http://127.0.0.1:${listedPort}`,
    ],
  });
  const viewer = (await db.one("INSERT INTO users (email) VALUES ('wall@e2e') RETURNING id")).id;
  const ws = (await db.one("INSERT INTO workspaces (name) VALUES ('Wall Workspace') RETURNING id")).id;
  const other = (await db.one("INSERT INTO workspaces (name) VALUES ('Other Workspace') RETURNING id")).id;
  const tenant = (await db.one("INSERT INTO tenants (workspace_id, name) VALUES ($1, 'Gamma Tenant') RETURNING id", [ws])).id;
  await db.query("INSERT INTO workspace_memberships VALUES ($1, $3, 'owner'), ($2, $3, 'owner')", [ws, other, viewer]);
  await db.query("INSERT INTO tenant_memberships VALUES ($1, $2, 'owner')", [tenant, viewer]);
  world = { viewer, ws, other, tenant };
  // The listed host frames it with a token that expires in 4 s and a refresh URL.
  world.shortToken = scopedToken(viewer, ws, "4s");
  world.fullToken = runwire.token(viewer);
  listed = await host(listedPort, () => `${runwire.base}/embed/workspaces/${ws}#token=${world.shortToken}&refresh_url=${encodeURIComponent(listed.origin + "/token")}`);
  unlisted = await host(unlistedPort, () => `${runwire.base}/embed/workspaces/${ws}#token=${scopedToken(viewer, ws)}`);
  browser = await launchChromium();
});

after(async () => {
  await browser?.close();
  await listed?.close();
  await unlisted?.close();
  await runwire?.stop();
  await db?.drop();
});

/** A page of the host with one script tag and a <runwire-run>, its bar styled from outside. */
function componentsPage() {
  return `<!doctype html><title>components</title>
    <style>runwire-run::part(bar) { background: rgb(255, 0, 0); }</style>
    <script src="${runwire.base}/runwire-elements.js"></script>
    <runwire-run run="${world.componentRun}" token="${world.fullToken}"></runwire-run>`;
}

/** The embed's frame in a page of `hostServer`, once it has loaded. */
async function wall(hostServer) {
  const { page, errors } = await openPage(browser, hostServer.origin + "/wall");
  const handle = await page.waitForSelector("#embed");
  await waitFor(async () => (await handle.contentFrame())?.url().includes("/embed/") || (await handle.contentFrame())?.url().startsWith("chrome-error"), "the frame to navigate");
  return { page, errors, frame: await handle.contentFrame() };
}

test("a listed origin frames the embed: a run appears, moves and finishes live; an expired token is refreshed", async () => {
  const { page, errors, frame } = await wall(listed);
  await frame.waitForSelector('runwire-feed >> [part~="live"][data-live="true"]', { timeout: 15000 });
  assert.equal(await frame.evaluate(() => document.cookie), "", "no cookies");

  const run = (await db.one("INSERT INTO operation_runs (workspace_id, tenant_id, type) VALUES ($1, $2, 'inventory_sync') RETURNING id", [world.ws, world.tenant])).id;
  const item = `[part~="run"][data-run-id="${run}"]`;
  await frame.waitForSelector(`${item}[data-status="queued"]`, { timeout: WITHIN });
  assert.match(await frame.textContent(item), /Inventory sync · Gamma Tenant/);

  // 10 s in at 20 of 100: a fifth done, about 40 s to go.
  await db.query(
    `UPDATE operation_runs SET status = 'running', started_at = now() - interval '10 seconds', updated_at = now(),
       summary_counts = '{"processed": 20, "total": 100}' WHERE id = $1`,
    [run],
  );
  await frame.waitForSelector(`${item}[data-status="running"]`, { timeout: WITHIN });
  assert.match(await frame.textContent(`${item} [part~="fraction"]`), /^20 %$/);
  const eta = Number(await frame.getAttribute(`${item} [part~="eta"]`, "data-eta-seconds"));
  assert.ok(eta >= 35 && eta <= 41, `ETA about 40 s, got ${eta}`);
  const bar = await frame.$eval(`${item} [part~="bar"]`, (b) => ({ width: b.style.width, height: b.getBoundingClientRect().height }));
  assert.equal(bar.width, "20%");
  assert.ok(bar.height > 0, "the elements' styles apply under the page's strict CSP (no inline styles)");

  // Past the first token's expiry the view goes on with a refreshed one.
  await waitFor(async () => listed.seen.refreshes.length > 0, "a token refresh", 15000);
  assert.equal(listed.seen.refreshes[0], `Bearer ${world.shortToken}`);
  await frame.waitForSelector('runwire-feed >> [part~="live"][data-live="true"]', { timeout: 15000 });

  await db.query("UPDATE operation_runs SET summary_counts = '{\"processed\": 60, \"total\": 100}', updated_at = now() WHERE id = $1", [run]);
  await frame.waitForFunction((sel) => document.querySelector("runwire-feed").shadowRoot.querySelector(sel)?.textContent === "60 %", `${item} [part~="fraction"]`, { timeout: WITHIN * 3 });
  await db.query("UPDATE operation_runs SET status = 'completed', outcome = 'succeeded', completed_at = started_at + interval '30 seconds', updated_at = now() WHERE id = $1", [run]);
  const finished = `[part~="finished-run"][data-run-id="${run}"]`;
  await frame.waitForSelector(finished, { timeout: WITHIN });
  await frame.waitForSelector(item, { state: "detached", timeout: WITHIN });
  assert.match(await frame.textContent(finished), /Succeeded/);
  assert.match(await frame.textContent(finished), /30 s/);

  // The scoped token opens nothing else, from the browser either.
  const fresh = scopedToken(world.viewer, world.ws);
  const statuses = await frame.evaluate(async ({ run, other, fresh }) => {
    const get = (path) => fetch(path, { headers: { Authorization: "Bearer " + fresh } }).then((r) => r.status);
    return {
      run: await get(`/v1/runs/${run}/events`),
      runJson: await get(`/v1/runs/${run}`),
      other: await get(`/v1/workspaces/${other}/runs/events`),
    };
  }, { run, other: world.other, fresh });
  assert.deepEqual(statuses, { run: 403, runJson: 403, other: 403 });
  assert.deepEqual(errors, []);
  await page.close();
});

test("an origin not listed in --embed-origins cannot frame the embed", async () => {
  const page = await browser.newPage();
  const console = [];
  page.on("console", (m) => console.push(m.text()));
  await page.goto(unlisted.origin + "/wall");
  const frame = await (await page.waitForSelector("#embed")).contentFrame();
  // Chromium replaces a refused frame with its error page: no view, nothing streams.
  await waitFor(async () => frame.url().startsWith("chrome-error"), "the frame to be refused", 5000);
  const hasView = await frame.evaluate(() => !!document.querySelector("runwire-feed")).catch(() => false);
  assert.equal(hasView, false);
  assert.ok(console.some((m) => /frame-ancestors/.test(m)), `Chromium says why: ${console.join(" | ")}`);
  await waitFor(async () => (await runwire.metricSum("runwire_streams_open")) === 0, "no feed open", 5000);
  await page.close();
});

test("<runwire-run> on another origin's page: one script tag, shadow DOM styled through CSS parts", async () => {
  world.componentRun = (await db.one(
    `INSERT INTO operation_runs (workspace_id, tenant_id, type, status, started_at, updated_at, summary_counts)
     VALUES ($1, $2, 'backup', 'running', now() - interval '30 seconds', now(), '{"processed": 3, "total": 4}') RETURNING id`,
    [world.ws, world.tenant],
  )).id;
  const { page, errors } = await openPage(browser, listed.origin + "/components");
  const item = `runwire-run [part~="run"][data-run-id="${world.componentRun}"]`;
  await page.waitForSelector(item, { timeout: 15000 });
  assert.equal(await page.textContent(`${item} [part~="fraction"]`), "75 %");
  assert.match(await page.textContent(`${item} [part~="eta"]`), /^ETA \d+ s$/);
  const color = await page.$eval(`${item} [part~="bar"]`, (b) => getComputedStyle(b).backgroundColor);
  assert.equal(color, "rgb(255, 0, 0)", "styled from the page through ::part(bar)");
  await db.query("UPDATE operation_runs SET status = 'completed', outcome = 'succeeded', completed_at = now() WHERE id = $1", [world.componentRun]);
  await page.waitForSelector(`${item}[data-status="completed"]`, { timeout: WITHIN });
  assert.match(await page.textContent(`${item} [part~="elapsed"]`), /^took 3\d s$/);
  assert.deepEqual(errors, []);
  await page.close();
});
