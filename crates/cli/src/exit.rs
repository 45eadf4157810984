//! One sentence and one exit code for every failure a user can hit.
//! The table is documented in docs/exit-codes.md.

use ibackup_engine::EngineError;

pub fn describe(e: &EngineError) -> (u8, String) {
    use EngineError::*;
    match e {
        NoDevice => (3, "No iPhone or iPad is connected. Connect it with a USB cable, unlock it, and run again.".into()),
        DeviceNotFound(u) => (3, format!("No device with UDID {u} is connected. Run `ibackup devices` to see the connected ones.")),
        SeveralDevices(list) => (3, format!("Several devices are connected ({list}); choose one with -u UDID.")),
        Unreachable(why) => (12, format!("{}.", sentence_case(why))),
        Usbmuxd { addr, source } if addr.starts_with("direct USB") => (12, format!("Cannot look for devices over {addr} ({source}). See docs/direct-usb.md for what this system needs, or use --transport usbmuxd.")),
        Usbmuxd { addr, source } => (12, format!("Cannot reach {addr} ({source}). Install and start usbmuxd (Linux) or iTunes/Apple Devices (Windows), set USBMUXD_SOCKET_ADDRESS, or use --transport usb to reach the phone without it.")),
        NotTrusted => (4, "The device has not trusted this computer. Unlock it, tap Trust when asked, and run again.".into()),
        NotPaired(udid) => (4, format!("{udid} does not trust this computer (it was never paired, or was unpaired). Run `ibackup pair`, unlock the device and tap Trust.")),
        TrustDenied => (5, "The device refused to trust this computer (Don't Trust was tapped). Unplug and reconnect it, then tap Trust.".into()),
        Locked => (6, "The device is locked. Unlock it with its passcode and run again.".into()),
        ConnectionLost(why) => (8, format!("The connection to the device was lost ({why}). The last backup is intact; reconnect and run again.")),
        DiskFull { needed, first } => (7, format!("The backup disk is full. Free at least {} (`ibackup prune` removes old snapshots) and run again; {}", human(*needed), if *first { "what this first backup had received was deleted." } else { "the last backup is intact." })),
        TargetTooOld { backup, target } => (10, format!("This backup was made on iOS {backup} and the target device runs iOS {target}; a device cannot restore a backup from a newer iOS. Update the target (Settings > General > Software Update) and run again. Nothing was sent.")),
        DeviceRefused { code, description } => (10, format!("The device refused: {description} (error {code}).")),
        PasswordRequired => (13, "This backup is encrypted: give its password in IBACKUP_PASSWORD or with --password-file FILE. Nothing was written.".into()),
        FindMy => (14, "Find My is on on the target device. Turn it off there (Settings > [your name] > Find My > Find My iPhone) and run again.".into()),
        DeviceFull { needed } => (15, format!("Not enough space on the device: the restore needs about {}. Free space on it (or restore less with --only) and run again.", human(*needed))),
        Usage(what) => (2, format!("{}.", sentence_case(what))),
        Busy(lock) => (11, format!("Another backup of this device is already running (lock {lock}). Wait for it to finish.")),
        DeviceBusy { waited } => (11, format!("The device is busy with another backup or restore (Finder, iTunes or another computer) and still was after {waited} s. Let it finish and run again; nothing was changed.")),
        FileTooLarge { written } => (9, format!("The backup disk cannot hold a file larger than {} that the device sent (FAT32 disks hold at most 4 GB a file). Back up to a disk formatted exFAT, ext4, APFS or NTFS; the last backup is intact.", human(*written))),
        DiskGone(why) => (9, format!("The backup disk went away during the backup ({why}). Reconnect or mount it and run again; the backups on it are as they were.")),
        Damaged(why) => (9, format!("The backup folder is damaged ({why}). Run `ibackup verify`, then `ibackup full`.")),
        Unsound(what) => (9, format!("The backup has problems ({what}). Make a new one with `ibackup full`; earlier backups are untouched.")),
        Io(err) if err.kind() == std::io::ErrorKind::StorageFull => (7, format!("The backup disk is full ({err}). Free space (`ibackup prune` removes old snapshots) and run again; the last backup is intact.")),
        Io(err) => (9, format!("Cannot use the backup folder: {err}.")),
        Output { path, source } if source.kind() == std::io::ErrorKind::StorageFull => (7, format!("The disk holding {} is full. Free space and run again; the backup is untouched.", path.display())),
        Output { path, source } => (16, format!("Cannot write {} ({source}). Choose a folder you can write to; the backup is untouched.", path.display())),
        PasswordNotForLast { folder } => (13, format!("The backup password given does not open the last backup ({folder}); found before anything was received, nothing was written. Give the right one (IBACKUP_PASSWORD, --password-file); if the backup password was changed since that backup, run with --full, which does not check it against the last one.")),
        WrongPassword => (13, "Wrong backup password; nothing was written. A forgotten password cannot be recovered: on the device, Settings > General > Transfer or Reset iPhone > Reset > Reset All Settings removes it, and later backups use a new one.".into()),
        RefusedPaths { refused } => (17, format!("The backup is complete and whole, but the device asked to write {refused} {} outside its backup folder, which ibackup refused (nothing was written there). A device should never do this: if it repeats, report it with RUST_LOG=debug output.", if *refused == 1 { "path" } else { "paths" })),
        LostDuring { why, left } => (8, format!("The connection to the device was lost ({why}): {left}.")),
        NotExportable(why) => (18, format!("Nothing was exported: {why}.")),
        RefusedNames { refused, listed } => (17, format!("Every other file was copied, but the device listed {refused} camera-roll {} that would lead outside the folder or are not text ({}); {} skipped and nothing was written for {}. A phone should never do this: if it repeats, report it with RUST_LOG=debug output.", if *refused == 1 { "name" } else { "names" }, listed.join(", "), if *refused == 1 { "it was" } else { "they were" }, if *refused == 1 { "it" } else { "them" })),
        Interrupted(left) => (130, format!("Interrupted by Ctrl-C or a stop signal before the end: {left}.")),
        Protocol(why) => (1, format!("Unexpected answer from the device: {why}. Run again; if it keeps happening, report it with RUST_LOG=debug output.")),
    }
}

