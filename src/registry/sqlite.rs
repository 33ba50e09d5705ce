//! [`SqlDb`] on SQLite through rusqlite, for native tests and tools: the registry's SQL runs
//! here exactly as it does in the Durable Object.

use rusqlite::types::{Value, ValueRef};

use super::{SqlDb, SqlValue};
use crate::store::StoreError;

pub struct Sqlite(rusqlite::Connection);

impl Sqlite {
    /// A fresh in-memory database.
    pub fn memory() -> Result<Self, StoreError> {
        rusqlite::Connection::open_in_memory()
            .map(Sqlite)
            .map_err(|e| StoreError(e.to_string()))
    }
}

impl SqlDb for Sqlite {
    fn exec(&self, sql: &str, params: &[SqlValue]) -> Result<Vec<Vec<SqlValue>>, StoreError> {
        let e = |e: rusqlite::Error| StoreError(e.to_string());
        let mut statement = self.0.prepare_cached(sql).map_err(e)?;
        let values: Vec<Value> = params
            .iter()
            .map(|p| match p {
                SqlValue::Null => Value::Null,
                SqlValue::Int(i) => Value::Integer(*i),
                SqlValue::Text(s) => Value::Text(s.clone()),
            })
            .collect();
        let columns = statement.column_count();
        let mut rows = statement.query(rusqlite::params_from_iter(values)).map_err(e)?;
        let mut out = Vec::new();
        while let Some(row) = rows.next().map_err(e)? {
            let mut values = Vec::with_capacity(columns);
            for i in 0..columns {
                values.push(match row.get_ref(i).map_err(e)? {
                    ValueRef::Null => SqlValue::Null,
                    ValueRef::Integer(i) => SqlValue::Int(i),
                    ValueRef::Real(f) => SqlValue::Text(f.to_string()),
                    ValueRef::Text(t) | ValueRef::Blob(t) => {
                        SqlValue::Text(String::from_utf8_lossy(t).into_owned())
                    }
                });
            }
            out.push(values);
        }
        Ok(out)
    }
}
