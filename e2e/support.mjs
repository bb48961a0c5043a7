// What every browser test needs: the runwire binary, a database of its own, runwire and the
// Laravel example as real processes on free ports, Debian's Chromium, and waits on conditions.

import { spawn, execFileSync } from "node:child_process";
import { existsSync, mkdtempSync, rmSync } from "node:fs";
import { createServer as createHttpServer, request as httpRequest } from "node:http";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import pg from "pg";
import { chromium } from "playwright-core";

export const ADMIN_URL = process.env.DATABASE_URL || "postgres://postgres@127.0.0.1:5432/postgres";
export const CHROMIUM = process.env.CHROMIUM || "/usr/bin/chromium";
export const ROOT = new URL("..", import.meta.url).pathname;
export const LARAVEL = join(ROOT, "examples/laravel");

/**
 * The runwire binary: $RUNWIRE_BIN, else the debug build in cargo's target directory (asked
 * from cargo, so CARGO_TARGET_DIR and workspaces work). Fails at once with what to do.
 */
export function runwireBinary() {
  let bin = process.env.RUNWIRE_BIN;
  if (!bin) {
    let target;
    try {
      const meta = execFileSync("cargo", ["metadata", "--format-version", "1", "--no-deps"], { cwd: ROOT });
      target = JSON.parse(meta.toString()).target_directory;
    } catch (e) {
      throw new Error("cannot ask cargo where the runwire binary is (" + e.message + "); set RUNWIRE_BIN");
    }
    bin = join(target, "debug", "runwire");
  }
  if (!existsSync(bin)) {
    throw new Error(`runwire binary not found at ${bin}: run \`cargo build --bin runwire\` first, or set RUNWIRE_BIN`);
  }
  return bin;
}

export function freePort() {
  return new Promise((resolve, reject) => {
    const s = createServer();
    s.listen(0, "127.0.0.1", () => {
      const { port } = s.address();
      s.close(() => resolve(port));
    });
    s.on("error", reject);
  });
}