/// `what` with a capital first letter, unless it begins with a path or a
/// name as the user typed it ("bk holds no backup": `bk` is a folder).
fn sentence_case(what: &str) -> String {
    let first = what.split(' ').next().unwrap_or("");
    let a_name = first.contains(['/', '.', '\\', '-', '_'])
        || first
            .chars()
            .any(|c| c.is_ascii_digit() || c.is_uppercase())
        || std::path::Path::new(first).exists();
    match what.chars().next() {
        Some(c) if !a_name => c.to_uppercase().chain(what.chars().skip(1)).collect(),
        _ => what.to_string(),
    }
}

fn human(n: u64) -> String {
    if n >= 1 << 30 {
        format!("{:.1} GB", n as f64 / 1e9)
    } else {
        format!("{:.0} MB", (n as f64 / 1e6).max(1.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usage_sentences_keep_a_path_as_typed() {
        assert_eq!(sentence_case("give the folder"), "Give the folder");
        assert_eq!(
            sentence_case("./bk holds no backup"),
            "./bk holds no backup"
        );
        assert_eq!(sentence_case("/mnt/x is not"), "/mnt/x is not");
        assert_eq!(sentence_case("00008110-ABC has"), "00008110-ABC has");
        let t = tempfile::tempdir().unwrap();
        let bk = t.path().join("bk");
        std::fs::create_dir(&bk).unwrap();
        let what = format!("{} holds no backup", bk.display());
        assert_eq!(sentence_case(&what), what);
    }

    #[test]
    fn a_full_disk_is_exit_7_wherever_it_is_met_and_other_io_failures_9() {
        let full = std::io::Error::from(std::io::ErrorKind::StorageFull);
        let (code, sentence) = describe(&EngineError::Io(full));
        assert_eq!(code, 7, "{sentence}");
        assert!(sentence.contains("disk is full") && sentence.contains("intact"));
        let denied = std::io::Error::from(std::io::ErrorKind::PermissionDenied);
        assert_eq!(describe(&EngineError::Io(denied)).0, 9);
        let (code, sentence) = describe(&EngineError::DiskFull {
            needed: 3 << 30,
            first: false,
        });
        assert_eq!(code, 7);
        assert!(sentence.contains("3.2 GB"), "{sentence}");
    }

    #[test]
    fn an_interruption_is_130_and_says_what_it_left() {
        let (code, sentence) = describe(&EngineError::Interrupted(
            ibackup_engine::error::stopped::RESTORE,
        ));
        assert_eq!(code, 130);
        assert!(sentence.contains("restore did not finish"), "{sentence}");
    }
}
