//! `ibackup`: back up iPhones and iPads over USB to a disk you own.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use ibackup_engine::backup::{self, Events, Options};
use ibackup_engine::{device, EngineError};
use ibackup_proto::usbmux::SocketAddress;
use ibackup_store::categories::Selection;
use ibackup_transport::usb::UsbTransport;
use ibackup_transport::{MuxClient, Transport};
use serde_json::json;

/// `println!`, but standard output closed under us (`ibackup snapshots |
/// head`) ends the process as a closed pipe ends other Unix tools (exit
/// 141), instead of a panic. (Defined before the modules, so it is the
/// `println!` they see.)
macro_rules! println {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        if let Err(e) = writeln!(std::io::stdout(), $($arg)*) {
            $crate::stdout_failed(e)
        }
    }};
}

/// `eprintln!`, but a standard error that cannot be written (the terminal
/// closed) is ignored rather than a panic.
macro_rules! eprintln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), $($arg)*);
    }};
}

/// Standard output failed: a reader that went away (exit 141, as SIGPIPE
/// would), or another failure of the output the user chose (exit 16). A
/// command working with a device carries on without it: a backup is worth
/// more than its progress lines (`ibackup --json backup | a-monitor` whose
/// monitor died).
pub(crate) fn stdout_failed(e: std::io::Error) {
    if stop::talks_to_a_device_now() {
        return;
    }
    if e.kind() == std::io::ErrorKind::BrokenPipe {
        std::process::exit(141);
    }
    let _ = std::io::Write::write_all(
        &mut std::io::stderr(),
        format!("ibackup: cannot write to standard output: {e}\n").as_bytes(),
    );
    std::process::exit(16);
}

mod attempts;
mod config;
mod data;
mod exit;
mod history;
mod keychain;
mod passwords;
mod shell;
mod simulated;
mod stop;
mod watch;

/// Back up and restore iPhones and iPads over USB.
#[derive(Parser)]
#[command(name = "ibackup", version)]
struct Cli {
    #[command(flatten)]
    dev: DeviceFlags,
    /// The device's UDID; may be left out when exactly one device is connected.
    #[arg(short = 'u', long = "udid", global = true)]
    udid: Option<String>,
    /// Print progress and the result as JSON lines.
    #[arg(long, global = true)]
    json: bool,
    /// Print nothing but errors.
    #[arg(short, long, global = true)]
    quiet: bool,
    /// The configuration file (default: the platform's, see docs/nightly.md).
    #[arg(long, global = true, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Append a line per run (and per watched backup) to this file.
    #[arg(long, global = true, value_name = "FILE")]
    log: Option<PathBuf>,
    /// The log file's lines: `text` (a date and a sentence) or `json` (one
    /// object a line, for log collectors). Default text, or the
    /// configuration's `log_format`.
    #[arg(long, global = true, value_enum)]
    log_format: Option<LogFormat>,
    #[command(subcommand)]
    cmd: Cmd,
}

/// The flags of the commands that talk to a device. Given before the
/// command (`ibackup --simulated full DIR`) or after it; the commands that
/// only read backups neither take nor list them.
#[derive(clap::Args, Debug, Clone, Default)]
struct DeviceFlags {
    /// Use a built-in simulated iPhone instead of usbmuxd (for trying ibackup out).
    #[arg(long)]
    simulated: bool,
    /// Also consider devices usbmuxd sees over Wi-Fi.
    #[arg(long)]
    network: bool,
    /// Seconds to wait for the user to tap Trust on the device (default 120).
    #[arg(long)]
    trust_timeout: Option<u64>,
    /// Wait this long for the device to appear (e.g. 10m) instead of failing at once.
    #[arg(long, value_name = "DURATION")]
    wait_for_device: Option<String>,
    /// Give up on a device that sends and takes nothing for this long (e.g.
    /// 10m; 0 waits for ever). Default 30m: longer than any pause a phone
    /// takes while it prepares a backup.
    #[arg(long, value_name = "DURATION")]
    stall_timeout: Option<String>,
    /// How to reach devices: `usbmuxd` (its socket), `usb` (ibackup speaks
    /// USB itself; no usbmuxd needed), or `auto` (usbmuxd when its socket
    /// answers, else direct USB). Default auto, or the configuration's
    /// `transport`.
    #[arg(long, value_enum)]
    transport: Option<TransportChoice>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TransportChoice {
    Auto,
    Usbmuxd,
    Usb,
}

impl DeviceFlags {
    /// These, with what `after` (given after the command) adds or overrides.
    fn merged(self, after: &DeviceFlags) -> DeviceFlags {
        DeviceFlags {
            simulated: self.simulated || after.simulated,
            network: self.network || after.network,
            trust_timeout: after.trust_timeout.or(self.trust_timeout),
            wait_for_device: after.wait_for_device.clone().or(self.wait_for_device),
            stall_timeout: after.stall_timeout.clone().or(self.stall_timeout),
            transport: after.transport.or(self.transport),
        }
    }
}

impl Cmd {
    /// The device flags given after the command, for those that take them.
    fn device_flags(&self) -> Option<&DeviceFlags> {
        match self {
            Cmd::Devices { dev }
            | Cmd::Pair { dev }
            | Cmd::Validate { dev }
            | Cmd::Unpair { dev }
            | Cmd::Info { dev, .. }
            | Cmd::Full { dev, .. }
            | Cmd::Backup { dev, .. }
            | Cmd::Encryption { dev, .. }
            | Cmd::Restore { dev, .. }
            | Cmd::Photos { dev, .. }
            | Cmd::Watch { dev, .. } => Some(dev),
            Cmd::Ls { .. }
            | Cmd::Extract { .. }
            | Cmd::Export { .. }
            | Cmd::Verify { .. }
            | Cmd::Snapshots { .. }
            | Cmd::Checkout { .. }
            | Cmd::Prune { .. }
            | Cmd::Completions { .. }
            | Cmd::Password { .. }
            | Cmd::Man { .. } => None,
        }
    }
}

impl Cli {
    fn trust(&self) -> Duration {
        Duration::from_secs(self.dev.trust_timeout.unwrap_or(120))
    }

    /// `--stall-timeout`, else the configuration's, else 30 minutes; zero
    /// is no limit.
    fn stall(&self) -> Result<Option<Duration>, EngineError> {
        let d = match &self.dev.stall_timeout {
            Some(s) => config::parse_duration(s)?,
            None => Duration::from_secs(30 * 60),
        };
        Ok((!d.is_zero()).then_some(d))
    }
}

static CONFIG: std::sync::OnceLock<config::Config> = std::sync::OnceLock::new();

fn cfg() -> &'static config::Config {
    CONFIG.get_or_init(config::Config::default)
}

