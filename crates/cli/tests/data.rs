//! Encryption, reading (`ls`, `extract`), `backup --only` and `restore`,
//! end to end against the simulator; iphone_backup_decrypt and
//! idevicebackup2 judge what we write.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use ibackup_sim::populate::Profile;
use ibackup_suite::*;

fn ibackup(host: &SimHost) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_ibackup"));
    host.point(&mut c);
    c.env_remove("IBACKUP_PASSWORD");
    c.env_remove("IBACKUP_NEW_PASSWORD");
    c
}

fn ib(host: &SimHost, args: &[&str], env: &[(&str, &str)]) -> std::process::Output {
    let mut c = ibackup(host);
    c.args(args);
    for (k, v) in env {
        c.env(k, v);
    }
    run(c)
}

fn p(path: &Path) -> &str {
    path.to_str().unwrap()
}

/// Every file under a folder with its bytes' hash.
fn hashes(dir: &Path) -> Vec<(String, String)> {
    device_tree(dir, &[])
        .into_iter()
        .filter_map(|(k, n)| match n {
            Node::File { sha1, .. } => Some((k, sha1)),
            _ => None,
        })
        .collect()
}

fn only(tree: &BTreeMap<String, Node>, keep: impl Fn(&str) -> bool) -> BTreeMap<String, Node> {
    tree.iter()
        .filter(|(k, _)| keep(k))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

fn code(o: &std::process::Output) -> Option<i32> {
    o.status.code()
}

#[test]
fn encryption_on_backup_extract_change_and_off() {
    let host = SimHost::start(&[(Profile::Small, 201)], |_, c| {
        c.backup_kdf_iterations = 10_000
    });
    let a = host.udids[0].as_str();
    let dir = host.path("backups");
    let device_fs = host.devices[0].join("fs");

    let o = ib(
        &host,
        &["-u", a, "encryption", "off"],
        &[("IBACKUP_PASSWORD", "x")],
    );
    assert_eq!(code(&o), Some(2), "off while off: {}", text(&o));
    assert!(text(&o).contains("encryption is off"), "{}", text(&o));
    // Without a password at hand either: the device's state is said, no
    // password is asked for.
    for action in ["off", "change"] {
        let o = ib(&host, &["-u", a, "encryption", action], &[]);
        assert_eq!(code(&o), Some(2), "{action} while off: {}", text(&o));
        assert!(
            text(&o).contains("encryption is off") && !text(&o).contains("is encrypted"),
            "{}",
            text(&o)
        );
    }
    let o = ib(&host, &["-u", a, "encryption", "on"], &[]);
    assert_eq!(
        code(&o),
        Some(2),
        "no password and no terminal: {}",
        text(&o)
    );
    assert!(text(&o).contains("IBACKUP_NEW_PASSWORD"), "{}", text(&o));

    let o = ib(
        &host,
        &["-u", a, "encryption", "on"],
        &[("IBACKUP_NEW_PASSWORD", "s3cret pw")],
    );
    assert_ok(&o, "encryption on");
    let o = ib(&host, &["-u", a, "--json", "info"], &[]);
    assert_ok(&o, "info");
    assert!(
        text(&o).contains("\"backup_encrypted\":true"),
        "{}",
        text(&o)
    );
    let o = ib(
        &host,
        &["-u", a, "encryption", "on"],
        &[("IBACKUP_NEW_PASSWORD", "y")],
    );
    assert_eq!(code(&o), Some(2), "on while on: {}", text(&o));

    let o = ib(&host, &["-u", a, "full", p(&dir)], &[]);
    assert_ok(&o, "encrypted full backup");
    let backup = dir.join(a);
    assert!(
        !std::fs::read(backup.join("Manifest.db"))
            .unwrap()
            .starts_with(b"SQLite format 3"),
        "the device encrypted the index"
    );

    // iphone_backup_decrypt reads every file back, Health and Keychain included.
    let device_files = hashes(&device_fs);
    assert!(device_files
        .iter()
        .any(|(k, _)| k.starts_with("HealthDomain/")));
    if let Some(py) = python_referee("iphone_backup_decrypt") {
        let script =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/support/ibd_extract.py");
        let out = host.path("ibd");
        let mut c = Command::new(&py.0);
        c.arg(script).arg(&backup).arg("s3cret pw").arg(&out);
        assert_ok(&run(c), "iphone_backup_decrypt");
        assert_eq!(
            hashes(&out),
            device_files,
            "iphone_backup_decrypt vs device"
        );
    }

    // ibackup extract gives the device's tree: files, folders, links, times.
    let out = host.root.path().join("extracted");
    let o = ib(
        &host,
        &["extract", p(&dir), "--to", p(&out)],
        &[("IBACKUP_PASSWORD", "s3cret pw")],
    );
    assert_ok(&o, "ibackup extract");
    assert_same_tree(
        &device_tree(&out, &[]),
        &device_tree(&device_fs, &[]),
        "extract vs device",
    );

    // A full disk under OUT is the disk's fault, not the backup's, though
    // the bytes that did not fit were being decrypted when it filled.
    if let Some(disk) = SmallDisk::mount(&host.root.path().join("small-disk"), 2) {
        let before = hashes(&backup);
        let to = disk.0.join("out");
        let o = ib(
            &host,
            &["extract", p(&dir), "--to", p(&to)],
            &[("IBACKUP_PASSWORD", "s3cret pw")],
        );
        assert_eq!(code(&o), Some(7), "{}", text(&o));
        assert!(
            text(&o).contains("The disk holding") && text(&o).contains("the backup is untouched"),
            "{}",
            text(&o)
        );
        assert!(
            !device_tree(&to, &[])
                .keys()
                .any(|k| k.ends_with(".ibackup-part")),
            "no partial file is left behind"
        );
        assert_eq!(hashes(&backup), before, "the backup is unchanged");
    }

    // A wrong password: its own exit code, a clear sentence, nothing written.
    let wrong = host.root.path().join("wrong");
    let o = ib(
        &host,
        &["extract", p(&dir), "--to", p(&wrong)],
        &[("IBACKUP_PASSWORD", "nope")],
    );
    assert_eq!(code(&o), Some(13), "{}", text(&o));
    assert!(text(&o).contains("Wrong backup password"), "{}", text(&o));
    assert!(!wrong.exists(), "nothing written on a wrong password");
    let o = ib(&host, &["ls", p(&dir)], &[]);
    assert_eq!(code(&o), Some(13), "no password given: {}", text(&o));
    assert!(text(&o).contains("IBACKUP_PASSWORD"), "{}", text(&o));

    let pwfile = host.root.path().join("pw.txt");
    std::fs::write(&pwfile, "s3cret pw\n").unwrap();
    let o = ib(
        &host,
        &[
            "ls",
            p(&dir),
            "--only",
            "health",
            "--password-file",
            p(&pwfile),
        ],
        &[],
    );
    assert_ok(&o, "ls --only health");
    let listed = String::from_utf8_lossy(&o.stdout).to_string();
    assert!(
        listed.contains("HealthDomain/Health/healthdb.sqlite"),
        "{listed}"
    );
    assert!(!listed.contains("CameraRollDomain"), "{listed}");

    // Change: a wrong old password is refused; later backups use the new one.
    let o = ib(
        &host,
        &["-u", a, "encryption", "change"],
        &[
            ("IBACKUP_PASSWORD", "nope"),
            ("IBACKUP_NEW_PASSWORD", "n3w"),
        ],
    );
    assert_eq!(code(&o), Some(13), "{}", text(&o));
    let o = ib(
        &host,
        &["-u", a, "encryption", "change"],
        &[
            ("IBACKUP_PASSWORD", "s3cret pw"),
            ("IBACKUP_NEW_PASSWORD", "n3w"),
        ],
    );
    assert_ok(&o, "encryption change");
    std::fs::write(
        device_fs.join("HomeDomain/Library/Preferences/changed.plist"),
        b"after change",
    )
    .unwrap();
    let o = ib(&host, &["-u", a, "backup", p(&dir)], &[]);
    assert_ok(&o, "backup after change");
    let o = ib(&host, &["verify", p(&dir)], &[("IBACKUP_PASSWORD", "n3w")]);
    assert_ok(&o, "verify with the new password");
    let o = ib(
        &host,
        &["verify", p(&dir)],
        &[("IBACKUP_PASSWORD", "s3cret pw")],
    );
    assert_eq!(
        code(&o),
        Some(13),
        "the old password no longer opens it: {}",
        text(&o)
    );
    let out2 = host.root.path().join("extracted2");
    let o = ib(
        &host,
        &[
            "extract",
            p(&dir),
            "--to",
            p(&out2),
            "--domain",
            "HomeDomain",
        ],
        &[("IBACKUP_PASSWORD", "n3w")],
    );
    assert_ok(&o, "extract after change");
    assert_eq!(
        std::fs::read(out2.join("HomeDomain/Library/Preferences/changed.plist")).unwrap(),
        b"after change"
    );

    // Off: the next backup is plain.
    let o = ib(
        &host,
        &["-u", a, "encryption", "off"],
        &[("IBACKUP_PASSWORD", "n3w")],
    );
    assert_ok(&o, "encryption off");
    let o = ib(&host, &["-u", a, "backup", p(&dir)], &[]);
    assert_ok(&o, "backup after off");
    // Asked for an incremental one, the device made a full backup (it
    // cannot continue an encrypted one plain): the summary says which.
    assert!(text(&o).contains("Full backup"), "{}", text(&o));
    assert!(std::fs::read(backup.join("Manifest.db"))
        .unwrap()
        .starts_with(b"SQLite format 3"));
    assert_same_tree(
        &backup_tree(&backup),
        &device_tree(&device_fs, &PLAIN_SKIP),
        "plain backup after off",
    );
}

#[test]
fn selective_and_whole_restores_to_other_devices() {
    let host = SimHost::start(
        &[
            (Profile::Small, 211),
            (Profile::Empty, 212),
            (Profile::Empty, 213),
            (Profile::Empty, 214),
        ],
        |_, _| {},
    );
    let (a, b, c, d) = (
        &host.udids[0],
        &host.udids[1],
        &host.udids[2],
        &host.udids[3],
    );
    let dir = host.path("backups");
    assert_ok(&ib(&host, &["-u", a, "full", p(&dir)], &[]), "backup of A");
    let before = hashes(&dir.join(a));
    let a_tree = device_tree(&host.devices[0].join("fs"), &PLAIN_SKIP);
    let b_fs = host.devices[1].join("fs");

    let o = ib(
        &host,
        &[
            "-u",
            b,
            "restore",
            "--source",
            a,
            "--only",
            "photos",
            "--no-reboot",
            p(&dir),
        ],
        &[],
    );
    assert_ok(&o, "restore --only photos");
    let photos = only(&a_tree, |k| k.starts_with("CameraRollDomain"));
    assert!(photos.len() > 10);
    assert_same_tree(
        &device_tree(&b_fs, &[]),
        &photos,
        "B holds exactly A's camera roll",
    );

    // A second selective restore adds contacts and leaves the photos alone.
    let o = ib(
        &host,
        &[
            "-u",
            b,
            "restore",
            "--source",
            a,
            "--only",
            "contacts",
            "--no-reboot",
            p(&dir),
        ],
        &[],
    );
    assert_ok(&o, "restore --only contacts");
    let want = only(&a_tree, |k| {
        k.starts_with("CameraRollDomain")
            || k.starts_with("HomeDomain/Library/AddressBook")
            || k == "HomeDomain"
            || k == "HomeDomain/Library"
    });
    assert_same_tree(
        &device_tree(&b_fs, &[]),
        &want,
        "B: photos kept, contacts added",
    );

    let o = ib(
        &host,
        &["-u", c, "restore", "--source", a, "--no-reboot", p(&dir)],
        &[],
    );
    assert_ok(&o, "whole restore");
    assert_same_tree(
        &device_tree(&host.devices[2].join("fs"), &[]),
        &a_tree,
        "C reproduces A",
    );

    // Refusals, each with its own sentence and code, changing nothing.
    let d_fs = host.devices[3].join("fs");
    edit_device(&host.devices[3], |c| c.find_my = true);
    let o = ib(&host, &["-u", d, "restore", "--source", a, p(&dir)], &[]);
    assert_eq!(code(&o), Some(14), "{}", text(&o));
    assert!(text(&o).contains("Find My is on"), "{}", text(&o));
    edit_device(&host.devices[3], |c| {
        c.find_my = false;
        c.free_capacity = 1_000_000;
    });
    let o = ib(&host, &["-u", d, "restore", "--source", a, p(&dir)], &[]);
    assert_eq!(code(&o), Some(15), "{}", text(&o));
    assert!(
        text(&o).contains("Not enough space on the device"),
        "{}",
        text(&o)
    );
    edit_device(&host.devices[3], |c| {
        c.free_capacity = 50_000_000_000;
        c.passcode_locked = true;
    });
    let o = ib(&host, &["-u", d, "restore", "--source", a, p(&dir)], &[]);
    assert_eq!(code(&o), Some(6), "{}", text(&o));
    assert!(
        device_tree(&d_fs, &[]).is_empty(),
        "refused restores change nothing"
    );
    let o = ib(
        &host,
        &[
            "-u",
            d,
            "restore",
            "--source",
            a,
            "--only",
            "fotos",
            p(&dir),
        ],
        &[],
    );
    assert_eq!(code(&o), Some(2), "{}", text(&o));
    assert!(
        text(&o).contains("nknown category \"fotos\""),
        "{}",
        text(&o)
    );

    // A damaged backup is refused before the device is touched.
    edit_device(&host.devices[3], |c| c.passcode_locked = false);
    let damaged = host.path("damaged");
    let o = Command::new("cp")
        .arg("-al")
        .arg(dir.join(a))
        .arg(&damaged)
        .output()
        .unwrap();
    assert!(o.status.success());
    let victim = walkdir::WalkDir::new(damaged.join(a))
        .into_iter()
        .flatten()
        .find(|e| e.file_type().is_file() && e.path().parent().unwrap() != damaged.join(a))
        .unwrap();
    std::fs::remove_file(victim.path()).unwrap();
    let o = ib(
        &host,
        &["-u", d, "restore", "--source", a, p(&damaged)],
        &[],
    );
    assert_eq!(code(&o), Some(9), "{}", text(&o));
    assert!(text(&o).contains("missing"), "{}", text(&o));
    assert!(device_tree(&d_fs, &[]).is_empty());

    // The cable pulled part way through a restore: its own sentence and
    // code, the device as it was, and the next run restores it whole.
    edit_device(&host.devices[3], |c| {
        c.fault_disconnect_after_files = Some(30)
    });
    let o = ib(
        &host,
        &["-u", d, "restore", "--source", a, "--no-reboot", p(&dir)],
        &[],
    );
    assert_eq!(code(&o), Some(8), "{}", text(&o));
    assert!(
        text(&o).contains("connection to the device was lost"),
        "{}",
        text(&o)
    );
    assert!(device_tree(&d_fs, &[]).is_empty(), "nothing swapped in");
    edit_device(&host.devices[3], |c| c.fault_disconnect_after_files = None);
    let o = ib(
        &host,
        &["-u", d, "restore", "--source", a, "--no-reboot", p(&dir)],
        &[],
    );
    assert_ok(&o, "restore after the cut");
    assert_same_tree(&device_tree(&d_fs, &[]), &a_tree, "D reproduces A");
    #[cfg(unix)]
    {
        // Ctrl-C while the files go over: its own sentence and code, and
        // the device as it was (the restore is swapped in only at the end).
        std::fs::remove_dir_all(&d_fs).unwrap();
        std::fs::create_dir_all(&d_fs).unwrap();
        edit_device(&host.devices[3], |c| c.fault_slow_file_ms = Some(5));
        let mut child = ibackup(&host)
            .args(["-u", d, "restore", "--source", a, "--no-reboot", p(&dir)])
            .stderr(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let mut said = String::new();
        let mut lines =
            std::io::BufRead::lines(std::io::BufReader::new(child.stderr.take().unwrap()));
        for line in lines.by_ref() {
            let line = line.unwrap();
            said += &line;
            said += "\n";
            if line.contains("sending the whole backup") {
                break;
            }
        }
        assert!(said.contains("sending the whole backup"), "{said}");
        // SAFETY: kill(2) on our own child, not yet reaped.
        assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGINT) }, 0);
        for line in lines {
            said += &line.unwrap();
            said += "\n";
        }
        assert_eq!(child.wait().unwrap().code(), Some(130), "{said}");
        assert!(
            said.contains("Interrupted by Ctrl-C") && said.contains("the restore did not finish"),
            "{said}"
        );
        assert!(
            device_tree(&d_fs, &[]).is_empty(),
            "an interrupted restore swaps nothing in"
        );
        edit_device(&host.devices[3], |c| c.fault_slow_file_ms = None);
    }

    assert_eq!(
        hashes(&dir.join(a)),
        before,
        "restores never modify the backup they read"
    );
}

