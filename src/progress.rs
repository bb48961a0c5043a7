//! Progress and ETA of operation runs, computed by runwire from the rows (the host changes
//! nothing): how long a run has taken, and — where `summary_counts` has `processed` and
//! `total` — how far it is, how fast it goes and when it will be done.
//!
//! Times are *as of the state's `updated_at`* (the row's own clock), not of the moment
//! runwire renders it: a state is rendered once and then served to every viewer, to late
//! ones too, so it must not carry the render time. A client showing a ticking clock adds the
//! time since `updated_at` (docs/api.md).
//!
//! [`Rates`] keeps the previous observation of every active run it was fed, and turns
//! successive observations into a smoothed rate (an exponentially weighted average over
//! about [`SMOOTHING`]). It is fed **once per published run state** by the change source
//! (`Rates::observe`), never per viewer; other reads of a run (a stream opening, a feed
//! snapshot) only look the rate up (`Rates::rate`). A run it has not observed moving yet
//! falls back to its average rate, `processed / elapsed`.
//!
//! It must not decide anything about access or delivery, and keeps nothing for finished or
//! deleted runs.

use crate::model::{run_is_terminal, RunRow};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Number;
use std::collections::HashMap;
use std::sync::Mutex;

/// The time constant of the smoothing: a change of pace shows fully after about this long.
const SMOOTHING: f64 = 30.0;

/// What a run state says about time and progress (rendered into its JSON by `model`).
#[derive(Debug, Default, Clone, PartialEq)]
pub(crate) struct Timing {
    /// Seconds since `started_at` (or `created_at` while queued), as of `updated_at`; final
    /// (`completed_at` − start) once the run is terminal.
    pub elapsed_seconds: Option<f64>,
    pub progress: Option<Progress>,
}

/// `progress` of a run whose `summary_counts` has numeric `processed` and `total`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub(crate) struct Progress {
    /// As the host wrote them (integers stay integers).
    pub processed: Number,
    pub total: Number,
    /// `processed / total`, at most 1; null when `total` is 0.
    pub fraction: Option<f64>,
    /// Items per second: smoothed from the changes observed, else the average so far.
    pub rate_per_second: Option<f64>,
    /// Seconds left at that rate, as of `updated_at`; null when unknown (no rate yet, a
    /// terminal run).
    pub eta_seconds: Option<u64>,
}

#[derive(Deserialize)]
struct Counts {
    processed: Option<Number>,
    total: Option<Number>,
}

/// `processed` and `total` of a run, when both are numbers ≥ 0.
fn counts(row: &RunRow) -> Option<(Number, f64, Number, f64)> {
    let raw = row.summary_counts.as_deref()?.get();
    // Only an object: serde would read `[1, 2]` into the struct by position.
    if !raw.trim_start().starts_with('{') {
        return None;
    }
    let counts: Counts = serde_json::from_str(raw).ok()?;
    let (processed, total) = (counts.processed?, counts.total?);
    let (p, t) = (processed.as_f64()?, total.as_f64()?);
    (p.is_finite() && t.is_finite() && p >= 0.0 && t >= 0.0).then_some((processed, p, total, t))
}

/// The moment a state describes: its `updated_at`, else now (a host that leaves it empty).
fn as_of(row: &RunRow, now: DateTime<Utc>) -> DateTime<Utc> {
    row.updated_at.unwrap_or(now)
}

fn seconds(from: DateTime<Utc>, to: DateTime<Utc>) -> f64 {
    ((to - from).num_milliseconds().max(0)) as f64 / 1000.0
}

/// Whether the run is finished, as `model` decides it (a NULL status is terminal).
fn terminal(row: &RunRow) -> bool {
    row.status.as_deref().is_none_or(run_is_terminal)
}

/// Elapsed seconds of a run (see [`Timing::elapsed_seconds`]). A finished run's comes from
/// its row alone (never the clock), so every instance renders its final state alike.
fn elapsed(row: &RunRow, now: DateTime<Utc>) -> Option<f64> {
    let start = row.started_at.or(row.created_at)?;
    let end = match terminal(row) {
        true => row.completed_at.or(row.updated_at)?,
        false => as_of(row, now),
    };
    Some(seconds(start, end))
}

