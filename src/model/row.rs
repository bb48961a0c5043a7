//! The rows runwire reads, and how their columns are interpreted — once, for both ways a row
//! arrives: a query (`store`) and a logical-replication message (`watch::wal`). Both hand the
//! columns over as text or integers through [`Columns`], so a row decodes to the same state
//! whichever way it came (the same JSON, byte for byte: event ids in WAL mode depend on it).
//!
//! The column contract (docs/api.md): ids are `int2`/`int4`/`int8`; `status`, `outcome`,
//! `type` any text type; `summary_counts` `json`, `jsonb` or text holding JSON, NULL allowed;
//! timestamps `timestamp` (read as UTC, Laravel's default) or `timestamptz`. A value that does
//! not decode makes the row *unreadable*, naming the column: its streams end with a reason
//! instead of stalling.

use chrono::{DateTime, NaiveDateTime, Utc};
use serde_json::value::RawValue;

/// A column that could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{table}.{column}: {why}")]
pub(crate) struct BadColumn {
    pub table: &'static str,
    pub column: &'static str,
    pub why: String,
}

/// Access to one row's columns by name: integers, and everything else as its text.
pub(crate) trait Columns {
    /// An integer column (None: NULL). Err: not an integer.
    fn int(&self, column: &'static str) -> Result<Option<i64>, String>;
    /// Any column as text (None: NULL).
    fn text(&self, column: &'static str) -> Result<Option<&str>, String>;
}

/// One row of `operation_runs`, as read by runwire.
#[derive(Debug, Clone)]
pub(crate) struct RunRow {
    pub id: i64,
    pub workspace_id: i64,
    pub tenant_id: Option<i64>,
    pub run_type: Option<String>,
    pub status: Option<String>,
    pub outcome: Option<String>,
    /// JSON as the host wrote it (`json` keeps its text, `jsonb` its canonical form).
    pub summary_counts: Option<Box<RawValue>>,
    pub created_at: Option<DateTime<Utc>>,
    pub started_at: Option<DateTime<Utc>>,
    pub completed_at: Option<DateTime<Utc>>,
    pub updated_at: Option<DateTime<Utc>>,
    /// The `version` column of the NOTIFY integration; None in WAL mode, which has none.
    pub version: Option<i64>,
}

/// One review pack (a tenant's card shows the latest).
#[derive(Debug, Clone)]
pub(crate) struct PackRow {
    pub id: i64,
    pub status: Option<String>,
    pub created_at: Option<DateTime<Utc>>,
    pub generated_at: Option<DateTime<Utc>>,
    pub expires_at: Option<DateTime<Utc>>,
    pub updated_at: Option<DateTime<Utc>>,
    pub version: Option<i64>,
}

/// What identifies a row and its owner even when another column is unreadable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RowKey {
    pub id: i64,
    pub workspace_id: Option<i64>,
    pub tenant_id: Option<i64>,
}

/// A row that decoded, or the key of one that did not and the column at fault.
pub(crate) type Decoded<T> = Result<T, (Option<RowKey>, BadColumn)>;

struct Reader<'a, C: Columns + ?Sized> {
    table: &'static str,
    columns: &'a C,
}

impl<C: Columns + ?Sized> Reader<'_, C> {
    fn bad(&self, column: &'static str, why: impl Into<String>) -> BadColumn {
        BadColumn {
            table: self.table,
            column,
            why: why.into(),
        }
    }

    fn int(&self, column: &'static str) -> Result<Option<i64>, BadColumn> {
        self.columns.int(column).map_err(|e| self.bad(column, e))
    }

    fn required_int(&self, column: &'static str) -> Result<i64, BadColumn> {
        self.int(column)?.ok_or_else(|| self.bad(column, "NULL"))
    }

    fn text(&self, column: &'static str) -> Result<Option<String>, BadColumn> {
        let text = self.columns.text(column).map_err(|e| self.bad(column, e))?;
        Ok(text.map(str::to_owned))
    }

    fn json(&self, column: &'static str) -> Result<Option<Box<RawValue>>, BadColumn> {
        let Some(text) = self.columns.text(column).map_err(|e| self.bad(column, e))? else {
            return Ok(None);
        };
        RawValue::from_string(text.to_owned())
            .map(Some)
            .map_err(|e| self.bad(column, format!("not JSON: {e}")))
    }

    fn time(&self, column: &'static str) -> Result<Option<DateTime<Utc>>, BadColumn> {
        let Some(text) = self.columns.text(column).map_err(|e| self.bad(column, e))? else {
            return Ok(None);
        };
        parse_timestamp(text)
            .map(Some)
            .ok_or_else(|| self.bad(column, format!("not a timestamp: {text:?}")))
    }
}

