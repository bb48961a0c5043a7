// runwire.js on its own in Chromium, against the real runwire binary and Postgres: how it
// fails (backoff, refresh limits), whom tabs share a connection with, and what close() undoes.

import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { createDatabase, startRunwire, launchChromium, watchRun, waitFor, freePort } from "./support.mjs";

const SECRET = "e2e-client-secret-0123456789abcdef0123";

let db, runwire, browser, world;

before(async () => {
  db = await createDatabase("runwire_e2e_client");
  runwire = await startRunwire({ databaseUrl: db.url, secret: SECRET, args: ["--migrate"] });
  const user = async (email) => (await db.one("INSERT INTO users (email) VALUES ($1) RETURNING id", [email])).id;
  const alice = await user("alice@client.e2e");
  const bob = await user("bob@client.e2e");
  const ws = (await db.one("INSERT INTO workspaces (name) VALUES ('Client E2E') RETURNING id")).id;
  await db.query("INSERT INTO workspace_memberships VALUES ($1, $2, 'owner'), ($1, $3, 'member')", [ws, alice, bob]);
  world = { ws, alice, bob };
  browser = await launchChromium();
});

after(async () => {
  await browser?.close();
  await runwire?.stop();
  await db?.drop();
});

const newRun = async () =>
  (await db.one("INSERT INTO operation_runs (workspace_id, type, status) VALUES ($1, 'sync', 'running') RETURNING id", [world.ws])).id;

const token = (user) => runwire.token(user, 600);

/** Opens a client in `page` watching `run` as `user`; states land in window.states. */
const watch = (page, run, user) => watchRun(page, run, { token: token(user) });

const multiOpen = () => runwire.metric('runwire_streams_open{kind="multi"}');

test("tabs of one user share a stream; another user's tab gets its own", async () => {
  const context = await browser.newContext();
  const run = await newRun();
  const a1 = await runwire.page(context);
  const a2 = await runwire.page(context);
  const b1 = await runwire.page(context);
  await watch(a1, run, world.alice);
  await watch(a2, run, world.alice);
  await watch(b1, run, world.bob);
  for (const p of [a1, a2, b1]) await p.waitForFunction(() => window.states.length === 1);
  await waitFor(async () => (await multiOpen()) === 2, "two streams: alice's and bob's");
  const leads = await Promise.all([a1, a2, b1].map((p) => p.evaluate(() => !!window.rw._hub)));
  assert.equal(leads.filter(Boolean).length, 2, "one leader per user");
  assert.equal(leads[2], true, "bob leads his own tab");
  await db.query("UPDATE operation_runs SET status = 'completed', outcome = 'succeeded' WHERE id = $1", [run]);
  for (const p of [a1, a2, b1]) await p.waitForFunction(() => window.states.includes("completed"));
  await waitFor(async () => (await multiOpen()) === 0, "the streams to end");
  await context.close();
});

test("without Web Locks each tab connects on its own", async () => {
  const context = await browser.newContext();
  const run = await newRun();
  const noLocks = () => {
    delete Navigator.prototype.locks;
  };
  const pages = [await runwire.page(context, noLocks), await runwire.page(context, noLocks)];
  for (const p of pages) await watch(p, run, world.alice);
  for (const p of pages) await p.waitForFunction(() => window.states.length === 1);
  await waitFor(async () => (await multiOpen()) === 2, "one stream per tab");
  await db.query("UPDATE operation_runs SET status = 'completed', outcome = 'failed' WHERE id = $1", [run]);
  for (const p of pages) await p.waitForFunction(() => window.states.includes("completed"));
  await context.close();
});

