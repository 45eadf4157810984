//! Getting data out and back in: `ls`, `extract`, `restore`, and the
//! device's backup password (`encryption`).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use ibackup_engine::restore::{self, PasswordChange, RestoreOptions};
use ibackup_engine::EngineError;
use ibackup_store::mbfile::{FLAG_DIRECTORY, FLAG_FILE, FLAG_SYMLINK};
use ibackup_store::reader::{self, Backup};
use ibackup_transport::Transport;
use serde_json::json;

use crate::{
    human_bytes, passwords, Cli, EncryptionAction, ExportKind, Only, PasswordArgs, Report,
};

/// The password of the backup in `folder`, asked for only when it is
/// encrypted. (An unreadable Manifest.plist asks nothing; opening the
/// backup then says what is wrong with it.)
fn password_for(folder: &Path, pw: &PasswordArgs) -> Result<Option<String>, EngineError> {
    let encrypted = reader::manifest_plist(folder)
        .ok()
        .and_then(|m| m.get("IsEncrypted").and_then(plist::Value::as_boolean))
        .unwrap_or(false);
    if !encrypted {
        return Ok(None);
    }
    let udid = udid_of(folder);
    passwords::current(
        pw.password_file.as_deref(),
        "Backup password",
        udid.as_deref(),
    )
    .map(Some)
}

/// The device a backup folder belongs to (for its password in the
/// keychain): what its Manifest.plist says, else the folder's name.
pub(crate) fn udid_of(folder: &Path) -> Option<String> {
    reader::manifest_plist(folder)
        .ok()
        .and_then(|m| {
            m.get("Lockdown")
                .and_then(plist::Value::as_dictionary)
                .and_then(|l| l.get("UniqueDeviceID"))
                .and_then(plist::Value::as_string)
                .map(str::to_string)
        })
        .or_else(|| folder.file_name().map(|n| n.to_string_lossy().into_owned()))
}

/// Open a backup folder, asking for the password only when it is encrypted.
fn open(backup: &Path, pw: &PasswordArgs) -> Result<Backup, EngineError> {
    let password = password_for(backup, pw)?;
    Ok(Backup::open(backup, password.as_deref())?)
}

fn warn_encrypted_only(cli: &Cli, sel: &ibackup_store::categories::Selection, encrypted: bool) {
    let only = sel.encrypted_only();
    if !encrypted && !only.is_empty() && !cli.quiet {
        eprintln!(
            "Note: {} are only in encrypted backups; this one is not encrypted. Turn encryption on with `ibackup encryption on` before the next backup.",
            only.join(" and ")
        );
    }
}

use ibackup_engine::snapshots::format_date as date;

pub fn ls(cli: &Cli, backup: &Path, only: &Only, pw: &PasswordArgs) -> Result<(), EngineError> {
    let sel = only.selection()?;
    let b = open(backup, pw)?;
    warn_encrypted_only(cli, &sel, b.encrypted());
    let (mut files, mut bytes) = (0u64, 0u64);
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    use std::io::Write;
    let mut out_failed = None;
    let mut bad = Vec::new();
    b.for_each_lenient(|row| {
        if !sel.matches(&row.domain, &row.relative_path) {
            return Ok(());
        }
        let kind = match row.flags {
            FLAG_FILE => "file",
            FLAG_DIRECTORY => "dir",
            FLAG_SYMLINK => "link",
            _ => "other",
        };
        if row.flags == FLAG_FILE {
            files += 1;
            bytes += row.file.size;
        }
        let r = if cli.json {
            writeln!(
                out,
                "{}",
                json!({"domain": row.domain, "path": row.relative_path, "kind": kind, "size": row.file.size,
                       "modified": row.file.last_modified, "file_id": row.file_id, "target": row.file.target})
            )
        } else if row.flags == FLAG_FILE && !cli.quiet {
            // Escaped: a name holding a newline or a terminal escape must
            // not fake lines or move the cursor.
            writeln!(
                out,
                "{:>12}  {}  {}/{}",
                row.file.size,
                date(row.file.last_modified),
                escaped(&row.domain),
                escaped(&row.relative_path)
            )
        } else {
            Ok(())
        };
        // The output's failure (`ibackup ls | head` closing the pipe), not
        // the backup's: kept apart, and the listing stops.
        r.map_err(|e| {
            out_failed = Some(e);
            ibackup_store::StoreError::Record("standard output failed".into())
        })
    }, &mut |why| bad.push(why))
    .or_else(|e| if out_failed.is_some() { Ok(()) } else { Err(e) })?;
    if let Some(e) = out_failed.or_else(|| out.flush().err()) {
        crate::stdout_failed(e);
    }
    if !cli.json && !cli.quiet {
        eprintln!(
            "{files} {}, {}{}",
            crate::plural(files, "file", "files"),
            human_bytes(bytes),
            if b.encrypted() {
                ", encrypted backup"
            } else {
                ""
            }
        );
    }
    // Everything usable was listed; the rows that were not are said, and
    // the exit code tells a script the listing is not the whole backup.
    if !bad.is_empty() {
        for why in bad.iter().take(ibackup_store::verify::MAX_LISTED) {
            eprintln!("problem: {}", escaped(why));
        }
        return Err(EngineError::Damaged(format!(
            "{} {} of its index could not be read and {} left out of the listing",
            bad.len(),
            crate::plural(bad.len() as u64, "row", "rows"),
            if bad.len() == 1 { "was" } else { "were" }
        )));
    }
    Ok(())
}

