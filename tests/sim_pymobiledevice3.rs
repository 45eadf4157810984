//! The simulator judged by pymobiledevice3 and pyiosbackup.

use ibackup_sim::populate::Profile;
use ibackup_suite::*;

#[test]
fn pymobiledevice3_full_backup_matches_the_device_and_pyiosbackup_reads_it() {
    let (Some(pmd3), Some(pyio)) = (referee("pymobiledevice3"), referee("pyiosbackup")) else {
        return;
    };
    let host = SimHost::start(&[(Profile::Small, 61)], |_, _| {});
    let u = &host.udids[0];
    let dir = host.path("backups");
    let o = run({
        let mut c = host.cmd(&pmd3);
        c.args(["backup2", "backup", "--full"])
            .arg(&dir)
            .args(["--udid", u]);
        c
    });
    assert_ok(&o, "pymobiledevice3 backup2 backup --full");
    let backup = dir.join(u);
    let device = device_tree(&host.devices[0].join("fs"), &PLAIN_SKIP);
    assert_same_tree(
        &backup_tree(&backup),
        &device,
        "pymobiledevice3 backup vs device",
    );

    // An independent reader, strict about padding and format, gets the same bytes.
    let out = host.path("unback");
    let o = run({
        let mut c = std::process::Command::new(&pyio.0);
        c.arg("unback")
            .arg(&backup)
            .arg("")
            .arg("--target")
            .arg(&out)
            .arg("--strict");
        c
    });
    assert_ok(&o, "pyiosbackup unback --strict");
    let mut files_only = device.clone();
    // pyiosbackup writes regular files (and their folders), not symlinks.
    files_only.retain(|_, n| !matches!(n, Node::Link(_)));
    let extracted = device_tree(&out, &[]);
    let same_content = |a: &Node, b: &Node| match (a, b) {
        (Node::File { sha1: x, .. }, Node::File { sha1: y, .. }) => x == y,
        (Node::Dir, Node::Dir) => true,
        _ => false,
    };
    for (k, v) in files_only
        .iter()
        .filter(|(_, v)| matches!(v, Node::File { .. }))
    {
        let got = extracted
            .get(k)
            .unwrap_or_else(|| panic!("pyiosbackup did not extract {k}"));
        assert!(
            same_content(v, got),
            "{k} differs after pyiosbackup extraction"
        );
    }

    // An incremental backup after adds, changes and deletes follows them,
    // and leaves the files that did not change where they were.
    let fs = host.devices[0].join("fs");
    std::fs::write(fs.join("HomeDomain/Library/added.txt"), "new").unwrap();
    std::fs::write(fs.join("HomeDomain/Library/SMS/sms.db"), "replaced").unwrap();
    let mut photos: Vec<String> =
        std::fs::read_dir(fs.join("CameraRollDomain/Media/DCIM/100APPLE"))
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
    photos.sort();
    std::fs::remove_file(
        fs.join("CameraRollDomain/Media/DCIM/100APPLE")
            .join(&photos[0]),
    )
    .unwrap();
    let kept_id = ibackup_store::paths::file_id(
        "CameraRollDomain",
        &format!("Media/DCIM/100APPLE/{}", photos[1]),
    );
    let kept = backup.join(&kept_id[..2]).join(&kept_id);
    let written = || std::fs::metadata(&kept).unwrap().modified().unwrap();
    let before = written();
    let o = run({
        let mut c = host.cmd(&pmd3);
        c.args(["backup2", "backup"]).arg(&dir).args(["--udid", u]);
        c
    });
    assert_ok(&o, "pymobiledevice3 backup2 backup (incremental)");
    assert_eq!(written(), before, "an unchanged photo was not sent again");
    assert_same_tree(
        &backup_tree(&backup),
        &device_tree(&fs, &PLAIN_SKIP),
        "pymobiledevice3 incremental backup vs changed device",
    );
}

#[test]
fn a_cut_cable_is_reported_by_pymobiledevice3() {
    let Some(pmd3) = referee("pymobiledevice3") else {
        return;
    };
    let host = SimHost::start(&[(Profile::Small, 62)], |_, c| {
        c.fault_disconnect_after_bytes = Some(20_000_000)
    });
    let u = &host.udids[0];
    let dir = host.path("backups");
    let o = run({
        let mut c = host.cmd_within(&pmd3, 120);
        c.args(["backup2", "backup", "--full"])
            .arg(&dir)
            .args(["--udid", u]);
        c
    });
    assert!(!o.status.success());
    assert!(
        text(&o).contains("Connection was terminated abruptly"),
        "{}",
        tail(&text(&o), 10)
    );
    assert_ne!(snapshot_state(&dir.join(u)).as_deref(), Some("finished"));
}
