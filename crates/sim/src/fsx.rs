//! The few file-system calls that differ between Unix and Windows.

use std::path::Path;

/// Make a symbolic link. Windows lets only privileged users (or developer
/// mode) make them; there the simulated device falls back to a file
/// holding the target, which its backups then show as a file.
pub fn symlink(target: &str, link: &Path) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        std::os::unix::fs::symlink(target, link)
    }
    #[cfg(windows)]
    {
        std::os::windows::fs::symlink_file(target, link)
            .or_else(|_| std::fs::write(link, target.as_bytes()))
    }
}

/// The inode number devices record in MBFile; a stable stand-in elsewhere,
/// made from the entry's path (asked for only there).
pub fn inode(md: &std::fs::Metadata, path: impl FnOnce() -> std::path::PathBuf) -> u64 {
    #[cfg(unix)]
    {
        let _ = path;
        std::os::unix::fs::MetadataExt::ino(md)
    }
    #[cfg(not(unix))]
    {
        let _ = md;
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        path().hash(&mut h);
        h.finish() & 0xffff_ffff
    }
}