/// DIR as given, else the configuration's `dir`.
fn dir_or_config(d: &Option<PathBuf>) -> Result<PathBuf, EngineError> {
    let dir = d.clone().or_else(|| cfg().dir.clone()).ok_or_else(|| {
        EngineError::Usage(
            "give the backup folder DIR (or set `dir` in the configuration file)".into(),
        )
    })?;
    // Before any device is touched: exit 9, the backup folder unusable.
    ibackup_engine::staging::existing_folder(&dir)?;
    Ok(dir)
}

/// DIR for the commands that write device folders into it or read one by
/// UDID from it (backup, full, watch, restore): the folder holding the
/// backups, not one device's backup folder. Given that by mistake (Finder's
/// `MobileSync/Backup/<UDID>`), a backup would make a second, full backup
/// nested inside it; it is refused, naming the folder to give instead.
fn backups_dir(d: &Option<PathBuf>) -> Result<PathBuf, EngineError> {
    let dir = dir_or_config(d)?;
    if let Some(marker) = ["Manifest.db", "Manifest.plist", "Status.plist"]
        .iter()
        .find(|m| dir.join(m).is_file())
    {
        let parent = std::path::absolute(&dir)
            .ok()
            .and_then(|p| p.parent().map(Path::to_path_buf))
            .unwrap_or_else(|| PathBuf::from(".."));
        return Err(EngineError::Usage(format!(
            "the folder {} is one device's backup folder (it holds {marker}); give the folder that holds the backups: {}",
            dir.display(),
            parent.display()
        )));
    }
    Ok(dir)
}