fn round(x: f64, places: i32) -> f64 {
    let scale = 10f64.powi(places);
    (x * scale).round() / scale
}

/// A run's timing, given the smoothed rate observed for it (None: not observed moving).
pub(crate) fn timing(row: &RunRow, observed_rate: Option<f64>, now: DateTime<Utc>) -> Timing {
    let elapsed_seconds = elapsed(row, now);
    let progress = counts(row).map(|(processed, p, total, t)| {
        let average = elapsed_seconds.filter(|e| *e > 0.0).map(|e| p / e);
        let rate = observed_rate.or(average).filter(|r| r.is_finite());
        let eta = match rate {
            _ if terminal(row) => None,
            _ if p >= t => Some(0),
            Some(r) if r > 0.0 => Some(((t - p) / r).round().min(u64::MAX as f64) as u64),
            _ => None,
        };
        Progress {
            processed,
            total,
            fraction: (t > 0.0).then(|| round((p / t).min(1.0), 4)),
            rate_per_second: rate.map(|r| round(r, 6)),
            eta_seconds: eta,
        }
    });
    Timing {
        elapsed_seconds: elapsed_seconds.map(|e| round(e, 3)),
        progress,
    }
}

/// The previous observation of an active run.
#[derive(Debug, Clone, Copy)]
struct Observation {
    at: DateTime<Utc>,
    processed: f64,
    /// The smoothed rate so far (None until there is one).
    rate: Option<f64>,
}

/// Smoothed rates of the active runs observed; see the module docs.
#[derive(Debug, Default)]
pub(crate) struct Rates {
    runs: Mutex<HashMap<i64, Observation>>,
}

impl Rates {
    fn runs(&self) -> std::sync::MutexGuard<'_, HashMap<i64, Observation>> {
        // Each critical section is one map operation: a poisoned lock is still consistent.
        self.runs.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Feeds one published state of a run; returns the smoothed rate to render it with.
    /// Call once per state: the rate moves with each observation.
    pub(crate) fn observe(&self, row: &RunRow, now: DateTime<Utc>) -> Option<f64> {
        let Some((_, processed, _, _)) = counts(row).filter(|_| !terminal(row)) else {
            self.forget(row.id);
            return None;
        };
        let at = as_of(row, now);
        let average = elapsed(row, now)
            .filter(|e| *e > 0.0)
            .map(|e| processed / e);
        let mut runs = self.runs();
        let next = match runs.get(&row.id).copied() {
            // Later and further: blend the pace since the last observation in.
            Some(prev) if at > prev.at && processed >= prev.processed => {
                let dt = seconds(prev.at, at);
                let instant = (processed - prev.processed) / dt;
                let alpha = 1.0 - (-dt / SMOOTHING).exp();
                let base = prev.rate.or(average).unwrap_or(instant);
                Observation {
                    at,
                    processed,
                    rate: Some(base + alpha * (instant - base)),
                }
            }
            // The same moment again (a duplicate read), or a state older than the last.
            Some(prev) if at <= prev.at && processed >= prev.processed => prev,
            // First sight, or the count went back (the host restarted the run): start over.
            _ => Observation {
                at,
                processed,
                rate: None,
            },
        };
        runs.insert(row.id, next);
        next.rate
    }

    /// The smoothed rate of a run, if it has one (for reads that are not a new state).
    pub(crate) fn rate(&self, run_id: i64) -> Option<f64> {
        self.runs().get(&run_id).and_then(|o| o.rate)
    }

