//! `ibackup full` / `ibackup backup` end to end against the simulator, and
//! checked by libimobiledevice (which must restore what we write).

use std::path::Path;
use std::process::Command;

use ibackup_sim::device::Trust;
use ibackup_sim::populate::Profile;
use ibackup_suite::*;

fn ibackup(host: &SimHost) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_ibackup"));
    host.point(&mut c);
    c
}

/// Every file under a folder with its bytes' hash, for "byte for byte intact".
fn snapshot(dir: &Path) -> Vec<(String, String)> {
    let mut v: Vec<_> = device_tree(dir, &[])
        .into_iter()
        .filter_map(|(k, n)| match n {
            Node::File { sha1, .. } => Some((k, sha1)),
            _ => None,
        })
        .collect();
    v.sort();
    v
}

#[test]
fn full_backup_matches_the_device_and_idevicebackup2_restores_it() {
    let host = SimHost::start(&[(Profile::Small, 101), (Profile::Empty, 102)], |_, _| {});
    let (a, b) = (&host.udids[0], &host.udids[1]);
    let dir = host.path("backups");
    let o = run({
        let mut c = ibackup(&host);
        c.args(["-u", a, "full"]).arg(&dir);
        c
    });
    assert_ok(&o, "ibackup full");
    assert!(text(&o).contains("Full backup of"), "{}", text(&o));
    let device = device_tree(&host.devices[0].join("fs"), &PLAIN_SKIP);
    assert_same_tree(
        &backup_tree(&dir.join(a)),
        &device,
        "ibackup backup vs device",
    );
    assert!(
        !dir.join(".ibackup/staging").join(a).exists(),
        "staging is gone after commit"
    );
    // Info.plist as Finder writes it: apps with their icons, iTunes files.
    let info = plist::Value::from_file(dir.join(a).join("Info.plist"))
        .unwrap()
        .into_dictionary()
        .unwrap();
    let apps = info["Applications"].as_dictionary().unwrap();
    assert!(!apps.is_empty());
    for (id, app) in apps {
        let png = app.as_dictionary().unwrap()["PlaceholderIcon"].as_data();
        assert!(
            png.is_some_and(|p| p.starts_with(b"\x89PNG")),
            "{id} has its icon"
        );
    }
    let files = info["iTunes Files"].as_dictionary().unwrap();
    assert_eq!(
        files["iTunesPrefs"].as_data().unwrap(),
        std::fs::read(host.devices[0].join("media/iTunes_Control/iTunes/iTunesPrefs")).unwrap()
    );

    // The pairing ibackup made is shared through usbmuxd: libimobiledevice uses it.
    let Some(b2) = referee("idevicebackup2") else {
        return;
    };
    let o = run({
        let mut c = host.cmd(&b2);
        c.args(["-u", b, "-s", a, "restore", "--system", "--no-reboot"])
            .arg(&dir);
        c
    });
    assert_ok(&o, "idevicebackup2 restore of an ibackup backup");
    assert_same_tree(
        &device_tree(&host.devices[1].join("fs"), &[]),
        &device,
        "device B after restoring our backup",
    );
}

#[test]
fn incremental_backup_follows_changes_and_continues_an_idevicebackup2_backup() {
    let host = SimHost::start(&[(Profile::Small, 111)], |_, _| {});
    let a = &host.udids[0];
    let dir = host.path("backups");
    let fs = host.devices[0].join("fs");
    // Start from a backup libimobiledevice made, when it is here.
    match referee("idevicebackup2") {
        Some(b2) => assert_ok(
            &run({
                let mut c = host.cmd(&b2);
                c.args(["-u", a, "backup"]).arg(&dir);
                c
            }),
            "idevicebackup2 backup",
        ),
        None => assert_ok(
            &run({
                let mut c = ibackup(&host);
                c.args(["-u", a, "full"]).arg(&dir);
                c
            }),
            "ibackup full",
        ),
    }
    std::fs::write(fs.join("HomeDomain/Library/added.txt"), "new").unwrap();
    std::fs::write(fs.join("HomeDomain/Library/SMS/sms.db"), "replaced content").unwrap();
    let gone: Vec<_> = std::fs::read_dir(fs.join("CameraRollDomain/Media/DCIM/100APPLE"))
        .unwrap()
        .flatten()
        .take(2)
        .map(|e| e.path())
        .collect();
    for p in gone {
        std::fs::remove_file(p).unwrap();
    }
    let o = run({
        let mut c = ibackup(&host);
        c.args(["-u", a, "backup"]).arg(&dir);
        c
    });
    assert_ok(&o, "ibackup backup");
    assert!(text(&o).contains("Incremental backup"), "{}", text(&o));
    assert_same_tree(
        &backup_tree(&dir.join(a)),
        &device_tree(&fs, &PLAIN_SKIP),
        "incremental vs changed device",
    );

    // Two backup disks in turn: the device's last index is then the other
    // disk's, so it reads this disk's index afresh to learn what changed.
    let other = host.path("other-disk");
    std::fs::create_dir_all(&other).unwrap();
    assert_ok(
        &run({
            let mut c = ibackup(&host);
            c.args(["-u", a, "full"]).arg(&other);
            c
        }),
        "ibackup full to the other disk",
    );
    std::fs::write(fs.join("HomeDomain/Library/added.txt"), "changed again").unwrap();
    std::fs::write(fs.join("HomeDomain/Library/second.txt"), "second").unwrap();
    std::fs::remove_file(fs.join("HomeDomain/Library/SMS/sms.db")).unwrap();
    let o = run({
        let mut c = ibackup(&host);
        c.args(["-u", a, "backup"]).arg(&dir);
        c
    });
    assert_ok(&o, "ibackup backup to the first disk again");
    assert!(text(&o).contains("Incremental backup"), "{}", text(&o));
    assert_same_tree(
        &backup_tree(&dir.join(a)),
        &device_tree(&fs, &PLAIN_SKIP),
        "incremental after a backup to another disk vs changed device",
    );
}

