//! Backup history: every night a snapshot, sharing unchanged files; each
//! snapshot restores to its night's device; interrupted backups add none;
//! prune frees space. Unix only: it counts disk use by inode.
#![cfg(unix)]

use std::collections::{BTreeMap, HashSet};
use std::path::Path;
use std::process::Command;

use ibackup_sim::populate::Profile;
use ibackup_suite::*;

fn ib(host: &SimHost, args: &[&str]) -> std::process::Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_ibackup"));
    host.point(&mut c);
    c.args(args);
    run(c)
}

fn p(path: &Path) -> &str {
    path.to_str().unwrap()
}

/// Bytes on disk below `dir`, each inode counted once (what `du` reports).
fn disk_use(dir: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let mut seen = HashSet::new();
    let mut n = 0;
    for e in walkdir::WalkDir::new(dir).into_iter().flatten() {
        let md = e.metadata().unwrap();
        if md.is_file() && seen.insert((md.dev(), md.ino())) {
            n += md.len();
        }
    }
    n
}

fn snapshots(host: &SimHost, dir: &Path) -> Vec<serde_json::Value> {
    let o = ib(host, &["--json", "snapshots", p(dir)]);
    assert_ok(&o, "snapshots");
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn hashes(dir: &Path) -> BTreeMap<String, String> {
    device_tree(dir, &[])
        .into_iter()
        .filter_map(|(k, n)| match n {
            Node::File { sha1, .. } => Some((k, sha1)),
            _ => None,
        })
        .collect()
}

#[test]
fn three_nights_three_snapshots_each_restores_its_night() {
    let host = SimHost::start(
        &[
            (Profile::Small, 301),
            (Profile::Empty, 302),
            (Profile::Empty, 303),
            (Profile::Empty, 304),
        ],
        |_, _| {},
    );
    let a = host.udids[0].as_str();
    let dir = host.path("backups");
    let fs = host.devices[0].join("fs");
    let mut nights = Vec::new();
    let mut changed_bytes = 0u64;
    for night in 0..3 {
        if night > 0 {
            // A day's changes: a new photo, an edited note, a deleted file.
            let photo = fs.join(format!(
                "CameraRollDomain/Media/DCIM/100APPLE/IMG_90{night}0.JPG"
            ));
            let body = vec![night as u8; 3_000_000];
            std::fs::write(&photo, &body).unwrap();
            let prefs = fs.join("HomeDomain/Library/Preferences/com.apple.night.plist");
            // Sizes differ too: nights here are a second apart, and a device
            // sees a file of the same size and second as unchanged.
            std::fs::write(&prefs, format!("night {night}{}", "!".repeat(night))).unwrap();
            changed_bytes += body.len() as u64 + 10;
            let victim = walkdir::WalkDir::new(fs.join("AppDomain-com.example.field-notes"))
                .into_iter()
                .flatten()
                .find(|e| e.file_type().is_file())
                .unwrap();
            std::fs::remove_file(victim.path()).unwrap();
        }
        let o = ib(&host, &["-u", a, "backup", p(&dir)]);
        assert_ok(&o, &format!("night {night}"));
        nights.push(device_tree(&fs, &PLAIN_SKIP));
    }
    let snaps = snapshots(&host, &dir);
    assert_eq!(snaps.len(), 3, "{snaps:?}");
    assert!(snaps[2]["newest"].as_bool().unwrap());
    assert!(snaps
        .iter()
        .all(|s| s["result"] == "complete" && s["files"].as_u64().unwrap() > 100));
    // Each record's counts (kept by the session, not walked) are what a
    // walk of its folder finds.
    for s in &snaps {
        assert_eq!(
            (s["files"].as_u64().unwrap(), s["size"].as_u64().unwrap()),
            ibackup_engine::snapshots::count_content(Path::new(s["path"].as_str().unwrap())),
            "{s}"
        );
    }
    let ids: Vec<String> = snaps
        .iter()
        .map(|s| s["id"].as_str().unwrap().to_string())
        .collect();

    // Little more than one snapshot: unchanged files are shared.
    let one = disk_use(&dir.join(a));
    let all = disk_use(&dir);
    assert!(
        (all as f64) < 1.2 * one as f64 + changed_bytes as f64,
        "three snapshots take {all} bytes; one takes {one}, the changes {changed_bytes}"
    );

    // Each snapshot restores onto an empty device as its night's state.
    for (i, target) in [(0usize, 1usize), (1, 2)] {
        let o = ib(
            &host,
            &[
                "-u",
                &host.udids[target],
                "restore",
                "--source",
                a,
                "--snapshot",
                &ids[i],
                "--no-reboot",
                p(&dir),
            ],
        );
        assert_ok(&o, &format!("restore of snapshot {}", ids[i]));
        assert_same_tree(
            &device_tree(&host.devices[target].join("fs"), &[]),
            &nights[i],
            &format!("night {i} restored"),
        );
    }
    // The oldest, whose unchanged folders are links to later snapshots',
    // checked out as a Finder folder of real folders, restores with
    // libimobiledevice.
    let old = Path::new(snaps[0]["path"].as_str().unwrap());
    assert!(
        std::fs::read_dir(old)
            .unwrap()
            .flatten()
            .any(|e| e.file_type().unwrap().is_symlink()),
        "an old snapshot shares the folders no night changed"
    );
    // A checkout onto a disk too small for its copies (hard links cannot
    // cross disks): the disk's fault, and nothing left that looks whole.
    if let Some(disk) = SmallDisk::mount(&host.root.path().join("small-disk"), 2) {
        let o = ib(
            &host,
            &["checkout", "--snapshot", &ids[0], p(&dir), p(&disk.0)],
        );
        assert_eq!(o.status.code(), Some(7), "{}", text(&o));
        assert!(text(&o).contains("The disk holding"), "{}", text(&o));
        assert_eq!(
            std::fs::read_dir(&disk.0).unwrap().count(),
            0,
            "no partial checkout is left"
        );
    }
    // Into the snapshot itself (a copy that would never end), or an
    // extraction into the backup it reads: refused, nothing written.
    let newest = dir.join(a);
    let inside = newest.join("out");
    for args in [
        vec!["checkout", p(&dir), p(&inside)],
        vec!["extract", p(&dir), "--to", p(&inside)],
    ] {
        let o = ib(&host, &args);
        assert_eq!(o.status.code(), Some(16), "{args:?}: {}", text(&o));
        assert!(text(&o).contains("inside the"), "{}", text(&o));
        assert!(!inside.exists());
    }
    let out = host.root.path().join("checkout");
    let o = ib(
        &host,
        &["checkout", "--snapshot", &ids[0], p(&dir), p(&out)],
    );
    assert_ok(&o, "checkout");
    assert!(
        walkdir::WalkDir::new(&out)
            .into_iter()
            .flatten()
            .all(|e| !e.path_is_symlink()),
        "a checkout has no links"
    );
    if let Some(b2) = referee("idevicebackup2") {
        let o = run({
            let mut c = host.cmd(&b2);
            c.args([
                "-u",
                &host.udids[3],
                "-s",
                a,
                "restore",
                "--system",
                "--no-reboot",
            ])
            .arg(&out);
            c
        });
        assert_ok(&o, "idevicebackup2 restore of a checked-out snapshot");
        assert_same_tree(
            &device_tree(&host.devices[3].join("fs"), &[]),
            &nights[0],
            "night 0 via idevicebackup2",
        );
    }

    // ls, extract and verify take --snapshot too.
    assert_ok(
        &ib(&host, &["verify", "--snapshot", &ids[0], p(&dir)]),
        "verify an old snapshot",
    );
    let o = ib(&host, &["ls", "--snapshot", &ids[0], p(&dir)]);
    assert_ok(&o, "ls an old snapshot");
    assert!(
        !String::from_utf8_lossy(&o.stdout).contains("IMG_9010.JPG"),
        "night 0 had no new photo"
    );
    let o = ib(&host, &["ls", "--snapshot", &ids[1], p(&dir)]);
    assert!(String::from_utf8_lossy(&o.stdout).contains("IMG_9010.JPG"));
    let x = host.root.path().join("x");
    assert_ok(
        &ib(
            &host,
            &[
                "extract",
                "--snapshot",
                &ids[1],
                "--domain",
                "CameraRollDomain",
                p(&dir),
                "--to",
                p(&x),
            ],
        ),
        "extract",
    );
    assert_eq!(
        std::fs::read(x.join("CameraRollDomain/Media/DCIM/100APPLE/IMG_9010.JPG")).unwrap(),
        vec![1u8; 3_000_000]
    );
    let o = ib(&host, &["ls", "--snapshot", "nope", p(&dir)]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));

    // An interrupted backup adds no snapshot and changes none.
    let before: Vec<_> = snaps
        .iter()
        .map(|s| hashes(Path::new(s["path"].as_str().unwrap())))
        .collect();
    edit_device(&host.devices[0], |c| {
        c.fault_disconnect_after_files = Some(2)
    });
    std::fs::write(
        fs.join("HomeDomain/Library/Preferences/com.apple.night.plist"),
        "night 3",
    )
    .unwrap();
    let o = ib(&host, &["-u", a, "backup", "--full", p(&dir)]);
    assert_eq!(o.status.code(), Some(8), "{}", text(&o));
    let after = snapshots(&host, &dir);
    assert_eq!(after.len(), 3);
    for (s, h) in after.iter().zip(&before) {
        assert_eq!(
            &hashes(Path::new(s["path"].as_str().unwrap())),
            h,
            "snapshot {} intact",
            s["id"]
        );
    }
    edit_device(&host.devices[0], |c| c.fault_disconnect_after_files = None);

    // Prune: a dry run removes nothing; keeping the last one frees the rest.
    let o = ib(&host, &["prune", p(&dir), "--keep-last", "1", "--dry-run"]);
    assert_ok(&o, "prune --dry-run");
    assert!(text(&o).contains("would remove"), "{}", text(&o));
    assert_eq!(snapshots(&host, &dir).len(), 3);
    let o = ib(&host, &["prune", p(&dir)]);
    assert_eq!(
        o.status.code(),
        Some(2),
        "no rules, nothing removed: {}",
        text(&o)
    );
    // A mistyped folder (or a disk not mounted) is named, not a bare
    // "No such file or directory".
    let nowhere = host.root.path().join("not-mounted");
    for args in [
        &["snapshots", p(&nowhere)][..],
        &["prune", p(&nowhere), "--keep-last", "1"],
    ] {
        let o = ib(&host, args);
        assert_eq!(o.status.code(), Some(9), "{args:?}: {}", text(&o));
        assert!(
            text(&o).contains(&format!("{} does not exist", nowhere.display())),
            "{}",
            text(&o)
        );
    }
    // A folder that holds no backup is the wrong folder, not a damaged
    // backup; one whose index is gone is damaged.
    let empty = host.root.path().join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    for args in [&["verify", p(&empty)][..], &["ls", p(&empty)]] {
        let o = ib(&host, args);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", text(&o));
        assert!(
            text(&o).contains("There is no backup in") && !text(&o).contains("damaged"),
            "{}",
            text(&o)
        );
    }
    let broken = empty.join(a);
    std::fs::create_dir_all(&broken).unwrap();
    std::fs::write(broken.join("Info.plist"), b"").unwrap();
    let o = ib(&host, &["verify", p(&empty)]);
    assert_eq!(o.status.code(), Some(9), "{}", text(&o));
    assert!(text(&o).contains("has no Manifest.db"), "{}", text(&o));

    let o = ib(&host, &["prune", p(&dir), "--keep-last", "1"]);
    assert_ok(&o, "prune");
    let left = snapshots(&host, &dir);
    assert_eq!(left.len(), 1);
    assert_eq!(left[0]["id"], ids[2].as_str(), "the newest stays");
    assert!(disk_use(&dir) < all, "prune freed space");
    assert!(
        disk_use(&dir) <= one + 1_000_000,
        "what is left is one snapshot"
    );
    assert_ok(&ib(&host, &["verify", p(&dir)]), "the newest is whole");
}