/** Polls `fn` until it returns something truthy; fails after `timeoutMs`. */
export async function waitFor(fn, what, timeoutMs = 15000) {
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

/** A fresh database; `drop()` removes it. */
export async function createDatabase(prefix) {
  const name = `${prefix}_${process.pid}_${Math.floor(Math.random() * 1e6)}`;
  const admin = new pg.Client({ connectionString: ADMIN_URL });
  await admin.connect();
  await admin.query(`CREATE DATABASE ${name}`);
  const url = new URL(ADMIN_URL);
  url.pathname = "/" + name;
  const client = new pg.Client({ connectionString: url.toString() });
  await client.connect();
  return {
    name,
    url: url.toString(),
    client,
    one: async (sql, params) => (await client.query(sql, params)).rows[0],
    query: (sql, params) => client.query(sql, params),
    async drop() {
      await client.end();
      // A runwire in WAL mode that just stopped may hold its (temporary) replication slot a
      // moment longer: the slot goes with its walsender.
      await waitFor(async () => {
        await admin.query(`DROP DATABASE IF EXISTS ${name} WITH (FORCE)`);
        return true;
      }, `dropping ${name}`, 10000);
      await admin.end();
    },
  };
}

/**
 * Starts a process in a process group of its own; `stop()` signals the whole group (PHP's
 * server may fork workers that would otherwise outlive it and hold our pipes open) and waits.
 */
function start(cmd, args, options) {
  const child = spawn(cmd, args, { stdio: ["ignore", "ignore", "inherit"], detached: true, ...options });
  const exited = new Promise((r) => child.once("exit", r));
  const signal = (sig) => {
    try {
      process.kill(-child.pid, sig);
    } catch {
      /* already gone */
    }
  };
  return {
    child,
    exited,
    async stop() {
      signal("SIGTERM");
      const timer = setTimeout(() => signal("SIGKILL"), 5000);
      await exited;
      clearTimeout(timer);
      signal("SIGTERM"); // anything the leader left behind
    },
  };
}

/** `runwire serve` on a free port; ready once /readyz answers. */
export async function startRunwire({ databaseUrl, secret, args = [], env = {} }) {
  const port = await freePort();
  const base = `http://127.0.0.1:${port}`;
  const proc = start(runwireBinary(), ["serve", ...args], {
    // Its log (warnings and worse) goes to stderr: keep it in the test output.
    stdio: ["ignore", "inherit", "inherit"],
    env: {
      ...process.env,
      DATABASE_URL: databaseUrl,
      RUNWIRE_JWT_SECRET: secret,
      RUNWIRE_BIND: `127.0.0.1:${port}`,
      RUST_LOG: "warn",
      ...env,
    },
  });
  let exited = false;
  proc.exited.then(() => (exited = true));
  await waitFor(async () => {
    if (exited) throw new Error("runwire serve exited");
    return (await fetch(base + "/readyz")).ok;
  }, "runwire to be ready").catch((e) => {
    throw exited ? new Error("runwire serve exited before it was ready (see its output above)") : e;
  });
  const metricLines = async () => (await (await fetch(base + "/metrics")).text()).split("\n");
  const handle = {
    base,
    ...proc,
    /** The value of one metric line, e.g. metric('runwire_streams_open{kind="multi"}'). */
    async metric(name) {
      const line = (await metricLines()).find((l) => l.startsWith(name + " "));
      return line ? Number(line.split(" ")[1]) : NaN;
    },
    /** A metric summed over its labels, e.g. metricSum("runwire_streams_opened_total"). */
    async metricSum(name) {
      return (await metricLines())
        .filter((l) => l.startsWith(name + "{") || l.startsWith(name + " "))
        .reduce((n, l) => n + Number(l.split(" ").pop()), 0);
    },
    /** Open streams of every kind. */
    streamsOpen: () => handle.metricSum("runwire_streams_open"),
    /** A token this runwire accepts for `user` (`runwire token`; its default lifetime unless `ttl`). */
    token(user, ttl) {
      const args = ["token", "--user", String(user), ...(ttl ? ["--ttl", String(ttl)] : [])];
      return execFileSync(runwireBinary(), args, { env: { ...process.env, RUNWIRE_JWT_SECRET: secret } })
        .toString()
        .trim();
    },
    /** A tab of `context` (or a browser) on this runwire's origin with runwire.js loaded. */
    async page(context, initScript) {
      const page = await context.newPage();
      if (initScript) await page.addInitScript(initScript);
      await page.goto(base + "/healthz"); // any same-origin page
      await page.addScriptTag({ url: "/runwire.js" });
      return page;
    },
  };
  return handle;
}

/**
 * A reverse proxy that serves `target` under `prefix` and strips it (nginx's
 * `location /runwire/ { proxy_pass http://runwire/; }`), streaming responses unbuffered.
 * Anything outside the prefix gets a 404, and `outside` lists it: a page that asks the site's
 * root for runwire's files is caught.
 */
export async function startPrefixProxy(target, prefix) {
  const port = await freePort();
  const outside = [];
  const server = createHttpServer((req, res) => {
    if (!req.url.startsWith(prefix + "/")) {
      outside.push(req.url);
      res.writeHead(404, { "content-type": "text/plain" });
      return res.end("not under " + prefix);
    }
    const upstream = httpRequest(target + req.url.slice(prefix.length), { method: req.method, headers: req.headers }, (up) => {
      res.writeHead(up.statusCode, up.headers);
      up.pipe(res);
    });
    upstream.on("error", () => res.destroy());
    res.on("close", () => upstream.destroy());
    req.pipe(upstream);
  });
  await new Promise((resolve) => server.listen(port, "127.0.0.1", resolve));
  return {
    base: `http://127.0.0.1:${port}${prefix}`,
    outside,
    stop() {
      server.closeAllConnections();
      return new Promise((resolve) => server.close(resolve));
    },
  };
}

/**
 * A site of its own origin (`port`, or a free one; not runwire's): serves `routes`, each path
 * to `[content type, body]`. For pages that load runwire from another origin, as hosts do.
 */
export async function startSite(routes, port) {
  port = port || (await freePort());
  const server = createHttpServer((req, res) => {
    const route = routes[new URL(req.url, "http://site").pathname];
    res.writeHead(route ? 200 : 404, { "content-type": route ? route[0] : "text/plain" });
    res.end(route ? route[1] : "not found");
  });
  await new Promise((resolve) => server.listen(port, "127.0.0.1", resolve));
  return {
    base: `http://127.0.0.1:${port}`,
    stop() {
      server.closeAllConnections();
      return new Promise((resolve) => server.close(resolve));
    },
  };
}

/** The environment the Laravel example reads (see examples/laravel/README.md). */
export function laravelEnv({ databaseName, runwireUrl, secret, ttl = 300, storage }) {
  const url = new URL(ADMIN_URL);
  url.pathname = "/" + databaseName;
  return {
    ...process.env,
    // The app reads DB_*; anything else that reads DATABASE_URL must see the test database too.
    DATABASE_URL: url.toString(),
    APP_ENV: "local",
    APP_KEY: "base64:" + Buffer.from("runwire-e2e-laravel-app-key-32by").toString("base64"),
    APP_STORAGE: storage,
    DB_HOST: url.hostname,
    DB_PORT: url.port || "5432",
    DB_DATABASE: databaseName,
    DB_USERNAME: decodeURIComponent(url.username || "postgres"),
    DB_PASSWORD: decodeURIComponent(url.password || ""),
    RUNWIRE_URL: runwireUrl,
    RUNWIRE_JWT_SECRET: secret,
    RUNWIRE_TOKEN_TTL: String(ttl),
    // What a host's bundle would contain (npm); the example serves it as /js/laravel-echo.js.
    LARAVEL_ECHO_JS: join(ROOT, "e2e/node_modules/laravel-echo/dist/echo.iife.js"),
  };
}

/** Applies the example's migrations the way a host does: `php artisan migrate`. */
export function laravelMigrate(env) {
  execFileSync("php", ["artisan", "migrate", "--force", "--no-interaction"], { cwd: LARAVEL, env, stdio: ["ignore", "ignore", "inherit"] });
}

/** The Laravel example under PHP's built-in server, on a free port. */
export async function startLaravel(options) {
  const port = options.port || (await freePort());
  const base = `http://127.0.0.1:${port}`;
  const storage = mkdtempSync(join(tmpdir(), "runwire-laravel-"));
  const env = laravelEnv({ ...options, storage });
  const proc = start("php", ["-S", `127.0.0.1:${port}`, "-t", "public", "server.php"], {
    cwd: LARAVEL,
    env,
    stdio: ["ignore", "ignore", "pipe"],
  });
  // PHP's server logs every connection on stderr; pass on only what is not routine.
  let rest = "";
  proc.child.stderr.on("data", (chunk) => {
    const lines = (rest + chunk).split("\n");
    rest = lines.pop();
    for (const line of lines) {
      if (!/Development Server|Accepted$|Closing$|\[\d{3}\]: (GET|POST|HEAD) /.test(line)) process.stderr.write(`[laravel] ${line}\n`);
    }
  });
  await waitFor(async () => (await fetch(base + "/")).ok, "the Laravel example to answer");
  return {
    base,
    env,
    async stop() {
      await proc.stop();
      rmSync(storage, { recursive: true, force: true });
    },
  };
}

/** Debian's Chromium, headless, with a fresh profile (playwright-core makes one per launch). */
export function launchChromium() {
  return chromium.launch({
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
}

/** A new page of `context` (or a browser) at `url`; `errors` collects its uncaught exceptions. */
export async function openPage(context, url, options) {
  const page = await context.newPage(options);
  const errors = [];
  page.on("pageerror", (e) => errors.push(e.message));
  await page.goto(url);
  return { page, errors };
}

/**
 * Opens a runwire.js client (window.rw) in `page` watching `run`, and records what it hears:
 * window.states (each state's status, or its processed count with `pick: "processed"`),
 * window.ended (the end reason, or null), window.errors (the client's onError, as plain
 * objects) and window.refreshes (refreshToken calls). `refresh`: { token } answers
 * refreshToken with that token, { fail } rejects with that message; without it the client has
 * no refreshToken hook.
 */
export function watchRun(page, run, { token, baseUrl, refresh, pick = "status" }) {
  return page.evaluate(
    ({ run, token, baseUrl, refresh, pick }) => {
      window.states = [];
      window.ended = null;
      window.errors = [];
      window.refreshes = 0;
      const plain = (e) => ({ name: e.name, isError: e instanceof Error, status: e.status, reason: e.reason, message: e.message });
      const options = { token, onError: (e) => window.errors.push(plain(e)) };
      if (baseUrl) options.url = baseUrl;
      if (refresh) {
        options.refreshToken = () => {
          window.refreshes++;
          return refresh.fail ? Promise.reject(new Error(refresh.fail)) : Promise.resolve(refresh.token);
        };
      }
      window.rw = new runwire.Runwire(options);
      window.rw.watchRun(run, {
        onState: (s) => window.states.push(pick === "processed" ? (s.summary_counts.processed ?? null) : s.status),
        onEnd: ({ reason }) => (window.ended = reason),
      });
    },
    { run, token, baseUrl, refresh, pick },
  );
}
