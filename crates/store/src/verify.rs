//! Checking a backup folder: is it a complete backup whose index can be
//! read and whose every file is present, of the right size and, where the
//! device recorded one, of the right digest?

use std::collections::HashSet;
use std::path::Path;

use plist::Value;
use sha1::{Digest, Sha1};

use crate::error::{Result, StoreError};
use crate::mbfile::FLAG_FILE;
use crate::reader::open_index;

/// What a verification found.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Report {
    pub files: u64,
    pub bytes: u64,
    pub encrypted: bool,
    /// Things that make the backup unusable or incomplete (at most
    /// MAX_LISTED of a kind, then a line with the count of the rest).
    pub problems: Vec<String>,
    /// How many problems there are, listed or not.
    pub problem_count: u64,
    /// Things worth knowing that do not (stray files, Size quirks).
    pub warnings: Vec<String>,
}

impl Report {
    pub fn is_sound(&self) -> bool {
        self.problems.is_empty()
    }
}

/// At most this many problems are listed; the count says the rest.
pub const MAX_LISTED: usize = 50;

pub(crate) fn note(list: &mut Vec<String>, total: &mut u64, s: String) {
    *total += 1;
    if list.len() < MAX_LISTED {
        list.push(s);
    }
}

/// Close a list [`note`] filled: a last line counts what it left out.
pub(crate) fn and_more(list: &mut Vec<String>, total: u64, what: &str) {
    if total > list.len() as u64 {
        list.push(format!("… and {} more{what}", total - list.len() as u64));
    }
}

fn dict(path: &Path) -> std::result::Result<plist::Dictionary, String> {
    match Value::from_file(path) {
        Ok(Value::Dictionary(d)) => Ok(d),
        Ok(_) => Err(format!("{} is not a dictionary", path.display())),
        Err(e) => Err(format!("{} is unreadable: {e}", path.display())),
    }
}