#[test]
fn an_encrypted_backup_restores_selectively_with_its_password() {
    let host = SimHost::start(&[(Profile::Small, 221), (Profile::Empty, 222)], |i, c| {
        c.backup_kdf_iterations = 10_000;
        if i == 0 {
            c.backup_password = Some("pw".into());
        }
    });
    let (a, b) = (&host.udids[0], &host.udids[1]);
    let dir = host.path("backups");
    assert_ok(
        &ib(&host, &["-u", a, "full", p(&dir)], &[]),
        "encrypted backup",
    );
    let o = ib(
        &host,
        &[
            "-u",
            b,
            "restore",
            "--source",
            a,
            "--only",
            "messages",
            p(&dir),
        ],
        &[("IBACKUP_PASSWORD", "wrong")],
    );
    assert_eq!(code(&o), Some(13), "{}", text(&o));
    let o = ib(
        &host,
        &[
            "-u",
            b,
            "restore",
            "--source",
            a,
            "--only",
            "messages,health",
            p(&dir),
        ],
        &[("IBACKUP_PASSWORD", "pw")],
    );
    assert_ok(&o, "encrypted selective restore");
    let a_tree = device_tree(&host.devices[0].join("fs"), &[]);
    let want = only(&a_tree, |k| {
        k.starts_with("HomeDomain/Library/SMS")
            || k.starts_with("MediaDomain/Library/SMS")
            || k.starts_with("HealthDomain")
            || [
                "HomeDomain",
                "HomeDomain/Library",
                "MediaDomain",
                "MediaDomain/Library",
            ]
            .contains(&k)
    });
    assert!(want.keys().any(|k| k.ends_with("sms.db")));
    assert_same_tree(
        &device_tree(&host.devices[1].join("fs"), &[]),
        &want,
        "B holds A's messages and health",
    );

    // A wrong password with --only is found before the phone is received
    // (it is needed only to rewrite the index at the end), and the last
    // backup is left as it was.
    let index = std::fs::read(dir.join(a).join("Manifest.db")).unwrap();
    let o = ib(
        &host,
        &["-u", a, "backup", "--only", "photos", p(&dir)],
        &[("IBACKUP_PASSWORD", "wrong")],
    );
    assert_eq!(code(&o), Some(13), "{}", text(&o));
    assert!(
        text(&o).contains("before anything was received") && !text(&o).contains("receiving"),
        "{}",
        text(&o)
    );
    assert_eq!(
        std::fs::read(dir.join(a).join("Manifest.db")).unwrap(),
        index
    );
    // A sound encrypted backup verified without its password asks for it
    // (exit 13), rather than calling the backup damaged.
    let o = ib(&host, &["verify", p(&dir.join(a))], &[]);
    assert_eq!(code(&o), Some(13), "{}", text(&o));
}

