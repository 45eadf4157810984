//! Writing a backup's files out as an ordinary tree:
//! `OUT/<Domain>/<relativePath>`, with modification times, plaintext for
//! encrypted backups. Every path is checked before anything is written, so
//! a backup naming a path that would leave OUT writes nothing at all.

use std::collections::{HashMap, HashSet};
use std::fs::{self, File};
use std::hash::{DefaultHasher, Hash, Hasher};
use std::io::{self, BufWriter, Write};
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::time::{Duration, UNIX_EPOCH};

use crate::categories::Selection;
use crate::error::{Result, StoreError};
use crate::manifest_db::ManifestRow;
use crate::mbfile::{FLAG_DIRECTORY, FLAG_FILE, FLAG_SYMLINK};
use crate::paths::{check_domain, check_relative};
use crate::reader::{Backup, Contents};
use crate::verify::{and_more, note};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Mutex};

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Extracted {
    pub files: u64,
    pub bytes: u64,
    pub dirs: u64,
    pub links: u64,
    /// Files the backup holds damaged or not at all (at most
    /// `verify::MAX_LISTED`, then a count of the rest); everything else
    /// was extracted.
    pub problems: Vec<String>,
    /// How many files had problems.
    pub damaged: u64,
    /// Files put under another name (listed like `problems`): OUT does not
    /// tell upper from lower case and a file differing only in case took
    /// theirs, or it cannot hold the name (Windows, FAT, exFAT). Nothing
    /// is lost.
    pub renamed: Vec<String>,
    /// Files OUT cannot hold, being larger than its disk takes a file
    /// (FAT32: 4 GiB), listed like `problems`; everything else was
    /// extracted.
    pub too_large: Vec<String>,
    /// How many.
    pub n_too_large: u64,
}

/// Where a row goes below OUT, and whether a name had to change for the
/// system (`windows`: the names Windows cannot hold, see [`windows_name`]).
fn dest(out: &Path, domain: &str, path: &str, windows: bool) -> Result<(PathBuf, bool)> {
    check_domain(domain)?;
    check_relative(path)?;
    let mut changed = false;
    let mut p = out.to_path_buf();
    for part in std::iter::once(domain).chain(path.split('/').filter(|s| !s.is_empty())) {
        if windows {
            let name = windows_name(part);
            changed |= name != part;
            p.push(&*name);
        } else {
            p.push(part);
        }
    }
    Ok((p, changed))
}

/// `name` as Windows can hold it: the characters it refuses in names
/// (`<>:"/\|?*` and controls) become `_`, a name ending in a dot or a
/// space gets a `_` after it, and a device name (`CON`, `nul.txt`,
/// `COM1`...) one before it. iOS allows all of these.
pub fn windows_name(name: &str) -> std::borrow::Cow<'_, str> {
    let bad = |c: char| c < ' ' || "<>:\"/\\|?*".contains(c);
    let stem = name
        .split('.')
        .next()
        .unwrap_or("")
        .trim_end()
        .to_ascii_uppercase();
    let device = matches!(stem.as_str(), "CON" | "PRN" | "AUX" | "NUL")
        || (stem.len() == 4
            && (stem.starts_with("COM") || stem.starts_with("LPT"))
            && stem.as_bytes()[3].is_ascii_digit());
    let trailing = name.ends_with('.') || name.ends_with(' ');
    if !device && !trailing && !name.contains(bad) {
        return std::borrow::Cow::Borrowed(name);
    }
    let mut fixed: String = name.chars().map(|c| if bad(c) { '_' } else { c }).collect();
    if device {
        fixed.insert(0, '_');
    }
    if trailing {
        fixed.push('_');
    }
    std::borrow::Cow::Owned(fixed)
}

fn time(secs: i64) -> std::time::SystemTime {
    UNIX_EPOCH + Duration::from_secs(secs.max(0) as u64)
}

/// Whether `out` can take what is read from the backup folder `reading`:
/// a folder or nothing yet, and not inside `reading` (where writing would
/// change what is read, or a copy meet itself). Nothing is written.
pub fn usable_output(out: &Path, reading: &Path) -> Result<()> {
    if out.exists() && !out.is_dir() {
        return Err(output(out)(io::Error::new(
            io::ErrorKind::NotADirectory,
            "it is not a folder",
        )));
    }
    if crate::paths::is_inside(out, reading) {
        return Err(output(out)(io::Error::new(
            io::ErrorKind::InvalidInput,
            "it is inside the backup being read; choose a folder outside it",
        )));
    }
    Ok(())
}

/// A failure writing below OUT (the backup is not at fault).
fn output(path: &Path) -> impl FnOnce(io::Error) -> StoreError + '_ {
    move |source| StoreError::Output {
        path: path.to_path_buf(),
        source,
    }
}

/// The file being written, remembering its own failure: a copy that fails
/// is blamed on OUT (a full disk, say) when the write failed, and on the
/// backup only when the read did, whatever the reader made of the error.
struct Written {
    file: File,
    failed: Option<io::Error>,
    /// Bytes the file took.
    count: u64,
}

