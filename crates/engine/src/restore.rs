//! Restoring a backup to a device, and changing the device's backup
//! password: both are mobilebackup2 requests the host answers from disk
//! without ever writing to the backup it reads.
//!
//! A selective restore hands the device a filtered index: the backup's own
//! Manifest.db with only the chosen rows, re-encrypted with the backup's
//! own key when it is encrypted (fact sheet §5.4, §5.7). Content files are
//! served from the backup unchanged.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ibackup_proto::mb2::{error_code, Mb2Request};
use ibackup_proto::plistx::DictExt;
use ibackup_proto::usbmux::DeviceRecord;
use ibackup_store::categories::{Selection, INFO_ONLY_KEY};
use ibackup_store::mbfile::FLAG_FILE;
use ibackup_store::reader::Backup;
use ibackup_transport::Transport;
use plist::{Dictionary, Value};

use crate::backup::{Events, Host};
use crate::device;
use crate::error::{EngineError, Result};
use crate::staging::{Area, BackupDir};

#[derive(Debug, Clone)]
pub struct RestoreOptions {
    /// The device whose backup is restored; the target itself when `None`.
    pub source: Option<String>,
    /// Read this folder (a snapshot) instead of `DIR/<source>/`.
    pub folder: Option<PathBuf>,
    /// Only these files (and nothing else on the device changes).
    pub selection: Selection,
    /// Restore system domains too (Finder does); app data only when false.
    pub system: bool,
    pub reboot: bool,
    /// Restore the backup's settings instead of keeping the device's.
    pub settings: bool,
    pub password: Option<String>,
    pub trust_wait: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestoreOutcome {
    pub source: String,
    pub target: String,
    pub files: u64,
    pub bytes: u64,
    /// Why only what the backup holds was restored and nothing else on
    /// the target was removed, when the backup is only part of a device.
    pub partial: Option<String>,
}

/// What a restore will send, decided before the device is contacted.
struct Plan {
    source: String,
    backup: Backup,
    files: u64,
    bytes: u64,
    /// The filtered index, when only part of the backup is restored.
    filtered: Option<tempfile::TempDir>,
    /// Why the backup holds only part of a device, when it does: then even
    /// a whole restore only adds and replaces, and removes nothing.
    partial: Option<String>,
}

/// Domains every backup of a set-up iPhone or iPad holds (the home folder
/// and the system's own settings): a backup without them is a part of one.
const EVERY_BACKUP_HAS: [&str; 3] = ["HomeDomain", "SystemPreferencesDomain", "WirelessDomain"];

/// The distinct domains of a backup's index (one query, no record decoded).
fn domains_of(
    backup: &Backup,
) -> std::result::Result<std::collections::BTreeSet<String>, ibackup_store::StoreError> {
    Ok(backup.index.db.domains()?.into_iter().collect())
}

/// Why `backup` (in `folder`) is not a whole device's backup, if it is
/// not: it was made with `--only`; it lacks domains every backup holds;
/// or it lacks domains that `target_backup` (the target's own last
/// backup, when there is one to compare with) has. A whole restore of it
/// must then leave the rest of the target alone.
fn partial_reason(
    folder: &Path,
    backup: &Backup,
    target_backup: Option<(&Path, Option<&str>)>,
) -> Result<Option<String>> {
    let only: Vec<String> = Value::from_file(folder.join("Info.plist"))
        .ok()
        .and_then(Value::into_dictionary)
        .and_then(|d| d.get(INFO_ONLY_KEY).and_then(Value::as_array).cloned())
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_string().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    if !only.is_empty() {
        return Ok(Some(format!("it was made with --only {}", only.join(","))));
    }
    let have = domains_of(backup)?;
    let lacking: Vec<&str> = EVERY_BACKUP_HAS
        .iter()
        .copied()
        .filter(|d| !have.contains(*d))
        .collect();
    if !lacking.is_empty() {
        return Ok(Some(format!(
            "it has no {} (every whole backup has)",
            lacking.join(", ")
        )));
    }
    if let Some((path, password)) = target_backup {
        // The target's own backup tells what the target holds; one that
        // cannot be read (encrypted, no password) tells nothing.
        match Backup::open(path, password).and_then(|b| {
            let theirs = domains_of(&b)?;
            Ok(theirs.difference(&have).cloned().collect::<Vec<_>>())
        }) {
            Ok(missing) if !missing.is_empty() => {
                return Ok(Some(format!(
                    "it lacks {} domain{} the target's own backup in {} has (e.g. {})",
                    missing.len(),
                    if missing.len() == 1 { "" } else { "s" },
                    path.display(),
                    missing[0]
                )))
            }
            Ok(_) => {}
            Err(e) => log::info!("the target's own backup was not compared: {e}"),
        }
    }
    Ok(None)
}

/// Check the backup and prepare what the device will ask for, for the
/// device `target`.
fn plan(root: &Path, source: &str, target: &str, opts: &RestoreOptions) -> Result<Plan> {
    let folder = opts.folder.clone().unwrap_or_else(|| root.join(source));
    let status = Value::from_file(folder.join("Status.plist"))
        .ok()
        .and_then(Value::into_dictionary);
    match status.as_ref().and_then(|s| s.str_of("SnapshotState")) {
        Some("finished") => {}
        _ if !folder.join("Manifest.db").exists() && !folder.exists() => {
            // Restoring to a new device names the backup to restore.
            let mut there: Vec<String> = std::fs::read_dir(root)
                .into_iter()
                .flatten()
                .flatten()
                .filter(|e| e.path().join("Manifest.db").is_file())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect();
            there.sort();
            return Err(EngineError::Usage(if there.is_empty() {
                format!("{} holds no backup of {source}", root.display())
            } else {
                format!(
                    "{} holds no backup of {source}; to restore another device's backup to it, give --source UDID, one of: {}",
                    root.display(),
                    there.join(", ")
                )
            }));
        }
        _ if !folder.join("Manifest.db").exists() => {
            return Err(EngineError::Damaged(format!(
                "{} holds no backup of {source}",
                root.display()
            )))
        }
        _ => {
            return Err(EngineError::Damaged(format!(
                "the backup in {} is not complete (Status.plist)",
                folder.display()
            )))
        }
    }
    let backup = Backup::open(&folder, opts.password.as_deref())?;
    // Every file the device will ask for must be there, or the device
    // stops half way with MBErrorDomain 205.
    let (mut files, mut bytes, mut missing, mut unusable) = (0u64, 0u64, Vec::new(), Vec::new());
    backup.for_each(|row| {
        if row.flags == FLAG_FILE && opts.selection.matches(&row.domain, &row.relative_path) {
            files += 1;
            bytes += row.file.size;
            match backup.contents().open(&row.file_id) {
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound && row.file.size == 0 => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    missing.push(format!("{}-{}", row.domain, row.relative_path))
                }
                // A link where a file should be: sending it would send
                // whatever it leads to.
                Err(e) => unusable.push(format!("{}-{} ({e})", row.domain, row.relative_path)),
            }
        }
        Ok(())
    })?;
    if !unusable.is_empty() {
        return Err(EngineError::Damaged(format!(
            "{} files of {} cannot be used, e.g. {}",
            unusable.len(),
            folder.display(),
            unusable[0]
        )));
    }
    if !missing.is_empty() {
        return Err(EngineError::Damaged(format!(
            "{} files are missing from {}, e.g. {}",
            missing.len(),
            folder.display(),
            missing[0]
        )));
    }
    let filtered = if opts.selection.is_all() {
        None
    } else {
        let t = ibackup_store::scratch("restore")?;
        let (rows, _) =
            backup.write_filtered_index(&opts.selection, &t.path().join("Manifest.db"))?;
        if rows == 0 {
            return Err(EngineError::Usage(format!(
                "nothing in the backup of {source} matches --only/--domain {}",
                opts.selection.categories.join(",")
            )));
        }
        Some(t)
    };
    let target_backup = root.join(target);
    let compare = (target_backup != folder && target_backup.join("Manifest.db").is_file())
        .then_some((target_backup.as_path(), opts.password.as_deref()));
    let partial = if opts.selection.is_all() {
        partial_reason(&folder, &backup, compare)?
    } else {
        None
    };
    Ok(Plan {
        source: source.to_string(),
        backup,
        files,
        bytes,
        filtered,
        partial,
    })
}

