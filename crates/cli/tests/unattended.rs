//! Unattended use: `watch` backs up devices as they come, the config file,
//! the log, `--wait-for-device`.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use ibackup_sim::populate::Profile;
use ibackup_suite::*;

fn ibackup(host: &SimHost) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_ibackup"));
    host.point(&mut c);
    // Never pick up the developer's own configuration.
    c.env("IBACKUP_CONFIG", host.root.path().join("no-config.toml"));
    c
}

fn p(path: &Path) -> &str {
    path.to_str().unwrap()
}

fn snapshot_count(dir: &Path, udid: &str) -> usize {
    std::fs::read_dir(dir.join(".ibackup/snapshots").join(udid))
        .map(|r| {
            r.flatten()
                .filter(|e| e.file_name().to_string_lossy().ends_with(".json"))
                .filter(|e| !e.file_name().to_string_lossy().starts_with("pending"))
                .count()
        })
        .unwrap_or(0)
}

/// A child process killed when the test ends, passed or not.
struct Killed(std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn wait_until(what: &str, secs: u64, f: impl Fn() -> bool) {
    let t = Instant::now();
    while !f() {
        assert!(
            t.elapsed() < Duration::from_secs(secs),
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn watch_backs_up_a_device_when_it_appears_and_skips_it_while_fresh() {
    let host = SimHost::start(&[(Profile::Small, 401), (Profile::Empty, 402)], |_, _| {});
    let (a, b) = (&host.udids[0], &host.udids[1]);
    std::fs::write(host.root.path().join("no-config.toml"), "").unwrap();
    let dir = host.path("backups");
    assert_ok(
        &run({
            let mut c = ibackup(&host);
            c.args(["-u", a, "pair"]);
            c
        }),
        "pair A",
    );
    // B was never paired: watch must leave it alone (no one is there to tap Trust).
    edit_device(&host.devices[0], |c| c.attached = false);

    let log = host.root.path().join("watch.jsonl");
    let mut child = ibackup(&host)
        .args([
            "--json",
            "watch",
            p(&dir),
            "--every",
            "1h",
            "--keep-last",
            "5",
        ])
        .stdout(Stdio::from(std::fs::File::create(&log).unwrap()))
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let events = || std::fs::read_to_string(&log).unwrap_or_default();
    wait_until("listening", 20, || events().contains("\"listening\""));
    wait_until("B reported unpaired", 20, || {
        events().contains(&format!("\"not_paired\",\"udid\":\"{b}\""))
    });

    // A is plugged in: one backup.
    edit_device(&host.devices[0], |c| c.attached = true);
    wait_until("the backup of A", 120, || events().contains("backup_done"));
    assert_eq!(snapshot_count(&dir, a), 1);
    assert_same_tree(
        &backup_tree(&dir.join(a)),
        &device_tree(&host.devices[0].join("fs"), &PLAIN_SKIP),
        "watch's backup",
    );

    // Unplugged and plugged again: still running, and the backup is fresh.
    edit_device(&host.devices[0], |c| c.attached = false);
    wait_until("detach", 20, || events().contains("\"detached\""));
    edit_device(&host.devices[0], |c| c.attached = true);
    wait_until("fresh", 20, || events().contains("\"fresh\""));
    assert!(
        child.try_wait().unwrap().is_none(),
        "watch keeps running: {}",
        events()
    );
    assert_eq!(snapshot_count(&dir, a), 1, "no second backup while fresh");
    assert_eq!(events().matches("backup_done").count(), 1, "{}", events());
    let _ = child.kill();
    let _ = child.wait();
}

#[test]
fn config_file_log_and_wait_for_device() {
    let host = SimHost::start(&[(Profile::Small, 411)], |_, _| {});
    let a = &host.udids[0];
    let dir = host.path("from-config");
    let log = host.root.path().join("ibackup.log");
    let config = host.root.path().join("config.toml");
    std::fs::write(
        &config,
        format!(
            "dir = {:?}\nlog_file = {:?}\n[keep]\nlast = 1\n[devices.{a:?}]\nonly = [\"photos\"]\n",
            p(&dir),
            p(&log)
        ),
    )
    .unwrap();

    // The device appears two seconds after the run starts.
    edit_device(&host.devices[0], |c| c.attached = false);
    let dev = host.devices[0].clone();
    let plug = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_secs(2));
        edit_device(&dev, |c| c.attached = true);
    });
    let o = run({
        let mut c = ibackup(&host);
        c.args(["--config", p(&config), "--wait-for-device", "60s", "backup"]);
        c
    });
    plug.join().unwrap();
    assert_ok(
        &o,
        "backup with DIR from the config, after waiting for the device",
    );
    assert!(
        dir.join(a).join("Manifest.db").is_file(),
        "DIR came from the config file"
    );
    let stored = backup_tree(&dir.join(a));
    assert!(
        !stored.is_empty() && stored.keys().all(|k| k.starts_with("CameraRollDomain")),
        "the device's `only` from the config applies"
    );
    let logged = std::fs::read_to_string(&log).unwrap();
    assert!(logged.contains("backup - ok"), "{logged}");

    // `prune` with no rules given applies the configuration's [keep].
    assert_ok(
        &run({
            let mut c = ibackup(&host);
            c.args(["--config", p(&config), "backup"]);
            c
        }),
        "a second backup",
    );
    assert_eq!(snapshot_count(&dir, a), 2);
    let o = run({
        let mut c = ibackup(&host);
        c.args(["--config", p(&config), "prune"]);
        c
    });
    assert_ok(&o, "prune by the configuration's rules");
    assert_eq!(snapshot_count(&dir, a), 1, "{}", text(&o));

    // A night without the phone: a non-zero exit with the reason, logged.
    edit_device(&host.devices[0], |c| c.attached = false);
    let o = run({
        let mut c = ibackup(&host);
        c.args(["--config", p(&config), "--wait-for-device", "1s", "backup"]);
        c
    });
    assert_eq!(o.status.code(), Some(3), "{}", text(&o));
    let logged = std::fs::read_to_string(&log).unwrap();
    assert!(
        logged.contains("backup - failed (exit 3): No iPhone or iPad is connected"),
        "{logged}"
    );
    // What DIR knows of the phone, with the phone away.
    let o = run({
        let mut c = ibackup(&host);
        c.args(["--config", p(&config), "info", "--dir", p(&dir)]);
        c
    });
    assert_ok(&o, "info --dir without the device");
    let t = text(&o);
    assert!(
        t.contains("not connected") && t.contains("Last backup:") && t.contains("(complete)"),
        "{t}"
    );

    // A typo in the configuration is an error, not silently ignored.
    std::fs::write(&config, "dirr = \"/x\"\n").unwrap();
    let o = run({
        let mut c = ibackup(&host);
        c.args(["--config", p(&config), "devices"]);
        c
    });
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("dirr"), "{}", text(&o));
}