/// The device to use, waiting for it up to `--wait-for-device`.
fn choose(
    cli: &Cli,
    mux: &dyn Transport,
) -> Result<ibackup_proto::usbmux::DeviceRecord, EngineError> {
    let wait = match &cli.dev.wait_for_device {
        Some(w) => config::parse_duration(w)?,
        None => Duration::ZERO,
    };
    let deadline = Instant::now() + wait;
    let mut told = false;
    loop {
        match device::choose(mux, cli.udid.as_deref(), cli.dev.network) {
            Err(EngineError::NoDevice | EngineError::DeviceNotFound(_))
                if Instant::now() < deadline =>
            {
                if !told && !cli.quiet {
                    eprintln!(
                        "Waiting up to {} for the device to be connected...",
                        cli.dev.wait_for_device.as_deref().unwrap_or("")
                    );
                    told = true;
                }
                std::thread::sleep(Duration::from_millis(500));
            }
            r => return r,
        }
    }
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// List connected devices.
    Devices {
        #[command(flatten)]
        dev: DeviceFlags,
    },
    /// Make this computer trusted by the device (the device asks the user).
    Pair {
        #[command(flatten)]
        dev: DeviceFlags,
    },
    /// Check that the device still trusts this computer.
    Validate {
        #[command(flatten)]
        dev: DeviceFlags,
    },
    /// Make the device forget this computer.
    Unpair {
        #[command(flatten)]
        dev: DeviceFlags,
    },
    /// Name, model, iOS version, storage, backup encryption; with --dir, the last backup there.
    Info {
        /// A backup folder: also show the last backup of this device in it.
        #[arg(long)]
        dir: Option<PathBuf>,
        #[command(flatten)]
        dev: DeviceFlags,
    },
    /// Back up everything, even if an earlier backup could be continued.
    Full {
        /// The backup folder; the backup goes to DIR/<UDID>/ (default: `dir` in the configuration).
        dir: Option<PathBuf>,
        #[command(flatten)]
        dev: DeviceFlags,
        #[command(flatten)]
        only: Only,
        #[command(flatten)]
        pw: PasswordArgs,
    },
    /// Back up; incremental when DIR holds an earlier backup of the device.
    Backup {
        /// The backup folder; the backup goes to DIR/<UDID>/ (default: `dir` in the configuration).
        dir: Option<PathBuf>,
        #[command(flatten)]
        dev: DeviceFlags,
        /// Force a full backup.
        #[arg(long)]
        full: bool,
        /// Before continuing the last backup, read every file of it against
        /// its digest (by default only that each is there, of its size).
        #[arg(long)]
        check_content: bool,
        #[command(flatten)]
        only: Only,
        #[command(flatten)]
        pw: PasswordArgs,
    },
    /// Turn backup encryption on or off, or change its password (on the device).
    /// Only encrypted backups hold Health and Keychain data.
    Encryption {
        /// What to do with the device's backup encryption.
        #[arg(value_enum)]
        action: EncryptionAction,
        #[command(flatten)]
        pw: PasswordArgs,
        /// Read the new password from this file (else IBACKUP_NEW_PASSWORD, else a prompt).
        #[arg(long)]
        new_password_file: Option<PathBuf>,
        #[command(flatten)]
        dev: DeviceFlags,
    },
    /// List the files in a backup.
    Ls {
        /// The backup folder, or one device's backup in it (DIR/<UDID>) (default: `dir` in the configuration).
        dir: Option<PathBuf>,
        #[command(flatten)]
        snap: SnapshotArg,
        #[command(flatten)]
        only: Only,
        #[command(flatten)]
        pw: PasswordArgs,
    },
    /// Copy files out of a backup as OUT/<Domain>/<path>, decrypted, with their times.
    Extract {
        /// The backup folder, or one device's backup in it (DIR/<UDID>) (default: `dir` in the configuration).
        dir: Option<PathBuf>,
        /// Where the files go.
        #[arg(long)]
        to: PathBuf,
        #[command(flatten)]
        snap: SnapshotArg,
        #[command(flatten)]
        only: Only,
        #[command(flatten)]
        pw: PasswordArgs,
    },
    /// Copy the camera roll (photos, Live Photos, videos, edits) over USB into OUT, without a backup; again copies only what is new.
    Photos {
        /// The folder the photos go into (made if needed).
        out: PathBuf,
        /// Sort into OUT/YYYY/MM/ by each file's date (UTC) instead of the phone's folders.
        #[arg(long)]
        by_month: bool,
        #[command(flatten)]
        dev: DeviceFlags,
    },
    /// Write messages (HTML + JSON), contacts (vCard), the calendar (iCalendar) or calls (CSV) out of a backup.
    Export {
        /// What to export.
        #[arg(value_enum)]
        kind: ExportKind,
        /// The backup folder, or one device's backup in it (DIR/<UDID>) (default: `dir` in the configuration).
        dir: Option<PathBuf>,
        /// The folder the export goes into (made if needed).
        #[arg(long)]
        to: PathBuf,
        #[command(flatten)]
        snap: SnapshotArg,
        #[command(flatten)]
        pw: PasswordArgs,
    },
    /// Restore a backup to a device (-u TARGET): everything, or only --only/--domain.
    Restore {
        /// The backup folder holding the backup to restore (default: `dir` in the configuration).
        dir: Option<PathBuf>,
        #[command(flatten)]
        dev: DeviceFlags,
        /// Restore the backup of this device (default: the target's own).
        #[arg(long)]
        source: Option<String>,
        #[command(flatten)]
        snap: SnapshotArg,
        #[command(flatten)]
        only: Only,
        /// Leave system files alone; restore app data only.
        #[arg(long)]
        no_system: bool,
        /// Do not restart the device afterwards.
        #[arg(long)]
        no_reboot: bool,
        /// Also restore the backup's device settings.
        #[arg(long)]
        settings: bool,
        #[command(flatten)]
        pw: PasswordArgs,
    },
    /// Check a backup: index readable, every file present with the right size and digest.
    /// Exits 0 only when the backup is sound.
    Verify {
        /// The backup folder, or one device's backup in it (DIR/<UDID>) (default: `dir` in the configuration).
        dir: Option<PathBuf>,
        /// Only that every file is there and of its size; read no content.
        #[arg(long)]
        quick: bool,
        #[command(flatten)]
        snap: SnapshotArg,
        #[command(flatten)]
        pw: PasswordArgs,
    },
    /// Stay running: back up each paired device when it is connected and its
    /// last backup is older than --every; apply the --keep rules after each.
    Watch {
        /// The backup folder; each device's backup goes to DIR/<UDID>/ (default: `dir` in the configuration).
        dir: Option<PathBuf>,
        #[command(flatten)]
        dev: DeviceFlags,
        /// How old the last backup may be before a connected device is backed up again.
        #[arg(long, value_name = "DURATION")]
        every: Option<String>,
        #[command(flatten)]
        keep: KeepArgs,
        #[command(flatten)]
        pw: PasswordArgs,
    },
    /// List the snapshots (every successful backup is kept as one).
    Snapshots {
        /// The backup folder (default: `dir` in the configuration).
        dir: Option<PathBuf>,
    },
    /// Copy a snapshot out as OUT/<UDID>/, a Finder-format folder other tools restore.
    Checkout {
        /// The backup folder.
        dir: PathBuf,
        /// Where the copy goes, as OUT/<UDID>/ (made if missing).
        out: PathBuf,
        #[command(flatten)]
        snap: SnapshotArg,
    },
    /// Remove old snapshots by the rules given; never the newest. Frees only
    /// what no remaining snapshot needs.
    Prune {
        /// The backup folder (default: `dir` in the configuration).
        dir: Option<PathBuf>,
        #[command(flatten)]
        keep: KeepArgs,
        /// Say what would be removed, remove nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Keep a device's backup password in the system keychain (Secret
    /// Service, macOS Keychain, Windows Credential Manager), or forget it;
    /// commands that need the password then find it there.
    Password {
        #[command(subcommand)]
        action: PasswordAction,
    },
    /// Print the completion script for a shell (e.g. `ibackup completions
    /// bash > ~/.local/share/bash-completion/completions/ibackup`).
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Write the man pages (ibackup.1, ibackup-full.1, ...) to DIR.
    Man {
        #[arg(default_value = ".")]
        dir: PathBuf,
    },
}

#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
enum ExportKind {
    /// One HTML page per conversation, attachments beside them, and messages.json.
    Messages,
    /// contacts.vcf (vCard 3.0), with photos.
    Contacts,
    /// calendar.ics (iCalendar).
    Calendar,
    /// calls.csv, the call history.
    Calls,
}

#[derive(clap::Args, Debug, Clone, Default)]
struct SnapshotArg {
    /// A snapshot ID from `ibackup snapshots` (default: the newest).
    #[arg(long, value_name = "ID")]
    snapshot: Option<String>,
}

#[derive(clap::Args, Debug, Clone, Default)]
struct KeepArgs {
    /// Keep the N newest snapshots.
    #[arg(long, value_name = "N")]
    keep_last: Option<usize>,
    /// Keep the newest snapshot of each of the last N days that have one.
    #[arg(long, value_name = "N")]
    keep_daily: Option<usize>,
    /// The same per week (weeks start on Monday, UTC).
    #[arg(long, value_name = "N")]
    keep_weekly: Option<usize>,
    /// The same per month.
    #[arg(long, value_name = "N")]
    keep_monthly: Option<usize>,
}

impl KeepArgs {
    /// The rules given, else the configuration's `[keep]` (for `prune`
    /// and `watch` alike).
    fn keep(&self) -> ibackup_engine::snapshots::Keep {
        let given = ibackup_engine::snapshots::Keep {
            last: self.keep_last.unwrap_or(0),
            daily: self.keep_daily.unwrap_or(0),
            weekly: self.keep_weekly.unwrap_or(0),
            monthly: self.keep_monthly.unwrap_or(0),
        };
        if !given.is_empty() {
            return given;
        }
        let k = cfg().keep;
        ibackup_engine::snapshots::Keep {
            last: k.last.unwrap_or(0),
            daily: k.daily.unwrap_or(0),
            weekly: k.weekly.unwrap_or(0),
            monthly: k.monthly.unwrap_or(0),
        }
    }
}

#[derive(clap::ValueEnum, Clone, Copy, Debug)]
enum EncryptionAction {
    /// Turn it on with a new password (the device may ask for its passcode).
    On,
    /// Turn it off; needs the current password.
    Off,
    /// Change the password; needs the current one and a new one.
    Change,
}

#[derive(Subcommand, Debug, Clone)]
enum PasswordAction {
    /// Save the backup password of the device given with -u (from
    /// --password-file, IBACKUP_PASSWORD or a prompt).
    Save {
        #[command(flatten)]
        pw: PasswordArgs,
    },
    /// Forget the device's backup password.
    Forget,
}

#[derive(clap::Args, Debug, Clone)]
struct PasswordArgs {
    /// Read the backup password from this file (else IBACKUP_PASSWORD, else a prompt).
    #[arg(long)]
    password_file: Option<PathBuf>,
}

#[derive(clap::Args, Debug, Clone)]
struct Only {
    /// Only these categories, comma-separated: photos, messages, contacts,
    /// call-history, notes, calendars, voice-memos, safari, whatsapp, health,
    /// keychain, app:<bundle id> (see docs/categories.md).
    #[arg(long, value_name = "CATEGORIES")]
    only: Vec<String>,
    /// Only this backup domain (repeatable; a trailing * matches a prefix).
    #[arg(long, value_name = "DOMAIN")]
    domain: Vec<String>,
}

impl Only {
    fn selection(&self) -> Result<Selection, EngineError> {
        Selection::parse(&self.only, &self.domain).map_err(|e| match e {
            ibackup_store::StoreError::Record(m) => EngineError::Usage(m),
            other => EngineError::Usage(other.to_string()),
        })
    }
}

/// DIR/<UDID>/ when DIR holds backups (choosing with -u when several do),
/// or DIR itself when it is one.
fn backup_folder(cli: &Cli, dir: &Path, snap: &SnapshotArg) -> Result<PathBuf, EngineError> {
    let newest = newest_folder(cli, dir)?;
    let Some(id) = &snap.snapshot else {
        return Ok(newest);
    };
    if newest == dir {
        return Err(EngineError::Usage(format!(
            "give the backup folder that holds {} (its parent) with --snapshot",
            dir.display()
        )));
    }
    let (Some(root), Some(udid)) = (newest.parent(), newest.file_name()) else {
        return Err(EngineError::Usage(format!(
            "{} has no snapshots",
            dir.display()
        )));
    };
    Ok(ibackup_engine::snapshots::find(root, &udid.to_string_lossy(), id)?.path)
}

/// The devices with backups in DIR (`-u` narrows to one).
fn devices_in(cli: &Cli, dir: &Path) -> Result<Vec<String>, EngineError> {
    if let Some(u) = &cli.udid {
        return Ok(vec![u.clone()]);
    }
    let mut v: Vec<String> = std::fs::read_dir(dir)?
        .flatten()
        .filter(|e| e.path().join("Manifest.db").is_file())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    Ok(v)
}

/// Why `dir` holds no backup to read: a device's folder (or `dir`
/// itself) with a backup's other files but no Manifest.db is a damaged
/// backup; anything else is the wrong folder (a mistyped path, an empty
/// disk), which `verify` and `ibackup full` would not help with.
fn no_backup_in(dir: &Path) -> EngineError {
    let looks_like_a_backup = |p: &Path| {
        ["Manifest.plist", "Info.plist", "Status.plist"]
            .iter()
            .any(|f| p.join(f).is_file())
    };
    let subfolders = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path());
    match std::iter::once(dir.to_path_buf())
        .chain(subfolders)
        .find(|p| looks_like_a_backup(p))
    {
        Some(broken) => EngineError::Damaged(format!(
            "{} has no Manifest.db, the index of its files",
            broken.display()
        )),
        None => EngineError::Usage(format!(
            "there is no backup in {}: give the folder backups were made into (it holds a folder for each device, named by its UDID) or one of those folders",
            dir.display()
        )),
    }
}

