//! The WAL source: changes from logical replication (the built-in `pgoutput` plugin over a
//! replication connection, through `pgwire-replication`). Nothing on the host's tables: a
//! publication names the seven tables, and each session creates a **temporary** slot of its
//! own, which Postgres drops when the connection ends — a stopped or crashed runwire never
//! holds WAL back.
//!
//! A session: create the slot, exporting its snapshot; read every watched item (and the
//! tenants' workspaces) *in that snapshot* — exactly the state the stream continues from, no
//! gap, no overlap; then stream. Transactions arrive whole and in commit order, access
//! changes and rows interleaved as committed; each batch of them is applied access first,
//! then its rows are published (`Watcher::publish`) with the commit's WAL position as their
//! stamp. A row's new values come in the message, so an update costs the database nothing.
//!
//! What a message cannot tell is read, and published only once the stream has passed a
//! marker the read wrote after itself (a transactional `pg_logical_emit_message`): by then
//! every access change the read could have seen is applied, and a change the read missed is
//! not overwritten. That covers a review-pack card (the tenant's latest pack: a delete or an
//! older pack's change can change it) and an unchanged TOASTed `summary_counts` whose value
//! runwire does not hold.
//!
//! With `REPLICA IDENTITY DEFAULT` an update carries no old values and a delete only the key:
//! where a membership row's key does not include `user_id` (Laravel's pivot tables have an
//! `id`), runwire cannot tell whose access a change touched and marks everyone's decisions
//! stale (re-checked in one batched read).
//!
//! The stream is also the heartbeat: after `--heartbeat-secs / 2` of silence runwire writes a
//! marker and expects it back within as long again, or replaces the connection.

mod pgoutput;

use super::{Feeds, Stop, Watcher};
use crate::model::{ChangeSource, ItemKey, PackRow, RunRow, Stamp, State};
use crate::progress::Rates;
use crate::store;
use bytes::Bytes;
use futures_util::FutureExt;
use pgoutput::{Change, Relation, Row, Value};
use pgwire_replication::{Lsn, ReplicationClient, ReplicationConfig, ReplicationEvent};
use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// The publication `migrations/wal.sql` creates.
const PUBLICATION: &str = "runwire";
/// The prefix of runwire's own markers in the WAL.
const MARKER_PREFIX: &str = "runwire";
/// Most transactions applied as one batch.
const MAX_BATCH: usize = 1024;
/// Most ids per read when re-reading everything after a (re)connect.
const RESYNC_CHUNK: usize = 5000;
/// Microseconds from the Unix epoch to Postgres's (2000-01-01).
const PG_EPOCH_MICROS: i64 = 946_684_800_000_000;

/// The seven tables, as the stream names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Table {
    Users,
    Workspaces,
    WorkspaceMemberships,
    Tenants,
    TenantMemberships,
    Runs,
    Packs,
    Other,
}

impl Table {
    fn of(name: &str) -> Table {
        match name {
            "users" => Table::Users,
            "workspaces" => Table::Workspaces,
            "workspace_memberships" => Table::WorkspaceMemberships,
            "tenants" => Table::Tenants,
            "tenant_memberships" => Table::TenantMemberships,
            "operation_runs" => Table::Runs,
            "review_packs" => Table::Packs,
            _ => Table::Other,
        }
    }
}

struct Rel {
    relation: Relation,
    table: Table,
    index: HashMap<String, usize>,
}

impl Rel {
    fn row<'a>(&'a self, tuple: &'a pgoutput::Tuple) -> Row<'a> {
        Row {
            relation: &self.relation,
            tuple,
            index: &self.index,
        }
    }

    fn key_has(&self, column: &str) -> bool {
        self.relation
            .columns
            .iter()
            .any(|c| c.key && c.name == column)
    }
}

fn int(row: &Row<'_>, column: &'static str) -> Option<i64> {
    crate::model::Columns::int(row, column).ok().flatten()
}

/// What a run change asks for.
enum RunChange {
    Row(Box<crate::model::Decoded<RunRow>>),
    /// Its `summary_counts` is an unchanged TOASTed value runwire does not hold: read it, if
    /// anyone watches the run or a feed of its workspace is open. (The rest of the row, for
    /// the operations metrics, which need no counts.)
    Read {
        row: Option<Box<RunRow>>,
        workspace: Option<i64>,
    },
    Deleted,
}

/// Applied transactions, gathered for one publish.
#[derive(Default)]
struct Batch {
    everyone: bool,
    users: BTreeSet<i64>,
    /// Each run's last change, with the commit position that made it.
    runs: BTreeMap<i64, (RunChange, u64, u32)>,
    /// Tenants whose review-pack card must be read, with the feeds of the packs' workspaces.
    cards: BTreeSet<i64>,
    card_feeds: Feeds,
    runs_truncated: Option<u64>,
    packs_truncated: Option<u64>,
    /// Feeds must re-read their snapshots (a deleted pack whose tenant the message hides).
    resnapshot_feeds: bool,
    /// ops (issue 17): each pack's last row (None: deleted) and its workspace.
    pack_rows: BTreeMap<i64, Option<(PackRow, Option<i64>)>>,
    tenants_gone: BTreeSet<i64>,
    /// (xid, what it touched) of each transaction, in commit order.
    transactions: Vec<(u32, Touched)>,
    /// Markers committed in this batch, with their commit positions.
    markers: Vec<(String, u64)>,
    end_lsn: u64,
    commit_time_micros: i64,
}