#[test]
fn nightly_full_backups_share_unchanged_files_too() {
    let host = SimHost::start(&[(Profile::Small, 311)], |_, _| {});
    let a = host.udids[0].as_str();
    let dir = host.path("backups");
    assert_ok(&ib(&host, &["-u", a, "full", p(&dir)]), "first full backup");
    let one = disk_use(&dir);
    let photo = host.devices[0].join("fs/CameraRollDomain/Media/DCIM/100APPLE/IMG_9999.JPG");
    std::fs::write(&photo, vec![9u8; 2_000_000]).unwrap();
    assert_ok(
        &ib(&host, &["-u", a, "full", p(&dir)]),
        "second full backup",
    );
    let two = disk_use(&dir);
    assert!(
        two < one + 2_000_000 + one / 10,
        "two full backups take {two} bytes; one took {one}, the change 2 MB"
    );
    let snaps = snapshots(&host, &dir);
    assert_eq!(snaps.len(), 2);
    // Each is still its own whole backup.
    assert_ok(
        &ib(
            &host,
            &[
                "verify",
                "--snapshot",
                snaps[0]["id"].as_str().unwrap(),
                p(&dir),
            ],
        ),
        "older",
    );
    assert_same_tree(
        &backup_tree(&dir.join(a)),
        &device_tree(&host.devices[0].join("fs"), &PLAIN_SKIP),
        "newest",
    );
}

