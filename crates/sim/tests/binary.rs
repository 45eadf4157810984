//! The `ibackup-sim` command itself: populate a device, serve it, and see
//! usbmuxd list it, follow a pulled cable, and stop when killed.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use ibackup_proto::usbmux::{MuxEvent, SocketAddress};
use ibackup_transport::{DeviceEvents, MuxClient};

#[test]
fn populate_then_serve_lists_the_device_and_reports_an_unplug() {
    let t = tempfile::tempdir().unwrap();
    let dev = t.path().join("phone");
    let o = Command::new(env!("CARGO_BIN_EXE_ibackup-sim"))
        .args([
            "populate",
            dev.to_str().unwrap(),
            "--profile",
            "empty",
            "--seed",
            "5",
        ])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr = format!("127.0.0.1:{port}");
    let mut server = Command::new(env!("CARGO_BIN_EXE_ibackup-sim"))
        .args(["serve", "--listen", &addr, dev.to_str().unwrap()])
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mux = MuxClient::new(SocketAddress::parse(&addr).unwrap());
    let t0 = Instant::now();
    let list = loop {
        match mux.devices() {
            Ok(l) => break l,
            Err(_) if t0.elapsed() < Duration::from_secs(20) => {
                std::thread::sleep(Duration::from_millis(100))
            }
            Err(e) => panic!("the simulator never answered: {e}"),
        }
    };
    assert_eq!(list.len(), 1);
    let mut events = mux.listen().unwrap();
    assert!(
        matches!(events.next_event().unwrap(), MuxEvent::Attached(d) if d.udid == list[0].udid)
    );
    let cfg = dev.join("device.toml");
    let text = std::fs::read_to_string(&cfg).unwrap();
    assert!(text.contains("attached = true"), "{text}");
    std::fs::write(&cfg, text.replace("attached = true", "attached = false")).unwrap();
    assert_eq!(
        events.next_event().unwrap(),
        MuxEvent::Detached(list[0].device_id)
    );
    assert!(
        mux.devices().unwrap().is_empty(),
        "an unplugged device is not listed"
    );
    server.kill().unwrap();
    server.wait().unwrap();
    assert!(
        events.next_event().is_err(),
        "listeners hear usbmuxd go away"
    );
}
