//! The simulator judged by libimobiledevice (`ideviceinfo`, `idevicepair`,
//! `idevicebackup2`): if these disagree with it, the simulator is wrong.

use ibackup_sim::device::Trust;
use ibackup_sim::populate::Profile;
use ibackup_suite::*;

#[test]
fn ideviceinfo_and_idevicepair_work() {
    let (Some(info), Some(pair)) = (referee("ideviceinfo"), referee("idevicepair")) else {
        return;
    };
    let host = SimHost::start(&[(Profile::Empty, 1)], |_, _| {});
    let u = &host.udids[0];

    let o = run({
        let mut c = host.cmd(&pair);
        c.args(["-u", u, "pair"]);
        c
    });
    assert_ok(&o, "idevicepair pair");
    assert!(text(&o).contains("SUCCESS: Paired"), "{}", text(&o));
    let o = run({
        let mut c = host.cmd(&pair);
        c.args(["-u", u, "validate"]);
        c
    });
    assert_ok(&o, "idevicepair validate");

    let o = run({
        let mut c = host.cmd(&info);
        c.args(["-u", u]);
        c
    });
    assert_ok(&o, "ideviceinfo");
    let t = text(&o);
    for want in [
        format!("UniqueDeviceID: {u}"),
        "ProductVersion: 17.5.1".into(),
        "DeviceClass: iPhone".into(),
    ] {
        assert!(t.contains(&want), "ideviceinfo lacks {want}:\n{t}");
    }
    let o = run({
        let mut c = host.cmd(&info);
        c.args([
            "-u",
            u,
            "-q",
            "com.apple.disk_usage",
            "-k",
            "TotalDiskCapacity",
        ]);
        c
    });
    assert_ok(&o, "ideviceinfo domain query");
    assert_eq!(text(&o).trim(), "128000000000");

    // The device and usbmuxd remember the pairing in the device folder; unpair forgets it.
    let trusted = |d: &std::path::Path| {
        std::fs::read_dir(d.join("state/trusted_hosts"))
            .unwrap()
            .count()
    };
    assert!(trusted(&host.devices[0]) >= 1);
    assert!(host.devices[0]
        .join("state/usbmuxd_pair_record.plist")
        .exists());
    let o = run({
        let mut c = host.cmd(&pair);
        c.args(["-u", u, "unpair"]);
        c
    });
    assert_ok(&o, "idevicepair unpair");
    assert!(
        !host.devices[0]
            .join("state/usbmuxd_pair_record.plist")
            .exists(),
        "usbmuxd dropped its record"
    );
    assert_eq!(
        trusted(&host.devices[0]),
        0,
        "the device forgot the unpaired host"
    );
}

#[test]
fn full_backup_holds_every_file_and_restores_onto_an_empty_device() {
    let Some(b2) = referee("idevicebackup2") else {
        return;
    };
    let host = SimHost::start(&[(Profile::Small, 11), (Profile::Empty, 12)], |_, _| {});
    let (a, b) = (&host.udids[0], &host.udids[1]);
    let dir = host.path("backups");

    let o = run({
        let mut c = host.cmd(&b2);
        c.args(["-u", a, "backup", "--full"]).arg(&dir);
        c
    });
    assert_ok(&o, "idevicebackup2 backup --full");
    assert!(
        text(&o).contains("Backup Successful"),
        "{}",
        tail(&text(&o), 20)
    );
    let backup = dir.join(a);
    assert_eq!(snapshot_state(&backup).as_deref(), Some("finished"));
    let device = device_tree(&host.devices[0].join("fs"), &PLAIN_SKIP);
    assert!(
        device.len() > 2500,
        "small profile has thousands of entries"
    );
    assert_same_tree(&backup_tree(&backup), &device, "backup vs device A");

    let o = run({
        let mut c = host.cmd(&b2);
        c.args(["-u", b, "-s", a, "restore", "--system", "--no-reboot"])
            .arg(&dir);
        c
    });
    assert_ok(&o, "idevicebackup2 restore");
    assert!(
        text(&o).contains("Restore Successful"),
        "{}",
        tail(&text(&o), 20)
    );
    assert_same_tree(
        &device_tree(&host.devices[1].join("fs"), &[]),
        &device,
        "device B after restore vs device A",
    );
}

