//! The device side of a restore: fetch the backup's plists and index from
//! the host, then every file it lists, verify digests, and replace the
//! device's files only once everything arrived.

use std::path::{Path, PathBuf};

use ibackup_proto::mb2::{error_code, Mb2Request};
use ibackup_proto::plistx::DictExt;
use ibackup_store::crypto::{self, Keybag};
use ibackup_store::manifest_db::ManifestDb;
use ibackup_store::mbfile::{FLAG_DIRECTORY, FLAG_FILE, FLAG_SYMLINK};
use plist::Value;
use sha1::{Digest, Sha1};

use super::backup::{download, receive_files, tempdir_in, Dl};
use crate::error::Result;
use ibackup_proto::devicelink::DlMessage;

/// Files per DLMessageDownloadFiles.
const BATCH: usize = 500;

/// Domains a restore without `RestoreSystemFiles` touches: app data only.
fn is_app_domain(domain: &str) -> bool {
    domain.starts_with("AppDomain")
}

pub fn restore(dl: &mut Dl, req: &Mb2Request) -> Result<()> {
    let device = dl.device.clone();
    let c = device.cfg();
    if c.find_my {
        return dl.finish(
            error_code::FIND_MY_ENABLED,
            "Find My iPhone must be disabled before restoring",
        );
    }
    let source = req
        .source
        .clone()
        .or_else(|| req.target.clone())
        .unwrap_or_else(|| c.udid.clone());
    let system = req.options.bool_of("RestoreSystemFiles").unwrap_or(false);
    let work = tempdir_in(&device.state_dir())?;

    let wanted: Vec<String> = [
        "Status.plist",
        "Manifest.plist",
        "Manifest.db",
        "Info.plist",
    ]
    .iter()
    .map(|f| format!("{source}/{f}"))
    .collect();
    download(dl, &wanted, work.path(), 0.0, None)?;
    let status = Value::from_file(work.path().join("Status.plist"))
        .ok()
        .and_then(Value::into_dictionary);
    if status.as_ref().and_then(|s| s.str_of("SnapshotState")) != Some("finished") {
        return dl.finish(
            error_code::MISSING_FILES,
            "The backup is incomplete (Status.plist is missing or not finished)",
        );
    }
    let manifest = Value::from_file(work.path().join("Manifest.plist"))
        .ok()
        .and_then(Value::into_dictionary);
    let Some(manifest) = manifest else {
        return dl.finish(
            error_code::MISSING_FILES,
            "Error deserializing properties (Manifest.plist is missing or damaged)",
        );
    };
    let mut db_path = work.path().join("Manifest.db");
    let keybag = if manifest.bool_of("IsEncrypted").unwrap_or(false) {
        let password = req
            .options
            .str_of("Password")
            .or_else(|| req.extra.str_of("Password"));
        let Some(password) = password else {
            return dl.finish(
                error_code::INVALID_PASSWORD,
                "A password is required to restore an encrypted backup",
            );
        };
        let Some(mut kb) = manifest
            .data_of("BackupKeyBag")
            .and_then(|b| Keybag::parse(b).ok())
        else {
            return dl.finish(
                error_code::MISSING_FILES,
                "Error deserializing properties (BackupKeyBag is damaged)",
            );
        };
        if !matches!(kb.unlock(password), Ok(Ok(()))) {
            return dl.finish(
                error_code::INVALID_PASSWORD,
                "Invalid password when restoring encrypted backup (MKBKeyBagUnlock error)",
            );
        }
        let plain = manifest
            .data_of("ManifestKey")
            .and_then(|k| kb.unwrap_key(k).ok())
            .and_then(|k| crypto::decrypt(&k, &std::fs::read(&db_path).ok()?).ok());
        let Some(plain) = plain else {
            return dl.finish(
                error_code::MISSING_FILES,
                "Manifest.db could not be decrypted",
            );
        };
        db_path = work.path().join("Manifest-plain.db");
        std::fs::write(&db_path, plain)?;
        Some(kb)
    } else {
        None
    };
    let db = match ManifestDb::open(&db_path) {
        Ok(db) => db,
        Err(e) => {
            return dl.finish(
                error_code::MISSING_FILES,
                &format!("Manifest.db is unreadable: {e}"),
            )
        }
    };

    // Plan: every row of the restored domains, rebuilt under staging/.
    let staging = work.path().join("staging");
    std::fs::create_dir_all(&staging)?;
    let mut files = Vec::new();
    let mut total = 0u64;
    let mut dirs = Vec::new();
    let mut links = Vec::new();
    let mut restored_domains = std::collections::BTreeSet::new();
    db.for_each(|row| {
        if !system && !is_app_domain(&row.domain) {
            return Ok(());
        }
        restored_domains.insert(row.domain.clone());
        let dest = staging.join(&row.domain).join(&row.relative_path);
        match row.flags {
            FLAG_FILE => {
                total += row.file.size;
                files.push((
                    format!("{source}/{}/{}", &row.file_id[..2], row.file_id),
                    dest,
                    row.file,
                ));
            }
            FLAG_DIRECTORY => dirs.push((dest, row.file.last_modified)),
            FLAG_SYMLINK => links.push((dest, row.file.target.unwrap_or_default())),
            _ => {}
        }
        Ok(())
    })?;
    if total > c.free_capacity {
        return dl.finish(error_code::INSUFFICIENT_DISK_SPACE, &format!("Not enough free space on the device to restore ({total} bytes needed, {} available)", c.free_capacity));
    }
    for (d, _) in &dirs {
        std::fs::create_dir_all(d)?;
    }
    let n_files = files.len().max(1);
    for (k, batch) in files.chunks(BATCH).enumerate() {
        let paths: Vec<String> = batch.iter().map(|(p, _, _)| p.clone()).collect();
        for (_, dest, _) in batch {
            if let Some(parent) = dest.parent() {
                std::fs::create_dir_all(parent)?;
            }
        }
        let progress = (k * BATCH) as f64 * 100.0 / n_files as f64;
        if let Some(limit) = c.fault_disconnect_after_files {
            if (k * BATCH + batch.len()) as u64 > limit {
                // Ask for the batch, then pull the cable while it streams:
                // the host's writes fail part way. Nothing is swapped in.
                dl.send(&DlMessage::DownloadFiles {
                    paths: paths.clone(),
                    progress,
                })?;
                std::io::Write::flush(&mut dl.conn)?;
                crate::conn::Conn::cut(&dl.conn);
                return Err(crate::error::SimError::Fault(format!(
                    "disconnect after {} restored files",
                    k * BATCH
                )));
            }
        }
        if let Some(ms) = c.fault_slow_file_ms {
            // A slow device: the batch's time, before asking for it.
            std::thread::sleep(std::time::Duration::from_millis(ms * batch.len() as u64));
        }
        receive_batch(dl, &paths, batch, progress)?;
        for (name, dest, f) in batch {
            if !dest.exists() {
                return dl.finish(
                    error_code::MISSING_FILES,
                    &format!("The host did not send {name}"),
                );
            }
            if let Some(want) = &f.digest {
                if &sha1_of(dest)? != want {
                    return dl.finish(
                        error_code::MISSING_FILES,
                        &format!("Digest didn't match for some files ({name})"),
                    );
                }
            }
            if let Some(wrapped) = &f.encryption_key {
                let Some(kb) = &keybag else {
                    return dl.finish(
                        error_code::MISSING_FILES,
                        &format!("{name} has a key but the backup is not encrypted"),
                    );
                };
                if decrypt_in_place(kb, wrapped, dest).is_err() {
                    return dl.finish(
                        error_code::MISSING_FILES,
                        &format!("Could not decrypt {name}"),
                    );
                }
            }
            let t = std::time::UNIX_EPOCH
                + std::time::Duration::from_secs(f.last_modified.max(0) as u64);
            std::fs::File::options()
                .write(true)
                .open(dest)?
                .set_modified(t)?;
        }
    }
    for (link, target) in &links {
        if let Some(parent) = link.parent() {
            std::fs::create_dir_all(parent)?;
        }
        crate::fsx::symlink(target, link)?;
    }
    for (d, mtime) in dirs.iter().rev() {
        let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs((*mtime).max(0) as u64);
        if let Ok(f) = std::fs::File::open(d) {
            let _ = f.set_modified(t);
        }
    }

    // Everything arrived: swap it in. Without RemoveItemsNotRestored the
    // device keeps what the backup does not mention (a selective restore).
    let fs_root = device.fs_root();
    let remove = req
        .options
        .bool_of("RemoveItemsNotRestored")
        .unwrap_or(false);
    if !remove {
        merge_into(&fs_root, &staging)?;
        for (d, mtime) in dirs.iter().rev() {
            let rel = d.strip_prefix(&staging).expect("below staging");
            let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs((*mtime).max(0) as u64);
            if let Ok(f) = std::fs::File::open(fs_root.join(rel)) {
                let _ = f.set_modified(t);
            }
        }
    } else if system {
        replace_dir(&fs_root, &staging, work.path())?;
    } else {
        for domain in restored_domains {
            std::fs::create_dir_all(&fs_root)?;
            replace_dir(&fs_root.join(&domain), &staging.join(&domain), work.path())?;
        }
    }
    if req.options.bool_of("RestoreShouldReboot").unwrap_or(true) {
        log::info!("restore done; the device would reboot now");
    }
    dl.finish(0, "")
}