impl Written {
    fn note(&mut self, e: io::Error) -> io::Error {
        let told = io::Error::new(e.kind(), e.to_string());
        self.failed.get_or_insert(e);
        told
    }
}

impl Write for Written {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.file.write(buf).map_err(|e| self.note(e))?;
        self.count += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.file.flush().map_err(|e| self.note(e))
    }
}

/// One file: plaintext into a new file beside `to`, its time set, renamed
/// into place; the bytes written (none when no file was made), and what
/// was wrong with the file in the backup, if anything. A file the backup
/// holds only part of (missing its end, or failing to decrypt part way) is
/// extracted as far as it could be read, because that part may be all
/// there is of it; the problem says so. Errors are the output's (they stop
/// the extraction).
fn write_file(
    contents: Contents<'_>,
    row: &ManifestRow,
    to: &Path,
) -> Result<(Option<u64>, Option<String>)> {
    // Beside the file, named by its file ID: a name of OUT's longest
    // (255 bytes) plus a suffix would be too long to make.
    let part = to.with_file_name(format!(".{}.ibackup-part", row.file_id));
    let _ = fs::remove_file(&part);
    // create_new: never through a link that happens to have this name.
    let file = File::options()
        .write(true)
        .create_new(true)
        .open(&part)
        .map_err(output(to))?;
    let blank = Written {
        file,
        failed: None,
        count: 0,
    };
    let mut w = BufWriter::with_capacity(1 << 20, blank);
    let read = contents.read(row, &mut w);
    let written = match w.into_inner().map_err(|e| e.into_error()) {
        Ok(Written {
            failed: Some(e), ..
        })
        | Err(e) => {
            let _ = fs::remove_file(&part);
            return Err(output(to)(e));
        }
        Ok(w) => w,
    };
    let name = format!("{}-{}", row.domain, row.relative_path);
    // The reader's errors mostly name the file already.
    let why = |e: StoreError| {
        let s = match e {
            StoreError::Record(s) => s,
            StoreError::Io(e) => e.to_string(),
            other => other.to_string(),
        };
        if s.contains(&name) {
            s
        } else {
            format!("{name}: {s}")
        }
    };
    let problem = match read {
        Err(e) if written.count == 0 => {
            let _ = fs::remove_file(&part);
            return Ok((None, Some(format!("not extracted: {}", why(e)))));
        }
        Err(e) => Some(format!(
            "extracted only in part, its first {} bytes: {}",
            written.count,
            why(e)
        )),
        // An encrypted file's Size may be off (docs/backup-format-facts.md);
        // its padding says where it ends.
        Ok(n) if !contents.encrypted() && n != row.file.size => Some(format!(
            "{name} is {n} bytes in the backup, the index says {}; extracted as it is",
            row.file.size
        )),
        Ok(_) => None,
    };
    let Written { file, count, .. } = written;
    let placed = file
        .set_modified(time(row.file.last_modified))
        .and_then(|()| {
            drop(file);
            fs::rename(&part, to)
        });
    if let Err(e) = placed {
        let _ = fs::remove_file(&part);
        return Err(output(to)(e));
    }
    Ok((Some(count), problem))
}

/// What OUT's disk does with names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NameRules {
    /// Names that differ only in case are one (macOS's and Windows's
    /// default disks, FAT, exFAT).
    pub folds_case: bool,
    /// It refuses the names Windows refuses (Windows; FAT and exFAT on
    /// every system).
    pub windows: bool,
}

/// Ask `dir` by making a file, looking for it in capitals, and making one
/// with a `:` and a `?` in its name. A folder where nothing can be made
/// says neither: writing there fails anyway.
pub fn name_rules(dir: &Path) -> NameRules {
    let name = format!(".ibackup-name-probe-{}", std::process::id());
    let make = |p: &Path| File::options().write(true).create_new(true).open(p).is_ok();
    let probe = dir.join(&name);
    if !make(&probe) {
        return NameRules {
            folds_case: false,
            windows: cfg!(windows),
        };
    }
    let folds_case = fs::symlink_metadata(dir.join(name.to_uppercase())).is_ok();
    let _ = fs::remove_file(&probe);
    let odd = dir.join(name + "-a:b?");
    let windows = cfg!(windows) || !make(&odd);
    if !windows {
        let _ = fs::remove_file(&odd);
    }
    NameRules {
        folds_case,
        windows,
    }
}

/// The destinations given out so far, for an OUT that does not tell case
/// apart: iOS does, so a backup may hold `IMG_1.JPG` and `img_1.jpg` side by
/// side, and the second must not replace the first. Kept as hashes (of
/// the path in lower case, and of the path itself), so that a backup of a
/// million files costs a few megabytes here.
#[derive(Default)]
struct CaseTwins {
    taken: HashMap<u64, u64>,
}

impl CaseTwins {
    fn hash(s: &str) -> u64 {
        let mut h = DefaultHasher::new();
        s.hash(&mut h);
        h.finish()
    }

