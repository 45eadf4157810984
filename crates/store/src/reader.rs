//! Reading any backup folder, ours or Finder's or libimobiledevice's,
//! plain or encrypted: the index, and each file's content as plaintext,
//! streamed (a file is never held whole in memory).

use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use plist::Value;

use crate::categories::Selection;
use crate::crypto::{CbcDecryptor, CbcEncryptor, Keybag};
use crate::error::{Result, StoreError};
use crate::manifest_db::{ManifestDb, ManifestRow, ManifestWriter};
use crate::mbfile::{FLAG_DIRECTORY, FLAG_FILE};

/// Manifest.plist of a backup folder.
pub fn manifest_plist(backup: &Path) -> Result<plist::Dictionary> {
    let path = backup.join("Manifest.plist");
    match Value::from_file(&path) {
        Ok(Value::Dictionary(d)) => Ok(d),
        Ok(_) => Err(StoreError::Record(format!(
            "{} is not a dictionary",
            path.display()
        ))),
        Err(e) if !path.exists() => Err(StoreError::Record(format!(
            "{} is not a backup (no Manifest.plist): {e}",
            backup.display()
        ))),
        Err(e) => Err(StoreError::Record(format!(
            "{} is unreadable: {e}",
            path.display()
        ))),
    }
}

/// A backup's index, opened: the database (decrypted when it had to be)
/// and, for an encrypted backup, the unlocked keybag and the index's key.
pub struct Index {
    pub db: ManifestDb,
    pub keybag: Option<Keybag>,
    pub manifest_key: Option<[u8; 32]>,
}

/// Manifest.plist's keybag, unlocked with `password`.
fn unlocked_keybag(manifest: &plist::Dictionary, password: &str) -> Result<Keybag> {
    let mut kb = Keybag::parse(
        manifest
            .get("BackupKeyBag")
            .and_then(Value::as_data)
            .unwrap_or_default(),
    )?;
    kb.unlock(password)?
        .map_err(|_| StoreError::WrongPassword)?;
    Ok(kb)
}

/// Whether `password` opens the backup in `backup` (a plain backup takes
/// any): the keybag alone is unlocked, the index is not decrypted.
pub fn check_password(backup: &Path, password: &str) -> Result<()> {
    let manifest = manifest_plist(backup)?;
    if manifest.get("IsEncrypted").and_then(Value::as_boolean) == Some(true) {
        unlocked_keybag(&manifest, password)?;
    }
    Ok(())
}

/// Open the index of `backup`; an encrypted one needs `password` and is
/// decrypted into `scratch` (which must exist).
pub fn open_index(backup: &Path, password: Option<&str>, scratch: &Path) -> Result<Index> {
    let manifest = manifest_plist(backup)?;
    let encrypted = manifest
        .get("IsEncrypted")
        .and_then(Value::as_boolean)
        .unwrap_or(false);
    let db_path = backup.join("Manifest.db");
    let mut head = [0u8; 16];
    let n = File::open(&db_path)?.read(&mut head)?;
    let plain = head[..n].starts_with(b"SQLite format 3\0");
    if !encrypted {
        return Ok(Index {
            db: ManifestDb::open(&db_path)?,
            keybag: None,
            manifest_key: None,
        });
    }
    let password = password.ok_or(StoreError::PasswordRequired)?;
    let kb = unlocked_keybag(&manifest, password)?;
    if plain {
        // Before iOS 10.2 the index stayed plain in encrypted backups.
        return Ok(Index {
            db: ManifestDb::open(&db_path)?,
            keybag: Some(kb),
            manifest_key: None,
        });
    }
    let wrapped = manifest
        .get("ManifestKey")
        .and_then(Value::as_data)
        .ok_or_else(|| StoreError::Record("encrypted backup without ManifestKey".into()))?;
    let key = kb.unwrap_key(wrapped)?;
    let out = scratch.join("Manifest-decrypted.db");
    decrypt_file(&key, &db_path, &out)?;
    Ok(Index {
        db: ManifestDb::open(&out)?,
        keybag: Some(kb),
        manifest_key: Some(key),
    })
}

/// Decrypt `from` into a new file `to`, streaming.
fn decrypt_file(key: &[u8; 32], from: &Path, to: &Path) -> Result<()> {
    let mut input = File::open(from)?;
    let mut output = File::create(to)?;
    decrypt_stream(key, &mut input, &mut output)?;
    Ok(())
}

