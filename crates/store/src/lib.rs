//! The Finder/iTunes backup folder format.
//!
//! One module per on-disk structure: [`mbfile`] (the NSKeyedArchiver record
//! in each Manifest.db row), [`manifest_db`] (the SQLite index),
//! [`paths`] (file IDs and the validation of every path a device or a disk
//! hands us). Facts in `docs/format.md` and the shared format fact sheet.

pub mod categories;
pub mod crypto;
pub mod digests;
pub mod error;
pub mod extract;
pub mod manifest_db;
pub mod mbfile;
pub mod paths;
pub mod reader;
pub mod verify;

pub use error::StoreError;

/// A scratch folder in the system's temporary folder, named
/// `ibackup-<kind>-<pid>-…`; ones that a killed ibackup left there (their
/// process is gone) are removed first, so nothing piles up.
pub fn scratch(kind: &str) -> std::io::Result<tempfile::TempDir> {
    let prefix = format!("ibackup-{kind}-");
    for e in std::fs::read_dir(std::env::temp_dir())
        .into_iter()
        .flatten()
        .flatten()
    {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(rest) = name.strip_prefix(&prefix) else {
            continue;
        };
        let pid = rest.split('-').next().and_then(|p| p.parse::<u32>().ok());
        if pid.is_some_and(|p| !process_alive(p)) {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
    tempfile::Builder::new()
        .prefix(&format!("{prefix}{}-", std::process::id()))
        .tempdir()
}

#[cfg(unix)]
fn process_alive(pid: u32) -> bool {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return true;
    };
    // SAFETY: signal 0 only asks whether the process exists.
    let r = unsafe { libc::kill(pid, 0) };
    r == 0 || std::io::Error::last_os_error().raw_os_error() != Some(libc::ESRCH)
}

#[cfg(not(unix))]
fn process_alive(_pid: u32) -> bool {
    // No cheap portable check: leave them to the system's own clean-up.
    true
}

/// Test fixtures shared by the modules' tests.
#[cfg(test)]
pub(crate) mod testing {
    use std::path::Path;

    use plist::Value;

    use crate::crypto::{self, Keybag};

    /// Finish an encrypted backup as a device does: `plain_db` encrypted
    /// with `db_key` as Manifest.db, and Manifest.plist holding the keybag
    /// and the index key wrapped under class 4.
    pub fn seal_index(backup: &Path, kb: &Keybag, plain_db: &[u8], db_key: [u8; 32]) {
        std::fs::write(
            backup.join("Manifest.db"),
            crypto::encrypt(&db_key, plain_db),
        )
        .unwrap();
        let mut m = plist::Dictionary::new();
        m.insert("IsEncrypted".into(), Value::Boolean(true));
        m.insert("BackupKeyBag".into(), Value::Data(kb.encode()));
        m.insert(
            "ManifestKey".into(),
            Value::Data(kb.wrap_key(4, &db_key).unwrap()),
        );
        Value::Dictionary(m)
            .to_file_xml(backup.join("Manifest.plist"))
            .unwrap();
    }
}