/// The `Restore` request, with libimobiledevice's option names.
fn request(target: &str, plan: &Plan, opts: &RestoreOptions) -> Mb2Request {
    let mut o = Dictionary::new();
    o.insert("RestoreSystemFiles".into(), Value::Boolean(opts.system));
    o.insert("RestoreShouldReboot".into(), Value::Boolean(opts.reboot));
    o.insert("RestoreDontCopyBackup".into(), Value::Boolean(true));
    o.insert(
        "RestorePreserveSettings".into(),
        Value::Boolean(!opts.settings),
    );
    // A whole restore of a whole backup makes the device what the backup
    // was; a selective one, or one of a backup that holds only part of a
    // device, changes nothing else.
    o.insert(
        "RemoveItemsNotRestored".into(),
        Value::Boolean(opts.selection.is_all() && plan.partial.is_none()),
    );
    if let Some(p) = &opts.password {
        o.insert("Password".into(), Value::from(p.as_str()));
    }
    Mb2Request {
        name: "Restore".into(),
        target: Some(target.into()),
        source: Some(plan.source.clone()),
        options: o,
        extra: Dictionary::new(),
    }
}

/// The iOS version the backup in `folder` was made on: Manifest.plist's
/// `Lockdown`, else Info.plist's `Product Version`.
fn backup_ios(folder: &Path) -> Option<String> {
    let from_manifest = ibackup_store::reader::manifest_plist(folder)
        .ok()
        .and_then(|m| {
            m.get("Lockdown")?
                .as_dictionary()?
                .str_of("ProductVersion")
                .map(str::to_string)
        });
    from_manifest.or_else(|| {
        Value::from_file(folder.join("Info.plist"))
            .ok()?
            .as_dictionary()?
            .str_of("Product Version")
            .map(str::to_string)
    })
}