fn newest_folder(cli: &Cli, dir: &Path) -> Result<PathBuf, EngineError> {
    if dir.join("Manifest.db").is_file() {
        return Ok(dir.to_path_buf());
    }
    let mut found = devices_in(cli, dir)?;
    match found.len() {
        1 => Ok(dir.join(found.remove(0))),
        0 => Err(no_backup_in(dir)),
        _ => Err(EngineError::Usage(format!(
            "{} holds backups of several devices ({}); choose one with -u UDID",
            dir.display(),
            found.join(", ")
        ))),
    }
}

fn verify(
    cli: &Cli,
    dir: &Path,
    snap: &SnapshotArg,
    password_file: Option<&Path>,
    quick: bool,
) -> Result<(), EngineError> {
    let backup = backup_folder(cli, dir, snap)?;
    let pw = passwords::given(password_file, data::udid_of(&backup).as_deref())?;
    let scratch = ibackup_store::scratch("verify")?;
    let digests = ibackup_engine::snapshots::digests_for(&backup);
    let r = ibackup_store::verify::verify_with(
        &backup,
        scratch.path(),
        &ibackup_store::verify::Options {
            password: pw.as_deref(),
            digests: digests.as_deref(),
            quick,
        },
    )?;
    if cli.json {
        println!(
            "{}",
            json!({"event": "verify", "ok": r.is_sound(), "files": r.files, "bytes": r.bytes, "encrypted": r.encrypted, "content_checked": r.content_checked, "content_unchecked": r.content_unchecked, "unchecked_files": r.unchecked_files, "problems": r.problems, "warnings": r.warnings})
        );
    } else if !cli.quiet {
        for p in &r.problems {
            println!("problem: {}", data::escaped(p));
        }
        for w in &r.warnings {
            println!("warning: {}", data::escaped(w));
        }
        println!(
            "{}: {} {}, {}{}; {}",
            backup.display(),
            r.files,
            plural(r.files, "file", "files"),
            human_bytes(r.bytes),
            if r.encrypted { ", encrypted" } else { "" },
            if quick {
                "presence and size checked".to_string()
            } else {
                format!("content of {} read and checked", r.content_checked)
            }
        );
    }
    if r.is_sound() {
        if !cli.quiet && !cli.json {
            println!("The backup is sound.");
        }
        Ok(())
    } else {
        Err(EngineError::Unsound(format!(
            "{} problem{} in {}",
            r.problem_count,
            if r.problem_count == 1 { "" } else { "s" },
            backup.display()
        )))
    }
}

/// Progress for a person on a terminal, a log, or JSON lines.
struct Report {
    json: bool,
    quiet: bool,
    bar: Option<indicatif::ProgressBar>,
    last_line: Instant,
    last_percent: f64,
}

impl Report {
    fn new(json: bool, quiet: bool) -> Report {
        let bar = (!json && !quiet && std::io::stderr().is_terminal()).then(|| {
            let b = indicatif::ProgressBar::new(1000);
            b.set_style(
                indicatif::ProgressStyle::with_template(
                    "{spinner} [{bar:30}] {percent:>3}% {msg} {elapsed_precise} ETA {eta}",
                )
                .expect("static template")
                .progress_chars("=> "),
            );
            b
        });
        Report {
            json,
            quiet,
            bar,
            last_line: Instant::now(),
            last_percent: -1.0,
        }
    }

    /// Take the progress bar off the terminal.
    fn finish(&self) {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
    }

    fn line(&self, text: &str) {
        if self.quiet {
            return;
        }
        match &self.bar {
            Some(b) => b.println(text),
            None if self.json => println!("{}", json!({"event": "step", "message": text})),
            None => eprintln!("{text}"),
        }
    }
}

/// `one` for 1, else `many` ("1 file", "2 files").
pub(crate) fn plural<'a>(n: u64, one: &'a str, many: &'a str) -> &'a str {
    if n == 1 {
        one
    } else {
        many
    }
}