/// A timestamp as Postgres writes it with `DateStyle = ISO` and `TimeZone = UTC`, which
/// runwire sets on every connection: `2026-12-02 05:08:20.123456+00` (`timestamptz`) or the
/// same without the offset (`timestamp`, taken as UTC).
pub(crate) fn parse_timestamp(text: &str) -> Option<DateTime<Utc>> {
    let text = text.trim();
    if let Ok(t) = DateTime::parse_from_str(text, "%Y-%m-%d %H:%M:%S%.f%#z") {
        return Some(t.with_timezone(&Utc));
    }
    NaiveDateTime::parse_from_str(text, "%Y-%m-%d %H:%M:%S%.f")
        .ok()
        .map(|t| t.and_utc())
}

impl RunRow {
    pub(crate) const TABLE: &'static str = "operation_runs";

    pub(crate) fn read(columns: &(impl Columns + ?Sized)) -> Decoded<RunRow> {
        let r = Reader {
            table: Self::TABLE,
            columns,
        };
        let key = (|| {
            Ok(RowKey {
                id: r.required_int("id")?,
                workspace_id: Some(r.required_int("workspace_id")?),
                tenant_id: r.int("tenant_id")?,
            })
        })()
        .map_err(|e| (None, e))?;
        let rest = || -> Result<RunRow, BadColumn> {
            Ok(RunRow {
                id: key.id,
                workspace_id: key.workspace_id.unwrap_or_default(),
                tenant_id: key.tenant_id,
                run_type: r.text("type")?,
                status: r.text("status")?,
                outcome: r.text("outcome")?,
                summary_counts: r.json("summary_counts")?,
                created_at: r.time("created_at")?,
                started_at: r.time("started_at")?,
                completed_at: r.time("completed_at")?,
                updated_at: r.time("updated_at")?,
                version: None,
            })
        };
        rest().map_err(|e| (Some(key), e))
    }
}

impl PackRow {
    pub(crate) const TABLE: &'static str = "review_packs";

    pub(crate) fn read(columns: &(impl Columns + ?Sized)) -> Decoded<PackRow> {
        let r = Reader {
            table: Self::TABLE,
            columns,
        };
        let key = (|| {
            Ok(RowKey {
                id: r.required_int("id")?,
                workspace_id: r.int("workspace_id")?,
                tenant_id: Some(r.required_int("tenant_id")?),
            })
        })()
        .map_err(|e| (None, e))?;
        let rest = || -> Result<PackRow, BadColumn> {
            Ok(PackRow {
                id: key.id,
                status: r.text("status")?,
                created_at: r.time("created_at")?,
                generated_at: r.time("generated_at")?,
                expires_at: r.time("expires_at")?,
                updated_at: r.time("updated_at")?,
                version: None,
            })
        };
        rest().map_err(|e| (Some(key), e))
    }
}

#[cfg(test)]
impl RunRow {
    /// A running run, for unit tests.
    pub(crate) fn running(id: i64, workspace: i64, tenant: Option<i64>, counts: &str) -> RunRow {
        RunRow {
            id,
            workspace_id: workspace,
            tenant_id: tenant,
            run_type: Some("sync".into()),
            status: Some("running".into()),
            outcome: Some("pending".into()),
            summary_counts: Some(RawValue::from_string(counts.into()).expect("JSON")),
            created_at: None,
            started_at: None,
            completed_at: None,
            updated_at: None,
            version: None,
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::collections::HashMap;

    /// Columns from a map of texts, as a replication message carries them.
    pub(crate) struct Texts(pub HashMap<&'static str, Option<String>>);

    impl Columns for Texts {
        fn int(&self, column: &'static str) -> Result<Option<i64>, String> {
            match self.0.get(column).cloned().flatten() {
                None => Ok(None),
                Some(t) => t
                    .parse()
                    .map(Some)
                    .map_err(|_| format!("not an integer: {t:?}")),
            }
        }
        fn text(&self, column: &'static str) -> Result<Option<&str>, String> {
            Ok(self.0.get(column).and_then(|t| t.as_deref()))
        }
    }

    #[test]
    fn timestamps_with_and_without_zone() {
        let with = parse_timestamp("2026-12-02 05:08:20.123456+00").unwrap();
        let without = parse_timestamp("2026-12-02 05:08:20.123456").unwrap();
        assert_eq!(with, without);
        assert_eq!(
            parse_timestamp("2026-12-02 07:08:20+02").unwrap(),
            parse_timestamp("2026-12-02 05:08:20").unwrap()
        );
        assert!(parse_timestamp("infinity").is_none());
        assert!(parse_timestamp("2026-13-02 05:08:20").is_none());
    }

    #[test]
    fn a_bad_column_is_named_and_the_key_kept() {
        let mut t = HashMap::from([
            ("id", Some("7".to_string())),
            ("workspace_id", Some("1".to_string())),
            ("tenant_id", None),
            ("status", Some("running".to_string())),
            ("summary_counts", Some("{not json".to_string())),
        ]);
        let (key, bad) = RunRow::read(&Texts(t.clone())).unwrap_err();
        assert_eq!(key.unwrap().id, 7);
        assert_eq!(
            (bad.table, bad.column),
            ("operation_runs", "summary_counts")
        );
        t.insert("summary_counts", None);
        let row = RunRow::read(&Texts(t)).unwrap();
        assert!(row.summary_counts.is_none() && row.run_type.is_none());
    }
}