test("a workspace feed relayed to a follower tab: the whole snapshot, then each run and pack card to onState", async () => {
  const tenant = Number((await db.one("INSERT INTO tenants (workspace_id, name) VALUES ($1, 'Relay Tenant') RETURNING id", [world.ws])).id);
  await db.query("INSERT INTO tenant_memberships VALUES ($1, $2, 'owner')", [tenant, world.alice]);
  const context = await browser.newContext();
  const follow = (page) =>
    page.evaluate(
      ({ ws, token }) => {
        window.feed = { snapshots: [], runs: [], cards: [] };
        window.rw = new runwire.Runwire({ token });
        window.rw.watchWorkspace(ws, {
          onSnapshot: (snapshot) =>
            window.feed.snapshots.push({
              runs: snapshot.runs.map((r) => r.id),
              finished: snapshot.recently_finished.map((r) => r.id),
              packs: snapshot.review_packs.map((c) => [c.tenant_id, c.pack && c.pack.status]),
            }),
          onState: (s) =>
            s.type === "operation_run"
              ? window.feed.runs.push([s.type, s.id, s.status])
              : window.feed.cards.push([s.type, s.tenant_id, s.pack && s.pack.id, s.pack && s.pack.status]),
        });
      },
      { ws: world.ws, token: token(world.alice) },
    );
  const leader = await runwire.page(context);
  await follow(leader);
  await leader.waitForFunction(() => window.feed.snapshots.length >= 1 && !!window.rw._hub);
  const follower = await runwire.page(context);
  await follow(follower);
  await follower.waitForFunction(() => window.feed.snapshots.length >= 1);
  assert.equal(await follower.evaluate(() => !!window.rw._hub), false, "the second tab follows");
  // (runwire.js streams a feed on /v1/streams, the page's one connection.)
  await waitFor(async () => (await multiOpen()) === 1, "one feed stream for both tabs");
  assert.equal(await runwire.metric('runwire_streams_open{kind="workspace"}'), 0);
  const tabs = [leader, follower];
  for (const p of tabs) {
    const snapshot = await p.evaluate(() => window.feed.snapshots.at(-1));
    assert.deepEqual(snapshot.packs, [[tenant, null]], "the snapshot carries the tenant's card (no pack yet)");
    assert.ok(Array.isArray(snapshot.finished), "and the recently finished runs");
  }

  const pack = Number((await db.one("INSERT INTO review_packs (workspace_id, tenant_id, status) VALUES ($1, $2, 'generating') RETURNING id", [world.ws, tenant])).id);
  for (const p of tabs) await p.waitForFunction((pack) => window.feed.cards.some((c) => c[2] === pack && c[3] === "generating"), pack);
  await db.query("UPDATE review_packs SET status = 'ready', generated_at = now() WHERE id = $1", [pack]);
  const run = Number(await newRun());
  for (const p of tabs) {
    await p.waitForFunction((pack) => window.feed.cards.some((c) => c[2] === pack && c[3] === "ready"), pack);
    await p.waitForFunction((run) => window.feed.runs.some((r) => r[1] === run), run);
    const feed = await p.evaluate(() => window.feed);
    assert.deepEqual(feed.cards, [
      ["review_pack", tenant, pack, "generating"],
      ["review_pack", tenant, pack, "ready"],
    ]);
    assert.deepEqual(feed.runs, [["operation_run", run, "running"]], "one run change");
  }
  await db.query("UPDATE operation_runs SET status = 'completed', outcome = 'succeeded' WHERE id = $1", [run]);
  await context.close();
});

test("a refreshToken that keeps failing counts as a 401: 3 tries, then one RunwireError, then silence", async () => {
  const context = await browser.newContext();
  const run = await newRun();
  const page = await runwire.page(context);
  const streams = [];
  page.on("request", (r) => {
    if (r.url().includes("/v1/")) streams.push(r.url());
  });
  await watchRun(page, run, { token: "not.a.token", refresh: { fail: "the host's token route is down" } });
  await page.waitForFunction(() => window.errors.length === 1, null, { timeout: 10000 });
  const [error] = await page.evaluate(() => window.errors);
  assert.deepEqual({ ...error, message: undefined }, { name: "RunwireError", isError: true, status: 401, reason: "unauthorized", message: undefined });
  assert.match(error.message, /refused 3 refreshed tokens/);
  await page.waitForTimeout(3000);
  assert.equal(await page.evaluate(() => window.refreshes), 3);
  assert.equal(await page.evaluate(() => window.errors.length), 1);
  assert.equal(await page.evaluate(() => window.rw.readyState), "failed");
  // The token was refused when the client asked runwire whom it names; nothing after.
  assert.deepEqual(streams.map((u) => new URL(u).pathname), ["/v1/session"], "one request, refused; none after");
  await context.close();
});

