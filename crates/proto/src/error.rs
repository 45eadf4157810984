use thiserror::Error;

/// Errors shared by every codec in this crate.
#[derive(Debug, Error)]
pub enum ProtoError {
    #[error("connection closed by peer")]
    Closed,
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
    #[error("malformed plist: {0}")]
    Plist(#[from] plist::Error),
    #[error("message of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge { len: u64, max: u64 },
    #[error("protocol violation: {0}")]
    Protocol(String),
    #[error("TLS error: {0}")]
    Tls(#[from] rustls::Error),
    #[error("key or certificate error: {0}")]
    Crypto(String),
    /// lockdownd answered with an error name (see `lockdown::LockdownError`).
    #[error("lockdownd refused {request}: {error}")]
    Lockdown { request: String, error: String },
    /// The device cannot be reached this way; the sentence says what to do.
    #[error("{0}")]
    Unreachable(String),
    /// usbmuxd answered a request with a non-zero result.
    #[error("usbmuxd refused {request} (result {result})")]
    Mux { request: String, result: u64 },
}

impl ProtoError {
    pub fn protocol(msg: impl Into<String>) -> Self {
        ProtoError::Protocol(msg.into())
    }
}

pub type Result<T> = std::result::Result<T, ProtoError>;