#[test]
fn backup_only_keeps_the_chosen_categories_and_the_next_backup_is_full() {
    let host = SimHost::start(&[(Profile::Small, 231), (Profile::Empty, 232)], |_, _| {});
    let (a, b) = (&host.udids[0], &host.udids[1]);
    let dir = host.path("backups");
    let o = ib(
        &host,
        &["-u", a, "backup", "--only", "photos,voice-memos", p(&dir)],
        &[],
    );
    assert_ok(&o, "backup --only");
    let a_tree = device_tree(&host.devices[0].join("fs"), &PLAIN_SKIP);
    let want = only(&a_tree, |k| {
        k.starts_with("CameraRollDomain")
            || k.starts_with("MediaDomain/Media/Recordings")
            || k == "MediaDomain"
            || k == "MediaDomain/Media"
    });
    assert_same_tree(
        &backup_tree(&dir.join(a)),
        &want,
        "the stored backup holds only the chosen categories",
    );
    assert_ok(
        &ib(&host, &["verify", p(&dir)], &[]),
        "a filtered backup verifies",
    );

    // Still a Finder-format backup: libimobiledevice restores just those.
    if let Some(b2) = referee("idevicebackup2") {
        let o = run({
            let mut c = host.cmd(&b2);
            c.args(["-u", b, "-s", a, "restore", "--system", "--no-reboot"])
                .arg(&dir);
            c
        });
        assert_ok(&o, "idevicebackup2 restore of a filtered backup");
        assert_same_tree(
            &device_tree(&host.devices[1].join("fs"), &[]),
            &want,
            "B after restoring the filtered backup",
        );
    }

    let o = ib(&host, &["-u", a, "backup", p(&dir)], &[]);
    assert_ok(&o, "the next backup");
    assert!(
        text(&o).contains("Full backup"),
        "after a filtered one, a full backup: {}",
        text(&o)
    );
    assert_same_tree(&backup_tree(&dir.join(a)), &a_tree, "everything again");
    let o = ib(&host, &["-u", a, "backup", p(&dir)], &[]);
    assert!(text(&o).contains("Incremental backup"), "{}", text(&o));
}

