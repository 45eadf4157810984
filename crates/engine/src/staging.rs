//! The backup folder during a session.
//!
//! `DIR/<UDID>/` is always the newest complete backup. A session works in
//! `DIR/.ibackup/staging/<UDID>/`, which holds hard links to the committed
//! files of each folder the device touches, made when it first touches it
//! (an incremental backup's device-side removals and moves then touch only
//! links), and every file the device sends is written as a new file and
//! renamed into place, never opened where it exists: committed files are
//! never modified. On the device's final success the staging folder
//! replaces the committed one with two renames, taking the folders the
//! device left alone with it (see [`crate::snapshots`]); a crash in
//! between is repaired at the next start. Where the disk has no symbolic
//! links, every folder is linked, in the background from the start.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::thread::JoinHandle;

use ibackup_store::paths::check_relative;

use crate::error::{EngineError, Result};
use crate::files::remove_tree;
use crate::snapshots;

/// True while a backup is being committed (made the newest): a process
/// ended then leaves it to the next run to finish or undo, and says so.
pub static COMMITTING: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

pub struct BackupDir {
    pub root: PathBuf,
    pub udid: String,
    _lock: File,
    /// Linking the committed content folders into staging (see `prepare`).
    linking: Mutex<Linking>,
    /// What the staging folder's content folders hold, kept as the session
    /// changes them, so that the commit's record need not stat every file
    /// again (the one walk of the whole backup an unchanged night would
    /// make). `None` once a change was not one this follows; the commit
    /// then counts.
    counts: Mutex<Option<Counts>>,
    /// The staging folder `prepare` made, as the disk knows it: a path
    /// that no longer leads there means the disk went away (unplugged,
    /// unmounted) and the path now leads to the mount point's own folder.
    made: Mutex<Option<Identity>>,
    /// Whether the disk has hard links ([`can_link_files`]), asked once.
    links_files: std::sync::OnceLock<bool>,
    /// The digest record of the backup being staged (see [`Recorder`]).
    record: Mutex<Option<Recorder>>,
}

/// What the recorder is told, in the order it happened.
enum RecordJob {
    /// A file the device sent, named by its file ID, opened where it landed.
    Put(String, File),
    /// A content file that is gone (or whose content is no longer known).
    Forget(String),
    /// A file the device is sending now, opened for reading as it is
    /// written: hashed block by block while the next block arrives.
    Begin(String, File),
    /// This many more bytes of it are written: read and hash them.
    More(u64),
    /// It is whole and in place: record it.
    End,
    /// It failed: forget it.
    Abandon,
}

/// Writes the staged backup's digest record ([`ibackup_store::digests`])
/// on a thread of its own: each file the device sends is read back from
/// the page cache and hashed block by block as it lands, while the next
/// block arrives. (One thread: a real device sends at most a few hundred
/// MB/s, which one core hashes; on the simulator two threads measured no
/// faster on two cores.)
struct Recorder {
    tx: std::sync::mpsc::SyncSender<RecordJob>,
    handle: JoinHandle<Result<()>>,
    path: PathBuf,
}

impl Recorder {
    fn start(path: PathBuf, previous: Option<PathBuf>) -> Recorder {
        let (tx, rx) = std::sync::mpsc::sync_channel::<RecordJob>(64);
        let at = path.clone();
        let handle = std::thread::spawn(move || -> Result<()> {
            use std::io::Read;
            let mut d = ibackup_store::digests::Digests::create(&at, previous.as_deref())?;
            let mut current: Option<(String, File, ibackup_store::digests::Hasher)> = None;
            let mut buf = vec![0u8; 256 * 1024];
            for job in rx {
                match job {
                    RecordJob::Put(id, f) => {
                        let e = ibackup_store::digests::sha256_of(f)?;
                        d.put(&id, e)?;
                    }
                    RecordJob::Forget(id) => d.forget(&id)?,
                    RecordJob::Begin(id, f) => {
                        current = Some((id, f, ibackup_store::digests::Hasher::default()))
                    }
                    RecordJob::More(mut n) => {
                        let Some((_, f, h)) = current.as_mut() else {
                            continue;
                        };
                        while n > 0 {
                            let want = n.min(buf.len() as u64) as usize;
                            f.read_exact(&mut buf[..want])?;
                            h.update(&buf[..want]);
                            n -= want as u64;
                        }
                    }
                    RecordJob::End => {
                        if let Some((id, _, h)) = current.take() {
                            d.put(&id, h.finish())?;
                        }
                    }
                    RecordJob::Abandon => {
                        if let Some((id, _, _)) = current.take() {
                            d.forget(&id)?;
                        }
                    }
                }
            }
            d.finish()?;
            Ok(())
        });
        Recorder { tx, handle, path }
    }

    /// Wait for every file to be recorded; the record's path.
    fn finish(self) -> Result<PathBuf> {
        drop(self.tx);
        match self.handle.join() {
            Ok(Ok(())) => Ok(self.path),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(EngineError::Io(std::io::Error::other(
                "recording the backup's digests failed",
            ))),
        }
    }
}

/// The file ID a device path ends in, if it names one.
fn file_id_of(device_path: &str) -> Option<&str> {
    let name = device_path.trim_end_matches('/').rsplit('/').next()?;
    ibackup_store::paths::is_file_id(name).then_some(name)
}

/// What tells one folder from another: device and inode on Unix; on
/// other systems only that it is a folder.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Identity(u64, u64);

fn identity(p: &Path) -> std::io::Result<Identity> {
    let m = fs::metadata(p)?;
    if !m.is_dir() {
        return Err(std::io::ErrorKind::NotADirectory.into());
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        Ok(Identity(m.dev(), m.ino()))
    }
    #[cfg(not(unix))]
    Ok(Identity(0, 0))
}

/// Files directly in the content folders (the two-character ones), and
/// their bytes: what [`snapshots::count_content`] counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Counts {
    files: u64,
    bytes: u64,
}

enum Linking {
    Idle,
    /// The thread, the top-level folders it is filling, and how many
    /// content files the counts expect it to link.
    Running(JoinHandle<Result<Linked>>, HashSet<String>, Option<u64>),
    /// Linked when the device first touches them: the committed folder's
    /// top-level folders not linked yet (the commit moves these in whole),
    /// and how many were linked, in how long.
    OnDemand(BTreeSet<String>, usize, std::time::Duration),
    /// It failed; the staging folder is incomplete and must not be committed.
    Failed(std::io::ErrorKind, String),
}

impl Linking {
    /// Record a failed link pass (the staging folder is then never
    /// committed) and give the error every later wait repeats.
    fn fail(&mut self, kind: std::io::ErrorKind, why: String) -> EngineError {
        *self = Linking::Failed(kind, why.clone());
        EngineError::Io(std::io::Error::new(kind, why))
    }
}

/// `dir`, as a folder that is there; else an error naming it as missing or
/// as not a folder (a mistyped path, a backup disk that is not mounted).
pub fn existing_folder(dir: &Path) -> std::io::Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    let (kind, what) = if dir.exists() {
        (std::io::ErrorKind::NotADirectory, "is not a folder")
    } else {
        (std::io::ErrorKind::NotFound, "does not exist")
    };
    Err(std::io::Error::new(
        kind,
        format!("{} {what}", dir.display()),
    ))
}

/// Make the folder `p` readable by its owner alone (Unix: 0700), where
/// the disk has permissions.
fn private(p: &Path) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        if fs::metadata(p)?.permissions().mode() & 0o077 != 0 {
            // A disk without Unix permissions (FAT, exFAT) may refuse;
            // its mount options decide then.
            if let Err(e) = fs::set_permissions(p, fs::Permissions::from_mode(0o700)) {
                log::info!("{} kept its permissions: {e}", p.display());
            }
        }
    }
    #[cfg(not(unix))]
    let _ = p;
    Ok(())
}

/// The I/O kind of an error, for a failure that is told again later.
fn io_kind(e: &EngineError) -> std::io::ErrorKind {
    match e {
        EngineError::Io(io) => io.kind(),
        _ => std::io::ErrorKind::Other,
    }
}