    /// Where `to` goes: `to`, or when a file differing from it only in
    /// case came first, the first free `name (2).ext`, `name (3).ext`...
    fn place(&mut self, to: PathBuf) -> (PathBuf, bool) {
        let mut at = to.clone();
        for n in 2u32.. {
            let exact = at.to_string_lossy();
            let folded = Self::hash(&exact.to_lowercase());
            let exact = Self::hash(&exact);
            match self.taken.get(&folded) {
                Some(&same) if same == exact => return (at, false),
                Some(_) => at = numbered(&to, n),
                None => {
                    // A name made up here is marked, so that a file the
                    // backup really calls `name (2).ext` is not sent to it too.
                    let moved = n > 2;
                    self.taken
                        .insert(folded, if moved { !exact } else { exact });
                    return (at, moved);
                }
            }
        }
        unreachable!("a free name comes long before u32::MAX")
    }
}

/// `dir/name (n).ext`.
fn numbered(p: &Path, n: u32) -> PathBuf {
    let stem = p.file_stem().unwrap_or_default().to_string_lossy();
    let name = match p.extension() {
        Some(ext) => format!("{stem} ({n}).{}", ext.to_string_lossy()),
        None => format!("{stem} ({n})"),
    };
    p.with_file_name(name)
}

/// The folders below OUT, made as they are needed. Each one on the way is
/// checked once: a symbolic link (left by an earlier extraction into the
/// same OUT, from a backup that names one) or a file where a folder should
/// be stops the extraction, so nothing is ever written through a link to
/// somewhere outside OUT.
struct Folders<'a> {
    out: &'a Path,
    known: HashSet<PathBuf>,
}

impl Folders<'_> {
    fn make(&mut self, dir: &Path) -> Result<()> {
        if self.known.contains(dir) {
            return Ok(());
        }
        let below = dir
            .strip_prefix(self.out)
            .map_err(|_| StoreError::UnsafePath {
                path: dir.display().to_string(),
                why: "outside the output folder",
            })?;
        let mut p = self.out.to_path_buf();
        for part in below.components() {
            p.push(part);
            if self.known.contains(&p) {
                continue;
            }
            match fs::symlink_metadata(&p) {
                Ok(m) if m.is_dir() => {}
                Ok(_) => {
                    return Err(output(&p)(io::Error::new(
                        io::ErrorKind::NotADirectory,
                        "a link or a file stands where a folder goes",
                    )))
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => match fs::create_dir(&p) {
                    Ok(()) => {}
                    // Made meanwhile: checked again on the next call.
                    Err(e) if e.kind() == io::ErrorKind::AlreadyExists => return self.make(dir),
                    Err(e) => return Err(output(&p)(e)),
                },
                Err(e) => return Err(output(&p)(e)),
            }
            self.known.insert(p.clone());
        }
        Ok(())
    }
}

/// Extract the selected rows of `backup` below `out`. `progress` hears
/// (files, bytes) done so far, and may ask to stop
/// ([`ControlFlow::Break`]): the files being written are finished, no
/// other is begun, and the result is [`StoreError::Stopped`]. Every file
/// in OUT is then whole, with no partial file left beside it.
pub fn extract(
    backup: &Backup,
    sel: &Selection,
    out: &Path,
    progress: &mut dyn FnMut(u64, u64) -> ControlFlow<()>,
) -> Result<Extracted> {
    extract_as(backup, sel, out, progress, None)
}

