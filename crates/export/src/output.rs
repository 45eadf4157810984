//! Files below OUT: made beside their place and renamed into it, so that
//! OUT never holds half a file.

use std::fs::{self, File};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use crate::error::{ExportError, Result};

pub fn err(path: &Path) -> impl FnOnce(std::io::Error) -> ExportError + '_ {
    move |source| ExportError::Output {
        path: path.to_path_buf(),
        source,
    }
}

/// Make `dir`; a symbolic link or a file in its place is refused.
pub fn make_dir(dir: &Path) -> Result<()> {
    match fs::symlink_metadata(dir) {
        Ok(m) if m.is_dir() => Ok(()),
        Ok(_) => Err(ExportError::Output {
            path: dir.to_path_buf(),
            source: std::io::Error::new(
                std::io::ErrorKind::AlreadyExists,
                "a file or a link is where the folder goes",
            ),
        }),
        Err(_) => fs::create_dir_all(dir).map_err(err(dir)),
    }
}

/// A file being written: `<name>.part` until [`Part::finish`]; dropped
/// unfinished (an error on the way), the part is removed.
pub struct Part {
    to: PathBuf,
    part: PathBuf,
    pub w: BufWriter<File>,
    done: bool,
}

impl Part {
    pub fn new(to: &Path) -> Result<Part> {
        let mut name = to.file_name().unwrap_or_default().to_os_string();
        name.push(".part");
        let part = to.with_file_name(name);
        let f = File::create(&part).map_err(err(&part))?;
        Ok(Part {
            to: to.to_path_buf(),
            part,
            w: BufWriter::new(f),
            done: false,
        })
    }

    pub fn finish(mut self) -> Result<PathBuf> {
        self.w.flush().map_err(err(&self.part))?;
        self.w.get_ref().sync_all().map_err(err(&self.part))?;
        // Never through a link someone left where the file goes.
        if fs::symlink_metadata(&self.to).is_ok_and(|m| !m.is_file()) {
            return Err(ExportError::Output {
                path: self.to.clone(),
                source: std::io::Error::new(
                    std::io::ErrorKind::AlreadyExists,
                    "something other than a file is in its place",
                ),
            });
        }
        fs::rename(&self.part, &self.to).map_err(err(&self.to))?;
        self.done = true;
        Ok(self.to.clone())
    }
}

impl Drop for Part {
    fn drop(&mut self) {
        if !self.done {
            let _ = fs::remove_file(&self.part);
        }
    }
}

impl Write for Part {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.w.write(buf)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.w.flush()
    }
}

/// Write all of `bytes` as `to`.
pub fn write(to: &Path, bytes: &[u8]) -> Result<PathBuf> {
    let mut p = Part::new(to)?;
    p.w.write_all(bytes).map_err(err(to))?;
    p.finish()
}

/// A name any file system holds: letters, digits and ` +-_.@` kept, the
/// rest `_`, no leading dot, at most 80 characters.
pub fn safe_name(s: &str) -> String {
    let mut n: String = s
        .chars()
        .map(|c| {
            if c.is_alphanumeric() || " +-_.@".contains(c) {
                c
            } else {
                '_'
            }
        })
        .take(80)
        .collect();
    while n.starts_with('.') || n.starts_with(' ') {
        n.remove(0);
    }
    let n = n.trim_end_matches(['.', ' ']).to_string();
    if n.is_empty() {
        "_".into()
    } else {
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn safe_names_hold_everywhere() {
        assert_eq!(safe_name("+1 (555) 010-0003"), "+1 _555_ 010-0003");
        assert_eq!(safe_name("../../etc/passwd"), "_.._etc_passwd");
        assert_eq!(safe_name("a:b?c*"), "a_b_c_");
        assert_eq!(safe_name("..."), "_");
        assert_eq!(safe_name("Famille Dubois ❤"), "Famille Dubois _");
        assert_eq!(safe_name(&"x".repeat(300)).len(), 80);
    }

    #[test]
    fn a_file_appears_whole_or_not_at_all() {
        let t = tempfile::tempdir().unwrap();
        let to = t.path().join("a.vcf");
        let mut p = Part::new(&to).unwrap();
        p.w.write_all(b"half").unwrap();
        assert!(!to.exists());
        drop(p);
        assert!(!to.exists());
        assert!(
            !t.path().join("a.vcf.part").exists(),
            "an unfinished part is removed"
        );
        write(&to, b"whole").unwrap();
        assert_eq!(fs::read(&to).unwrap(), b"whole");
        assert!(!t.path().join("a.vcf.part").exists());
    }
}
