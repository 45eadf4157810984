//! The Finder/iTunes backup folder format.
//!
//! One module per on-disk structure: [`mbfile`] (the NSKeyedArchiver record
//! in each Manifest.db row), [`manifest_db`] (the SQLite index),
//! [`paths`] (file IDs and the validation of every path a device or a disk
//! hands us). Facts in `docs/format.md` and the shared format fact sheet.

pub mod categories;
pub mod crypto;
pub mod error;
pub mod extract;
pub mod manifest_db;
pub mod mbfile;
pub mod paths;
pub mod reader;
pub mod verify;

pub use error::StoreError;