#[test]
fn incremental_backup_follows_adds_changes_and_deletes() {
    let Some(b2) = referee("idevicebackup2") else {
        return;
    };
    let host = SimHost::start(&[(Profile::Small, 21)], |_, _| {});
    let a = &host.udids[0];
    let dir = host.path("backups");
    let fs = host.devices[0].join("fs");
    let o = run({
        let mut c = host.cmd(&b2);
        c.args(["-u", a, "backup"]).arg(&dir);
        c
    });
    assert_ok(&o, "first backup");

    std::fs::write(fs.join("HomeDomain/Library/added note.txt"), "added\n").unwrap();
    std::fs::create_dir_all(fs.join("AppDomain-org.wikipedia/Documents/new dir")).unwrap();
    std::fs::write(
        fs.join("AppDomain-org.wikipedia/Documents/new dir/x.json"),
        "{}",
    )
    .unwrap();
    let sms = fs.join("HomeDomain/Library/SMS/sms.db");
    let mut bytes = std::fs::read(&sms).unwrap();
    bytes.extend_from_slice(b"appended");
    std::fs::write(&sms, bytes).unwrap();
    let deleted: Vec<_> = std::fs::read_dir(fs.join("CameraRollDomain/Media/DCIM/100APPLE"))
        .unwrap()
        .flatten()
        .take(3)
        .map(|e| e.path())
        .collect();
    for p in &deleted {
        std::fs::remove_file(p).unwrap();
    }

    let o = run({
        let mut c = host.cmd(&b2);
        c.args(["-u", a, "backup"]).arg(&dir);
        c
    });
    assert_ok(&o, "incremental backup");
    let t = text(&o);
    assert!(
        t.contains("Incremental") || t.contains("Received 7 files") || t.contains("Received"),
        "{}",
        tail(&t, 10)
    );
    // Only the changes travel: 3 new or changed files plus 4 metadata files.
    assert!(
        t.contains("Received 7 files from device"),
        "{}",
        tail(&t, 10)
    );
    assert_same_tree(
        &backup_tree(&dir.join(a)),
        &device_tree(&fs, &PLAIN_SKIP),
        "incremental backup vs changed device",
    );
}

#[test]
fn trust_prompt_then_trust() {
    let Some(pair) = referee("idevicepair") else {
        return;
    };
    let host = SimHost::start(&[(Profile::Empty, 31)], |_, c| {
        c.trust = Trust::Prompt;
        c.trust_after_seconds = 2;
    });
    let u = &host.udids[0];
    let o = run({
        let mut c = host.cmd(&pair);
        c.args(["-u", u, "pair"]);
        c
    });
    assert!(!o.status.success());
    assert!(text(&o).contains("accept the trust dialog"), "{}", text(&o));
    std::thread::sleep(std::time::Duration::from_millis(2500));
    let o = run({
        let mut c = host.cmd(&pair);
        c.args(["-u", u, "pair"]);
        c
    });
    assert_ok(&o, "pair after the user tapped Trust");
}