impl BackupDir {
    /// Take the per-device lock and repair what an interrupted run left.
    pub fn open(root: &Path, udid: &str) -> Result<BackupDir> {
        if udid.is_empty() || check_relative(udid).is_err() || udid.contains('/') {
            return Err(EngineError::Protocol(format!(
                "unusable device identifier {udid:?}"
            )));
        }
        existing_folder(root)?;
        // A disk mounted read-only (or after errors), a folder of another
        // user's: said with the folder and what it must be. The kind is
        // kept, so a full disk is still told as one.
        let unwritable = |e: std::io::Error| {
            EngineError::Io(std::io::Error::new(
                e.kind(),
                format!(
                    "{} cannot be written to ({e}): give a folder you may write to, on a disk mounted read-write",
                    root.display()
                ),
            ))
        };
        let meta = root.join(".ibackup");
        for sub in ["staging", "locks", "snapshots"] {
            fs::create_dir_all(meta.join(sub)).map_err(unwritable)?;
        }
        // Backups hold messages, photos and health data: the history and
        // every backup folder (made in staging) are the user's alone, as
        // Finder keeps its backups.
        private(&meta).map_err(unwritable)?;
        let lock_path = meta.join("locks").join(format!("{udid}.lock"));
        let lock = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(unwritable)?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(fs::TryLockError::WouldBlock) => {
                return Err(EngineError::Busy(lock_path.display().to_string()))
            }
            Err(fs::TryLockError::Error(e)) => return Err(e.into()),
        }
        let dir = BackupDir {
            root: root.to_path_buf(),
            udid: udid.to_string(),
            _lock: lock,
            linking: Mutex::new(Linking::Idle),
            counts: Mutex::new(None),
            made: Mutex::new(None),
            links_files: std::sync::OnceLock::new(),
            record: Mutex::new(None),
        };
        dir.recover()?;
        Ok(dir)
    }

    pub fn committed(&self) -> PathBuf {
        self.root.join(&self.udid)
    }

    pub fn staging(&self) -> PathBuf {
        self.root.join(".ibackup/staging").join(&self.udid)
    }

    fn old(&self) -> PathBuf {
        self.root.join(".ibackup/old").join(&self.udid)
    }

    /// A backup replaces `DIR/<UDID>` by renaming and keeps the previous
    /// one as a snapshot whose untouched folders are relative links into
    /// the new one. Were `DIR/<UDID>` a symbolic link to a folder elsewhere,
    /// the link would become that snapshot and its relative links would
    /// point nowhere: refuse before anything moves.
    fn refuse_a_link(&self) -> Result<()> {
        let committed = self.committed();
        match fs::symlink_metadata(&committed) {
            Ok(m) if m.file_type().is_symlink() => Err(EngineError::Io(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!(
                    "{} is a symbolic link; a backup replaces this folder, and through a link would break \
                     the snapshot it keeps of the old one. Move the folder it points to into {} in its place, \
                     or link {} itself instead",
                    committed.display(),
                    self.root.display(),
                    self.root.display()
                ),
            ))),
            Ok(m) if !m.is_dir() => Err(EngineError::Io(std::io::Error::new(
                std::io::ErrorKind::NotADirectory,
                format!("{} is not a folder", committed.display()),
            ))),
            _ => Ok(()),
        }
    }

    fn recover(&self) -> Result<()> {
        if !self.committed().exists() && self.old().exists() {
            // A commit of an earlier version, interrupted between its renames.
            fs::rename(self.old(), self.committed())?;
        }
        remove_tree(&self.old())?;
        snapshots::recover(&self.root, &self.udid)?;
        remove_tree(&self.staging())?;
        let _ = fs::remove_file(self.record_path());
        Ok(())
    }

    /// A fresh staging folder; with `link_previous`, continuing the
    /// committed backup. The top-level files (what the device reads first)
    /// are linked before this returns. Each folder is linked when the
    /// device first touches it ([`BackupDir::ready_for`]), and the ones it
    /// never touches move in whole at the commit; where the disk has no
    /// symbolic links (or `share` is false), all are linked in the
    /// background while the device decides what changed, and
    /// [`BackupDir::ready`] waits for them.
    pub fn prepare(&self, link_previous: bool) -> Result<()> {
        self.prepare_as(link_previous, true)
    }

    /// [`BackupDir::prepare`]; `share: false` links every folder in the
    /// background even where folders could be shared.
    pub fn prepare_as(&self, link_previous: bool, share: bool) -> Result<()> {
        self.refuse_a_link()?;
        self.ready()?;
        let staging = self.staging();
        remove_tree(&staging)?;
        fs::create_dir_all(&staging)?;
        private(&staging)?;
        *self.made.lock().expect("made lock") = Some(identity(&staging)?);
        let committed = self.committed();
        // The record starts from the previous one when the backup continues
        // it (the device then sends only what changed).
        let previous = snapshots::newest_id(&self.root, &self.udid)
            .map(|id| snapshots::digests_path(&self.root, &self.udid, &id))
            .filter(|p| link_previous && committed.is_dir() && p.is_file());
        self.drop_record();
        *self.record.lock().expect("record lock") =
            Some(Recorder::start(self.record_path(), previous));
        if !link_previous || !committed.is_dir() {
            self.set_counts(Some(Counts { files: 0, bytes: 0 }));
            return Ok(());
        }
        // Staging starts as the committed folder, whose record has its
        // counts; the links made (or the folders' times) confirm them.
        let info = snapshots::newest_info(&self.root, &self.udid);
        let recorded = info.as_ref().map(|i| Counts {
            files: i.files,
            bytes: i.bytes,
        });
        let mut folders = HashSet::new();
        let top = Dirs::open(&committed, &staging)?;
        for e in fs::read_dir(&committed)? {
            let e = e?;
            let ft = e.file_type()?;
            if ft.is_file() {
                top.link_or_copy(&e.file_name())?;
            } else if ft.is_dir() {
                folders.insert(e.file_name().to_string_lossy().into_owned());
            }
        }
        if share && can_link_folders(&staging) {
            let same = info
                .and_then(|i| i.folders)
                .is_some_and(|f| Some(f) == snapshots::folders_fingerprint(&committed, &[]));
            self.set_counts(if same { recorded } else { None });
            *self.linking.lock().expect("linking lock") =
                Linking::OnDemand(folders.into_iter().collect(), 0, Default::default());
            return Ok(());
        }
        if !self.links_files() {
            // FAT, exFAT: the "links" are copies of the whole backup. Say
            // so now if they cannot fit, not when the disk is full.
            let (files, bytes) = match recorded {
                Some(c) => (c.files, c.bytes),
                None => snapshots::count_content(&committed),
            };
            // Each file's last cluster is part empty: up to one each
            // (32 KB on a large exFAT disk, which adds up over small files).
            let cluster = fs4::allocation_granularity(&staging).unwrap_or(4096);
            let want = bytes.saturating_add(files.saturating_mul(cluster));
            let free = fs4::available_space(&staging).unwrap_or(u64::MAX);
            if want > free {
                remove_tree(&staging)?;
                return Err(EngineError::DiskFull {
                    needed: want - free,
                    first: false,
                });
            }
        }
        self.set_counts(recorded);
        let handle = std::thread::spawn(move || {
            let t0 = std::time::Instant::now();
            let r = link_folders(&committed, &staging);
            log::info!("staging links made in {:?}", t0.elapsed());
            r
        });
        *self.linking.lock().expect("linking lock") =
            Linking::Running(handle, folders, recorded.map(|c| c.files));
        Ok(())
    }

    /// Where the staged backup's digest record is written.
    fn record_path(&self) -> PathBuf {
        self.root
            .join(".ibackup/staging")
            .join(format!("{}.digests.db", self.udid))
    }

    fn send(&self, job: RecordJob) {
        if let Some(r) = &*self.record.lock().expect("record lock") {
            // A recorder that stopped says why when it is finished.
            let _ = r.tx.send(job);
        }
    }

    /// The device sent the file now at `local` (`device_path`): record its
    /// digest, if it is a content file.
    pub fn received(&self, device_path: &str, local: &Path) {
        if let Some(id) = file_id_of(device_path) {
            match ibackup_store::paths::open_no_follow(local) {
                Ok(f) => self.send(RecordJob::Put(id.to_string(), f)),
                Err(e) => {
                    log::info!("{} not recorded: {e}", local.display());
                    self.send(RecordJob::Forget(id.to_string()));
                }
            }
        }
    }

    /// The device starts sending `device_path`, written at `part`: if it is
    /// a content file, its digest is taken as its blocks land
    /// ([`BackupDir::receiving_more`], [`BackupDir::received_whole`]).
    /// Whether it is followed.
    pub fn receiving(&self, device_path: &str, part: &Path) -> bool {
        let Some(id) = file_id_of(device_path) else {
            return false;
        };
        match File::open(part) {
            Ok(f) => {
                self.send(RecordJob::Begin(id.to_string(), f));
                true
            }
            Err(e) => {
                log::info!("{} not recorded: {e}", part.display());
                self.send(RecordJob::Forget(id.to_string()));
                false
            }
        }
    }

    /// `n` more bytes of the file being received are written.
    pub fn receiving_more(&self, n: u64) {
        self.send(RecordJob::More(n));
    }

    /// The file being received is whole and in place (`true`), or failed.
    pub fn received_whole(&self, whole: bool) {
        self.send(if whole {
            RecordJob::End
        } else {
            RecordJob::Abandon
        });
    }

    /// The device moved `from` to `to` (now at `local`).
    pub fn moved(&self, from: &str, to: &str, local: &Path) {
        let (a, b) = (file_id_of(from), file_id_of(to));
        if a != b {
            if let Some(a) = a {
                self.send(RecordJob::Forget(a.to_string()));
            }
            if b.is_some() && local.is_file() {
                self.received(to, local);
            }
        }
    }

    /// Finish the record; its path (`None` when none was started).
    fn finish_record(&self) -> Result<Option<PathBuf>> {
        let r = self.record.lock().expect("record lock").take();
        r.map(Recorder::finish).transpose()
    }

    /// Stop recording and delete the record.
    fn drop_record(&self) {
        let _ = self.finish_record();
        let _ = fs::remove_file(self.record_path());
    }

    /// Files were removed behind the session's back (`backup --only`
    /// keeping some): the commit counts what is there.
    pub fn recount(&self) {
        self.set_counts(None);
    }

    fn set_counts(&self, c: Option<Counts>) {
        *self.counts.lock().expect("counts lock") = c;
    }

    fn adjust_counts(&self, f: impl FnOnce(Counts) -> Option<Counts>) {
        let mut counts = self.counts.lock().expect("counts lock");
        *counts = counts.and_then(f);
    }

    /// The device wrote a file of `new` bytes at `device_path`; `old` is
    /// what was there before (the caller looked without following links).
    pub fn wrote(&self, device_path: &str, old: Option<&fs::Metadata>, new: u64) {
        match place(device_path) {
            Place::Outside => {}
            Place::ContentFile => self.adjust_counts(|c| {
                let (files, bytes) = match old {
                    None => (c.files + 1, c.bytes),
                    Some(m) if m.is_file() => (c.files, c.bytes.checked_sub(m.len())?),
                    Some(_) => return None,
                };
                Some(Counts {
                    files,
                    bytes: bytes + new,
                })
            }),
            Place::ContentOther => self.set_counts(None),
        }
    }

    /// `device_path`, which was `old` (looked at without following links),
    /// has been removed.
    pub fn removed(&self, device_path: &str, old: &fs::Metadata) {
        if place(device_path) == Place::ContentFile {
            if let Some(id) = file_id_of(device_path) {
                self.send(RecordJob::Forget(id.to_string()));
            }
        }
        match place(device_path) {
            Place::Outside => {}
            Place::ContentFile if old.is_file() => self.adjust_counts(|c| {
                Some(Counts {
                    files: c.files.checked_sub(1)?,
                    bytes: c.bytes.checked_sub(old.len())?,
                })
            }),
            _ => self.set_counts(None),
        }
    }

    /// The device created the folder `device_path`.
    pub fn created_folder(&self, device_path: &str) {
        // A content folder itself holds nothing yet; a folder inside one is
        // an entry the counts do not follow.
        if place(device_path) == Place::ContentFile {
            self.set_counts(None);
        }
    }

    /// Any other change at `device_path` (a move, a copy, a failed removal).
    pub fn changed(&self, device_path: &str) {
        if place(device_path) != Place::Outside {
            self.set_counts(None);
        }
    }

    /// Before the device touches `device_path`, if it lies in a folder of
    /// the committed backup (or is the backup folder as a whole): link that
    /// folder (every folder) now if it is not linked yet, or wait for the
    /// background links. Everything else (top-level files, new folders
    /// such as `Snapshot/`) goes at once.
    pub fn ready_for(&self, device_path: &str) -> Result<()> {
        let rest = device_path.split_once('/').map_or("", |(_, r)| r);
        let first = rest.split('/').next().unwrap_or("");
        let mut linking = self.linking.lock().expect("linking lock");
        let busy = match &mut *linking {
            Linking::Running(_, folders, _) => first.is_empty() || folders.contains(first),
            Linking::OnDemand(pending, linked_folders, took) => {
                let t0 = std::time::Instant::now();
                let now: Vec<String> = if first.is_empty() {
                    std::mem::take(pending).into_iter().collect()
                } else {
                    pending.take(first).into_iter().collect()
                };
                let (committed, staging) = (self.committed(), self.staging());
                for name in now {
                    let to = staging.join(&name);
                    let linked = self
                        .make_folder(&to)
                        .and_then(|()| link_tree(&committed.join(&name), &to));
                    if let Err(e) = linked {
                        return Err(linking.fail(
                            io_kind(&e),
                            format!(
                                "could not link the previous backup's folder {name} into the staging folder: {e}"
                            ),
                        ));
                    }
                    *linked_folders += 1;
                }
                *took += t0.elapsed();
                false
            }
            Linking::Idle => false,
            Linking::Failed(..) => true,
        };
        drop(linking);
        if busy {
            self.ready()
        } else {
            Ok(())
        }
    }

    /// Link everything not linked yet (before a change that may touch any
    /// folder), and wait for it.
    pub fn link_all(&self) -> Result<()> {
        self.ready_for(&self.udid)
    }

    /// Whether the backup disk has hard links (FAT and exFAT do not:
    /// continuing a backup there copies it), found out on first asking.
    pub fn links_files(&self) -> bool {
        *self
            .links_files
            .get_or_init(|| can_link_files(&self.root.join(".ibackup/staging")))
    }

    /// Whether the staging folder is still the one `prepare` made; else
    /// the disk went away ([`EngineError::DiskGone`]).
    pub fn still_there(&self) -> Result<()> {
        let Some(made) = *self.made.lock().expect("made lock") else {
            return Ok(());
        };
        match identity(&self.staging()) {
            Ok(now) if now == made => Ok(()),
            Ok(_) => Err(EngineError::DiskGone(format!(
                "{} is no longer the folder the backup started in",
                self.root.display()
            ))),
            Err(e) => Err(EngineError::DiskGone(format!(
                "{}: {e}",
                self.staging().display()
            ))),
        }
    }

    /// Make the folder `p` (and its parents) inside the staging folder,
    /// which must still be the one `prepare` made: never anything at or
    /// above it. (`create_dir_all` alone would make the whole path again
    /// on the disk below a mount point that went away, and the backup
    /// would carry on there.)
    pub fn make_folder(&self, p: &Path) -> Result<()> {
        if p.is_dir() {
            return Ok(());
        }
        self.still_there()?;
        if !p.starts_with(self.staging()) || p == self.staging() {
            return Err(EngineError::Protocol(format!(
                "refused to make {} outside the staging folder",
                p.display()
            )));
        }
        make_below(&self.staging(), p).map_err(|e| match self.still_there() {
            Err(gone) => gone,
            Ok(()) => e,
        })
    }

    /// Wait until the staging folder holds everything `prepare` started to
    /// link in the background; an error if that failed (then, and every
    /// time after).
    pub fn ready(&self) -> Result<()> {
        let mut linking = self.linking.lock().expect("linking lock");
        let (kind, why) = match std::mem::replace(&mut *linking, Linking::Idle) {
            Linking::Idle => return Ok(()),
            on_demand @ Linking::OnDemand(..) => {
                *linking = on_demand;
                return Ok(());
            }
            Linking::Running(handle, _, expected) => match handle.join() {
                Ok(Ok(linked)) => {
                    // A record that does not match what is there (another
                    // tool wrote into the folder) is not trusted.
                    if linked.other || Some(linked.files) != expected {
                        self.set_counts(None);
                    }
                    return Ok(());
                }
                Ok(Err(e)) => (
                    io_kind(&e),
                    format!("could not link the previous backup into the staging folder: {e}"),
                ),
                Err(_) => (
                    std::io::ErrorKind::Other,
                    "linking the previous backup into the staging folder failed".to_string(),
                ),
            },
            Linking::Failed(kind, why) => (kind, why),
        };
        Err(linking.fail(kind, why))
    }

    /// Map a path the device names (`<UDID>/…`) into the staging folder,
    /// refusing anything else: other devices' folders, absolute paths,
    /// `..`, NUL.
    pub fn resolve(&self, device_path: &str) -> Result<PathBuf> {
        resolve_below(&self.udid, &self.staging(), device_path)
    }

    /// Make the staging folder the newest complete backup; the backup it
    /// replaces stays as a snapshot (see [`crate::snapshots`]).
    pub fn commit(&self, full: bool, filtered: bool) -> Result<snapshots::Info> {
        struct Committing;
        impl Drop for Committing {
            fn drop(&mut self) {
                COMMITTING.store(false, std::sync::atomic::Ordering::SeqCst);
            }
        }
        COMMITTING.store(true, std::sync::atomic::Ordering::SeqCst);
        let _committing = Committing;
        self.ready()?;
        let staging = self.staging();
        // The folders the device never touched come along whole.
        let inherit: Vec<String> = match &mut *self.linking.lock().expect("linking lock") {
            Linking::OnDemand(pending, linked, took) => {
                log::info!(
                    "staging links made on demand: {linked} folders in {took:?}; {} moved whole",
                    pending.len()
                );
                std::mem::take(pending).into_iter().collect()
            }
            _ => Vec::new(),
        };
        let committed = self.committed();
        let inherited: Vec<PathBuf> = inherit.iter().map(|n| committed.join(n)).collect();
        if full {
            // A full backup re-sent every file: share the unchanged ones
            // with the previous snapshot, as an incremental one would.
            let shared = self.share_unchanged()?;
            log::info!("full backup: {shared} files shared with the previous snapshot");
        }
        // Durable before visible: a power cut just after the commit must
        // not leave a newest backup whose new files are empty (file data
        // reaches the disk later than the renames otherwise), which the
        // next incremental backup would then never send again.
        make_durable(&staging)?;
        let counts = *self.counts.lock().expect("counts lock");
        let counts = counts.map(|c| (c.files, c.bytes)).unwrap_or_else(|| {
            let mut content = snapshots::content_folders(&staging);
            content.extend(
                inherited
                    .iter()
                    .filter(|p| p.file_name().is_some_and(|n| n.len() == 2) && p.is_dir())
                    .cloned(),
            );
            snapshots::count_folders(&content)
        });
        let mut info = snapshots::describe_counted(
            &staging,
            "",
            full,
            if filtered { "filtered" } else { "complete" },
            Some(counts),
        );
        info.folders = snapshots::folders_fingerprint(&staging, &inherited);
        // The snapshot's date is when it was made, whatever the device's clock said.
        info.date = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(info.date);
        let record = self.finish_record()?;
        snapshots::commit(
            &self.root,
            &self.udid,
            &staging,
            info,
            &inherit,
            record.as_deref(),
        )
    }

    /// Replace each staged content file whose bytes equal the newest
    /// snapshot's file of the same ID by a hard link to that file (the
    /// committed file is only linked, never opened for writing). Costs a
    /// read of both copies of each same-sized pair: a full backup's cost,
    /// proportional to what it received. Returns how many were shared.
    fn share_unchanged(&self) -> Result<u64> {
        let (staging, committed) = (self.staging(), self.committed());
        if !committed.is_dir() {
            return Ok(0);
        }
        let mut shared = 0;
        for sub in fs::read_dir(&staging)?.flatten() {
            let name = sub.file_name();
            if name.len() != 2 || !sub.path().is_dir() {
                continue;
            }
            for f in fs::read_dir(sub.path())?.flatten() {
                let new = f.path();
                let old = committed.join(&name).join(f.file_name());
                let (Ok(a), Ok(b)) = (fs::metadata(&new), fs::metadata(&old)) else {
                    continue;
                };
                if !a.is_file() || !b.is_file() || a.len() != b.len() || !same_bytes(&new, &old)? {
                    continue;
                }
                let mut tmp = new.clone().into_os_string();
                tmp.push(".ibackup-link");
                let tmp = PathBuf::from(tmp);
                let _ = fs::remove_file(&tmp);
                if fs::hard_link(&old, &tmp).is_ok() {
                    fs::rename(&tmp, &new)?;
                    shared += 1;
                }
            }
        }
        Ok(shared)
    }

    /// Drop the staging folder (after a failed session).
    pub fn abandon(&self) {
        let _ = self.ready();
        self.drop_record();
        let _ = remove_tree(&self.staging());
    }
}

