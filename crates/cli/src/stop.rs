//! Ctrl-C and stop signals (SIGINT, SIGTERM from `systemctl stop` or a
//! shutdown, SIGHUP; Ctrl-C and Ctrl-Break on Windows).
//!
//! A command that talks to a device stops the way it would after a pulled
//! cable: every connection is hung up (the run's [`Cancel`], which the
//! transport registers its connections with), the engine drops what
//! this run staged and releases its lock, and the command ends with its
//! usual report, log line and exit code (130, "interrupted"). `extract`
//! and `checkout` wind down too: extract finishes the files it is writing
//! and begins no other, checkout removes the folder it was building, so
//! neither leaves partial files behind. If that takes longer than
//! [`GRACE`], or a second signal comes, the process ends at once, which is
//! still safe: what was staged is cleared by the next run. The other
//! local commands (`verify`, `ls`, `prune`, ...) end at once: each of them
//! already survives being killed.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

use ibackup_engine::error::stopped;
use ibackup_engine::EngineError;
use ibackup_transport::Cancel;

use crate::{Cli, Cmd};

/// How long a device command may take to wind down after a signal.
const GRACE: Duration = Duration::from_secs(30);

struct Plan {
    cli: &'static Cli,
    /// Whether the command talks to a device.
    device: bool,
    /// Whether the command winds down (device commands, extract,
    /// checkout) or ends at once.
    wind_down: bool,
    /// What an interrupted run of it leaves ([`stopped`]).
    left: &'static str,
}

static PLAN: OnceLock<Plan> = OnceLock::new();
/// The run's stop handle: the signal handler is the one place that must
/// reach it without being handed it.
static CANCEL: OnceLock<Cancel> = OnceLock::new();

/// The run's stop handle, for the transport and whatever else must hear a
/// stop.
pub fn cancel() -> Cancel {
    CANCEL.get_or_init(Cancel::new).clone()
}
static SIGNALS: AtomicU32 = AtomicU32::new(0);

/// What an interruption of `cmd` leaves, for its message.
pub fn left_by(cmd: &Cmd) -> &'static str {
    match cmd {
        Cmd::Full { .. } | Cmd::Backup { .. } | Cmd::Watch { .. } => stopped::BACKUP,
        Cmd::Restore { .. } => stopped::RESTORE,
        Cmd::Encryption { .. } => stopped::ENCRYPTION,
        Cmd::Extract { .. } => stopped::EXTRACT,
        Cmd::Photos { .. } => stopped::PHOTOS,
        Cmd::Checkout { .. } => stopped::CHECKOUT,
        _ => stopped::OTHER,
    }
}

/// Whether `cmd` talks to a device (and so winds down on a signal).
fn talks_to_a_device(cmd: &Cmd) -> bool {
    !matches!(
        cmd,
        Cmd::Verify { .. }
            | Cmd::Ls { .. }
            | Cmd::Extract { .. }
            | Cmd::Snapshots { .. }
            | Cmd::Checkout { .. }
            | Cmd::Prune { .. }
            | Cmd::Completions { .. }
            | Cmd::Password { .. }
            | Cmd::Man { .. }
    )
}

/// Whether the command being run talks to a device (false before
/// [`install`]).
pub fn talks_to_a_device_now() -> bool {
    PLAN.get().is_some_and(|p| p.device)
}

/// Handle the stop signals for the rest of the run of `cli`'s command.
pub fn install(cli: &'static Cli) {
    let device = talks_to_a_device(&cli.cmd);
    let _ = PLAN.set(Plan {
        cli,
        device,
        wind_down: device || matches!(cli.cmd, Cmd::Extract { .. } | Cmd::Checkout { .. }),
        left: left_by(&cli.cmd),
    });
    if let Err(e) = ctrlc::set_handler(on_signal) {
        log::warn!("Ctrl-C will end ibackup without its report: {e}");
    }
}

fn on_signal() {
    let Some(plan) = PLAN.get() else {
        std::process::exit(130)
    };
    let n = SIGNALS.fetch_add(1, Ordering::SeqCst) + 1;
    if !plan.wind_down || n > 1 {
        end_now(plan);
    }
    cancel().stop();
    if !plan.cli.quiet && !plan.cli.json {
        // The crate's eprintln: a terminal gone with a hang-up (SIGHUP) is
        // no panic.
        eprintln!("\nibackup: stopping; press Ctrl-C again to end at once");
    }
    std::thread::spawn(|| {
        std::thread::sleep(GRACE);
        if let Some(plan) = PLAN.get() {
            end_now(plan);
        }
    });
}

/// Report the interruption as the command's failure and exit.
fn end_now(plan: &Plan) -> ! {
    // Ended without winding down, a backup leaves its staging folder.
    let left = if plan.left != stopped::BACKUP {
        plan.left
    } else if ibackup_engine::staging::COMMITTING.load(Ordering::SeqCst) {
        stopped::BACKUP_MID_COMMIT
    } else {
        stopped::BACKUP_AT_ONCE
    };
    let code = crate::report_failure(plan.cli, &EngineError::Interrupted(left));
    std::process::exit(code.into())
}
