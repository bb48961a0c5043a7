// A baseline for BENCHMARKS.md: what a team would otherwise write — a Node.js process with one
// pg LISTEN connection that writes SSE by hand. Same route, same messages and the same access
// rule as runwire's run stream (workspace and tenant membership), so the load generator can
// drive both. Not part of runwire; run with `node server.mjs` (see scripts/bench node).
import http from "node:http";
import crypto from "node:crypto";
import pg from "pg";

const DATABASE_URL = process.env.DATABASE_URL;
const SECRET = process.env.RUNWIRE_JWT_SECRET;
const [host, port] = (process.env.RUNWIRE_BIND || "127.0.0.1:8081").split(":");

const pool = new pg.Pool({ connectionString: DATABASE_URL, max: 10 });
const listener = new pg.Client({ connectionString: DATABASE_URL });
const subscribers = new Map(); // run id -> Set<res>

const COLUMNS = `id, workspace_id, tenant_id, type AS run_type, status, outcome, summary_counts,
  created_at, started_at, completed_at, updated_at, version`;

function verify(token) {
  const [h, p, s] = (token || "").split(".");
  if (!h || !p || !s) return null;
  const sig = crypto.createHmac("sha256", SECRET).update(`${h}.${p}`).digest("base64url");
  if (sig !== s) return null;
  const claims = JSON.parse(Buffer.from(p, "base64url").toString());
  if (!claims.exp || claims.exp < Date.now() / 1000) return null;
  return Number(claims.sub);
}

function state(row) {
  const terminal = !["queued", "running"].includes(row.status);
  return { type: "operation_run", ...row, terminal };
}

function send(res, event, s) {
  res.write(`event: ${event}\ndata: ${JSON.stringify(s)}\nid: ${s.version}\n\n`);
}

await listener.connect();
await listener.query("LISTEN runwire");
listener.on("notification", async (msg) => {
  let bell;
  try { bell = JSON.parse(msg.payload); } catch { return; }
  if (bell.k !== "run" || !subscribers.has(bell.id)) return;
  const { rows } = await pool.query(`SELECT ${COLUMNS} FROM operation_runs WHERE id = $1`, [bell.id]);
  if (!rows[0]) return;
  const s = state(rows[0]);
  for (const res of subscribers.get(bell.id) || []) {
    send(res, "update", s);
    if (s.terminal) { res.end('event: end\ndata: {"reason":"terminal"}\n\n'); }
  }
});

http.createServer(async (req, res) => {
  const m = req.url.match(/^\/v1\/runs\/(\d+)\/events/);
  if (!m) { res.writeHead(404).end(); return; }
  const user = verify((req.headers.authorization || "").replace(/^Bearer /, ""));
  if (!user) { res.writeHead(401).end(); return; }
  const id = Number(m[1]);
  const { rows } = await pool.query(
    `SELECT ${COLUMNS},
       EXISTS (SELECT 1 FROM workspace_memberships w WHERE w.workspace_id = r.workspace_id AND w.user_id = $2) AS member,
       (r.tenant_id IS NULL OR EXISTS (SELECT 1 FROM tenant_memberships t WHERE t.tenant_id = r.tenant_id AND t.user_id = $2)) AS tenant_ok
     FROM operation_runs r WHERE r.id = $1`, [id, user]);
  if (!rows[0] || !rows[0].member) { res.writeHead(404).end(); return; }
  if (!rows[0].tenant_ok) { res.writeHead(403).end(); return; }
  const { member, tenant_ok, ...row } = rows[0];
  res.writeHead(200, { "content-type": "text/event-stream", "cache-control": "no-cache" });
  res.write("retry: 1000\n\n");
  const s = state(row);
  send(res, "snapshot", s);
  if (s.terminal) { res.end('event: end\ndata: {"reason":"terminal"}\n\n'); return; }
  if (!subscribers.has(id)) subscribers.set(id, new Set());
  subscribers.get(id).add(res);
  const keepalive = setInterval(() => res.write(":\n\n"), 15000);
  res.on("close", () => { clearInterval(keepalive); subscribers.get(id)?.delete(res); });
}).listen(Number(port), host);
