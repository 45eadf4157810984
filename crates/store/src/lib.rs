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