impl Drop for BackupDir {
    /// No linking thread outlives the session (nor the lock).
    fn drop(&mut self) {
        let _ = self.ready();
        let _ = self.finish_record();
    }
}

/// Before a command reads `root`: finish or undo what an interrupted
/// backup, commit or prune left (the newest folder moved away mid-commit,
/// a staging folder, half-written records), for each device with
/// anything to repair, when no backup of it is running (its lock is
/// free). A disk that cannot be written is read as it is.
pub fn repair_for_reading(root: &Path) {
    let meta = root.join(".ibackup");
    if !meta.is_dir() {
        return;
    }
    let mut udids = BTreeSet::new();
    for sub in ["snapshots", "staging"] {
        for e in fs::read_dir(meta.join(sub)).into_iter().flatten().flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let udid = name.split('.').next().unwrap_or("").to_string();
            if !udid.is_empty() {
                udids.insert(udid);
            }
        }
    }
    for udid in udids {
        if !meta.join("staging").join(&udid).exists() && !snapshots::leftovers(root, &udid) {
            continue;
        }
        match BackupDir::open(root, &udid) {
            Ok(_) => log::info!("repaired what an interrupted run left for {udid}"),
            Err(EngineError::Busy(_)) => {}
            Err(e) => log::info!("could not repair {udid} now ({e}); reading as it is"),
        }
    }
}