#[test]
fn restoring_a_filtered_backup_whole_leaves_the_rest_of_the_target_alone() {
    let host = SimHost::start(&[(Profile::Small, 235), (Profile::Small, 236)], |_, _| {});
    let (a, b) = (&host.udids[0], &host.udids[1]);
    let dir = host.path("backups");
    let o = ib(
        &host,
        &["-u", a, "backup", "--only", "photos", p(&dir)],
        &[],
    );
    assert_ok(&o, "backup --only photos");
    let photos = only(&backup_tree(&dir.join(a)), |k| {
        k.starts_with("CameraRollDomain")
    });
    assert!(photos.len() > 10, "the backup holds photos");
    let files = photos
        .values()
        .filter(|n| matches!(n, Node::File { .. }))
        .count();
    assert!(
        text(&o).contains(&format!("kept {files} files")),
        "the summary says what was kept: {}",
        text(&o)
    );
    let o = ib(&host, &["--json", "snapshots", p(&dir)], &[]);
    let snap: serde_json::Value = serde_json::from_str(text(&o).lines().next().unwrap()).unwrap();
    assert_eq!(
        snap["files"], files,
        "snapshots counts what was kept: {snap}"
    );
    assert_eq!(snap["result"], "filtered");
    let before = device_tree(&host.devices[1].join("fs"), &[]);
    // No --only: the user asks for "the backup", which is only photos.
    let o = ib(
        &host,
        &["-u", b, "restore", "--source", a, "--no-reboot", p(&dir)],
        &[],
    );
    assert_ok(&o, "whole restore of a filtered backup");
    assert!(
        text(&o).contains("only part of") && text(&o).contains("--only photos"),
        "says it restores only what the backup holds: {}",
        text(&o)
    );
    let after = device_tree(&host.devices[1].join("fs"), &[]);
    for (k, v) in &before {
        if k.starts_with("CameraRollDomain") {
            continue;
        }
        assert_eq!(after.get(k), Some(v), "{k} on B was kept as it was");
    }
    for (k, v) in &photos {
        assert_eq!(after.get(k), Some(v), "{k} from A's backup is on B");
    }
    assert!(after.len() >= before.len(), "B lost nothing");
}

