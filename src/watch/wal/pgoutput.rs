//! Decoding the change messages of the `pgoutput` plugin (protocol version 1): relations,
//! inserts, updates, deletes, truncates. Transaction boundaries and logical messages are
//! decoded by `pgwire-replication`, which hands everything else over as bytes.
//!
//! Column values arrive as text (`t`), NULL (`n`) or "unchanged TOASTed value" (`u`: a large
//! value an update did not touch is not in the message). Relations are described by their
//! own message before their first change, and again after a schema change; a change is
//! decoded by the columns its relation message names, never by position assumptions.
//! Anything malformed is an error (the connection is then replaced), never a panic.

use bytes::{Buf, Bytes};
use std::collections::HashMap;

/// A relation (table) as the stream describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Relation {
    pub id: u32,
    pub namespace: String,
    pub name: String,
    pub columns: Vec<Column>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Column {
    pub name: String,
    /// Part of the replica identity: present in the old key of updates and deletes.
    pub key: bool,
    pub type_oid: u32,
}

/// One column's value in a tuple.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Value {
    Null,
    /// A TOASTed value the change did not touch: not in the message.
    Unchanged,
    Text(Bytes),
}

pub(crate) type Tuple = Vec<Value>;

/// A change message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Change {
    Relation(Relation),
    Insert {
        relation: u32,
        new: Tuple,
    },
    /// `old`: the old key (if the key changed) or the whole old row (`REPLICA IDENTITY
    /// FULL`); None otherwise.
    Update {
        relation: u32,
        old: Option<Tuple>,
        new: Tuple,
    },
    /// `old`: the old key, or the whole old row.
    Delete {
        relation: u32,
        old: Tuple,
    },
    Truncate {
        relations: Vec<u32>,
    },
    /// Types, origins and anything newer: nothing runwire needs.
    Other,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("malformed pgoutput message: {0}")]
pub(crate) struct Malformed(&'static str);

struct Reader(Bytes);

impl Reader {
    fn need(&self, n: usize, what: &'static str) -> Result<(), Malformed> {
        if self.0.remaining() < n {
            return Err(Malformed(what));
        }
        Ok(())
    }
    fn u8(&mut self, what: &'static str) -> Result<u8, Malformed> {
        self.need(1, what)?;
        Ok(self.0.get_u8())
    }
    fn u16(&mut self, what: &'static str) -> Result<u16, Malformed> {
        self.need(2, what)?;
        Ok(self.0.get_u16())
    }
    fn u32(&mut self, what: &'static str) -> Result<u32, Malformed> {
        self.need(4, what)?;
        Ok(self.0.get_u32())
    }
    fn string(&mut self, what: &'static str) -> Result<String, Malformed> {
        let end = self.0.iter().position(|b| *b == 0).ok_or(Malformed(what))?;
        let s = String::from_utf8_lossy(&self.0[..end]).into_owned();
        self.0.advance(end + 1);
        Ok(s)
    }
    fn bytes(&mut self, n: usize, what: &'static str) -> Result<Bytes, Malformed> {
        self.need(n, what)?;
        Ok(self.0.split_to(n))
    }

    fn tuple(&mut self) -> Result<Tuple, Malformed> {
        let n = self.u16("tuple column count")?;
        let mut values = Vec::with_capacity(n as usize);
        for _ in 0..n {
            values.push(match self.u8("tuple column kind")? {
                b'n' => Value::Null,
                b'u' => Value::Unchanged,
                b't' | b'b' => {
                    let len = self.u32("tuple value length")? as usize;
                    Value::Text(self.bytes(len, "tuple value")?)
                }
                _ => return Err(Malformed("tuple column kind")),
            });
        }
        Ok(values)
    }
}

/// Decodes one message (the payload of an XLogData).
pub(crate) fn decode(data: Bytes) -> Result<Change, Malformed> {
    let mut r = Reader(data);
    match r.u8("message type")? {
        b'R' => {
            let id = r.u32("relation id")?;
            let namespace = r.string("namespace")?;
            let name = r.string("relation name")?;
            let _identity = r.u8("replica identity")?;
            let n = r.u16("column count")?;
            let mut columns = Vec::with_capacity(n as usize);
            for _ in 0..n {
                let flags = r.u8("column flags")?;
                let name = r.string("column name")?;
                let type_oid = r.u32("column type")?;
                let _typmod = r.u32("column typmod")?;
                columns.push(Column {
                    name,
                    key: flags & 1 == 1,
                    type_oid,
                });
            }
            Ok(Change::Relation(Relation {
                id,
                namespace,
                name,
                columns,
            }))
        }
        b'I' => {
            let relation = r.u32("relation id")?;
            match r.u8("insert tuple marker")? {
                b'N' => Ok(Change::Insert {
                    relation,
                    new: r.tuple()?,
                }),
                _ => Err(Malformed("insert tuple marker")),
            }
        }
        b'U' => {
            let relation = r.u32("relation id")?;
            let (old, new) = match r.u8("update tuple marker")? {
                b'K' | b'O' => {
                    let old = r.tuple()?;
                    match r.u8("update new tuple marker")? {
                        b'N' => (Some(old), r.tuple()?),
                        _ => return Err(Malformed("update new tuple marker")),
                    }
                }
                b'N' => (None, r.tuple()?),
                _ => return Err(Malformed("update tuple marker")),
            };
            Ok(Change::Update { relation, old, new })
        }
        b'D' => {
            let relation = r.u32("relation id")?;
            match r.u8("delete tuple marker")? {
                b'K' | b'O' => Ok(Change::Delete {
                    relation,
                    old: r.tuple()?,
                }),
                _ => Err(Malformed("delete tuple marker")),
            }
        }
        b'T' => {
            let n = r.u32("truncate relation count")?;
            let _options = r.u8("truncate options")?;
            let relations = (0..n)
                .map(|_| r.u32("truncated relation"))
                .collect::<Result<_, _>>()?;
            Ok(Change::Truncate { relations })
        }
        _ => Ok(Change::Other),
    }
}

/// A tuple's columns by name (through its relation), for `model::row`.
pub(crate) struct Row<'a> {
    pub relation: &'a Relation,
    pub tuple: &'a Tuple,
    /// Column positions by name.
    pub index: &'a HashMap<String, usize>,
}

