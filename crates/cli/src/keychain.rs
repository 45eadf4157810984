//! Backup passwords kept in the system's keychain (Secret Service on
//! Linux, Keychain on macOS, Credential Manager on Windows), as Finder and
//! iMazing keep theirs: `ibackup password save|forget -u UDID`, and every
//! command that needs a device's backup password looks there after the
//! sources given explicitly.

use ibackup_engine::EngineError;

const SERVICE: &str = "ibackup";

fn entry(udid: &str) -> keyring::Result<keyring::Entry> {
    keyring::Entry::new(SERVICE, &format!("backup password {udid}"))
}

/// What to do on a machine whose keychain does not answer.
fn unavailable(e: &keyring::Error) -> EngineError {
    EngineError::Usage(format!(
        "the system keychain cannot be used here ({e}); on a server with no desktop session keep the password in a file instead: --password-file FILE (chmod 600), or password_file in the configuration"
    ))
}

/// The password kept for `udid`, if any. A keychain that does not answer
/// is no password (the caller asks elsewhere), logged.
pub fn get(udid: &str) -> Option<String> {
    match entry(udid).and_then(|e| e.get_password()) {
        Ok(p) if !p.is_empty() => Some(p),
        Ok(_) | Err(keyring::Error::NoEntry) => None,
        Err(e) => {
            log::info!("the system keychain did not answer: {e}");
            None
        }
    }
}

pub fn save(udid: &str, password: &str) -> Result<(), EngineError> {
    entry(udid)
        .and_then(|e| e.set_password(password))
        .map_err(|e| unavailable(&e))
}

/// Forget `udid`'s password; whether there was one.
pub fn forget(udid: &str) -> Result<bool, EngineError> {
    match entry(udid).and_then(|e| e.delete_credential()) {
        Ok(()) => Ok(true),
        Err(keyring::Error::NoEntry) => Ok(false),
        Err(e) => Err(unavailable(&e)),
    }
}