/// Verify the backup folder `backup` (a `<UDID>/` folder).
pub fn verify(backup: &Path, password: Option<&str>, scratch: &Path) -> Result<Report> {
    let mut r = Report::default();
    if !backup.is_dir() {
        r.problems
            .push(format!("{} is not a folder", backup.display()));
        r.problem_count = 1;
        return Ok(r);
    }
    for name in ["Info.plist", "Manifest.plist", "Status.plist"] {
        if let Err(e) = dict(&backup.join(name)) {
            r.problems.push(e);
        }
    }
    if let Ok(status) = dict(&backup.join("Status.plist")) {
        let state = status
            .get("SnapshotState")
            .and_then(Value::as_string)
            .unwrap_or("missing");
        if state != "finished" {
            r.problems.push(format!(
                "Status.plist says the backup is not finished (SnapshotState {state})"
            ));
        }
    }
    let (db, keybag) = match open_index(backup, password, scratch) {
        Ok(x) => (x.db, x.keybag),
        Err(StoreError::WrongPassword) => return Err(StoreError::WrongPassword),
        Err(e) => {
            r.problems.push(format!("Manifest.db cannot be read: {e}"));
            r.problem_count = r.problems.len() as u64;
            return Ok(r);
        }
    };
    r.encrypted = keybag.is_some();
    let mut listed: HashSet<String> = HashSet::new();
    let (mut n_problems, mut n_warnings) = (0u64, 0u64);
    let mut problems = Vec::new();
    let mut warnings = Vec::new();
    let walk = db.for_each(|row| {
        if row.flags != FLAG_FILE {
            return Ok(());
        }
        r.files += 1;
        let name = format!("{}-{}", row.domain, row.relative_path);
        let path = backup.join(&row.file_id[..2]).join(&row.file_id);
        listed.insert(row.file_id.clone());
        let Ok(md) = std::fs::metadata(&path) else {
            note(&mut problems, &mut n_problems, format!("missing: {name} ({})", row.file_id));
            return Ok(());
        };
        r.bytes += md.len();
        let size = row.file.size;
        if r.encrypted {
            if md.len() != size / 16 * 16 + 16 {
                note(&mut warnings, &mut n_warnings, format!("{name}: stored {} bytes for Size {size} (Size is unreliable for files changed during a backup)", md.len()));
            }
        } else if md.len() != size {
            note(&mut problems, &mut n_problems, format!("wrong size: {name} is {} bytes, the index says {size}", md.len()));
        }
        if let Some(want) = &row.file.digest {
            let mut h = Sha1::new();
            let mut f = std::fs::File::open(&path)?;
            std::io::copy(&mut f, &mut h)?;
            if h.finalize().as_slice() != want.as_slice() {
                note(&mut problems, &mut n_problems, format!("damaged: {name} does not match its recorded digest"));
            }
        }
        Ok(())
    });
    if let Err(e) = walk {
        r.problems.push(format!("Manifest.db has a bad row: {e}"));
    }
    for e in std::fs::read_dir(backup)?.flatten() {
        let dir_name = e.file_name().to_string_lossy().into_owned();
        if dir_name.len() != 2 || !e.path().is_dir() {
            continue;
        }
        for f in std::fs::read_dir(e.path())?.flatten() {
            let id = f.file_name().to_string_lossy().into_owned();
            if !listed.contains(&id) {
                note(
                    &mut warnings,
                    &mut n_warnings,
                    format!("stray file not in the index: {dir_name}/{id}"),
                );
            }
        }
    }
    and_more(&mut problems, n_problems, " problems");
    and_more(&mut warnings, n_warnings, " warnings");
    r.problem_count = r.problems.len() as u64 + n_problems;
    r.problems.extend(problems);
    r.warnings.extend(warnings);
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::{self, Keybag};
    use crate::manifest_db::ManifestDb;
    use crate::manifest_db::ManifestWriter;
    use crate::mbfile::{MbFile, S_IFREG};
    use crate::paths::file_id;
    use std::path::PathBuf;

    fn plain_backup(root: &Path) -> PathBuf {
        let b = root.join("U");
        std::fs::create_dir_all(&b).unwrap();
        let mut w = ManifestWriter::create(&b.join("Manifest.db")).unwrap();
        for (path, body, digest) in [
            ("a.txt", &b"hello"[..], true),
            ("b.txt", &b"world!"[..], false),
        ] {
            let id = file_id("HomeDomain", path);
            std::fs::create_dir_all(b.join(&id[..2])).unwrap();
            std::fs::write(b.join(&id[..2]).join(&id), body).unwrap();
            let d = digest.then(|| Sha1::digest(body).to_vec());
            w.insert(
                "HomeDomain",
                &MbFile {
                    relative_path: path.into(),
                    mode: S_IFREG | 0o644,
                    size: body.len() as u64,
                    digest: d,
                    ..Default::default()
                },
            )
            .unwrap();
        }
        w.finish().unwrap();
        let mut status = plist::Dictionary::new();
        status.insert("SnapshotState".into(), Value::from("finished"));
        Value::Dictionary(status)
            .to_file_xml(b.join("Status.plist"))
            .unwrap();
        let mut m = plist::Dictionary::new();
        m.insert("IsEncrypted".into(), Value::Boolean(false));
        Value::Dictionary(m)
            .to_file_xml(b.join("Manifest.plist"))
            .unwrap();
        Value::Dictionary(plist::Dictionary::new())
            .to_file_xml(b.join("Info.plist"))
            .unwrap();
        b
    }

    #[test]
    fn encrypted_backups_need_the_right_password() {
        let t = tempfile::tempdir().unwrap();
        let b = plain_backup(t.path());
        let mut rng = rand::rngs::OsRng;
        let kb = Keybag::new_backup("pw", 1000, &mut rng).unwrap();
        // Re-store the two files encrypted, and the index under class 4.
        let db = ManifestDb::open(&b.join("Manifest.db")).unwrap();
        let mut rows = Vec::new();
        db.for_each(|r| {
            rows.push(r);
            Ok(())
        })
        .unwrap();
        drop(db);
        std::fs::remove_file(b.join("Manifest.db")).unwrap();
        let mut w = ManifestWriter::create(&b.join("Manifest.db")).unwrap();
        for mut r in rows {
            let p = b.join(&r.file_id[..2]).join(&r.file_id);
            let key = [5u8; 32];
            let c = crypto::encrypt(&key, &std::fs::read(&p).unwrap());
            std::fs::write(&p, &c).unwrap();
            r.file.encryption_key = Some(kb.wrap_key(3, &key).unwrap());
            r.file.digest = r.file.digest.map(|_| Sha1::digest(&c).to_vec());
            w.insert(&r.domain, &r.file).unwrap();
        }
        w.finish().unwrap();
        let plain = std::fs::read(b.join("Manifest.db")).unwrap();
        crate::testing::seal_index(&b, &kb, &plain, [6u8; 32]);

        let r = verify(&b, Some("pw"), t.path()).unwrap();
        assert!(
            r.is_sound() && r.encrypted && r.files == 2,
            "{:?}",
            r.problems
        );
        assert!(matches!(
            verify(&b, Some("nope"), t.path()),
            Err(StoreError::WrongPassword)
        ));
        let r = verify(&b, None, t.path()).unwrap();
        assert!(
            r.problems.iter().any(|p| p.contains("password")),
            "{:?}",
            r.problems
        );
    }

    #[test]
    fn a_sound_backup_passes_and_each_kind_of_damage_is_found() {
        let t = tempfile::tempdir().unwrap();
        let b = plain_backup(t.path());
        let r = verify(&b, None, t.path()).unwrap();
        assert!(r.is_sound(), "{:?}", r.problems);
        assert_eq!(r.files, 2);

        let a = file_id("HomeDomain", "a.txt");
        std::fs::write(b.join(&a[..2]).join(&a), b"HELLO").unwrap();
        let r = verify(&b, None, t.path()).unwrap();
        assert!(
            r.problems.iter().any(|p| p.contains("digest")),
            "{:?}",
            r.problems
        );

        let bb = file_id("HomeDomain", "b.txt");
        std::fs::remove_file(b.join(&bb[..2]).join(&bb)).unwrap();
        std::fs::write(
            b.join("ff")
                .join("ff00000000000000000000000000000000000000"),
            b"x",
        )
        .ok();
        std::fs::create_dir_all(b.join("ff")).unwrap();
        std::fs::write(
            b.join("ff")
                .join("ff00000000000000000000000000000000000000"),
            b"x",
        )
        .unwrap();
        let r = verify(&b, None, t.path()).unwrap();
        assert!(
            r.problems
                .iter()
                .any(|p| p.starts_with("missing: HomeDomain-b.txt")),
            "{:?}",
            r.problems
        );
        assert_eq!(r.problem_count, 2, "{:?}", r.problems);
        assert!(
            r.warnings.iter().any(|w| w.contains("stray")),
            "{:?}",
            r.warnings
        );

        Value::Dictionary(plist::Dictionary::new())
            .to_file_xml(b.join("Status.plist"))
            .unwrap();
        std::fs::write(b.join("Manifest.db"), b"garbage").unwrap();
        let r = verify(&b, None, t.path()).unwrap();
        assert!(r.problems.iter().any(|p| p.contains("not finished")));
        assert!(r
            .problems
            .iter()
            .any(|p| p.contains("Manifest.db cannot be read")));
        assert_eq!(r.problem_count, 2, "{:?}", r.problems);
    }

    #[test]
    fn past_the_listed_problems_the_count_goes_on() {
        let t = tempfile::tempdir().unwrap();
        let b = plain_backup(t.path());
        std::fs::remove_file(b.join("Manifest.db")).unwrap();
        let mut w = ManifestWriter::create(&b.join("Manifest.db")).unwrap();
        let n = MAX_LISTED + 10;
        for i in 0..n {
            let file = MbFile {
                relative_path: format!("gone-{i}"),
                mode: S_IFREG | 0o644,
                size: 1,
                ..Default::default()
            };
            w.insert("HomeDomain", &file).unwrap();
        }
        w.finish().unwrap();
        let r = verify(&b, None, t.path()).unwrap();
        assert_eq!(r.problem_count, n as u64);
        assert_eq!(r.problems.len(), MAX_LISTED + 1);
        assert_eq!(r.problems.last().unwrap(), "… and 10 more problems");
    }
}
