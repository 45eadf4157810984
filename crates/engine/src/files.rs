//! Small file operations the backup, the staging folder and the history
//! share (kept apart so none of them imports another for them).

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::error::Result;

/// Where a file is written before it is renamed to `path`.
pub(crate) fn part_path(path: &Path) -> PathBuf {
    let mut name = path
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_default();
    name.push(".ibackup-part");
    path.with_file_name(name)
}

/// Write `bytes` as a new file at `path`, renamed over whatever is there
/// (readers see the old or the new content, and a hard-linked old file is
/// never written into). Flushed before the rename.
pub(crate) fn replace_file(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let part = part_path(path);
    let _ = std::fs::remove_file(&part);
    let mut f = File::options().write(true).create_new(true).open(&part)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    drop(f);
    std::fs::rename(&part, path)
}

/// Remove a folder and all in it; one that is not there is fine.
pub(crate) fn remove_tree(p: &Path) -> Result<()> {
    match fs::remove_dir_all(p) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e.into()),
        _ => Ok(()),
    }
}
