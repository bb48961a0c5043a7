//! Operations metrics: what the watched tables say about the host's work, kept from the
//! change stream (no polling query) for `/metrics`:
//!
//! * `runwire_runs_active{type,status}` and `runwire_review_packs_active{status}` (gauges),
//! * `runwire_runs_finished_total{type,outcome}` and
//!   `runwire_review_packs_finished_total{status}` (counters),
//! * `runwire_run_duration_seconds{type,outcome}` (histogram, `started_at` → `completed_at`).
//!
//! [`Operations`] is fed by the change source through a narrow interface: [`reset`] with
//! what is active (and what finished lately) as read in one snapshot — at start-up and after
//! every reconnect — then [`run_changed`] / [`run_deleted`] / [`pack_changed`] /
//! [`pack_deleted`] for every change it sees, in commit order. It remembers the active runs
//! and packs (few) to know a row's previous status, so the gauges are exact after each
//! reset, and the ids of the runs and packs that finished within [`DEDUP_WINDOW`], so a
//! repeated or late report of a finish is counted once. A finish it did not see happen (two
//! changes read as one, or one that fell into a reconnect) still counts if it is recent;
//! later changes of long-finished rows count nothing.
//!
//! Labels are bounded: the first [`MAX_TYPES`] run types and [`MAX_VALUES`] outcomes or
//! statuses seen get their own value, later ones are `other`; a `workspace` label only with
//! `--metrics-workspace-label`. It must not query the database, and knows nothing of streams
//! or access.
//!
//! [`reset`]: Operations::reset
//! [`run_changed`]: Operations::run_changed
//! [`run_deleted`]: Operations::run_deleted
//! [`pack_changed`]: Operations::pack_changed
//! [`pack_deleted`]: Operations::pack_deleted

use crate::model::{pack_is_terminal, run_is_terminal, PackRow, RunRow, ACTIVE_PACK_STATUSES};
use chrono::{DateTime, Duration, Utc};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use std::collections::{HashMap, HashSet};
use std::sync::Mutex;

/// Distinct run types with a label of their own; the rest are `other`.
pub(crate) const MAX_TYPES: usize = 32;
/// Distinct outcomes (runs) or statuses (packs) with a label of their own.
pub(crate) const MAX_VALUES: usize = 16;
/// Longest label value kept (longer ones are cut).
const MAX_LABEL_CHARS: usize = 64;
/// How long a finish is remembered (and how recent an unseen one must be to count).
pub(crate) const DEDUP_WINDOW: Duration = Duration::minutes(15);
/// How often at most the remembered finishes are pruned.
const PRUNE_EVERY: Duration = Duration::seconds(1);
/// Buckets of `runwire_run_duration_seconds`: a second to six hours.
const DURATION_BUCKETS: [f64; 13] = [
    1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0, 7200.0, 14400.0, 21600.0,
];

