//! Manifest.db: the SQLite index of a backup.
//!
//! Schema and header facts as iOS writes them (fact sheet §3.1): table
//! `Files(fileID, domain, relativePath, flags, file)` with three indexes and
//! an empty `Properties` table; page size 4096, `user_version` 2, WAL mode
//! recorded in the header, no `-wal`/`-shm` left beside the file.

use std::path::Path;

use rusqlite::{params, Connection, OpenFlags, OptionalExtension};

use crate::error::{Result, StoreError};
use crate::mbfile::MbFile;
use crate::paths;

const SCHEMA: &str = "
CREATE TABLE Files (fileID TEXT PRIMARY KEY, domain TEXT, relativePath TEXT, flags INTEGER, file BLOB);
CREATE INDEX FilesDomainIdx ON Files(domain);
CREATE INDEX FilesRelativePathIdx ON Files(relativePath);
CREATE INDEX FilesFlagsIdx ON Files(flags);
CREATE TABLE Properties (key TEXT PRIMARY KEY, value BLOB);
";

/// One row of `Files`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManifestRow {
    pub file_id: String,
    pub domain: String,
    pub relative_path: String,
    pub flags: i64,
    pub file: MbFile,
}

/// Writes a new Manifest.db. Rows go in one transaction; `finish` commits,
/// switches the header to WAL as devices leave it, and checkpoints.
pub struct ManifestWriter {
    conn: Connection,
}

impl ManifestWriter {
    /// Create a fresh database at `path` (which must not exist).
    pub fn create(path: &Path) -> Result<ManifestWriter> {
        if path.exists() {
            return Err(StoreError::Io(std::io::Error::new(
                std::io::ErrorKind::AlreadyExists,
                format!("{} already exists", path.display()),
            )));
        }
        let conn = Connection::open(path)?;
        conn.execute_batch(
            "PRAGMA page_size = 4096; PRAGMA auto_vacuum = INCREMENTAL; PRAGMA user_version = 2;
             PRAGMA journal_mode = DELETE; PRAGMA synchronous = OFF;",
        )?;
        conn.execute_batch(SCHEMA)?;
        conn.execute_batch("BEGIN")?;
        Ok(ManifestWriter { conn })
    }

    /// Continue from an existing database at `path` (a copy the caller
    /// made of a previous index): rows not inserted or deleted stay exactly
    /// as they were, so an index with few changes costs few writes.
    pub fn update(path: &Path) -> Result<ManifestWriter> {
        if !path.is_file() {
            return Err(StoreError::Io(std::io::Error::new(
                std::io::ErrorKind::NotFound,
                format!("{} not found", path.display()),
            )));
        }
        let conn = Connection::open(path)?;
        conn.execute_batch("PRAGMA synchronous = OFF")?;
        conn.query_row("PRAGMA journal_mode = DELETE", [], |_| Ok(()))?;
        conn.execute_batch("BEGIN")?;
        Ok(ManifestWriter { conn })
    }

    /// Remove the row of one entry, if there is one.
    pub fn delete(&mut self, domain: &str, relative_path: &str) -> Result<()> {
        let id = paths::file_id(domain, relative_path);
        let mut stmt = self
            .conn
            .prepare_cached("DELETE FROM Files WHERE fileID = ?1")?;
        stmt.execute(params![id])?;
        Ok(())
    }

    /// Add one entry. The domain and path are validated and the file ID derived.
    pub fn insert(&mut self, domain: &str, file: &MbFile) -> Result<()> {
        paths::check_domain(domain)?;
        paths::check_relative(&file.relative_path)?;
        let id = paths::file_id(domain, &file.relative_path);
        let mut stmt = self.conn.prepare_cached(
            "INSERT OR REPLACE INTO Files (fileID, domain, relativePath, flags, file) VALUES (?1, ?2, ?3, ?4, ?5)",
        )?;
        stmt.execute(params![
            id,
            domain,
            file.relative_path,
            file.kind_flag(),
            file.to_archive()
        ])?;
        Ok(())
    }

