//! Backup passwords in the system keychain, against a real Secret Service:
//! gnome-keyring started for the test in a D-Bus session of its own
//! (`dbus-run-session`), not a mock. An encrypted nightly backup then runs
//! with no password anywhere but the keychain.

use std::process::Command;

use ibackup_sim::populate::Profile;
use ibackup_suite::*;

/// Whether the Secret Service can be started here; in CI it must.
fn secret_service_here() -> bool {
    let have = |p: &str| {
        Command::new(p)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
    };
    let ok = have("dbus-run-session") && have("gnome-keyring-daemon");
    if !ok {
        if std::env::var_os("CI").is_some() {
            panic!("CI must install gnome-keyring and dbus (dbus-run-session)");
        }
        eprintln!("SKIP: gnome-keyring or dbus-run-session is not installed");
    }
    ok
}

#[test]
fn an_encrypted_nightly_backup_takes_its_password_from_the_secret_service() {
    if !secret_service_here() {
        return;
    }
    let host = SimHost::start(&[(Profile::Small, 501)], |_, c| {
        c.backup_kdf_iterations = 10_000;
        c.backup_password = Some("keychain-pw".into());
    });
    let a = &host.udids[0];
    let dir = host.path("backups");
    let home = host.path("home");
    let ib = env!("CARGO_BIN_EXE_ibackup");
    // One D-Bus session for every step, each step's exit code on a line.
    let script = format!(
        r#"
echo 'store-pass' | gnome-keyring-daemon --unlock --components=secrets >/dev/null 2>&1
step() {{ name=$1; shift; "$@" >"$HOME/$name.out" 2>&1; echo "$name $?"; }}
IBACKUP_PASSWORD=keychain-pw step save {ib} -u {a} password save
step full {ib} -q -u {a} full {dir}
step only {ib} -q -u {a} backup --only photos {dir}
step verify {ib} -q verify {dir}/{a}
step forget {ib} -u {a} password forget
step verify_after {ib} -q verify {dir}/{a}
"#,
        dir = dir.display()
    );
    let mut c = Command::new("timeout");
    c.args(["600", "dbus-run-session", "--", "bash", "-c", &script]);
    host.point(&mut c);
    c.env("HOME", &home)
        .env("XDG_DATA_HOME", home.join(".local/share"))
        .env("XDG_CONFIG_HOME", home.join(".config"))
        .env("IBACKUP_CONFIG", home.join("none.toml"))
        .env_remove("IBACKUP_PASSWORD");
    std::fs::write(home.join("none.toml"), "").unwrap();
    let o = run(c);
    let out = String::from_utf8_lossy(&o.stdout).to_string();
    let rc = |step: &str| -> i32 {
        out.lines()
            .find_map(|l| l.strip_prefix(&format!("{step} ")))
            .and_then(|c| c.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {step} in {out}\n{}", text(&o)))
    };
    let said = |step: &str| std::fs::read_to_string(home.join(format!("{step}.out"))).unwrap();
    assert_eq!(rc("save"), 0, "{}", said("save"));
    assert_eq!(rc("full"), 0, "{}", said("full"));
    // --only needs the password to filter the encrypted index: from the
    // keychain, nothing else gives it.
    assert_eq!(rc("only"), 0, "{}", said("only"));
    assert_eq!(rc("verify"), 0, "{}", said("verify"));
    assert_eq!(rc("forget"), 0, "{}", said("forget"));
    assert!(
        said("forget").contains("no longer holds"),
        "{}",
        said("forget")
    );
    assert_eq!(rc("verify_after"), 13, "{}", said("verify_after"));
}

#[test]
fn a_machine_with_no_keychain_is_told_to_use_a_password_file() {
    let o = run({
        let mut c = Command::new(env!("CARGO_BIN_EXE_ibackup"));
        c.args(["-u", "00008110-0000000000000001", "password", "save"])
            .env("IBACKUP_PASSWORD", "x")
            // No session bus: a server with no desktop session.
            .env("DBUS_SESSION_BUS_ADDRESS", "unix:path=/nonexistent/bus")
            .env("IBACKUP_CONFIG", "/dev/null");
        c
    });
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("--password-file"), "{}", text(&o));
    let o = run({
        let mut c = Command::new(env!("CARGO_BIN_EXE_ibackup"));
        c.args(["password", "forget"])
            .env("IBACKUP_CONFIG", "/dev/null");
        c
    });
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("-u UDID"), "{}", text(&o));
}
