//! ibackup's own record of a backup's content files: for each file ID, the
//! stored size and the SHA-256 of the stored bytes (ciphertext in an
//! encrypted backup, so it is checked without the password).
//!
//! The Finder format carries a digest for few files since iOS 10 (the
//! MBFile `Digest` is mostly absent), so without this a same-size
//! corruption of a photo could not be told from the photo. A record is an
//! SQLite file beside the snapshot's JSON record
//! (`DIR/.ibackup/snapshots/<UDID>/<ID>.digests.db`); an incremental
//! backup starts from a copy of the previous one and changes only what the
//! device changed.

use std::io::Read;
use std::path::Path;

use rusqlite::{params, Connection, OpenFlags, OptionalExtension};
use sha2::{Digest, Sha256};

use crate::error::Result;

/// Version of the record's layout, kept in `PRAGMA user_version`.
const VERSION: i32 = 1;

/// One file's entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    /// Bytes stored in the backup folder.
    pub size: u64,
    pub sha256: [u8; 32],
}

/// A record being written (during a backup) or read.
pub struct Digests {
    conn: Connection,
}

impl Digests {
    /// Start a record at `path`: a copy of `previous` when given (an
    /// incremental backup), else empty. Anything at `path` is replaced.
    pub fn create(path: &Path, previous: Option<&Path>) -> Result<Digests> {
        let _ = std::fs::remove_file(path);
        if let Some(prev) = previous {
            // Without it the record starts empty: files not received this
            // time are then verified by size only, and said to be.
            if std::fs::copy(prev, path).is_err() {
                let _ = std::fs::remove_file(path);
            }
        }
        let conn = Connection::open(path)?;
        conn.pragma_update(None, "journal_mode", "OFF")?;
        conn.pragma_update(None, "synchronous", "OFF")?;
        let ok = conn
            .query_row("PRAGMA user_version", [], |r| r.get::<_, i32>(0))
            .is_ok_and(|v| v == VERSION);
        if !ok {
            conn.execute_batch(
                "DROP TABLE IF EXISTS files;
                 CREATE TABLE files (id TEXT PRIMARY KEY, size INTEGER NOT NULL, sha256 BLOB NOT NULL) WITHOUT ROWID;",
            )?;
            conn.pragma_update(None, "user_version", VERSION)?;
        }
        conn.execute_batch("BEGIN")?;
        Ok(Digests { conn })
    }

    /// Open a finished record to read it; `None` when there is none (or
    /// it is not one of ours).
    pub fn open(path: &Path) -> Option<Digests> {
        if !path.is_file() {
            return None;
        }
        let conn = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY).ok()?;
        let v: i32 = conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .ok()?;
        (v == VERSION).then_some(Digests { conn })
    }

    pub fn put(&mut self, id: &str, e: Entry) -> Result<()> {
        self.conn.execute(
            "INSERT OR REPLACE INTO files (id, size, sha256) VALUES (?1, ?2, ?3)",
            params![id, e.size as i64, &e.sha256[..]],
        )?;
        Ok(())
    }

    pub fn forget(&mut self, id: &str) -> Result<()> {
        self.conn
            .execute("DELETE FROM files WHERE id = ?1", params![id])?;
        Ok(())
    }

    pub fn get(&self, id: &str) -> Result<Option<Entry>> {
        let row = self
            .conn
            .query_row(
                "SELECT size, sha256 FROM files WHERE id = ?1",
                params![id],
                |r| Ok((r.get::<_, i64>(0)?, r.get::<_, Vec<u8>>(1)?)),
            )
            .optional()?;
        Ok(row.and_then(|(size, d)| {
            Some(Entry {
                size: u64::try_from(size).ok()?,
                sha256: d.try_into().ok()?,
            })
        }))
    }

    /// Every entry, in file ID order.
    pub fn for_each(&self, mut f: impl FnMut(&str, Entry) -> Result<()>) -> Result<()> {
        let mut st = self
            .conn
            .prepare("SELECT id, size, sha256 FROM files ORDER BY id")?;
        let mut rows = st.query([])?;
        while let Some(r) = rows.next()? {
            let id: String = r.get(0)?;
            let size: i64 = r.get(1)?;
            let d: Vec<u8> = r.get(2)?;
            if let (Ok(size), Ok(sha256)) = (u64::try_from(size), d.try_into()) {
                f(&id, Entry { size, sha256 })?;
            }
        }
        Ok(())
    }

    /// Write everything out and close.
    pub fn finish(self) -> Result<()> {
        if !self.conn.is_autocommit() {
            self.conn.execute_batch("COMMIT")?;
        }
        Ok(())
    }
}

/// A digest taken piece by piece, as a file arrives.
#[derive(Default)]
pub struct Hasher {
    h: Sha256,
    size: u64,
}

impl Hasher {
    pub fn update(&mut self, bytes: &[u8]) {
        self.h.update(bytes);
        self.size += bytes.len() as u64;
    }

    pub fn finish(self) -> Entry {
        Entry {
            size: self.size,
            sha256: self.h.finalize().into(),
        }
    }
}

thread_local! {
    /// One read buffer per thread, reused: a fresh one per file would be
    /// zeroed again for every small file (most of a backup's).
    static BUF: std::cell::RefCell<Vec<u8>> = std::cell::RefCell::new(vec![0u8; 256 * 1024]);
}

/// The size and SHA-256 of what `f` holds, read to its end.
pub fn sha256_of(mut f: impl Read) -> std::io::Result<Entry> {
    BUF.with(|buf| {
        let mut buf = buf.borrow_mut();
        let mut h = Sha256::new();
        let mut size = 0u64;
        loop {
            let n = match f.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            h.update(&buf[..n]);
            size += n as u64;
        }
        Ok(Entry {
            size,
            sha256: h.finalize().into(),
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_round_trips_and_a_copy_starts_from_the_previous() {
        let t = tempfile::tempdir().unwrap();
        let a = t.path().join("a.db");
        let mut d = Digests::create(&a, None).unwrap();
        let e1 = sha256_of(&b"hello"[..]).unwrap();
        assert_eq!(e1.size, 5);
        assert_eq!(
            hex::encode(e1.sha256),
            "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"
        );
        d.put("aa11", e1).unwrap();
        d.put("bb22", sha256_of(&b"world"[..]).unwrap()).unwrap();
        d.finish().unwrap();

        let b = t.path().join("b.db");
        let mut d = Digests::create(&b, Some(&a)).unwrap();
        d.forget("bb22").unwrap();
        d.put("cc33", sha256_of(&b""[..]).unwrap()).unwrap();
        d.finish().unwrap();

        let a = Digests::open(&a).unwrap();
        assert!(
            a.get("bb22").unwrap().is_some(),
            "the previous is untouched"
        );
        let b = Digests::open(&b).unwrap();
        assert_eq!(b.get("aa11").unwrap(), Some(e1));
        assert_eq!(b.get("bb22").unwrap(), None);
        let mut ids = Vec::new();
        b.for_each(|id, _| {
            ids.push(id.to_string());
            Ok(())
        })
        .unwrap();
        assert_eq!(ids, ["aa11", "cc33"]);
        assert!(Digests::open(&t.path().join("none.db")).is_none());
        std::fs::write(t.path().join("junk.db"), b"not sqlite").unwrap();
        assert!(Digests::open(&t.path().join("junk.db")).is_none());
    }
}
