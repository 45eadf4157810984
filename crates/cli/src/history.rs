//! Backup history: `snapshots`, `checkout`, `prune`.

use std::path::Path;

use ibackup_engine::error::stopped;
use ibackup_engine::snapshots::{self, Keep};
use ibackup_engine::staging::BackupDir;
use ibackup_engine::EngineError;
use serde_json::json;

use crate::{human_bytes, Cli};

pub fn list(cli: &Cli, dir: &Path, udids: &[String]) -> Result<(), EngineError> {
    if udids.is_empty() && !cli.quiet && !cli.json {
        println!("No backups in {}.", dir.display());
    }
    for udid in udids {
        let all = snapshots::list(dir, udid)?;
        if cli.json {
            for s in &all {
                println!(
                    "{}",
                    json!({"udid": udid, "id": s.info.id, "date": snapshots::format_date(s.info.date), "unix_time": s.info.date,
                           "size": s.info.bytes, "files": s.info.files, "encrypted": s.info.encrypted, "ios": s.info.ios,
                           "result": s.info.result, "full": s.info.full, "newest": s.newest, "path": s.path})
                );
            }
            continue;
        }
        if cli.quiet {
            continue;
        }
        println!("{udid}:");
        println!(
            "  {:20} {:19} {:>10} {:>8} {:9} {:8} result",
            "id", "date (UTC)", "size", "files", "encrypted", "iOS"
        );
        for s in &all {
            println!(
                "  {:20} {:19} {:>10} {:>8} {:9} {:8} {}{}",
                s.info.id,
                snapshots::format_date(s.info.date),
                human_bytes(s.info.bytes),
                s.info.files,
                if s.info.encrypted { "yes" } else { "no" },
                s.info.ios,
                s.info.result,
                if s.newest { " (newest)" } else { "" }
            );
        }
    }
    Ok(())
}

/// Copy `folder` to `to` (made here) as hard links, or copies where links
/// cannot be made (another disk); (files, whether all were linked).
/// Failures to write are the output's.
fn copy_tree(
    folder: &Path,
    to: &Path,
    stop: &dyn Fn() -> bool,
) -> Result<(u64, bool), EngineError> {
    let output = |path: &Path| {
        let path = path.to_path_buf();
        move |source| EngineError::Output { path, source }
    };
    if to.exists() {
        std::fs::remove_dir_all(to).map_err(output(to))?;
    }
    let (mut files, mut linked) = (0u64, true);
    // An older snapshot's unchanged folders are links to a later one's:
    // followed (only those, only there), so OUT gets real folders. Any
    // other link is damage: a backup folder leads nowhere outside itself.
    let bounds = ibackup_store::paths::content_bounds(folder);
    let damaged = |p: &Path| {
        EngineError::Damaged(format!(
            "{} is a symbolic link leading outside the backup; nothing was checked out",
            p.display()
        ))
    };
    let mut trees = vec![(folder.to_path_buf(), to.to_path_buf())];
    while let Some((from, into)) = trees.pop() {
        for e in walkdir::WalkDir::new(&from) {
            if stop() {
                // The caller removes what was built.
                return Err(EngineError::Interrupted(stopped::CHECKOUT));
            }
            let e = e.map_err(|e| EngineError::Io(e.into()))?;
            let rel = e.path().strip_prefix(&from).expect("below folder");
            let dest = into.join(rel);
            if e.file_type().is_symlink() {
                let target = (from == folder && e.depth() == 1)
                    .then(|| ibackup_store::paths::snapshot_link_target(e.path(), &bounds))
                    .flatten();
                match target {
                    Some(t) => trees.push((t, dest)),
                    None => return Err(damaged(e.path())),
                }
            } else if e.file_type().is_dir() {
                std::fs::create_dir_all(&dest).map_err(output(&dest))?;
            } else if e.file_type().is_file() {
                if std::fs::hard_link(e.path(), &dest).is_err() {
                    linked = false;
                    std::fs::copy(e.path(), &dest).map_err(output(&dest))?;
                }
                files += 1;
            }
        }
    }
    Ok((files, linked))
}

/// Build `out/<name>` from `folder`: beside its place, renamed into it
/// when whole, so that a failed or stopped checkout (a full disk, Ctrl-C)
/// leaves nothing, least of all something that looks complete. The
/// files, and whether all are hard links.
fn build(
    folder: &Path,
    out: &Path,
    name: &str,
    stop: &dyn Fn() -> bool,
) -> Result<(u64, bool), EngineError> {
    let to = out.join(name);
    let part = out.join(format!("{name}.ibackup-part"));
    let built = copy_tree(folder, &part, stop).and_then(|n| {
        std::fs::rename(&part, &to)
            .map(|()| n)
            .map_err(|source| EngineError::Output {
                path: to.clone(),
                source,
            })
    });
    if built.is_err() {
        let _ = std::fs::remove_dir_all(&part);
    }
    built
}

