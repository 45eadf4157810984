//! File IDs and path validation.
//!
//! Every name a device sends (domains, relative paths, backup-relative paths
//! in DeviceLink messages) and every file ID read from a Manifest.db is
//! untrusted: TrollRestore-style backups smuggle `..` through domain names,
//! and a malicious device can name any host path. Nothing becomes a
//! filesystem path without passing through here.

use sha1::{Digest, Sha1};

use crate::error::{Result, StoreError};
use std::path::{Path, PathBuf};

/// `SHA1(domain + "-" + relativePath)` in lowercase hex: the file's name in
/// the backup (`xx/<fileID>`).
pub fn file_id(domain: &str, relative_path: &str) -> String {
    let mut h = Sha1::new();
    h.update(domain.as_bytes());
    h.update(b"-");
    h.update(relative_path.as_bytes());
    hex::encode(h.finalize())
}

/// Whether `s` is exactly 40 lowercase hex digits.
pub fn is_file_id(s: &str) -> bool {
    s.len() == 40
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Check a relative path made of `/`-separated components: not absolute, no
/// empty, `.` or `..` component, no NUL or backslash. An empty path is
/// allowed (a domain's root entry).
pub fn check_relative(path: &str) -> Result<()> {
    let bad = |why| {
        Err(StoreError::UnsafePath {
            path: path.to_string(),
            why,
        })
    };
    if path.is_empty() {
        return Ok(());
    }
    if path.starts_with('/') {
        return bad("absolute path");
    }
    if path.contains('\0') {
        return bad("contains NUL");
    }
    if path.contains('\\') {
        return bad("contains a backslash");
    }
    for c in path.split('/') {
        match c {
            "" => return bad("empty path component"),
            "." | ".." => return bad("contains . or .. component"),
            _ => {}
        }
    }
    Ok(())
}

/// Check a domain name: a single non-empty component.
pub fn check_domain(domain: &str) -> Result<()> {
    if domain.is_empty() || domain.contains('/') {
        return Err(StoreError::UnsafePath {
            path: domain.to_string(),
            why: "domain must be one non-empty path component",
        });
    }
    check_relative(domain)
}

/// Whether `path` (which need not exist yet) is `folder` or lies inside it,
/// links and `..` resolved: an output written there would change what is
/// being read, or (a copy of a folder into itself) never end.
pub fn is_inside(path: &Path, folder: &Path) -> bool {
    let Ok(folder) = std::fs::canonicalize(folder) else {
        return false;
    };
    // The deepest part of `path` that exists, resolved, and the rest as given.
    let mut base = path.to_path_buf();
    let mut rest = Vec::new();
    let resolved = loop {
        if let Ok(c) = std::fs::canonicalize(&base) {
            break c;
        }
        match (base.parent(), base.components().next_back()) {
            (Some(parent), Some(last)) => {
                rest.push(last.as_os_str().to_os_string());
                base = if parent.as_os_str().is_empty() {
                    PathBuf::from(".")
                } else {
                    parent.to_path_buf()
                };
            }
            _ => return false,
        }
    };
    let mut full = resolved;
    for part in rest.iter().rev() {
        if part == ".." {
            full.pop();
        } else if part != "." {
            full.push(part);
        }
    }
    full.starts_with(&folder)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_file_ids() {
        // Fact sheet §1.2, from theiphonewiki and verified against mvt's Manifest.db.
        assert_eq!(
            file_id("HomeDomain", "Library/SMS/sms.db"),
            "3d0d7e5fb2ce288813306e4d4636395e047a3d28"
        );
        assert!(is_file_id(&file_id("CameraRollDomain", "")));
        assert!(!is_file_id("3D0D7E5FB2CE288813306E4D4636395E047A3D28"));
        assert!(!is_file_id("../../../../../../../../../../etc/passwd"));
    }

    #[test]
    fn hostile_paths_are_refused() {
        for p in [
            "/etc/passwd",
            "a/../../b",
            "..",
            "a/./b",
            "a//b",
            "a/b/",
            "a\0b",
            "a\\..\\b",
        ] {
            assert!(check_relative(p).is_err(), "{p:?}");
        }
        for p in [
            "",
            "Library/SMS/sms.db",
            "Media/DCIM/100APPLE/IMG_0001.HEIC",
            "ünï cödé/ file .txt",
            "..foo/bar..",
        ] {
            assert!(check_relative(p).is_ok(), "{p:?}");
        }
        assert!(check_domain("HomeDomain").is_ok());
        for d in ["", "a/b", "..", "SysContainerDomain-../../../var"] {
            assert!(check_domain(d).is_err(), "{d:?}");
        }
    }

    #[test]
    fn inside_is_judged_with_links_and_missing_parts_resolved() {
        let t = tempfile::tempdir().unwrap();
        let b = t.path().join("backups/U");
        std::fs::create_dir_all(&b).unwrap();
        assert!(is_inside(&b, &b));
        assert!(is_inside(&b.join("out/deeper"), &b), "not there yet");
        assert!(is_inside(&t.path().join("backups/x/../U/out"), &b));
        assert!(!is_inside(&t.path().join("backups/out"), &b));
        assert!(
            !is_inside(&t.path().join("backups/U2"), &b),
            "a sibling named alike"
        );
        assert!(!is_inside(&t.path().join("out"), &b));
        #[cfg(unix)]
        {
            std::os::unix::fs::symlink(&b, t.path().join("link")).unwrap();
            assert!(is_inside(&t.path().join("link/out"), &b));
        }
    }
}
