//! What a database holds: its tables and their columns, checked before
//! anything is read.

use std::collections::HashSet;

use rusqlite::Connection;

use crate::error::{ExportError, Result};

pub struct Layout {
    file: &'static str,
    known: &'static str,
    tables: HashSet<String>,
}

fn unreadable(file: &'static str) -> impl Fn(rusqlite::Error) -> ExportError {
    move |source| ExportError::Unreadable { file, source }
}

impl Layout {
    pub fn read(c: &Connection, file: &'static str, known: &'static str) -> Result<Layout> {
        let mut s = c
            .prepare("SELECT name FROM sqlite_master WHERE type = 'table'")
            .map_err(unreadable(file))?;
        let tables = s
            .query_map([], |r| r.get::<_, String>(0))
            .map_err(unreadable(file))?
            .collect::<rusqlite::Result<HashSet<_>>>()
            .map_err(unreadable(file))?;
        Ok(Layout {
            file,
            known,
            tables,
        })
    }

    pub fn has_table(&self, t: &str) -> bool {
        self.tables.contains(t)
    }

    /// The columns of `table` (empty when there is no such table).
    pub fn columns(&self, c: &Connection, table: &str) -> Result<HashSet<String>> {
        if !self.has_table(table) {
            return Ok(HashSet::new());
        }
        let mut s = c
            .prepare(&format!("PRAGMA table_info(\"{table}\")"))
            .map_err(unreadable(self.file))?;
        let cols = s
            .query_map([], |r| r.get::<_, String>(1))
            .map_err(unreadable(self.file))?
            .collect::<rusqlite::Result<HashSet<_>>>()
            .map_err(unreadable(self.file))?;
        Ok(cols)
    }

    /// Refuse the database unless `table` has every column in `need`.
    pub fn require(&self, c: &Connection, table: &str, need: &[&str]) -> Result<HashSet<String>> {
        let have = self.columns(c, table)?;
        let why = if have.is_empty() {
            Some(format!("no table {table}"))
        } else {
            let missing: Vec<&str> = need
                .iter()
                .copied()
                .filter(|n| !have.contains(*n))
                .collect();
            (!missing.is_empty()).then(|| format!("{table} has no {}", missing.join(", ")))
        };
        match why {
            Some(why) => Err(ExportError::UnknownLayout {
                file: self.file,
                why,
                known: self.known,
            }),
            None => Ok(have),
        }
    }

    pub fn unreadable(&self) -> impl Fn(rusqlite::Error) -> ExportError {
        unreadable(self.file)
    }
}

/// `col` when the table has it, else `NULL` (for optional columns in a
/// SELECT).
pub fn or_null(have: &HashSet<String>, col: &str) -> String {
    if have.contains(col) {
        format!("\"{col}\"")
    } else {
        "NULL".into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_layout_without_a_needed_column_is_refused_with_what_is_missing() {
        let c = Connection::open_in_memory().unwrap();
        c.execute_batch("CREATE TABLE message (ROWID INTEGER PRIMARY KEY, text TEXT);")
            .unwrap();
        let l = Layout::read(&c, "sms.db", "iOS 11 to 18").unwrap();
        l.require(&c, "message", &["ROWID", "text"]).unwrap();
        let e = l
            .require(&c, "message", &["text", "date", "is_from_me"])
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "sms.db is not in a layout ibackup knows (message has no date, is_from_me); it reads iOS 11 to 18"
        );
        let e = l.require(&c, "chat", &["ROWID"]).unwrap_err();
        assert!(e.to_string().contains("(no table chat)"), "{e}");
        let cols = l.columns(&c, "message").unwrap();
        assert_eq!(or_null(&cols, "text"), "\"text\"");
        assert_eq!(or_null(&cols, "attributedBody"), "NULL");
    }
}