fn human_bytes(n: u64) -> String {
    indicatif::HumanBytes(n).to_string()
}

impl Events for Report {
    fn progress(&mut self, percent: f64, bytes: u64, files: u64) {
        if let Some(b) = &self.bar {
            b.set_position((percent * 10.0) as u64);
            let rate = bytes as f64 / b.elapsed().as_secs_f64().max(0.001);
            b.set_message(format!(
                "{} in {files} files, {}/s",
                human_bytes(bytes),
                human_bytes(rate as u64)
            ));
            return;
        }
        let due = self.last_line.elapsed() >= Duration::from_secs(if self.json { 1 } else { 10 })
            || percent >= self.last_percent + 10.0;
        if self.quiet || !due {
            return;
        }
        self.last_line = Instant::now();
        self.last_percent = percent;
        if self.json {
            println!(
                "{}",
                json!({"event": "progress", "percent": percent, "bytes": bytes, "files": files})
            );
        } else {
            eprintln!("{percent:5.1}% {} in {files} files", human_bytes(bytes));
        }
    }

    fn step(&mut self, what: &str) {
        self.line(what);
    }

    fn waiting_for_trust(&mut self) {
        self.line("Unlock your iPhone and tap Trust to let this computer back it up.");
    }
}

fn mux_for(cli: &Cli) -> Result<Box<dyn Transport>, EngineError> {
    let from_env = match std::env::var("IBACKUP_TRANSPORT").ok().as_deref() {
        None | Some("") => None,
        Some(t) => Some(
            <TransportChoice as clap::ValueEnum>::from_str(t, true).map_err(|_| {
                EngineError::Usage(format!("IBACKUP_TRANSPORT={t}: use auto, usbmuxd or usb"))
            })?,
        ),
    };
    let choice = cli
        .dev
        .transport
        .or(from_env)
        .or(cfg().transport)
        .unwrap_or(TransportChoice::Auto);
    if cli.dev.simulated {
        return simulated::transport(cli, choice == TransportChoice::Usb);
    }
    let usbmuxd = || -> Result<MuxClient, EngineError> {
        let addr = SocketAddress::from_env()
            .map_err(|e| EngineError::Protocol(format!("USBMUXD_SOCKET_ADDRESS: {e}")))?;
        Ok(MuxClient::new(addr)
            .with_stall_timeout(cli.stall()?)
            .with_cancel(stop::cancel()))
    };
    let usb = || -> Result<Box<dyn Transport>, EngineError> {
        let bus: Box<dyn ibackup_transport::usb::Bus> = match std::env::var("IBACKUP_USB_EMULATOR")
            .ok()
            .filter(|a| !a.is_empty())
        {
            Some(addr) => Box::new(ibackup_transport::usb::emulated::EmulatedBus::new(&addr)),
            None => Box::new(ibackup_transport::usb::native::NativeBus),
        };
        Ok(Box::new(
            UsbTransport::new(bus)
                .with_stall_timeout(cli.stall()?)
                .with_cancel(stop::cancel()),
        ))
    };
    match choice {
        TransportChoice::Usbmuxd => Ok(Box::new(usbmuxd()?)),
        TransportChoice::Usb => usb(),
        TransportChoice::Auto => {
            // usbmuxd when it answers (it may own the phone's interface);
            // direct USB where there is none.
            let m = usbmuxd()?;
            if std::env::var_os("USBMUXD_SOCKET_ADDRESS").is_some() || m.devices().is_ok() {
                Ok(Box::new(m))
            } else {
                log::info!("no usbmuxd at {}: using direct USB", m.addr);
                usb()
            }
        }
    }
}

/// `ibackup photos OUT`.
fn photos(cli: &Cli, mux: &dyn Transport, out: &Path, by_month: bool) -> Result<(), EngineError> {
    let dev = choose(cli, mux)?;
    let mut report = Report::new(cli.json, cli.quiet);
    let mut s = device::open(mux, &dev, cli.trust(), &mut || report.waiting_for_trust())?;
    let started = Instant::now();
    let r = ibackup_engine::photos::copy(
        &mut s,
        out,
        &ibackup_engine::photos::Options { by_month },
        &mut report,
    )
    .map_err(
        |e| match e.after_stop(&stop::cancel(), stop::left_by(&cli.cmd)) {
            EngineError::ConnectionLost(why) => EngineError::LostDuring {
                why,
                left: ibackup_engine::error::stopped::PHOTOS,
            },
            e => e,
        },
    );
    report.finish();
    let done = r?;
    if cli.json {
        println!(
            "{}",
            json!({"event": "result", "ok": done.refused.is_empty(), "files": done.files, "bytes": done.bytes,
                   "copied": done.copied, "copied_bytes": done.copied_bytes, "already": done.already,
                   "refused": done.refused, "renamed": done.renamed, "seconds": started.elapsed().as_secs_f64()})
        );
    } else if !cli.quiet {
        for r in &done.renamed {
            eprintln!("note: renamed for this disk: {r}");
        }
        println!(
            "Copied {} {} ({}) from the camera roll of {} into {}; {} already there. The camera roll has {} {}, {}.",
            done.copied,
            plural(done.copied, "file", "files"),
            human_bytes(done.copied_bytes),
            dev.udid,
            out.display(),
            done.already,
            done.files,
            plural(done.files, "file", "files"),
            human_bytes(done.bytes)
        );
    }
    if !done.refused.is_empty() {
        return Err(EngineError::RefusedNames {
            refused: done.refused.len() as u64,
            listed: done.refused,
        });
    }
    Ok(())
}