    /// Drops a run (finished, deleted, or no longer counting).
    pub(crate) fn forget(&self, run_id: i64) {
        self.runs().remove(&run_id);
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.runs().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Duration;
    use serde_json::value::RawValue;

    fn row(status: &str, counts: &str, started: i64, updated: i64, now: DateTime<Utc>) -> RunRow {
        RunRow {
            id: 1,
            workspace_id: 1,
            tenant_id: None,
            run_type: Some("sync".into()),
            status: Some(status.into()),
            outcome: Some("pending".into()),
            summary_counts: Some(RawValue::from_string(counts.into()).unwrap()),
            created_at: Some(now - Duration::seconds(started + 5)),
            started_at: Some(now - Duration::seconds(started)),
            completed_at: None,
            updated_at: Some(now - Duration::seconds(updated)),
            version: Some(1),
        }
    }

    #[test]
    fn a_fresh_run_goes_at_its_average() {
        let now = Utc::now();
        let r = row("running", r#"{"processed":20,"total":100}"#, 10, 0, now);
        let t = timing(&r, None, now);
        assert_eq!(t.elapsed_seconds, Some(10.0));
        let p = t.progress.unwrap();
        assert_eq!(p.fraction, Some(0.2));
        assert_eq!(p.rate_per_second, Some(2.0));
        assert_eq!(p.eta_seconds, Some(40));
        assert_eq!(p.processed.to_string(), "20");
    }

    #[test]
    fn times_are_as_of_updated_at() {
        let now = Utc::now();
        // Last changed 4 s ago: elapsed is 6 s then, whenever it is rendered.
        let r = row("running", r#"{"processed":30,"total":60}"#, 10, 4, now);
        let t = timing(&r, None, now);
        assert_eq!(t.elapsed_seconds, Some(6.0));
        assert_eq!(t.progress.unwrap().eta_seconds, Some(6));
    }

    #[test]
    fn observed_changes_move_the_rate_smoothly() {
        let now = Utc::now();
        let rates = Rates::default();
        let first = row("running", r#"{"processed":20,"total":100}"#, 10, 10, now);
        let mut first = first;
        first.updated_at = Some(now - Duration::seconds(10));
        first.started_at = Some(now - Duration::seconds(20));
        assert_eq!(rates.observe(&first, now), None, "no pace observed yet");
        // 10 s later, 60 more: 6/s now against an average of 1/s before.
        let second = RunRow {
            summary_counts: Some(
                RawValue::from_string(r#"{"processed":80,"total":100}"#.into()).unwrap(),
            ),
            updated_at: Some(now),
            ..first.clone()
        };
        let rate = rates.observe(&second, now).unwrap();
        assert!(rate > 1.0 && rate < 6.0, "between the two: {rate}");
        // A duplicate read of the same state changes nothing.
        assert_eq!(rates.observe(&second, now), Some(rate));
        assert_eq!(rates.rate(1), Some(rate));
        let eta = timing(&second, Some(rate), now)
            .progress
            .unwrap()
            .eta_seconds;
        assert_eq!(eta, Some((20.0 / rate).round() as u64));
        // Finished: forgotten, and the final elapsed time is completed − started.
        let done = RunRow {
            status: Some("completed".into()),
            completed_at: Some(now - Duration::seconds(2)),
            ..second
        };
        assert_eq!(rates.observe(&done, now), None);
        assert_eq!(rates.len(), 0);
        let t = timing(&done, None, now);
        assert_eq!(t.elapsed_seconds, Some(18.0));
        assert_eq!(t.progress.unwrap().eta_seconds, None);
    }

    #[test]
    fn odd_counts_give_no_progress_and_never_panic() {
        let now = Utc::now();
        for counts in [
            r#"{}"#,
            r#"{"processed":1}"#,
            r#"{"processed":"1","total":2}"#,
            r#"{"processed":-1,"total":2}"#,
            r#"[1,2]"#,
            r#"null"#,
            r#"{"processed":1e400,"total":2}"#,
        ] {
            let r = row("running", counts, 10, 0, now);
            assert_eq!(timing(&r, None, now).progress, None, "{counts}");
            assert_eq!(Rates::default().observe(&r, now), None);
        }
        let zero = timing(
            &row("running", r#"{"processed":0,"total":0}"#, 10, 0, now),
            None,
            now,
        );
        let p = zero.progress.unwrap();
        assert_eq!((p.fraction, p.eta_seconds), (None, Some(0)));
        // Not started and never moving: no rate, no ETA.
        let idle = timing(
            &row("queued", r#"{"processed":0,"total":9}"#, 0, 0, now),
            None,
            now,
        );
        assert_eq!(idle.progress.unwrap().eta_seconds, None);
    }
}