test("an unreachable runwire is retried with growing, jittered pauses", async () => {
  const context = await browser.newContext();
  const page = await runwire.page(context);
  const closed = `http://127.0.0.1:${await freePort()}`; // nothing listens here
  const attempts = [];
  page.on("request", (r) => {
    if (r.url().startsWith(closed)) attempts.push(Date.now());
  });
  await watchRun(page, 1, { baseUrl: closed, token: token(world.alice) });
  await page.waitForTimeout(8000);
  await page.evaluate(() => window.rw.close());
  const gaps = attempts.slice(1).map((t, i) => t - attempts[i]);
  console.log(`# unreachable: ${attempts.length} attempts in 8 s, gaps ${gaps.join(", ")} ms`);
  assert.ok(attempts.length >= 3 && attempts.length <= 5, `${attempts.length} attempts`);
  // Retry n waits between 0.5·2ⁿ and 1·2ⁿ seconds (timers may fire late on a busy machine,
  // never early).
  gaps.forEach((gap, n) => {
    assert.ok(gap >= 500 * 2 ** n - 50 && gap <= 1000 * 2 ** n + 1000, `retry ${n} waited ${gap} ms: ${gaps}`);
  });
  await context.close();
});

test("close() removes every listener it added and lets another tab lead", async () => {
  const context = await browser.newContext();
  const run = await newRun();
  const count = () => {
    // Count listeners added and removed, per target type and event.
    window.listeners = new Map();
    const add = EventTarget.prototype.addEventListener;
    const remove = EventTarget.prototype.removeEventListener;
    const key = (target, type) => (target.constructor && target.constructor.name) + ":" + type;
    EventTarget.prototype.addEventListener = function (type, fn, o) {
      window.listeners.set(key(this, type), (window.listeners.get(key(this, type)) || 0) + 1);
      return add.call(this, type, fn, o);
    };
    EventTarget.prototype.removeEventListener = function (type, fn, o) {
      window.listeners.set(key(this, type), (window.listeners.get(key(this, type)) || 0) - 1);
      return remove.call(this, type, fn, o);
    };
  };
  const first = await runwire.page(context, count);
  const second = await runwire.page(context, count);
  // Count only what the client adds (Playwright adds listeners of its own).
  await first.evaluate(() => window.listeners.clear());
  await watch(first, run, world.alice);
  await first.waitForFunction(() => window.states.length === 1 && !!window.rw._hub);
  await watch(second, run, world.alice);
  await second.waitForFunction(() => window.states.length === 1);
  assert.equal(await second.evaluate(() => !!window.rw._hub), false);

  const added = await first.evaluate(() => Object.fromEntries(window.listeners));
  assert.ok(Object.keys(added).some((k) => k.startsWith("HTMLDocument:visibilitychange") || k.endsWith(":visibilitychange")));
  assert.ok(Object.keys(added).some((k) => k.endsWith(":message")), "a BroadcastChannel listener");
  await first.evaluate(() => window.rw.close());
  const left = await first.evaluate(() => Object.fromEntries([...window.listeners].filter(([, n]) => n !== 0)));
  assert.deepEqual(left, {}, "every listener added was removed");

  // The lock went with it: the other tab leads and keeps the page live.
  await second.waitForFunction(() => !!window.rw._hub, null, { timeout: 2000 });
  await db.query("UPDATE operation_runs SET status = 'completed', outcome = 'succeeded' WHERE id = $1", [run]);
  await second.waitForFunction(() => window.states.includes("completed"));
  assert.deepEqual(await first.evaluate(() => window.states), ["running"], "a closed client hears nothing");
  await context.close();
});