fn run_backup(
    cli: &Cli,
    mux: &dyn Transport,
    dir: &Path,
    full: bool,
    check_content: bool,
    only: &Only,
    pw: &PasswordArgs,
) -> Result<(), EngineError> {
    let mut selection = only.selection()?;
    let dev = choose(cli, mux)?;
    // The configuration's settings for this device, where no flag overrides them.
    let per_device = cfg().device(&dev.udid);
    if selection.is_all() && !per_device.only.is_empty() {
        selection = Selection::parse(&per_device.only, &[]).map_err(|e| {
            EngineError::Usage(format!("device {} in the configuration: {e}", dev.udid))
        })?;
    }
    let pw_file = pw.password_file.clone().or(per_device.password_file);
    let mut report = Report::new(cli.json, cli.quiet);
    let opts = Options {
        full,
        trust_wait: cli.trust(),
        password: if selection.is_all() {
            None
        } else {
            passwords::given(pw_file.as_deref(), Some(&dev.udid))?
        },
        selection,
        check_content,
    };
    let filtered = !opts.selection.is_all();
    let started = Instant::now();
    let r = backup::run(mux, &dev, dir, &opts, &mut report)
        .map_err(|e| e.after_stop(&stop::cancel(), stop::left_by(&cli.cmd)));
    report.finish();
    attempts::record(dir, &dev.udid, r.as_ref().map(|_| ()));
    let o = r?;
    let secs = started.elapsed().as_secs_f64();
    if cli.json {
        println!(
            "{}",
            json!({"event": "result", "ok": true, "udid": o.udid, "full": o.full, "files": o.files_received, "bytes": o.bytes_received, "seconds": secs, "path": o.path, "snapshot": o.snapshot, "commit_seconds": o.commit_seconds, "refused_paths": o.refused_paths, "repaired": o.repaired, "kept_files": o.kept_files, "kept_bytes": o.kept_bytes})
        );
    } else if !cli.quiet {
        let kept = if filtered {
            format!(
                "; kept {} {} ({}) of the chosen categories",
                o.kept_files,
                plural(o.kept_files, "file", "files"),
                human_bytes(o.kept_bytes)
            )
        } else {
            String::new()
        };
        println!(
            "{} backup of {} complete: {} {}, {} received in {:.1} s{kept}. Backup: {} (snapshot {})",
            if o.full { "Full" } else { "Incremental" },
            o.udid,
            o.files_received,
            plural(o.files_received, "file", "files"),
            human_bytes(o.bytes_received),
            secs,
            o.path.display(),
            o.snapshot
        );
        if let Some(why) = &o.repaired {
            println!("It is full because the last backup was not whole ({why}); this one is.");
        }
    }
    if o.refused_paths > 0 {
        return Err(EngineError::RefusedPaths {
            refused: o.refused_paths,
        });
    }
    Ok(())
}

/// The last backup of `udid` in `dir`: its date and Status.plist state.
type LastBackup = (Option<i64>, String);

fn last_backup(dir: &Path, udid: &str) -> Option<LastBackup> {
    use ibackup_proto::plistx::DictExt;
    let st = plist::Value::from_file(dir.join(udid).join("Status.plist"))
        .ok()?
        .into_dictionary()?;
    let date = match st.get("Date") {
        Some(plist::Value::Date(d)) => {
            let t: std::time::SystemTime = (*d).into();
            t.duration_since(std::time::UNIX_EPOCH)
                .ok()
                .map(|d| d.as_secs() as i64)
        }
        _ => None,
    };
    Some((
        date,
        st.str_of("SnapshotState").unwrap_or("unknown").to_string(),
    ))
}

/// The last try, when it failed and no backup (by another tool, say) was
/// made since (the last backup says the rest).
fn failed_since(dir: &Path, udid: &str, last: Option<&LastBackup>) -> Option<attempts::Attempt> {
    let since = last.and_then(|(d, _)| *d).unwrap_or(i64::MIN);
    attempts::last(dir, udid).filter(|a| !a.ok && a.date >= since)
}

/// The lines about the backups in `dir` of `udid`.
fn print_backup_state(dir: &Path, last: Option<&LastBackup>, failed: Option<&attempts::Attempt>) {
    match last {
        Some((date, state)) => println!(
            "Last backup:       {} ({})",
            date.map_or("unknown date".into(), |d| format!(
                "{} UTC",
                ibackup_engine::snapshots::format_date(d)
            )),
            if state == "finished" {
                "complete".to_string()
            } else {
                format!("incomplete: {state}")
            }
        ),
        None => println!("Last backup:       none in {}", dir.display()),
    }
    if let Some(a) = failed {
        println!(
            "Last attempt:      {} UTC, failed (exit {}): {}",
            ibackup_engine::snapshots::format_date(a.date),
            a.exit_code,
            a.error.clone().unwrap_or_default()
        );
    }
}

/// `info --dir` with the device not connected (or usbmuxd not running):
/// what DIR knows of it.
fn info_offline(cli: &Cli, dir: &Path, why: EngineError) -> Result<(), EngineError> {
    let mut found = devices_in(cli, dir)?;
    let udid = match found.len() {
        1 => found.remove(0),
        _ => return Err(why),
    };
    let last = last_backup(dir, &udid);
    let failed = failed_since(dir, &udid, last.as_ref());
    if cli.json {
        println!(
            "{}",
            json!({"udid": udid, "connected": false,
                   "last_backup": last.as_ref().map(|(d, s)| json!({"date": d.map(iso_date), "state": s})),
                   "last_attempt_failed": failed.as_ref().map(|a| json!({"date": iso_date(a.date), "exit_code": a.exit_code, "error": a.error}))})
        );
    } else {
        println!(
            "UDID:              {udid} (not connected: {})",
            exit::describe(&why).1
        );
        print_backup_state(dir, last.as_ref(), failed.as_ref());
    }
    Ok(())
}

fn info(cli: &Cli, mux: &dyn Transport, dir: Option<&Path>) -> Result<(), EngineError> {
    use ibackup_proto::plistx::DictExt;
    let dev = match (choose(cli, mux), dir) {
        (Ok(d), _) => d,
        (
            Err(
                e @ (EngineError::NoDevice
                | EngineError::DeviceNotFound(_)
                | EngineError::Usbmuxd { .. }),
            ),
            Some(d),
        ) => return info_offline(cli, d, e),
        (Err(e), _) => return Err(e),
    };
    let mut report = Report::new(cli.json, cli.quiet);
    let mut s = device::open(mux, &dev, cli.trust(), &mut || report.waiting_for_trust())?;
    let v = s.values()?;
    let backup = s.domain("com.apple.mobile.backup")?;
    let disk = s.domain("com.apple.disk_usage")?;
    let encrypted = backup.bool_of("WillEncrypt").unwrap_or(false);
    let last = dir.and_then(|d| last_backup(d, &dev.udid));
    let failed = dir.and_then(|d| failed_since(d, &dev.udid, last.as_ref()));
    let field = |k: &str| v.str_of(k).unwrap_or("").to_string();
    if cli.json {
        println!(
            "{}",
            json!({"udid": dev.udid, "name": field("DeviceName"), "model": field("ProductType"), "ios": field("ProductVersion"), "build": field("BuildVersion"),
                   "total_bytes": disk.u64_of("TotalDiskCapacity"), "free_bytes": disk.u64_of("AmountDataAvailable"), "backup_encrypted": encrypted,
                   "last_backup": last.as_ref().map(|(d, s)| json!({"date": d.map(iso_date), "state": s})),
                   "last_attempt_failed": failed.as_ref().map(|a| json!({"date": iso_date(a.date), "exit_code": a.exit_code, "error": a.error}))})
        );
    } else {
        println!("Name:              {}", field("DeviceName"));
        println!("UDID:              {}", dev.udid);
        println!("Model:             {}", field("ProductType"));
        println!(
            "iOS:               {} ({})",
            field("ProductVersion"),
            field("BuildVersion")
        );
        if let (Some(t), Some(f)) = (
            disk.u64_of("TotalDiskCapacity"),
            disk.u64_of("AmountDataAvailable"),
        ) {
            println!(
                "Storage:           {} free of {}",
                human_bytes(f),
                human_bytes(t)
            );
        }
        println!(
            "Backup encryption: {}",
            if encrypted {
                "on (Health and Keychain data are included)"
            } else {
                "off"
            }
        );
        if let Some(d) = dir {
            print_backup_state(d, last.as_ref(), failed.as_ref());
        }
    }
    Ok(())
}

