//! Backup history: every successful backup is kept as a snapshot.
//!
//! `DIR/<UDID>/` is the newest snapshot, a Finder-format folder of real
//! folders and files. When the next backup commits, it moves (one rename)
//! to `DIR/.ibackup/snapshots/<UDID>/<ID>/`. A backup is staged as hard
//! links to the newest snapshot's files in the folders the device touches,
//! and the device sends only what changed, so unchanged files are one inode
//! shared by every snapshot that holds them: a snapshot costs its changed
//! files, its Manifest.db and plists. Deleting a snapshot frees exactly
//! the files no other snapshot links. Each snapshot has a JSON sidecar
//! `snapshots/<UDID>/<ID>.json`; `snapshots/<UDID>/newest` names the
//! snapshot in `DIR/<UDID>/`.
//!
//! A folder the device did not touch (where nothing changed: most of the
//! 256 content folders on a quiet night) is not linked file by file: the
//! commit moves it whole into the new newest, and the snapshot it came from
//! keeps a symbolic link to it (`../../../../<UDID>/ab`). When a later
//! backup does change that folder, the snapshot the old folder stays in
//! takes over those links (`../<ID>/ab`). So every link points at the one
//! real folder of its version, never along a chain, and every snapshot
//! reads as a whole Finder-format folder through them; `ibackup checkout`
//! copies one out as real folders. Pruning a snapshot whose folders others
//! link to first moves each such folder to one of them.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{EngineError, Result};
use crate::files::{remove_tree, replace_file};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Info {
    pub id: String,
    /// Seconds since 1970, UTC: when the backup finished.
    pub date: i64,
    pub files: u64,
    pub bytes: u64,
    pub encrypted: bool,
    pub ios: String,
    /// "complete" (only finished backups become snapshots), or "filtered".
    pub result: String,
    pub full: bool,
    /// The newest snapshot's folders as committed (see
    /// [`folders_fingerprint`]): the next backup trusts `files` and
    /// `bytes` without a walk only while they are unchanged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub folders: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    pub info: Info,
    pub path: PathBuf,
    pub newest: bool,
}

pub fn dir(root: &Path, udid: &str) -> PathBuf {
    root.join(".ibackup/snapshots").join(udid)
}

fn sidecar(root: &Path, udid: &str, id: &str) -> PathBuf {
    dir(root, udid).join(format!("{id}.json"))
}

/// The digest record of snapshot `id` ([`ibackup_store::digests`]).
pub fn digests_path(root: &Path, udid: &str, id: &str) -> PathBuf {
    dir(root, udid).join(format!("{id}.digests.db"))
}

/// The digest record of the backup folder `folder`: `DIR/<UDID>` (the
/// newest snapshot) or `DIR/.ibackup/snapshots/<UDID>/<ID>`; `None` for a
/// folder ibackup keeps no record of (Finder's, another tool's).
pub fn digests_for(folder: &Path) -> Option<PathBuf> {
    let name = folder.file_name()?.to_string_lossy().into_owned();
    let parent = folder.parent()?;
    let found = if parent
        .parent()
        .is_some_and(|p| p.ends_with(".ibackup/snapshots"))
    {
        parent.join(format!("{name}.digests.db"))
    } else {
        let id = newest_id(parent, &name)?;
        digests_path(parent, &name, &id)
    };
    found.is_file().then_some(found)
}

fn newest_file(root: &Path, udid: &str) -> PathBuf {
    dir(root, udid).join("newest")
}

fn pending_file(root: &Path, udid: &str) -> PathBuf {
    dir(root, udid).join("pending.json")
}

fn trash(root: &Path, udid: &str) -> PathBuf {
    root.join(".ibackup/trash").join(udid)
}

fn handover_file(root: &Path, udid: &str) -> PathBuf {
    dir(root, udid).join("handover.json")
}

/// What a history snapshot's folder `name` links to while the newest
/// holds it: `DIR/<UDID>/name`, from `DIR/.ibackup/snapshots/<UDID>/<ID>/`.
fn to_newest(udid: &str, name: &str) -> PathBuf {
    Path::new("../../../..").join(udid).join(name)
}

/// What it links to while history snapshot `id` holds it.
fn to_history(id: &str, name: &str) -> PathBuf {
    Path::new("..").join(id).join(name)
}

/// A fingerprint of the top-level folders of a backup folder: their names
/// and modification times (a folder's changes when an entry is added,
/// removed or renamed in it; a rename of the folder itself keeps it).
/// `extra` are folders to count as if they were in `folder`.
pub fn folders_fingerprint(folder: &Path, extra: &[PathBuf]) -> Option<String> {
    let mut seen: Vec<(String, i128)> = Vec::new();
    let mut add = |name: String, md: fs::Metadata| -> Option<()> {
        let t = md.modified().ok()?;
        let ns = match t.duration_since(std::time::UNIX_EPOCH) {
            Ok(d) => d.as_nanos() as i128,
            Err(e) => -(e.duration().as_nanos() as i128),
        };
        seen.push((name, ns));
        Some(())
    };
    for e in fs::read_dir(folder).ok()? {
        let e = e.ok()?;
        if e.file_type().ok()?.is_dir() {
            add(
                e.file_name().to_string_lossy().into_owned(),
                e.metadata().ok()?,
            )?;
        }
    }
    for p in extra {
        let name = p.file_name()?.to_string_lossy().into_owned();
        add(name, fs::symlink_metadata(p).ok()?)?;
    }
    seen.sort();
    // FNV-1a: stable across versions and platforms; this only notices
    // change, it guards against no one.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for (name, ns) in &seen {
        for b in name.bytes().chain([0]).chain(ns.to_le_bytes()) {
            h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
    }
    Some(format!("{}:{h:016x}", seen.len()))
}

/// Make a symbolic link to a folder at `at`, replacing a link there (never
/// a folder) in one rename.
#[cfg(unix)]
fn link_folder(target: &Path, at: &Path) -> Result<()> {
    let mut tmp = at.as_os_str().to_owned();
    tmp.push(".ibackup-link");
    let tmp = PathBuf::from(tmp);
    let _ = fs::remove_file(&tmp);
    std::os::unix::fs::symlink(target, &tmp)?;
    fs::rename(&tmp, at)?;
    Ok(())
}

/// Make a symbolic link to a folder at `at`, where nothing is.
#[cfg(unix)]
fn new_link(target: &Path, at: &Path) -> Result<()> {
    Ok(std::os::unix::fs::symlink(target, at)?)
}

