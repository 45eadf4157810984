//! The owner's data out of a backup, in formats other programs read:
//! messages as HTML pages and JSON, contacts as vCard, the calendar as
//! iCalendar and the call history as CSV.
//!
//! Each exporter reads the real iOS database by the tables and columns
//! it needs, checks them first and refuses a layout it does not know
//! ([`ExportError::UnknownLayout`]) rather than write a wrong export.
//! The layouts each one knows are in docs/export.md.
//!
//! Databases are decrypted (for an encrypted backup) into a scratch
//! folder inside OUT, which is removed at the end: the plaintext goes
//! only where the user asked the export to go.

mod calendar;
mod calls;
mod contacts;
pub mod error;
mod messages;
mod output;
mod schema;
mod source;
mod time;

use std::path::{Path, PathBuf};

use ibackup_store::reader::Backup;

pub use error::{ExportError, Result};
pub use messages::decode_attributed_body;

/// What to export.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Messages,
    Contacts,
    Calendar,
    Calls,
}

impl Kind {
    pub const ALL: [Kind; 4] = [Kind::Messages, Kind::Contacts, Kind::Calendar, Kind::Calls];

    pub fn name(self) -> &'static str {
        match self {
            Kind::Messages => "messages",
            Kind::Contacts => "contacts",
            Kind::Calendar => "calendar",
            Kind::Calls => "calls",
        }
    }

    pub fn parse(s: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.name() == s)
    }
}

/// What an export wrote.
#[derive(Debug, Default)]
pub struct Exported {
    /// Messages, contacts, events or calls written.
    pub items: u64,
    /// Conversations (messages only).
    pub conversations: u64,
    /// Attachments copied beside the messages, and those the backup lacks.
    pub attachments: u64,
    pub missing_attachments: Vec<String>,
    /// Contacts with a photo.
    pub photos: u64,
    /// The files made, the main one first.
    pub files: Vec<PathBuf>,
    /// The layout read ("iOS 11 or later, dates in nanoseconds", ...).
    pub layout: String,
}

/// Export `kind` from the open backup `b` into the folder `out` (made if
/// needed). Files already there with the same names are replaced whole.
pub fn export(b: &Backup, kind: Kind, out: &Path) -> Result<Exported> {
    output::make_dir(out)?;
    let src = source::Source::new(b, out)?;
    match kind {
        Kind::Messages => messages::export(&src, out),
        Kind::Contacts => contacts::export(&src, out),
        Kind::Calendar => calendar::export(&src, out),
        Kind::Calls => calls::export(&src, out),
    }
}
