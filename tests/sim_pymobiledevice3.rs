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
