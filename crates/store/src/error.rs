use thiserror::Error;

#[derive(Debug, Error)]
pub enum StoreError {
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
    #[error("Manifest.db error: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("malformed plist: {0}")]
    Plist(#[from] plist::Error),
    #[error("malformed file record: {0}")]
    Record(String),
    #[error("wrong backup password")]
    WrongPassword,
    #[error("the backup is encrypted; give its password (IBACKUP_PASSWORD or --password-file)")]
    PasswordRequired,
    #[error("unsafe path {path:?}: {why}")]
    UnsafePath { path: String, why: &'static str },
    /// Writing where the user asked for output failed; the backup itself
    /// is fine.
    #[error("cannot write {}: {source}", path.display())]
    Output {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    /// The caller asked to stop (its progress callback said so).
    #[error("stopped on request")]
    Stopped,
}

pub type Result<T> = std::result::Result<T, StoreError>;
