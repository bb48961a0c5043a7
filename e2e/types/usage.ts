// A small program against the client's declarations (static/runwire.d.ts), type-checked by
// e2e/types.test.mjs with `tsc --noEmit`: the module API, the global, and the Echo connector
// with laravel-echo's own types.

import Echo from "laravel-echo";
import Runwire, { RunwireConnector, RunwireError, VERSION, type ReadyState, type ReviewPackState, type RunState } from "runwire";

const version: string = VERSION;

const rw = new Runwire({ url: "https://runwire.example", token: async () => "a.b.c", onError: (e: RunwireError) => e.status });
const sub = rw.watchRun(42, {
  onState: (run: RunState) => run.status.toUpperCase() + (run.summary_counts?.processed ?? ""),
  onEnd: ({ reason, state }) => (reason === "terminal" ? state?.outcome : reason),
  onError: (e) => `${e.status} ${e.reason}`,
});
sub.close();
rw.watchReviewPack("7", { onState: (card: ReviewPackState) => card.pack?.status ?? "none" });
rw.watchWorkspace(3, {
  onSnapshot: (s) => s.runs.length + s.recently_finished.length + s.review_packs.length,
  onState: (state) => (state.type === "operation_run" ? state.run_type : state.tenant_id),
});
rw.watchMany({ runs: [1, 2], reviewPackTenants: [7] }, { onState: (s) => s.terminal });
rw.hold();
rw.release();
const state: ReadyState = rw.readyState;
rw.close();

Runwire.startSession("https://runwire.example", "a.b.c").then((s) => s.user_id + s.expires_at);

// The global script: window.runwire.
const fromGlobal = new window.runwire.RunwireConnector({ url: "https://runwire.example", token: "a.b.c" });
fromGlobal.disconnect();
new window.Runwire({ token: "a.b.c" }).close();

// laravel-echo 2.x with runwire as its broadcaster.
const echo = new Echo({
  broadcaster: RunwireConnector,
  url: "https://runwire.example",
  token: async () => (await fetch("/runwire/token")).text(),
});
echo
  .private("runs.42")
  .listen(".updated", (run: RunState) => run.status)
  .listen(".ended", ({ reason }: { reason: string }) => reason)
  .error((e: RunwireError) => e.reason);
echo.private("tenants.7.review-pack").listen(".updated", (card: ReviewPackState) => card.pack);
echo.private("workspaces.3.runs").listen(".updated", (run: RunState) => run.id);
echo.leave("runs.42");
const status: string = echo.connectionStatus();

const connector = new RunwireConnector({ url: "https://runwire.example", busy: (group) => group === "x" });
connector.privateChannel("runs.1").listen(".refresh.abc", () => undefined).subscribed(() => undefined);
const unsubscribe: () => void = connector.onConnectionChange((s) => s === "connected");
unsubscribe();

export { version, state, status };