#[test]
fn a_cut_cable_leaves_the_last_backup_intact_and_the_next_run_succeeds() {
    let host = SimHost::start(&[(Profile::Small, 121)], |_, _| {});
    let a = &host.udids[0];
    let dir = host.path("backups");
    assert_ok(
        &run({
            let mut c = ibackup(&host);
            c.args(["-u", a, "full"]).arg(&dir);
            c
        }),
        "first backup",
    );
    let before = snapshot(&dir.join(a));
    std::fs::write(
        host.devices[0].join("fs/HomeDomain/Library/changed.txt"),
        "x".repeat(1000),
    )
    .unwrap();
    edit_device(&host.devices[0], |c| {
        c.fault_disconnect_after_bytes = Some(30_000_000)
    });
    let o = run({
        let mut c = ibackup(&host);
        c.args(["-u", a, "full"]).arg(&dir);
        c
    });
    assert_eq!(
        o.status.code(),
        Some(8),
        "connection lost has its own exit code: {}",
        text(&o)
    );
    assert!(text(&o).contains("last backup is intact"), "{}", text(&o));
    assert_eq!(
        snapshot(&dir.join(a)),
        before,
        "the committed backup is byte for byte unchanged"
    );

    edit_device(&host.devices[0], |c| {
        c.fault_disconnect_after_bytes = None;
        c.fault_disconnect_after_files = Some(50);
    });
    let o = run({
        let mut c = ibackup(&host);
        c.args(["-u", a, "backup", "--full"]).arg(&dir);
        c
    });
    assert_eq!(o.status.code(), Some(8), "{}", text(&o));
    assert_eq!(snapshot(&dir.join(a)), before);

    // A device that goes silent without hanging up: given up after the
    // stall timeout, like a pulled cable, instead of holding the backup
    // (and the next night's) for ever.
    edit_device(&host.devices[0], |c| {
        c.fault_disconnect_after_files = None;
        c.fault_stall_after_files = Some(50);
    });
    let o = run({
        let mut c = ibackup(&host);
        c.args(["-u", a, "--stall-timeout", "2s", "backup", "--full"])
            .arg(&dir);
        c
    });
    assert_eq!(o.status.code(), Some(8), "{}", text(&o));
    assert!(
        text(&o).contains("went silent for longer than --stall-timeout")
            && text(&o).contains("last backup is intact"),
        "{}",
        text(&o)
    );
    assert_eq!(snapshot(&dir.join(a)), before);
    // `info --dir` tells the last backup that worked, and that the last
    // try did not, with why.
    let info = || {
        let mut c = ibackup(&host);
        c.args(["-u", a, "info", "--dir"]).arg(&dir);
        let o = run(c);
        assert_ok(&o, "info");
        String::from_utf8_lossy(&o.stdout).to_string()
    };
    let said = info();
    assert!(
        said.contains("Last backup:") && said.contains("UTC (complete)"),
        "{said}"
    );
    assert!(
        said.contains("Last attempt:")
            && said.contains("failed (exit 8)")
            && said.contains("went silent"),
        "{said}"
    );

    edit_device(&host.devices[0], |c| {
        c.fault_disconnect_after_bytes = None;
        c.fault_disconnect_after_files = None;
        c.fault_stall_after_files = None;
    });
    assert_ok(
        &run({
            let mut c = ibackup(&host);
            c.args(["-u", a, "backup"]).arg(&dir);
            c
        }),
        "the next run, no clean-up",
    );
    let said = info();
    assert!(!said.contains("Last attempt:"), "it worked: {said}");
    assert_same_tree(
        &backup_tree(&dir.join(a)),
        &device_tree(&host.devices[0].join("fs"), &PLAIN_SKIP),
        "after recovery",
    );
}

#[test]
fn a_hostile_device_cannot_write_outside_its_backup() {
    let host = SimHost::start(&[(Profile::Empty, 131)], |_, c| {
        c.fault_hostile_paths = vec![
            "../../escaped".into(),
            "/tmp/ibackup-absolute-escape".into(),
            format!("{}/../../escaped2", c.udid),
            "OTHER-UDID/file".into(),
            format!("{}/a\u{0}b", c.udid),
        ];
    });
    let a = &host.udids[0];
    let dir = host.path("deep/backups");
    let o = run({
        let mut c = ibackup(&host);
        c.args(["-u", a, "full"]).arg(&dir);
        c
    });
    let t = text(&o);
    assert!(
        !host.root.path().join("escaped").exists()
            && !host.root.path().join("deep/escaped2").exists()
            && !host.root.path().join("escaped2").exists()
    );
    assert!(!Path::new("/tmp/ibackup-absolute-escape").exists());
    assert!(!dir.join("OTHER-UDID").exists());
    // Finished and whole, but not a plain success: exit 17 says the
    // device asked for something refused.
    assert_eq!(o.status.code(), Some(17), "{t}");
    assert!(
        t.contains("Full backup of") && t.contains("refused"),
        "the user is told: {t}"
    );
    assert_ok(
        &run({
            let mut c = ibackup(&host);
            c.arg("verify").arg(&dir);
            c
        }),
        "the backup was kept",
    );
}