/// Decrypt everything `input` holds into `output`; the plaintext length.
/// Works in place in one buffer, holding the last block back for the
/// padding.
pub fn decrypt_stream(key: &[u8; 32], input: &mut dyn Read, output: &mut dyn Write) -> Result<u64> {
    const BUF: usize = 1 << 20;
    let mut d = CbcDecryptor::new(key);
    let mut buf = vec![0u8; BUF];
    let mut filled = 0usize;
    let mut total = 0u64;
    loop {
        let n = match input.read(&mut buf[filled..]) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e.into()),
        };
        filled += n;
        if n == 0 || filled == BUF {
            // Everything but the last whole block (and any partial one).
            let keep = match filled % 16 {
                0 => 16,
                r => r,
            }
            .min(filled);
            let ready = filled - keep;
            d.decrypt_in_place(&mut buf[..ready]);
            output.write_all(&buf[..ready])?;
            total += ready as u64;
            buf.copy_within(ready..filled, 0);
            filled = keep;
            if n == 0 {
                break;
            }
        }
    }
    let mut last = Vec::with_capacity(16);
    d.update(&buf[..filled], &mut last);
    d.finish(&mut last)?;
    output.write_all(&last)?;
    Ok(total + last.len() as u64)
}

/// A backup's content files, read as plaintext.
#[derive(Clone, Copy)]
pub struct Contents<'a> {
    path: &'a Path,
    keybag: Option<&'a Keybag>,
    /// Where content may be read from ([`crate::paths::content_bounds`]).
    bounds: &'a [PathBuf],
}

impl Contents<'_> {
    /// Whether the contents are encrypted (files come out decrypted).
    pub fn encrypted(&self) -> bool {
        self.keybag.is_some()
    }

    /// Where a file's content is: `xx/<fileID>` (iOS 10 on) or flat (before).
    pub fn content_path(&self, file_id: &str) -> PathBuf {
        let nested = self.path.join(&file_id[..2]).join(file_id);
        if nested.exists() {
            return nested;
        }
        let flat = self.path.join(file_id);
        if flat.exists() {
            flat
        } else {
            nested
        }
    }

    /// Open a file's content as stored, following no link that leads
    /// outside the backup ([`crate::paths::open_in`]).
    pub fn open(&self, file_id: &str) -> std::io::Result<File> {
        let path = self.content_path(file_id);
        let rel = path.strip_prefix(self.path).unwrap_or(&path);
        crate::paths::open_in(self.path, rel, self.bounds)
    }

    /// Write the plaintext of the file `row` to `out`; its length. A
    /// missing content file of an empty file reads as empty.
    pub fn read(&self, row: &ManifestRow, out: &mut dyn Write) -> Result<u64> {
        let path = self.content_path(&row.file_id);
        let mut input = match self.open(&row.file_id) {
            // Devices may store an empty file's content as nothing at all.
            Ok(f) if row.file.size == 0 && f.metadata()?.len() == 0 => return Ok(0),
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && row.file.size == 0 => {
                return Ok(0)
            }
            Err(e) => {
                return Err(StoreError::Io(std::io::Error::new(
                    e.kind(),
                    format!(
                        "{}-{} ({}): {e}",
                        row.domain,
                        row.relative_path,
                        path.display()
                    ),
                )))
            }
        };
        match (self.keybag, &row.file.encryption_key) {
            (Some(kb), Some(wrapped)) => {
                let key = kb.unwrap_key(wrapped)?;
                decrypt_stream(&key, &mut input, out).map_err(|e| {
                    let why = match e {
                        StoreError::Record(why) => why,
                        other => other.to_string(),
                    };
                    StoreError::Record(format!(
                        "{}-{} does not decrypt: {why}",
                        row.domain, row.relative_path
                    ))
                })
            }
            _ => Ok(std::io::copy(&mut input, out)?),
        }
    }
}

/// An open backup folder.
pub struct Backup {
    pub path: PathBuf,
    pub index: Index,
    bounds: Vec<PathBuf>,
    _scratch: tempfile::TempDir,
}

impl Backup {
    /// Open `path` (a `<UDID>/` folder). Wrong passwords fail here, before
    /// anything is written anywhere.
    pub fn open(path: &Path, password: Option<&str>) -> Result<Backup> {
        let scratch = crate::scratch("index")?;
        let index = open_index(path, password, scratch.path())?;
        Ok(Backup {
            path: path.to_path_buf(),
            index,
            bounds: crate::paths::content_bounds(path),
            _scratch: scratch,
        })
    }

