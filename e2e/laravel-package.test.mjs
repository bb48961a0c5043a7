// The runwire/laravel package's own tests (integrations/laravel/tests/run.php: tokens,
// channels, the Livewire trait's listener wiring, Blade components and directive, routes,
// the migration against runwire's SQL), run with plain `php` as part of this suite.

import { test } from "node:test";
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { join } from "node:path";
import { ROOT } from "./support.mjs";

test("integrations/laravel: php tests/run.php passes", () => {
  const run = spawnSync("php", ["tests/run.php"], { cwd: join(ROOT, "integrations/laravel"), encoding: "utf8" });
  if (run.error) throw run.error;
  for (const line of run.stdout.split("\n").filter((l) => l.startsWith("ok ") || l.startsWith("not ok"))) console.log("# " + line);
  assert.equal(run.status, 0, run.stdout + run.stderr);
  assert.match(run.stdout, /^# failed 0$/m);
});