#[test]
fn one_backup_per_device_at_a_time_here_and_on_the_device() {
    let host = SimHost::start(&[(Profile::Small, 141)], |_, _| {});
    let a = &host.udids[0];
    let dir = host.path("backups");
    let full = || {
        run({
            let mut c = ibackup(&host);
            c.args(["-u", a, "full"]).arg(&dir);
            c
        })
    };
    let held = ibackup_engine::staging::BackupDir::open(&dir, a).unwrap();
    let o = full();
    assert_eq!(o.status.code(), Some(11), "{}", text(&o));
    assert!(text(&o).contains("already running"), "{}", text(&o));
    drop(held);

    // The device itself still busy for a moment (a session whose cable
    // was just pulled, winding down): we wait for it and go on.
    edit_device(&host.devices[0], |c| c.fault_busy_seconds = Some(2));
    let o = full();
    assert_ok(&o, "backup of a device busy for 2 s");
    assert!(
        text(&o).contains("busy with another backup"),
        "{}",
        text(&o)
    );
    let before = snapshot(&dir.join(a));

    // Busy for good (Finder backing it up): a sentence, code 11, and the
    // last backup as it was.
    edit_device(&host.devices[0], |c| c.fault_busy_seconds = Some(3600));
    let o = full();
    assert_eq!(o.status.code(), Some(11), "{}", text(&o));
    assert!(
        text(&o).contains("The device is busy with another backup or restore"),
        "{}",
        text(&o)
    );
    assert_eq!(snapshot(&dir.join(a)), before, "the last backup is intact");
}

#[test]
fn trust_locked_and_missing_devices_each_have_a_sentence_and_a_code() {
    let host = SimHost::start(
        &[
            (Profile::Empty, 151),
            (Profile::Empty, 152),
            (Profile::Empty, 153),
        ],
        |i, c| match i {
            0 => {
                c.trust = Trust::Prompt;
                c.trust_after_seconds = 2;
            }
            1 => c.trust = Trust::Deny,
            _ => c.passcode_locked = true,
        },
    );
    let o = run({
        let mut c = ibackup(&host);
        c.args(["-u", &host.udids[0], "pair"]);
        c
    });
    assert_ok(&o, "pair after a trust prompt");
    assert!(text(&o).contains("tap Trust"), "{}", text(&o));
    let o = run({
        let mut c = ibackup(&host);
        c.args(["-u", &host.udids[1], "pair"]);
        c
    });
    assert_eq!(o.status.code(), Some(5), "{}", text(&o));
    let o = run({
        let mut c = ibackup(&host);
        c.args(["-u", &host.udids[2], "pair"]);
        c
    });
    assert_eq!(o.status.code(), Some(6), "{}", text(&o));
    assert!(text(&o).contains("Unlock it"), "{}", text(&o));
    let o = run({
        let mut c = ibackup(&host);
        c.args(["-u", "NOPE", "full"]).arg(host.path("b"));
        c
    });
    assert_eq!(o.status.code(), Some(3), "{}", text(&o));
    let o = run({
        let mut c = ibackup(&host);
        c.args(["full"]).arg(host.path("b"));
        c
    });
    assert_eq!(o.status.code(), Some(3), "several devices: {}", text(&o));
    assert!(text(&o).contains("-u UDID"));
    let o = run({
        let mut c = ibackup(&host);
        c.env("USBMUXD_SOCKET_ADDRESS", "127.0.0.1:1")
            .env("IBACKUP_USB_EMULATOR", "127.0.0.1:1")
            .arg("devices");
        c
    });
    assert_eq!(o.status.code(), Some(12), "{}", text(&o));
}