/// `secs` as ISO 8601 in UTC, for JSON.
fn iso_date(secs: i64) -> String {
    ibackup_engine::snapshots::format_date(secs).replace(' ', "T") + "Z"
}

/// `ibackup password save|forget -u UDID`.
fn password(cli: &Cli, action: &PasswordAction) -> Result<(), EngineError> {
    let udid = cli.udid.as_deref().ok_or_else(|| {
        EngineError::Usage("say whose password with -u UDID (`ibackup devices` lists them)".into())
    })?;
    match action {
        PasswordAction::Save { pw } => {
            let p = passwords::current(pw.password_file.as_deref(), "Backup password", None)?;
            keychain::save(udid, &p)?;
            if !cli.quiet {
                println!("The backup password of {udid} is in the system keychain.");
            }
        }
        PasswordAction::Forget => {
            let had = keychain::forget(udid)?;
            if !cli.quiet {
                if had {
                    println!("The system keychain no longer holds the backup password of {udid}.");
                } else {
                    println!("The system keychain held no backup password of {udid}.");
                }
            }
        }
    }
    Ok(())
}

/// Before reading `dir` (the backup folder, or one device's in it):
/// repair what an interrupted run left there.
fn repair(dir: &Path) {
    ibackup_engine::staging::repair_for_reading(dir);
    if let Some(parent) = dir.parent().filter(|p| p.join(".ibackup").is_dir()) {
        ibackup_engine::staging::repair_for_reading(parent);
    }
}

fn run(cli: &Cli) -> Result<(), EngineError> {
    match &cli.cmd {
        Cmd::Completions { shell } => {
            shell::completions(*shell);
            return Ok(());
        }
        Cmd::Password { action } => return password(cli, action),
        Cmd::Man { dir } => {
            let written = shell::man_pages(dir).map_err(|source| EngineError::Output {
                path: dir.clone(),
                source,
            })?;
            if !cli.quiet {
                println!("{} man pages in {}", written.len(), dir.display());
            }
            return Ok(());
        }
        _ => {}
    }
    match &cli.cmd {
        Cmd::Verify { dir, .. }
        | Cmd::Ls { dir, .. }
        | Cmd::Extract { dir, .. }
        | Cmd::Export { dir, .. }
        | Cmd::Snapshots { dir }
        | Cmd::Prune { dir, .. }
        | Cmd::Restore { dir, .. } => {
            if let Some(d) = dir.clone().or_else(|| cfg().dir.clone()) {
                repair(&d);
            }
        }
        Cmd::Checkout { dir, .. } | Cmd::Info { dir: Some(dir), .. } => repair(dir),
        _ => {}
    }
    match &cli.cmd {
        Cmd::Verify {
            dir,
            quick,
            snap,
            pw,
        } => {
            return verify(
                cli,
                &dir_or_config(dir)?,
                snap,
                pw.password_file.as_deref(),
                *quick,
            )
        }
        Cmd::Ls {
            dir,
            snap,
            only,
            pw,
        } => {
            return data::ls(
                cli,
                &backup_folder(cli, &dir_or_config(dir)?, snap)?,
                only,
                pw,
            )
        }
        Cmd::Extract {
            dir,
            to,
            snap,
            only,
            pw,
        } => {
            let dir = dir_or_config(dir)?;
            return data::extract(cli, &backup_folder(cli, &dir, snap)?, to, only, pw);
        }
        Cmd::Export {
            kind,
            dir,
            to,
            snap,
            pw,
        } => {
            let dir = dir_or_config(dir)?;
            return data::export(cli, *kind, &backup_folder(cli, &dir, snap)?, to, pw);
        }
        Cmd::Snapshots { dir } => {
            let dir = dir_or_config(dir)?;
            return history::list(cli, &dir, &devices_in(cli, &dir)?);
        }
        Cmd::Checkout { dir, out, snap } => {
            ibackup_engine::staging::existing_folder(dir)?;
            return history::checkout(cli, &backup_folder(cli, dir, snap)?, out);
        }
        Cmd::Prune { dir, keep, dry_run } => {
            let dir = dir_or_config(dir)?;
            return history::prune(cli, &dir, &devices_in(cli, &dir)?, &keep.keep(), *dry_run);
        }
        _ => {}
    }
    let mux = mux_for(cli)?;
    let mux = mux.as_ref();
    match &cli.cmd {
        Cmd::Devices { .. } => {
            let list = device::list(mux)?;
            if list.is_empty() && !cli.json {
                println!("No devices connected.");
            }
            for d in &list {
                let (name, model) = device::name_and_model(mux, d);
                if cli.json {
                    println!(
                        "{}",
                        json!({"udid": d.udid, "connection": d.connection_type, "device_id": d.device_id, "name": name, "model": model, "transport": mux.describe()})
                    );
                } else {
                    println!(
                        "{}\t{}\t{}\t{}\tvia {}",
                        d.udid,
                        if d.is_network() { "Wi-Fi" } else { "USB" },
                        data::escaped(&name),
                        model,
                        mux.describe()
                    );
                }
            }
            Ok(())
        }
        Cmd::Pair { .. } => {
            let dev = choose(cli, mux)?;
            let mut report = Report::new(cli.json, cli.quiet);
            device::open(mux, &dev, cli.trust(), &mut || report.waiting_for_trust())?;
            if !cli.quiet {
                println!("Paired with {}.", dev.udid);
            }
            Ok(())
        }
        Cmd::Validate { .. } => {
            let dev = choose(cli, mux)?;
            device::validate(mux, &dev).map_err(|e| match e {
                EngineError::NotTrusted => EngineError::NotPaired(dev.udid.clone()),
                e => e,
            })?;
            if !cli.quiet {
                println!("{} trusts this computer.", dev.udid);
            }
            Ok(())
        }
        Cmd::Unpair { .. } => {
            let dev = choose(cli, mux)?;
            device::unpair(mux, &dev)?;
            if !cli.quiet {
                println!("{} no longer trusts this computer.", dev.udid);
            }
            Ok(())
        }
        Cmd::Info { dir, .. } => info(cli, mux, dir.as_deref()),
        Cmd::Photos { out, by_month, .. } => photos(cli, mux, out, *by_month),
        Cmd::Full { dir, only, pw, .. } => {
            run_backup(cli, mux, &backups_dir(dir)?, true, false, only, pw)
        }
        Cmd::Backup {
            dir,
            full,
            check_content,
            only,
            pw,
            ..
        } => run_backup(
            cli,
            mux,
            &backups_dir(dir)?,
            *full,
            *check_content,
            only,
            pw,
        ),
        Cmd::Watch {
            dir,
            every,
            keep,
            pw,
            ..
        } => watch::run(cli, mux, &backups_dir(dir)?, every.as_deref(), keep, pw),
        Cmd::Encryption {
            action,
            pw,
            new_password_file,
            ..
        } => data::encryption(cli, mux, *action, pw, new_password_file.as_deref()),
        Cmd::Restore {
            dir,
            source,
            snap,
            only,
            no_system,
            no_reboot,
            settings,
            pw,
            ..
        } => data::restore(
            cli,
            mux,
            &backups_dir(dir)?,
            data::RestoreArgs {
                source: source.clone(),
                snapshot: snap.snapshot.clone(),
                only,
                system: !no_system,
                reboot: !no_reboot,
                settings: *settings,
                pw,
            },
        ),
        Cmd::Verify { .. }
        | Cmd::Ls { .. }
        | Cmd::Extract { .. }
        | Cmd::Export { .. }
        | Cmd::Snapshots { .. }
        | Cmd::Checkout { .. }
        | Cmd::Prune { .. }
        | Cmd::Completions { .. }
        | Cmd::Password { .. }
        | Cmd::Man { .. } => {
            unreachable!("handled before connecting")
        }
    }
}