#[test]
fn denied_trust_and_locked_device_are_reported() {
    let (Some(pair), Some(b2)) = (referee("idevicepair"), referee("idevicebackup2")) else {
        return;
    };
    let host = SimHost::start(&[(Profile::Empty, 41), (Profile::Empty, 42)], |i, c| {
        if i == 0 {
            c.trust = Trust::Deny;
        } else {
            c.passcode_locked = true;
        }
    });
    let o = run({
        let mut c = host.cmd(&pair);
        c.args(["-u", &host.udids[0], "pair"]);
        c
    });
    assert!(!o.status.success());
    assert!(text(&o).contains("denied"), "{}", text(&o));

    let o = run({
        let mut c = host.cmd(&pair);
        c.args(["-u", &host.udids[1], "pair"]);
        c
    });
    assert!(!o.status.success());
    assert!(text(&o).contains("passcode"), "{}", text(&o));
    // Unlocked, the same phone pairs; locked again, the backup service refuses to start.
    edit_device(&host.devices[1], |c| c.passcode_locked = false);
    let o = run({
        let mut c = host.cmd(&pair);
        c.args(["-u", &host.udids[1], "pair"]);
        c
    });
    assert_ok(&o, "pair once unlocked");
    edit_device(&host.devices[1], |c| c.passcode_locked = true);
    let dir = host.path("backups");
    let o = run({
        let mut c = host.cmd(&b2);
        c.args(["-u", &host.udids[1], "backup"]).arg(&dir);
        c
    });
    assert!(!o.status.success(), "{}", tail(&text(&o), 10));
    assert!(
        text(&o).contains("mobilebackup2"),
        "{}",
        tail(&text(&o), 10)
    );
}

#[test]
fn faults_cut_the_backup_and_idevicebackup2_reports_it() {
    let Some(b2) = referee("idevicebackup2") else {
        return;
    };
    let host = SimHost::start(&[(Profile::Small, 51), (Profile::Small, 52)], |i, c| {
        if i == 0 {
            c.fault_disconnect_after_bytes = Some(20_000_000);
        } else {
            c.fault_disconnect_after_files = Some(100);
        }
    });
    for u in &host.udids {
        let dir = host.path(&format!("b-{u}"));
        let o = run({
            let mut c = host.cmd_within(&b2, 30);
            c.args(["-u", u, "backup", "--full"]).arg(&dir);
            c
        });
        let t = text(&o);
        assert!(!o.status.success());
        assert!(!t.contains("Backup Successful"), "{}", tail(&t, 10));
        assert_ne!(
            snapshot_state(&dir.join(u)).as_deref(),
            Some("finished"),
            "a cut backup is never marked finished"
        );
    }
}

#[test]
fn restore_refuses_while_find_my_is_on() {
    let Some(b2) = referee("idevicebackup2") else {
        return;
    };
    let host = SimHost::start(&[(Profile::Empty, 161), (Profile::Empty, 162)], |i, c| {
        c.find_my = i == 1
    });
    let (a, b) = (&host.udids[0], &host.udids[1]);
    std::fs::create_dir_all(host.devices[0].join("fs/HomeDomain/Library")).unwrap();
    std::fs::write(host.devices[0].join("fs/HomeDomain/Library/note.txt"), "x").unwrap();
    let dir = host.path("backups");
    assert_ok(
        &run({
            let mut c = host.cmd(&b2);
            c.args(["-u", a, "backup"]).arg(&dir);
            c
        }),
        "backup",
    );
    let o = run({
        let mut c = host.cmd(&b2);
        c.args(["-u", b, "-s", a, "restore", "--system", "--no-reboot"])
            .arg(&dir);
        c
    });
    assert!(!o.status.success());
    assert!(
        text(&o).contains("Find My iPhone must be disabled"),
        "{}",
        tail(&text(&o), 5)
    );
    assert!(
        device_tree(&host.devices[1].join("fs"), &[]).is_empty(),
        "nothing restored"
    );
    // Turned off, the same restore goes through.
    edit_device(&host.devices[1], |c| c.find_my = false);
    let o = run({
        let mut c = host.cmd(&b2);
        c.args(["-u", b, "-s", a, "restore", "--system", "--no-reboot"])
            .arg(&dir);
        c
    });
    assert_ok(&o, "restore with Find My off");
    assert!(host.devices[1]
        .join("fs/HomeDomain/Library/note.txt")
        .is_file());
}