/// Every byte of the files below `dir`, as one string, to look for a
/// secret in.
fn all_bytes(dir: &Path) -> Vec<u8> {
    let mut v = Vec::new();
    for e in walkdir::WalkDir::new(dir).into_iter().flatten() {
        if e.file_type().is_file() {
            v.extend(std::fs::read(e.path()).unwrap());
        }
    }
    v
}

#[test]
fn a_crafted_backup_folder_leads_nowhere_outside_itself() {
    let host = SimHost::start(&[(Profile::Small, 371), (Profile::Empty, 372)], |_, _| {});
    let (a, b) = (&host.udids[0], &host.udids[1]);
    let dir = host.path("backups");
    assert_ok(&ib(&host, &["-u", a, "full", p(&dir)]), "first backup");
    assert_ok(&ib(&host, &["-u", a, "backup", p(&dir)]), "second backup");
    let secret = b"HOST SECRET: root password is hunter2";
    let secret_file = host.root.path().join("host-secret");
    std::fs::write(&secret_file, secret).unwrap();
    let contains_secret = |d: &Path| all_bytes(d).windows(secret.len()).any(|w| w == secret);

    // A content file of the newest backup replaced by a link to a host file.
    let sms = ibackup_store::paths::file_id("HomeDomain", "Library/SMS/sms.db");
    let at = dir.join(a).join(&sms[..2]).join(&sms);
    std::fs::remove_file(&at).unwrap();
    std::os::unix::fs::symlink(&secret_file, &at).unwrap();

    let o = ib(&host, &["verify", p(&dir)]);
    assert_eq!(o.status.code(), Some(9), "{}", text(&o));
    assert!(text(&o).contains("symbolic link"), "{}", text(&o));
    let out = host.path("out");
    let o = ib(&host, &["extract", p(&dir), "--to", p(&out)]);
    assert_eq!(o.status.code(), Some(9), "{}", text(&o));
    assert!(!contains_secret(&out), "extract copied the host file");
    let before = device_tree(&host.devices[1].join("fs"), &[]);
    let o = ib(
        &host,
        &["-u", b, "restore", "--source", a, "--no-reboot", p(&dir)],
    );
    assert_eq!(o.status.code(), Some(9), "{}", text(&o));
    assert!(
        !contains_secret(&host.devices[1].join("fs")),
        "restore sent the host file"
    );
    assert_eq!(
        device_tree(&host.devices[1].join("fs"), &[]),
        before,
        "B untouched"
    );

    // An older snapshot's folder link pointed at a folder of the host.
    let snaps = snapshots(&host, &dir);
    let old = snaps
        .iter()
        .find(|s| s["newest"] == false)
        .expect("an older snapshot");
    let old_path = Path::new(old["path"].as_str().unwrap()).to_path_buf();
    let evil = host.path("evil");
    std::fs::create_dir_all(&evil).unwrap();
    std::fs::write(evil.join(&sms), secret).unwrap();
    let folder = old_path.join(&sms[..2]);
    if std::fs::symlink_metadata(&folder)
        .unwrap()
        .file_type()
        .is_symlink()
    {
        std::fs::remove_file(&folder).unwrap();
    } else {
        std::fs::remove_dir_all(&folder).unwrap();
    }
    std::os::unix::fs::symlink(&evil, &folder).unwrap();
    let id = old["id"].as_str().unwrap();
    let co = host.path("co");
    std::fs::create_dir_all(&co).unwrap();
    let o = ib(&host, &["checkout", p(&dir), p(&co), "--snapshot", id]);
    assert_eq!(o.status.code(), Some(9), "{}", text(&o));
    assert!(!contains_secret(&co), "checkout linked the host folder in");
    let o = ib(&host, &["verify", "--snapshot", id, p(&dir)]);
    assert_eq!(o.status.code(), Some(9), "{}", text(&o));

    // The next backup does not continue the damaged one: it makes a full
    // one, which verifies.
    let o = ib(&host, &["-u", a, "backup", p(&dir)]);
    assert_ok(&o, "backup over the crafted folder");
    assert!(text(&o).contains("Full backup"), "{}", text(&o));
    assert_ok(&ib(&host, &["verify", p(&dir)]), "verify after");
    assert!(!contains_secret(&dir.join(a)), "no host byte in the backup");
}

