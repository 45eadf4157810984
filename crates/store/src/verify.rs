//! Checking a backup folder: is it a complete backup whose index can be
//! read and whose every file is present, of the right size and of the
//! right content? Content is checked against ibackup's own record of each
//! file's SHA-256 ([`crate::digests`]) where there is one, else against the
//! digest the device recorded (few files since iOS 10), else not at all,
//! and the report says how many files that was. Content files are read
//! on every core, and never through a link that leads outside the backup.

use std::collections::HashSet;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use plist::Value;
use sha1::{Digest, Sha1};

use crate::digests::{sha256_of, Digests};
use crate::error::{Result, StoreError};
use crate::mbfile::FLAG_FILE;
use crate::reader::open_index;

/// What a verification found.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Report {
    pub files: u64,
    pub bytes: u64,
    pub encrypted: bool,
    /// Files whose content was read and found as recorded.
    pub content_checked: u64,
    /// Files whose content could not be checked beyond their size: no
    /// digest of ibackup's nor of the device's (a backup made by another
    /// tool, or before ibackup kept digests), or a quick check.
    pub content_unchecked: u64,
    /// Which, by name (at most MAX_LISTED; not in a quick check).
    pub unchecked_files: Vec<String>,
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

/// How much to check.
#[derive(Debug, Clone, Copy, Default)]
pub struct Options<'a> {
    pub password: Option<&'a str>,
    /// ibackup's digest record of this backup, if it has one.
    pub digests: Option<&'a Path>,
    /// Presence and size only: no file is read.
    pub quick: bool,
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

/// What a file's content must hash to.
enum Expect {
    Sha256([u8; 32]),
    Sha1(Vec<u8>),
}

/// One file to read: its name for messages, the open file, what it must be.
struct Job {
    name: String,
    file: File,
    expect: Expect,
}

/// A list of problems shared by the reading threads.
#[derive(Default)]
struct Found {
    list: Vec<String>,
    count: u64,
}

fn check_content(job: Job) -> Option<String> {
    let Job { name, file, expect } = job;
    let matches = match &expect {
        Expect::Sha256(want) => sha256_of(file).map(|e| e.sha256 == *want),
        Expect::Sha1(want) => {
            let mut h = Sha1::new();
            let mut f = file;
            std::io::copy(&mut f, &mut h).map(|_| h.finalize().as_slice() == want.as_slice())
        }
    };
    match matches {
        Ok(true) => None,
        Ok(false) => Some(format!(
            "damaged: {name} does not match its recorded digest"
        )),
        Err(e) => Some(format!("unreadable: {name}: {e}")),
    }
}

/// Verify the backup folder `backup` (a `<UDID>/` folder): presence, size,
/// and the digests the device recorded.
pub fn verify(backup: &Path, password: Option<&str>, scratch: &Path) -> Result<Report> {
    verify_with(
        backup,
        scratch,
        &Options {
            password,
            ..Options::default()
        },
    )
}

