//! Writing a backup's files out as an ordinary tree:
//! `OUT/<Domain>/<relativePath>`, with modification times, plaintext for
//! encrypted backups. Every path is checked before anything is written, so
//! a backup naming a path that would leave OUT writes nothing at all.

use std::fs::{self, File};
use std::io::BufWriter;
use std::path::{Path, PathBuf};
use std::time::{Duration, UNIX_EPOCH};

use crate::categories::Selection;
use crate::error::{Result, StoreError};
use crate::mbfile::{FLAG_DIRECTORY, FLAG_FILE, FLAG_SYMLINK};
use crate::paths::{check_domain, check_relative};
use crate::reader::Backup;

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Extracted {
    pub files: u64,
    pub bytes: u64,
    pub dirs: u64,
    pub links: u64,
}

fn dest(out: &Path, domain: &str, path: &str) -> Result<PathBuf> {
    check_domain(domain)?;
    check_relative(path)?;
    let mut p = out.join(domain);
    if !path.is_empty() {
        p.push(path);
    }
    Ok(p)
}

fn time(secs: i64) -> std::time::SystemTime {
    UNIX_EPOCH + Duration::from_secs(secs.max(0) as u64)
}

/// Extract the selected rows of `backup` below `out`. `progress` hears
/// (files, bytes) done so far.
pub fn extract(
    backup: &Backup,
    sel: &Selection,
    out: &Path,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<Extracted> {
    // First pass: every row must be safe (the index reader refuses unsafe
    // IDs and paths), before the first byte lands.
    backup.for_each(|row| {
        dest(out, &row.domain, &row.relative_path)?;
        Ok(())
    })?;
    fs::create_dir_all(out)?;
    let mut done = Extracted::default();
    let mut dirs = Vec::new();
    let mut links = Vec::new();
    backup.for_each(|row| {
        if !sel.matches(&row.domain, &row.relative_path) {
            return Ok(());
        }
        let to = dest(out, &row.domain, &row.relative_path)?;
        match row.flags {
            FLAG_DIRECTORY => {
                fs::create_dir_all(&to)?;
                dirs.push((to, row.file.last_modified));
            }
            FLAG_SYMLINK => links.push((to, row.file.target.clone().unwrap_or_default())),
            FLAG_FILE => {
                if let Some(parent) = to.parent() {
                    fs::create_dir_all(parent)?;
                }
                let mut part = to.clone().into_os_string();
                part.push(".ibackup-part");
                let part = PathBuf::from(part);
                let _ = fs::remove_file(&part);
                let f = File::options().write(true).create_new(true).open(&part)?;
                let mut w = BufWriter::with_capacity(1 << 20, f);
                let r = backup.read_content(&row, &mut w);
                let f = w.into_inner().map_err(|e| StoreError::Io(e.into_error()));
                match (r, f) {
                    (Ok(n), Ok(f)) => {
                        f.set_modified(time(row.file.last_modified))?;
                        drop(f);
                        fs::rename(&part, &to)?;
                        done.files += 1;
                        done.bytes += n;
                        progress(done.files, done.bytes);
                    }
                    (Err(e), _) | (_, Err(e)) => {
                        let _ = fs::remove_file(&part);
                        return Err(e);
                    }
                }
            }
            _ => {}
        }
        Ok(())
    })?;
    // Links last, so nothing is ever written through one.
    for (link, target) in links {
        if fs::symlink_metadata(&link).is_ok() {
            continue;
        }
        if let Some(parent) = link.parent() {
            fs::create_dir_all(parent)?;
        }
        #[cfg(unix)]
        {
            std::os::unix::fs::symlink(&target, &link)?;
            done.links += 1;
        }
        #[cfg(not(unix))]
        {
            // Windows needs a privilege for symbolic links; keep the target as text.
            fs::write(&link, target.as_bytes())?;
            done.links += 1;
        }
    }
    // Deepest first: setting a folder's time after its contents are written.
    for (d, t) in dirs.iter().rev() {
        if let Ok(f) = File::open(d) {
            let _ = f.set_modified(time(*t));
        }
        done.dirs += 1;
    }
    Ok(done)
}