type Labels = Vec<(&'static str, String)>;

/// What is true at one moment, read in one snapshot: every active run and pack, and those
/// that finished within [`DEDUP_WINDOW`].
#[derive(Debug, Default)]
pub(crate) struct Snapshot {
    pub active_runs: Vec<RunRow>,
    pub finished_runs: Vec<RunRow>,
    /// Packs with their workspace (the host's `review_packs.workspace_id`, for the label).
    pub active_packs: Vec<(PackRow, Option<i64>)>,
    pub finished_packs: Vec<(PackRow, Option<i64>)>,
}

/// The first values seen get a label of their own, up to a cap; the rest share `other`.
#[derive(Debug)]
struct Vocabulary {
    cap: usize,
    known: HashSet<String>,
}

impl Vocabulary {
    fn new(cap: usize) -> Self {
        Vocabulary {
            cap,
            known: HashSet::new(),
        }
    }

    fn label(&mut self, value: &str) -> String {
        let value: String = value.chars().take(MAX_LABEL_CHARS).collect();
        if self.known.contains(&value) {
            return value;
        }
        if self.known.len() < self.cap && value != "other" {
            self.known.insert(value.clone());
            return value;
        }
        "other".to_string()
    }
}

/// What is remembered of an active run besides its gauge series: what its finish counts as.
#[derive(Debug)]
struct ActiveRun {
    workspace: i64,
    run_type: String,
    started_at: Option<DateTime<Utc>>,
}

/// One kind's memory (runs, or packs): its active rows with their gauge series, how many
/// rows each series has, and the finishes within [`DEDUP_WINDOW`].
#[derive(Debug)]
struct Ledger<A> {
    active: HashMap<i64, (Labels, A)>,
    counts: HashMap<Labels, i64>,
    finished: HashMap<i64, DateTime<Utc>>,
    /// When `finished` was last pruned.
    pruned_at: Option<DateTime<Utc>>,
}

impl<A> Default for Ledger<A> {
    fn default() -> Self {
        Ledger {
            active: HashMap::new(),
            counts: HashMap::new(),
            finished: HashMap::new(),
            pruned_at: None,
        }
    }
}

impl<A> Ledger<A> {
    fn track(&mut self, id: i64, gauge: Labels, extra: A) {
        *self.counts.entry(gauge.clone()).or_default() += 1;
        self.active.insert(id, (gauge, extra));
    }

    /// Forgets an active row, if it was one.
    fn untrack(&mut self, id: i64) -> Option<A> {
        let (gauge, extra) = self.active.remove(&id)?;
        *self.counts.entry(gauge).or_default() -= 1;
        Some(extra)
    }

    /// Whether the finish of `id` (at `at`, if known) is news — it was active, or it is
    /// recent and not counted yet — and remembers it.
    fn finish(
        &mut self,
        id: i64,
        at: Option<DateTime<Utc>>,
        was_active: bool,
        now: DateTime<Utc>,
    ) -> bool {
        let recent = at.is_some_and(|t| now - t < DEDUP_WINDOW);
        let news = was_active || (recent && !self.finished.contains_key(&id));
        if news || recent {
            self.finished.insert(id, at.unwrap_or(now));
        }
        news
    }

    /// Forgets every active row (the counts stay, at zero, so their series read 0).
    fn restart(&mut self) {
        self.active.clear();
        self.counts.values_mut().for_each(|n| *n = 0);
    }

    /// Forgets finishes older than the window, at most once a second: a bulk job's thousands
    /// of finishes in one burst must not cost a pass over the map each.
    fn forget_old(&mut self, now: DateTime<Utc>) {
        if self.pruned_at.is_some_and(|at| now - at < PRUNE_EVERY) {
            return;
        }
        self.pruned_at = Some(now);
        self.finished.retain(|_, t| now - *t < DEDUP_WINDOW);
    }

    fn publish(&self, gauges: &Family<Labels, Gauge>) {
        for (labels, count) in &self.counts {
            gauges.get_or_create(labels).set(*count);
        }
    }
}

/// What the metrics remember between changes.
#[derive(Debug)]
struct Known {
    runs: Ledger<ActiveRun>,
    packs: Ledger<()>,
    types: Vocabulary,
    outcomes: Vocabulary,
    pack_statuses: Vocabulary,
    /// Whether a reset happened before: finishes that fell between two resets are counted,
    /// those before the first are history.
    reset_before: bool,
}

/// The operations metrics; see the module docs.
pub(crate) struct Operations {
    known: Mutex<Known>,
    workspace_label: bool,
    runs_active: Family<Labels, Gauge>,
    runs_finished: Family<Labels, Counter>,
    run_duration: Family<Labels, Histogram, fn() -> Histogram>,
    packs_active: Family<Labels, Gauge>,
    packs_finished: Family<Labels, Counter>,
}

fn duration_histogram() -> Histogram {
    Histogram::new(DURATION_BUCKETS)
}

/// When a run finished, as far as counting goes: `completed_at`, else `created_at` (never
/// `updated_at`, which any later edit moves).
fn run_finished_at(row: &RunRow) -> Option<DateTime<Utc>> {
    row.completed_at.or(row.created_at)
}

fn pack_finished_at(pack: &PackRow) -> Option<DateTime<Utc>> {
    pack.generated_at.or(pack.created_at)
}

/// A text column as a label value; NULL reads as "" (a NULL status is terminal, like any
/// unknown one, as in `model`).
fn text(value: &Option<String>) -> &str {
    value.as_deref().unwrap_or("")
}

/// The workspace a row counts under (a pack's may be NULL in the host's table).
fn workspace_of(workspace: Option<i64>) -> i64 {
    workspace.unwrap_or(0)
}

impl Operations {
    /// The metrics, registered into `registry` (prefixed `runwire_` by the caller).
    pub(crate) fn new(registry: &mut Registry, workspace_label: bool) -> Self {
        let ops = Operations {
            known: Mutex::new(Known {
                runs: Ledger::default(),
                packs: Ledger::default(),
                types: Vocabulary::new(MAX_TYPES),
                outcomes: Vocabulary::new(MAX_VALUES),
                pack_statuses: Vocabulary::new(MAX_VALUES),
                reset_before: false,
            }),
            workspace_label,
            runs_active: Family::default(),
            runs_finished: Family::default(),
            run_duration: Family::new_with_constructor(duration_histogram),
            packs_active: Family::default(),
            packs_finished: Family::default(),
        };
        registry.register(
            "runs_active",
            "Operation runs queued or running, by type and status",
            ops.runs_active.clone(),
        );
        registry.register(
            "runs_finished",
            "Operation runs that finished, by type and outcome",
            ops.runs_finished.clone(),
        );
        registry.register(
            "run_duration_seconds",
            "Duration of finished operation runs (started_at to completed_at), by type and outcome",
            ops.run_duration.clone(),
        );
        registry.register(
            "review_packs_active",
            "Review packs queued or generating, by status",
            ops.packs_active.clone(),
        );
        registry.register(
            "review_packs_finished",
            "Review packs that finished, by status",
            ops.packs_finished.clone(),
        );
        // Series that always exist, so dashboards and alerts see zeros rather than gaps.
        if !workspace_label {
            for status in ACTIVE_PACK_STATUSES {
                let _ = ops
                    .packs_active
                    .get_or_create(&vec![("status", status.into())]);
            }
            for status in ["ready", "failed"] {
                let _ = ops
                    .packs_finished
                    .get_or_create(&vec![("status", status.into())]);
            }
        }
        ops
    }

    fn known(&self) -> std::sync::MutexGuard<'_, Known> {
        // Every critical section leaves `Known` consistent; a poisoned lock is still usable.
        self.known.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn with_workspace(&self, mut labels: Labels, workspace: i64) -> Labels {
        if self.workspace_label {
            labels.push(("workspace", workspace.to_string()));
        }
        labels
    }

    /// Everything that is true now (start-up, or after a reconnect: changes may have been
    /// missed). The gauges become exactly `snapshot`'s active rows; runs and packs that
    /// finished since the previous reset without being reported are counted now.
    pub(crate) fn reset(&self, snapshot: &Snapshot) {
        let now = Utc::now();
        let mut known = self.known();
        let known = &mut *known;
        let counting = known.reset_before;
        known.reset_before = true;
        for row in &snapshot.finished_runs {
            let tracked = known.runs.untrack(row.id);
            let news = known
                .runs
                .finish(row.id, run_finished_at(row), tracked.is_some(), now);
            if counting && news {
                self.count_run(known, row, tracked.as_ref());
            }
        }
        for (pack, workspace) in &snapshot.finished_packs {
            let tracked = known.packs.untrack(pack.id);
            let news = known
                .packs
                .finish(pack.id, pack_finished_at(pack), tracked.is_some(), now);
            if counting && news {
                self.count_pack(known, pack, *workspace);
            }
        }
        known.runs.restart();
        known.packs.restart();
        for row in &snapshot.active_runs {
            self.track_run(known, row);
        }
        for (pack, workspace) in &snapshot.active_packs {
            self.track_pack(known, pack, *workspace);
        }
        self.settle(known, now);
    }

    // The four change methods look alike on purpose, one per kind and verb; the bookkeeping
    // they share is `Ledger`'s.

    /// A run was inserted or changed (its row after the change).
    pub(crate) fn run_changed(&self, row: &RunRow) {
        let now = Utc::now();
        let mut known = self.known();
        let known = &mut *known;
        let before = known.runs.untrack(row.id);
        if !run_is_terminal(text(&row.status)) {
            self.track_run(known, row);
        } else if known
            .runs
            .finish(row.id, run_finished_at(row), before.is_some(), now)
        {
            self.count_run(known, row, before.as_ref());
        }
        self.settle(known, now);
    }

    /// A run was deleted: it is no longer active, and did not finish.
    pub(crate) fn run_deleted(&self, id: i64) {
        let mut known = self.known();
        if known.runs.untrack(id).is_some() {
            self.settle(&mut known, Utc::now());
        }
    }

    /// A review pack was inserted or changed (its row after the change, and its workspace).
    pub(crate) fn pack_changed(&self, pack: &PackRow, workspace: Option<i64>) {
        let now = Utc::now();
        let mut known = self.known();
        let known = &mut *known;
        let before = known.packs.untrack(pack.id);
        if !pack_is_terminal(text(&pack.status)) {
            self.track_pack(known, pack, workspace);
        } else if known
            .packs
            .finish(pack.id, pack_finished_at(pack), before.is_some(), now)
        {
            self.count_pack(known, pack, workspace);
        }
        self.settle(known, now);
    }

    /// A review pack was deleted.
    pub(crate) fn pack_deleted(&self, id: i64) {
        let mut known = self.known();
        if known.packs.untrack(id).is_some() {
            self.settle(&mut known, Utc::now());
        }
    }

    /// `operation_runs` was truncated: nothing is active, and nothing finished.
    pub(crate) fn runs_truncated(&self) {
        let mut known = self.known();
        known.runs.restart();
        self.settle(&mut known, Utc::now());
    }

    /// `review_packs` was truncated.
    pub(crate) fn packs_truncated(&self) {
        let mut known = self.known();
        known.packs.restart();
        self.settle(&mut known, Utc::now());
    }

    fn track_run(&self, known: &mut Known, row: &RunRow) {
        let run_type = known.types.label(text(&row.run_type));
        // Active statuses are a fixed pair, so the status label is bounded by definition.
        let gauge = vec![
            ("type", run_type.clone()),
            ("status", text(&row.status).into()),
        ];
        let gauge = self.with_workspace(gauge, row.workspace_id);
        let run = ActiveRun {
            workspace: row.workspace_id,
            run_type,
            started_at: row.started_at,
        };
        known.runs.track(row.id, gauge, run);
    }

    fn track_pack(&self, known: &mut Known, pack: &PackRow, workspace: Option<i64>) {
        let labels = vec![("status", text(&pack.status).into())];
        let gauge = self.with_workspace(labels, workspace_of(workspace));
        known.packs.track(pack.id, gauge, ());
    }

    /// Counts a finished run and observes its duration. The type is the one it was tracked
    /// with while active, if it was (a type changed on completion keeps its series).
    fn count_run(&self, known: &mut Known, row: &RunRow, tracked: Option<&ActiveRun>) {
        let run_type = match tracked {
            Some(run) => run.run_type.clone(),
            None => known.types.label(text(&row.run_type)),
        };
        let workspace = tracked.map_or(row.workspace_id, |r| r.workspace);
        let started_at = row.started_at.or(tracked.and_then(|r| r.started_at));
        let outcome = known.outcomes.label(text(&row.outcome));
        let labels = vec![("type", run_type), ("outcome", outcome)];
        let labels = self.with_workspace(labels, workspace);
        self.runs_finished.get_or_create(&labels).inc();
        if let (Some(start), Some(end)) = (started_at, row.completed_at) {
            let seconds = (end - start).num_milliseconds() as f64 / 1000.0;
            if seconds >= 0.0 {
                self.run_duration.get_or_create(&labels).observe(seconds);
            }
        }
    }

    fn count_pack(&self, known: &mut Known, pack: &PackRow, workspace: Option<i64>) {
        let label = known.pack_statuses.label(text(&pack.status));
        let labels = self.with_workspace(vec![("status", label)], workspace_of(workspace));
        self.packs_finished.get_or_create(&labels).inc();
    }

    /// After a change: old finishes forgotten, the gauges set from the counts.
    fn settle(&self, known: &mut Known, now: DateTime<Utc>) {
        known.runs.forget_old(now);
        known.packs.forget_old(now);
        known.runs.publish(&self.runs_active);
        known.packs.publish(&self.packs_active);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::value::RawValue;

    fn run(id: i64, run_type: &str, status: &str, outcome: &str) -> RunRow {
        let now = Utc::now();
        RunRow {
            id,
            workspace_id: 1,
            tenant_id: None,
            run_type: Some(run_type.into()),
            status: Some(status.into()),
            outcome: Some(outcome.into()),
            summary_counts: Some(RawValue::from_string("{}".into()).unwrap()),
            created_at: Some(now - Duration::seconds(60)),
            started_at: Some(now - Duration::seconds(50)),
            completed_at: run_is_terminal(status).then_some(now),
            updated_at: Some(now),
            version: Some(1),
        }
    }

    fn scrape(registry: &Registry) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, registry).unwrap();
        out
    }

    fn value(text: &str, series: &str) -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or(0.0)
    }

    #[test]
    fn gauges_follow_changes_and_finishes_count_once() {
        let mut registry = Registry::with_prefix("runwire");
        let ops = Operations::new(&mut registry, false);
        ops.reset(&Snapshot::default());
        for id in 1..=3 {
            ops.run_changed(&run(id, "sync", "running", "pending"));
        }
        let done = run(2, "sync", "completed", "failed");
        ops.run_changed(&done);
        ops.run_changed(&done); // a duplicate read
        let text = scrape(&registry);
        assert_eq!(
            value(
                &text,
                r#"runwire_runs_active{type="sync",status="running"}"#
            ),
            2.0
        );
        let finished = r#"runwire_runs_finished_total{type="sync",outcome="failed"}"#;
        assert_eq!(value(&text, finished), 1.0);
        let observed = r#"runwire_run_duration_seconds_count{type="sync",outcome="failed"}"#;
        assert_eq!(value(&text, observed), 1.0);
        // A run read only once it had finished (queued and done in one burst) counts too;
        // an old one edited much later does not.
        ops.run_changed(&run(4, "sync", "completed", "failed"));
        let mut old = run(5, "sync", "completed", "failed");
        old.completed_at = Some(Utc::now() - Duration::hours(3));
        ops.run_changed(&old);
        assert_eq!(value(&scrape(&registry), finished), 2.0);
        ops.run_deleted(1);
        let running = r#"runwire_runs_active{type="sync",status="running"}"#;
        assert_eq!(value(&scrape(&registry), running), 1.0);
        ops.runs_truncated();
        let text = scrape(&registry);
        assert_eq!(value(&text, running), 0.0);
        assert_eq!(value(&text, finished), 2.0);
    }

    #[test]
    fn a_reset_makes_gauges_exact_and_counts_what_finished_meanwhile() {
        let mut registry = Registry::with_prefix("runwire");
        let ops = Operations::new(&mut registry, false);
        ops.reset(&Snapshot {
            finished_runs: vec![run(9, "sync", "completed", "succeeded")],
            ..Default::default()
        });
        ops.run_changed(&run(1, "sync", "running", "pending"));
        ops.run_changed(&run(2, "sync", "queued", "pending"));
        // Missed while disconnected: 1 finished, 2 started running, 3 came and went.
        ops.reset(&Snapshot {
            active_runs: vec![run(2, "sync", "running", "pending")],
            finished_runs: vec![
                run(1, "sync", "completed", "succeeded"),
                run(3, "sync", "completed", "succeeded"),
                run(9, "sync", "completed", "succeeded"),
            ],
            ..Default::default()
        });
        let text = scrape(&registry);
        assert_eq!(
            value(
                &text,
                r#"runwire_runs_active{type="sync",status="running"}"#
            ),
            1.0
        );
        assert_eq!(
            value(&text, r#"runwire_runs_active{type="sync",status="queued"}"#),
            0.0
        );
        let finished = r#"runwire_runs_finished_total{type="sync",outcome="succeeded"}"#;
        assert_eq!(value(&text, finished), 2.0, "1 and 3, not 9 (before start)");
    }

    #[test]
    fn labels_are_bounded() {
        let mut registry = Registry::with_prefix("runwire");
        let ops = Operations::new(&mut registry, false);
        for id in 0..(MAX_TYPES as i64 + 10) {
            ops.run_changed(&run(id, &format!("type{id}"), "running", "pending"));
        }
        let text = scrape(&registry);
        assert_eq!(
            value(
                &text,
                r#"runwire_runs_active{type="other",status="running"}"#
            ),
            10.0
        );
        assert!(!text.contains("workspace="));
        let mut registry = Registry::with_prefix("runwire");
        let ops = Operations::new(&mut registry, true);
        let pack = PackRow {
            id: 1,
            status: Some("generating".into()),
            created_at: Some(Utc::now()),
            generated_at: None,
            expires_at: None,
            updated_at: None,
            version: None,
        };
        ops.pack_changed(&pack, Some(7));
        let text = scrape(&registry);
        assert_eq!(
            value(
                &text,
                r#"runwire_review_packs_active{status="generating",workspace="7"}"#
            ),
            1.0
        );
    }
}