    /// Add a row whose record is already encoded (copied from another
    /// Manifest.db); the domain and path are still validated.
    pub fn insert_raw(
        &mut self,
        domain: &str,
        relative_path: &str,
        flags: i64,
        record: &[u8],
    ) -> Result<()> {
        paths::check_domain(domain)?;
        paths::check_relative(relative_path)?;
        let id = paths::file_id(domain, relative_path);
        let mut stmt = self.conn.prepare_cached(
            "INSERT OR REPLACE INTO Files (fileID, domain, relativePath, flags, file) VALUES (?1, ?2, ?3, ?4, ?5)",
        )?;
        stmt.execute(params![id, domain, relative_path, flags, record])?;
        Ok(())
    }

    pub fn finish(self) -> Result<()> {
        self.conn.execute_batch("COMMIT")?;
        self.conn
            .query_row("PRAGMA journal_mode = WAL", [], |_| Ok(()))?;
        self.conn
            .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))?;
        self.conn.close().map_err(|(_, e)| StoreError::Sqlite(e))?;
        Ok(())
    }
}

/// A Manifest.db opened for reading, never written.
pub struct ManifestDb {
    conn: Connection,
}

impl ManifestDb {
    /// Open read-only and immutable: a device-made file is in WAL mode and
    /// would otherwise make SQLite create `-wal`/`-shm` beside it.
    pub fn open(path: &Path) -> Result<ManifestDb> {
        if !path.is_file() {
            return Err(StoreError::Io(std::io::Error::new(
                std::io::ErrorKind::NotFound,
                format!("{} not found", path.display()),
            )));
        }
        let uri = format!("file:{}?immutable=1", uri_escape(&path.to_string_lossy()));
        let conn = Connection::open_with_flags(
            uri,
            OpenFlags::SQLITE_OPEN_READ_ONLY
                | OpenFlags::SQLITE_OPEN_URI
                | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        // Fails here, not later, when the file is not a database (e.g. encrypted).
        conn.query_row("SELECT count(*) FROM Files", [], |_| Ok(()))?;
        Ok(ManifestDb { conn })
    }

    pub fn count(&self) -> Result<u64> {
        Ok(self
            .conn
            .query_row("SELECT count(*) FROM Files", [], |r| r.get::<_, i64>(0))? as u64)
    }

    /// Visit every row in (domain, relativePath) order without holding the
    /// whole list in memory. Rows whose IDs or paths are unsafe are errors.
    pub fn for_each(&self, mut f: impl FnMut(ManifestRow) -> Result<()>) -> Result<()> {
        self.each_row(|row| f(row.map_err(|(_, e)| e)?))
    }

    /// [`ManifestDb::for_each`], but a row that cannot be used (an unsafe
    /// name, a record that does not decode) is handed to `bad` as a
    /// sentence and skipped: one damaged row does not hide the rest.
    pub fn for_each_lenient(
        &self,
        mut f: impl FnMut(ManifestRow) -> Result<()>,
        bad: &mut dyn FnMut(String),
    ) -> Result<()> {
        self.each_row(|row| match row {
            Ok(row) => f(row),
            Err((Some(what), e)) => {
                bad(format!("unusable row: {what}: {e}"));
                Ok(())
            }
            Err((None, _)) => {
                bad("unusable row: a row of Manifest.db has columns of the wrong type".into());
                Ok(())
            }
        })
    }

    /// Every row in (domain, relativePath) order, each decoded or the
    /// reason it cannot be (with `Domain-path (fileID)` where those read).
    fn each_row(
        &self,
        mut f: impl FnMut(std::result::Result<ManifestRow, (Option<String>, StoreError)>) -> Result<()>,
    ) -> Result<()> {
        let mut stmt = self
            .conn
            .prepare("SELECT fileID, domain, relativePath, flags, file FROM Files ORDER BY domain, relativePath")?;
        let mut rows = stmt.query([])?;
        while let Some(r) = rows.next()? {
            let raw = (|| -> rusqlite::Result<_> {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, i64>(3)?,
                    r.get::<_, Option<Vec<u8>>>(4)?,
                ))
            })();
            f(match raw {
                Ok((id, domain, path, flags, blob)) => {
                    let what = format!("{domain}-{path} ({id})");
                    Self::build(id, domain, path, flags, blob).map_err(|e| (Some(what), e))
                }
                Err(e) => Err((None, e.into())),
            })?;
        }
        Ok(())
    }

    /// The distinct domains of the index, without decoding any record.
    pub fn domains(&self) -> Result<Vec<String>> {
        let mut stmt = self
            .conn
            .prepare("SELECT DISTINCT domain FROM Files ORDER BY domain")?;
        let rows = stmt.query_map([], |r| r.get::<_, String>(0))?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Visit every row with its encoded record as stored, decoding it too.
    pub fn for_each_with_record(
        &self,
        mut f: impl FnMut(ManifestRow, &[u8]) -> Result<()>,
    ) -> Result<()> {
        let mut stmt = self
            .conn
            .prepare("SELECT fileID, domain, relativePath, flags, file FROM Files")?;
        let mut rows = stmt.query([])?;
        while let Some(r) = rows.next()? {
            let blob: Vec<u8> = r.get(4)?;
            let row = Self::build(
                r.get(0)?,
                r.get(1)?,
                r.get(2)?,
                r.get(3)?,
                Some(blob.clone()),
            )?;
            f(row, &blob)?;
        }
        Ok(())
    }

    /// `Domain-relativePath` of the row with this file ID, if there is one.
    pub fn name_of(&self, file_id: &str) -> Result<Option<String>> {
        let mut stmt = self
            .conn
            .prepare_cached("SELECT domain, relativePath FROM Files WHERE fileID = ?1")?;
        Ok(stmt
            .query_row(params![file_id], |r| {
                Ok(format!(
                    "{}-{}",
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?
                ))
            })
            .optional()?)
    }

    pub fn get(&self, domain: &str, relative_path: &str) -> Result<Option<ManifestRow>> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT fileID, domain, relativePath, flags, file FROM Files WHERE domain = ?1 AND relativePath = ?2",
        )?;
        let raw = stmt
            .query_row(params![domain, relative_path], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get(1)?,
                    r.get(2)?,
                    r.get(3)?,
                    r.get::<_, Option<Vec<u8>>>(4)?,
                ))
            })
            .optional()?;
        raw.map(|(a, b, c, d, e)| Self::build(a, b, c, d, e))
            .transpose()
    }

    fn build(
        file_id: String,
        domain: String,
        relative_path: String,
        flags: i64,
        blob: Option<Vec<u8>>,
    ) -> Result<ManifestRow> {
        check_names(&file_id, &domain, &relative_path)?;
        let file = match blob {
            Some(b) => MbFile::from_archive(&b)?,
            None => {
                return Err(StoreError::Record(format!(
                    "{domain}-{relative_path}: no file record"
                )))
            }
        };
        Ok(ManifestRow {
            file_id,
            domain,
            relative_path,
            flags,
            file,
        })
    }
}

