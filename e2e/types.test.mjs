// The client's three faces agree, without a browser: the global script is what
// scripts/build-client makes of the module, the declarations name exactly the module's
// exports, and a TypeScript program using the API (and laravel-echo's types) type-checks.

import { test } from "node:test";
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { readFileSync } from "node:fs";
import { createRequire } from "node:module";
import { join } from "node:path";
import { ROOT } from "./support.mjs";
import * as client from "../static/runwire.mjs";

test("static/runwire.js is up to date with static/runwire.mjs", () => {
  execFileSync(join(ROOT, "scripts/build-client"), ["--check"], { stdio: "pipe" });
});

test("the global script exposes the module's exports on window.runwire, and window.Runwire", () => {
  const global = createRequire(import.meta.url)(join(ROOT, "static/runwire.js"));
  const exported = Object.keys(client).filter((k) => k !== "default").sort();
  assert.deepEqual(Object.keys(global).sort(), exported);
  assert.equal(globalThis.runwire, global);
  assert.equal(typeof globalThis.Runwire, "function");
  assert.equal(global.VERSION, client.VERSION);
});

test("runwire.d.ts declares exactly the module's exports", () => {
  const dts = readFileSync(join(ROOT, "static/runwire.d.ts"), "utf8");
  const declared = [...dts.matchAll(/^export declare (?:const|class|function) ([A-Za-z_$][\w$]*)/gm)].map((m) => m[1]).sort();
  const exported = Object.keys(client).filter((k) => k !== "default").sort();
  assert.deepEqual(declared, exported);
  assert.match(dts, /^export default Runwire;$/m);
  assert.equal(client.default, client.Runwire);
});

test("the client's VERSION is runwire's (Cargo.toml)", () => {
  const cargo = readFileSync(join(ROOT, "Cargo.toml"), "utf8");
  assert.equal(client.VERSION, /^version = "([^"]+)"/m.exec(cargo)[1]);
});

test("a TypeScript program using the API type-checks (tsc --noEmit, with laravel-echo's types)", () => {
  const tsc = join(ROOT, "e2e/node_modules/.bin/tsc");
  try {
    execFileSync(tsc, ["-p", join(ROOT, "e2e/types/tsconfig.json")], { stdio: "pipe" });
  } catch (e) {
    assert.fail("tsc --noEmit failed:\n" + e.stdout + e.stderr);
  }
});