#[test]
fn a_commit_killed_between_its_renames_is_repaired_by_the_commands_that_read() {
    let host = SimHost::start(&[(Profile::Small, 381)], |_, _| {});
    let a = &host.udids[0];
    let dir = host.path("backups");
    assert_ok(&ib(&host, &["-u", a, "full", p(&dir)]), "first backup");
    assert_ok(&ib(&host, &["-u", a, "backup", p(&dir)]), "second backup");
    let before = hashes(&dir.join(a));
    let snaps = dir.join(".ibackup/snapshots").join(a);
    let newest = std::fs::read_to_string(snaps.join("newest")).unwrap();
    // Where a kill between the commit's two renames leaves things: the
    // newest moved into the history, the new one still in staging.
    std::fs::write(
        snaps.join("pending.json"),
        format!(r#"{{"new":"20991231T000000Z","prev":"{newest}","inherit":[]}}"#),
    )
    .unwrap();
    std::fs::write(snaps.join("20991231T000000Z.json"), b"{}").unwrap();
    std::fs::write(snaps.join("20991231T000000Z.json.ibackup-part"), b"{").unwrap();
    std::fs::rename(dir.join(a), snaps.join(&newest)).unwrap();
    std::fs::create_dir_all(dir.join(".ibackup/staging").join(a)).unwrap();
    let stale_index = std::env::temp_dir().join("ibackup-index-4194303-crashed");
    std::fs::create_dir_all(&stale_index).unwrap();

    let o = ib(&host, &["--json", "snapshots", p(&dir)]);
    assert_ok(&o, "snapshots");
    let listed: Vec<serde_json::Value> = text(&o)
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    assert_eq!(listed.len(), 2, "{}", text(&o));
    assert!(listed
        .iter()
        .any(|s| s["newest"] == true && s["id"] == newest.as_str()));
    assert_eq!(hashes(&dir.join(a)), before, "the newest is back, whole");
    assert_ok(&ib(&host, &["verify", p(&dir)]), "verify");
    assert_ok(&ib(&host, &["ls", p(&dir)]), "ls");
    for left in [
        snaps.join("pending.json"),
        snaps.join("20991231T000000Z.json"),
        snaps.join("20991231T000000Z.json.ibackup-part"),
        dir.join(".ibackup/staging").join(a),
        stale_index,
    ] {
        assert!(!left.exists(), "{} is left behind", left.display());
    }
}