/// `s` with control characters (newlines, terminal escapes) and
/// backslashes written as escapes, for a line on a terminal.
pub fn escaped(s: &str) -> std::borrow::Cow<'_, str> {
    if !s.chars().any(|c| c.is_control() || c == '\\') {
        return s.into();
    }
    s.chars()
        .flat_map(|c| {
            let e: Vec<char> = if c.is_control() || c == '\\' {
                c.escape_default().collect()
            } else {
                vec![c]
            };
            e
        })
        .collect::<String>()
        .into()
}

/// `ibackup export KIND DIR --to OUT`.
pub fn export(
    cli: &Cli,
    kind: ExportKind,
    backup: &Path,
    to: &Path,
    pw: &PasswordArgs,
) -> Result<(), EngineError> {
    use ibackup_export::{ExportError, Kind};
    let kind = match kind {
        ExportKind::Messages => Kind::Messages,
        ExportKind::Contacts => Kind::Contacts,
        ExportKind::Calendar => Kind::Calendar,
        ExportKind::Calls => Kind::Calls,
    };
    ibackup_store::extract::usable_output(to, backup).map_err(EngineError::from)?;
    let b = open(backup, pw)?;
    let done = ibackup_export::export(&b, kind, to).map_err(|e| match e {
        ExportError::Store(s) => EngineError::from(s),
        ExportError::Output { path, source } => EngineError::Output { path, source },
        other @ (ExportError::NotInBackup { .. }
        | ExportError::UnknownLayout { .. }
        | ExportError::Unreadable { .. }) => EngineError::NotExportable(other.to_string()),
    })?;
    let main = done
        .files
        .first()
        .cloned()
        .unwrap_or_else(|| to.to_path_buf());
    if cli.json {
        println!(
            "{}",
            json!({"event": "result", "ok": true, "kind": kind.name(), "items": done.items,
                   "conversations": done.conversations, "attachments": done.attachments,
                   "missing_attachments": done.missing_attachments, "photos": done.photos,
                   "files": done.files})
        );
    } else if !cli.quiet {
        let what = match kind {
            Kind::Messages => format!(
                "{} {} in {} {}, {} {}",
                done.items,
                crate::plural(done.items, "message", "messages"),
                done.conversations,
                crate::plural(done.conversations, "conversation", "conversations"),
                done.attachments,
                crate::plural(done.attachments, "attachment", "attachments"),
            ),
            Kind::Contacts => format!(
                "{} {} ({} with a photo)",
                done.items,
                crate::plural(done.items, "contact", "contacts"),
                done.photos
            ),
            Kind::Calendar => format!(
                "{} {}",
                done.items,
                crate::plural(done.items, "event", "events")
            ),
            Kind::Calls => format!(
                "{} {}",
                done.items,
                crate::plural(done.items, "call", "calls")
            ),
        };
        println!(
            "Exported {what} to {}",
            escaped(&main.display().to_string())
        );
        if !done.missing_attachments.is_empty() {
            println!(
                "{} {} the messages name {} not in the backup; the pages say so where they were.",
                done.missing_attachments.len(),
                crate::plural(
                    done.missing_attachments.len() as u64,
                    "attachment",
                    "attachments"
                ),
                crate::plural(done.missing_attachments.len() as u64, "is", "are"),
            );
        }
    }
    Ok(())
}