/// Where a device path (`<UDID>/…`, already checked) lies, for the counts.
#[derive(Debug, PartialEq, Eq)]
enum Place {
    /// Top-level files and folders other than the content folders.
    Outside,
    /// `<UDID>/xx/name`: an entry of a content folder.
    ContentFile,
    /// The backup folder itself, a content folder, or deeper inside one.
    ContentOther,
}

fn place(device_path: &str) -> Place {
    let rest = device_path
        .split_once('/')
        .map_or("", |(_, r)| r)
        .trim_end_matches('/');
    if rest.is_empty() {
        return Place::ContentOther;
    }
    let (first, below) = rest.split_once('/').unwrap_or((rest, ""));
    if first.len() != 2 {
        Place::Outside
    } else if !below.is_empty() && !below.contains('/') {
        Place::ContentFile
    } else {
        Place::ContentOther
    }
}

/// What the link pass found directly in the content folders.
#[derive(Debug, Default)]
struct Linked {
    files: u64,
    /// Something else there (a folder, a link): not what the counts follow.
    other: bool,
}

/// Make the folder `p` and those between it and `base`, one level at a
/// time, never `base` or anything above it: when `base` is gone (the
/// backup disk unmounted between a check and this call) the first level
/// fails with "not found" instead of `create_dir_all` making the whole path
/// again on the disk below the mount point.
fn make_below(base: &Path, p: &Path) -> Result<()> {
    let Ok(rest) = p.strip_prefix(base) else {
        return Err(EngineError::Protocol(format!(
            "refused to make {} outside {}",
            p.display(),
            base.display()
        )));
    };
    let mut at = base.to_path_buf();
    for c in rest.components() {
        let std::path::Component::Normal(name) = c else {
            return Err(EngineError::Protocol(format!(
                "refused to make {}: not a plain path below {}",
                p.display(),
                base.display()
            )));
        };
        at.push(name);
        match fs::create_dir(&at) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && at.is_dir() => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// Link every file below the committed backup's folders into `staging`
/// (the top-level files are done already).
fn link_folders(committed: &Path, staging: &Path) -> Result<Linked> {
    let mut linked = Linked::default();
    for e in fs::read_dir(committed)? {
        let e = e?;
        let ft = e.file_type()?;
        if ft.is_dir() {
            let to = staging.join(e.file_name());
            make_below(staging, &to)?;
            let (files, other) = link_tree(&e.path(), &to)?;
            if e.file_name().len() == 2 {
                linked.files += files;
                linked.other |= other;
            }
        } else if !ft.is_file() && e.file_name().len() == 2 {
            linked.other = true;
        }
    }
    Ok(linked)
}

/// Link the files of `from` into the existing folder `to`, recursively.
/// Returns how many files were directly in `from`, and whether anything
/// else was.
fn link_tree(from: &Path, to: &Path) -> Result<(u64, bool)> {
    let dirs = Dirs::open(from, to)?;
    let (mut files, mut other) = (0, false);
    for e in fs::read_dir(from)? {
        let e = e?;
        let ft = e.file_type()?;
        let name = e.file_name();
        if ft.is_dir() {
            let sub = to.join(&name);
            make_below(to, &sub)?;
            link_tree(&e.path(), &sub)?;
            other = true;
        } else if ft.is_file() {
            dirs.link_or_copy(&name)?;
            files += 1;
        } else {
            other = true;
        }
    }
    Ok((files, other))
}

/// A folder to link from and one to link into.
struct Dirs {
    from: PathBuf,
    to: PathBuf,
    /// Both open, so that each link names only the file (`linkat`) instead
    /// of walking both full paths again: most of a big backup's staging time.
    #[cfg(unix)]
    open: (File, File),
}

impl Dirs {
    fn open(from: &Path, to: &Path) -> Result<Dirs> {
        Ok(Dirs {
            from: from.to_path_buf(),
            to: to.to_path_buf(),
            #[cfg(unix)]
            open: (File::open(from)?, File::open(to)?),
        })
    }

    /// Link the file `name` across; where the filesystem has no hard links,
    /// copy it (slower, same result).
    fn link_or_copy(&self, name: &std::ffi::OsStr) -> Result<()> {
        if self.link(name).is_err() {
            fs::copy(self.from.join(name), self.to.join(name))?;
        }
        Ok(())
    }

    #[cfg(unix)]
    fn link(&self, name: &std::ffi::OsStr) -> std::io::Result<()> {
        use std::os::unix::ffi::OsStrExt;
        use std::os::unix::io::AsRawFd;
        let c = std::ffi::CString::new(name.as_bytes())?;
        // SAFETY: both descriptors are open folders owned by self, and `c`
        // is a NUL-terminated name that outlives the call.
        let r = unsafe {
            libc::linkat(
                self.open.0.as_raw_fd(),
                c.as_ptr(),
                self.open.1.as_raw_fd(),
                c.as_ptr(),
                0,
            )
        };
        if r == 0 {
            Ok(())
        } else {
            Err(std::io::Error::last_os_error())
        }
    }

    /// Elsewhere, by full path.
    #[cfg(not(unix))]
    fn link(&self, name: &std::ffi::OsStr) -> std::io::Result<()> {
        fs::hard_link(self.from.join(name), self.to.join(name))
    }
}

/// `<udid>/rest` → `base/rest`, refusing other devices' folders, absolute
/// paths, `..`, NUL and empty components.
pub fn resolve_below(udid: &str, base: &Path, device_path: &str) -> Result<PathBuf> {
    let (first, rest) = device_path.split_once('/').unwrap_or((device_path, ""));
    let refuse =
        |why: &str| EngineError::Protocol(format!("refused device path {device_path:?}: {why}"));
    if first != udid {
        return Err(refuse("outside this device's backup"));
    }
    let rest = rest.trim_end_matches('/');
    check_relative(rest).map_err(|e| refuse(&e.to_string()))?;
    Ok(if rest.is_empty() {
        base.to_path_buf()
    } else {
        base.join(rest)
    })
}

/// The part of the host's disk a device session may touch.
pub enum Area<'a> {
    /// A backup: the staging folder, written by the device.
    Staging(&'a BackupDir),
    /// A restore or a password change: `<udid>/…` read below `root`, with
    /// `overrides` (device path → local file) for a filtered index. Never
    /// written.
    ReadOnly {
        udid: String,
        root: PathBuf,
        overrides: HashMap<String, PathBuf>,
    },
}

impl Area<'_> {
    /// Where a device path may be read from.
    pub fn resolve(&self, device_path: &str) -> Result<PathBuf> {
        match self {
            Area::Staging(d) => d.resolve(device_path),
            Area::ReadOnly {
                udid,
                root,
                overrides,
            } => {
                let p = resolve_below(udid, root, device_path)?;
                let key = device_path.trim_end_matches('/');
                Ok(overrides.get(key).cloned().unwrap_or(p))
            }
        }
    }

    /// Open a file the device asks for, following no symbolic link out
    /// of the backup folder ([`ibackup_store::paths::open_in`]): a backup
    /// someone handed us must not send the host's files to a phone.
    pub fn open(&self, device_path: &str) -> Result<File> {
        let local = self.resolve(device_path)?;
        let (base, overridden) = match self {
            Area::Staging(d) => (d.staging(), false),
            Area::ReadOnly {
                root, overrides, ..
            } => (
                root.clone(),
                overrides.contains_key(device_path.trim_end_matches('/')),
            ),
        };
        if overridden {
            return Ok(File::open(local)?);
        }
        let rel = local
            .strip_prefix(&base)
            .map_err(|_| EngineError::Protocol(format!("refused device path {device_path:?}")))?;
        let bounds = ibackup_store::paths::content_bounds(&base);
        Ok(ibackup_store::paths::open_in(&base, rel, &bounds)?)
    }

    /// Where a device path may be written; a read-only area refuses.
    pub fn resolve_write(&self, device_path: &str) -> Result<PathBuf> {
        match self {
            Area::Staging(d) => d.resolve(device_path),
            Area::ReadOnly { .. } => Err(EngineError::Protocol(format!(
                "refused device path {device_path:?}: the backup being read is never written"
            ))),
        }
    }

    /// Before a change that may touch anything: everything linked (see
    /// [`BackupDir::link_all`]).
    pub fn ready_all(&self) -> Result<()> {
        match self {
            Area::Staging(d) => d.link_all(),
            Area::ReadOnly { .. } => Ok(()),
        }
    }

    /// Wait, if need be, before touching `device_path` (see
    /// [`BackupDir::ready_for`]).
    pub fn ready_for(&self, device_path: &str) -> Result<()> {
        match self {
            Area::Staging(d) => d.ready_for(device_path),
            Area::ReadOnly { .. } => Ok(()),
        }
    }

    /// The device wrote a file (see [`BackupDir::wrote`]).
    pub fn wrote(&self, device_path: &str, old: Option<&fs::Metadata>, new: u64) {
        if let Area::Staging(d) = self {
            d.wrote(device_path, old, new);
        }
    }

    /// Something was removed (see [`BackupDir::removed`]).
    pub fn removed(&self, device_path: &str, old: &fs::Metadata) {
        if let Area::Staging(d) = self {
            d.removed(device_path, old);
        }
    }

    /// The device sent a file (see [`BackupDir::received`]).
    pub fn received(&self, device_path: &str, local: &Path) {
        if let Area::Staging(d) = self {
            d.received(device_path, local);
        }
    }

    /// See [`BackupDir::receiving`]; a read-only area follows nothing.
    pub fn receiving(&self, device_path: &str, part: &Path) -> bool {
        match self {
            Area::Staging(d) => d.receiving(device_path, part),
            Area::ReadOnly { .. } => false,
        }
    }

    /// See [`BackupDir::receiving_more`].
    pub fn receiving_more(&self, n: u64) {
        if let Area::Staging(d) = self {
            d.receiving_more(n);
        }
    }

    /// See [`BackupDir::received_whole`].
    pub fn received_whole(&self, whole: bool) {
        if let Area::Staging(d) = self {
            d.received_whole(whole);
        }
    }

    /// The device moved a file (see [`BackupDir::moved`]).
    pub fn moved(&self, from: &str, to: &str, local: &Path) {
        if let Area::Staging(d) = self {
            d.moved(from, to, local);
        }
    }

    /// A folder was created (see [`BackupDir::created_folder`]).
    pub fn created_folder(&self, device_path: &str) {
        if let Area::Staging(d) = self {
            d.created_folder(device_path);
        }
    }

    /// Anything else changed (see [`BackupDir::changed`]).
    pub fn changed(&self, device_path: &str) {
        if let Area::Staging(d) = self {
            d.changed(device_path);
        }
    }

    /// Make a folder the device writes into (see [`BackupDir::make_folder`]).
    pub fn make_folder(&self, p: &Path) -> Result<()> {
        match self {
            Area::Staging(d) => d.make_folder(p),
            Area::ReadOnly { .. } => Err(EngineError::Protocol(format!(
                "refused to make {}: the backup being read is never written",
                p.display()
            ))),
        }
    }

    /// See [`BackupDir::still_there`]; a read-only area always is.
    pub fn still_there(&self) -> Result<()> {
        match self {
            Area::Staging(d) => d.still_there(),
            Area::ReadOnly { .. } => Ok(()),
        }
    }

    /// A folder on the disk the device asks the free space of.
    pub fn disk(&self) -> PathBuf {
        match self {
            Area::Staging(d) => d.staging(),
            Area::ReadOnly { root, .. } => root.clone(),
        }
    }
}

/// Can `dir`'s disk hold symbolic links (not FAT or exFAT, say; never on
/// Windows, where making one needs a privilege)?
#[cfg(unix)]
fn can_link_folders(dir: &Path) -> bool {
    let probe = dir.join(".ibackup-link-probe");
    let _ = fs::remove_file(&probe);
    let ok = std::os::unix::fs::symlink(".", &probe).is_ok();
    let _ = fs::remove_file(&probe);
    ok
}

#[cfg(not(unix))]
fn can_link_folders(_dir: &Path) -> bool {
    false
}

/// Whether the disk holding `dir` has hard links (FAT and exFAT do not:
/// there, continuing a backup copies it).
fn can_link_files(dir: &Path) -> bool {
    // Names of this call's own: backups of two devices share the folder.
    static CALLS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let name = format!(".ibackup-link-probe-{}-{n}", std::process::id());
    let (probe, twin) = (dir.join(&name), dir.join(name + "-2"));
    let _ = fs::remove_file(&twin);
    let ok = fs::write(&probe, b"").is_ok() && fs::hard_link(&probe, &twin).is_ok();
    let _ = fs::remove_file(&probe);
    let _ = fs::remove_file(&twin);
    ok
}

/// Do two files hold the same bytes? Reads both, stopping at the first difference.
fn same_bytes(a: &Path, b: &Path) -> Result<bool> {
    use std::io::Read;
    let (mut fa, mut fb) = (File::open(a)?, File::open(b)?);
    let (mut ba, mut bb) = (vec![0u8; 256 * 1024], vec![0u8; 256 * 1024]);
    loop {
        let n = fa.read(&mut ba)?;
        if n == 0 {
            let mut one = [0u8; 1];
            return Ok(fb.read(&mut one)? == 0);
        }
        if fb.read_exact(&mut bb[..n]).is_err() || ba[..n] != bb[..n] {
            return Ok(false);
        }
    }
}

/// Put everything written below `dir` on the disk. Linux: one `syncfs`
/// of its file system. Elsewhere: each file written for this backup (on
/// Unix, those with one link: a file linked from an older snapshot was
/// made durable by an earlier commit), then one full flush of the index.
fn make_durable(dir: &Path) -> Result<()> {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    {
        use std::os::fd::AsRawFd;
        let d = File::open(dir)?;
        // SAFETY: syncfs(2) on a descriptor we own for the call.
        if unsafe { libc::syncfs(d.as_raw_fd()) } != 0 {
            return Err(std::io::Error::last_os_error().into());
        }
        Ok(())
    }
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    {
        for f in written_here(dir) {
            sync_file(&f)?;
        }
        if let Ok(f) = File::open(dir.join("Manifest.db")) {
            // On macOS this is F_FULLFSYNC: through the drive's cache too.
            f.sync_all()?;
        }
        Ok(())
    }
}

/// Flush one file's data to the disk (not, on macOS, through the drive's
/// own cache: [`make_durable`] does that once at the end).
#[cfg(not(any(target_os = "linux", target_os = "android")))]
fn sync_file(path: &Path) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        use std::os::fd::AsRawFd;
        let f = File::open(path)?;
        // SAFETY: fsync(2) on a descriptor we own for the call.
        if unsafe { libc::fsync(f.as_raw_fd()) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    }
    #[cfg(not(unix))]
    {
        // FlushFileBuffers needs a handle that may write.
        File::options().write(true).open(path)?.sync_data()
    }
}