impl Batch {
    fn is_empty(&self) -> bool {
        self.transactions.is_empty()
    }
}

/// An open transaction of the stream.
struct Tx {
    xid: u32,
    /// Its commit's WAL position (known from its first message): the stamp of its states.
    lsn: u64,
    touched: Touched,
}

/// What a transaction changed, as a read in flight must know it: the items it names, and
/// whether it changed runs or cards its messages do not name (a truncation; a pack deleted,
/// whose message carries only its id).
#[derive(Default, Clone)]
struct Touched {
    keys: Vec<ItemKey>,
    all_runs: bool,
    all_cards: bool,
}

impl Touched {
    fn push(&mut self, key: ItemKey) {
        self.keys.push(key);
    }

    fn covers(&self, key: &ItemKey) -> bool {
        let all = match key {
            ItemKey::Run(_) => self.all_runs,
            ItemKey::Pack { .. } => self.all_cards,
        };
        all || self.keys.contains(key)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Insert,
    Update,
    Delete,
}

/// A read that waits for its marker before it is published.
struct Read {
    token: String,
    mark: super::applied::Mark,
    snapshot: String,
    rows: Rows,
    feeds: Feeds,
}

/// Runs and cards as read.
struct Rows {
    runs: Vec<crate::model::Decoded<RunRow>>,
    /// Runs asked for that do not exist.
    missing: BTreeSet<i64>,
    cards: Vec<store::TenantPack>,
}

impl Rows {
    /// Their states, stamped `at`, with the pace `rates` observed.
    fn states(&self, at: u64, rates: &Rates) -> Vec<State> {
        let runs = self
            .runs
            .iter()
            .filter_map(|r| State::of_run(r, Some(at), rates));
        let gone = self.missing.iter().map(|id| State::gone(ItemKey::Run(*id)));
        let cards = self.cards.iter().map(|card| match card.exists {
            true => State::of_card(card.tenant_id, card.pack.as_ref(), Some(at)),
            false => State::gone(ItemKey::Pack {
                tenant: card.tenant_id,
            }),
        });
        runs.map(|(state, _)| state)
            .chain(gone)
            .chain(cards)
            .collect()
    }
}

/// How long opening a session may take. Creating a logical slot waits until every
/// transaction running at that moment has ended (anywhere in the cluster), so a long host
/// transaction delays it; the heartbeat takes over once streaming.
const OPEN_TIMEOUT: Duration = Duration::from_secs(60);

pub(super) async fn session(w: &Watcher, shutdown: &CancellationToken, first: &mut bool) -> Stop {
    let opened = tokio::select! {
        _ = shutdown.cancelled() => return Stop::Shutdown,
        r = tokio::time::timeout(OPEN_TIMEOUT.max(w.heartbeat.saturating_mul(2)), Session::open(w, first)) => {
            r.unwrap_or_else(|_| Err("opening a replication session timed out".to_string()))
        }
    };
    match opened {
        Ok(mut session) => session.pump(shutdown).await,
        Err(why) => Stop::Lost(why),
    }
}

struct Session<'w> {
    w: &'w Watcher,
    client: ReplicationClient,
    relations: HashMap<u32, Rel>,
    /// Every tenant's workspace, read with the slot's snapshot and kept from the stream: a
    /// tenant update carries no old values, and only a move changes anyone's access.
    tenants: HashMap<i64, i64>,
    tx: Option<Tx>,
    batch: Batch,
    /// This session's reads not yet published, by the token of their marker: the read once
    /// it is done, the marker's commit position once the stream has passed it (either may
    /// come first).
    reads: HashMap<String, (Option<Read>, Option<u64>)>,
    /// The transactions applied when each read in flight began: what came before every one
    /// of them can no longer be newer than a read (`touched` forgets it).
    read_starts: HashMap<String, u64>,
    read_tx: mpsc::UnboundedSender<Result<Read, String>>,
    read_rx: mpsc::UnboundedReceiver<Result<Read, String>>,
    /// Transactions applied while reads are in flight: (sequence number, xid, items).
    touched: VecDeque<(u64, u32, Touched)>,
    /// The heartbeat marker awaited, and by when.
    heartbeat: Option<(String, Instant)>,
    /// The server's WAL end as last reported.
    server_end: u64,
}