/// The command's name, for the log.
fn command_name(cli: &Cli) -> String {
    let name = format!("{:?}", cli.cmd);
    name.split([' ', '{', '('])
        .next()
        .unwrap_or("")
        .to_lowercase()
}

/// Append a line to the log file, if one is configured: `text` after the
/// date, or with `--log-format json` one object holding the time, `fields`
/// and `text` as `message`. A log that cannot be written is reported,
/// never fatal.
pub(crate) fn log_line(cli: &Cli, text: &str, fields: serde_json::Value) {
    let Some(path) = &cli.log else { return };
    let now = ibackup_engine::snapshots::now();
    let line = if cli.log_format == Some(LogFormat::Json) {
        let mut o = match fields {
            serde_json::Value::Object(o) => o,
            _ => serde_json::Map::new(),
        };
        // ISO 8601, UTC.
        let time = ibackup_engine::snapshots::format_date(now).replacen(' ', "T", 1);
        o.insert("time".into(), format!("{time}Z").into());
        o.insert("message".into(), text.into());
        format!("{}\n", serde_json::Value::Object(o))
    } else {
        format!(
            "{} UTC {text}\n",
            ibackup_engine::snapshots::format_date(now)
        )
    };
    use std::io::Write;
    let mut o = std::fs::OpenOptions::new();
    o.create(true).append(true);
    // The log names devices and folders: the user's alone.
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut o, 0o600);
    let r = o.open(path).and_then(|mut f| f.write_all(line.as_bytes()));
    if let Err(e) = r {
        eprintln!("ibackup: cannot write the log {}: {e}", path.display());
    }
}

pub(crate) fn report_failure(cli: &Cli, e: &EngineError) -> u8 {
    let (code, sentence) = exit::describe(e);
    let what = command_name(cli);
    let udid = cli.udid.as_deref().unwrap_or("-");
    let how = if matches!(e, EngineError::Interrupted(_)) {
        "interrupted"
    } else {
        "failed"
    };
    log_line(
        cli,
        &format!("{what} {udid} {how} (exit {code}): {sentence}"),
        json!({"command": what, "udid": udid, "ok": false, "outcome": how, "exit_code": code, "error": sentence}),
    );
    if cli.json {
        println!(
            "{}",
            json!({"event": "result", "ok": false, "exit_code": code, "error": sentence})
        );
    }
    eprintln!("ibackup: {sentence}");
    code
}

fn main() -> ExitCode {
    // What a user must know is said in sentences and step lines; the
    // log's own lines (`[… WARN ibackup_engine::…]`) are for RUST_LOG.
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("error"))
        .format_timestamp_millis()
        .init();
    // `ibackup help exit-codes`: a topic, not a command, beside clap's own
    // `help COMMAND`.
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args == ["help", "exit-codes"] {
        print!("{}", shell::exit_codes());
        return ExitCode::SUCCESS;
    }
    let mut cli = Cli::parse();
    if let Some(after) = cli.cmd.device_flags().cloned() {
        cli.dev = std::mem::take(&mut cli.dev).merged(&after);
    }
    let loaded = config::Config::load(cli.config.as_deref());
    let r = loaded.map(|c| {
        cli.dev.trust_timeout = cli.dev.trust_timeout.or(c.trust_timeout);
        cli.dev.wait_for_device = cli.dev.wait_for_device.take().or(c.wait_for_device.clone());
        cli.dev.stall_timeout = cli.dev.stall_timeout.take().or(c.stall_timeout.clone());
        cli.log = cli.log.take().or(c.log_file.clone());
        cli.log_format = cli.log_format.or(c.log_format);
        passwords::set_fallback_file(c.password_file.clone());
        let _ = CONFIG.set(c);
    });
    // The signal handler reports for the command too.
    let cli: &'static Cli = Box::leak(Box::new(cli));
    stop::install(cli);
    let r = r
        .and_then(|()| run(cli))
        .map_err(|e| e.after_stop(&stop::cancel(), stop::left_by(&cli.cmd)));
    match r {
        Ok(()) => {
            let (what, udid) = (command_name(cli), cli.udid.as_deref().unwrap_or("-"));
            log_line(
                cli,
                &format!("{what} {udid} ok"),
                json!({"command": what, "udid": udid, "ok": true, "exit_code": 0}),
            );
            ExitCode::SUCCESS
        }
        Err(e) => ExitCode::from(report_failure(cli, &e)),
    }
}