    pub fn encrypted(&self) -> bool {
        self.index.keybag.is_some()
    }

    /// Rows in (domain, path) order.
    pub fn for_each(&self, f: impl FnMut(ManifestRow) -> Result<()>) -> Result<()> {
        self.index.db.for_each(f)
    }

    /// Rows in (domain, path) order; rows that cannot be used go to `bad`
    /// (see [`ManifestDb::for_each_lenient`]).
    pub fn for_each_lenient(
        &self,
        f: impl FnMut(ManifestRow) -> Result<()>,
        bad: &mut dyn FnMut(String),
    ) -> Result<()> {
        self.index.db.for_each_lenient(f, bad)
    }

    /// Where a file's content is: `xx/<fileID>` (iOS 10 on) or flat (before).
    pub fn content_path(&self, file_id: &str) -> PathBuf {
        self.contents().content_path(file_id)
    }

    /// Write the plaintext of the file `row` to `out`; its length.
    pub fn read_content(&self, row: &ManifestRow, out: &mut dyn Write) -> Result<u64> {
        self.contents().read(row, out)
    }

    /// The content files alone, shareable between threads.
    pub fn contents(&self) -> Contents<'_> {
        Contents {
            path: &self.path,
            keybag: self.index.keybag.as_ref(),
            bounds: &self.bounds,
        }
    }

    /// Write a Manifest.db holding only the selected rows (and the folders
    /// above them) to `out`, encrypted with this backup's own index key when
    /// the backup is encrypted (PKCS#7, a full block on aligned input, as
    /// devices write). Returns (rows kept, bytes of the files kept).
    pub fn write_filtered_index(&self, sel: &Selection, out: &Path) -> Result<(u64, u64)> {
        let plain = if self.index.manifest_key.is_some() {
            out.with_extension("plain-db")
        } else {
            out.to_path_buf()
        };
        let _ = std::fs::remove_file(&plain);
        let mut w = ManifestWriter::create(&plain)?;
        let (mut rows, mut bytes) = (0u64, 0u64);
        self.index.db.for_each_with_record(|row, record| {
            let keep = sel.matches(&row.domain, &row.relative_path)
                || (row.flags == FLAG_DIRECTORY
                    && sel.is_ancestor(&row.domain, &row.relative_path));
            if keep {
                w.insert_raw(&row.domain, &row.relative_path, row.flags, record)?;
                rows += 1;
                if row.flags == FLAG_FILE {
                    bytes += row.file.size;
                }
            }
            Ok(())
        })?;
        w.finish()?;
        if let Some(key) = &self.index.manifest_key {
            let mut input = File::open(&plain)?;
            let mut output = File::create(out)?;
            let mut e = CbcEncryptor::new(key);
            let mut buf = vec![0u8; 1 << 20];
            let mut c = Vec::with_capacity(buf.len() + 16);
            loop {
                let n = input.read(&mut buf)?;
                if n == 0 {
                    break;
                }
                c.clear();
                e.update(&buf[..n], &mut c);
                output.write_all(&c)?;
            }
            c.clear();
            e.finish(&mut c);
            output.write_all(&c)?;
            output.sync_all()?;
            drop(input);
            std::fs::remove_file(&plain)?;
        }
        Ok((rows, bytes))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto;
    use crate::mbfile::{MbFile, S_IFDIR, S_IFREG};
    use crate::paths::file_id;

    /// An encrypted backup with three files and a folder, made as a device does.
    fn encrypted_backup(root: &Path) -> (PathBuf, Vec<(String, String, Vec<u8>)>) {
        let b = root.join("U");
        std::fs::create_dir_all(&b).unwrap();
        let mut rng = rand::rngs::OsRng;
        let kb = Keybag::new_backup("pw", 1000, &mut rng).unwrap();
        let files = vec![
            (
                "CameraRollDomain".to_string(),
                "Media/DCIM/100APPLE/IMG_0001.JPG".to_string(),
                vec![7u8; 100_000],
            ),
            (
                "HomeDomain".to_string(),
                "Library/SMS/sms.db".to_string(),
                b"sms".to_vec(),
            ),
            (
                "HomeDomain".to_string(),
                "Library/Preferences/x.plist".to_string(),
                vec![],
            ),
        ];
        let plain_db = root.join("plain.db");
        let mut w = ManifestWriter::create(&plain_db).unwrap();
        for (d, p) in [
            ("HomeDomain", "Library"),
            ("HomeDomain", "Library/SMS"),
            ("HomeDomain", "Library/Preferences"),
        ] {
            w.insert(
                d,
                &MbFile {
                    relative_path: p.into(),
                    mode: S_IFDIR | 0o755,
                    ..Default::default()
                },
            )
            .unwrap();
        }
        for (i, (d, p, body)) in files.iter().enumerate() {
            let key = [i as u8 + 1; 32];
            let id = file_id(d, p);
            std::fs::create_dir_all(b.join(&id[..2])).unwrap();
            std::fs::write(b.join(&id[..2]).join(&id), crypto::encrypt(&key, body)).unwrap();
            w.insert(
                d,
                &MbFile {
                    relative_path: p.clone(),
                    mode: S_IFREG | 0o644,
                    size: body.len() as u64,
                    protection_class: 3,
                    encryption_key: Some(kb.wrap_key(3, &key).unwrap()),
                    ..Default::default()
                },
            )
            .unwrap();
        }
        w.finish().unwrap();
        crate::testing::seal_index(&b, &kb, &std::fs::read(&plain_db).unwrap(), [9u8; 32]);
        (b, files)
    }

    #[test]
    fn streaming_decryption_crosses_buffer_boundaries_and_checks_padding() {
        let key = [3u8; 32];
        for len in [
            0usize,
            1,
            15,
            16,
            17,
            (1 << 20) - 16,
            1 << 20,
            3 * (1 << 20) + 5,
        ] {
            let plain: Vec<u8> = (0..len).map(|i| (i * 7 % 251) as u8).collect();
            let cipher = crypto::encrypt(&key, &plain);
            let mut out = Vec::new();
            let n = decrypt_stream(&key, &mut &cipher[..], &mut out).unwrap();
            assert_eq!((n as usize, out == plain), (len, true), "length {len}");
            // Truncated or wrongly keyed content is an error, never silent garbage.
            let mut sink = Vec::new();
            assert!(decrypt_stream(&key, &mut &cipher[..cipher.len() - 1], &mut sink).is_err());
            let mut sink = Vec::new();
            assert!(
                decrypt_stream(&[4u8; 32], &mut &cipher[..], &mut sink).is_err()
                    || len > 0 && sink != plain
            );
        }
    }

    #[test]
    fn reads_every_file_of_an_encrypted_backup_and_refuses_a_wrong_password() {
        let t = tempfile::tempdir().unwrap();
        let (b, files) = encrypted_backup(t.path());
        assert!(matches!(
            Backup::open(&b, Some("wrong")),
            Err(StoreError::WrongPassword)
        ));
        assert!(Backup::open(&b, None).is_err());
        let backup = Backup::open(&b, Some("pw")).unwrap();
        assert!(backup.encrypted());
        let mut seen = 0;
        backup
            .for_each(|row| {
                if row.flags == FLAG_FILE {
                    let want = files
                        .iter()
                        .find(|f| f.0 == row.domain && f.1 == row.relative_path)
                        .unwrap();
                    let mut got = Vec::new();
                    backup.read_content(&row, &mut got).unwrap();
                    assert_eq!(got, want.2, "{}", row.relative_path);
                    seen += 1;
                }
                Ok(())
            })
            .unwrap();
        assert_eq!(seen, 3);
    }

    #[test]
    fn a_filtered_index_keeps_the_selection_and_its_folders_encrypted_with_the_same_key() {
        let t = tempfile::tempdir().unwrap();
        let (b, _) = encrypted_backup(t.path());
        let backup = Backup::open(&b, Some("pw")).unwrap();
        let sel = Selection::parse(&["messages".into()], &[]).unwrap();
        let out = t.path().join("filtered.db");
        let (rows, bytes) = backup.write_filtered_index(&sel, &out).unwrap();
        assert_eq!((rows, bytes), (3, 3), "Library, Library/SMS, sms.db");
        let cipher = std::fs::read(&out).unwrap();
        assert_eq!(
            cipher.len() % 4096,
            16,
            "a full padding block after whole pages"
        );
        let key = backup.index.manifest_key.unwrap();
        let plain = crypto::decrypt(&key, &cipher).unwrap();
        let p = t.path().join("check.db");
        std::fs::write(&p, plain).unwrap();
        let db = ManifestDb::open(&p).unwrap();
        let mut names = Vec::new();
        db.for_each(|r| {
            names.push(r.relative_path);
            Ok(())
        })
        .unwrap();
        assert_eq!(names, ["Library", "Library/SMS", "Library/SMS/sms.db"]);
    }
}