/// Verify `backup` as `opts` says.
pub fn verify_with(backup: &Path, scratch: &Path, opts: &Options) -> Result<Report> {
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
    let (db, keybag) = match open_index(backup, opts.password, scratch) {
        Ok(x) => (x.db, x.keybag),
        Err(e @ (StoreError::WrongPassword | StoreError::PasswordRequired)) => return Err(e),
        Err(e) => {
            r.problems.push(format!("Manifest.db cannot be read: {e}"));
            r.problem_count = r.problems.len() as u64;
            return Ok(r);
        }
    };
    r.encrypted = keybag.is_some();
    let bounds = crate::paths::content_bounds(backup);
    let record = opts.digests.and_then(Digests::open);
    let mut listed: HashSet<String> = HashSet::new();
    let (mut n_problems, mut n_warnings) = (0u64, 0u64);
    let mut problems = Vec::new();
    let mut warnings = Vec::new();
    let found = Mutex::new(Found::default());
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    let (tx, rx) = std::sync::mpsc::sync_channel::<Job>(256);
    let rx = Mutex::new(rx);
    let walk = std::thread::scope(|scope| {
        // Dropped when the rows are done, which ends the readers.
        let tx = tx;
        for _ in 0..threads {
            let (rx, found) = (&rx, &found);
            scope.spawn(move || loop {
                let job = match rx.lock().expect("jobs").recv() {
                    Ok(j) => j,
                    Err(_) => return,
                };
                if let Some(p) = check_content(job) {
                    let mut f = found.lock().expect("found");
                    let Found { list, count } = &mut *f;
                    note(list, count, p);
                }
            });
        }
        db.for_each(|row| {
            if row.flags != FLAG_FILE {
                return Ok(());
            }
            r.files += 1;
            let name = format!("{}-{}", row.domain, row.relative_path);
            let rel = PathBuf::from(&row.file_id[..2]).join(&row.file_id);
            listed.insert(row.file_id.clone());
            let file = match crate::paths::open_in(backup, &rel, &bounds) {
                Ok(f) => f,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    note(&mut problems, &mut n_problems, format!("missing: {name} ({})", row.file_id));
                    return Ok(());
                }
                Err(e) => {
                    note(&mut problems, &mut n_problems, format!("unusable: {name} ({}): {e}", row.file_id));
                    return Ok(());
                }
            };
            let len = file.metadata()?.len();
            r.bytes += len;
            let size = row.file.size;
            let recorded = match &record {
                Some(d) => d.get(&row.file_id)?,
                None => None,
            };
            if let Some(e) = recorded.filter(|e| e.size != len) {
                note(&mut problems, &mut n_problems, format!("wrong size: {name} is {len} bytes, {} were received", e.size));
                return Ok(());
            }
            if r.encrypted {
                if len != size / 16 * 16 + 16 && recorded.is_none() {
                    note(&mut warnings, &mut n_warnings, format!("{name}: stored {len} bytes for Size {size} (Size is unreliable for files changed during a backup)"));
                }
            } else if len != size {
                note(&mut problems, &mut n_problems, format!("wrong size: {name} is {len} bytes, the index says {size}"));
                return Ok(());
            }
            if opts.quick {
                r.content_unchecked += 1;
                return Ok(());
            }
            let expect = match (recorded, &row.file.digest) {
                (Some(e), _) => Expect::Sha256(e.sha256),
                (None, Some(d)) => Expect::Sha1(d.clone()),
                (None, None) => {
                    r.content_unchecked += 1;
                    if r.unchecked_files.len() < MAX_LISTED {
                        r.unchecked_files.push(name);
                    }
                    return Ok(());
                }
            };
            r.content_checked += 1;
            // Ends only if every reader has stopped, which they do not.
            let _ = tx.send(Job { name, file, expect });
            Ok(())
        })
    });
    if let Err(e) = walk {
        r.problems.push(format!("Manifest.db has a bad row: {e}"));
    }
    let Found { list, count } = found.into_inner().expect("found");
    r.content_checked -= count.min(r.content_checked);
    let beyond = count - list.len() as u64;
    for p in list {
        note(&mut problems, &mut n_problems, p);
    }
    n_problems += beyond;
    for e in std::fs::read_dir(backup)?.flatten() {
        let dir_name = e.file_name().to_string_lossy().into_owned();
        if dir_name.len() != 2 {
            continue;
        }
        let Ok(md) = std::fs::symlink_metadata(e.path()) else {
            continue;
        };
        if md.file_type().is_symlink() {
            if crate::paths::snapshot_link_target(&e.path(), &bounds).is_none() {
                note(
                    &mut problems,
                    &mut n_problems,
                    format!(
                        "content folder {dir_name} is a symbolic link leading outside the backup"
                    ),
                );
                continue;
            }
        } else if !md.is_dir() {
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
    if r.content_unchecked > 0 && !opts.quick {
        warnings.insert(
            0,
            format!(
                "{} file{} checked for presence and size only: no digest was recorded for {} (a backup made by another tool, or before ibackup kept digests), e.g. {}",
                r.content_unchecked,
                if r.content_unchecked == 1 { "" } else { "s" },
                if r.content_unchecked == 1 { "it" } else { "them" },
                r.unchecked_files.iter().take(3).cloned().collect::<Vec<_>>().join(", ")
            ),
        );
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
        assert!(
            matches!(
                verify(&b, None, t.path()),
                Err(StoreError::PasswordRequired)
            ),
            "a sound encrypted backup asks for its password, it is not damaged"
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
    fn ibackups_record_catches_a_same_size_corruption_and_links_are_damage() {
        let t = tempfile::tempdir().unwrap();
        let b = plain_backup(t.path());
        let bb = file_id("HomeDomain", "b.txt");
        let digests = t.path().join("d.db");
        let mut d = Digests::create(&digests, None).unwrap();
        d.put(&bb, sha256_of(&b"world!"[..]).unwrap()).unwrap();
        d.finish().unwrap();
        let opts = Options {
            digests: Some(&digests),
            ..Options::default()
        };
        let r = verify_with(&b, t.path(), &opts).unwrap();
        assert!(r.is_sound(), "{:?}", r.problems);
        assert_eq!(
            (r.content_checked, r.content_unchecked),
            (2, 0),
            "a by the device's SHA-1, b by ours"
        );

        // b has no device digest: only the record tells.
        std::fs::write(b.join(&bb[..2]).join(&bb), b"WORLD!").unwrap();
        let r = verify_with(&b, t.path(), &opts).unwrap();
        assert_eq!(
            r.problems,
            ["damaged: HomeDomain-b.txt does not match its recorded digest"]
        );
        let quick = verify_with(
            &b,
            t.path(),
            &Options {
                quick: true,
                ..opts
            },
        )
        .unwrap();
        assert!(quick.is_sound() && quick.content_unchecked == 2);
        let r = verify(&b, None, t.path()).unwrap();
        assert!(r.is_sound(), "without a record it cannot be told");
        assert!(
            r.warnings[0].starts_with("1 file checked for presence and size only"),
            "{:?}",
            r.warnings
        );
        assert_eq!(r.unchecked_files, ["HomeDomain-b.txt"], "which one");

        #[cfg(unix)]
        {
            let a = file_id("HomeDomain", "a.txt");
            let host = t.path().join("host-file");
            std::fs::write(&host, b"WORLD!").unwrap();
            std::fs::remove_file(b.join(&bb[..2]).join(&bb)).unwrap();
            std::os::unix::fs::symlink(&host, b.join(&bb[..2]).join(&bb)).unwrap();
            let r = verify(&b, None, t.path()).unwrap();
            assert!(
                r.problems[0].starts_with("unusable: HomeDomain-b.txt"),
                "{:?}",
                r.problems
            );
            std::fs::rename(b.join(&a[..2]), t.path().join("moved")).unwrap();
            std::os::unix::fs::symlink(t.path().join("moved"), b.join(&a[..2])).unwrap();
            let r = verify(&b, None, t.path()).unwrap();
            assert!(
                r.problems
                    .iter()
                    .any(|p| p.contains(&format!("content folder {} is a symbolic link", &a[..2]))),
                "{:?}",
                r.problems
            );
        }
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