fn receive_batch(
    dl: &mut Dl,
    paths: &[String],
    batch: &[(String, PathBuf, ibackup_store::mbfile::MbFile)],
    progress: f64,
) -> Result<()> {
    dl.send(&DlMessage::DownloadFiles {
        paths: paths.to_vec(),
        progress,
    })?;
    receive_files(
        dl,
        paths,
        |name| {
            batch
                .iter()
                .find(|(p, _, _)| p == name)
                .map(|(_, d, _)| d.clone())
        },
        None,
    )?;
    Ok(())
}

/// Replace an encrypted content file by its plaintext, streaming.
fn decrypt_in_place(kb: &Keybag, wrapped: &[u8], path: &Path) -> Result<()> {
    let key = kb.unwrap_key(wrapped)?;
    let tmp = path.with_extension("plain");
    let mut input = std::fs::File::open(path)?;
    let mut output = std::fs::File::create(&tmp)?;
    ibackup_store::reader::decrypt_stream(&key, &mut input, &mut output)?;
    drop(output);
    std::fs::rename(&tmp, path)?;
    Ok(())
}

fn sha1_of(p: &Path) -> Result<Vec<u8>> {
    let mut h = Sha1::new();
    let mut f = std::fs::File::open(p)?;
    std::io::copy(&mut f, &mut h)?;
    Ok(h.finalize().to_vec())
}