test("a stream closed without `end` (shutdown, lifetime) reconnects after a pause and catches up", async () => {
  // A second runwire on the same database that closes every stream after about 2 s.
  const short = await startRunwire({
    databaseUrl: db.url,
    secret: SECRET,
    env: { RUNWIRE_MAX_STREAM_LIFETIME_SECS: "2" },
  });
  try {
    const context = await browser.newContext();
    const page = await short.page(context);
    const run = await newRun();
    const streams = [];
    const sent = [];
    page.on("request", (r) => {
      if (r.url().startsWith(short.base + "/v1/streams")) streams.push(Date.now());
      if (r.url().startsWith(short.base + "/v1/streams")) sent.push({ url: r.url(), headers: r.headers() });
    });
    await watchRun(page, run, { token: token(world.alice), pick: "processed" });
    await page.waitForFunction(() => window.states.length === 1);
    await waitFor(async () => (await short.metric('runwire_streams_closed_total{reason="lifetime"}')) >= 1, "the lifetime to end the stream", 5000);
    await db.query(`UPDATE operation_runs SET summary_counts = '{"processed": 7}' WHERE id = $1`, [run]);
    await page.waitForFunction(() => window.states.includes(7), null, { timeout: 5000 });
    assert.ok(streams.length >= 2, "it reconnected");
    assert.ok(streams[1] - streams[0] >= 1800 + 450, `the reconnect waited: ${streams[1] - streams[0]} ms`);
    // The token travels in a header, never in the URL; the reconnect resumes from the id the
    // first stream sent (its snapshot's `id:`).
    for (const { url, headers } of sent) {
      assert.ok(!url.includes("access_token"), url);
      assert.match(headers.authorization, /^Bearer [\w-]+\.[\w-]+\.[\w-]+$/);
    }
    assert.equal(sent[0].headers["last-event-id"], undefined, "a first connection has no id to resume from");
    assert.ok(sent[1].headers["last-event-id"], "the reconnect sends Last-Event-ID");
    await page.evaluate(() => window.rw.close());
    await context.close();
  } finally {
    await short.stop();
  }
});

test("more items than one stream may carry (100): the rest follow as the first ones finish", async () => {
  const context = await browser.newContext();
  const page = await runwire.page(context);
  const ids = (
    await db.query(
      "INSERT INTO operation_runs (workspace_id, type, status) SELECT $1, 'sync', 'running' FROM generate_series(1, 110) RETURNING id",
      [world.ws],
    )
  ).rows.map((r) => r.id);
  const refused = [];
  page.on("response", (r) => {
    if (r.url().includes("/v1/") && r.status() >= 400) refused.push(r.status());
  });
  await page.evaluate(
    ({ ids, token }) => {
      window.seen = new Set();
      window.rw = new runwire.Runwire({ token });
      window.rw.watchMany({ runs: ids }, { onState: (s) => window.seen.add(s.id) });
    },
    { ids, token: token(world.alice) },
  );
  await page.waitForFunction(() => window.seen.size === 100);
  await db.query("UPDATE operation_runs SET status = 'completed', outcome = 'succeeded' WHERE id = ANY($1)", [ids.slice(0, 20)]);
  await page.waitForFunction(() => window.seen.size === 110, null, { timeout: 5000 });
  assert.deepEqual(refused, [], "no request refused");
  await db.query("UPDATE operation_runs SET status = 'completed', outcome = 'succeeded' WHERE id = ANY($1)", [ids]);
  await waitFor(async () => (await multiOpen()) === 0, "the stream to end");
  await context.close();
});

/**
 * Alice may see runs of tenant A, Bob runs of tenant B; both the workspace's tenantless runs.
 * Records in window.seen every state a tab's client hands it, and its end reasons.
 */
async function twoUserWorld() {
  const tenant = async (name, user) => {
    const id = (await db.one("INSERT INTO tenants (workspace_id, name) VALUES ($1, $2) RETURNING id", [world.ws, name])).id;
    await db.query("INSERT INTO tenant_memberships VALUES ($1, $2, 'owner')", [id, user]);
    return id;
  };
  const run = async (tenant) =>
    (await db.one("INSERT INTO operation_runs (workspace_id, tenant_id, type, status) VALUES ($1, $2, 'sync', 'running') RETURNING id", [world.ws, tenant])).id;
  const [ta, tb] = [await tenant("Alice's", world.alice), await tenant("Bob's", world.bob)];
  return { runA: Number(await run(ta)), runB: Number(await run(tb)), shared: Number(await run(null)) };
}