#[test]
fn extract_and_ls_select_by_category_and_refuse_bad_names() {
    let host = SimHost::start(&[(Profile::Small, 241)], |_, _| {});
    let a = &host.udids[0];
    let dir = host.path("backups");
    assert_ok(&ib(&host, &["-u", a, "full", p(&dir)], &[]), "backup");
    let out = host.root.path().join("msgs");
    let o = ib(
        &host,
        &["extract", p(&dir), "--to", p(&out), "--only", "messages"],
        &[],
    );
    assert_ok(&o, "extract --only messages");
    let device = device_tree(&host.devices[0].join("fs"), &PLAIN_SKIP);
    let want = only(&device, |k| {
        k.starts_with("HomeDomain/Library/SMS") || k.starts_with("MediaDomain/Library/SMS")
    });
    let got = only(&device_tree(&out, &[]), |k| {
        ![
            "HomeDomain",
            "HomeDomain/Library",
            "MediaDomain",
            "MediaDomain/Library",
        ]
        .contains(&k)
    });
    assert_same_tree(&got, &want, "extract --only messages");

    let o = ib(
        &host,
        &[
            "--json",
            "ls",
            p(&dir),
            "--only",
            "app:com.example.field-notes",
        ],
        &[],
    );
    assert_ok(&o, "ls --json --only app:");
    let rows: Vec<serde_json::Value> = String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(!rows.is_empty());
    assert!(rows.iter().all(|r| r["domain"]
        .as_str()
        .unwrap()
        .contains("com.example.field-notes")));
    let o = ib(&host, &["ls", p(&dir), "--only", "health"], &[]);
    assert_ok(&o, "health of a plain backup");
    assert!(
        text(&o).contains("only in encrypted backups"),
        "{}",
        text(&o)
    );

    // A content file gone from the backup: every other file comes out,
    // the missing one is named, and the exit code says the backup is not
    // whole.
    let backup = dir.join(a);
    let sub = std::fs::read_dir(&backup)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|d| d.is_dir() && d.file_name().unwrap().len() == 2)
        .unwrap();
    let victim = std::fs::read_dir(&sub)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    std::fs::remove_file(&victim).unwrap();
    let all = host.root.path().join("all");
    let o = ib(&host, &["--json", "extract", p(&dir), "--to", p(&all)], &[]);
    assert_eq!(code(&o), Some(9), "{}", text(&o));
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let report = lines.iter().find(|l| l["event"] == "extract").unwrap();
    let problems = report["problems"].as_array().unwrap();
    assert_eq!(problems.len(), 1, "{problems:?}");
    let victim_id = victim.file_name().unwrap().to_str().unwrap();
    assert!(
        problems[0].as_str().unwrap().contains(victim_id),
        "{problems:?}"
    );
    let extracted = device_tree(&all, &[])
        .values()
        .filter(|n| matches!(n, Node::File { .. }))
        .count();
    let listed = device_tree(&host.devices[0].join("fs"), &PLAIN_SKIP)
        .values()
        .filter(|n| matches!(n, Node::File { .. }))
        .count();
    assert_eq!(extracted + 1, listed, "all but the missing file");
    assert_eq!(report["files"], extracted as u64);
}

/// Extracting onto a USB drive formatted exFAT, as one shared with a Mac
/// or a PC is: it refuses `:` and `?` in names, folds case, and has no
/// symbolic links, on every system. Every file still comes out, each
/// change of name is said, and the exit is 0.
#[cfg(unix)]
#[test]
fn extract_onto_an_exfat_disk_keeps_every_file_and_says_what_it_renamed() {
    let host = SimHost::start(&[(Profile::Empty, 611)], |_, _| {});
    let a = &host.udids[0];
    let fs = host.devices[0].join("fs/HomeDomain/Library");
    std::fs::create_dir_all(fs.join("Logs")).unwrap();
    std::fs::write(fs.join("Logs/log 12:30:00.txt"), b"colons").unwrap();
    std::fs::write(fs.join("Logs/what?.txt"), b"question").unwrap();
    std::fs::write(fs.join("IMG.JPG"), b"upper").unwrap();
    std::fs::write(fs.join("img.jpg"), b"lower").unwrap();
    std::os::unix::fs::symlink("/var/mobile/Library/elsewhere", fs.join("link")).unwrap();
    let dir = host.path("backups");
    assert_ok(&ib(&host, &["-u", a, "full", p(&dir)], &[]), "backup");
    let Some(disk) = ExfatDisk::mount(&host.root.path().join("exfat"), 64) else {
        return;
    };
    let out = disk.path.join("out");
    let o = ib(&host, &["extract", p(&dir), "--to", p(&out)], &[]);
    assert_ok(&o, "extract onto exFAT");
    let t = text(&o);
    let lib = out.join("HomeDomain/Library");
    for (name, body) in [
        ("Logs/log 12_30_00.txt", &b"colons"[..]),
        ("Logs/what_.txt", b"question"),
        ("link", b"/var/mobile/Library/elsewhere"),
    ] {
        assert_eq!(std::fs::read(lib.join(name)).unwrap(), body, "{name}\n{t}");
    }
    // Case twins: both kept, one under a numbered name.
    let mut twins: Vec<Vec<u8>> = std::fs::read_dir(&lib)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x.eq_ignore_ascii_case("jpg")))
        .map(|p| std::fs::read(p).unwrap())
        .collect();
    twins.sort();
    assert_eq!(twins, [b"lower".to_vec(), b"upper".to_vec()], "{t}");
    for said in [
        "log 12:30:00.txt is extracted as HomeDomain/Library/Logs/log 12_30_00.txt",
        "what?.txt is extracted as HomeDomain/Library/Logs/what_.txt",
        "does not tell upper from lower case",
        "is a symbolic link to /var/mobile/Library/elsewhere",
    ] {
        assert!(t.contains(said), "{said:?} missing from:\n{t}");
    }
}