#[cfg(not(unix))]
fn new_link(target: &Path, at: &Path) -> Result<()> {
    link_folder(target, at)
}

/// Remove the temporary links [`link_folder`] leaves if interrupted
/// between making one and renaming it over the old.
fn sweep_link_temps(d: &Path) {
    for h in history_ids(d) {
        for e in fs::read_dir(d.join(&h)).into_iter().flatten().flatten() {
            if e.file_name().to_string_lossy().ends_with(".ibackup-link") {
                let _ = fs::remove_file(e.path());
            }
        }
    }
}

/// Folders are shared by symbolic links only where they exist (see
/// `BackupDir::prepare`); elsewhere nothing is ever shared.
#[cfg(not(unix))]
fn link_folder(_target: &Path, _at: &Path) -> Result<()> {
    Err(std::io::Error::from(std::io::ErrorKind::Unsupported).into())
}

fn is_real_dir(p: &Path) -> bool {
    fs::symlink_metadata(p).is_ok_and(|m| m.is_dir())
}

/// The history snapshot folders of `udid` (not the newest), by ID.
fn history_ids(d: &Path) -> Vec<String> {
    let mut ids: Vec<String> = fs::read_dir(d)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    ids.sort();
    ids
}

/// In every history snapshot but `except`, replace each link to `from(name)`
/// by a link to `to(name)`, for the folder names `names`.
fn relink(
    d: &Path,
    except: &[&str],
    names: &[String],
    from: &dyn Fn(&str) -> PathBuf,
    to: &dyn Fn(&str) -> PathBuf,
) -> Result<()> {
    if names.is_empty() {
        return Ok(());
    }
    for h in history_ids(d) {
        if except.contains(&h.as_str()) {
            continue;
        }
        for name in names {
            let at = d.join(&h).join(name);
            if fs::read_link(&at).is_ok_and(|t| t == from(name)) {
                link_folder(&to(name), &at)?;
            }
        }
    }
    Ok(())
}

pub fn newest_id(root: &Path, udid: &str) -> Option<String> {
    fs::read_to_string(newest_file(root, udid))
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
}

fn read_info(path: &Path) -> Option<Info> {
    serde_json::from_slice(&fs::read(path).ok()?).ok()
}

/// Seconds since 1970 (UTC), now.
pub fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// Days since 1970-01-01 → (year, month, day), proleptic Gregorian.
pub fn civil(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// `YYYY-MM-DD HH:MM:SS` UTC.
pub fn format_date(secs: i64) -> String {
    let (y, m, d) = civil(secs.div_euclid(86_400));
    let r = secs.rem_euclid(86_400);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}",
        r / 3600,
        r / 60 % 60,
        r % 60
    )
}

/// An ID from a time, `YYYYMMDDTHHMMSSZ`, made unique among `taken`.
fn id_for(secs: i64, taken: &dyn Fn(&str) -> bool) -> String {
    let (y, m, d) = civil(secs.div_euclid(86_400));
    let r = secs.rem_euclid(86_400);
    let base = format!(
        "{y:04}{m:02}{d:02}T{:02}{:02}{:02}Z",
        r / 3600,
        r / 60 % 60,
        r % 60
    );
    let mut id = base.clone();
    let mut n = 2;
    while taken(&id) {
        id = format!("{base}-{n}");
        n += 1;
    }
    id
}

/// When the backup in `folder` finished: Status.plist's `Date`, else the
/// file's modification time, else now.
fn status_date(folder: &Path) -> i64 {
    let status = folder.join("Status.plist");
    let recorded = plist::Value::from_file(&status)
        .ok()
        .and_then(plist::Value::into_dictionary)
        .and_then(|d| match d.get("Date") {
            Some(plist::Value::Date(d)) => Some(std::time::SystemTime::from(*d)),
            _ => None,
        });
    recorded
        .or_else(|| fs::metadata(&status).and_then(|m| m.modified()).ok())
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map(|d| d.as_secs() as i64)
        .unwrap_or_else(now)
}

/// When the newest backup of `udid` in `root` finished, if there is one:
/// its record, or for a folder with no history yet its Status.plist. Reads
/// one small file, for callers that ask often (`watch`).
pub fn newest_date(root: &Path, udid: &str) -> Option<i64> {
    let committed = root.join(udid);
    if !committed.join("Manifest.db").is_file() {
        return None;
    }
    let recorded = newest_id(root, udid).and_then(|id| read_info(&sidecar(root, udid, &id)));
    Some(recorded.map_or_else(|| status_date(&committed), |i| i.date))
}

/// The record of the newest snapshot of `udid` (the one in `DIR/<UDID>/`),
/// if it has one.
pub fn newest_info(root: &Path, udid: &str) -> Option<Info> {
    newest_id(root, udid).and_then(|id| read_info(&sidecar(root, udid, &id)))
}

/// Describe a Finder-format folder: counts, encryption, iOS version, date.
pub fn describe(folder: &Path, id: &str, full: bool, result: &str) -> Info {
    describe_counted(folder, id, full, result, None)
}

/// [`describe`], with the content folders' file and byte counts given when
/// the caller knows them (`None`: count them, one stat per file).
pub fn describe_counted(
    folder: &Path,
    id: &str,
    full: bool,
    result: &str,
    counts: Option<(u64, u64)>,
) -> Info {
    let (files, bytes) = counts.unwrap_or_else(|| count_content(folder));
    let plist = |name: &str| {
        plist::Value::from_file(folder.join(name))
            .ok()
            .and_then(plist::Value::into_dictionary)
            .unwrap_or_default()
    };
    Info {
        id: id.to_string(),
        date: status_date(folder),
        files,
        bytes,
        encrypted: plist("Manifest.plist")
            .get("IsEncrypted")
            .and_then(plist::Value::as_boolean)
            .unwrap_or(false),
        ios: plist("Info.plist")
            .get("Product Version")
            .and_then(plist::Value::as_string)
            .unwrap_or("")
            .to_string(),
        result: result.to_string(),
        full,
        folders: None,
    }
}

/// How many entries the content folders (the two-character ones) of a
/// backup folder hold, and their bytes.
pub fn count_content(folder: &Path) -> (u64, u64) {
    count_folders(&content_folders(folder))
}