pub fn extract(
    cli: &Cli,
    backup: &Path,
    to: &Path,
    only: &Only,
    pw: &PasswordArgs,
) -> Result<(), EngineError> {
    let sel = only.selection()?;
    // Opening checks the password: a wrong one stops here, before OUT exists.
    let b = open(backup, pw)?;
    warn_encrypted_only(cli, &sel, b.encrypted());
    let started = Instant::now();
    let mut last = Instant::now();
    let show = !cli.quiet && !cli.json;
    let done = ibackup_store::extract::extract(&b, &sel, to, &mut |files, bytes| {
        if show && last.elapsed() >= Duration::from_secs(10) {
            last = Instant::now();
            eprintln!(
                "{files} {}, {} so far",
                crate::plural(files, "file", "files"),
                human_bytes(bytes)
            );
        }
        // Ctrl-C: the files being written are finished, no other begun.
        if crate::stop::cancel().requested() {
            std::ops::ControlFlow::Break(())
        } else {
            std::ops::ControlFlow::Continue(())
        }
    })
    .map_err(EngineError::from)?;
    let secs = started.elapsed().as_secs_f64();
    if !cli.json && !cli.quiet {
        for r in &done.renamed {
            eprintln!("note: {}", escaped(r));
        }
    }
    if done.damaged > 0 || done.n_too_large > 0 {
        // Everything readable is out; the exit code says not all of it was.
        if cli.json {
            println!(
                "{}",
                json!({"event": "extract", "ok": false, "files": done.files, "bytes": done.bytes, "dirs": done.dirs, "links": done.links, "seconds": secs, "path": to, "problems": done.problems, "renamed": done.renamed, "too_large": done.too_large})
            );
        } else {
            for p in &done.problems {
                eprintln!("problem: {}", escaped(p));
            }
            for p in &done.too_large {
                eprintln!("not extracted: {}", escaped(p));
            }
        }
    }
    if done.n_too_large > 0 && done.damaged == 0 {
        return Err(EngineError::Output {
            path: to.to_path_buf(),
            source: std::io::Error::new(std::io::ErrorKind::FileTooLarge, {
                let one = done.n_too_large == 1;
                format!(
                        "{} {} (listed above) {} larger than its disk holds a file (FAT32: 4 GB); the {} others were extracted. Extract {} to a disk formatted exFAT, ext4, APFS or NTFS",
                        done.n_too_large,
                        if one { "file" } else { "files" },
                        if one { "is" } else { "are" },
                        done.files,
                        if one { "it" } else { "them" }
                    )
            }),
        });
    }
    if done.damaged > 0 {
        return Err(EngineError::Unsound(format!(
            "{} of its files are damaged or missing, listed above; {} others were extracted to {}",
            done.damaged,
            done.files,
            to.display()
        )));
    }
    if cli.json {
        println!(
            "{}",
            json!({"event": "result", "ok": true, "files": done.files, "bytes": done.bytes, "dirs": done.dirs, "links": done.links, "seconds": secs, "path": to, "renamed": done.renamed})
        );
    } else if !cli.quiet {
        println!(
            "Extracted {} {} ({}) to {} in {:.1} s.",
            done.files,
            crate::plural(done.files, "file", "files"),
            human_bytes(done.bytes),
            to.display(),
            secs
        );
    }
    Ok(())
}