/// Whether iOS version `a` is later than `b` ("17.5.1" than "17.5");
/// false when either is not a version.
fn newer(a: &str, b: &str) -> bool {
    let parse =
        |v: &str| -> Option<Vec<u32>> { v.trim().split('.').map(|p| p.parse().ok()).collect() };
    match (parse(a), parse(b)) {
        (Some(mut a), Some(mut b)) => {
            let n = a.len().max(b.len());
            a.resize(n, 0);
            b.resize(n, 0);
            a > b
        }
        _ => false,
    }
}

/// Map a device's final error code to what the user can act on.
fn device_error(code: u64, description: String, needed: u64) -> EngineError {
    match code {
        error_code::FIND_MY_ENABLED => EngineError::FindMy,
        error_code::INVALID_PASSWORD => EngineError::WrongPassword,
        error_code::INSUFFICIENT_DISK_SPACE => EngineError::DeviceFull { needed },
        _ => EngineError::DeviceRefused { code, description },
    }
}

/// Restore the newest backup of `opts.source` (default: `target` itself)
/// from `root` to `target`.
pub fn run(
    mux: &dyn Transport,
    target: &DeviceRecord,
    root: &Path,
    opts: &RestoreOptions,
    events: &mut dyn Events,
) -> Result<RestoreOutcome> {
    let source = opts.source.clone().unwrap_or_else(|| target.udid.clone());
    // Hold the source's lock so no backup replaces the folder mid-restore;
    // a read-only disk has no lock to take and nothing can change it.
    let _lock = match BackupDir::open(root, &source) {
        Ok(l) => Some(l),
        Err(EngineError::Io(e))
            if matches!(
                e.kind(),
                std::io::ErrorKind::PermissionDenied | std::io::ErrorKind::ReadOnlyFilesystem
            ) =>
        {
            None
        }
        Err(e) => return Err(e),
    };
    events.step("checking the backup");
    let plan = plan(root, &source, &target.udid, opts)?;
    if let Some(why) = &plan.partial {
        events.step(&format!(
            "this backup holds only part of {source} ({why}): restoring what it holds; nothing else on {} is removed",
            target.udid
        ));
    }
    let mut overrides = HashMap::new();
    if let Some(t) = &plan.filtered {
        overrides.insert(
            format!("{source}/Manifest.db"),
            t.path().join("Manifest.db"),
        );
    }
    events.step("connecting to the device");
    let mut session = device::open(mux, target, opts.trust_wait, &mut || {
        events.waiting_for_trust()
    })?;
    // A device cannot take a backup from a newer iOS than its own: it
    // would refuse after the whole backup went over.
    if let Some(made_on) = backup_ios(&plan.backup.path) {
        let values = session.values()?;
        if let Some(runs) = values.str_of("ProductVersion") {
            if newer(&made_on, runs) {
                return Err(EngineError::TargetTooOld {
                    backup: made_on,
                    target: runs.to_string(),
                });
            }
        }
    }
    events.step("taking the sync lock");
    let lock = crate::sync::SyncLock::acquire(&mut session)?;
    let area = Area::ReadOnly {
        udid: source.clone(),
        root: plan.backup.path.clone(),
        overrides,
    };
    let result = (|| -> Result<()> {
        events.step("starting the restore service");
        let mut host = Host::open(&mut session, area, events)?;
        host.events
            .step(if opts.selection.is_all() && plan.partial.is_none() {
                "sending the whole backup"
            } else {
                "sending the chosen files"
            });
        let last = host.converse_when_free(&mut session, &request(&target.udid, &plan, opts))?;
        let code = last.u64_of("ErrorCode").unwrap_or(0);
        if code != error_code::SUCCESS {
            let description = last.str_of("ErrorDescription").unwrap_or("").to_string();
            return Err(device_error(code, description, plan.bytes));
        }
        host.disconnect();
        Ok(())
    })();
    if let Err(e) = lock.release(&mut session) {
        log::info!("sync lock not released: {e}");
    }
    result?;
    Ok(RestoreOutcome {
        source,
        target: target.udid.clone(),
        files: plan.files,
        bytes: plan.bytes,
        partial: plan.partial.clone(),
    })
}