/// A replacement phone often comes with an older iOS than the backup was
/// made on, and a device cannot restore a backup from a newer iOS: said
/// before anything is sent, with what to do; after the update it works.
#[test]
fn a_restore_onto_an_older_ios_is_refused_before_anything_is_sent() {
    let host = SimHost::start(&[(Profile::Empty, 621), (Profile::Empty, 622)], |i, c| {
        c.product_version = if i == 0 { "17.5.1" } else { "17.4" }.into();
    });
    let (a, b) = (&host.udids[0], &host.udids[1]);
    let fs = host.devices[0].join("fs/HomeDomain/Library");
    std::fs::create_dir_all(&fs).unwrap();
    std::fs::write(fs.join("note.txt"), b"from A").unwrap();
    let dir = host.path("backups");
    assert_ok(&ib(&host, &["-u", a, "full", p(&dir)], &[]), "backup of A");
    let b_fs = host.devices[1].join("fs");
    let before = device_tree(&b_fs, &[]);
    let o = ib(
        &host,
        &["-u", b, "restore", "--source", a, "--no-reboot", p(&dir)],
        &[],
    );
    let t = text(&o);
    assert_eq!(code(&o), Some(10), "{t}");
    assert!(
        t.contains("made on iOS 17.5.1")
            && t.contains("runs iOS 17.4")
            && t.contains("Software Update"),
        "{t}"
    );
    assert!(!t.contains("sending"), "refused before sending: {t}");
    assert_eq!(device_tree(&b_fs, &[]), before, "B untouched");
    edit_device(&host.devices[1], |c| c.product_version = "17.5.1".into());
    let o = ib(
        &host,
        &["-u", b, "restore", "--source", a, "--no-reboot", p(&dir)],
        &[],
    );
    assert_ok(&o, "restore after updating B");
    assert_eq!(
        std::fs::read(b_fs.join("HomeDomain/Library/note.txt")).unwrap(),
        b"from A"
    );
}

/// Extracting onto a FAT32 stick, which holds at most 4 GiB a file: a
/// longer video is listed as not extracted and everything else still
/// comes out (it stopped the whole extraction). RLIMIT_FSIZE, with
/// SIGXFSZ ignored, plays the disk's limit.
#[cfg(unix)]
#[test]
fn extract_skips_only_the_files_too_large_for_the_disk_and_lists_them() {
    let host = SimHost::start(&[(Profile::Empty, 631)], |_, _| {});
    let a = &host.udids[0];
    let media = host.devices[0].join("fs/CameraRollDomain/Media/DCIM/100APPLE");
    std::fs::create_dir_all(&media).unwrap();
    std::fs::write(media.join("IMG_0001.MOV"), vec![5u8; 12 << 20]).unwrap();
    std::fs::write(media.join("IMG_0002.JPG"), b"a photo").unwrap();
    std::fs::write(media.join("IMG_0003.JPG"), b"another").unwrap();
    let dir = host.path("backups");
    assert_ok(&ib(&host, &["-u", a, "full", p(&dir)], &[]), "backup");
    let out = host.root.path().join("out");
    let mut c = ibackup(&host);
    c.args(["extract", p(&dir), "--to", p(&out)]);
    limit_file_size(&mut c, 8 << 20);
    let o = run(c);
    let t = text(&o);
    assert_eq!(code(&o), Some(16), "{t}");
    assert!(
        t.contains("not extracted: CameraRollDomain-Media/DCIM/100APPLE/IMG_0001.MOV")
            && t.contains("1 file (listed above) is larger than its disk holds a file"),
        "{t}"
    );
    let got = out.join("CameraRollDomain/Media/DCIM/100APPLE");
    assert_eq!(std::fs::read(got.join("IMG_0002.JPG")).unwrap(), b"a photo");
    assert_eq!(std::fs::read(got.join("IMG_0003.JPG")).unwrap(), b"another");
    let names: Vec<_> = std::fs::read_dir(&got)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        !names.iter().any(|n| n.contains("IMG_0001")),
        "no part of the large one is left: {names:?}"
    );
}