pub fn encryption(
    cli: &Cli,
    mux: &dyn Transport,
    action: EncryptionAction,
    pw: &PasswordArgs,
    new_file: Option<&Path>,
) -> Result<(), EngineError> {
    let dev = crate::choose(cli, mux)?;
    let mut report = Report::new(cli.json, cli.quiet);
    let on = restore::encryption_is_on(mux, &dev, cli.trust(), &mut report)?;
    match (action, on) {
        (EncryptionAction::On, true) => {
            return Err(EngineError::Usage(format!(
                "backup encryption is already on on {}; `ibackup encryption change` changes its password",
                dev.udid
            )))
        }
        (EncryptionAction::Off | EncryptionAction::Change, false) => {
            return Err(EngineError::Usage(format!(
                "backup encryption is off on {}, so there is no password to {}; turn it on with `ibackup encryption on`",
                dev.udid,
                if matches!(action, EncryptionAction::Off) { "remove" } else { "change" }
            )))
        }
        _ => {}
    }
    let current = || {
        passwords::current(
            pw.password_file.as_deref(),
            "Current backup password",
            Some(&dev.udid),
        )
    };
    let change = match action {
        // The password to set: the new-password sources first, then the
        // current-password ones (there is no current password yet).
        EncryptionAction::On => PasswordChange::On {
            new: match passwords::new(new_file) {
                Ok(p) => p,
                Err(e) => passwords::given(pw.password_file.as_deref(), None)?.ok_or(e)?,
            },
        },
        EncryptionAction::Off => PasswordChange::Off { old: current()? },
        EncryptionAction::Change => PasswordChange::Change {
            old: current()?,
            new: passwords::new(new_file)?,
        },
    };
    restore::change_password(mux, &dev, &change, cli.trust(), &mut report)?;
    let what = match action {
        EncryptionAction::On => "Backup encryption is on: later backups of this device are encrypted and include Health and Keychain data. Keep the password safe; it cannot be recovered.",
        EncryptionAction::Off => "Backup encryption is off: later backups of this device are not encrypted.",
        EncryptionAction::Change => "The backup password is changed: later backups use the new one; earlier backups keep the password they were made with.",
    };
    if cli.json {
        println!(
            "{}",
            json!({"event": "result", "ok": true, "udid": dev.udid, "encryption": format!("{action:?}").to_lowercase()})
        );
    } else if !cli.quiet {
        println!("{what}");
    }
    Ok(())
}

pub struct RestoreArgs<'a> {
    pub source: Option<String>,
    pub snapshot: Option<String>,
    pub only: &'a Only,
    pub system: bool,
    pub reboot: bool,
    pub settings: bool,
    pub pw: &'a PasswordArgs,
}

pub fn restore(
    cli: &Cli,
    mux: &dyn Transport,
    dir: &Path,
    a: RestoreArgs,
) -> Result<(), EngineError> {
    let selection = a.only.selection()?;
    let target = crate::choose(cli, mux)?;
    let source = a.source.clone().unwrap_or_else(|| target.udid.clone());
    let folder: PathBuf = match &a.snapshot {
        Some(id) => ibackup_engine::snapshots::find(dir, &source, id)?.path,
        None => dir.join(&source),
    };
    let password = password_for(&folder, a.pw)?;
    let opts = RestoreOptions {
        source: Some(source.clone()),
        folder: a.snapshot.is_some().then(|| folder.clone()),
        selection,
        system: a.system,
        reboot: a.reboot,
        settings: a.settings,
        password,
        trust_wait: cli.trust(),
    };
    let mut report = Report::new(cli.json, cli.quiet);
    let started = Instant::now();
    let r = restore::run(mux, &target, dir, &opts, &mut report);
    report.finish();
    let o = r?;
    let secs = started.elapsed().as_secs_f64();
    if cli.json {
        println!(
            "{}",
            json!({"event": "result", "ok": true, "source": o.source, "target": o.target, "files": o.files, "bytes": o.bytes, "seconds": secs, "partial": o.partial})
        );
    } else if !cli.quiet {
        println!(
            "Restored {} {} ({}) from the backup of {} to {} in {:.1} s.{}",
            o.files,
            crate::plural(o.files, "file", "files"),
            human_bytes(o.bytes),
            o.source,
            o.target,
            secs,
            if a.reboot {
                " The device restarts now."
            } else {
                ""
            }
        );
        if let Some(why) = &o.partial {
            println!(
                "Nothing else on {} was removed: the backup holds only part of {} ({why}).",
                o.target, o.source
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod escape_tests {
    use super::escaped;

    #[test]
    fn names_cannot_fake_lines_or_move_the_cursor() {
        assert_eq!(escaped("Library/SMS/sms.db"), "Library/SMS/sms.db");
        assert_eq!(escaped("ünï cödé.txt"), "ünï cödé.txt");
        assert_eq!(
            escaped("a\nproblem: fake"),
            "a\\nproblem: fake",
            "a newline stays on its line"
        );
        assert_eq!(escaped("x\u{1b}[2Jy"), "x\\u{1b}[2Jy");
        assert_eq!(escaped("back\\slash"), "back\\\\slash");
        assert!(!escaped("tab\there\r").contains(['\t', '\r']));
    }
}
