//! runwire pushes status changes of operation runs and tenant review packs from Postgres to
//! browsers over Server-Sent Events, replacing the host app's `wire:poll` timers.
//!
//! Data flows one way:
//!
//! ```text
//! Postgres trigger ─NOTIFY─▶ watch::Watcher ─re-read─▶ watch::Hub cell ─▶ stream::* ─SSE─▶ client
//! ```
//!
//! * [`watch`] owns the single process-wide `LISTEN` connection. A notification is only a
//!   doorbell: the watcher re-reads the rows (one query per burst) and publishes the new state
//!   into the hub, which keeps one shared cell per watched item. It knows nothing about HTTP.
//! * [`stream`] turns a cell's states into SSE messages (snapshot, update, end) and decides
//!   when a stream ends. It never talks to the listener.
//! * [`access`] verifies tokens and holds every 401/403/404 rule.
//! * [`http`] is the axum router, handlers, the error type, the embedded static files, and
//!   the connection front that writes SSE bodies itself (hyper serves everything else).
//! * [`model`] defines run and pack state and the one definition of "terminal".
//! * [`store`] holds every SQL statement runwire runs.

pub mod access;
pub mod app;
pub mod cli;
pub mod config;
pub mod demo;
pub mod embedded_pg;
pub mod http;
pub mod metrics;
pub mod model;
pub mod store;
pub mod stream;
pub mod telemetry;
pub mod watch;
pub mod wire;

pub use app::{connect_database, Server};
pub use config::Settings;

/// Migrations: the host tables (for standalone use) and runwire's triggers, in separate files.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");
