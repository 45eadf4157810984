//! `ibackup` reads and extracts backups other tools wrote: libimobiledevice's
//! `idevicebackup2` and pymobiledevice3, plain and encrypted.

use std::path::Path;
use std::process::Command;

use ibackup_sim::populate::Profile;
use ibackup_suite::*;

fn extract(host: &SimHost, backup: &Path, out: &Path, password: Option<&str>) {
    let mut c = Command::new(env!("CARGO_BIN_EXE_ibackup"));
    c.arg("extract").arg(backup).arg("--to").arg(out);
    c.env_remove("IBACKUP_PASSWORD");
    if let Some(pw) = password {
        c.env("IBACKUP_PASSWORD", pw);
    }
    assert_ok(&run(c), &format!("ibackup extract {}", backup.display()));
    let _ = host;
}

#[test]
fn backups_by_idevicebackup2_and_pymobiledevice3_plain_and_encrypted() {
    let (Some(b2), Some(pmd3)) = (referee("idevicebackup2"), referee("pymobiledevice3")) else {
        return;
    };
    let host = SimHost::start(&[(Profile::Small, 251), (Profile::Small, 252)], |i, c| {
        c.backup_kdf_iterations = 10_000;
        if i == 1 {
            c.backup_password = Some("their pw".into());
        }
    });
    for (i, u) in host.udids.iter().enumerate() {
        let encrypted = i == 1;
        let device = device_tree(
            &host.devices[i].join("fs"),
            if encrypted { &[] } else { &PLAIN_SKIP },
        );
        let pw = encrypted.then_some("their pw");

        let dir = host.path(&format!("limd{i}"));
        let o = run({
            let mut c = host.cmd(&b2);
            c.args(["-u", u, "backup", "--full"]).arg(&dir);
            c
        });
        assert_ok(&o, "idevicebackup2 backup --full");
        let out = host.root.path().join(format!("limd{i}-out"));
        extract(&host, &dir.join(u), &out, pw);
        assert_same_tree(
            &device_tree(&out, &[]),
            &device,
            &format!("idevicebackup2 backup (encrypted: {encrypted}) extracted"),
        );

        let dir = host.path(&format!("pmd3-{i}"));
        let o = run({
            let mut c = host.cmd(&pmd3);
            c.args(["backup2", "backup", "--full"])
                .arg(&dir)
                .args(["--udid", u]);
            c
        });
        assert_ok(&o, "pymobiledevice3 backup2 backup --full");
        let out = host.root.path().join(format!("pmd3-{i}-out"));
        extract(&host, &dir.join(u), &out, pw);
        assert_same_tree(
            &device_tree(&out, &[]),
            &device,
            &format!("pymobiledevice3 backup (encrypted: {encrypted}) extracted"),
        );
    }
}

#[test]
fn each_commands_help_shows_the_flags_it_uses() {
    let help = |args: &[&str]| {
        let o = Command::new(env!("CARGO_BIN_EXE_ibackup"))
            .args(args)
            .arg("--help")
            .output()
            .unwrap();
        assert!(o.status.success());
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    for cmd in ["ls", "verify", "extract", "snapshots", "checkout", "prune"] {
        let h = help(&[cmd]);
        for flag in [
            "--simulated",
            "--network",
            "--trust-timeout",
            "--stall-timeout",
            "--wait-for-device",
        ] {
            assert!(!h.contains(flag), "`{cmd} --help` shows {flag}:\n{h}");
        }
        assert!(h.contains("--json"), "{h}");
    }
    let h = help(&["backup"]);
    assert!(
        h.contains("--simulated") && h.contains("--trust-timeout") && h.contains("--check-content"),
        "{h}"
    );
}