/// The content folders (the two-character ones) of a backup folder.
pub fn content_folders(folder: &Path) -> Vec<PathBuf> {
    fs::read_dir(folder)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_name().len() == 2 && e.path().is_dir())
        .map(|e| e.path())
        .collect()
}

/// How many entries `content` (content folders) hold, and their bytes.
pub fn count_folders(content: &[PathBuf]) -> (u64, u64) {
    // Counting is one stat per file: two threads halve a big backup's wait.
    let count = |dirs: &[PathBuf]| {
        let (mut files, mut bytes) = (0u64, 0u64);
        for d in dirs {
            for f in fs::read_dir(d).into_iter().flatten().flatten() {
                if let Ok(md) = f.metadata() {
                    files += 1;
                    bytes += md.len();
                }
            }
        }
        (files, bytes)
    };
    let (first, second) = content.split_at(content.len() / 2);
    let ((f1, b1), (f2, b2)) = std::thread::scope(|s| {
        let other = s.spawn(|| count(second));
        let mine = count(first);
        (mine, other.join().expect("counting thread"))
    });
    (f1 + f2, b1 + b2)
}

#[derive(Serialize, Deserialize)]
struct Pending {
    new: String,
    /// The ID the folder being replaced gets; `None` when there was none.
    prev: Option<String>,
    /// Its top-level folders that move whole into the new newest.
    #[serde(default)]
    inherit: Vec<String>,
}

/// A prune's hand-over of the folders other snapshots link to.
#[derive(Serialize, Deserialize)]
struct Handover {
    /// The snapshot being removed.
    from: String,
    /// Each of its folders that others link to, and the one that gets it.
    heirs: Vec<(String, String)>,
}

/// Make `staging` the newest snapshot, keeping the current newest as a
/// snapshot. The current newest's top-level folders named in `inherit`
/// (ones the session left as they were) move into the new newest whole,
/// leaving links to them. Safe to interrupt at any point: [`recover`]
/// finishes or undoes it.
pub fn commit(
    root: &Path,
    udid: &str,
    staging: &Path,
    info: Info,
    inherit: &[String],
    record: Option<&Path>,
) -> Result<Info> {
    let d = dir(root, udid);
    fs::create_dir_all(&d)?;
    let committed = root.join(udid);
    let taken = |id: &str| sidecar(root, udid, id).exists() || d.join(id).exists();
    let prev = if committed.exists() {
        Some(match newest_id(root, udid) {
            Some(id) => id,
            None => {
                // A folder from before snapshots, or another tool's: it gets an ID now.
                let legacy = describe(&committed, "", false, "complete");
                let id = id_for(legacy.date, &taken);
                replace_file(
                    &sidecar(root, udid, &id),
                    &serde_json::to_vec_pretty(&Info {
                        id: id.clone(),
                        ..legacy
                    })
                    .expect("json"),
                )?;
                id
            }
        })
    } else {
        None
    };
    if prev.is_none() {
        drop_links_to_a_missing_newest(root, udid)?;
    }
    let id = id_for(info.date, &|id| taken(id) || prev.as_deref() == Some(id));
    let info = Info {
        id: id.clone(),
        ..info
    };
    let inherit = if prev.is_some() { inherit } else { &[] };
    for name in inherit {
        if fs::symlink_metadata(staging.join(name)).is_ok() {
            return Err(EngineError::Protocol(format!(
                "{name} is both in the staging folder and to be moved into it"
            )));
        }
    }
    replace_file(
        &pending_file(root, udid),
        &serde_json::to_vec(&Pending {
            new: id.clone(),
            prev: prev.clone(),
            inherit: inherit.to_vec(),
        })
        .expect("json"),
    )?;
    replace_file(
        &sidecar(root, udid, &id),
        &serde_json::to_vec_pretty(&info).expect("json"),
    )?;
    if let Some(r) = record {
        fs::rename(r, digests_path(root, udid, &id))?;
    }
    let swapped = (|| -> Result<()> {
        if let Some(p) = &prev {
            fs::rename(&committed, d.join(p))?;
            hand_forward(&d, udid, p, staging, inherit)?;
        }
        fs::rename(staging, &committed)?;
        Ok(())
    })();
    if let Err(e) = swapped {
        // Put the previous newest back now rather than at the next start.
        if let Err(undo) = recover(root, udid) {
            log::warn!("could not undo the failed commit yet ({undo}); the next run will");
        }
        return Err(e);
    }
    if let Ok(f) = fs::File::open(root) {
        let _ = f.sync_all();
    }
    replace_file(&newest_file(root, udid), id.as_bytes())?;
    fs::remove_file(pending_file(root, udid))?;
    Ok(info)
}

/// `DIR/<UDID>` is gone (deleted by hand, say, to start afresh) while
/// history snapshots still link to folders that were in it. Those links
/// lead nowhere now, and once the new backup takes its place they would
/// lead into it, to other versions of the files under the old index. Drop
/// them, and record each snapshot that lost folders as incomplete, so that
/// `snapshots` and `verify` tell the truth about it.
fn drop_links_to_a_missing_newest(root: &Path, udid: &str) -> Result<()> {
    let d = dir(root, udid);
    for h in history_ids(&d) {
        let mut lost = 0u32;
        for e in fs::read_dir(d.join(&h))?.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if fs::read_link(e.path()).is_ok_and(|t| t == to_newest(udid, &name)) {
                fs::remove_file(e.path())?;
                lost += 1;
            }
        }
        if lost == 0 {
            continue;
        }
        log::warn!(
            "snapshot {h} of {udid} lost {lost} content folders with the deleted {}",
            root.join(udid).display()
        );
        let side = sidecar(root, udid, &h);
        if let Some(info) = read_info(&side) {
            let info = Info {
                result: format!("incomplete: {lost} content folders were deleted with {udid}/"),
                ..info
            };
            replace_file(&side, &serde_json::to_vec_pretty(&info).expect("json"))?;
        }
    }
    Ok(())
}

/// The commit's middle step: `prev` (the newest until now, just moved into
/// the history) gives its folders `inherit` to `staging` and links to them
/// where they were; history snapshots that linked to the newest's copy of
/// any other folder of `prev` now link to `prev`'s, which stays where it is.
fn hand_forward(
    d: &Path,
    udid: &str,
    prev: &str,
    staging: &Path,
    inherit: &[String],
) -> Result<()> {
    let from = d.join(prev);
    for name in inherit {
        // Only the commit comes here, once: the folder is there to move.
        let at = from.join(name);
        fs::rename(&at, staging.join(name))?;
        new_link(&to_newest(udid, name), &at)?;
    }
    let kept: Vec<String> = fs::read_dir(&from)?
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    relink(d, &[prev], &kept, &|n| to_newest(udid, n), &|n| {
        to_history(prev, n)
    })
}

