//! Direct USB only: what the emulated bus can do that usbmuxd's socket
//! cannot show — USB 3 packet sizes, CONTROL lines and stray segments
//! mid-stream, a device that resets a connection or sends garbage, a
//! phone the system will not let ibackup open. Each runs with a time
//! limit: a framing bug must fail here, not hang CI.

use std::path::Path;
use std::process::Command;

use ibackup_sim::populate::Profile;
use ibackup_suite::*;

fn ibackup(host: &SimHost) -> Command {
    let mut c = Command::new("timeout");
    c.arg("300").arg(env!("CARGO_BIN_EXE_ibackup"));
    host.point(&mut c);
    c.env("IBACKUP_TRANSPORT", "usb");
    c
}

fn files(dir: &Path) -> Vec<(String, String)> {
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
fn usb3_packets_control_lines_and_stray_segments_still_give_a_whole_backup() {
    let host = SimHost::start(&[(Profile::Small, 401)], |_, c| {
        c.usb_max_packet = Some(1024);
        c.fault_usb_control_messages = true;
        c.fault_usb_unknown_port = true;
    });
    let a = &host.udids[0];
    let dir = host.path("backups");
    let o = run({
        let mut c = ibackup(&host);
        // IN transfers of 3 KiB: every large packet spans many of them.
        c.env("IBACKUP_USB_IN_TRANSFER", "3072");
        c.args(["-u", a, "full"]).arg(&dir);
        c
    });
    assert_ok(&o, "full backup over USB 3 framing with noise");
    assert_same_tree(
        &backup_tree(&dir.join(a)),
        &device_tree(&host.devices[0].join("fs"), &PLAIN_SKIP),
        "backup vs device",
    );
    let o = run({
        let mut c = ibackup(&host);
        c.arg("verify").arg(dir.join(a));
        c
    });
    assert_ok(&o, "verify");
}

#[test]
fn a_reset_connection_and_garbage_on_the_pipe_fail_clearly_and_keep_the_last_backup() {
    let host = SimHost::start(&[(Profile::Small, 402)], |_, _| {});
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
    let before = files(&dir.join(a));

    // The device resets the backup's connection part way: the pipe stays
    // up, the connection is gone.
    edit_device(&host.devices[0], |c| {
        c.fault_usb_reset_after_bytes = Some(20_000_000)
    });
    let o = run({
        let mut c = ibackup(&host);
        c.args(["-u", a, "backup", "--full"]).arg(&dir);
        c
    });
    assert_eq!(o.status.code(), Some(8), "{}", text(&o));
    assert!(text(&o).contains("last backup is intact"), "{}", text(&o));
    assert_eq!(files(&dir.join(a)), before);

    // Garbage where a usbmux header belongs: the link is dropped with a
    // sentence, no panic, no hang.
    edit_device(&host.devices[0], |c| {
        c.fault_usb_reset_after_bytes = None;
        c.fault_usb_garbage_after_bytes = Some(10_000_000);
    });
    let o = run({
        let mut c = ibackup(&host);
        c.args(["-u", a, "backup", "--full"]).arg(&dir);
        c
    });
    assert_eq!(o.status.code(), Some(8), "{}", text(&o));
    assert!(!text(&o).contains("panicked"), "{}", text(&o));
    assert!(text(&o).contains("usbmux"), "says what broke: {}", text(&o));
    assert_eq!(files(&dir.join(a)), before);

    // And the phone, well again, backs up.
    edit_device(&host.devices[0], |c| c.fault_usb_garbage_after_bytes = None);
    assert_ok(
        &run({
            let mut c = ibackup(&host);
            c.args(["-u", a, "backup"]).arg(&dir);
            c
        }),
        "backup after the faults",
    );
}

#[test]
fn a_phone_the_system_will_not_open_gets_a_sentence_with_what_to_do() {
    let host = SimHost::start(&[(Profile::Empty, 403)], |_, c| {
        c.fault_usb_open = Some("permission".into())
    });
    let a = &host.udids[0];
    let dir = host.path("backups");
    // Listed (descriptors need no claim), with the transport that found it.
    let o = run({
        let mut c = ibackup(&host);
        c.arg("devices");
        c
    });
    assert_ok(&o, "devices");
    assert!(text(&o).contains(a.as_str()), "{}", text(&o));
    assert!(text(&o).contains("direct USB"), "{}", text(&o));
    let o = run({
        let mut c = ibackup(&host);
        c.args(["-u", a, "full"]).arg(&dir);
        c
    });
    assert_eq!(o.status.code(), Some(12), "{}", text(&o));
    assert!(
        text(&o).contains("udev") && text(&o).contains("--transport usbmuxd"),
        "{}",
        text(&o)
    );

    edit_device(&host.devices[0], |c| c.fault_usb_open = Some("busy".into()));
    let o = run({
        let mut c = ibackup(&host);
        c.args(["-u", a, "full"]).arg(&dir);
        c
    });
    assert_eq!(o.status.code(), Some(12), "{}", text(&o));
    assert!(
        text(&o).contains("Another program holds it")
            && text(&o).contains("systemctl stop usbmuxd"),
        "{}",
        text(&o)
    );

    // auto picks usbmuxd when its socket answers: the same phone backs up.
    edit_device(&host.devices[0], |c| c.fault_usb_open = None);
    let o = run({
        let mut c = ibackup(&host);
        c.env("IBACKUP_TRANSPORT", "auto").arg("devices");
        c
    });
    assert_ok(&o, "devices with auto");
    assert!(text(&o).contains("usbmuxd"), "{}", text(&o));
}

#[test]
fn a_bad_transport_name_is_a_usage_error() {
    let host = SimHost::start(&[(Profile::Empty, 404)], |_, _| {});
    let o = run({
        let mut c = ibackup(&host);
        c.env("IBACKUP_TRANSPORT", "bluetooth").arg("devices");
        c
    });
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("auto, usbmuxd or usb"), "{}", text(&o));
}
