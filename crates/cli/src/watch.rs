//! `ibackup watch`: the engine's watcher, with the configuration's
//! per-device settings, reporting each step on the terminal, as JSON lines,
//! and in the log file.

use std::path::Path;
use std::time::Duration;

use ibackup_engine::backup::Options;
use ibackup_engine::watch::{self, Note, WatchOptions};
use ibackup_engine::EngineError;
use ibackup_store::categories::Selection;
use ibackup_transport::Transport;
use serde_json::json;

use crate::{
    attempts, cfg, config, exit, human_bytes, log_line, passwords, Cli, KeepArgs, PasswordArgs,
    Report,
};

pub fn run(
    cli: &Cli,
    mux: &dyn Transport,
    dir: &Path,
    every: Option<&str>,
    keep: &KeepArgs,
    pw: &PasswordArgs,
) -> Result<(), EngineError> {
    let every = match every.or(cfg().every.as_deref()) {
        Some(e) => config::parse_duration(e)?,
        None => Duration::from_secs(24 * 3600),
    };
    let rules = keep.keep();
    // Check every device's settings now, not at 3 a.m.
    for (udid, d) in &cfg().devices {
        Selection::parse(&d.only, &[])
            .map_err(|e| EngineError::Usage(format!("device {udid} in the configuration: {e}")))?;
    }
    let opts = WatchOptions {
        every,
        keep: rules,
        network: cli.dev.network,
        recheck: Duration::from_secs(60).min(every),
        retry_after: Duration::from_secs(600).min(every),
    };
    let default_pw = pw.password_file.clone();
    let trust = cli.trust();
    let options_for = move |udid: &str| -> Option<Options> {
        let d = cfg().device(udid);
        if d.skip || cli.udid.as_deref().is_some_and(|u| u != udid) {
            return None;
        }
        let selection = Selection::parse(&d.only, &[]).ok()?;
        let file = d.password_file.clone().or(default_pw.clone());
        let password = if selection.is_all() {
            None
        } else {
            passwords::given(file.as_deref(), Some(udid)).ok().flatten()
        };
        Some(Options {
            full: false,
            trust_wait: trust,
            selection,
            password,
            check_content: false,
        })
    };
    let say = |text: String, value: serde_json::Value| {
        if cli.json {
            println!("{value}");
        } else if !cli.quiet {
            eprintln!("{text}");
        }
        log_line(cli, &text, value);
    };
    let mut note = |n: Note| match n {
        Note::Listening => say(
            format!(
                "watching {} for devices (backing up when the last backup is older than {})",
                dir.display(),
                human_duration(every)
            ),
            json!({"event": "listening"}),
        ),
        Note::UsbmuxdLost(why) => say(
            format!("usbmuxd went away ({why}); reconnecting"),
            json!({"event": "usbmuxd_lost", "error": why}),
        ),
        Note::Attached(u) => say(
            format!("{u} connected"),
            json!({"event": "attached", "udid": u}),
        ),
        Note::Detached(u) => say(
            format!("{u} disconnected"),
            json!({"event": "detached", "udid": u}),
        ),
        Note::NotPaired(u) => say(
            format!("{u} is not paired with this computer; run `ibackup -u {u} pair` once"),
            json!({"event": "not_paired", "udid": u}),
        ),
        Note::Fresh(u, age) => say(
            format!("{u}: last backup {} ago, not due yet", human_duration(age)),
            json!({"event": "fresh", "udid": u, "age_seconds": age.as_secs()}),
        ),
        Note::Starting(u) => say(
            format!("{u}: backing up"),
            json!({"event": "backup_started", "udid": u}),
        ),
        Note::Done(o) => {
            attempts::record(dir, &o.udid, Ok(()));
            say(
                format!(
                    "{}: backup complete, snapshot {}, {} {}, {} received",
                    o.udid,
                    o.snapshot,
                    o.files_received,
                    crate::plural(o.files_received, "file", "files"),
                    human_bytes(o.bytes_received)
                ),
                json!({"event": "backup_done", "udid": o.udid, "snapshot": o.snapshot, "files": o.files_received, "bytes": o.bytes_received, "full": o.full}),
            )
        }
        Note::Failed(u, e) => {
            attempts::record(dir, &u, Err(&e));
            let (code, sentence) = exit::describe(&e);
            let how = if matches!(e, EngineError::Interrupted(_)) {
                "interrupted"
            } else {
                "failed"
            };
            say(
                format!("{u}: backup {how} (exit {code}): {sentence}"),
                json!({"event": "backup_failed", "udid": u, "exit_code": code, "error": sentence}),
            )
        }
        Note::PruneFailed(u, e) => {
            let (code, sentence) = exit::describe(&e);
            say(
                format!("{u}: removing old snapshots failed (exit {code}): {sentence}"),
                json!({"event": "prune_failed", "udid": u, "exit_code": code, "error": sentence}),
            )
        }
        Note::Pruned(u, ids) => say(
            format!(
                "{u}: pruned {} old {}",
                ids.len(),
                crate::plural(ids.len() as u64, "snapshot", "snapshots")
            ),
            json!({"event": "pruned", "udid": u, "removed": ids}),
        ),
    };
    // Progress of a running backup goes to the log lines only when asked.
    let mut report = Report::new(cli.json, true);
    watch::run(mux, dir, &opts, &options_for, &mut note, &mut report);
    // Asked to stop (systemctl stop, Ctrl-C): the watcher's normal end.
    let text = "watch stopped".to_string();
    if cli.json {
        println!("{}", json!({"event": "stopped"}));
    } else if !cli.quiet {
        eprintln!("{text}");
    }
    log_line(cli, &text, json!({"event": "stopped"}));
    Ok(())
}

fn human_duration(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0..=119 => format!("{s}s"),
        120..=7199 => format!("{}m", s / 60),
        7200..=172_799 => format!("{}h", s / 3600),
        _ => format!("{}d", s / 86_400),
    }
}