/// Undo [`hand_forward`] (a commit interrupted before its last rename):
/// the moved folders go back from `staging`, the links to `prev` back to
/// the newest.
fn hand_back(d: &Path, udid: &str, prev: &str, staging: &Path, inherit: &[String]) -> Result<()> {
    let from = d.join(prev);
    let names: Vec<String> = fs::read_dir(&from)?
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    relink(d, &[prev], &names, &|n| to_history(prev, n), &|n| {
        to_newest(udid, n)
    })?;
    for name in inherit {
        let at = from.join(name);
        if is_real_dir(&at) {
            continue;
        }
        let moved = staging.join(name);
        if !is_real_dir(&moved) {
            return Err(EngineError::Protocol(format!(
                "an interrupted commit left {} without its folder {name}, and the staging folder has none",
                from.display()
            )));
        }
        if fs::symlink_metadata(&at).is_ok() {
            fs::remove_file(&at)?;
        }
        fs::rename(&moved, &at)?;
    }
    Ok(())
}

/// Finish or undo an interrupted commit or prune (under the device's lock).
pub fn recover(root: &Path, udid: &str) -> Result<()> {
    let d = dir(root, udid);
    let committed = root.join(udid);
    if pending_file(root, udid).exists() || handover_file(root, udid).exists() {
        // Interrupted while turning a link, it may have left the new one
        // under its temporary name.
        sweep_link_temps(&d);
    }
    if let Some(p) = fs::read(pending_file(root, udid))
        .ok()
        .and_then(|b| serde_json::from_slice::<Pending>(&b).ok())
    {
        let prev_moved = p.prev.as_ref().is_some_and(|id| d.join(id).exists());
        match (committed.exists(), p.prev.is_some(), prev_moved) {
            // Between the two renames: put the old newest back, whole.
            (false, true, true) => {
                let prev = p.prev.as_ref().expect("prev");
                let staging = root.join(".ibackup/staging").join(udid);
                hand_back(&d, udid, prev, &staging, &p.inherit)?;
                fs::rename(d.join(prev), &committed)?;
                let _ = fs::remove_file(sidecar(root, udid, &p.new));
                let _ = fs::remove_file(digests_path(root, udid, &p.new));
            }
            // Both renames done (or nothing to move): only `newest` is stale.
            (true, true, true) | (true, false, _) => {
                replace_file(&newest_file(root, udid), p.new.as_bytes())?
            }
            // Nothing moved yet.
            _ => {
                let _ = fs::remove_file(sidecar(root, udid, &p.new));
                let _ = fs::remove_file(digests_path(root, udid, &p.new));
            }
        }
        fs::remove_file(pending_file(root, udid))?;
    }
    if let Some(h) = read_handover(root, udid) {
        // A prune interrupted while handing over: finish removing it.
        finish_removal(root, udid, &h)?;
    }
    remove_tree(&trash(root, udid))?;
    // A record being written when the process was killed.
    for e in fs::read_dir(&d).into_iter().flatten().flatten() {
        if e.file_name().to_string_lossy().ends_with(".ibackup-part") {
            let _ = fs::remove_file(e.path());
        }
    }
    // Sidecars whose folder is gone (a prune interrupted after the move).
    let newest = newest_id(root, udid);
    for e in fs::read_dir(&d).into_iter().flatten().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if let Some(id) = name
            .strip_suffix(".json")
            .or_else(|| name.strip_suffix(".digests.db"))
        {
            if id != "pending"
                && id != "handover"
                && Some(id) != newest.as_deref()
                && !d.join(id).is_dir()
            {
                let _ = fs::remove_file(e.path());
            }
        }
    }
    Ok(())
}

/// Whether an interrupted commit or prune of `udid` left something in
/// the history for [`recover`] to finish or undo.
pub fn leftovers(root: &Path, udid: &str) -> bool {
    pending_file(root, udid).exists()
        || handover_file(root, udid).exists()
        || trash(root, udid).exists()
        || fs::read_dir(dir(root, udid))
            .into_iter()
            .flatten()
            .flatten()
            .any(|e| e.file_name().to_string_lossy().ends_with(".ibackup-part"))
}

/// Every snapshot of `udid` in `root`, oldest first. A newest folder with
/// no history yet (an earlier version's, or another tool's) is listed too.
pub fn list(root: &Path, udid: &str) -> Result<Vec<Snapshot>> {
    let d = dir(root, udid);
    let committed = root.join(udid);
    let newest = newest_id(root, udid);
    // A snapshot a prune was removing when it was interrupted is gone.
    let removing = read_handover(root, udid).map(|h| h.from);
    let mut out = Vec::new();
    for e in fs::read_dir(&d).into_iter().flatten().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(id) = name.strip_suffix(".json") else {
            continue;
        };
        if id == "pending" || id == "handover" || Some(id) == removing.as_deref() {
            continue;
        }
        let is_newest = Some(id) == newest.as_deref();
        let path = if is_newest {
            committed.clone()
        } else {
            d.join(id)
        };
        if !path.join("Manifest.db").is_file() {
            continue;
        }
        if let Some(info) = read_info(&e.path()) {
            out.push(Snapshot {
                info,
                path,
                newest: is_newest,
            });
        }
    }
    if newest.is_none() && committed.join("Manifest.db").is_file() {
        let info = describe(&committed, "", false, "complete");
        let id = id_for(info.date, &|id| out.iter().any(|s| s.info.id == id));
        out.push(Snapshot {
            info: Info { id, ..info },
            path: committed,
            newest: true,
        });
    }
    out.sort_by(|a, b| {
        (a.newest, a.info.date, &a.info.id).cmp(&(b.newest, b.info.date, &b.info.id))
    });
    Ok(out)
}

/// The folder of snapshot `id` (`newest` or `latest` name the newest).
pub fn find(root: &Path, udid: &str, id: &str) -> Result<Snapshot> {
    let all = list(root, udid)?;
    let hit = if id == "newest" || id == "latest" {
        all.into_iter().find(|s| s.newest)
    } else {
        all.into_iter().find(|s| s.info.id == id)
    };
    hit.ok_or_else(|| {
        EngineError::Usage(format!(
            "no snapshot {id} of {udid} in {}; `ibackup snapshots` lists them",
            root.display()
        ))
    })
}