impl<'w> Session<'w> {
    async fn open(w: &'w Watcher, first: &mut bool) -> Result<Session<'w>, String> {
        let slot = format!(
            "runwire_{}_{:08x}",
            std::process::id(),
            rand::random::<u32>()
        );
        let config = replication_config(w, &slot)?;
        let mut client = ReplicationClient::connect_gated(config)
            .await
            .map_err(|e| format!("cannot open a replication connection: {e}"))?;
        let pid: i32 = query_value(&mut client, "SELECT pg_backend_pid()", 0)
            .await?
            .parse()
            .map_err(|_| "pg_backend_pid() is not a number".to_string())?;
        let created = client
            .simple_query(&format!(
                "CREATE_REPLICATION_SLOT {slot} TEMPORARY LOGICAL pgoutput (SNAPSHOT 'export')"
            ))
            .await
            .map_err(|e| format!("cannot create a replication slot: {e}"))?;
        let column = |i: usize| -> Result<String, String> {
            created
                .first()
                .and_then(|row| row.get(i).cloned().flatten())
                .map(|b| String::from_utf8_lossy(&b).into_owned())
                .ok_or_else(|| "CREATE_REPLICATION_SLOT answered without a row".to_string())
        };
        let start: Lsn = column(1)?
            .parse()
            .map_err(|_| "the slot's consistent point is not an LSN".to_string())?;
        let snapshot = column(2)?;
        let (read_tx, read_rx) = mpsc::unbounded_channel();
        let mut session = Session {
            w,
            client,
            relations: HashMap::new(),
            tenants: HashMap::new(),
            tx: None,
            batch: Batch::default(),
            reads: HashMap::new(),
            read_starts: HashMap::new(),
            read_tx,
            read_rx,
            touched: VecDeque::new(),
            heartbeat: None,
            server_end: start.as_u64(),
        };
        w.reconnected(first);
        session
            .resync(&snapshot, start.as_u64())
            .await
            .map_err(|e| format!("re-reading in the slot's snapshot failed: {e}"))?;
        session
            .client
            .start()
            .await
            .map_err(|e| format!("cannot start replication: {e}"))?;
        session
            .client
            .wait_started()
            .await
            .map_err(|e| format!("replication did not start: {e}"))?;
        // Only now may streams read and open again: a read taken while the slot's snapshot
        // was being read could be newer than what that snapshot publishes.
        w.connected(pid);
        tracing::info!(backend_pid = pid, %slot, "streaming changes (logical replication)");
        Ok(session)
    }

    /// Reads every watched item and the tenants' workspaces in the slot's exported snapshot
    /// and publishes them; every decision is already stale (`Watcher::connected`).
    async fn resync(&mut self, snapshot: &str, at: u64) -> sqlx::Result<()> {
        let w = self.w;
        let mut tx = w.pool.begin().await?;
        sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            .execute(&mut *tx)
            .await?;
        // An identifier Postgres made (`0000000A-0000001B-1`); bound values are not allowed.
        if !snapshot
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-')
        {
            return Err(sqlx::Error::Protocol(format!(
                "odd snapshot name {snapshot:?}"
            )));
        }
        sqlx::query(&format!("SET TRANSACTION SNAPSHOT '{snapshot}'"))
            .execute(&mut *tx)
            .await?;
        self.tenants = store::tenant_workspaces(&mut *tx)
            .await?
            .into_iter()
            .collect();
        let mut states = Vec::new();
        let keys = w.hub.items.keys();
        for chunk in keys.chunks(RESYNC_CHUNK) {
            let (runs, tenants) = split(chunk);
            let started = Instant::now();
            let rows = read_rows(&mut tx, &runs, &tenants).await?;
            states.extend(rows.states(at, &w.hub.rates));
            w.metrics.observe_reread(chunk.len(), started.elapsed());
        }
        // ops (issue 17): the metrics start from the same snapshot the stream continues.
        let window = crate::ops::DEDUP_WINDOW.num_seconds() as f64;
        w.metrics
            .ops
            .reset(&store::ops_snapshot_in(&mut tx, window).await?);
        tx.commit().await?;
        w.applied.advance(at);
        w.publish(states.into_iter().map(Arc::new).collect(), &Feeds::new());
        w.hub.resynced.send_modify(|n| *n += 1);
        Ok(())
    }

    async fn pump(&mut self, shutdown: &CancellationToken) -> Stop {
        let idle = self.w.heartbeat / 2;
        loop {
            let event = tokio::select! {
                biased;
                _ = shutdown.cancelled() => return Stop::Shutdown,
                read = self.read_rx.recv() => {
                    match read {
                        Some(Ok(read)) => self.read_done(read),
                        Some(Err(why)) => return Stop::Lost(why),
                        None => {}
                    }
                    continue;
                }
                event = tokio::time::timeout(idle, self.client.recv()) => event,
            };
            let event = match event {
                Ok(Ok(Some(event))) => event,
                Ok(Ok(None)) => return Stop::Lost("the replication stream ended".into()),
                Ok(Err(e)) => return Stop::Lost(format!("replication failed: {e}")),
                Err(_silent) => {
                    if let Err(why) = self.beat().await {
                        return Stop::Lost(why);
                    }
                    continue;
                }
            };
            if let Err(why) = self.handle(event) {
                return Stop::Lost(why);
            }
            // Take whatever else has arrived, so a burst is one batch.
            while self.batch.transactions.len() < MAX_BATCH {
                match self.client.recv().now_or_never() {
                    Some(Ok(Some(event))) => {
                        if let Err(why) = self.handle(event) {
                            return Stop::Lost(why);
                        }
                    }
                    Some(Ok(None)) => return Stop::Lost("the replication stream ended".into()),
                    Some(Err(e)) => return Stop::Lost(format!("replication failed: {e}")),
                    None => break,
                }
            }
            // Messages arriving prove the connection alive: the heartbeat is judged only
            // after silence (`beat`), so a long backlog is not taken for a dead socket.
            if let Err(why) = self.apply() {
                return Stop::Lost(why);
            }
        }
    }

    /// After silence: write a marker, or give up on one written earlier that never came.
    async fn beat(&mut self) -> Result<(), String> {
        if let Some((_, by)) = &self.heartbeat {
            if Instant::now() > *by {
                return Err("replication heartbeat timed out".into());
            }
            return Ok(());
        }
        let token = format!("beat-{:016x}", rand::random::<u64>());
        let emit = tokio::time::timeout(self.w.heartbeat, store::emit_marker(&self.w.pool, &token));
        match emit.await {
            Ok(Ok(())) => {
                self.heartbeat = Some((token, Instant::now() + self.w.heartbeat / 2));
                Ok(())
            }
            Ok(Err(e)) => Err(format!("heartbeat failed: {e}")),
            Err(_) => Err("heartbeat timed out".into()),
        }
    }

    fn handle(&mut self, event: ReplicationEvent) -> Result<(), String> {
        match event {
            ReplicationEvent::Begin { xid, final_lsn, .. } => {
                self.tx = Some(Tx {
                    xid,
                    lsn: final_lsn.as_u64(),
                    touched: Touched::default(),
                });
            }
            ReplicationEvent::XLogData { data, .. } => self.change(data)?,
            ReplicationEvent::Message {
                prefix, content, ..
            } if prefix == MARKER_PREFIX => {
                let token = String::from_utf8_lossy(&content).into_owned();
                self.batch.markers.push((token, 0));
            }
            ReplicationEvent::Message { .. } => {}
            ReplicationEvent::Commit {
                lsn,
                end_lsn,
                commit_time_micros,
            } => {
                let tx = self.tx.take().ok_or("a commit without a begin")?;
                for marker in &mut self.batch.markers {
                    if marker.1 == 0 {
                        marker.1 = lsn.as_u64();
                    }
                }
                self.batch.transactions.push((tx.xid, tx.touched));
                self.batch.end_lsn = end_lsn.as_u64();
                self.batch.commit_time_micros = commit_time_micros;
            }
            ReplicationEvent::KeepAlive { wal_end, .. } => {
                self.server_end = self.server_end.max(wal_end.as_u64());
                // Everything before a keepalive has been received: with no transaction open,
                // the stream is applied through its position.
                if self.tx.is_none() && self.batch.is_empty() {
                    self.w.applied.advance(wal_end.as_u64());
                    self.client.update_applied_lsn(wal_end);
                    self.w.status.set_lag(Duration::ZERO, 0);
                }
            }
            ReplicationEvent::StoppedAt { .. } => return Err("replication stopped".into()),
        }
        Ok(())
    }

    /// One change message of the open transaction.
    fn change(&mut self, data: Bytes) -> Result<(), String> {
        let change = pgoutput::decode(data).map_err(|e| e.to_string())?;
        let tx = self.tx.as_ref().ok_or("a change outside a transaction")?;
        let (lsn, xid) = (tx.lsn, tx.xid);
        match change {
            Change::Relation(relation) => {
                let index = relation
                    .columns
                    .iter()
                    .enumerate()
                    .map(|(i, c)| (c.name.clone(), i))
                    .collect();
                let table = Table::of(&relation.name);
                self.relations.insert(
                    relation.id,
                    Rel {
                        relation,
                        table,
                        index,
                    },
                );
            }
            Change::Insert { relation, new } => {
                self.row_changed(relation, Op::Insert, None, Some(&new), (lsn, xid))?
            }
            Change::Update { relation, old, new } => {
                self.row_changed(relation, Op::Update, old.as_ref(), Some(&new), (lsn, xid))?
            }
            Change::Delete { relation, old } => {
                self.row_changed(relation, Op::Delete, Some(&old), None, (lsn, xid))?
            }
            Change::Truncate { relations } => {
                for id in relations {
                    match self.relations.get(&id).map(|r| r.table) {
                        Some(Table::Runs) => {
                            self.batch.runs.clear();
                            self.batch.runs_truncated = Some(lsn);
                            if let Some(tx) = &mut self.tx {
                                tx.touched.all_runs = true;
                            }
                        }
                        Some(Table::Packs) => {
                            self.batch.cards.clear();
                            self.batch.pack_rows.clear();
                            self.batch.packs_truncated = Some(lsn);
                            if let Some(tx) = &mut self.tx {
                                tx.touched.all_cards = true;
                            }
                        }
                        Some(Table::Tenants) => {
                            self.tenants.clear();
                            self.batch.everyone = true;
                        }
                        Some(Table::Other) | None => {}
                        Some(_) => self.batch.everyone = true,
                    }
                }
            }
            Change::Other => {}
        }
        Ok(())
    }

    /// A row of one of the seven tables was inserted (`old` None), updated or deleted (`new`
    /// None).
    fn row_changed(
        &mut self,
        relation: u32,
        op: Op,
        old: Option<&pgoutput::Tuple>,
        new: Option<&pgoutput::Tuple>,
        (lsn, xid): (u64, u32),
    ) -> Result<(), String> {
        let rel = self
            .relations
            .get(&relation)
            .ok_or_else(|| format!("a change of relation {relation} before its description"))?;
        let batch = &mut self.batch;
        let touched = &mut self
            .tx
            .as_mut()
            .ok_or("a change outside a transaction")?
            .touched;
        match rel.table {
            Table::Users => {
                // A deleted user: their memberships go too, but say it directly.
                if let (Some(old), None) = (old, new) {
                    match int(&rel.row(old), "id") {
                        Some(user) => drop(batch.users.insert(user)),
                        None => batch.everyone = true,
                    }
                }
            }
            Table::Workspaces => {
                if new.is_none() {
                    batch.everyone = true;
                }
            }
            Table::WorkspaceMemberships | Table::TenantMemberships => {
                // The user of the new row, and of the old one where the message has it.
                let user =
                    |t: Option<&pgoutput::Tuple>| t.and_then(|t| int(&rel.row(t), "user_id"));
                let (old_user, new_user) = (user(old), user(new));
                batch.users.extend(old_user);
                batch.users.extend(new_user);
                // A key without user_id (Laravel's pivot tables have an `id`) hides whose
                // membership an update or delete changed: everyone's decisions go stale.
                let hidden = match op {
                    Op::Insert => new_user.is_none(),
                    Op::Update => old_user.is_none() && !rel.key_has("user_id"),
                    Op::Delete => old_user.is_none(),
                };
                if hidden {
                    batch.everyone = true;
                }
            }
            Table::Tenants => {
                let tuple = new.or(old).ok_or("a change without a row")?;
                let Some(tenant) = int(&rel.row(tuple), "id") else {
                    batch.everyone = true;
                    return Ok(());
                };
                match new.map(|t| int(&rel.row(t), "workspace_id")) {
                    Some(workspace) => {
                        let before = match workspace {
                            Some(w) => self.tenants.insert(tenant, w),
                            None => self.tenants.remove(&tenant),
                        };
                        // A new tenant grants nothing yet; a moved one changes access.
                        if before.is_some() && before != workspace {
                            batch.everyone = true;
                            batch.cards.insert(tenant);
                        }
                    }
                    None => {
                        self.tenants.remove(&tenant);
                        batch.everyone = true;
                        batch.tenants_gone.insert(tenant);
                        touched.push(ItemKey::Pack { tenant });
                    }
                }
            }
            Table::Runs => {
                let tuple = new.or(old).ok_or("a change without a row")?;
                let Some(id) = int(&rel.row(tuple), "id") else {
                    return Err("a run change without its id".into());
                };
                touched.push(ItemKey::Run(id));
                let change = match new {
                    None => RunChange::Deleted,
                    Some(tuple) => run_row(rel, tuple, &self.w.hub, id),
                };
                batch.runs.insert(id, (change, lsn, xid));
            }
            Table::Packs => {
                // The tenant's card is its latest pack: read it (see the module docs). The
                // message does not say which tenant a pack left or was deleted from: the
                // watched cards that show it are read too, and for a delete (which carries
                // only the key) every feed re-reads its snapshot.
                let mut pack_id = None;
                // ops (issue 17): the pack's own row, for the operations metrics.
                let pack =
                    new.map(|t| (PackRow::read(&rel.row(t)), int(&rel.row(t), "workspace_id")));
                for tuple in [old, new].into_iter().flatten() {
                    let row = rel.row(tuple);
                    pack_id = pack_id.or(int(&row, "id"));
                    if let Some(tenant) = int(&row, "tenant_id") {
                        batch.cards.insert(tenant);
                        touched.push(ItemKey::Pack { tenant });
                        if let Some(workspace) = int(&row, "workspace_id") {
                            let feeds = batch.card_feeds.entry(ItemKey::Pack { tenant });
                            feeds.or_default().push(workspace);
                        }
                    }
                }
                if let Some(id) = pack_id {
                    let row = pack.and_then(|(row, workspace)| Some((row.ok()?, workspace)));
                    if row.is_some() || new.is_none() {
                        batch.pack_rows.insert(id, row);
                    }
                }
                for tenant in pack_id
                    .map(|p| self.w.hub.cards_showing(p))
                    .unwrap_or_default()
                {
                    batch.cards.insert(tenant);
                    touched.push(ItemKey::Pack { tenant });
                }
                if op == Op::Delete && old.is_some_and(|t| int(&rel.row(t), "tenant_id").is_none())
                {
                    batch.resnapshot_feeds = true;
                    touched.all_cards = true;
                }
            }
            Table::Other => {}
        }
        Ok(())
    }

    /// Applies the gathered transactions: access changes first, then their rows.
    fn apply(&mut self) -> Result<(), String> {
        if self.batch.is_empty() {
            return Ok(());
        }
        let batch = std::mem::take(&mut self.batch);
        let w = self.w;
        w.progressed();
        let lsn = batch.end_lsn;
        for (xid, touched) in &batch.transactions {
            let seq = w.applied.record(*xid);
            if !self.reads.is_empty() {
                self.touched.push_back((seq, *xid, touched.clone()));
            }
        }
        self.forget_touched();
        if batch.everyone {
            w.epochs.everyone_changed();
        }
        for user in &batch.users {
            w.epochs.user_changed(*user);
        }
        let mut states = Vec::new();
        let mut read_runs = BTreeSet::new();
        // ops (issue 17): truncates first (the batch holds only what came after them).
        if batch.runs_truncated.is_some() {
            w.metrics.ops.runs_truncated();
        }
        if batch.packs_truncated.is_some() {
            w.metrics.ops.packs_truncated();
        }
        for (id, row) in &batch.pack_rows {
            match row {
                Some((pack, workspace)) => w.metrics.ops.pack_changed(pack, *workspace),
                None => w.metrics.ops.pack_deleted(*id),
            }
        }
        let now = chrono::Utc::now();
        if batch.runs_truncated.is_some()
            || batch.packs_truncated.is_some()
            || batch.resnapshot_feeds
        {
            w.hub.resynced.send_modify(|n| *n += 1);
        }
        for key in w.hub.items.keys() {
            match key {
                ItemKey::Run(_) if batch.runs_truncated.is_some() => {
                    states.push(State::gone(key));
                }
                ItemKey::Pack { tenant } if batch.tenants_gone.contains(&tenant) => {
                    states.push(State::gone(key));
                }
                ItemKey::Pack { tenant } => {
                    if let Some(at) = batch.packs_truncated {
                        states.push(State::pack(tenant, None, Stamp::Wal(at)));
                    }
                }
                _ => {}
            }
        }
        for (id, (change, at, xid)) in batch.runs {
            let key = ItemKey::Run(id);
            match change {
                RunChange::Deleted => {
                    w.metrics.ops.run_deleted(id); // ops + progress (issue 17)
                    w.hub.rates.forget(id);
                    if w.wanted(&key, &[]) {
                        states.push(State::gone(key).made_by(xid));
                    }
                }
                RunChange::Read { row, workspace } => {
                    if let Some(row) = row {
                        w.metrics.ops.run_changed(&row); // ops (issue 17)
                    }
                    if w.wanted(&key, &[workspace]) {
                        read_runs.insert(id);
                    }
                }
                RunChange::Row(row) => match *row {
                    Ok(row) => {
                        // ops + progress (issue 17): one observation per state, before it
                        // renders the pace.
                        w.metrics.ops.run_changed(&row);
                        let rate = w.hub.rates.observe(&row, now);
                        if w.wanted(&key, &[Some(row.workspace_id)]) {
                            states.push(State::run(&row, Stamp::Wal(at), rate).made_by(xid));
                        }
                    }
                    Err((_, bad)) => {
                        if w.wanted(&key, &[]) {
                            states.push(State::unreadable(key, bad));
                        }
                    }
                },
            }
        }
        let cards: BTreeSet<i64> = batch
            .cards
            .iter()
            .copied()
            .filter(|t| !batch.tenants_gone.contains(t))
            .filter(|t| {
                let key = ItemKey::Pack { tenant: *t };
                let feeds = batch.card_feeds.get(&key).cloned().unwrap_or_default();
                let feeds: Vec<Option<i64>> = feeds.into_iter().map(Some).collect();
                w.wanted(&key, &feeds)
            })
            .collect();
        w.publish(
            states.into_iter().map(Arc::new).collect(),
            &batch.card_feeds,
        );
        w.applied.advance(lsn);
        self.client.update_applied_lsn(Lsn::from_u64(lsn));
        let lag = commit_age(batch.commit_time_micros);
        w.status.set_lag(lag, self.server_end.saturating_sub(lsn));
        if !read_runs.is_empty() || !cards.is_empty() {
            self.start_read(read_runs, cards, batch.card_feeds.clone());
        }
        for (token, at) in batch.markers {
            if self.heartbeat.as_ref().is_some_and(|(t, _)| *t == token) {
                self.heartbeat = None;
            }
            // Another instance's markers pass by too: only this session's tokens count.
            if let Some((read, passed)) = self.reads.get_mut(&token) {
                *passed = Some(at);
                if read.is_some() {
                    self.publish_read(&token);
                }
            }
        }
        if w.applied.needs_prune() {
            let (pool, applied) = (w.pool.clone(), Arc::clone(&w.applied));
            tokio::spawn(async move {
                if let Ok(snapshot) = store::current_snapshot(&pool).await {
                    applied.prune(&snapshot);
                }
            });
        }
        Ok(())
    }

    /// Reads what the messages could not tell, then writes a marker; the read is published
    /// when the stream reaches the marker.
    fn start_read(&mut self, runs: BTreeSet<i64>, tenants: BTreeSet<i64>, feeds: Feeds) {
        let token = format!("read-{:016x}", rand::random::<u64>());
        self.reads.insert(token.clone(), (None, None));
        self.read_starts.insert(token.clone(), self.w.applied.seq());
        let (pool, applied) = (self.w.pool.clone(), Arc::clone(&self.w.applied));
        let (reply, metrics) = (self.read_tx.clone(), Arc::clone(&self.w.metrics));
        // A read that fails (a host migration holding `review_packs`, a pool out of
        // connections) is retried, with back-off, for as long as the session lasts: it holds
        // back only its own items, and the stream goes on for everything else.
        tokio::spawn(async move {
            let mut backoff = Duration::from_millis(100);
            let mut warned = false;
            loop {
                let started = Instant::now();
                let read =
                    consistent_read(&pool, &applied, token.clone(), &runs, &tenants, &feeds).await;
                metrics.observe_reread(runs.len() + tenants.len(), started.elapsed());
                match read {
                    Ok(read) => {
                        let _ = reply.send(Ok(read));
                        return;
                    }
                    Err(e) if !warned => {
                        tracing::warn!(error = %e, "a read for the WAL source failed; retrying");
                        warned = true;
                    }
                    Err(_) => {}
                }
                tokio::select! {
                    _ = reply.closed() => return,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        });
    }

    /// A read is done: published now if the stream already passed its marker.
    fn read_done(&mut self, read: Read) {
        let token = read.token.clone();
        if let Some(entry) = self.reads.get_mut(&token) {
            entry.0 = Some(read);
            if entry.1.is_some() {
                self.publish_read(&token);
            }
        }
    }

    /// Publishes a read whose marker the stream has passed: each state, stamped with the
    /// marker's position, unless a transaction the read did not see has changed that item
    /// since (the cell has that newer state) — or may have, not naming it (a truncation, a
    /// pack deleted by id): that item is read again.
    fn publish_read(&mut self, token: &str) {
        let Some((Some(read), Some(at))) = self.reads.remove(token) else {
            return;
        };
        self.read_starts.remove(token);
        let snapshot = super::applied::Snapshot::parse(&read.snapshot);
        let newer: Vec<&Touched> = self
            .touched
            .iter()
            .filter(|(seq, xid, _)| {
                read.mark.is_before(*seq) && snapshot.as_ref().is_none_or(|s| !s.sees_xid(*xid))
            })
            .map(|(_, _, touched)| touched)
            .collect();
        let (mut states, mut runs, mut tenants) = (Vec::new(), BTreeSet::new(), BTreeSet::new());
        for state in read.rows.states(at, &self.w.hub.rates) {
            if newer.iter().any(|t| t.keys.contains(&state.key)) {
                continue;
            }
            if newer.iter().any(|t| t.covers(&state.key)) {
                match state.key {
                    ItemKey::Run(id) => runs.insert(id),
                    ItemKey::Pack { tenant } => tenants.insert(tenant),
                };
                continue;
            }
            states.push(Arc::new(state));
        }
        self.w.publish(states, &read.feeds);
        if !runs.is_empty() || !tenants.is_empty() {
            self.start_read(runs, tenants, read.feeds);
        }
        self.forget_touched();
    }

    /// Forgets the transactions applied before every read in flight began.
    fn forget_touched(&mut self) {
        match self.read_starts.values().min() {
            None => self.touched.clear(),
            Some(&floor) => {
                while self
                    .touched
                    .front()
                    .is_some_and(|(seq, _, _)| *seq <= floor)
                {
                    self.touched.pop_front();
                }
            }
        }
    }
}

/// A run's new row; an unchanged TOASTed `summary_counts` is taken from the state runwire
/// holds, or read.
fn run_row(rel: &Rel, tuple: &pgoutput::Tuple, hub: &super::hub::Hub, id: i64) -> RunChange {
    let unchanged = |column: &str| matches!(rel.row(tuple).value(column), Some(Value::Unchanged));
    if !unchanged("summary_counts") {
        return RunChange::Row(Box::new(RunRow::read(&rel.row(tuple))));
    }
    let known = hub
        .items
        .get(&ItemKey::Run(id))
        .and_then(|cell| cell.current().1)
        .and_then(|state| summary_counts_of(&state));
    let Some(known) = known else {
        // The row without its counts still tells the operations metrics what they need.
        let mut rest = tuple.clone();
        if let Some(i) = rel.index.get("summary_counts") {
            rest[*i] = Value::Null;
        }
        let workspace = int(&rel.row(tuple), "workspace_id");
        let row = RunRow::read(&rel.row(&rest)).ok().map(Box::new);
        return RunChange::Read { row, workspace };
    };
    let mut filled = tuple.clone();
    if let Some(i) = rel.index.get("summary_counts") {
        filled[*i] = Value::Text(Bytes::from(known));
    }
    RunChange::Row(Box::new(RunRow::read(&rel.row(&filled))))
}

/// The `summary_counts` a run's state shows, as JSON text.
fn summary_counts_of(state: &State) -> Option<String> {
    if state.is_gone() {
        return None;
    }
    let fields: HashMap<&str, &serde_json::value::RawValue> =
        serde_json::from_str(state.json.get()).ok()?;
    fields.get("summary_counts").map(|v| v.get().to_string())
}

fn split(keys: &[ItemKey]) -> (Vec<i64>, Vec<i64>) {
    let mut runs = Vec::new();
    let mut tenants = Vec::new();
    for key in keys {
        match *key {
            ItemKey::Run(id) => runs.push(id),
            ItemKey::Pack { tenant } => tenants.push(tenant),
        }
    }
    (runs, tenants)
}

/// These runs and cards, read on `tx`.
async fn read_rows(
    tx: &mut sqlx::PgConnection,
    runs: &[i64],
    tenants: &[i64],
) -> sqlx::Result<Rows> {
    let mut rows = Rows {
        runs: Vec::new(),
        missing: runs.iter().copied().collect(),
        cards: Vec::new(),
    };
    if !runs.is_empty() {
        rows.runs = store::runs_by_ids(&mut *tx, ChangeSource::Wal, runs).await?;
        for run in &rows.runs {
            if let Some(id) = store::run_id(run) {
                rows.missing.remove(&id);
            }
        }
    }
    if !tenants.is_empty() {
        rows.cards = store::latest_packs(&mut *tx, ChangeSource::Wal, tenants).await?;
    }
    Ok(rows)
}

/// Reads runs and cards in one snapshot that includes everything the watcher applied before
/// (`Applied::covers`, repeating the read until it does), then writes the read's marker.
async fn consistent_read(
    pool: &sqlx::PgPool,
    applied: &super::applied::Applied,
    token: String,
    runs: &BTreeSet<i64>,
    tenants: &BTreeSet<i64>,
    feeds: &Feeds,
) -> sqlx::Result<Read> {
    let runs: Vec<i64> = runs.iter().copied().collect();
    let tenants: Vec<i64> = tenants.iter().copied().collect();
    let mut wait = Duration::from_millis(1);
    loop {
        let mark = applied.mark();
        let mut tx = pool.begin().await?;
        sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            .execute(&mut *tx)
            .await?;
        let snapshot = store::current_snapshot(&mut *tx).await?;
        let rows = read_rows(&mut tx, &runs, &tenants).await?;
        tx.commit().await?;
        if applied.covers(&mark, &snapshot) {
            store::emit_marker(pool, &token).await?;
            return Ok(Read {
                token,
                mark,
                snapshot,
                rows,
                feeds: feeds.clone(),
            });
        }
        if wait > Duration::from_secs(2) {
            return Err(sqlx::Error::PoolTimedOut);
        }
        tokio::time::sleep(wait).await;
        wait *= 2;
    }
}

/// How long ago a commit at `micros` (since 2000-01-01) was.
fn commit_age(micros: i64) -> Duration {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
        .unwrap_or(0);
    let age = now - PG_EPOCH_MICROS - micros;
    Duration::from_micros(u64::try_from(age).unwrap_or(0))
}

/// The replication connection's configuration, from the query connections' options. The
/// password is the one they resolved (the URL's user info or `password` parameter,
/// `PGPASSWORD`, `~/.pgpass`), which the options give back only in their URL form.
fn replication_config(w: &Watcher, slot: &str) -> Result<ReplicationConfig, String> {
    let options = &w.database.options;
    let password = sqlx::ConnectOptions::to_url_lossy(options)
        .password()
        .map(|p| {
            percent_encoding::percent_decode_str(p)
                .decode_utf8_lossy()
                .into_owned()
        })
        .unwrap_or_default();
    let database = options
        .get_database()
        .unwrap_or_else(|| options.get_username());
    Ok(ReplicationConfig::new(
        options.get_host(),
        options.get_username(),
        password,
        database,
        slot,
        PUBLICATION,
    )
    .with_port(options.get_port())
    // How `model::row` reads timestamps.
    .with_options("-c TimeZone=UTC -c DateStyle=ISO,MDY")
    .with_application_name("runwire")
    .with_wakeup_interval(w.heartbeat / 2)
    .with_status_interval(Duration::from_secs(1)))
}

/// One value of a gated session's query.
async fn query_value(
    client: &mut ReplicationClient,
    sql: &str,
    column: usize,
) -> Result<String, String> {
    let rows = client
        .simple_query(sql)
        .await
        .map_err(|e| format!("{sql}: {e}"))?;
    rows.first()
        .and_then(|row| row.get(column).cloned().flatten())
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .ok_or_else(|| format!("{sql}: no value"))
}
