use thiserror::Error;

#[derive(Debug, Error)]
pub enum SimError {
    #[error("{0}")]
    Config(String),
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Proto(#[from] ibackup_proto::ProtoError),
    #[error(transparent)]
    Store(#[from] ibackup_store::StoreError),
    #[error("plist error: {0}")]
    Plist(#[from] plist::Error),
    #[error("sqlite error: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("protocol error: {0}")]
    Protocol(String),
    /// A fault from device.toml fired: the connection is dropped on purpose.
    #[error("simulated fault: {0}")]
    Fault(String),
}

pub type Result<T> = std::result::Result<T, SimError>;