/// Retention rules, as `--keep-last N --keep-daily N --keep-weekly N --keep-monthly N`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Keep {
    pub last: usize,
    pub daily: usize,
    pub weekly: usize,
    pub monthly: usize,
}

impl Keep {
    pub fn is_empty(&self) -> bool {
        self.last + self.daily + self.weekly + self.monthly == 0
    }
}

/// Which snapshots the rules keep: the newest always; the last `last`;
/// for each of the `daily` most recent days (UTC) that have snapshots, the
/// newest of that day; likewise per week (from Monday) and per month.
pub fn kept(snaps: &[(String, i64)], keep: &Keep) -> BTreeSet<String> {
    let mut by_date: Vec<&(String, i64)> = snaps.iter().collect();
    by_date.sort_by(|a, b| b.1.cmp(&a.1).then(b.0.cmp(&a.0)));
    let mut out = BTreeSet::new();
    if let Some(first) = by_date.first() {
        out.insert(first.0.clone());
    }
    for s in by_date.iter().take(keep.last) {
        out.insert(s.0.clone());
    }
    let day = |t: i64| t.div_euclid(86_400);
    let buckets: [(usize, &dyn Fn(i64) -> i64); 3] = [
        (keep.daily, &day),
        // Days since the epoch's Monday (1970-01-05 is day 4).
        (keep.weekly, &|t| (day(t) - 4).div_euclid(7)),
        (keep.monthly, &|t| {
            let (y, m, _) = civil(day(t));
            y * 12 + i64::from(m)
        }),
    ];
    for (n, bucket) in buckets {
        let mut seen = Vec::new();
        for s in &by_date {
            if seen.len() >= n {
                break;
            }
            let b = bucket(s.1);
            if !seen.contains(&b) {
                seen.push(b);
                out.insert(s.0.clone());
            }
        }
    }
    out
}

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Pruned {
    pub removed: Vec<String>,
    pub kept: Vec<String>,
    /// Bytes freed: content no remaining snapshot links.
    pub freed: u64,
}

/// Remove the snapshots `keep` does not keep (never the newest). Each one
/// is first moved to the trash in one rename, so an interruption leaves
/// every snapshot whole or gone; the trash is emptied at the next start.
pub fn prune(root: &Path, udid: &str, keep: &Keep, dry_run: bool) -> Result<Pruned> {
    if keep.is_empty() {
        return Err(EngineError::Usage(
            "say what to keep: --keep-last, --keep-daily, --keep-weekly or --keep-monthly".into(),
        ));
    }
    let all = list(root, udid)?;
    let dates: Vec<(String, i64)> = all
        .iter()
        .map(|s| (s.info.id.clone(), s.info.date))
        .collect();
    let keep_ids = kept(&dates, keep);
    let mut r = Pruned::default();
    for s in &all {
        if s.newest || keep_ids.contains(&s.info.id) {
            r.kept.push(s.info.id.clone());
            continue;
        }
        r.removed.push(s.info.id.clone());
        let d = dir(root, udid);
        let heirs = heirs(&d, &s.info.id);
        let handed: Vec<&str> = heirs.iter().map(|(n, _)| n.as_str()).collect();
        r.freed += unshared_bytes(&s.path, &handed);
        if dry_run {
            continue;
        }
        let h = Handover {
            from: s.info.id.clone(),
            heirs,
        };
        if !h.heirs.is_empty() {
            replace_file(
                &handover_file(root, udid),
                &serde_json::to_vec(&h).expect("json"),
            )?;
        }
        finish_removal(root, udid, &h)?;
    }
    Ok(r)
}

/// For each folder of history snapshot `id` that other snapshots link to,
/// the one to give it to (the newest of them; all of them are older).
fn heirs(d: &Path, id: &str) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    for h in history_ids(d) {
        if h == id {
            continue;
        }
        for e in fs::read_dir(d.join(&h)).into_iter().flatten().flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if fs::read_link(e.path()).is_ok_and(|t| t == to_history(id, &name)) {
                match out.iter_mut().find(|(n, _)| *n == name) {
                    Some(hit) => hit.1 = h.clone(),
                    None => out.push((name, h.clone())),
                }
            }
        }
    }
    out.sort();
    out
}

/// Remove history snapshot `h.from`: its linked-to folders go to their
/// heirs (the others that linked to them link to the heir's), then it
/// goes to the trash in one rename and is deleted. Each step can be
/// repeated, so [`recover`] finishes an interrupted one from the start.
fn finish_removal(root: &Path, udid: &str, h: &Handover) -> Result<()> {
    let d = dir(root, udid);
    let from = d.join(&h.from);
    for (name, heir) in &h.heirs {
        let (src, at) = (from.join(name), d.join(heir).join(name));
        if is_real_dir(&src) && !is_real_dir(&at) {
            if fs::symlink_metadata(&at).is_ok() {
                fs::remove_file(&at)?;
            }
            fs::rename(&src, &at)?;
        }
        relink(
            &d,
            &[&h.from, heir],
            std::slice::from_ref(name),
            &|n| to_history(&h.from, n),
            &|n| to_history(heir, n),
        )?;
    }
    if from.exists() {
        let t = trash(root, udid);
        fs::create_dir_all(&t)?;
        let _ = fs::remove_dir_all(t.join(&h.from));
        fs::rename(&from, t.join(&h.from))?;
    }
    let _ = fs::remove_file(sidecar(root, udid, &h.from));
    let _ = fs::remove_file(digests_path(root, udid, &h.from));
    match fs::remove_file(handover_file(root, udid)) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e.into()),
        _ => {}
    }
    remove_tree(&trash(root, udid).join(&h.from))
}

/// The journal of a prune's hand-over in progress, if there is one.
fn read_handover(root: &Path, udid: &str) -> Option<Handover> {
    serde_json::from_slice(&fs::read(handover_file(root, udid)).ok()?).ok()
}

/// Bytes of the files in `folder` that nothing else links, leaving out its
/// top-level folders `handed` (they go to another snapshot). Links to
/// folders are not followed: what they lead to is another snapshot's.
fn unshared_bytes(folder: &Path, handed: &[&str]) -> u64 {
    let mut n = 0;
    let walk = walkdir::WalkDir::new(folder).into_iter().filter_entry(|e| {
        e.depth() != 1 || !handed.contains(&e.file_name().to_string_lossy().as_ref())
    });
    for e in walk.flatten() {
        if let Ok(md) = e.metadata() {
            if md.is_file() && links(&md) <= 1 {
                n += md.len();
            }
        }
    }
    n
}

