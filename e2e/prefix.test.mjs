// The dashboard and the embeddable view behind a reverse proxy that serves runwire under a
// path prefix (/runwire/, as docs/operations.md configures nginx): every asset, API call and
// stream goes through the prefix, none to the site's root.

import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { createDatabase, startRunwire, startPrefixProxy, launchChromium, openPage } from "./support.mjs";

const SECRET = "e2e-prefix-secret-0123456789abcdef0123";

let db, runwire, proxy, browser, world;

before(async () => {
  db = await createDatabase("runwire_e2e_prefix");
  runwire = await startRunwire({ databaseUrl: db.url, secret: SECRET, args: ["--migrate"] });
  proxy = await startPrefixProxy(runwire.base, "/runwire");
  const owner = (await db.one("INSERT INTO users (email) VALUES ('owner@prefix.e2e') RETURNING id")).id;
  const ws = (await db.one("INSERT INTO workspaces (name) VALUES ('Prefix Workspace') RETURNING id")).id;
  await db.query("INSERT INTO workspace_memberships VALUES ($1, $2, 'owner')", [ws, owner]);
  world = { owner, ws };
  browser = await launchChromium();
});

after(async () => {
  await browser?.close();
  await proxy?.stop();
  await runwire?.stop();
  await db?.drop();
});

const newRun = async () =>
  (await db.one("INSERT INTO operation_runs (workspace_id, type, status) VALUES ($1, 'sync', 'queued') RETURNING id", [world.ws])).id;

test("the dashboard under /runwire/ loads, goes live and shows a run change, asking nothing of the site's root", async () => {
  const token = runwire.token(world.owner);
  const { page, errors } = await openPage(browser, `${proxy.base}/#token=${token}&workspace=${world.ws}`);
  await page.waitForSelector('#live[data-state="on"]', { timeout: 15000 });
  assert.equal(await page.textContent("#workspace-name"), "Prefix Workspace");
  const run = await newRun();
  const card = `li.run[data-run-id="${run}"]`;
  await page.waitForSelector(`${card}[data-status="queued"]`, { timeout: 5000 });
  await db.query("UPDATE operation_runs SET status = 'running' WHERE id = $1", [run]);
  await page.waitForSelector(`${card}[data-status="running"]`, { timeout: 5000 });
  const styled = await page.evaluate(() => document.styleSheets.length > 0 && document.styleSheets[0].cssRules.length > 0);
  assert.ok(styled, "the stylesheet loaded");
  assert.deepEqual(errors, []);
  assert.deepEqual(proxy.outside, [], "no request outside the prefix");
  await db.query("UPDATE operation_runs SET status = 'completed', outcome = 'succeeded' WHERE id = $1", [run]);
  await page.close();
});

test("the embeddable view under /runwire/ loads its assets and streams through the prefix", async () => {
  const token = runwire.token(world.owner);
  const run = await newRun();
  const { page, errors } = await openPage(browser, `${proxy.base}/embed/workspaces/${world.ws}#token=${token}`);
  // Playwright's CSS selectors pierce the element's shadow root.
  await page.waitForSelector('runwire-feed >> [part~="live"][data-live="true"]', { timeout: 15000 });
  await page.waitForSelector(`[part~="run"][data-run-id="${run}"][data-status="queued"]`, { timeout: 5000 });
  const styled = await page.evaluate(() => document.styleSheets.length > 0 && document.styleSheets[0].cssRules.length > 0);
  assert.ok(styled, "the stylesheet loaded");
  assert.deepEqual(errors, []);
  assert.deepEqual(proxy.outside, [], "no request outside the prefix");
  await page.close();
});