fn check_names(file_id: &str, domain: &str, relative_path: &str) -> Result<()> {
    if !paths::is_file_id(file_id) {
        return Err(StoreError::UnsafePath {
            path: file_id.to_string(),
            why: "file ID is not 40 lowercase hex digits",
        });
    }
    paths::check_domain(domain)?;
    paths::check_relative(relative_path)
}

fn uri_escape(p: &str) -> String {
    let mut out = String::with_capacity(p.len());
    for c in p.chars() {
        match c {
            '%' => out.push_str("%25"),
            '?' => out.push_str("%3F"),
            '#' => out.push_str("%23"),
            _ => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mbfile::{S_IFDIR, S_IFREG};

    #[test]
    fn write_then_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("Manifest.db");
        let mut w = ManifestWriter::create(&path).unwrap();
        let root = MbFile {
            relative_path: "".into(),
            mode: S_IFDIR | 0o755,
            ..Default::default()
        };
        let file = MbFile {
            relative_path: "Library/SMS/sms.db".into(),
            mode: S_IFREG | 0o644,
            size: 10,
            ..Default::default()
        };
        w.insert("HomeDomain", &root).unwrap();
        w.insert("HomeDomain", &file).unwrap();
        assert!(w
            .insert(
                "HomeDomain",
                &MbFile {
                    relative_path: "../x".into(),
                    ..Default::default()
                }
            )
            .is_err());
        w.finish().unwrap();
        assert!(!dir.path().join("Manifest.db-wal").exists());
        assert!(ManifestWriter::create(&path).is_err());

        let db = ManifestDb::open(&path).unwrap();
        assert_eq!(db.count().unwrap(), 2);
        let mut seen = Vec::new();
        db.for_each(|r| {
            seen.push((r.domain, r.relative_path, r.flags));
            Ok(())
        })
        .unwrap();
        assert_eq!(
            seen,
            vec![
                ("HomeDomain".into(), "".into(), 2),
                ("HomeDomain".into(), "Library/SMS/sms.db".into(), 1)
            ]
        );
        let row = db.get("HomeDomain", "Library/SMS/sms.db").unwrap().unwrap();
        assert_eq!(row.file_id, "3d0d7e5fb2ce288813306e4d4636395e047a3d28");
        assert_eq!(row.file, file);
        assert!(db.get("HomeDomain", "nope").unwrap().is_none());
        // Reading leaves no -wal/-shm behind.
        drop(db);
        assert!(!dir.path().join("Manifest.db-shm").exists());
    }

    #[test]
    fn update_keeps_untouched_rows_and_applies_the_changes() {
        let dir = tempfile::tempdir().unwrap();
        let (old, new) = (dir.path().join("old.db"), dir.path().join("new.db"));
        let file = |path: &str, size| MbFile {
            relative_path: path.into(),
            mode: S_IFREG | 0o644,
            size,
            ..Default::default()
        };
        let mut w = ManifestWriter::create(&old).unwrap();
        for (p, size) in [("a", 1), ("b", 2), ("c", 3)] {
            w.insert("HomeDomain", &file(p, size)).unwrap();
        }
        w.finish().unwrap();
        let before = ManifestDb::open(&old)
            .unwrap()
            .get("HomeDomain", "a")
            .unwrap();

        std::fs::copy(&old, &new).unwrap();
        let mut w = ManifestWriter::update(&new).unwrap();
        w.insert("HomeDomain", &file("b", 20)).unwrap();
        w.delete("HomeDomain", "c").unwrap();
        w.delete("HomeDomain", "never-there").unwrap();
        w.insert("MediaDomain", &file("d", 4)).unwrap();
        w.finish().unwrap();
        for leftover in ["new.db-wal", "new.db-shm", "new.db-journal"] {
            assert!(!dir.path().join(leftover).exists(), "{leftover}");
        }
        // Still in WAL mode, as devices leave it (header bytes 18 and 19).
        assert_eq!(&std::fs::read(&new).unwrap()[18..20], &[2, 2]);

        let db = ManifestDb::open(&new).unwrap();
        let mut seen = Vec::new();
        db.for_each(|r| {
            seen.push((r.domain, r.relative_path, r.file.size));
            Ok(())
        })
        .unwrap();
        let row = |d: &str, p: &str, n| (d.to_string(), p.to_string(), n);
        assert_eq!(
            seen,
            vec![
                row("HomeDomain", "a", 1),
                row("HomeDomain", "b", 20),
                row("MediaDomain", "d", 4)
            ]
        );
        assert_eq!(db.get("HomeDomain", "a").unwrap(), before);
        assert!(ManifestWriter::update(&dir.path().join("missing.db")).is_err());
    }

    #[test]
    fn not_a_database_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("Manifest.db");
        std::fs::write(&path, [0x5a; 8192]).unwrap();
        assert!(ManifestDb::open(&path).is_err());
        assert!(ManifestDb::open(&dir.path().join("missing")).is_err());
    }

    #[test]
    fn hostile_rows_are_refused_on_read() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("Manifest.db");
        let c = Connection::open(&path).unwrap();
        c.execute_batch(SCHEMA).unwrap();
        let f = MbFile {
            relative_path: "x".into(),
            ..Default::default()
        };
        c.execute(
            "INSERT INTO Files VALUES ('../../etc/passwd', 'HomeDomain', 'x', 1, ?1)",
            [f.to_archive()],
        )
        .unwrap();
        drop(c);
        let db = ManifestDb::open(&path).unwrap();
        assert!(db.for_each(|_| Ok(())).is_err());
    }
}
