//! What ships beside the binary stays in step with it: man pages and
//! completions made from the command-line definitions, the systemd units
//! and the launchd plist in `dist/`, and `ibackup help exit-codes`.

use std::path::{Path, PathBuf};
use std::process::Command;

use ibackup_suite::{assert_ok, run, text};

fn ibackup() -> Command {
    Command::new(env!("CARGO_BIN_EXE_ibackup"))
}

fn dist() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../dist")
}

/// The visible commands, from `ibackup --help`.
fn commands() -> Vec<String> {
    let o = run({
        let mut c = ibackup();
        c.arg("--help");
        c
    });
    let out = String::from_utf8_lossy(&o.stdout).to_string();
    out.lines()
        .skip_while(|l| !l.starts_with("Commands:"))
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .filter_map(|l| l.split_whitespace().next().map(str::to_string))
        .filter(|c| c != "help")
        .collect()
}

#[test]
fn the_man_pages_in_dist_are_those_the_binary_makes() {
    let t = tempfile::tempdir().unwrap();
    assert_ok(
        &run({
            let mut c = ibackup();
            c.arg("man").arg(t.path());
            c
        }),
        "ibackup man",
    );
    let listing = |d: &Path| {
        let mut v: Vec<String> = std::fs::read_dir(d)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    };
    let made = listing(t.path());
    let shipped = listing(&dist().join("man"));
    let stale = "dist/man is stale: run `cargo run -p ibackup -- man dist/man` and commit it";
    assert_eq!(made, shipped, "{stale}");
    for name in &made {
        assert!(
            std::fs::read(t.path().join(name)).unwrap()
                == std::fs::read(dist().join("man").join(name)).unwrap(),
            "{name}: {stale}"
        );
    }
    let commands = commands();
    assert!(commands.len() > 15, "{commands:?}");
    for c in &commands {
        assert!(made.contains(&format!("ibackup-{c}.1")), "no page for {c}");
    }
}

#[test]
fn completions_know_every_command_in_every_shell() {
    let commands = commands();
    for shell in ["bash", "zsh", "fish", "powershell", "elvish"] {
        let o = run({
            let mut c = ibackup();
            c.args(["completions", shell]);
            c
        });
        assert_ok(&o, shell);
        let script = String::from_utf8_lossy(&o.stdout);
        for c in &commands {
            assert!(script.contains(c.as_str()), "{shell} completion lacks {c}");
        }
        assert!(script.contains("transport"), "{shell}: flags too");
    }
    let o = run({
        let mut c = ibackup();
        c.args(["completions", "tcsh"]);
        c
    });
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
}

#[test]
fn help_exit_codes_tells_every_code() {
    let o = run({
        let mut c = ibackup();
        c.args(["help", "exit-codes"]);
        c
    });
    assert_ok(&o, "help exit-codes");
    let t = String::from_utf8_lossy(&o.stdout);
    for code in (0..=17).chain([130, 141]) {
        assert!(t.contains(&format!("\n{code:>4}  ")), "{code}: {t}");
    }
}