/// The regular files below `dir` this backup wrote: on Unix those with a
/// single link (not shared with an older snapshot); elsewhere all.
#[cfg_attr(any(target_os = "linux", target_os = "android"), allow(dead_code))]
fn written_here(dir: &Path) -> impl Iterator<Item = PathBuf> {
    walkdir::WalkDir::new(dir)
        .into_iter()
        .flatten()
        .filter(|e| e.file_type().is_file())
        .filter(not_shared)
        .map(|e| e.into_path())
}

#[cfg(unix)]
fn not_shared(e: &walkdir::DirEntry) -> bool {
    use std::os::unix::fs::MetadataExt;
    e.metadata().is_ok_and(|m| m.nlink() == 1)
}

#[cfg(not(unix))]
fn not_shared(_: &walkdir::DirEntry) -> bool {
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The disk under the staging folder gone between the check and the
    /// call: nothing is made at or above it, only below it while it is there.
    #[test]
    fn folders_are_made_only_below_a_staging_folder_that_is_there() {
        let root = tempfile::tempdir().unwrap();
        let base = root.path().join("mnt/backups/.ibackup/staging/U");
        fs::create_dir_all(&base).unwrap();
        make_below(&base, &base.join("ab/c/d")).unwrap();
        assert!(base.join("ab/c/d").is_dir());
        make_below(&base, &base.join("ab/c")).unwrap();
        fs::remove_dir_all(root.path().join("mnt/backups")).unwrap();
        let e = make_below(&base, &base.join("ab/c")).unwrap_err();
        assert!(
            matches!(e, EngineError::Io(ref io) if io.kind() == std::io::ErrorKind::NotFound),
            "{e}"
        );
        assert!(!root.path().join("mnt/backups").exists());
        fs::create_dir_all(&base).unwrap();
        assert!(make_below(&base, &base.join("../elsewhere")).is_err());
        assert!(make_below(&base, &root.path().join("other")).is_err());
        assert!(!base.parent().unwrap().join("elsewhere").exists());
    }

    #[test]
    fn what_a_commit_flushes_is_what_this_backup_wrote() {
        let t = tempfile::tempdir().unwrap();
        let (old, staging) = (t.path().join("old"), t.path().join("staging"));
        fs::create_dir_all(old.join("ab")).unwrap();
        fs::create_dir_all(staging.join("ab")).unwrap();
        fs::write(staging.join("ab/new"), b"received").unwrap();
        fs::write(staging.join("Manifest.db"), b"index").unwrap();
        fs::write(old.join("ab/same"), b"unchanged").unwrap();
        fs::hard_link(old.join("ab/same"), staging.join("ab/same")).unwrap();
        #[cfg(unix)]
        std::os::unix::fs::symlink("../old", staging.join("link")).unwrap();
        let mut got: Vec<PathBuf> = written_here(&staging).collect();
        got.sort();
        let mut want = vec![staging.join("Manifest.db"), staging.join("ab/new")];
        if cfg!(not(unix)) {
            want.push(staging.join("ab/same"));
        }
        want.sort();
        assert_eq!(got, want);
        make_durable(&staging).unwrap();
        assert!(
            make_durable(&t.path().join("gone")).is_err(),
            "a staging folder gone is an error, not a silent success"
        );
    }

    #[test]
    fn resolve_refuses_escapes() {
        let root = tempfile::tempdir().unwrap();
        let d = BackupDir::open(root.path(), "U1").unwrap();
        assert_eq!(
            d.resolve("U1/ab/abcd").unwrap(),
            d.staging().join("ab/abcd")
        );
        assert_eq!(d.resolve("U1").unwrap(), d.staging());
        for bad in [
            "U2/ab",
            "../U1/x",
            "U1/../../etc/passwd",
            "/etc/passwd",
            "U1/a\0b",
            "U1//x",
            "U1/./x",
        ] {
            assert!(d.resolve(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn a_read_only_area_serves_overrides_and_refuses_writes() {
        let root = tempfile::tempdir().unwrap();
        let area = Area::ReadOnly {
            udid: "A".into(),
            root: root.path().join("A"),
            overrides: HashMap::from([("A/Manifest.db".to_string(), root.path().join("f.db"))]),
        };
        assert_eq!(
            area.resolve("A/Manifest.db").unwrap(),
            root.path().join("f.db")
        );
        assert_eq!(area.resolve("A/ab/x").unwrap(), root.path().join("A/ab/x"));
        assert!(area.resolve("B/Manifest.db").is_err());
        assert!(area.resolve("A/../B/x").is_err());
        assert!(area.resolve_write("A/ab/x").is_err());
    }

    #[test]
    fn a_missing_folder_or_a_file_is_named_for_what_it_is() {
        let root = tempfile::tempdir().unwrap();
        let missing = root.path().join("nowhere");
        let file = root.path().join("a-file");
        fs::write(&file, b"x").unwrap();
        for (path, kind, says) in [
            (&missing, std::io::ErrorKind::NotFound, "does not exist"),
            (&file, std::io::ErrorKind::NotADirectory, "is not a folder"),
        ] {
            match BackupDir::open(path, "U1") {
                Err(EngineError::Io(e)) => {
                    assert_eq!(e.kind(), kind);
                    assert!(e.to_string().ends_with(says), "{e}");
                }
                other => panic!("{path:?}: {:?}", other.map(|_| ())),
            }
        }
        assert_eq!(fs::read(&file).unwrap(), b"x", "the file is left alone");
        assert!(!missing.exists(), "nothing is created");
    }

    #[cfg(unix)]
    #[test]
    fn a_linked_device_folder_is_refused_before_anything_moves() {
        let root = tempfile::tempdir().unwrap();
        let elsewhere = root.path().join("elsewhere");
        fs::create_dir_all(elsewhere.join("ab")).unwrap();
        fs::write(elsewhere.join("ab/abcd"), b"x").unwrap();
        fs::write(elsewhere.join("Manifest.db"), b"db").unwrap();
        let dir = root.path().join("dir");
        fs::create_dir_all(&dir).unwrap();
        std::os::unix::fs::symlink(&elsewhere, dir.join("U1")).unwrap();
        let d = BackupDir::open(&dir, "U1").unwrap();
        for link_previous in [true, false] {
            match d.prepare(link_previous) {
                Err(EngineError::Io(e)) => assert!(e.to_string().contains("symbolic link"), "{e}"),
                other => panic!("{:?}", other),
            }
        }
        assert!(fs::symlink_metadata(dir.join("U1"))
            .unwrap()
            .file_type()
            .is_symlink());
        assert_eq!(fs::read(elsewhere.join("ab/abcd")).unwrap(), b"x");
        assert_eq!(fs::read_dir(&elsewhere).unwrap().count(), 2);
        assert!(!d.staging().exists(), "nothing staged");
    }

    #[test]
    fn second_session_is_refused_while_the_first_holds_the_lock() {
        let root = tempfile::tempdir().unwrap();
        let _first = BackupDir::open(root.path(), "U1").unwrap();
        assert!(matches!(
            BackupDir::open(root.path(), "U1"),
            Err(EngineError::Busy(_))
        ));
        assert!(
            BackupDir::open(root.path(), "U2").is_ok(),
            "other devices are independent"
        );
    }

    #[test]
    fn staging_links_never_change_the_committed_files_and_commit_swaps() {
        let root = tempfile::tempdir().unwrap();
        let committed = root.path().join("U1");
        fs::create_dir_all(committed.join("ab")).unwrap();
        fs::write(committed.join("ab/file"), b"old").unwrap();
        let d = BackupDir::open(root.path(), "U1").unwrap();
        d.prepare(true).unwrap();
        d.ready_for("U1/ab/file").unwrap();
        let staged = d.resolve("U1/ab/file").unwrap();
        assert_eq!(fs::read(&staged).unwrap(), b"old");
        // Replace as the engine does: new file, rename over the link.
        fs::write(staged.with_extension("part"), b"new").unwrap();
        fs::rename(staged.with_extension("part"), &staged).unwrap();
        assert_eq!(
            fs::read(committed.join("ab/file")).unwrap(),
            b"old",
            "committed file untouched"
        );
        d.commit(false, false).unwrap();
        assert_eq!(fs::read(committed.join("ab/file")).unwrap(), b"new");
        assert!(!d.staging().exists());
    }

    #[test]
    fn staging_links_every_level_and_waits_for_the_background_links() {
        let root = tempfile::tempdir().unwrap();
        let committed = root.path().join("U1");
        fs::create_dir_all(committed.join("ab/deeper")).unwrap();
        fs::write(committed.join("Manifest.db"), b"index").unwrap();
        fs::write(committed.join("ab/one"), b"1").unwrap();
        fs::write(committed.join("ab/deeper/two"), b"2").unwrap();
        let d = BackupDir::open(root.path(), "U1").unwrap();
        // As on a disk without symbolic links: everything in the background.
        d.prepare_as(true, false).unwrap();
        // The top-level files are there at once; a path in a linked
        // folder waits for the links.
        assert_eq!(fs::read(d.staging().join("Manifest.db")).unwrap(), b"index");
        d.ready_for("U1/ab/deeper/two").unwrap();
        for (name, bytes) in [("ab/one", b"1"), ("ab/deeper/two", b"2")] {
            assert_eq!(&fs::read(d.staging().join(name)).unwrap(), bytes, "{name}");
        }
        #[cfg(unix)]
        {
            use std::os::unix::fs::MetadataExt;
            let ino = |p: PathBuf| fs::metadata(p).unwrap().ino();
            assert_eq!(
                ino(committed.join("ab/deeper/two")),
                ino(d.staging().join("ab/deeper/two")),
                "a link, not a copy"
            );
        }
    }

    #[test]
    fn failed_links_are_never_committed() {
        let root = tempfile::tempdir().unwrap();
        fs::create_dir_all(root.path().join("U1/ab")).unwrap();
        let d = BackupDir::open(root.path(), "U1").unwrap();
        d.prepare(false).unwrap();
        fs::write(d.staging().join("Manifest.db"), b"new").unwrap();
        *d.linking.lock().unwrap() = Linking::Running(
            std::thread::spawn(|| Err(EngineError::Io(std::io::Error::other("disk gone")))),
            HashSet::from(["ab".to_string()]),
            None,
        );
        assert!(
            d.ready_for("U1/Snapshot/Manifest.db").is_ok(),
            "outside the linked folders nothing waits"
        );
        let first = d.ready_for("U1/ab/file").unwrap_err().to_string();
        assert!(first.contains("disk gone"), "{first}");
        let again = d.ready_for("U1/Snapshot/x").unwrap_err().to_string();
        assert_eq!(again, first, "the failure sticks, said once");
        assert!(d.commit(false, false).is_err());
        assert!(
            root.path().join("U1/ab").is_dir(),
            "the committed backup stays"
        );
        assert!(!root.path().join("U1/Manifest.db").exists());
    }

    /// Write a file into staging as the engine does, and note it.
    fn device_writes(d: &BackupDir, name: &str, bytes: &[u8]) {
        d.ready_for(&format!("U1/{name}")).unwrap();
        let path = d.resolve(&format!("U1/{name}")).unwrap();
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        let old = fs::symlink_metadata(&path).ok();
        fs::write(path.with_extension("part"), bytes).unwrap();
        fs::rename(path.with_extension("part"), &path).unwrap();
        d.wrote(&format!("U1/{name}"), old.as_ref(), bytes.len() as u64);
    }

    fn device_removes(d: &BackupDir, name: &str) {
        d.ready_for(&format!("U1/{name}")).unwrap();
        let path = d.resolve(&format!("U1/{name}")).unwrap();
        let old = fs::symlink_metadata(&path).unwrap();
        fs::remove_file(&path).unwrap();
        d.removed(&format!("U1/{name}"), &old);
    }

    /// A first backup of files under `ab/` and `cd/`, committed with its record.
    fn first_backup(root: &Path) -> snapshots::Info {
        let d = BackupDir::open(root, "U1").unwrap();
        d.prepare(false).unwrap();
        fs::write(d.staging().join("Manifest.db"), b"index").unwrap();
        device_writes(&d, "ab/one", b"1");
        device_writes(&d, "ab/two", b"22");
        device_writes(&d, "cd/three", b"333");
        d.commit(false, false).unwrap()
    }

    #[test]
    fn the_record_counts_come_from_the_session_without_a_walk() {
        let root = tempfile::tempdir().unwrap();
        let first = first_backup(root.path());
        assert_eq!((first.files, first.bytes), (3, 6));

        let d = BackupDir::open(root.path(), "U1").unwrap();
        d.prepare(true).unwrap();
        d.ready().unwrap();
        d.created_folder("U1/ef");
        device_writes(&d, "ef/four", b"4444");
        device_writes(&d, "ab/two", b"2"); // replaces a linked file
        device_removes(&d, "cd/three");
        device_writes(&d, "Snapshot/Manifest.db", b"not content");
        // A file the session did not see: a commit that walked would count it.
        fs::write(d.staging().join("ab/unseen"), b"55555").unwrap();
        let info = d.commit(false, false).unwrap();
        assert_eq!((info.files, info.bytes), (3, 1 + 1 + 4), "the kept counts");
        assert_eq!(
            snapshots::count_content(&root.path().join("U1")),
            (4, 11),
            "what a walk finds"
        );
    }

    #[test]
    fn the_commit_counts_when_the_session_could_not() {
        let root = tempfile::tempdir().unwrap();
        first_backup(root.path());
        let walked = |d: BackupDir| {
            let info = d.commit(false, false).unwrap();
            let on_disk = snapshots::count_content(&root.path().join("U1"));
            assert_eq!((info.files, info.bytes), on_disk);
            on_disk
        };

        // Another tool added a file after the record was written.
        fs::write(root.path().join("U1/ab/other"), b"xyz").unwrap();
        let d = BackupDir::open(root.path(), "U1").unwrap();
        d.prepare(true).unwrap();
        assert_eq!(walked(d), (4, 9));

        // A move into a content folder is not followed.
        let d = BackupDir::open(root.path(), "U1").unwrap();
        d.prepare(true).unwrap();
        d.ready_for("U1/ab/moved").unwrap();
        fs::rename(
            d.staging().join("Manifest.db"),
            d.staging().join("ab/moved"),
        )
        .unwrap();
        d.changed("U1/ab/moved");
        assert_eq!(walked(d), (5, 14));

        // Nor is a folder inside a content folder.
        let d = BackupDir::open(root.path(), "U1").unwrap();
        d.prepare(true).unwrap();
        d.ready_for("U1/ab/sub").unwrap();
        fs::create_dir(d.staging().join("ab/sub")).unwrap();
        d.created_folder("U1/ab/sub");
        let (files, _) = walked(d);
        assert_eq!(files, 6, "the folder is an entry too");
    }

    #[cfg(unix)]
    #[test]
    fn folders_the_device_leaves_alone_are_not_linked_but_move_in_whole() {
        use std::os::unix::fs::MetadataExt;
        let root = tempfile::tempdir().unwrap();
        let first = first_backup(root.path());
        let committed = root.path().join("U1");
        let ino = |p: &Path| fs::symlink_metadata(p).unwrap().ino();
        let (ab, one) = (ino(&committed.join("ab")), ino(&committed.join("ab/one")));

        let d = BackupDir::open(root.path(), "U1").unwrap();
        d.prepare(true).unwrap();
        assert!(
            !d.staging().join("ab").exists() && !d.staging().join("cd").exists(),
            "nothing linked before the device touches it"
        );
        device_writes(&d, "Manifest.db", b"index 2");
        device_writes(&d, "cd/three", b"3"); // links cd first
        assert!(d.staging().join("cd").is_dir() && !d.staging().join("ab").exists());
        let info = d.commit(false, false).unwrap();
        assert_eq!((info.files, info.bytes), (3, 4), "counts without a walk");
        let second = info.id;
        assert_eq!(
            ino(&committed.join("ab")),
            ab,
            "ab moved in, the same folder"
        );
        assert_eq!(ino(&committed.join("ab/one")), one);
        assert_eq!(fs::read(committed.join("cd/three")).unwrap(), b"3");
        // The first snapshot reads as it was, through a link for ab.
        let old = snapshots::dir(root.path(), "U1").join(&first.id);
        assert!(fs::read_link(old.join("ab")).is_ok());
        assert_eq!(fs::read(old.join("ab/two")).unwrap(), b"22");
        assert_eq!(fs::read(old.join("cd/three")).unwrap(), b"333");
        assert_eq!(snapshots::count_content(&old), (3, 6));
        drop(d);

        // A device that asks for the whole folder gets everything linked.
        let d = BackupDir::open(root.path(), "U1").unwrap();
        d.prepare(true).unwrap();
        d.ready_for("U1").unwrap();
        assert!(d.staging().join("ab/one").is_file() && d.staging().join("cd/three").is_file());
        let info = d.commit(false, false).unwrap();
        assert_eq!((info.files, info.bytes), (3, 4));
        assert!(!fs::symlink_metadata(committed.join("ab"))
            .unwrap()
            .is_symlink());
        // The first snapshot's link now leads to the second's ab.
        assert_eq!(fs::read(old.join("ab/two")).unwrap(), b"22");
        assert_eq!(
            fs::read_link(old.join("ab")).unwrap(),
            Path::new("..").join(&second).join("ab")
        );
    }

    #[test]
    fn device_paths_are_placed_for_the_counts() {
        for (path, want) in [
            ("U1", Place::ContentOther),
            ("U1/", Place::ContentOther),
            ("U1/ab", Place::ContentOther),
            ("U1/ab/", Place::ContentOther),
            ("U1/ab/f00d", Place::ContentFile),
            ("U1/ab/sub/f", Place::ContentOther),
            ("U1/Manifest.db", Place::Outside),
            ("U1/Snapshot/Manifest.db", Place::Outside),
        ] {
            assert_eq!(place(path), want, "{path}");
        }
    }

    #[test]
    fn an_interrupted_commit_is_repaired() {
        let root = tempfile::tempdir().unwrap();
        fs::create_dir_all(root.path().join(".ibackup/old/U1")).unwrap();
        fs::write(root.path().join(".ibackup/old/U1/Manifest.db"), b"x").unwrap();
        let _d = BackupDir::open(root.path(), "U1").unwrap();
        assert_eq!(fs::read(root.path().join("U1/Manifest.db")).unwrap(), b"x");
    }
}
