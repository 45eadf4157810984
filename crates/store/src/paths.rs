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

/// Open `path` for reading without following a symbolic link in its last
/// component, and only if it is a regular file.
pub fn open_no_follow(path: &Path) -> std::io::Result<std::fs::File> {
    let mut o = std::fs::OpenOptions::new();
    o.read(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        o.custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK);
    }
    #[cfg(not(unix))]
    if std::fs::symlink_metadata(path)?.file_type().is_symlink() {
        return Err(link_error(path));
    }
    let f = o.open(path).map_err(|e| {
        // O_NOFOLLOW on a link fails with ELOOP.
        if std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink()) {
            link_error(path)
        } else {
            e
        }
    })?;
    if !f.metadata()?.is_file() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("{} is not a regular file", path.display()),
        ));
    }
    Ok(f)
}

fn link_error(path: &Path) -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::InvalidData,
        format!(
            "{} is a symbolic link where the backup holds a file; it is not followed",
            path.display()
        ),
    )
}

/// The folders a backup folder's content may lie in, resolved: the folder
/// itself and, for a snapshot in ibackup's history
/// (`DIR/.ibackup/snapshots/<UDID>/<ID>`), the other snapshots of that
/// device and the newest (`DIR/<UDID>`), to which its unchanged content
/// folders link (see the engine's `snapshots` module). Nothing else.
pub fn content_bounds(backup: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(me) = std::fs::canonicalize(backup) else {
        return out;
    };
    out.push(me.clone());
    if let (Some(history), Some(snapshots)) = (me.parent(), me.parent().and_then(Path::parent)) {
        if snapshots.ends_with(".ibackup/snapshots") {
            out.push(history.to_path_buf());
            if let (Some(udid), Some(root)) = (
                history.file_name(),
                snapshots.parent().and_then(Path::parent),
            ) {
                if let Ok(newest) = std::fs::canonicalize(root.join(udid)) {
                    out.push(newest);
                }
            }
        }
    }
    out
}

/// Where the symbolic link `link` leads, resolved, when it is a history
/// snapshot's own link: to a real folder inside `bounds` other than the
/// backup folder itself ([`content_bounds`]). `None` for any other link.
pub fn snapshot_link_target(link: &Path, bounds: &[PathBuf]) -> Option<PathBuf> {
    let t = std::fs::canonicalize(link).ok()?;
    (t.is_dir() && bounds.iter().skip(1).any(|b| t.starts_with(b) && t != *b)).then_some(t)
}

/// Open `folder/rel` (plain relative components) for reading, following
/// no symbolic link but one: a first-level folder of a history snapshot
/// that links to a real folder inside `bounds` ([`content_bounds`]). A
/// backup folder someone hands us may hold links to anywhere; none of them
/// leads ibackup outside it.
pub fn open_in(folder: &Path, rel: &Path, bounds: &[PathBuf]) -> std::io::Result<std::fs::File> {
    let parts: Vec<_> = rel.components().collect();
    let Some((last, dirs)) = parts.split_last() else {
        return Err(std::io::ErrorKind::InvalidInput.into());
    };
    let mut cur = folder.to_path_buf();
    for (depth, c) in dirs.iter().enumerate() {
        let std::path::Component::Normal(name) = c else {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("{} is not a plain path", rel.display()),
            ));
        };
        cur.push(name);
        let md = std::fs::symlink_metadata(&cur)?;
        if md.file_type().is_symlink() {
            if depth != 0 || snapshot_link_target(&cur, bounds).is_none() {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!(
                        "{} is a symbolic link leading outside the backup; it is not followed",
                        cur.display()
                    ),
                ));
            }
        } else if !md.is_dir() {
            return Err(std::io::ErrorKind::NotADirectory.into());
        }
    }
    open_no_follow(&cur.join(last))
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(unix)]
    use std::io::Read;

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

    #[cfg(unix)]
    #[test]
    fn content_is_opened_without_following_links_out_of_the_backup() {
        use std::os::unix::fs::symlink;
        let t = tempfile::tempdir().unwrap();
        let secret = t.path().join("secret");
        std::fs::write(&secret, b"host file").unwrap();
        let outside = t.path().join("outside");
        std::fs::create_dir_all(&outside).unwrap();
        std::fs::write(outside.join("f"), b"x").unwrap();
        // DIR/<UDID> and a history snapshot linking its folder "ab" to it.
        let root = t.path().join("DIR");
        let newest = root.join("U");
        let snap = root.join(".ibackup/snapshots/U/S1");
        std::fs::create_dir_all(newest.join("ab")).unwrap();
        std::fs::write(newest.join("ab/ok"), b"real").unwrap();
        std::fs::create_dir_all(&snap).unwrap();
        symlink("../../../../U/ab", snap.join("ab")).unwrap();
        symlink(&outside, snap.join("cd")).unwrap();
        symlink(&secret, newest.join("ab/leak")).unwrap();
        symlink(&outside, newest.join("ef")).unwrap();

        let b = content_bounds(&newest);
        let mut s = String::new();
        open_in(&newest, Path::new("ab/ok"), &b)
            .unwrap()
            .read_to_string(&mut s)
            .unwrap();
        assert_eq!(s, "real");
        assert!(
            open_in(&newest, Path::new("ab/leak"), &b).is_err(),
            "a file link"
        );
        assert!(
            open_in(&newest, Path::new("ef/f"), &b).is_err(),
            "a folder link in the newest"
        );
        let b = content_bounds(&snap);
        assert!(
            open_in(&snap, Path::new("ab/ok"), &b).is_ok(),
            "a snapshot's own link"
        );
        assert!(
            open_in(&snap, Path::new("cd/f"), &b).is_err(),
            "a snapshot link elsewhere"
        );
        assert!(open_in(&snap, Path::new("../secret"), &b).is_err());
        assert!(open_no_follow(&newest.join("ab")).is_err(), "a folder");
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
