// The runwire/laravel package's own tests (integrations/laravel/tests/run.php: tokens,
// channels, the Livewire trait's listener wiring, Blade components and directive, routes,
// the integration against runwire's SQL), run with plain `php` as part of this suite; and
// its migration applied to a real database by the example's `php artisan migrate`.

import { test } from "node:test";
import assert from "node:assert/strict";
import { execFileSync, spawnSync } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { ROOT, LARAVEL, createDatabase, laravelEnv } from "./support.mjs";

test("integrations/laravel: php tests/run.php passes", () => {
  const run = spawnSync("php", ["tests/run.php"], { cwd: join(ROOT, "integrations/laravel"), encoding: "utf8" });
  if (run.error) throw run.error;
  for (const line of run.stdout.split("\n").filter((l) => l.startsWith("ok ") || l.startsWith("not ok"))) console.log("# " + line);
  assert.equal(run.status, 0, run.stdout + run.stderr);
  assert.match(run.stdout, /^# failed 0$/m);
});

test("the package's migration installs the integration runwire.changes names and removes the other, as runwire migrate does", async () => {
  const db = await createDatabase("runwire_e2e_package");
  const storage = mkdtempSync(join(tmpdir(), "runwire-package-migrate-"));
  try {
    // Each run applies the integration migration again (as after changing runwire.changes).
    const migrate = async (changes) => {
      await db.query("DELETE FROM migrations WHERE migration LIKE '%runwire_integration'").catch(() => {});
      const env = { ...laravelEnv({ databaseName: db.name, runwireUrl: "", secret: "package-test-secret-0123456789abcdef", storage }), RUNWIRE_CHANGES: changes };
      execFileSync("php", ["artisan", "migrate", "--force", "--no-interaction"], { cwd: LARAVEL, env, stdio: ["ignore", "ignore", "inherit"] });
    };
    const installed = async () => ({
      publication: (await db.one("SELECT count(*)::int AS n FROM pg_publication WHERE pubname = 'runwire'")).n === 1,
      triggers: (await db.one("SELECT count(*)::int AS n FROM pg_trigger WHERE tgname LIKE 'runwire%'")).n > 0,
      version: (await db.one("SELECT count(*)::int AS n FROM information_schema.columns WHERE table_name = 'operation_runs' AND column_name = 'version'")).n === 1,
    });
    await migrate("wal");
    assert.deepEqual(await installed(), { publication: true, triggers: false, version: false }, "wal: a publication, nothing on the tables");
    await migrate("notify");
    assert.deepEqual(await installed(), { publication: false, triggers: true, version: true }, "notify: triggers and version columns");
    await migrate("auto"); // this server has wal_level = replica
    assert.equal((await installed()).triggers, (await db.one("SHOW wal_level")).wal_level !== "logical");
  } finally {
    rmSync(storage, { recursive: true, force: true });
    await db.drop();
  }
});