/// `ibackup-sim`, built beside `ibackup` (its own package's test makes cargo build it).
fn sim_binary() -> std::path::PathBuf {
    let p = Path::new(env!("CARGO_BIN_EXE_ibackup"))
        .with_file_name(format!("ibackup-sim{}", std::env::consts::EXE_SUFFIX));
    assert!(
        p.is_file(),
        "{} is missing: run the whole workspace's tests (cargo test --workspace)",
        p.display()
    );
    p
}

#[test]
fn watch_survives_usbmuxd_restarting() {
    let t = tempfile::tempdir().unwrap();
    let dev = t.path().join("phone");
    ibackup_sim::populate::populate(&dev, Profile::Small, 421).unwrap();
    let udid = ibackup_sim::device::DeviceConfig::load(&dev).unwrap().udid;
    std::fs::write(t.path().join("none.toml"), "").unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr = format!("127.0.0.1:{port}");
    let serve = || {
        Killed(
            Command::new(sim_binary())
                .args(["serve", "--listen", &addr, dev.to_str().unwrap()])
                .stderr(Stdio::null())
                .spawn()
                .unwrap(),
        )
    };
    let ib = || {
        let mut c = Command::new(env!("CARGO_BIN_EXE_ibackup"));
        c.env("USBMUXD_SOCKET_ADDRESS", &addr);
        c.env("IBACKUP_CONFIG", t.path().join("none.toml"));
        c
    };
    let usbmuxd = serve();
    wait_until("the simulator", 20, || {
        ib().arg("devices").output().unwrap().status.success()
    });
    assert_ok(
        &run({
            let mut c = ib();
            c.arg("pair");
            c
        }),
        "pair",
    );
    drop(usbmuxd);

    // usbmuxd is down when watch starts: it keeps trying.
    let dir = t.path().join("backups");
    std::fs::create_dir_all(&dir).unwrap();
    let log = t.path().join("watch.jsonl");
    let mut watch = Killed(
        ib().args(["--json", "watch", dir.to_str().unwrap(), "--every", "1h"])
            .stdout(Stdio::from(std::fs::File::create(&log).unwrap()))
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let events = || std::fs::read_to_string(&log).unwrap_or_default();
    wait_until("a report that usbmuxd is down", 20, || {
        events().contains("usbmuxd_lost")
    });
    let usbmuxd = serve();
    wait_until("the backup", 120, || events().contains("backup_done"));
    assert!(dir.join(&udid).join("Manifest.db").is_file());

    // usbmuxd restarts: watch reconnects and finds the backup fresh.
    drop(usbmuxd);
    wait_until("the lost connection", 20, || {
        events().matches("usbmuxd_lost").count() >= 2
    });
    let _usbmuxd = serve();
    wait_until("listening again", 40, || {
        events().matches("\"listening\"").count() >= 2
    });
    wait_until("fresh", 20, || events().contains("\"fresh\""));
    assert!(
        watch.0.try_wait().unwrap().is_none(),
        "watch is still running: {}",
        events()
    );
    assert_eq!(events().matches("backup_done").count(), 1);
}
