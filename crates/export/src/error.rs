use std::path::PathBuf;

use ibackup_store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The backup has no such database (a backup made with `--only`, or
    /// another tool's filtered one).
    #[error("the backup holds no {what} ({domain} {path})")]
    NotInBackup {
        what: &'static str,
        domain: &'static str,
        path: &'static str,
    },
    /// The database is there but not in a layout this version knows.
    #[error("{file} is not in a layout ibackup knows ({why}); it reads {known}")]
    UnknownLayout {
        file: &'static str,
        why: String,
        known: &'static str,
    },
    /// The database cannot be read at all.
    #[error("{file} in the backup cannot be read: {source}")]
    Unreadable {
        file: &'static str,
        source: rusqlite::Error,
    },
    #[error("cannot write {path}: {source}")]
    Output {
        path: PathBuf,
        source: std::io::Error,
    },
}

pub type Result<T> = std::result::Result<T, ExportError>;
