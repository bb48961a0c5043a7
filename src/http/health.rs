//! What `/readyz` reports, and why.
//!
//! Ready means a new request would be served: start-up is over (the database was reached and
//! migrated), the listener is connected, and the tables runwire reads answer within a short
//! time (a host migration holding a lock on them makes runwire not ready). Otherwise the
//! answer says why, in words an operator can act on ("connection refused", "password
//! authentication failed", "canceling statement due to statement timeout").
//!
//! Probes come every few seconds for as long as an outage lasts, so a failure is logged once,
//! at WARN, when the verdict changes, not at every probe.

use super::AppState;
use crate::store;
use std::sync::Mutex;
use std::time::Duration;

/// How long a readiness probe may take before it counts as a failure.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// Start-up progress and the last verdict, shared by the start-up task and `/readyz`.
#[derive(Debug)]
pub(crate) struct Health {
    /// Why start-up is not over yet (None once it is).
    starting: Mutex<Option<String>>,
    /// What the last probe found (None: ready), to log changes only.
    last: Mutex<Option<Option<Problem>>>,
}

/// Which part is not ready; a change of part (not of wording) is a new state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Problem {
    Starting,
    Listener,
    Database,
}

impl Default for Health {
    fn default() -> Self {
        Health {
            starting: Mutex::new(None),
            last: Mutex::new(None),
        }
    }
}

impl Health {
    /// Health of a process still starting up, for `why`.
    pub(crate) fn starting(why: impl Into<String>) -> Self {
        let health = Health::default();
        health.set_starting(why);
        health
    }

    /// Start-up is waiting for something (the database, migrations).
    pub(crate) fn set_starting(&self, why: impl Into<String>) {
        *lock(&self.starting) = Some(why.into());
    }

    pub(crate) fn started(&self) {
        *lock(&self.starting) = None;
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A readiness verdict.
pub(crate) struct Readiness {
    pub database: bool,
    pub listener: bool,
    /// Why not ready (None: ready).
    pub reason: Option<String>,
}

/// Checks readiness, logging when the verdict changes.
pub(crate) async fn check(app: &AppState) -> Readiness {
    let listener = app.listener.is_connected();
    let starting = lock(&app.health.starting).clone();
    let (database, problem) = match starting {
        Some(why) => (false, Some((Problem::Starting, format!("starting: {why}")))),
        None => {
            let probe = tokio::time::timeout(PROBE_TIMEOUT, store::probe(&app.pool)).await;
            let database = match probe {
                Ok(Ok(())) => Ok(()),
                Ok(Err(e)) => Err(format!("database: {e}")),
                Err(_) => Err(format!(
                    "database: no answer within {PROBE_TIMEOUT:?} (a table locked, or the server overloaded)"
                )),
            };
            match database {
                Err(why) => (false, Some((Problem::Database, why))),
                Ok(()) if !listener => (
                    true,
                    Some((
                        Problem::Listener,
                        "listener: not connected to the database (reconnecting)".to_string(),
                    )),
                ),
                Ok(()) => (true, None),
            }
        }
    };
    let verdict = problem.as_ref().map(|(p, _)| *p);
    let changed = lock(&app.health.last).replace(verdict) != Some(verdict);
    if changed {
        match &problem {
            Some((_, why)) => tracing::warn!(reason = %why, "not ready"),
            None => tracing::info!("ready"),
        }
    }
    Readiness {
        database,
        listener,
        reason: problem.map(|(_, why)| why),
    }
}
