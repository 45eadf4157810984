//! Backup passwords: from a file, an environment variable, the system
//! keychain (`ibackup password save`), or a prompt without echo. Never from a plain command-line argument (other users see
//! those in `ps`), never logged.

use std::io::IsTerminal;
use std::path::Path;

use ibackup_engine::EngineError;

fn from_file(f: &Path) -> Result<String, EngineError> {
    let s = std::fs::read_to_string(f).map_err(|e| {
        EngineError::Usage(format!(
            "cannot read the password file {}: {e}",
            f.display()
        ))
    })?;
    let s = s.trim_end_matches(['\n', '\r']).to_string();
    if let Some(w) = readable_by_others(f) {
        let _ = std::io::Write::write_all(&mut std::io::stderr(), w.as_bytes());
    }
    if s.is_empty() {
        return Err(EngineError::Usage(format!(
            "the password file {} is empty",
            f.display()
        )));
    }
    Ok(s)
}

/// A warning when other users may read the password file `f`.
#[cfg(unix)]
fn readable_by_others(f: &Path) -> Option<String> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(f).ok()?.permissions().mode();
    (mode & 0o077 != 0).then(|| {
        format!(
            "ibackup: warning: the password file {} can be read by other users; make it yours alone: chmod 600 {}\n",
            f.display(),
            f.display()
        )
    })
}

#[cfg(not(unix))]
fn readable_by_others(_f: &Path) -> Option<String> {
    None
}

fn from_env(var: &str) -> Option<String> {
    std::env::var(var).ok().filter(|s| !s.is_empty())
}

fn prompt(what: &str) -> Result<Option<String>, EngineError> {
    if !std::io::stdin().is_terminal() || !std::io::stderr().is_terminal() {
        return Ok(None);
    }
    let p = rpassword::prompt_password(format!("{what}: "))?;
    Ok(Some(p).filter(|s| !s.is_empty()))
}

static FALLBACK_FILE: std::sync::OnceLock<Option<std::path::PathBuf>> = std::sync::OnceLock::new();

/// The configuration file's `password_file`, used when nothing else gives one.
pub fn set_fallback_file(f: Option<std::path::PathBuf>) {
    let _ = FALLBACK_FILE.set(f);
}

/// The current backup password of device `udid`, if one was given: the
/// file named, else IBACKUP_PASSWORD, else the configuration's password
/// file, else the one the system keychain keeps for the device.
pub fn given(file: Option<&Path>, udid: Option<&str>) -> Result<Option<String>, EngineError> {
    if let Some(f) = file {
        return from_file(f).map(Some);
    }
    if let Some(p) = from_env("IBACKUP_PASSWORD") {
        return Ok(Some(p));
    }
    if let Some(f) = FALLBACK_FILE.get().and_then(Option::as_deref) {
        return from_file(f).map(Some);
    }
    Ok(udid.and_then(crate::keychain::get))
}

/// The current backup password: given, or asked for on a terminal.
pub fn current(file: Option<&Path>, what: &str, udid: Option<&str>) -> Result<String, EngineError> {
    if let Some(p) = given(file, udid)? {
        return Ok(p);
    }
    prompt(what)?.ok_or(EngineError::PasswordRequired)
}

/// A new backup password: file, IBACKUP_NEW_PASSWORD, or asked twice.
pub fn new(file: Option<&Path>) -> Result<String, EngineError> {
    if let Some(f) = file {
        return from_file(f);
    }
    if let Some(p) = from_env("IBACKUP_NEW_PASSWORD") {
        return Ok(p);
    }
    let missing = || {
        EngineError::Usage(
            "give the new backup password in IBACKUP_NEW_PASSWORD or with --new-password-file FILE"
                .into(),
        )
    };
    let first = prompt("New backup password")?.ok_or_else(missing)?;
    let again = prompt("The same password again")?.ok_or_else(missing)?;
    if first != again {
        return Err(EngineError::Usage(
            "the two passwords differ; nothing was changed".into(),
        ));
    }
    Ok(first)
}