/// [`extract`]; `rules` says what OUT does with names when the caller
/// knows (tests); else OUT is asked.
fn extract_as(
    backup: &Backup,
    sel: &Selection,
    out: &Path,
    progress: &mut dyn FnMut(u64, u64) -> ControlFlow<()>,
    rules: Option<NameRules>,
) -> Result<Extracted> {
    usable_output(out, &backup.path)?;
    fs::create_dir_all(out).map_err(output(out))?;
    let mut folders = Folders {
        out,
        known: HashSet::new(),
    };
    let NameRules {
        folds_case,
        windows,
    } = rules.unwrap_or_else(|| name_rules(out));
    let mut twins = folds_case.then(CaseTwins::default);
    let (mut renamed, mut n_renamed) = (Vec::new(), 0u64);
    let mut done = Extracted::default();
    let mut dirs = Vec::new();
    let mut links = Vec::new();
    // Files go to worker threads: decryption and the copies in and out
    // overlap across cores. The channel is bounded, so memory does not
    // grow with the backup.
    let contents = backup.contents();
    let workers = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2)
        .clamp(1, 4);
    let files = AtomicU64::new(0);
    let bytes = AtomicU64::new(0);
    let failed: Mutex<Option<StoreError>> = Mutex::new(None);
    let problems: Mutex<(Vec<String>, u64)> = Mutex::new((Vec::new(), 0));
    let too_large: Mutex<(Vec<String>, u64)> = Mutex::new((Vec::new(), 0));
    let (tx, rx) = mpsc::sync_channel::<(ManifestRow, PathBuf)>(workers * 64);
    let rx = Mutex::new(rx);
    std::thread::scope(|scope| -> Result<()> {
        let (rx, files, bytes, failed, problems, too_large) =
            (&rx, &files, &bytes, &failed, &problems, &too_large);
        for _ in 0..workers {
            scope.spawn(move || loop {
                let job = rx.lock().expect("queue").recv();
                let Ok((row, to)) = job else { return };
                // After a failure, drain the queue without working so the
                // walk never blocks on a full channel.
                if failed.lock().expect("error slot").is_some() {
                    continue;
                }
                match write_file(contents, &row, &to) {
                    Ok((placed, problem)) => {
                        if let Some(n) = placed {
                            files.fetch_add(1, Ordering::Relaxed);
                            bytes.fetch_add(n, Ordering::Relaxed);
                        }
                        if let Some(p) = problem {
                            let (list, total) = &mut *problems.lock().expect("problems");
                            note(list, total, p);
                        }
                    }
                    // Too large for OUT's disk: the next file may fit.
                    Err(StoreError::Output { source, .. })
                        if source.kind() == io::ErrorKind::FileTooLarge =>
                    {
                        let (list, total) = &mut *too_large.lock().expect("too large");
                        note(
                            list,
                            total,
                            format!(
                                "{}-{} ({} bytes) is larger than the disk of {} holds a file",
                                row.domain,
                                row.relative_path,
                                row.file.size,
                                out.display()
                            ),
                        );
                    }
                    Err(e) => {
                        failed.lock().expect("error slot").get_or_insert(e);
                    }
                }
            });
        }
        let mut bad_rows = Vec::new();
        let walk = backup.for_each_lenient(|row| {
            if failed.lock().expect("error slot").is_some() {
                return Err(StoreError::Record("stopped".into()));
            }
            if !sel.matches(&row.domain, &row.relative_path) {
                return Ok(());
            }
            let (mut to, changed) = dest(out, &row.domain, &row.relative_path, windows)?;
            if changed && row.flags != FLAG_DIRECTORY {
                let below = to.strip_prefix(out).unwrap_or(&to).display().to_string();
                note(
                    &mut renamed,
                    &mut n_renamed,
                    format!(
                        "{}-{} is extracted as {below}: {} does not allow some of its name (as Windows, FAT and exFAT do not)",
                        row.domain,
                        row.relative_path,
                        out.display()
                    ),
                );
            }
            if let (Some(t), FLAG_FILE | FLAG_SYMLINK) = (twins.as_mut(), row.flags) {
                let (at, moved) = t.place(to);
                if moved {
                    let below = at.strip_prefix(out).unwrap_or(&at).display().to_string();
                    note(
                        &mut renamed,
                        &mut n_renamed,
                        format!(
                            "{}-{} is extracted as {below}: {} does not tell upper from lower case, and a file differing only in case has its name",
                            row.domain,
                            row.relative_path,
                            out.display()
                        ),
                    );
                }
                to = at;
            }
            match row.flags {
                FLAG_DIRECTORY => {
                    folders.make(&to)?;
                    dirs.push((to, row.file.last_modified));
                }
                FLAG_SYMLINK => links.push((to, row.file.target.clone().unwrap_or_default())),
                FLAG_FILE => {
                    if let Some(parent) = to.parent() {
                        folders.make(parent)?;
                    }
                    let _ = tx.send((row, to));
                    let asked =
                        progress(files.load(Ordering::Relaxed), bytes.load(Ordering::Relaxed));
                    if asked.is_break() {
                        // The workers drain what is queued without working.
                        failed
                            .lock()
                            .expect("error slot")
                            .get_or_insert(StoreError::Stopped);
                        return Err(StoreError::Stopped);
                    }
                }
                _ => {}
            }
            Ok(())
        }, &mut |why| bad_rows.push(why));
        drop(tx);
        // Rows that could not be used (an unsafe name, a record that does
        // not decode) are skipped, each a problem; the rest comes out.
        let (list, total) = &mut *problems.lock().expect("problems");
        for why in bad_rows {
            note(list, total, why);
        }
        walk
    })
    // A worker's failure is the cause; the walk only stopped because of it.
    .map_err(|e| failed.lock().expect("error slot").take().unwrap_or(e))?;
    if let Some(e) = failed.into_inner().expect("error slot") {
        return Err(e);
    }
    let (mut listed, total) = problems.into_inner().expect("problems");
    and_more(&mut listed, total, "");
    done.problems = listed;
    done.damaged = total;
    let (mut listed, total) = too_large.into_inner().expect("too large");
    and_more(&mut listed, total, "");
    done.too_large = listed;
    done.n_too_large = total;
    done.files = files.into_inner();
    done.bytes = bytes.into_inner();
    let _ = progress(done.files, done.bytes);
    // Links last, so nothing is ever written through one.
    for (link, target) in links {
        if let Ok(there) = fs::symlink_metadata(&link) {
            // The same link from an earlier extraction into OUT is fine;
            // anything else there is said, not silently kept.
            let same = there.file_type().is_symlink()
                && fs::read_link(&link).is_ok_and(|t| t == Path::new(&target));
            if !same {
                let below = link.strip_prefix(out).unwrap_or(&link).display();
                note(
                    &mut renamed,
                    &mut n_renamed,
                    format!(
                        "{below} is a symbolic link to {target} in the backup; something else is already at that path in {}, so the link was not made",
                        out.display()
                    ),
                );
            }
            continue;
        }
        if let Some(parent) = link.parent() {
            folders.make(parent)?;
        }
        #[cfg(unix)]
        let made = std::os::unix::fs::symlink(&target, &link);
        // Windows needs a privilege for symbolic links.
        #[cfg(not(unix))]
        let made: io::Result<()> = Err(io::ErrorKind::Unsupported.into());
        if made.is_err() {
            // No links here (Windows; FAT and exFAT anywhere): the target
            // as text (create_new: never through something already there).
            File::options()
                .write(true)
                .create_new(true)
                .open(&link)
                .and_then(|mut f| f.write_all(target.as_bytes()))
                .map_err(output(&link))?;
            let below = link.strip_prefix(out).unwrap_or(&link).display();
            note(
                &mut renamed,
                &mut n_renamed,
                format!(
                    "{below} is a symbolic link to {target} in the backup; {} cannot hold one, so it is a file holding that path",
                    out.display()
                ),
            );
        }
        done.links += 1;
    }
    and_more(&mut renamed, n_renamed, "");
    done.renamed = renamed;
    // Deepest first: setting a folder's time after its contents are written.
    for (d, t) in dirs.iter().rev() {
        if let Ok(f) = File::open(d) {
            let _ = f.set_modified(time(*t));
        }
        done.dirs += 1;
    }
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest_db::ManifestWriter;
    use crate::mbfile::{MbFile, S_IFREG};
    use crate::paths::file_id;
    use plist::Value;

    fn backup_with(root: &Path, rows: &[(&str, &str)]) -> PathBuf {
        let b = root.join("B");
        fs::create_dir_all(&b).unwrap();
        let mut w = ManifestWriter::create(&b.join("Manifest.db")).unwrap();
        w.insert(
            "HomeDomain",
            &MbFile {
                relative_path: "ok.txt".into(),
                mode: S_IFREG | 0o644,
                size: 2,
                last_modified: 1_000_000_000,
                ..Default::default()
            },
        )
        .unwrap();
        w.finish().unwrap();
        let id = file_id("HomeDomain", "ok.txt");
        fs::create_dir_all(b.join(&id[..2])).unwrap();
        fs::write(b.join(&id[..2]).join(&id), b"ok").unwrap();
        // Rows a hostile device or a tampered disk could hold, written
        // around the validating writer.
        let c = rusqlite::Connection::open(b.join("Manifest.db")).unwrap();
        for (domain, path) in rows {
            let rec = MbFile {
                relative_path: path.to_string(),
                mode: S_IFREG | 0o644,
                size: 4,
                ..Default::default()
            }
            .to_archive();
            let id = file_id(domain, path);
            c.execute(
                "INSERT INTO Files VALUES (?1, ?2, ?3, 1, ?4)",
                rusqlite::params![id, domain, path, rec],
            )
            .unwrap();
            fs::create_dir_all(b.join(&id[..2])).unwrap();
            fs::write(b.join(&id[..2]).join(&id), b"evil").unwrap();
        }
        drop(c);
        Value::Dictionary(plist::Dictionary::new())
            .to_file_xml(b.join("Manifest.plist"))
            .unwrap();
        b
    }

    #[test]
    fn a_stop_leaves_only_whole_files_and_no_partial_ones() {
        let t = tempfile::tempdir().unwrap();
        let b = t.path().join("B");
        fs::create_dir_all(&b).unwrap();
        let mut w = ManifestWriter::create(&b.join("Manifest.db")).unwrap();
        let body: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        for i in 0..400 {
            let name = format!("f{i}.bin");
            w.insert(
                "HomeDomain",
                &MbFile {
                    relative_path: name.clone(),
                    mode: S_IFREG | 0o644,
                    size: body.len() as u64,
                    ..Default::default()
                },
            )
            .unwrap();
            let id = file_id("HomeDomain", &name);
            fs::create_dir_all(b.join(&id[..2])).unwrap();
            fs::write(b.join(&id[..2]).join(&id), &body).unwrap();
        }
        w.finish().unwrap();
        Value::Dictionary(plist::Dictionary::new())
            .to_file_xml(b.join("Manifest.plist"))
            .unwrap();
        let b = Backup::open(&b, None).unwrap();
        let out = t.path().join("out");
        // Stopped once five are out: the walk is never more than the
        // queue (4 x 64) and the workers ahead of them, so well short of 400.
        let r = extract(&b, &Selection::default(), &out, &mut |files, _| {
            if files >= 5 {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            }
        });
        assert!(matches!(r, Err(StoreError::Stopped)), "{r:?}");
        let left: Vec<_> = fs::read_dir(out.join("HomeDomain"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        assert!((5..400).contains(&left.len()), "{}", left.len());
        for p in &left {
            assert!(
                p.extension().unwrap() == "bin",
                "a partial file is left: {p:?}"
            );
            assert_eq!(fs::read(p).unwrap(), body, "{p:?} is whole");
        }
    }

    #[test]
    fn files_land_below_out_with_their_times() {
        let t = tempfile::tempdir().unwrap();
        let b = Backup::open(&backup_with(t.path(), &[]), None).unwrap();
        let out = t.path().join("out");
        let done = extract(&b, &Selection::default(), &out, &mut |_, _| {
            ControlFlow::Continue(())
        })
        .unwrap();
        assert_eq!((done.files, done.bytes), (1, 2));
        let p = out.join("HomeDomain/ok.txt");
        assert_eq!(fs::read(&p).unwrap(), b"ok");
        let mtime = fs::metadata(&p).unwrap().modified().unwrap();
        assert_eq!(mtime, time(1_000_000_000));
    }

    /// A backup of whole.txt, short.txt (the index says 100 bytes, 10 are
    /// there) and gone.txt (no content file), each 100 bytes on the
    /// device; with a password, its files are encrypted and short.txt
    /// loses its last 16-byte block instead.
    fn damaged_backup(root: &Path, password: Option<&str>) -> PathBuf {
        use crate::crypto::{self, Keybag};
        let b = root.join("D");
        fs::create_dir_all(&b).unwrap();
        let kb = password.map(|pw| Keybag::new_backup(pw, 1000, &mut rand::rngs::OsRng).unwrap());
        let mut w = ManifestWriter::create(&b.join("Manifest.db")).unwrap();
        for name in ["whole.txt", "short.txt", "gone.txt"] {
            let body: Vec<u8> = (0..100u8).collect();
            let mut stored = body.clone();
            let mut file = MbFile {
                relative_path: name.into(),
                mode: S_IFREG | 0o644,
                size: 100,
                ..Default::default()
            };
            if let Some(kb) = &kb {
                let key = [7u8; 32];
                stored = crypto::encrypt(&key, &body);
                file.encryption_key = Some(kb.wrap_key(3, &key).unwrap());
            }
            w.insert("HomeDomain", &file).unwrap();
            match name {
                "gone.txt" => continue,
                "short.txt" if kb.is_some() => stored.truncate(stored.len() - 16),
                "short.txt" => stored.truncate(10),
                _ => {}
            }
            let id = file_id("HomeDomain", name);
            fs::create_dir_all(b.join(&id[..2])).unwrap();
            fs::write(b.join(&id[..2]).join(&id), stored).unwrap();
        }
        w.finish().unwrap();
        match &kb {
            Some(kb) => {
                let plain = fs::read(b.join("Manifest.db")).unwrap();
                crate::testing::seal_index(&b, kb, &plain, [6u8; 32]);
            }
            None => Value::Dictionary(plist::Dictionary::new())
                .to_file_xml(b.join("Manifest.plist"))
                .unwrap(),
        }
        b
    }

    #[test]
    fn damaged_files_are_listed_and_everything_readable_comes_out() {
        for password in [None, Some("pw")] {
            let t = tempfile::tempdir().unwrap();
            let b = Backup::open(&damaged_backup(t.path(), password), password).unwrap();
            let out = t.path().join("out");
            let done = extract(&b, &Selection::default(), &out, &mut |_, _| {
                ControlFlow::Continue(())
            })
            .unwrap();
            let body: Vec<u8> = (0..100u8).collect();
            let home = out.join("HomeDomain");
            assert_eq!(fs::read(home.join("whole.txt")).unwrap(), body);
            // What there is of a damaged file may be all there is of it
            // (encrypted, less its last block, which cannot be told from
            // padding).
            let part = if password.is_some() { 80 } else { 10 };
            assert_eq!(fs::read(home.join("short.txt")).unwrap(), &body[..part]);
            assert!(!home.join("gone.txt").exists());
            let mut names: Vec<_> = fs::read_dir(&home)
                .unwrap()
                .map(|e| e.unwrap().file_name())
                .collect();
            names.sort();
            assert_eq!(names, ["short.txt", "whole.txt"], "no part files left");
            assert_eq!((done.files, done.damaged), (2, 2), "{password:?}");
            assert_eq!(done.problems.len(), 2);
            let short = if password.is_some() {
                "extracted only in part, its first 80 bytes: HomeDomain-short.txt"
            } else {
                "HomeDomain-short.txt is 10 bytes in the backup, the index says 100"
            };
            assert!(
                done.problems.iter().any(|p| p.starts_with(short)),
                "{:?}",
                done.problems
            );
            assert!(
                done.problems
                    .iter()
                    .any(|p| p.starts_with("not extracted: ") && p.contains("HomeDomain-gone.txt")),
                "{:?}",
                done.problems
            );
        }
    }

    #[test]
    fn names_windows_cannot_hold_are_changed_there_only() {
        for (name, fixed) in [
            ("IMG_0001.JPG", "IMG_0001.JPG"),
            ("log 12:30:00.txt", "log 12_30_00.txt"),
            ("a<b>c\"d|e?f*g\\h", "a_b_c_d_e_f_g_h"),
            ("tab\there", "tab_here"),
            ("ends with dot.", "ends with dot._"),
            ("ends with space ", "ends with space _"),
            ("CON", "_CON"),
            ("nul.txt", "_nul.txt"),
            ("com1", "_com1"),
            ("LPT9.log", "_LPT9.log"),
            ("COM10", "COM10"),
            ("console", "console"),
            ("CONFIG.sys", "CONFIG.sys"),
        ] {
            assert_eq!(windows_name(name), fixed, "{name:?}");
        }
        let out = Path::new("o");
        let (p, changed) = dest(out, "AppDomain-x", "Library/12:30/AUX.db", true).unwrap();
        assert_eq!(
            p,
            out.join("AppDomain-x")
                .join("Library")
                .join("12_30")
                .join("_AUX.db")
        );
        assert!(changed);
        let (p, changed) = dest(out, "AppDomain-x", "Library/12:30/AUX.db", false).unwrap();
        assert_eq!(p, out.join("AppDomain-x/Library/12:30/AUX.db"));
        assert!(!changed);
        let (p, changed) = dest(out, "HomeDomain", "", true).unwrap();
        assert_eq!((p, changed), (out.join("HomeDomain"), false));
    }

    #[test]
    fn case_twins_get_numbered_names_on_a_disk_that_folds_case() {
        let mut t = CaseTwins::default();
        let p = |s: &str| PathBuf::from(s);
        assert_eq!(t.place(p("o/D/IMG.JPG")), (p("o/D/IMG.JPG"), false));
        assert_eq!(t.place(p("o/D/img.jpg")), (p("o/D/img (2).jpg"), true));
        assert_eq!(t.place(p("o/d/Img.jpg")), (p("o/d/Img (3).jpg"), true));
        // The backup's own `img (2).jpg` is not sent where a twin went.
        assert_eq!(
            t.place(p("o/D/img (2).jpg")),
            (p("o/D/img (2) (2).jpg"), true)
        );
        assert_eq!(t.place(p("o/D/other")), (p("o/D/other"), false));
        assert_eq!(t.place(p("o/D/OTHER")), (p("o/D/OTHER (2)"), true));
        assert_eq!(
            t.place(p("o/D/IMG.JPG")),
            (p("o/D/IMG.JPG"), false),
            "the same row again"
        );

        // Through a whole extraction, told that OUT folds case.
        let root = tempfile::tempdir().unwrap();
        let b = root.path().join("B");
        fs::create_dir_all(&b).unwrap();
        let mut w = ManifestWriter::create(&b.join("Manifest.db")).unwrap();
        for (name, body) in [("Notes.txt", &b"upper"[..]), ("notes.txt", b"lower")] {
            let file = MbFile {
                relative_path: name.into(),
                mode: S_IFREG | 0o644,
                size: body.len() as u64,
                ..Default::default()
            };
            w.insert("HomeDomain", &file).unwrap();
            let id = file_id("HomeDomain", name);
            fs::create_dir_all(b.join(&id[..2])).unwrap();
            fs::write(b.join(&id[..2]).join(&id), body).unwrap();
        }
        w.finish().unwrap();
        Value::Dictionary(plist::Dictionary::new())
            .to_file_xml(b.join("Manifest.plist"))
            .unwrap();
        let b = Backup::open(&b, None).unwrap();
        let out = root.path().join("out");
        let done = extract_as(
            &b,
            &Selection::default(),
            &out,
            &mut |_, _| ControlFlow::Continue(()),
            Some(NameRules {
                folds_case: true,
                windows: false,
            }),
        )
        .unwrap();
        assert_eq!(
            fs::read(out.join("HomeDomain/Notes.txt")).unwrap(),
            b"upper"
        );
        assert_eq!(
            fs::read(out.join("HomeDomain/notes (2).txt")).unwrap(),
            b"lower"
        );
        assert_eq!((done.files, done.damaged), (2, 0));
        assert_eq!(done.renamed.len(), 1, "{:?}", done.renamed);
        assert!(
            done.renamed[0]
                .starts_with("HomeDomain-notes.txt is extracted as HomeDomain/notes (2).txt"),
            "{:?}",
            done.renamed
        );
        // A disk that tells case apart: both under their own names.
        let out = root.path().join("out2");
        let done = extract(&b, &Selection::default(), &out, &mut |_, _| {
            ControlFlow::Continue(())
        })
        .unwrap();
        assert!(done.renamed.is_empty());
        assert_eq!(
            fs::read(out.join("HomeDomain/notes.txt")).unwrap(),
            b"lower"
        );
        let mut names: Vec<_> = fs::read_dir(&out)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        names.sort();
        assert_eq!(names, ["HomeDomain"], "the probe file is gone");
    }

    #[test]
    fn a_link_left_in_out_is_never_written_through() {
        let t = tempfile::tempdir().unwrap();
        let b = Backup::open(&backup_with(t.path(), &[]), None).unwrap();
        let out = t.path().join("out");
        let elsewhere = t.path().join("elsewhere");
        fs::create_dir_all(&out).unwrap();
        fs::create_dir_all(&elsewhere).unwrap();
        #[cfg(unix)]
        std::os::unix::fs::symlink(&elsewhere, out.join("HomeDomain")).unwrap();
        #[cfg(not(unix))]
        fs::write(out.join("HomeDomain"), b"a file in the way").unwrap();
        match extract(&b, &Selection::default(), &out, &mut |_, _| {
            ControlFlow::Continue(())
        }) {
            Err(StoreError::Output { path, source }) => {
                assert_eq!(path, out.join("HomeDomain"));
                assert_eq!(source.kind(), io::ErrorKind::NotADirectory);
            }
            other => panic!("{:?}", other.map(|_| ())),
        }
        assert_eq!(fs::read_dir(&elsewhere).unwrap().count(), 0);
    }

    #[test]
    fn out_inside_the_backup_is_refused_before_anything_is_written() {
        let t = tempfile::tempdir().unwrap();
        let path = backup_with(t.path(), &[]);
        let b = Backup::open(&path, None).unwrap();
        let before = fs::read_dir(&path).unwrap().count();
        let r = extract(&b, &Selection::default(), &path.join("out"), &mut |_, _| {
            ControlFlow::Continue(())
        });
        assert!(
            matches!(&r, Err(StoreError::Output { source, .. }) if source.kind() == io::ErrorKind::InvalidInput),
            "{:?}",
            r.map(|_| ())
        );
        assert_eq!(
            fs::read_dir(&path).unwrap().count(),
            before,
            "nothing added to the backup"
        );
    }

    #[test]
    fn out_that_is_a_file_is_left_alone() {
        let t = tempfile::tempdir().unwrap();
        let b = Backup::open(&backup_with(t.path(), &[]), None).unwrap();
        let out = t.path().join("out");
        fs::write(&out, b"mine").unwrap();
        let r = extract(&b, &Selection::default(), &out, &mut |_, _| {
            ControlFlow::Continue(())
        });
        assert!(
            matches!(&r, Err(StoreError::Output { source, .. }) if source.kind() == io::ErrorKind::NotADirectory),
            "{:?}",
            r.map(|_| ())
        );
        assert_eq!(fs::read(&out).unwrap(), b"mine");
    }

    /// A write that fails is the output's failure, whatever the reader
    /// made of it (the decrypting reader calls its errors "does not
    /// decrypt").
    #[cfg(target_os = "linux")]
    #[test]
    fn a_failed_write_is_remembered() {
        let file = File::options().write(true).open("/dev/full").unwrap();
        let blank = Written {
            file,
            failed: None,
            count: 0,
        };
        let mut w = BufWriter::with_capacity(16, blank);
        let e = w.write_all(&[0u8; 64]).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::StorageFull);
        let written = w.into_inner().map_err(|e| e.into_error()).unwrap();
        assert_eq!(
            written.failed.map(|e| e.kind()),
            Some(io::ErrorKind::StorageFull)
        );
    }

    #[test]
    fn a_path_that_would_leave_out_is_skipped_and_the_rest_comes_out() {
        for (domain, path) in [
            ("HomeDomain", "../../escape.txt"),
            ("HomeDomain", "/etc/escape.txt"),
            ("..", "escape.txt"),
            ("Home/Domain", "x"),
        ] {
            let t = tempfile::tempdir().unwrap();
            let b = Backup::open(&backup_with(t.path(), &[(domain, path)]), None).unwrap();
            let out = t.path().join("deep/out");
            let r = extract(&b, &Selection::default(), &out, &mut |_, _| {
                ControlFlow::Continue(())
            })
            .unwrap();
            assert_eq!(r.damaged, 1, "{domain} {path}: {:?}", r.problems);
            assert!(
                r.problems[0].starts_with("unusable row"),
                "{:?}",
                r.problems
            );
            assert_eq!(
                fs::read(out.join("HomeDomain/ok.txt")).unwrap(),
                b"ok",
                "the sound row"
            );
            assert!(
                !t.path().join("escape.txt").exists() && !t.path().join("deep/escape.txt").exists()
            );
        }
    }

    #[test]
    fn a_name_of_the_longest_length_is_extracted() {
        let t = tempfile::tempdir().unwrap();
        let long = format!("{}.jpg", "n".repeat(251));
        let b = t.path().join("B");
        fs::create_dir_all(&b).unwrap();
        let mut w = ManifestWriter::create(&b.join("Manifest.db")).unwrap();
        w.insert(
            "HomeDomain",
            &MbFile {
                relative_path: long.clone(),
                mode: S_IFREG | 0o644,
                size: 2,
                ..Default::default()
            },
        )
        .unwrap();
        w.finish().unwrap();
        let id = file_id("HomeDomain", &long);
        fs::create_dir_all(b.join(&id[..2])).unwrap();
        fs::write(b.join(&id[..2]).join(&id), b"ok").unwrap();
        plist::Value::Dictionary(plist::Dictionary::new())
            .to_file_xml(b.join("Manifest.plist"))
            .unwrap();
        let out = t.path().join("out");
        let r = extract(
            &Backup::open(&b, None).unwrap(),
            &Selection::default(),
            &out,
            &mut |_, _| ControlFlow::Continue(()),
        )
        .unwrap();
        assert_eq!((r.files, r.damaged), (1, 0), "{:?}", r.problems);
        assert_eq!(fs::read(out.join("HomeDomain").join(&long)).unwrap(), b"ok");
    }
}
