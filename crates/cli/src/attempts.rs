//! The last backup attempt of each device, whatever came of it, for
//! `info --dir`: `DIR/.ibackup/attempts/<UDID>.json`. The committed backup
//! tells when the last backup that worked was made; this tells whether
//! last night's worked, and if not, why.

use std::path::{Path, PathBuf};

use ibackup_engine::snapshots::now;
use ibackup_engine::EngineError;
use serde::{Deserialize, Serialize};

use crate::exit;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attempt {
    /// When it ended, in seconds since 1970 (UTC).
    pub date: i64,
    pub ok: bool,
    /// 0 when it worked; else the exit code and sentence of its failure.
    pub exit_code: u8,
    pub error: Option<String>,
}

fn path(dir: &Path, udid: &str) -> PathBuf {
    dir.join(".ibackup/attempts").join(format!("{udid}.json"))
}

/// Write down how a backup of `udid` into `dir` ended. Only into a backup
/// folder ibackup has used (a missing DIR gets nothing made in it), and
/// never fatal: a record that cannot be written (a read-only disk, whose
/// failure the backup's own message already tells) is logged at info level.
pub fn record(dir: &Path, udid: &str, result: Result<(), &EngineError>) {
    if !dir.join(".ibackup").is_dir() {
        return;
    }
    let attempt = match result {
        Ok(_) => Attempt {
            date: now(),
            ok: true,
            exit_code: 0,
            error: None,
        },
        Err(e) => {
            let (code, sentence) = exit::describe(e);
            Attempt {
                date: now(),
                ok: false,
                exit_code: code,
                error: Some(sentence),
            }
        }
    };
    let to = path(dir, udid);
    let written = std::fs::create_dir_all(to.parent().expect("has a parent")).and_then(|()| {
        let part = to.with_extension("json.part");
        std::fs::write(&part, serde_json::to_vec_pretty(&attempt).expect("json"))?;
        std::fs::rename(&part, &to)
    });
    if let Err(e) = written {
        log::info!("could not record the attempt in {}: {e}", to.display());
    }
}

/// The last attempt recorded for `udid` in `dir`.
pub fn last(dir: &Path, udid: &str) -> Option<Attempt> {
    serde_json::from_slice(&std::fs::read(path(dir, udid)).ok()?).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_attempt_replaces_the_last_and_only_in_a_used_backup_folder() {
        let t = tempfile::tempdir().unwrap();
        let lost = EngineError::ConnectionLost("cable".into());
        record(t.path(), "U", Err(&lost));
        assert_eq!(last(t.path(), "U"), None, "not a backup folder yet");
        std::fs::create_dir_all(t.path().join(".ibackup")).unwrap();
        record(t.path(), "U", Err(&lost));
        let a = last(t.path(), "U").unwrap();
        assert!(!a.ok);
        assert_eq!(a.exit_code, 8);
        assert!(a
            .error
            .unwrap()
            .contains("connection to the device was lost"));
        record(t.path(), "U", Ok(()));
        let a = last(t.path(), "U").unwrap();
        assert!(a.ok && a.exit_code == 0 && a.error.is_none());
        assert_eq!(last(t.path(), "other"), None);
    }
}
