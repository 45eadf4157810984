//! List the files of any backup folder (ours, Finder's, libimobiledevice's)
//! with ibackup-store used as a library.
//!
//!   cargo run --example list_backup -- BACKUP/<UDID>
//!   IBACKUP_PASSWORD=... cargo run --example list_backup -- BACKUP/<UDID>   # encrypted
//!
//! Prints one line per file: domain, relative path, size.

use ibackup_store::mbfile::FLAG_FILE;
use ibackup_store::verify::open_manifest;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = std::env::args()
        .nth(1)
        .ok_or("usage: list_backup BACKUP_DIR/<UDID>")?;
    let password = std::env::var("IBACKUP_PASSWORD").ok();
    let scratch = tempfile::tempdir()?;
    let (db, keybag) = open_manifest(
        std::path::Path::new(&dir),
        password.as_deref(),
        scratch.path(),
    )?;
    let (mut files, mut bytes) = (0u64, 0u64);
    db.for_each(|row| {
        if row.flags == FLAG_FILE {
            println!("{}\t{}\t{}", row.domain, row.relative_path, row.file.size);
            files += 1;
            bytes += row.file.size;
        }
        Ok(())
    })?;
    eprintln!(
        "{files} files, {bytes} bytes{}",
        if keybag.is_some() { ", encrypted" } else { "" }
    );
    Ok(())
}