/// Copy a snapshot to OUT/<UDID>/ as hard links (copies across disks).
pub fn checkout(cli: &Cli, folder: &Path, out: &Path) -> Result<(), EngineError> {
    // The newest is DIR/<UDID>; older ones DIR/.ibackup/snapshots/<UDID>/<ID>.
    let name = |p: Option<&Path>| {
        p.and_then(Path::file_name)
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    };
    let in_history = folder
        .parent()
        .and_then(Path::parent)
        .is_some_and(|p| p.ends_with(".ibackup/snapshots"));
    let udid = if in_history {
        name(folder.parent())
    } else {
        name(Some(folder))
    };
    let to = out.join(&udid);
    if to.exists() {
        return Err(EngineError::Usage(format!(
            "{} already exists; check out into an empty folder",
            to.display()
        )));
    }
    ibackup_store::extract::usable_output(out, folder)?;
    let (files, linked) = build(folder, out, &udid, &|| crate::stop::cancel().requested())?;
    if !cli.quiet && !cli.json {
        println!(
            "Checked out {files} {} to {} ({}).",
            crate::plural(files, "file", "files"),
            to.display(),
            if linked {
                "hard links: no extra space; never edit them, they are the snapshot's files"
            } else {
                "copies"
            }
        );
    } else if cli.json {
        println!(
            "{}",
            json!({"event": "result", "ok": true, "path": to, "files": files, "linked": linked})
        );
    }
    Ok(())
}

pub fn prune(
    cli: &Cli,
    dir: &Path,
    udids: &[String],
    keep: &Keep,
    dry_run: bool,
) -> Result<(), EngineError> {
    for udid in udids {
        // The device's lock: no backup commits while its history is pruned.
        let _lock = BackupDir::open(dir, udid)?;
        let r = snapshots::prune(dir, udid, keep, dry_run)?;
        if cli.json {
            println!(
                "{}",
                json!({"event": "prune", "udid": udid, "dry_run": dry_run, "removed": r.removed, "kept": r.kept, "freed_bytes": r.freed})
            );
        } else if !cli.quiet {
            for id in &r.removed {
                println!(
                    "{udid}: {} {id}",
                    if dry_run { "would remove" } else { "removed" }
                );
            }
            println!(
                "{udid}: {} {} kept, {} {}, {} {}.",
                r.kept.len(),
                crate::plural(r.kept.len() as u64, "snapshot", "snapshots"),
                r.removed.len(),
                if dry_run {
                    "would be removed"
                } else {
                    "removed"
                },
                human_bytes(r.freed),
                if dry_run { "would be freed" } else { "freed" }
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    #[test]
    fn a_stopped_or_failed_checkout_leaves_nothing_in_out() {
        let t = tempfile::tempdir().unwrap();
        let folder = t.path().join("snap");
        for i in 0..50 {
            let d = folder.join(format!("{:02x}", i));
            std::fs::create_dir_all(&d).unwrap();
            std::fs::write(d.join("f"), [i as u8; 100]).unwrap();
        }
        let out = t.path().join("out");
        std::fs::create_dir_all(&out).unwrap();
        let seen = Cell::new(0);
        let stop_after_20 = || {
            seen.set(seen.get() + 1);
            seen.get() > 20
        };
        let r = build(&folder, &out, "U", &stop_after_20);
        assert!(
            matches!(r, Err(EngineError::Interrupted(stopped::CHECKOUT))),
            "{r:?}"
        );
        assert_eq!(std::fs::read_dir(&out).unwrap().count(), 0, "OUT is empty");
        // A name taken by a file where the finished folder goes: an
        // output error, and the built folder removed.
        std::fs::write(out.join("U"), b"in the way").unwrap();
        let r = build(&folder, &out, "U", &|| false);
        assert!(matches!(r, Err(EngineError::Output { .. })), "{r:?}");
        assert!(!out.join("U.ibackup-part").exists());
        std::fs::remove_file(out.join("U")).unwrap();
        let (files, _) = build(&folder, &out, "U", &|| false).unwrap();
        assert_eq!(files, 50);
        assert_eq!(std::fs::read(out.join("U/07/f")).unwrap(), [7u8; 100]);
    }
}