/// The type OID of `char(n)` (`bpchar`).
const BPCHAR_OID: u32 = 1042;

impl Row<'_> {
    pub(crate) fn value(&self, column: &str) -> Option<&Value> {
        self.index.get(column).and_then(|i| self.tuple.get(*i))
    }

    fn type_oid(&self, column: &str) -> Option<u32> {
        let i = self.index.get(column)?;
        self.relation.columns.get(*i).map(|c| c.type_oid)
    }
}

impl crate::model::Columns for Row<'_> {
    fn int(&self, column: &'static str) -> Result<Option<i64>, String> {
        match self.text(column)? {
            None => Ok(None),
            Some(t) => t
                .parse()
                .map(Some)
                .map_err(|_| format!("not an integer: {t:?}")),
        }
    }

    fn text(&self, column: &'static str) -> Result<Option<&str>, String> {
        match self.value(column) {
            None => Err(format!("no column {column} in {}", self.relation.name)),
            Some(Value::Null) => Ok(None),
            Some(Value::Unchanged) => Err("unchanged TOASTed value, not in the message".into()),
            Some(Value::Text(bytes)) => {
                let text = std::str::from_utf8(bytes).map_err(|_| "not UTF-8".to_string())?;
                // A `char(n)` value comes padded; a query reads it as `text`, which drops the
                // padding: both must read the same.
                Ok(Some(match self.type_oid(column) {
                    Some(BPCHAR_OID) => text.trim_end_matches(' '),
                    _ => text,
                }))
            }
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use bytes::{BufMut, BytesMut};

    /// Encodes a relation message as Postgres would.
    pub(crate) fn relation(id: u32, name: &str, columns: &[(&str, bool)]) -> Bytes {
        let mut b = BytesMut::new();
        b.put_u8(b'R');
        b.put_u32(id);
        b.put_slice(b"public\0");
        b.put_slice(name.as_bytes());
        b.put_u8(0);
        b.put_u8(b'd');
        b.put_u16(columns.len() as u16);
        for (name, key) in columns {
            b.put_u8(u8::from(*key));
            b.put_slice(name.as_bytes());
            b.put_u8(0);
            b.put_u32(25);
            b.put_u32(u32::MAX);
        }
        b.freeze()
    }

    fn put_tuple(b: &mut BytesMut, values: &[Option<&str>]) {
        b.put_u16(values.len() as u16);
        for v in values {
            match v {
                None => b.put_u8(b'n'),
                Some("\u{0}unchanged") => b.put_u8(b'u'),
                Some(t) => {
                    b.put_u8(b't');
                    b.put_u32(t.len() as u32);
                    b.put_slice(t.as_bytes());
                }
            }
        }
    }

    /// An insert (`kind` b'I'), update (b'U', new tuple only) or delete (b'D', key tuple).
    pub(crate) fn change(kind: u8, relation: u32, values: &[Option<&str>]) -> Bytes {
        let mut b = BytesMut::new();
        b.put_u8(kind);
        b.put_u32(relation);
        b.put_u8(match kind {
            b'D' => b'K',
            _ => b'N',
        });
        put_tuple(&mut b, values);
        b.freeze()
    }

    #[test]
    fn decodes_relations_and_changes() {
        let rel = decode(relation(
            7,
            "operation_runs",
            &[("id", true), ("status", false)],
        ));
        let Ok(Change::Relation(rel)) = rel else {
            panic!("{rel:?}")
        };
        assert_eq!((rel.id, rel.name.as_str()), (7, "operation_runs"));
        assert!(rel.columns[0].key && !rel.columns[1].key);
        let insert = decode(change(b'I', 7, &[Some("1"), Some("running")])).unwrap();
        assert_eq!(
            insert,
            Change::Insert {
                relation: 7,
                new: vec![Value::Text("1".into()), Value::Text("running".into())]
            }
        );
        let update = decode(change(b'U', 7, &[Some("1"), Some("\u{0}unchanged")])).unwrap();
        assert!(
            matches!(update, Change::Update { old: None, ref new, .. } if new[1] == Value::Unchanged)
        );
        let delete = decode(change(b'D', 7, &[Some("1"), None])).unwrap();
        assert!(matches!(delete, Change::Delete { ref old, .. } if old[1] == Value::Null));
    }

    #[test]
    fn malformed_messages_are_errors_not_panics() {
        let whole = change(b'I', 7, &[Some("12345"), Some("running")]);
        for cut in 0..whole.len() {
            let part = whole.slice(..cut);
            if cut == 0 {
                assert!(decode(part).is_err());
                continue;
            }
            assert!(decode(part).is_err(), "a message cut at {cut} decoded");
        }
        assert_eq!(decode(Bytes::from_static(b"Yxyz")).unwrap(), Change::Other);
    }
}