/// Ctrl-C during an extract: the files being written are finished and no
/// other is begun, so what is in OUT is whole and no partial file is left
/// beside it; the same command run again finishes the job.
#[cfg(unix)]
#[test]
fn ctrl_c_during_an_extract_leaves_only_whole_files_and_a_rerun_finishes() {
    let host = SimHost::start(&[(Profile::Small, 631)], |_, _| {});
    let a = &host.udids[0];
    let dir = host.path("backups");
    assert_ok(&ib(&host, &["-u", a, "full", p(&dir)], &[]), "backup");
    let whole = host.root.path().join("whole");
    assert_ok(
        &ib(&host, &["extract", p(&dir), "--to", p(&whole)], &[]),
        "extract",
    );
    let all: BTreeMap<String, String> = hashes(&whole).into_iter().collect();

    let out = host.root.path().join("out");
    let mut c = ibackup(&host);
    c.args(["extract", p(&dir), "--to", p(&out)])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = c.spawn().unwrap();
    let pid = child.id() as i32;
    let start = std::time::Instant::now();
    // A file in a domain's folder (not the probe of OUT's name rules).
    while !walkdir::WalkDir::new(&out)
        .min_depth(2)
        .into_iter()
        .flatten()
        .any(|e| e.file_type().is_file())
    {
        assert!(start.elapsed().as_secs() < 60, "the extract never started");
        assert!(
            child.try_wait().unwrap().is_none(),
            "the extract ended before it could be stopped"
        );
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    // Held still while the signal is sent, so it lands mid-way.
    for sig in [libc::SIGSTOP, libc::SIGINT, libc::SIGCONT] {
        // SAFETY: kill(2) on our own child, not yet reaped.
        assert_eq!(unsafe { libc::kill(pid, sig) }, 0);
    }
    let o = child.wait_with_output().unwrap();
    assert_eq!(code(&o), Some(130), "{}", text(&o));
    assert!(
        text(&o).contains("the files already in the output folder are whole"),
        "{}",
        text(&o)
    );
    let got = hashes(&out);
    assert!(
        !got.is_empty() && got.len() < all.len(),
        "{} of {}",
        got.len(),
        all.len()
    );
    for (name, sha1) in &got {
        assert!(!name.ends_with(".ibackup-part"), "left behind: {name}");
        assert_eq!(all.get(name), Some(sha1), "{name} is whole");
    }
    assert_ok(
        &ib(&host, &["extract", p(&dir), "--to", p(&out)], &[]),
        "extract run again",
    );
    assert_eq!(hashes(&out), hashes(&whole), "the rerun finished the job");
}

/// Every camera-roll file the phone serves over AFC, where `photos` puts
/// it below OUT (DCIM/<folder>/<name>, edits as IMG_E<n>.<ext>), with its
/// bytes' hash and modification time (seconds).
fn camera_roll(device: &Path, by_month: bool) -> BTreeMap<String, (String, u64)> {
    let media = device.join("fs/CameraRollDomain/Media");
    let mut out = BTreeMap::new();
    let time = |p: &Path| {
        std::fs::metadata(p)
            .unwrap()
            .modified()
            .unwrap()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
    };
    let month = |secs: u64| {
        let o = Command::new("date")
            .args(["-u", "-d", &format!("@{secs}"), "+%Y/%m"])
            .output()
            .unwrap();
        String::from_utf8(o.stdout).unwrap().trim().to_string()
    };
    for e in walkdir::WalkDir::new(&media).into_iter().flatten() {
        if !e.file_type().is_file() {
            continue;
        }
        let rel = e
            .path()
            .strip_prefix(&media)
            .unwrap()
            .to_string_lossy()
            .into_owned();
        let parts: Vec<&str> = rel.split('/').collect();
        let (folder, name) = match parts.as_slice() {
            ["DCIM", f, n] => (f.to_string(), n.to_string()),
            ["PhotoData", "Mutations", "DCIM", f, stem, "Adjustments", n]
                if n.starts_with("FullSizeRender.") =>
            {
                let ext = n.trim_start_matches("FullSizeRender.");
                (
                    f.to_string(),
                    format!("IMG_E{}.{ext}", stem.trim_start_matches("IMG_")),
                )
            }
            _ => continue,
        };
        let t = time(e.path());
        let at = if by_month {
            format!("{}/{name}", month(t))
        } else {
            format!("{folder}/{name}")
        };
        out.insert(at, (sha1_file(e.path()), t));
    }
    out
}

fn copied(out: &Path) -> BTreeMap<String, (String, u64)> {
    walkdir::WalkDir::new(out)
        .into_iter()
        .flatten()
        .filter(|e| e.file_type().is_file())
        .map(|e| {
            let rel = e
                .path()
                .strip_prefix(out)
                .unwrap()
                .to_string_lossy()
                .into_owned();
            let t = std::fs::metadata(e.path())
                .unwrap()
                .modified()
                .unwrap()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_secs();
            (rel, (sha1_file(e.path()), t))
        })
        .collect()
}

fn json_result(o: &std::process::Output) -> serde_json::Value {
    serde_json::from_str(
        String::from_utf8_lossy(&o.stdout)
            .lines()
            .last()
            .unwrap_or("{}"),
    )
    .unwrap()
}

/// `ibackup photos OUT` copies the camera roll over AFC byte for byte
/// with its dates (Live Photos' movies and edits included); a second run
/// copies nothing; a run cut by a pulled cable leaves only whole files and
/// the next run copies only the rest; `--by-month` sorts by date; names a
/// hostile phone lists that would lead out of OUT are refused (exit 17)
/// while everything else is copied.
#[test]
fn photos_copies_the_camera_roll_again_only_what_is_new_and_resumes_a_cut_run() {
    let host = SimHost::start(&[(Profile::Small, 223)], |_, _| {});
    let a = &host.udids[0];
    let device = &host.devices[0];
    let want = camera_roll(device, false);
    assert!(
        want.keys().any(|k| k.contains("IMG_E")),
        "the phone has edits"
    );
    assert!(want.keys().any(|k| k.ends_with(".MOV")), "and movies");
    let total: u64 = want.len() as u64;

    let out = host.path("photos");
    let o = ib(&host, &["-u", a, "--json", "photos", p(&out)], &[]);
    assert_ok(&o, "photos");
    assert_eq!(json_result(&o)["copied"], total);
    assert_eq!(copied(&out), want);
    let o = ib(&host, &["-u", a, "--json", "photos", p(&out)], &[]);
    assert_ok(&o, "photos again");
    assert_eq!(json_result(&o)["copied"], 0, "{}", text(&o));
    assert_eq!(json_result(&o)["already"], total);

    // A pulled cable halfway: whole files only; the next run copies the rest.
    let cut = host.path("cut");
    let bytes: u64 = walkdir::WalkDir::new(&out)
        .into_iter()
        .flatten()
        .filter(|e| e.file_type().is_file())
        .map(|e| e.metadata().unwrap().len())
        .sum();
    edit_device(device, |c| {
        c.fault_afc_disconnect_after_bytes = Some(bytes / 2)
    });
    let o = ib(&host, &["-u", a, "photos", p(&cut)], &[]);
    assert_eq!(code(&o), Some(8), "{}", text(&o));
    assert!(
        text(&o).contains("the files copied so far are whole") && !text(&o).contains("last backup"),
        "{}",
        text(&o)
    );
    let half = copied(&cut);
    assert!(
        !half.is_empty() && half.len() < want.len(),
        "{} of {}",
        half.len(),
        want.len()
    );
    for (k, v) in &half {
        assert_eq!(Some(v), want.get(k), "{k} is whole");
    }
    edit_device(device, |c| c.fault_afc_disconnect_after_bytes = None);
    let o = ib(&host, &["-u", a, "--json", "photos", p(&cut)], &[]);
    assert_ok(&o, "the resumed run");
    assert_eq!(json_result(&o)["copied"], total - half.len() as u64);
    assert_eq!(copied(&cut), want);

    let monthly = host.path("monthly");
    assert_ok(
        &ib(&host, &["-u", a, "photos", "--by-month", p(&monthly)], &[]),
        "--by-month",
    );
    assert_eq!(copied(&monthly), camera_roll(device, true));

    // A hostile phone: names that lead out of OUT are refused, the rest is copied.
    edit_device(device, |c| {
        c.fault_afc_names = vec![
            "../../escape.JPG".into(),
            "/tmp/abs.JPG".into(),
            "a\nb.JPG".into(),
        ]
    });
    let hostile = host.path("hostile/out");
    let o = ib(&host, &["-u", a, "photos", p(&hostile)], &[]);
    assert_eq!(code(&o), Some(17), "{}", text(&o));
    assert!(text(&o).contains("3 camera-roll names"), "{}", text(&o));
    assert_eq!(copied(&hostile), want);
    assert!(
        !host.root.path().join("escape.JPG").exists()
            && !host.root.path().join("hostile/escape.JPG").exists()
    );
}

/// `photos` onto a disk too small for the camera roll: exit 7 naming the
/// disk, and only whole files there (no part file left).
#[cfg(unix)]
#[test]
fn photos_onto_a_full_disk_says_so_and_leaves_only_whole_files() {
    let host = SimHost::start(&[(Profile::Small, 227)], |_, _| {});
    let a = &host.udids[0];
    let want = camera_roll(&host.devices[0], false);
    let mount_point = host.path("small-disk");
    let Some(_disk) = SmallDisk::mount(&mount_point, 40) else {
        return;
    };
    let out = mount_point.join("photos");
    let o = ib(&host, &["-u", a, "photos", p(&out)], &[]);
    assert_eq!(code(&o), Some(7), "{}", text(&o));
    assert!(text(&o).contains("is full"), "{}", text(&o));
    let got = copied(&out);
    assert!(!got.is_empty() && got.len() < want.len());
    for (k, v) in &got {
        assert_eq!(Some(v), want.get(k), "{k} is whole");
    }
    let parts = walkdir::WalkDir::new(&out)
        .into_iter()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".ibackup-part"))
        .count();
    assert_eq!(parts, 0, "no part file is left");
}

