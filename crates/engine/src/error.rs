//! What can go wrong, in the categories a user can act on.

use ibackup_proto::ProtoError;
use thiserror::Error;

#[derive(Debug, Error)]
pub enum EngineError {
    #[error("no device is connected")]
    NoDevice,
    #[error("no device with UDID {0} is connected")]
    DeviceNotFound(String),
    #[error("several devices are connected ({0}); choose one with -u UDID")]
    SeveralDevices(String),
    #[error("cannot reach {addr}: {source}")]
    Usbmuxd {
        addr: String,
        source: std::io::Error,
    },
    /// The transport cannot reach the device; the sentence says what to do.
    #[error("{0}")]
    Unreachable(String),
    #[error("the device has not trusted this computer yet")]
    NotTrusted,
    /// `validate`: the device does not trust this computer (never paired,
    /// or unpaired).
    #[error("{0} does not trust this computer")]
    NotPaired(String),
    #[error("the user tapped Don't Trust on the device")]
    TrustDenied,
    #[error("the device is locked with a passcode")]
    Locked,
    #[error("the connection to the device was lost: {0}")]
    ConnectionLost(String),
    /// `first`: there was no earlier backup of the device (so none that
    /// stays intact).
    #[error("the backup disk is full: {needed} more bytes are needed")]
    DiskFull { needed: u64, first: bool },
    #[error("the device refused: {description} (error {code})")]
    DeviceRefused { code: u64, description: String },
    /// The backup disk cannot hold a file this large (FAT32: 4 GiB); the
    /// file stopped after `written` bytes.
    #[error("the backup disk cannot hold a file larger than {written} bytes")]
    FileTooLarge { written: u64 },
    /// The backup disk went away mid-backup (unplugged, unmounted).
    #[error("the backup disk went away: {0}")]
    DiskGone(String),
    #[error("another backup of this device is running (lock {0})")]
    Busy(String),
    /// The device kept saying another backup or restore is in progress
    /// (Finder, iTunes, another computer) for `waited` seconds.
    #[error("the device is busy with another backup or restore")]
    DeviceBusy { waited: u64 },
    #[error("the backup folder is damaged: {0}")]
    Damaged(String),
    #[error("wrong backup password")]
    WrongPassword,
    #[error("the backup is encrypted and no password was given")]
    PasswordRequired,
    /// `backup --only` of an encrypted device: the password given does
    /// not open the last backup in `folder`, checked before the transfer.
    #[error("the password does not open the last backup in {folder}")]
    PasswordNotForLast { folder: String },
    #[error("Find My is on on the target device")]
    FindMy,
    #[error("the backup is from iOS {backup}, newer than the target's iOS {target}")]
    TargetTooOld { backup: String, target: String },
    #[error("not enough space on the device: {needed} bytes are needed")]
    DeviceFull { needed: u64 },
    /// The request itself cannot be carried out as asked.
    #[error("{0}")]
    Usage(String),
    /// `verify` found problems (already listed to the user).
    #[error("the backup has problems: {0}")]
    Unsound(String),
    #[error("i/o error on the backup disk: {0}")]
    Io(#[from] std::io::Error),
    /// Writing the output the user asked for (`extract --to OUT`) failed;
    /// the backup is untouched.
    #[error("cannot write {}: {source}", path.display())]
    Output {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("protocol error: {0}")]
    Protocol(String),
    /// The backup finished and is whole, but the device asked to write or
    /// move `refused` paths outside its folder, which were refused: a
    /// device (or a tool in between) misbehaving is worth an exit code.
    #[error("the device named {refused} paths outside the backup folder")]
    RefusedPaths { refused: u64 },
    /// The connection was lost during a command that is not a backup
    /// (`photos`); `left` says what that left.
    #[error("the connection to the device was lost ({why})")]
    LostDuring { why: String, left: &'static str },
    /// `export` cannot read what was asked from this backup: it does not
    /// hold the database, or holds it in a layout ibackup does not know.
    #[error("{0}")]
    NotExportable(String),
    /// `photos` copied everything else, but the device listed names that
    /// would lead outside OUT or are not text; they were skipped.
    #[error("the device listed {refused} unusable camera-roll names")]
    RefusedNames { refused: u64, listed: Vec<String> },
    /// Stopped on request (Ctrl-C, a stop signal) before the end; the
    /// text says what that left (see [`stopped`]).
    #[error("interrupted: {0}")]
    Interrupted(&'static str),
}

/// What an interrupted command left, for [`EngineError::Interrupted`].
pub mod stopped {
    pub const BACKUP: &str =
        "nothing from this run was kept and the last backup is intact. Run it again to back up";
    /// A backup ended at once (a second Ctrl-C): what it staged is still
    /// on the disk until the next run clears it.
    pub const BACKUP_AT_ONCE: &str =
        "the last backup is intact; what this run had received is still in DIR/.ibackup/staging and the next ibackup command on DIR removes it";
    /// Ended while the backup was being made the newest.
    pub const BACKUP_MID_COMMIT: &str =
        "it ended while the finished backup was being saved; the next ibackup command on DIR completes or undoes that, and `ibackup snapshots DIR` then shows whether it was kept. The last backup is intact either way";
    pub const RESTORE: &str = "the restore did not finish; the backup is untouched. Run it again";
    pub const ENCRYPTION: &str =
        "run `ibackup info` to see whether the device's encryption setting changed";
    pub const PHOTOS: &str =
        "the files copied so far are whole in OUT and no partial one is left; run it again to copy the rest";
    pub const EXTRACT: &str =
        "the files already in the output folder are whole, the rest were not extracted. Run it again to extract them all";
    pub const CHECKOUT: &str = "nothing was left in the output folder. Run it again";
    pub const OTHER: &str = "run it again";
}

impl EngineError {
    /// `self`, or [`EngineError::Interrupted`] when a stop was asked for
    /// on `cancel`: the failures a stop causes
    /// (a hung-up connection, a refused new one) are its doing. A full
    /// disk or an unwritable output is still worth saying.
    pub fn after_stop(
        self,
        cancel: &ibackup_transport::Cancel,
        what_it_left: &'static str,
    ) -> Self {
        if cancel.requested()
            && !matches!(
                self,
                EngineError::DiskFull { .. } | EngineError::Output { .. }
            )
        {
            EngineError::Interrupted(what_it_left)
        } else {
            self
        }
    }
}

/// Why a connection was given up when the device went silent.
pub const STALLED: &str = "the device went silent for longer than --stall-timeout";

impl From<ProtoError> for EngineError {
    fn from(e: ProtoError) -> Self {
        match e {
            ProtoError::Closed => {
                EngineError::ConnectionLost("the device closed the connection".into())
            }
            // The stall timeout (MuxClient::stall_timeout) ran out.
            ProtoError::Io(io)
                if matches!(
                    io.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                EngineError::ConnectionLost(STALLED.into())
            }
            // Cut mid-message: Rust's "failed to fill whole buffer" says
            // nothing to a user.
            ProtoError::Io(io) if io.kind() == std::io::ErrorKind::UnexpectedEof => {
                EngineError::ConnectionLost(
                    "the connection ended in the middle of a message".into(),
                )
            }
            // Any I/O failure on a device stream is the connection going away.
            ProtoError::Io(io) => EngineError::ConnectionLost(io.to_string()),
            ProtoError::Lockdown { error, .. } if error == "PasswordProtected" => {
                EngineError::Locked
            }
            ProtoError::Lockdown { error, .. } if error == "UserDeniedPairing" => {
                EngineError::TrustDenied
            }
            ProtoError::Lockdown { error, .. } if error == "PairingDialogResponsePending" => {
                EngineError::NotTrusted
            }
            ProtoError::Unreachable(why) => EngineError::Unreachable(why),
            other => EngineError::Protocol(other.to_string()),
        }
    }
}

impl From<ibackup_store::StoreError> for EngineError {
    fn from(e: ibackup_store::StoreError) -> Self {
        match e {
            ibackup_store::StoreError::Io(io) => EngineError::Io(io),
            ibackup_store::StoreError::WrongPassword => EngineError::WrongPassword,
            ibackup_store::StoreError::PasswordRequired => EngineError::PasswordRequired,
            ibackup_store::StoreError::Output { path, source } => {
                EngineError::Output { path, source }
            }
            ibackup_store::StoreError::Stopped => EngineError::Interrupted(stopped::OTHER),
            other => EngineError::Damaged(other.to_string()),
        }
    }
}

pub type Result<T> = std::result::Result<T, EngineError>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_read_that_timed_out_is_a_silent_device_and_other_failures_say_theirs() {
        for kind in [std::io::ErrorKind::WouldBlock, std::io::ErrorKind::TimedOut] {
            let e = EngineError::from(ProtoError::Io(std::io::Error::from(kind)));
            assert!(
                matches!(&e, EngineError::ConnectionLost(why) if why == STALLED),
                "{e}"
            );
        }
        let reset = std::io::Error::from(std::io::ErrorKind::ConnectionReset);
        let e = EngineError::from(ProtoError::Io(reset));
        assert!(
            matches!(&e, EngineError::ConnectionLost(why) if why != STALLED),
            "{e}"
        );
    }
}