#[cfg(unix)]
fn links(md: &fs::Metadata) -> u64 {
    std::os::unix::fs::MetadataExt::nlink(md)
}

#[cfg(not(unix))]
fn links(_md: &fs::Metadata) -> u64 {
    1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_snapshot_folder_finds_its_own_digest_record() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path();
        let d = dir(root, "U");
        fs::create_dir_all(d.join("S1")).unwrap();
        fs::create_dir_all(root.join("U")).unwrap();
        fs::write(newest_file(root, "U"), b"S2").unwrap();
        assert_eq!(digests_for(&root.join("U")), None, "no record yet");
        fs::write(digests_path(root, "U", "S2"), b"").unwrap();
        fs::write(digests_path(root, "U", "S1"), b"").unwrap();
        assert_eq!(
            digests_for(&root.join("U")),
            Some(digests_path(root, "U", "S2")),
            "the newest's"
        );
        assert_eq!(
            digests_for(&d.join("S1")),
            Some(digests_path(root, "U", "S1"))
        );
        assert_eq!(
            digests_for(&root.join("Other")),
            None,
            "a folder of no record"
        );
    }

    const DAY: i64 = 86_400;

    fn ids(v: &BTreeSet<String>) -> Vec<&str> {
        v.iter().map(String::as_str).collect()
    }

    #[test]
    fn retention_rules_with_fake_dates() {
        // Nightly at 02:00 for 60 days from 2026-01-01 (a Thursday), plus a
        // second run on the last day.
        let start = 20_454 * DAY; // 2026-01-01
        let mut snaps: Vec<(String, i64)> = (0..60)
            .map(|d| (format!("d{d:02}"), start + d * DAY + 7200))
            .collect();
        snaps.push(("d59b".into(), start + 59 * DAY + 9000));
        let k = |last, daily, weekly, monthly| {
            kept(
                &snaps,
                &Keep {
                    last,
                    daily,
                    weekly,
                    monthly,
                },
            )
        };
        assert_eq!(ids(&k(0, 0, 0, 0)), ["d59b"], "the newest, always");
        assert_eq!(ids(&k(3, 0, 0, 0)), ["d58", "d59", "d59b"]);
        assert_eq!(
            ids(&k(0, 3, 0, 0)),
            ["d57", "d58", "d59b"],
            "one a day, the day's newest"
        );
        // Weeks start on Monday: 2026-01-05 is day 4 of the list.
        let w = k(0, 0, 3, 0);
        assert_eq!(ids(&w), ["d45", "d52", "d59b"]);
        // Months: January's newest is d30 (Jan 31), February's d58 (Feb 28), March's d59b.
        assert_eq!(ids(&k(0, 0, 0, 12)), ["d30", "d58", "d59b"]);
        assert_eq!(k(0, 0, 0, 12).len(), 3);
        assert_eq!(k(100, 0, 0, 0).len(), 61);
    }

    #[test]
    fn dates_and_ids() {
        assert_eq!(format_date(0), "1970-01-01 00:00:00");
        assert_eq!(format_date(1_795_000_000), "2026-11-18 11:06:40");
        assert_eq!(id_for(1_795_000_000, &|_| false), "20261118T110640Z");
        assert_eq!(
            id_for(1_795_000_000, &|id| id == "20261118T110640Z"),
            "20261118T110640Z-2"
        );
    }

    fn fake_backup(p: &Path, body: &[u8]) {
        fs::create_dir_all(p.join("ab")).unwrap();
        fs::write(p.join("Manifest.db"), b"db").unwrap();
        fs::write(p.join("ab/abcd"), body).unwrap();
    }

    #[test]
    fn commits_keep_history_and_interrupted_commits_are_repaired() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path();
        let staging = root.join("staging");
        let info = |date| Info {
            id: String::new(),
            date,
            files: 1,
            bytes: 1,
            encrypted: false,
            ios: "18.0".into(),
            result: "complete".into(),
            full: true,
            folders: None,
        };
        fake_backup(&staging, b"one");
        let a = commit(root, "U", &staging, info(1000), &[], None).unwrap();
        fake_backup(&staging, b"two");
        let b = commit(root, "U", &staging, info(2000), &[], None).unwrap();
        let l = list(root, "U").unwrap();
        assert_eq!(
            l.iter()
                .map(|s| (s.info.id.clone(), s.newest))
                .collect::<Vec<_>>(),
            [(a.id.clone(), false), (b.id.clone(), true)]
        );
        assert_eq!(fs::read(l[0].path.join("ab/abcd")).unwrap(), b"one");
        assert_eq!(fs::read(root.join("U/ab/abcd")).unwrap(), b"two");

        // Interrupted between the renames: the newest goes back in place.
        fake_backup(&staging, b"three");
        let p = Pending {
            new: "X".into(),
            prev: Some(b.id.clone()),
            inherit: Vec::new(),
        };
        fs::write(pending_file(root, "U"), serde_json::to_vec(&p).unwrap()).unwrap();
        fs::write(
            sidecar(root, "U", "X"),
            serde_json::to_vec(&info(3000)).unwrap(),
        )
        .unwrap();
        fs::rename(root.join("U"), dir(root, "U").join(&b.id)).unwrap();
        recover(root, "U").unwrap();
        assert_eq!(fs::read(root.join("U/ab/abcd")).unwrap(), b"two");
        assert_eq!(list(root, "U").unwrap().len(), 2, "no half snapshot");

        // Interrupted after both renames: only `newest` was stale.
        let c = commit(root, "U", &staging, info(3000), &[], None).unwrap();
        fs::write(newest_file(root, "U"), &b.id).unwrap();
        fs::write(
            pending_file(root, "U"),
            serde_json::to_vec(&Pending {
                new: c.id.clone(),
                prev: Some(b.id.clone()),
                inherit: Vec::new(),
            })
            .unwrap(),
        )
        .unwrap();
        recover(root, "U").unwrap();
        assert_eq!(newest_id(root, "U").as_deref(), Some(c.id.as_str()));
        assert_eq!(list(root, "U").unwrap().len(), 3);

        // Prune keeps what the rules say and never the newest.
        let r = prune(
            root,
            "U",
            &Keep {
                last: 2,
                ..Keep::default()
            },
            true,
        )
        .unwrap();
        assert_eq!(r.removed, std::slice::from_ref(&a.id));
        assert_eq!(list(root, "U").unwrap().len(), 3, "dry run removes nothing");
        let r = prune(
            root,
            "U",
            &Keep {
                last: 1,
                ..Keep::default()
            },
            false,
        )
        .unwrap();
        assert_eq!(r.removed.len(), 2);
        assert_eq!(
            list(root, "U")
                .unwrap()
                .iter()
                .map(|s| s.info.id.clone())
                .collect::<Vec<_>>(),
            [c.id]
        );
        assert!(
            prune(root, "U", &Keep::default(), false).is_err(),
            "no rules: refuse"
        );
    }

    #[test]
    fn a_backup_from_before_history_becomes_the_first_snapshot() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path();
        // An idevicebackup2 or older ibackup folder: no sidecar, no `newest`.
        fake_backup(&root.join("U"), b"legacy");
        let l = list(root, "U").unwrap();
        assert_eq!(l.len(), 1);
        assert!(l[0].newest && l[0].path == root.join("U"));
        fake_backup(&root.join("staging"), b"new");
        let info = describe(&root.join("staging"), "", true, "complete");
        commit(root, "U", &root.join("staging"), info, &[], None).unwrap();
        let l = list(root, "U").unwrap();
        assert_eq!(l.len(), 2);
        assert!(!l[0].newest && l[1].newest);
        assert_eq!(fs::read(l[0].path.join("ab/abcd")).unwrap(), b"legacy");
        assert_eq!(fs::read(root.join("U/ab/abcd")).unwrap(), b"new");
    }

    #[test]
    fn a_prune_interrupted_after_its_move_leaves_whole_snapshots_only() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path();
        let mut ids = Vec::new();
        for (n, body) in [b"a", b"b", b"c"].iter().enumerate() {
            fake_backup(&root.join("staging"), *body);
            let mut info = describe(&root.join("staging"), "", true, "complete");
            info.date = 1000 * (n as i64 + 1);
            ids.push(
                commit(root, "U", &root.join("staging"), info, &[], None)
                    .unwrap()
                    .id,
            );
        }
        // Killed between moving the oldest to the trash and deleting its record.
        let tr = trash(root, "U");
        fs::create_dir_all(&tr).unwrap();
        fs::rename(dir(root, "U").join(&ids[0]), tr.join(&ids[0])).unwrap();
        assert_eq!(
            list(root, "U").unwrap().len(),
            2,
            "a moved snapshot is not listed"
        );
        recover(root, "U").unwrap();
        assert!(!tr.exists(), "the trash is emptied");
        assert!(!sidecar(root, "U", &ids[0]).exists(), "its record is gone");
        let l = list(root, "U").unwrap();
        assert_eq!(
            l.iter().map(|s| s.info.id.clone()).collect::<Vec<_>>(),
            ids[1..]
        );
        assert_eq!(fs::read(l[0].path.join("ab/abcd")).unwrap(), b"b");
    }

    #[cfg(unix)]
    /// A staging folder holding Manifest.db and `files`.
    fn stage(root: &Path, files: &[(&str, &[u8])]) -> PathBuf {
        let staging = root.join("staging");
        fs::create_dir_all(&staging).unwrap();
        fs::write(staging.join("Manifest.db"), b"db").unwrap();
        for (name, body) in files {
            let p = staging.join(name);
            fs::create_dir_all(p.parent().unwrap()).unwrap();
            fs::write(p, body).unwrap();
        }
        staging
    }

    #[cfg(unix)]
    fn night(date: i64) -> Info {
        Info {
            id: String::new(),
            date,
            files: 0,
            bytes: 0,
            encrypted: false,
            ios: "18.0".into(),
            result: "complete".into(),
            full: false,
            folders: None,
        }
    }

    #[cfg(unix)]
    /// What each snapshot reads as, oldest first: (id, ab/x, cd/y).
    fn reads(root: &Path) -> Vec<(String, String, String)> {
        let read = |p: PathBuf| String::from_utf8(fs::read(p).unwrap_or_default()).unwrap();
        list(root, "U")
            .unwrap()
            .into_iter()
            .map(|s| {
                (
                    s.info.id,
                    read(s.path.join("ab/x")),
                    read(s.path.join("cd/y")),
                )
            })
            .collect()
    }

    /// Every link in the history leads straight to a real folder.
    #[cfg(unix)]
    fn links_are_one_step(root: &Path) {
        let d = dir(root, "U");
        for h in history_ids(&d) {
            for e in fs::read_dir(d.join(&h)).unwrap().flatten() {
                if let Ok(t) = fs::read_link(e.path()) {
                    let target = d.join(&h).join(t);
                    assert!(
                        is_real_dir(&target),
                        "{h}/{:?} leads to {} which is not a real folder",
                        e.file_name(),
                        target.display()
                    );
                }
            }
        }
    }

    #[cfg(unix)]
    #[test]
    fn untouched_folders_move_forward_and_every_snapshot_reads_whole() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path();
        let inherit = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let s1 = stage(root, &[("ab/x", b"1"), ("cd/y", b"2")]);
        let a = commit(root, "U", &s1, night(1000), &[], None).unwrap().id;
        // A quiet night: both folders move on whole.
        let s2 = stage(root, &[]);
        let ab_inode = fs::metadata(root.join("U/ab")).unwrap();
        let b = commit(root, "U", &s2, night(87_000), &inherit(&["ab", "cd"]), None)
            .unwrap()
            .id;
        {
            use std::os::unix::fs::MetadataExt;
            assert_eq!(
                fs::metadata(root.join("U/ab")).unwrap().ino(),
                ab_inode.ino(),
                "the same folder, moved"
            );
        }
        assert_eq!(
            fs::read_link(dir(root, "U").join(&a).join("ab")).unwrap(),
            to_newest("U", "ab")
        );
        // cd changes: the snapshot before keeps the old cd, and the links
        // to the newest's cd now lead to it.
        let s3 = stage(root, &[("cd/y", b"22")]);
        let c = commit(root, "U", &s3, night(90_000), &inherit(&["ab"]), None)
            .unwrap()
            .id;
        assert_eq!(
            fs::read_link(dir(root, "U").join(&a).join("cd")).unwrap(),
            to_history(&b, "cd")
        );
        // ab changes too.
        let s4 = stage(root, &[("ab/x", b"11")]);
        let e = commit(root, "U", &s4, night(91_000), &inherit(&["cd"]), None)
            .unwrap()
            .id;
        links_are_one_step(root);
        let want = |id: &str, x: &str, y: &str| (id.to_string(), x.to_string(), y.to_string());
        assert_eq!(
            reads(root),
            [
                want(&a, "1", "2"),
                want(&b, "1", "2"),
                want(&c, "1", "22"),
                want(&e, "11", "22")
            ]
        );
        assert!(is_real_dir(&root.join("U/ab")) && is_real_dir(&root.join("U/cd")));

        // Pruning b (kept: a as day 0's, c and e the last two): its cd,
        // which a links to, goes to a.
        let keep = Keep {
            last: 2,
            daily: 2,
            ..Keep::default()
        };
        let dry = prune(root, "U", &keep, true).unwrap();
        assert_eq!(dry.removed, std::slice::from_ref(&b));
        assert_eq!(
            dry.freed, 2,
            "only b's own Manifest.db: its cd is handed over"
        );
        prune(root, "U", &keep, false).unwrap();
        assert!(is_real_dir(&dir(root, "U").join(&a).join("cd")));
        links_are_one_step(root);
        assert_eq!(
            reads(root),
            [
                want(&a, "1", "2"),
                want(&c, "1", "22"),
                want(&e, "11", "22")
            ]
        );
    }

    #[cfg(unix)]
    #[test]
    fn a_newest_deleted_by_hand_never_lends_its_successor_to_older_snapshots() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path();
        let s1 = stage(root, &[("ab/x", b"1"), ("cd/y", b"2")]);
        let a = commit(root, "U", &s1, night(1000), &[], None).unwrap().id;
        let s2 = stage(root, &[("cd/y", b"22")]);
        commit(root, "U", &s2, night(87_000), &["ab".to_string()], None).unwrap();
        assert_eq!(
            fs::read_link(dir(root, "U").join(&a).join("ab")).unwrap(),
            to_newest("U", "ab"),
            "a's ab lives in the newest"
        );
        // The user deletes the newest to start afresh; the next backup is full.
        fs::remove_dir_all(root.join("U")).unwrap();
        let s3 = stage(root, &[("ab/x", b"111"), ("cd/y", b"222")]);
        let c = commit(root, "U", &s3, night(90_000), &[], None).unwrap().id;
        let all = list(root, "U").unwrap();
        let old = all.iter().find(|s| s.info.id == a).unwrap();
        assert!(
            !old.path.join("ab").exists(),
            "a's ab was deleted; it must not read the new backup's"
        );
        assert_eq!(fs::read(old.path.join("cd/y")).unwrap(), b"2", "a's own cd");
        assert!(
            old.info.result.starts_with("incomplete"),
            "{}",
            old.info.result
        );
        let new = all.iter().find(|s| s.info.id == c).unwrap();
        assert!(new.newest && new.info.result == "complete");
        assert_eq!(fs::read(new.path.join("ab/x")).unwrap(), b"111");
        links_are_one_step(root);
    }

    #[cfg(unix)]
    #[test]
    fn interrupted_commits_and_prunes_with_moved_folders_are_repaired() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path();
        let d = dir(root, "U");
        let s1 = stage(root, &[("ab/x", b"1"), ("cd/y", b"2")]);
        let a = commit(root, "U", &s1, night(1000), &[], None).unwrap().id;
        let s2 = stage(root, &[]);
        let b = commit(
            root,
            "U",
            &s2,
            night(2000),
            &["ab".into(), "cd".into()],
            None,
        )
        .unwrap()
        .id;

        // Killed in the middle of the next commit, after ab moved into
        // staging and the links to cd were turned to b's.
        let staging = root.join(".ibackup/staging/U");
        fs::create_dir_all(staging.parent().unwrap()).unwrap();
        fs::rename(stage(root, &[("cd/y", b"22")]), &staging).unwrap();
        fs::write(
            pending_file(root, "U"),
            serde_json::to_vec(&Pending {
                new: "X".into(),
                prev: Some(b.clone()),
                inherit: vec!["ab".into()],
            })
            .unwrap(),
        )
        .unwrap();
        fs::write(
            sidecar(root, "U", "X"),
            serde_json::to_vec(&night(3000)).unwrap(),
        )
        .unwrap();
        fs::rename(root.join("U"), d.join(&b)).unwrap();
        hand_forward(&d, "U", &b, &staging, &["ab".into()]).unwrap();
        // Killed inside a link's turn: its temporary name is left.
        std::os::unix::fs::symlink("../x/cd", d.join(&a).join("cd.ibackup-link")).unwrap();
        assert_eq!(
            fs::read_link(d.join(&a).join("cd")).unwrap(),
            to_history(&b, "cd")
        );
        recover(root, "U").unwrap();
        assert!(is_real_dir(&root.join("U/ab")), "ab is back, a real folder");
        assert!(fs::symlink_metadata(d.join(&a).join("cd.ibackup-link")).is_err());
        assert_eq!(
            fs::read_link(d.join(&a).join("cd")).unwrap(),
            to_newest("U", "cd")
        );
        links_are_one_step(root);
        let want = |id: &str| (id.to_string(), "1".to_string(), "2".to_string());
        assert_eq!(reads(root), [want(&a), want(&b)]);

        // A prune killed right after writing its hand-over: the next start
        // finishes it. (c changes cd, so b holds the cd a links to.)
        let _ = fs::remove_dir_all(&staging);
        let s3 = stage(root, &[("cd/y", b"22")]);
        let c = commit(root, "U", &s3, night(3000), &["ab".into()], None)
            .unwrap()
            .id;
        let h = Handover {
            from: b.clone(),
            heirs: heirs(&d, &b),
        };
        assert_eq!(h.heirs, [("cd".to_string(), a.clone())]);
        fs::write(handover_file(root, "U"), serde_json::to_vec(&h).unwrap()).unwrap();
        assert_eq!(
            list(root, "U").unwrap().len(),
            2,
            "a snapshot being removed is not listed"
        );
        recover(root, "U").unwrap();
        assert!(!d.join(&b).exists() && !sidecar(root, "U", &b).exists());
        links_are_one_step(root);
        assert_eq!(
            reads(root),
            [want(&a), (c.clone(), "1".to_string(), "22".to_string())]
        );
    }
}