/// A change of the device's backup password.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PasswordChange {
    On { new: String },
    Off { old: String },
    Change { old: String, new: String },
}

/// Whether the device encrypts its backups, asked before any password is:
/// `encryption off` on a device that does not encrypt is told so, not
/// asked for a password it has not got.
pub fn encryption_is_on(
    mux: &dyn Transport,
    target: &DeviceRecord,
    trust_wait: Duration,
    events: &mut dyn Events,
) -> Result<bool> {
    let mut session = device::open(mux, target, trust_wait, &mut || events.waiting_for_trust())?;
    device::will_encrypt(&mut session)
}

/// Turn backup encryption on or off, or change its password, as Finder
/// does: a `ChangePassword` request to mobilebackup2 (fact sheet §5.7).
pub fn change_password(
    mux: &dyn Transport,
    target: &DeviceRecord,
    change: &PasswordChange,
    trust_wait: Duration,
    events: &mut dyn Events,
) -> Result<()> {
    let mut session = device::open(mux, target, trust_wait, &mut || events.waiting_for_trust())?;
    let on = device::will_encrypt(&mut session)?;
    let mut extra = Dictionary::new();
    match (change, on) {
        (PasswordChange::On { .. }, true) => {
            return Err(EngineError::Usage(
                "backup encryption is already on; use `ibackup encryption change` to change its password".into(),
            ))
        }
        (PasswordChange::Off { .. } | PasswordChange::Change { .. }, false) => {
            return Err(EngineError::Usage(
                "backup encryption is off; turn it on with `ibackup encryption on`".into(),
            ))
        }
        _ => {}
    }
    match change {
        PasswordChange::On { new } => {
            extra.insert("NewPassword".into(), Value::from(new.as_str()));
        }
        PasswordChange::Off { old } => {
            extra.insert("OldPassword".into(), Value::from(old.as_str()));
        }
        PasswordChange::Change { old, new } => {
            extra.insert("OldPassword".into(), Value::from(old.as_str()));
            extra.insert("NewPassword".into(), Value::from(new.as_str()));
        }
    }
    let scratch = tempfile::tempdir()?;
    let area = Area::ReadOnly {
        udid: target.udid.clone(),
        root: PathBuf::from(scratch.path()),
        overrides: HashMap::new(),
    };
    events.step(
        "asking the device to change its backup password (enter the passcode on the device if it asks)",
    );
    let mut host = Host::open(&mut session, area, events)?;
    let last = host.converse_when_free(
        &mut session,
        &Mb2Request {
            name: "ChangePassword".into(),
            target: Some(target.udid.clone()),
            source: None,
            options: Dictionary::new(),
            extra,
        },
    )?;
    host.disconnect();
    match last.u64_of("ErrorCode").unwrap_or(0) {
        error_code::SUCCESS => Ok(()),
        error_code::INVALID_PASSWORD if !matches!(change, PasswordChange::On { .. }) => {
            Err(EngineError::WrongPassword)
        }
        code => Err(EngineError::DeviceRefused {
            code,
            description: last.str_of("ErrorDescription").unwrap_or("").to_string(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ios_versions_compare_by_number() {
        assert!(newer("17.5.1", "17.5"));
        assert!(newer("17.10", "17.9"));
        assert!(newer("18.0", "17.6.1"));
        assert!(!newer("17.5", "17.5.0"));
        assert!(!newer("16.7", "17.0"));
        assert!(!newer("17.5", "not a version"));
        assert!(!newer("", "17.0"));
    }

    fn opts(only: &[&str]) -> RestoreOptions {
        RestoreOptions {
            source: None,
            folder: None,
            selection: Selection::parse(
                &only.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
                &[],
            )
            .unwrap(),
            system: true,
            reboot: false,
            settings: false,
            password: Some("pw".into()),
            trust_wait: Duration::from_secs(1),
        }
    }

    #[test]
    fn device_codes_become_errors_a_user_can_act_on() {
        assert!(matches!(
            device_error(211, "x".into(), 0),
            EngineError::FindMy
        ));
        assert!(matches!(
            device_error(207, "x".into(), 0),
            EngineError::WrongPassword
        ));
        assert!(matches!(
            device_error(105, "x".into(), 42),
            EngineError::DeviceFull { needed: 42 }
        ));
        assert!(matches!(
            device_error(1, "x".into(), 0),
            EngineError::DeviceRefused { code: 1, .. }
        ));
    }

    /// A finished backup of `udid` in `root` holding a folder row in each
    /// of `domains`, with Info.plist `extra` keys.
    fn backup_with(root: &Path, udid: &str, domains: &[&str], extra: Dictionary) {
        let b = root.join(udid);
        std::fs::create_dir_all(&b).unwrap();
        let mut w =
            ibackup_store::manifest_db::ManifestWriter::create(&b.join("Manifest.db")).unwrap();
        for d in domains {
            w.insert(
                d,
                &ibackup_store::mbfile::MbFile {
                    relative_path: "Media".into(),
                    mode: 0o040755,
                    ..Default::default()
                },
            )
            .unwrap();
        }
        w.finish().unwrap();
        Value::Dictionary(Dictionary::new())
            .to_file_xml(b.join("Manifest.plist"))
            .unwrap();
        Value::Dictionary(extra)
            .to_file_xml(b.join("Info.plist"))
            .unwrap();
        let mut st = Dictionary::new();
        st.insert("SnapshotState".into(), Value::from("finished"));
        Value::Dictionary(st)
            .to_file_xml(b.join("Status.plist"))
            .unwrap();
    }

    const WHOLE: [&str; 4] = [
        "HomeDomain",
        "SystemPreferencesDomain",
        "WirelessDomain",
        "CameraRollDomain",
    ];

    fn removes(root: &Path, source: &str, target: &str, o: &RestoreOptions) -> bool {
        let p = plan(root, source, target, o).unwrap();
        request(target, &p, o)
            .options
            .bool_of("RemoveItemsNotRestored")
            .unwrap()
    }

    #[test]
    fn a_selective_restore_keeps_the_rest_of_the_device() {
        let t = tempfile::tempdir().unwrap();
        backup_with(t.path(), "A", &WHOLE, Dictionary::new());
        let o = opts(&["photos"]);
        let p = plan(t.path(), "A", "B", &o).unwrap();
        assert!(p.filtered.is_some());
        let r = request("B", &p, &o);
        assert_eq!(
            (r.target.as_deref(), r.source.as_deref()),
            (Some("B"), Some("A"))
        );
        assert_eq!(r.options.bool_of("RemoveItemsNotRestored"), Some(false));
        assert_eq!(r.options.bool_of("RestoreSystemFiles"), Some(true));
        assert_eq!(r.options.str_of("Password"), Some("pw"));
        let all = opts(&[]);
        let p = plan(t.path(), "A", "A", &all).unwrap();
        assert!(p.filtered.is_none() && p.partial.is_none());
        assert!(removes(t.path(), "A", "A", &all), "a whole backup, whole");

        assert!(matches!(
            plan(t.path(), "A", "B", &opts(&["messages"])),
            Err(EngineError::Usage(_))
        ));
        match plan(t.path(), "Z", "Z", &all) {
            Err(EngineError::Usage(m)) => assert!(m.contains("--source UDID, one of: A"), "{m}"),
            Err(e) => panic!("{e}"),
            Ok(_) => panic!("Z has no backup"),
        }
    }

    #[test]
    fn a_whole_restore_of_part_of_a_device_removes_nothing() {
        let t = tempfile::tempdir().unwrap();
        let all = opts(&[]);
        // Made with --only: Info.plist says so.
        let mut only = Dictionary::new();
        only.insert(
            INFO_ONLY_KEY.into(),
            Value::Array(vec![Value::from("photos")]),
        );
        backup_with(t.path(), "F", &WHOLE, only);
        let p = plan(t.path(), "F", "B", &all).unwrap();
        assert!(p.partial.as_deref().unwrap().contains("--only photos"));
        assert!(!removes(t.path(), "F", "B", &all));
        // Another tool's filtered backup: no home folder.
        backup_with(t.path(), "P", &["CameraRollDomain"], Dictionary::new());
        let p = plan(t.path(), "P", "B", &all).unwrap();
        assert!(p.partial.as_deref().unwrap().contains("HomeDomain"));
        assert!(!removes(t.path(), "P", "B", &all));
        // Whole-looking, but the target's own backup has an app it lacks.
        backup_with(t.path(), "A", &WHOLE, Dictionary::new());
        let mut more = WHOLE.to_vec();
        more.push("AppDomain-com.example.b-only");
        backup_with(t.path(), "B", &more, Dictionary::new());
        let p = plan(t.path(), "A", "B", &all).unwrap();
        assert!(p
            .partial
            .as_deref()
            .unwrap()
            .contains("AppDomain-com.example.b-only"));
        assert!(!removes(t.path(), "A", "B", &all));
        // The other way round nothing is lacking.
        assert!(removes(t.path(), "B", "A", &all));
    }
}