/// `systemd-analyze verify` with the units' ibackup pointed at the built
/// binary (it checks that ExecStart is executable); warnings count as
/// failures.
fn verify_units(user: bool, units: &[&str], from: &Path) {
    let Ok(v) = Command::new("systemd-analyze").arg("--version").output() else {
        eprintln!("SKIP: systemd-analyze is not installed");
        return;
    };
    assert!(v.status.success());
    let t = tempfile::tempdir().unwrap();
    let bin = env!("CARGO_BIN_EXE_ibackup");
    let mut paths = Vec::new();
    for u in units {
        let text = std::fs::read_to_string(from.join(u))
            .unwrap()
            .replace("/usr/local/bin/ibackup", bin)
            .replace("%h/.cargo/bin/ibackup", bin);
        let p = t.path().join(u);
        std::fs::write(&p, text).unwrap();
        paths.push(p);
    }
    let runtime = t.path().join("runtime");
    std::fs::create_dir(&runtime).unwrap();
    let mut c = Command::new("systemd-analyze");
    if user {
        c.arg("--user").env("XDG_RUNTIME_DIR", &runtime);
    }
    c.args(["verify", "--man=no"]).args(&paths);
    let o = c.output().unwrap();
    assert!(
        o.status.success() && o.stderr.is_empty() && o.stdout.is_empty(),
        "{units:?}: {}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
}

#[test]
fn the_systemd_units_verify() {
    let d = dist().join("systemd");
    verify_units(false, &["ibackup.service", "ibackup.timer"], &d);
    verify_units(false, &["ibackup-watch.service"], &d);
    verify_units(true, &["ibackup.service", "ibackup.timer"], &d.join("user"));
}

#[test]
fn the_launchd_plist_is_a_plist_launchd_can_run() {
    let p = dist().join("launchd/org.ibackup.nightly.plist");
    let v = plist::Value::from_file(&p).expect("a well-formed plist");
    let d = v.as_dictionary().expect("a dictionary");
    assert_eq!(
        d.get("Label").and_then(|l| l.as_string()),
        Some("org.ibackup.nightly")
    );
    let args: Vec<&str> = d
        .get("ProgramArguments")
        .and_then(|a| a.as_array())
        .expect("ProgramArguments")
        .iter()
        .map(|a| a.as_string().expect("strings"))
        .collect();
    assert!(args[0].ends_with("/ibackup"), "{args:?}");
    // The arguments are ibackup's own: the binary accepts them.
    let o = run({
        let mut c = ibackup();
        c.args(&args[1..]).arg("--help");
        c
    });
    assert_ok(&o, "the plist's command line");
    let when = d
        .get("StartCalendarInterval")
        .and_then(|w| w.as_dictionary())
        .expect("a calendar interval");
    assert!(when.get("Hour").and_then(|h| h.as_unsigned_integer()) < Some(24));
    // And Python's plist reader, the format's other implementation, agrees.
    if let Ok(o) = Command::new("python3")
        .args([
            "-c",
            "import plistlib,sys; d=plistlib.load(open(sys.argv[1],'rb')); print(d['Label'])",
        ])
        .arg(&p)
        .output()
    {
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        assert_eq!(
            String::from_utf8_lossy(&o.stdout).trim(),
            "org.ibackup.nightly"
        );
    }
}

#[test]
fn json_log_lines_are_one_object_per_run_for_log_collectors() {
    let t = tempfile::tempdir().unwrap();
    let log = t.path().join("ibackup.log");
    let config = t.path().join("config.toml");
    std::fs::write(
        &config,
        format!(
            "log_file = {:?}\nlog_format = \"json\"\n",
            log.to_str().unwrap()
        ),
    )
    .unwrap();
    // A run that works and one that fails, both from the configuration.
    let o = run({
        let mut c = ibackup();
        c.arg("--config").arg(&config).args(["completions", "bash"]);
        c
    });
    assert_ok(&o, "completions");
    let o = run({
        let mut c = ibackup();
        c.arg("--config")
            .arg(&config)
            .arg("verify")
            .arg(t.path().join("no-such-backup"));
        c
    });
    assert!(!o.status.success());
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(&log)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).expect("each line one JSON object"))
        .collect();
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert_eq!(lines[0]["ok"], true);
    assert_eq!(lines[0]["command"], "completions");
    assert_eq!(lines[1]["ok"], false);
    assert_eq!(lines[1]["exit_code"], o.status.code().unwrap());
    assert!(lines[1]["error"]
        .as_str()
        .unwrap()
        .contains("no-such-backup"));
    let time = lines[0]["time"].as_str().unwrap();
    assert!(
        time.len() == 20 && time.ends_with('Z') && time.as_bytes()[10] == b'T',
        "{time}"
    );
    // The flag overrides the configuration: text again.
    let o = run({
        let mut c = ibackup();
        c.arg("--config")
            .arg(&config)
            .args(["--log-format", "text", "completions", "zsh"]);
        c
    });
    assert_ok(&o, "completions zsh");
    let last = std::fs::read_to_string(&log).unwrap();
    let last = last.lines().last().unwrap();
    assert!(last.contains(" UTC completions - ok"), "{last}");
}