#[test]
fn simulated_full_works_on_a_fresh_machine() {
    let tmp = tempfile::tempdir().unwrap();
    let (phone, part) = (tmp.path().join("phone"), tmp.path().join("phone.part"));
    // A newcomer's first run stopped while the simulated phone is being
    // made: no half-made phone is left in place for later runs to use.
    let mut first = Command::new(env!("CARGO_BIN_EXE_ibackup"))
        .env("IBACKUP_SIMULATED_DIR", &phone)
        .args(["--simulated", "devices"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let t0 = std::time::Instant::now();
    let being_made = || {
        [&part, &phone]
            .iter()
            .any(|p| std::fs::read_dir(p.join("fs")).is_ok_and(|mut d| d.next().is_some()))
    };
    while !being_made() {
        assert!(
            t0.elapsed().as_secs() < 60,
            "the phone was never being made"
        );
        assert!(
            first.try_wait().unwrap().is_none(),
            "made before it could be stopped"
        );
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    first.kill().unwrap();
    first.wait().unwrap();
    assert!(
        !phone.join("device.toml").exists(),
        "a half-made phone is never in place"
    );
    let o = run({
        let mut c = Command::new(env!("CARGO_BIN_EXE_ibackup"));
        c.env("IBACKUP_SIMULATED_DIR", tmp.path().join("phone"))
            .args(["--simulated", "--json", "full"])
            .arg(tmp.path().join("b"));
        std::fs::create_dir_all(tmp.path().join("b")).unwrap();
        c
    });
    assert_ok(&o, "ibackup --simulated full");
    let last = String::from_utf8_lossy(&o.stdout)
        .lines()
        .last()
        .unwrap_or("")
        .to_string();
    let v: serde_json::Value =
        serde_json::from_str(&last).expect("the last line is the JSON result");
    assert_eq!(v["ok"], true);
    assert!(v["files"].as_u64().unwrap() > 2500);
    assert!(!part.exists(), "what the stopped run left is cleared");

    // Where no phone can be made (here below a file; a full or shared
    // /tmp alike): a setup error naming the folder and the way out, not
    // "an unexpected answer from the device".
    let blocked = tmp.path().join("a-file");
    std::fs::write(&blocked, b"").unwrap();
    let o = run({
        let mut c = Command::new(env!("CARGO_BIN_EXE_ibackup"));
        c.env("IBACKUP_SIMULATED_DIR", blocked.join("phone"))
            .args(["--simulated", "devices"]);
        c
    });
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(
        text(&o).contains("Cannot make the simulated iPhone in")
            && text(&o).contains("IBACKUP_SIMULATED_DIR"),
        "{}",
        text(&o)
    );
}

#[test]
fn verify_passes_a_sound_backup_and_names_damage() {
    let host = SimHost::start(&[(Profile::Small, 161)], |_, _| {});
    let a = &host.udids[0];
    let dir = host.path("backups");
    assert_ok(
        &run({
            let mut c = ibackup(&host);
            c.args(["-u", a, "full"]).arg(&dir);
            c
        }),
        "backup",
    );
    let o = run({
        let mut c = ibackup(&host);
        c.arg("verify").arg(&dir);
        c
    });
    assert_ok(&o, "verify a sound backup");
    assert!(text(&o).contains("The backup is sound"), "{}", text(&o));
    // Damage one content file; verify names it and exits 9.
    let sms = ibackup_store::paths::file_id("HomeDomain", "Library/SMS/sms.db");
    std::fs::write(dir.join(a).join(&sms[..2]).join(&sms), b"truncated").unwrap();
    let o = run({
        let mut c = ibackup(&host);
        c.arg("verify").arg(&dir);
        c
    });
    assert_eq!(o.status.code(), Some(9), "{}", text(&o));
    assert!(
        text(&o).contains("HomeDomain-Library/SMS/sms.db"),
        "{}",
        text(&o)
    );
}

/// The backup folder's content file of the first file row whose
/// `Domain/path` starts with `prefix`: (name, path).
fn content_file(backup: &Path, prefix: &str) -> (String, std::path::PathBuf) {
    let db = ibackup_store::manifest_db::ManifestDb::open(&backup.join("Manifest.db")).unwrap();
    let mut hit = None;
    db.for_each(|r| {
        let name = format!("{}/{}", r.domain, r.relative_path);
        if hit.is_none() && r.flags == 1 && r.file.size > 64 && name.starts_with(prefix) {
            hit = Some((
                format!("{}-{}", r.domain, r.relative_path),
                backup.join(&r.file_id[..2]).join(&r.file_id),
            ));
        }
        Ok(())
    })
    .unwrap();
    hit.expect("a file there")
}

#[test]
fn verify_reads_every_byte_and_the_next_backup_repairs_a_damaged_one() {
    let host = SimHost::start(&[(Profile::Small, 163)], |_, _| {});
    let a = &host.udids[0];
    let dir = host.path("backups");
    let ib = |args: &[&str]| {
        run({
            let mut c = ibackup(&host);
            c.args(["-u", a]).args(args).arg(&dir);
            c
        })
    };
    assert_ok(&ib(&["full"]), "backup");
    let o = ib(&["verify"]);
    assert_ok(&o, "verify");
    assert!(
        text(&o).contains("content of 2"),
        "every file read: {}",
        text(&o)
    );

    // Four bytes of a photo overwritten, its size unchanged: the format has
    // no digest for it, ibackup's record has.
    let (photo, path) = content_file(&dir.join(a), "CameraRollDomain/Media/DCIM");
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[40..44].copy_from_slice(b"\0\0\0\0");
    // A new inode: older snapshots share the old one.
    std::fs::remove_file(&path).unwrap();
    std::fs::write(&path, &bytes).unwrap();
    let o = ib(&["verify"]);
    assert_eq!(o.status.code(), Some(9), "{}", text(&o));
    assert!(
        text(&o).contains(&format!("damaged: {photo}")),
        "{}",
        text(&o)
    );
    assert_ok(&ib(&["verify", "--quick"]), "a quick check sees sizes only");

    // The nightly backup does not carry on from it: with --check-content
    // it reads everything, finds the photo, and makes a full backup.
    let o = ib(&["backup", "--check-content"]);
    assert_ok(&o, "backup over a damaged photo");
    assert!(
        text(&o).contains("Full backup") && text(&o).contains("not whole"),
        "{}",
        text(&o)
    );
    assert_ok(&ib(&["verify"]), "verify after the repair");

    // A content file deleted: found by the cheap check every run does.
    let (gone, path) = content_file(&dir.join(a), "HomeDomain/Library");
    std::fs::remove_file(&path).unwrap();
    let o = ib(&["--json", "backup"]);
    assert_ok(&o, "backup over a missing file");
    let result = text(&o)
        .lines()
        .find(|l| l.contains("\"event\":\"result\""))
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .expect("a result line");
    assert_eq!(result["full"], true, "{result}");
    assert!(
        result["repaired"].as_str().unwrap().contains(&gone),
        "{result}"
    );
    assert_ok(&ib(&["verify"]), "verify after the second repair");
    let o = ib(&["backup"]);
    assert!(
        text(&o).contains("Incremental backup"),
        "whole again: {}",
        text(&o)
    );
}

#[cfg(unix)]
#[test]
fn backups_the_history_and_the_log_are_private() {
    use std::os::unix::fs::PermissionsExt;
    let host = SimHost::start(&[(Profile::Small, 165)], |_, _| {});
    let a = &host.udids[0];
    let dir = host.path("backups");
    let log = host.root.path().join("ibackup.log");
    let pw = host.root.path().join("pw");
    std::fs::write(&pw, "secret\n").unwrap();
    std::fs::set_permissions(&pw, std::fs::Permissions::from_mode(0o644)).unwrap();
    let o = run({
        let mut c = ibackup(&host);
        c.args(["-u", a, "--log"]).arg(&log).arg("full").arg(&dir);
        c
    });
    assert_ok(&o, "backup");
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&dir.join(a)), 0o700, "DIR/<UDID>");
    assert_eq!(mode(&dir.join(".ibackup")), 0o700, "the history");
    assert_eq!(mode(&log), 0o600, "the log");
    let o = run({
        let mut c = ibackup(&host);
        c.args(["verify", "--password-file"]).arg(&pw).arg(&dir);
        c
    });
    assert_ok(&o, "verify");
    assert!(
        text(&o).contains("can be read by other users"),
        "{}",
        text(&o)
    );
}

#[test]
fn info_validate_and_unpair() {
    let host = SimHost::start(&[(Profile::Empty, 171)], |_, c| {
        c.backup_password = Some("pw".into());
        // A real device derives with 10,000,000 rounds; not needed here.
        c.backup_kdf_iterations = 1000;
    });
    let a = &host.udids[0];
    let o = run({
        let mut c = ibackup(&host);
        c.args(["-u", a, "--json", "info"]);
        c
    });
    assert_ok(&o, "info");
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("one JSON object");
    assert_eq!(v["udid"], a.as_str());
    assert_eq!(v["ios"], "17.5.1");
    assert_eq!(v["backup_encrypted"], true);
    assert_ok(
        &run({
            let mut c = ibackup(&host);
            c.args(["-u", a, "validate"]);
            c
        }),
        "validate after info paired",
    );
    assert_ok(
        &run({
            let mut c = ibackup(&host);
            c.args(["-u", a, "unpair"]);
            c
        }),
        "unpair",
    );
    let o = run({
        let mut c = ibackup(&host);
        c.args(["-u", a, "validate"]);
        c
    });
    assert_eq!(
        o.status.code(),
        Some(4),
        "not trusted after unpair: {}",
        text(&o)
    );
    assert!(text(&o).contains("Run `ibackup pair`"), "{}", text(&o));
    assert_eq!(
        std::fs::read_dir(host.devices[0].join("state/trusted_hosts"))
            .unwrap()
            .count(),
        0,
        "the device forgot us"
    );
}

#[test]
fn a_killed_ibackup_leaves_the_last_backup_intact() {
    let host = SimHost::start(&[(Profile::Small, 181)], |_, _| {});
    let a = &host.udids[0];
    let dir = host.path("backups");
    assert_ok(
        &run({
            let mut c = ibackup(&host);
            c.args(["-u", a, "full"]).arg(&dir);
            c
        }),
        "first backup",
    );
    let before = snapshot(&dir.join(a));
    // A slow device, so the kill lands while files are arriving.
    edit_device(&host.devices[0], |c| c.fault_slow_file_ms = Some(2));
    let mut c = ibackup(&host);
    c.args(["-u", a, "full"]).arg(&dir);
    let mut child = started_receiving(c, &dir, a);
    child.kill().unwrap();
    child.wait().unwrap();
    assert_eq!(
        snapshot(&dir.join(a)),
        before,
        "the committed backup is byte for byte unchanged"
    );
    edit_device(&host.devices[0], |c| c.fault_slow_file_ms = None);
    assert_ok(
        &run({
            let mut c = ibackup(&host);
            c.args(["-u", a, "backup"]).arg(&dir);
            c
        }),
        "next run, no clean-up",
    );
    assert_same_tree(
        &backup_tree(&dir.join(a)),
        &device_tree(&host.devices[0].join("fs"), &PLAIN_SKIP),
        "after a killed run",
    );
}

/// Start `c` and wait until the staging folder of `udid` under `dir` fills
/// (the backup is receiving files).
fn started_receiving(mut c: Command, dir: &Path, udid: &str) -> std::process::Child {
    let mut child = c
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let staging = dir.join(".ibackup/staging").join(udid);
    let start = std::time::Instant::now();
    while std::fs::read_dir(&staging).map(|d| d.count()).unwrap_or(0) < 20 {
        assert!(
            start.elapsed().as_secs() < 60,
            "the backup never started receiving"
        );
        assert!(
            child.try_wait().unwrap().is_none(),
            "the backup ended before it could be stopped"
        );
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    child
}

#[cfg(unix)]
fn signal(child: &std::process::Child, sig: i32) {
    // SAFETY: kill(2) on our own child's pid, which it has not reaped.
    assert_eq!(unsafe { libc::kill(child.id() as i32, sig) }, 0);
}

#[cfg(unix)]
#[test]
fn ctrl_c_or_a_stop_signal_ends_a_backup_cleanly_with_a_report() {
    let host = SimHost::start(&[(Profile::Small, 183)], |_, _| {});
    let a = &host.udids[0];
    let dir = host.path("backups");
    let log = host.root.path().join("ibackup.log");
    assert_ok(
        &run({
            let mut c = ibackup(&host);
            c.args(["-u", a, "full"]).arg(&dir);
            c
        }),
        "first backup",
    );
    let before = snapshot(&dir.join(a));
    edit_device(&host.devices[0], |c| c.fault_slow_file_ms = Some(2));
    let staging = dir.join(".ibackup/staging").join(a);
    // Ctrl-C at a terminal; then SIGTERM (systemctl stop), with --json.
    for (sig, json) in [(libc::SIGINT, false), (libc::SIGTERM, true)] {
        let mut c = ibackup(&host);
        c.arg("--log").arg(&log);
        if json {
            c.arg("--json");
        }
        c.args(["-u", a, "full"]).arg(&dir);
        let child = started_receiving(c, &dir, a);
        signal(&child, sig);
        let o = child.wait_with_output().unwrap();
        let said = text(&o);
        assert_eq!(o.status.code(), Some(130), "signal {sig}: {said}");
        assert!(
            said.contains("Interrupted by Ctrl-C or a stop signal")
                && said.contains("the last backup is intact"),
            "{said}"
        );
        assert!(
            !staging.exists(),
            "signal {sig}: what this run staged is gone, not left for the next run"
        );
        assert_eq!(
            snapshot(&dir.join(a)),
            before,
            "signal {sig}: the committed backup is byte for byte unchanged"
        );
        if json {
            let last = String::from_utf8_lossy(&o.stdout)
                .lines()
                .last()
                .map(str::to_string)
                .unwrap_or_default();
            let v: serde_json::Value = serde_json::from_str(&last).expect(&last);
            assert_eq!(v["event"], "result");
            assert_eq!(v["exit_code"], 130);
        }
    }
    let logged = std::fs::read_to_string(&log).unwrap();
    assert_eq!(
        logged
            .matches(&format!("full {a} interrupted (exit 130)"))
            .count(),
        2,
        "{logged}"
    );
    // A watcher stopped mid-backup: the backup is dropped the same way,
    // and the watcher's end is a normal one (exit 0), as a service's is.
    let fresh = host.path("watched");
    let mut c = ibackup(&host);
    c.arg("--log").arg(&log).arg("watch").arg(&fresh);
    let child = started_receiving(c, &fresh, a);
    signal(&child, libc::SIGTERM);
    let o = child.wait_with_output().unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let logged = std::fs::read_to_string(&log).unwrap();
    assert!(
        logged.contains(&format!("{a}: backup interrupted (exit 130)"))
            && logged.contains("watch stopped"),
        "{logged}"
    );
    assert!(!fresh.join(".ibackup/staging").join(a).exists());
    assert!(!fresh.join(a).exists(), "nothing half-made is committed");
    let o = run({
        let mut c = ibackup(&host);
        c.args(["-u", a, "info", "--dir"]).arg(&fresh);
        c
    });
    let said = String::from_utf8_lossy(&o.stdout);
    assert!(
        said.contains("Last backup:       none")
            && said.contains("Last attempt:")
            && said.contains("(exit 130): Interrupted"),
        "the watcher's try is on record: {said}"
    );
    edit_device(&host.devices[0], |c| c.fault_slow_file_ms = None);
    assert_ok(
        &run({
            let mut c = ibackup(&host);
            c.args(["-u", a, "backup"]).arg(&dir);
            c
        }),
        "next run",
    );
    assert_same_tree(
        &backup_tree(&dir.join(a)),
        &device_tree(&host.devices[0].join("fs"), &PLAIN_SKIP),
        "after interrupted runs",
    );
}

/// A USB drive formatted exFAT (shared with a Mac or a PC): no links of
/// either kind, so continuing a backup copies it and every snapshot takes
/// its full size. The user is told; a copy that cannot fit is refused
/// before it starts, as a full disk with the space needed, leaving nothing
/// behind; pruning makes room.
#[cfg(unix)]
#[test]
fn an_exfat_disk_works_says_what_it_costs_and_refuses_a_copy_that_cannot_fit() {
    let host = SimHost::start(&[(Profile::Small, 193)], |_, _| {});
    let a = &host.udids[0];
    let Some(disk) = ExfatDisk::mount(&host.root.path().join("exfat"), 512) else {
        return;
    };
    let dir = disk.path.join("backups");
    std::fs::create_dir_all(&dir).unwrap();
    let backup = |how: &str| {
        run({
            let mut c = ibackup(&host);
            c.args(["-u", a, how]).arg(&dir);
            c
        })
    };
    let o = backup("full");
    assert_ok(&o, "a full backup onto exFAT");
    assert!(
        text(&o).contains("this disk has no hard links"),
        "{}",
        text(&o)
    );
    assert_ok(&backup("backup"), "an incremental one, a copy of the first");
    let free = || fs_free(&disk.path);
    let (before, free_before) = (snapshot(&dir.join(a)), free());
    let o = backup("backup");
    let t = text(&o);
    assert_eq!(o.status.code(), Some(7), "{t}");
    assert!(
        t.contains("disk is full") && t.contains("Free at least") && t.contains("ibackup prune"),
        "{t}"
    );
    assert_eq!(snapshot(&dir.join(a)), before, "the last backup is intact");
    assert!(!dir.join(".ibackup/staging").join(a).exists());
    assert!(
        free() + (1 << 20) >= free_before,
        "nothing was left taking space: {} then {}",
        free_before,
        free()
    );
    let snaps = run({
        let mut c = ibackup(&host);
        c.args(["snapshots"]).arg(&dir);
        c
    });
    assert_eq!(
        text(&snaps).matches("complete").count(),
        2,
        "{}",
        text(&snaps)
    );
    assert_ok(
        &run({
            let mut c = ibackup(&host);
            c.args(["prune", "--keep-last", "1"]).arg(&dir);
            c
        }),
        "prune",
    );
    assert_ok(&backup("backup"), "room again after pruning");
    assert_same_tree(
        &backup_tree(&dir.join(a)),
        &device_tree(&host.devices[0].join("fs"), &PLAIN_SKIP),
        "the backup on exFAT",
    );
}

/// Bytes free on the disk holding `p`.
#[cfg(unix)]
fn fs_free(p: &Path) -> u64 {
    let o = Command::new("df")
        .args(["--output=avail", "-B1"])
        .arg(p)
        .output()
        .unwrap();
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .nth(1)
        .and_then(|l| l.trim().parse().ok())
        .expect("df's answer")
}

/// The backup disk unmounted mid-backup (a USB drive pulled, and the
/// desktop's automounter lazily unmounting it; `umount -l`): the folder's
/// path now leads to the empty mount point on the system disk. The backup
/// must stop there, saying so, and make nothing on the system disk:
/// before, each file's folders were made again along the path, and a
/// "complete" backup missing every file received before was committed
/// onto the wrong disk.
#[cfg(unix)]
#[test]
fn a_backup_disk_unmounted_mid_backup_stops_it_and_nothing_lands_on_the_system_disk() {
    let host = SimHost::start(&[(Profile::Small, 197)], |_, _| {});
    let a = &host.udids[0];
    let mount_point = host.root.path().join("usb-drive");
    let Some(_disk) = SmallDisk::mount(&mount_point, 400) else {
        return;
    };
    let dir = mount_point.join("backups");
    std::fs::create_dir_all(&dir).unwrap();
    assert_ok(
        &run({
            let mut c = ibackup(&host);
            c.args(["-u", a, "full"]).arg(&dir);
            c
        }),
        "first backup",
    );
    edit_device(&host.devices[0], |c| c.fault_slow_file_ms = Some(2));
    let mut c = ibackup(&host);
    c.args(["-u", a, "full"]).arg(&dir);
    let child = started_receiving(c, &dir, a);
    let ok = Command::new("umount")
        .arg("-l")
        .arg(&mount_point)
        .status()
        .unwrap();
    assert!(ok.success());
    let o = child.wait_with_output().unwrap();
    let t = text(&o);
    assert_eq!(o.status.code(), Some(9), "{t}");
    assert!(
        t.contains("The backup disk went away during the backup"),
        "{t}"
    );
    let left: Vec<_> = std::fs::read_dir(&mount_point)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert!(left.is_empty(), "made on the system disk: {left:?}");
}

/// `ibackup backup ~/MobileSync/Backup/<UDID>`, one device's backup folder
/// instead of the folder holding it, is an easy slip (in a cron line it
/// repeats every night): it made a second, full backup nested inside the
/// first. Refused before the device is touched, naming the folder to give.
#[test]
fn a_backup_folder_given_as_dir_is_refused_with_the_folder_to_give() {
    let host = SimHost::start(&[(Profile::Empty, 199)], |_, _| {});
    let a = &host.udids[0];
    let dir = host.path("backups");
    assert_ok(
        &run({
            let mut c = ibackup(&host);
            c.args(["-u", a, "full"]).arg(&dir);
            c
        }),
        "backup",
    );
    let own = dir.join(a);
    let before: Vec<_> = std::fs::read_dir(&own)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    for cmd in [&["backup"][..], &["full"], &["watch"], &["restore"]] {
        let o = run({
            let mut c = ibackup(&host);
            c.args(["-u", a]).args(cmd).arg(&own);
            c
        });
        let t = text(&o);
        assert_eq!(o.status.code(), Some(2), "{cmd:?}: {t}");
        assert!(
            t.contains("is one device's backup folder (it holds Manifest.db)")
                && t.contains(&format!(
                    "give the folder that holds the backups: {}",
                    dir.display()
                )),
            "{cmd:?}: {t}"
        );
    }
    let after: Vec<_> = std::fs::read_dir(&own)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(before, after, "nothing was made inside it");
}

/// Output piped into a reader that goes away (`ibackup snapshots DIR |
/// head -1`, a monitor that died): a listing ends as Unix tools do (exit
/// 141) instead of panicking; a backup carries on without its progress
/// lines and is committed.
#[cfg(unix)]
#[test]
fn a_closed_standard_output_ends_a_listing_quietly_and_not_a_backup() {
    let host = SimHost::start(&[(Profile::Empty, 201)], |_, _| {});
    let a = &host.udids[0];
    let lib = host.devices[0].join("fs/HomeDomain/Library");
    std::fs::create_dir_all(&lib).unwrap();
    std::fs::write(lib.join("a.txt"), b"a").unwrap();
    let dir = host.path("backups");
    let closed = |args: &[&str]| {
        // The reader is gone before the child starts, so its first line
        // meets a closed pipe however the two are scheduled.
        let (reader, writer) = std::io::pipe().unwrap();
        drop(reader);
        let mut c = ibackup(&host);
        c.args(args)
            .arg(&dir)
            .stdout(writer)
            .stderr(std::process::Stdio::piped());
        c.spawn().unwrap().wait_with_output().unwrap()
    };
    let o = closed(&["-u", a, "--json", "full"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(dir.join(a).join("Manifest.db").is_file(), "committed");
    for listing in ["snapshots", "ls"] {
        let o = closed(&[listing]);
        let t = text(&o);
        assert_eq!(o.status.code(), Some(141), "{listing}: {t}");
        assert!(!t.contains("panicked"), "{listing}: {t}");
    }
}

/// A file larger than the backup disk can hold (a 4K video on a FAT32
/// stick: 4 GiB a file) fails the same way every night: the backup stops
/// at it and says what to do, not "the device refused". The disk's limit
/// is played by RLIMIT_FSIZE (with SIGXFSZ ignored, as a filesystem's
/// EFBIG comes without a signal).
#[cfg(unix)]
#[test]
fn a_file_too_large_for_the_backup_disk_stops_the_backup_and_says_why() {
    let host = SimHost::start(&[(Profile::Empty, 203)], |_, _| {});
    let a = &host.udids[0];
    let media = host.devices[0].join("fs/CameraRollDomain/Media/DCIM/100APPLE");
    std::fs::create_dir_all(&media).unwrap();
    std::fs::write(media.join("IMG_0001.MOV"), vec![5u8; 12 << 20]).unwrap();
    let dir = host.path("backups");
    let mut c = ibackup(&host);
    c.args(["-u", a, "full"]).arg(&dir);
    limit_file_size(&mut c, 8 << 20);
    let o = run(c);
    let t = text(&o);
    assert_eq!(o.status.code(), Some(9), "{t}");
    assert!(
        t.contains("cannot hold a file larger than") && t.contains("FAT32"),
        "{t}"
    );
    assert!(!dir.join(a).exists(), "nothing committed");
    assert!(!dir.join(".ibackup/staging").join(a).exists());
}

#[test]
fn a_full_host_disk_is_reported_with_the_space_needed() {
    let host = SimHost::start(&[(Profile::Empty, 191)], |_, _| {});
    let a = &host.udids[0];
    let fs = host.devices[0].join("fs/HomeDomain/Library");
    std::fs::create_dir_all(&fs).unwrap();
    std::fs::write(fs.join("small.bin"), vec![7u8; 2_000_000]).unwrap();
    let Some(disk) = SmallDisk::mount(&host.root.path().join("small-disk"), 20) else {
        return;
    };
    let dir = disk.0.clone();
    assert_ok(
        &run({
            let mut c = ibackup(&host);
            c.args(["-u", a, "full"]).arg(&dir);
            c
        }),
        "a backup that fits",
    );
    let before = snapshot(&dir.join(a));
    std::fs::write(fs.join("big.bin"), vec![9u8; 40_000_000]).unwrap();
    let o = run({
        let mut c = ibackup(&host);
        c.args(["-u", a, "backup"]).arg(&dir);
        c
    });
    assert_eq!(o.status.code(), Some(7), "{}", text(&o));
    let t = text(&o);
    assert!(
        t.contains("disk is full") && t.contains("Free at least") && t.contains("MB"),
        "{t}"
    );
    // Enough: the 40 MB file did not fit in the 18 MB left, so at least the
    // 22 MB it lacked, not the last write's few bytes.
    let mb: f64 = t
        .split("Free at least ")
        .nth(1)
        .and_then(|r| r.split(' ').next())
        .and_then(|n| n.parse().ok())
        .expect("a figure");
    assert!(mb >= 20.0, "{t}");
    assert!(t.contains("the last backup is intact"), "{t}");
    assert_eq!(snapshot(&dir.join(a)), before, "the last backup is intact");
    std::fs::remove_file(fs.join("big.bin")).unwrap();
    assert_ok(
        &run({
            let mut c = ibackup(&host);
            c.args(["-u", a, "backup"]).arg(&dir);
            c
        }),
        "fits again",
    );

    // The disk remounted read-only (as Linux does after disk errors): the
    // next backup names the folder and what it must be; the backups on it
    // can still be read.
    let ro = Command::new("mount")
        .args(["-o", "remount,ro"])
        .arg(&dir)
        .status()
        .unwrap();
    assert!(ro.success());
    let before = snapshot(&dir.join(a));
    let o = run({
        let mut c = ibackup(&host);
        c.args(["-u", a, "backup"]).arg(&dir);
        c
    });
    assert_eq!(o.status.code(), Some(9), "{}", text(&o));
    assert!(
        text(&o).contains(&format!("{} cannot be written to", dir.display()))
            && text(&o).contains("mounted read-write"),
        "{}",
        text(&o)
    );
    assert_eq!(snapshot(&dir.join(a)), before);
    assert_ok(
        &run({
            let mut c = ibackup(&host);
            c.arg("verify").arg(&dir);
            c
        }),
        "verify on a read-only disk",
    );
}

#[test]
fn wifi_devices_are_listed_marked_and_used_only_with_network() {
    let host = SimHost::start(&[(Profile::Empty, 211)], |_, c| {
        c.connection = "Network".into()
    });
    let a = &host.udids[0];
    // Wi-Fi devices are usbmuxd's to find: direct USB sees cables only.
    let ibackup = |host: &SimHost| {
        let mut c = ibackup(host);
        c.env("IBACKUP_TRANSPORT", "usbmuxd");
        c
    };
    let o = run({
        let mut c = ibackup(&host);
        c.arg("devices");
        c
    });
    assert_ok(&o, "devices");
    assert!(text(&o).contains(&format!("{a}\tWi-Fi")), "{}", text(&o));
    // Each device by its name and model too, not only its UDID.
    assert!(
        text(&o).contains("\tSimulated iPhone 211\tiPhone"),
        "{}",
        text(&o)
    );
    let o = run({
        let mut c = ibackup(&host);
        c.arg("info");
        c
    });
    assert_eq!(
        o.status.code(),
        Some(3),
        "a Wi-Fi device is not used without --network: {}",
        text(&o)
    );
    let o = run({
        let mut c = ibackup(&host);
        c.args(["--network", "info"]);
        c
    });
    assert_ok(&o, "info over Wi-Fi");
}

#[test]
fn a_refused_backup_shows_the_device_error() {
    let host = SimHost::start(&[(Profile::Empty, 221)], |_, c| {
        c.fault_refuse_backup = Some(17)
    });
    let a = &host.udids[0];
    let o = run({
        let mut c = ibackup(&host);
        c.args(["-u", a, "--json", "full"]).arg(host.path("b"));
        c
    });
    assert_eq!(o.status.code(), Some(10), "{}", text(&o));
    let t = text(&o);
    assert!(
        t.contains("error 17") && t.contains("refused by the device"),
        "{t}"
    );
    assert!(
        t.contains(r#""ok":false"#) && t.contains(r#""exit_code":10"#),
        "JSON result line: {t}"
    );
}
