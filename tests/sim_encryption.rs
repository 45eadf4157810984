//! Device-side backup encryption, judged by idevicebackup2 (which turns it
//! on and off and restores), iphone_backup_decrypt and pyiosbackup --strict
//! (which read the result with the password).

use std::path::Path;

use ibackup_sim::populate::Profile;
use ibackup_suite::*;

/// Files only: the readers write regular files and their folders.
fn files(t: &std::collections::BTreeMap<String, Node>) -> Vec<(String, String)> {
    t.iter()
        .filter_map(|(k, v)| match v {
            Node::File { sha1, .. } => Some((k.clone(), sha1.clone())),
            _ => None,
        })
        .collect()
}

fn ibd_extract(
    host: &SimHost,
    py: &Referee,
    backup: &Path,
    password: &str,
    out: &str,
) -> (std::process::Output, std::path::PathBuf) {
    let out = host.root.path().join(out);
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support/ibd_extract.py");
    let mut c = std::process::Command::new(&py.0);
    c.arg(script).arg(backup).arg(password).arg(&out);
    (run(c), out)
}

#[test]
fn encryption_on_then_backup_is_readable_with_the_password_and_restores() {
    let (Some(b2), Some(py), Some(pyio)) = (
        referee("idevicebackup2"),
        python_referee("iphone_backup_decrypt"),
        referee("pyiosbackup"),
    ) else {
        return;
    };
    // Device default key derivation (10,000,000 rounds), as a real phone.
    let host = SimHost::start(&[(Profile::Small, 71), (Profile::Empty, 72)], |_, _| {});
    let (a, b) = (&host.udids[0], &host.udids[1]);
    let o = run({
        let mut c = host.cmd(&b2);
        c.args(["-u", a, "encryption", "on", "correct horse"]);
        c
    });
    assert_ok(&o, "encryption on");
    let dir = host.path("backups");
    let o = run({
        let mut c = host.cmd(&b2);
        c.args(["-u", a, "backup"]).arg(&dir);
        c
    });
    assert_ok(&o, "encrypted backup");
    assert!(
        text(&o).contains("Backup will be encrypted"),
        "{}",
        tail(&text(&o), 10)
    );
    let backup = dir.join(a);
    assert!(
        !std::fs::read(backup.join("Manifest.db"))
            .unwrap()
            .starts_with(b"SQLite format 3"),
        "Manifest.db is encrypted"
    );

    // Everything on the device, Health and Keychain included, comes back identical.
    let device = files(&device_tree(&host.devices[0].join("fs"), &[]));
    assert!(
        device.iter().any(|(k, _)| k.starts_with("HealthDomain/"))
            && device.iter().any(|(k, _)| k.starts_with("KeychainDomain/"))
    );
    let (o, out) = ibd_extract(&host, &py, &backup, "correct horse", "ibd");
    assert_ok(&o, "iphone_backup_decrypt");
    assert_eq!(
        files(&device_tree(&out, &[])),
        device,
        "iphone_backup_decrypt extraction vs device"
    );
    let out2 = host.root.path().join("pyio");
    let o = run({
        let mut c = std::process::Command::new(&pyio.0);
        c.arg("unback")
            .arg(&backup)
            .arg("correct horse")
            .arg("--target")
            .arg(&out2)
            .arg("--strict");
        c
    });
    assert_ok(&o, "pyiosbackup unback --strict");
    assert_eq!(
        files(&device_tree(&out2, &[])),
        device,
        "pyiosbackup extraction vs device"
    );
    let (o, _) = ibd_extract(&host, &py, &backup, "wrong horse", "ibd-wrong");
    assert_eq!(
        o.status.code(),
        Some(3),
        "a wrong password is refused: {}",
        text(&o)
    );

    // Restore: the wrong password is MBErrorDomain 207; the right one reproduces A on B.
    let o = run({
        let mut c = host.cmd(&b2);
        c.args([
            "-u",
            b,
            "-s",
            a,
            "restore",
            "--system",
            "--no-reboot",
            "--password",
            "wrong",
        ])
        .arg(&dir);
        c
    });
    assert!(!o.status.success());
    assert!(text(&o).contains("ErrorCode 207"), "{}", tail(&text(&o), 5));
    assert!(
        device_tree(&host.devices[1].join("fs"), &[]).is_empty(),
        "a refused restore changes nothing"
    );
    let o = run({
        let mut c = host.cmd(&b2);
        c.args([
            "-u",
            b,
            "-s",
            a,
            "restore",
            "--system",
            "--no-reboot",
            "--password",
            "correct horse",
        ])
        .arg(&dir);
        c
    });
    assert_ok(&o, "encrypted restore");
    assert_same_tree(
        &device_tree(&host.devices[1].join("fs"), &[]),
        &device_tree(&host.devices[0].join("fs"), &[]),
        "B after encrypted restore vs A",
    );
}

#[test]
fn password_change_then_off() {
    let (Some(b2), Some(py)) = (
        referee("idevicebackup2"),
        python_referee("iphone_backup_decrypt"),
    ) else {
        return;
    };
    let host = SimHost::start(&[(Profile::Small, 81)], |_, c| {
        c.backup_kdf_iterations = 1000
    });
    let a = &host.udids[0];
    let dir = host.path("backups");
    let backup = dir.join(a);
    let o = run({
        let mut c = host.cmd(&b2);
        c.args(["-u", a, "encryption", "on", "one"]);
        c
    });
    assert_ok(&o, "encryption on");
    let o = run({
        let mut c = host.cmd(&b2);
        c.args(["-u", a, "changepw", "wrong", "two"]);
        c
    });
    assert!(
        !o.status.success() || !text(&o).contains("changed successfully"),
        "{}",
        tail(&text(&o), 5)
    );
    let o = run({
        let mut c = host.cmd(&b2);
        c.args(["-u", a, "changepw", "one", "two"]);
        c
    });
    assert_ok(&o, "changepw");
    let o = run({
        let mut c = host.cmd(&b2);
        c.args(["-u", a, "backup"]).arg(&dir);
        c
    });
    assert_ok(&o, "backup after changepw");
    let device = files(&device_tree(&host.devices[0].join("fs"), &[]));
    let (o, out) = ibd_extract(&host, &py, &backup, "two", "new-pw");
    assert_ok(&o, "decrypt with the new password");
    assert_eq!(files(&device_tree(&out, &[])), device);
    let (o, _) = ibd_extract(&host, &py, &backup, "one", "old-pw");
    assert_eq!(
        o.status.code(),
        Some(3),
        "the old password no longer opens new backups"
    );

    let o = run({
        let mut c = host.cmd(&b2);
        c.args(["-u", a, "encryption", "off", "two"]);
        c
    });
    assert_ok(&o, "encryption off");
    let o = run({
        let mut c = host.cmd(&b2);
        c.args(["-u", a, "backup"]).arg(&dir);
        c
    });
    assert_ok(&o, "plain backup after off");
    assert!(
        std::fs::read(backup.join("Manifest.db"))
            .unwrap()
            .starts_with(b"SQLite format 3"),
        "Manifest.db is plain again"
    );
    assert_same_tree(
        &backup_tree(&backup),
        &device_tree(&host.devices[0].join("fs"), &PLAIN_SKIP),
        "plain backup vs device",
    );
}
