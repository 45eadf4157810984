//! The backup's databases, copied out (decrypted) into a scratch folder
//! inside OUT and opened there.

use std::fs::File;
use std::path::{Path, PathBuf};

use ibackup_store::reader::Backup;
use rusqlite::Connection;

use crate::error::{ExportError, Result};
use crate::output::err;

pub struct Source<'a> {
    pub b: &'a Backup,
    scratch: tempfile::TempDir,
}

/// A database the exporters read: what it is and where the backup has it.
pub struct Db {
    pub what: &'static str,
    pub file: &'static str,
    pub domain: &'static str,
    pub path: &'static str,
}

impl<'a> Source<'a> {
    pub fn new(b: &'a Backup, out: &Path) -> Result<Source<'a>> {
        let scratch = tempfile::Builder::new()
            .prefix(".ibackup-export-")
            .tempdir_in(out)
            .map_err(err(out))?;
        Ok(Source { b, scratch })
    }

    /// Write the file at (`domain`, `path`) to `to`; false when the
    /// backup does not hold it.
    pub fn copy(&self, domain: &str, path: &str, to: &Path) -> Result<bool> {
        let Some(row) = self.b.index.db.get(domain, path)? else {
            return Ok(false);
        };
        let mut f = File::create(to).map_err(err(to))?;
        self.b.read_content(&row, &mut f)?;
        Ok(true)
    }

    /// Open `db` from the backup (with its write-ahead log, when the backup
    /// has one); `None` when the backup does not hold it.
    pub fn open(&self, db: &Db) -> Result<Option<Connection>> {
        let at = self.scratch.path().join(db.file);
        if !self.copy(db.domain, db.path, &at)? {
            return Ok(None);
        }
        let mut wal = at.clone().into_os_string();
        wal.push("-wal");
        self.copy(db.domain, &format!("{}-wal", db.path), &PathBuf::from(wal))?;
        let c = Connection::open(&at).map_err(|source| ExportError::Unreadable {
            file: db.file,
            source,
        })?;
        // A file that is not SQLite opens; the first read says so.
        c.query_row("SELECT COUNT(*) FROM sqlite_master", [], |_| Ok(()))
            .map_err(|source| ExportError::Unreadable {
                file: db.file,
                source,
            })?;
        Ok(Some(c))
    }

    /// [`Source::open`], or the sentence that the backup lacks it.
    pub fn require(&self, db: &Db) -> Result<Connection> {
        self.open(db)?.ok_or(ExportError::NotInBackup {
            what: db.what,
            domain: db.domain,
            path: db.path,
        })
    }
}