function watchAll(page, runs, options) {
  return page.evaluate(
    ({ runs, options }) => {
      window.seen = [];
      window.ends = {};
      if (options.refreshWith) options.refreshToken = () => options.refreshWith;
      window.rw = new runwire.Runwire(options);
      for (const id of runs) {
        window.rw.watchRun(id, {
          onState: (s) => window.seen.push([s.id, s.summary_counts.processed ?? null]),
          onEnd: ({ reason }) => (window.ends[id] = reason),
        });
      }
    },
    { runs, options },
  );
}

const progress = (run, n) => db.query(`UPDATE operation_runs SET summary_counts = $2 WHERE id = $1`, [run, { processed: n }]);

test("two users in one browser, even with one's session cookie set: no tab receives the other user's states", async () => {
  const { runA, runB, shared } = await twoUserWorld();
  const context = await browser.newContext();
  const alice = await runwire.page(context);
  const bob = await runwire.page(context);
  // Bob signed in here before (the dashboard's cookie): a token-mode page must still be Alice.
  await bob.evaluate((t) => runwire.Runwire.startSession("", t), token(world.bob));
  const tabs = [[alice, world.alice], [bob, world.bob]];
  for (const [page, user] of tabs) await watchAll(page, [runA, runB, shared], { token: token(user) });
  await alice.waitForFunction((run) => window.ends[run] === "forbidden", runB);
  await bob.waitForFunction((run) => window.ends[run] === "forbidden", runA);
  await waitFor(async () => (await multiOpen()) === 2, "one stream per user");
  for (const [page, user] of tabs) {
    assert.equal(await page.evaluate(() => window.rw._group && window.rw._group.user), String(user), "grouped by the user runwire confirmed");
    assert.equal(await page.evaluate(() => !!window.rw._hub), true, "each user's tab leads its own group");
  }
  for (let n = 1; n <= 20; n++) {
    await progress(runA, n);
    await progress(runB, n);
    await progress(shared, n);
  }
  await alice.waitForFunction((run) => window.seen.some(([id, n]) => id === run && n === 20), runA);
  await bob.waitForFunction((run) => window.seen.some(([id, n]) => id === run && n === 20), runB);
  for (const page of [alice, bob]) await page.waitForFunction((run) => window.seen.some(([id, n]) => id === run && n === 20), shared);
  const seenBy = async (page) => new Set((await page.evaluate(() => window.seen)).map(([id]) => id));
  assert.deepEqual(await seenBy(alice), new Set([runA, shared]), "Alice never got a state of Bob's run");
  assert.deepEqual(await seenBy(bob), new Set([runB, shared]), "Bob never got a state of Alice's run");
  await db.query("UPDATE operation_runs SET status = 'completed', outcome = 'succeeded' WHERE id = ANY($1)", [[runA, runB, shared]]);
  await waitFor(async () => (await multiOpen()) === 0, "the streams to end");
  await context.close();
});

test("a plain EventSource page in token mode is served as its token's user, whatever session cookie the browser holds", async () => {
  const { runA, runB } = await twoUserWorld();
  const context = await browser.newContext();
  const page = await runwire.page(context);
  // Bob signed in on this browser (his cookie); then a page opens Alice's streams with her
  // token in the URL, as EventSource must. A garbage cookie must not refuse her either.
  await page.evaluate((t) => runwire.Runwire.startSession("", t), token(world.bob));
  const open = (run, t) =>
    page.evaluate(
      ({ run, t }) =>
        new Promise((resolve) => {
          const es = new EventSource(`/v1/runs/${run}/events?access_token=${t}`);
          es.addEventListener("snapshot", (e) => (es.close(), resolve(["snapshot", JSON.parse(e.data).id])));
          es.addEventListener("end", (e) => (es.close(), resolve(["end", JSON.parse(e.data).reason])));
          es.onerror = () => (es.close(), resolve(["error", null]));
        }),
      { run, t },
    );
  assert.deepEqual(await open(runA, token(world.alice)), ["snapshot", runA], "Alice's run, by her token");
  assert.notEqual((await open(runB, token(world.alice)))[0], "snapshot", "not Bob's run, whose cookie is set");
  await context.addCookies([{ name: "runwire_token", value: "garbage", url: runwire.base }]);
  assert.deepEqual(await open(runA, token(world.alice)), ["snapshot", runA], "a garbage cookie spoils nothing");
  await db.query("UPDATE operation_runs SET status = 'completed', outcome = 'succeeded' WHERE id = ANY($1)", [[runA, runB]]);
  await context.close();
});