/// `photos` onto exFAT: a name the disk cannot hold (`:`) and two names
/// that differ only in case are each kept under a name it can hold, said
/// on the way; the next run finds them all whole and copies nothing.
#[cfg(unix)]
#[test]
fn photos_onto_an_exfat_disk_keeps_every_file_under_a_name_it_holds() {
    let host = SimHost::start(&[(Profile::Empty, 229)], |_, _| {});
    let a = &host.udids[0];
    let dcim = host.devices[0].join("fs/CameraRollDomain/Media/DCIM/100APPLE");
    std::fs::create_dir_all(&dcim).unwrap();
    for (name, body) in [
        ("IMG:0001.JPG", &b"colon"[..]),
        ("IMG_0002.JPG", b"upper"),
        ("img_0002.jpg", b"lower"),
    ] {
        std::fs::write(dcim.join(name), body).unwrap();
    }
    let Some(disk) = ExfatDisk::mount(&host.root.path().join("exfat"), 64) else {
        return;
    };
    let out = disk.path.join("photos");
    let o = ib(&host, &["-u", a, "--json", "photos", p(&out)], &[]);
    assert_ok(&o, "photos onto exFAT");
    let r = json_result(&o);
    assert_eq!(r["copied"], 3, "{}", text(&o));
    assert_eq!(r["renamed"].as_array().unwrap().len(), 1, "{}", text(&o));
    let mut bodies: Vec<Vec<u8>> = std::fs::read_dir(out.join("100APPLE"))
        .unwrap()
        .map(|e| std::fs::read(e.unwrap().path()).unwrap())
        .collect();
    bodies.sort();
    assert_eq!(
        bodies,
        [b"colon".to_vec(), b"lower".to_vec(), b"upper".to_vec()]
    );
    assert_eq!(
        std::fs::read(out.join("100APPLE/IMG_0001.JPG")).unwrap(),
        b"colon"
    );
    let o = ib(&host, &["-u", a, "--json", "photos", p(&out)], &[]);
    assert_ok(&o, "photos again");
    assert_eq!(json_result(&o)["copied"], 0, "{}", text(&o));
}