/// Move every entry of `staged` to the same place below `root`, replacing
/// what is there under the same name and keeping everything else.
fn merge_into(root: &Path, staged: &Path) -> Result<()> {
    std::fs::create_dir_all(root)?;
    for e in walkdir::WalkDir::new(staged).min_depth(1) {
        let e = e.map_err(std::io::Error::other)?;
        let rel = e.path().strip_prefix(staged).expect("below staging");
        let dest = root.join(rel);
        let existing = std::fs::symlink_metadata(&dest).ok();
        if e.file_type().is_dir() {
            match existing {
                Some(md) if md.is_dir() => {}
                Some(_) => {
                    std::fs::remove_file(&dest)?;
                    std::fs::create_dir(&dest)?;
                }
                None => std::fs::create_dir_all(&dest)?,
            }
        } else {
            if let Some(md) = existing {
                if md.is_dir() {
                    std::fs::remove_dir_all(&dest)?;
                } else {
                    std::fs::remove_file(&dest)?;
                }
            }
            std::fs::rename(e.path(), &dest)?;
        }
    }
    Ok(())
}

/// Put `new` where `old` is, keeping the old tree until the rename succeeded.
fn replace_dir(old: &Path, new: &Path, scratch: &Path) -> Result<()> {
    let trash = scratch.join("replaced");
    let _ = std::fs::remove_dir_all(&trash);
    if old.exists() {
        std::fs::rename(old, &trash)?;
    }
    if new.exists() {
        std::fs::rename(new, old)?;
    } else {
        std::fs::create_dir_all(old)?;
    }
    let _ = std::fs::remove_dir_all(&trash);
    Ok(())
}
