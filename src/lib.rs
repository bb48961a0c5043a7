//! runwire pushes status changes of operation runs and tenant review packs from Postgres to
//! browsers over Server-Sent Events, replacing the host app's `wire:poll` timers.
//!
//! Data flows one way:
//!
//! ```text
//! Postgres trigger ─NOTIFY─▶ watch::Watcher ─re-read─▶ watch::Hub cell ─▶ stream::driver ─SSE─▶ client
//!                                  └─access changes─▶ access::Epochs ─(gate)─┘
//! ```
//!
//! * [`watch`] owns the single process-wide `LISTEN` connection. A notification is only a
//!   doorbell: the watcher applies the access changes of a burst first, re-reads the rows (one
//!   query per burst) and publishes the new states into the hub, which keeps one shared cell
//!   per watched item. It knows nothing about HTTP.
//! * [`stream`] runs every stream in one driver: it turns a cell's states into SSE messages
//!   (snapshot, update, end), passes each through the access gate, and decides when a stream
//!   ends. It never talks to the listener.
//! * [`access`] verifies tokens, holds every 401/403/404 rule, and the epochs and grants
//!   that say whether a decision is still current.
//! * [`http`] is the axum router, handlers, the error type, the embedded static files, and
//!   the connection front that hands SSE sockets to the stream driver (hyper serves
//!   everything else). [`wire`] writes every HTTP/1.1 byte that is written by hand.
//! * [`model`] defines the state of a watched item and the one definition of "terminal";
//!   [`progress`] adds a run's elapsed time, progress and ETA to it (rendered once per state).
//! * [`ops`] keeps the operations metrics (active runs and packs, finishes, durations) from
//!   the changes the watcher sees; [`metrics`] serves them with runwire's and the process's.
//! * [`store`] holds every SQL statement runwire runs on the host's data; [`schema`] installs
//!   and checks what runwire needs of the database (`migrations/`).

#![warn(unreachable_pub)]

mod access;
mod app;
mod cli;
mod config;
mod demo;
mod embedded_pg;
mod http;
mod metrics;
mod model;
mod ops;
mod progress;
mod schema;
mod store;
mod stream;
mod telemetry;
mod watch;
mod wire;

// The public surface: what the binary, the tests, the fuzz targets and the load generator
// use. Everything else is the crate's own (and `unreachable_pub` keeps it that way).
pub use access::batch::database_unavailable;
pub use access::token::now_secs;
pub use access::token::{TokenScope, Tokens};
pub use app::{connect_options, pool_options, Running, Server};
pub use cli::run;
pub use config::{Cli, Settings};
pub use embedded_pg::EmbeddedPostgres;
pub use model::ChangeSource;
pub use schema::{create_host_tables, migrate, missing_notify, Changes};

/// Pure functions that parse what clients and Postgres send, for the fuzz targets.
pub mod parsing {
    pub use crate::http::front::parse_head;
    pub use crate::http::params::{parse_id, parse_item_lists, MAX_ITEMS, MAX_WORKSPACES};
    pub use crate::stream::items::already_seen;
    pub use crate::stream::sse::event as sse_event;
    pub use crate::watch::Doorbell;
}