test("a refreshed token that names another user moves the tab to that user's tabs", async () => {
  const { runA, runB, shared } = await twoUserWorld();
  const context = await browser.newContext();
  const moving = await runwire.page(context);
  const alice = await runwire.page(context);
  const bob = await runwire.page(context);
  // Alice's token lives 2 s; the page's token route then answers with Bob's (another login).
  await watchAll(moving, [runA, shared], { token: runwire.token(world.alice, 2), refreshWith: token(world.bob) });
  await moving.waitForFunction(() => !!window.rw._hub);
  await watchAll(alice, [shared], { token: token(world.alice) });
  await watchAll(bob, [shared], { token: token(world.bob) });
  await moving.waitForFunction((run) => window.seen.some(([id]) => id === run), runA);
  await waitFor(async () => (await multiOpen()) === 2, "Alice's and Bob's streams");
  assert.equal(await moving.evaluate(() => window.rw._group.user), String(world.alice));
  assert.equal(await alice.evaluate(() => !!window.rw._hub), false, "Alice's other tab follows the moving one");

  // At the token's expiry the tab refreshes, learns the token is Bob's and joins his tabs.
  await moving.waitForFunction((bob) => window.rw._group && window.rw._group.user === bob, String(world.bob), { timeout: 10000 });
  await moving.waitForFunction((run) => window.ends[run] === "forbidden", runA);
  await waitFor(async () => (await multiOpen()) === 1, "one stream: Bob's, for both tabs");
  assert.equal(await moving.evaluate(() => !!window.rw._hub), false, "it follows Bob's leader");
  const before = (await moving.evaluate(() => window.seen)).filter(([id]) => id === runA).length;
  await progress(runA, 5);
  await progress(shared, 5);
  for (const page of [moving, bob]) await page.waitForFunction((run) => window.seen.some(([id, n]) => id === run && n === 5), shared);
  const after = (await moving.evaluate(() => window.seen)).filter(([id]) => id === runA).length;
  assert.equal(after, before, "nothing of Alice's run after the tab became Bob's");

  // Alice's other tab now leads her group with her own token: Bob's run stays Bob's.
  await alice.waitForFunction(() => !!window.rw._hub);
  await alice.evaluate((run) => window.rw.watchRun(run, { onState: (s) => window.seen.push([s.id, null]), onEnd: ({ reason }) => (window.ends[run] = reason) }), runB);
  await alice.waitForFunction((run) => window.ends[run] === "forbidden", runB);
  await progress(runB, 9);
  await bob.evaluate((run) => window.rw.watchRun(run, { onState: (s) => window.seen.push([s.id, s.summary_counts.processed]) }), runB);
  await bob.waitForFunction((run) => window.seen.some(([id, n]) => id === run && n === 9), runB);
  assert.equal((await alice.evaluate(() => window.seen)).filter(([id]) => id === runB).length, 0, "Alice's tab got nothing of Bob's run");
  await db.query("UPDATE operation_runs SET status = 'completed', outcome = 'succeeded' WHERE id = ANY($1)", [[runA, runB, shared]]);
  await context.close();
});

test("a row runwire cannot read ends its subscription with `unreadable`; the others on the stream go on", async () => {
  const context = await browser.newContext();
  const page = await runwire.page(context);
  const good = Number(await newRun());
  const bad = Number(await newRun());
  // A timestamp no date type holds: runwire cannot decode the row.
  await db.query("UPDATE operation_runs SET started_at = 'infinity' WHERE id = $1", [bad]);
  await watchAll(page, [good, bad], { token: token(world.alice) });
  await page.waitForFunction((bad) => window.ends[bad] === "unreadable", bad, { timeout: 10000 });
  await progress(good, 3);
  await page.waitForFunction((good) => window.seen.some(([id, n]) => id === good && n === 3), good);
  assert.deepEqual((await page.evaluate(() => window.seen)).filter(([id]) => id === bad), [], "no state of the unreadable run");
  await db.query("UPDATE operation_runs SET status = 'completed' WHERE id = ANY($1)", [[good, bad]]);
  await context.close();
});
