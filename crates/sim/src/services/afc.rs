//! AFC over the device's `media/` folder (what /var/mobile/Media is).
//! Backup clients take the sync lock file here and read iTunes files.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::path::PathBuf;
use std::sync::Arc;

use ibackup_proto::afc::{self, encode_kv, mode, op, status, AfcPacket};
use ibackup_proto::ProtoError;
use ibackup_store::paths::check_relative;

use crate::conn::Conn;
use crate::device::Device;
use crate::error::Result;

/// The folders of /var/mobile/Media a real phone keeps its camera roll
/// in; the simulator keeps them with the rest of CameraRollDomain, so AFC
/// and backups serve the same files.
const CAMERA_ROLL: [&str; 2] = ["DCIM", "PhotoData"];

fn resolve(device: &Device, path: &str) -> Option<PathBuf> {
    let rel = path.trim_start_matches('/').trim_end_matches('/');
    if rel.is_empty() {
        return Some(device.dir.join("media"));
    }
    check_relative(rel).ok()?;
    let top = rel.split('/').next().unwrap_or("");
    if CAMERA_ROLL.contains(&top) {
        return Some(device.dir.join("fs/CameraRollDomain/Media").join(rel));
    }
    Some(device.dir.join("media").join(rel))
}

/// What READ_DIR lists for `path`: the folder's names, the camera-roll
/// folders at the top, and the configured hostile names in a DCIM folder.
fn listing(device: &Device, path: &str, dir: &std::path::Path) -> std::io::Result<Vec<String>> {
    let mut names = vec![".".to_string(), "..".to_string()];
    names.extend(
        fs::read_dir(dir)?
            .flatten()
            .filter_map(|e| e.file_name().into_string().ok()),
    );
    let rel = path.trim_start_matches('/').trim_end_matches('/');
    if rel.is_empty() {
        for top in CAMERA_ROLL {
            if device
                .dir
                .join("fs/CameraRollDomain/Media")
                .join(top)
                .is_dir()
            {
                names.push(top.to_string());
            }
        }
    }
    if rel.starts_with("DCIM/") && rel.matches('/').count() == 1 {
        names.extend(device.cfg().fault_afc_names.iter().cloned());
    }
    Ok(names)
}

fn io_status(e: &std::io::Error) -> u64 {
    match e.kind() {
        std::io::ErrorKind::NotFound => status::OBJECT_NOT_FOUND,
        std::io::ErrorKind::PermissionDenied => status::PERM_DENIED,
        _ => status::INVALID_ARG,
    }
}

pub fn serve(mut conn: Box<dyn Conn>, device: Arc<Device>) -> Result<()> {
    let mut files: HashMap<u64, File> = HashMap::new();
    let mut next_handle = 1u64;
    let mut served = 0u64;
    let cut = device.cfg().fault_afc_disconnect_after_bytes;
    loop {
        let p = match AfcPacket::read(&mut conn) {
            Ok(p) => p,
            Err(ProtoError::Closed) => return Ok(()),
            Err(e) => return Err(e.into()),
        };
        let n = p.packet_num;
        let status_of = |code| AfcPacket::status(n, code);
        let reply = match p.operation {
            op::GET_DEVINFO => {
                let c = device.cfg();
                AfcPacket {
                    packet_num: n,
                    operation: op::DATA,
                    args: Vec::new(),
                    data: encode_kv(&[
                        ("Model", c.product_type.clone()),
                        ("FSTotalBytes", c.total_capacity.to_string()),
                        ("FSFreeBytes", c.free_capacity.to_string()),
                        ("FSBlockSize", "4096".into()),
                    ]),
                }
            }
            op::GET_FILE_INFO => match p.arg_path(0).and_then(|s| resolve(&device, &s)) {
                None => status_of(status::INVALID_ARG),
                Some(path) => match fs::metadata(&path) {
                    Ok(md) => {
                        let mtime = md
                            .modified()
                            .ok()
                            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                            .map(|d| d.as_nanos())
                            .unwrap_or(0);
                        AfcPacket {
                            packet_num: n,
                            operation: op::DATA,
                            args: Vec::new(),
                            data: encode_kv(&[
                                ("st_size", md.len().to_string()),
                                ("st_blocks", md.len().div_ceil(512).to_string()),
                                ("st_nlink", "1".into()),
                                (
                                    "st_ifmt",
                                    if md.is_dir() {
                                        "S_IFDIR".into()
                                    } else {
                                        "S_IFREG".into()
                                    },
                                ),
                                ("st_mtime", mtime.to_string()),
                                ("st_birthtime", mtime.to_string()),
                            ]),
                        }
                    }
                    Err(e) => status_of(io_status(&e)),
                },
            },
            op::READ_DIR => match p
                .arg_path(0)
                .and_then(|s| resolve(&device, &s).map(|r| (s, r)))
            {
                None => status_of(status::INVALID_ARG),
                Some((asked, path)) => match listing(&device, &asked, &path) {
                    Ok(names) => {
                        let mut data = Vec::new();
                        for name in names {
                            data.extend_from_slice(name.as_bytes());
                            data.push(0);
                        }
                        AfcPacket {
                            packet_num: n,
                            operation: op::DATA,
                            args: Vec::new(),
                            data,
                        }
                    }
                    Err(e) => status_of(io_status(&e)),
                },
            },
            op::MAKE_DIR => match p.arg_path(0).and_then(|s| resolve(&device, &s)) {
                None => status_of(status::INVALID_ARG),
                Some(path) => match fs::create_dir_all(path) {
                    Ok(()) => status_of(status::SUCCESS),
                    Err(e) => status_of(io_status(&e)),
                },
            },
            op::REMOVE_PATH => match p.arg_path(0).and_then(|s| resolve(&device, &s)) {
                None => status_of(status::INVALID_ARG),
                Some(path) => {
                    let r = if path.is_dir() {
                        fs::remove_dir(&path)
                    } else {
                        fs::remove_file(&path)
                    };
                    match r {
                        Ok(()) => status_of(status::SUCCESS),
                        Err(e) => status_of(io_status(&e)),
                    }
                }
            },
            op::FILE_OPEN => {
                let m = p.arg_u64(0).unwrap_or(0);
                match p.arg_path(8).and_then(|s| resolve(&device, &s)) {
                    None => status_of(status::INVALID_ARG),
                    Some(path) => {
                        let mut o = OpenOptions::new();
                        match m {
                            mode::RDONLY => o.read(true),
                            mode::RW => o.read(true).write(true).create(true),
                            mode::WRONLY => o.write(true).create(true).truncate(true),
                            mode::WR => o.read(true).write(true).create(true).truncate(true),
                            mode::APPEND => o.append(true).create(true),
                            _ => o.read(true).append(true).create(true),
                        };
                        if m != mode::RDONLY {
                            if let Some(parent) = path.parent() {
                                let _ = fs::create_dir_all(parent);
                            }
                        }
                        match o.open(&path) {
                            Ok(f) if f.metadata().map(|m| m.is_dir()).unwrap_or(false) => {
                                status_of(status::OBJECT_IS_DIR)
                            }
                            Ok(f) => {
                                let h = next_handle;
                                next_handle += 1;
                                files.insert(h, f);
                                AfcPacket {
                                    packet_num: n,
                                    operation: op::FILE_OPEN_RES,
                                    args: h.to_le_bytes().to_vec(),
                                    data: Vec::new(),
                                }
                            }
                            Err(e) => status_of(io_status(&e)),
                        }
                    }
                }
            }
            op::FILE_READ => {
                let (h, len) = (
                    p.arg_u64(0).unwrap_or(0),
                    p.arg_u64(1).unwrap_or(0).min(afc::MAX_PACKET / 2),
                );
                match files.get_mut(&h) {
                    None => status_of(status::INVALID_ARG),
                    Some(f) => {
                        let mut data = Vec::new();
                        let read = Read::by_ref(f).take(len).read_to_end(&mut data);
                        served += data.len() as u64;
                        if cut.is_some_and(|limit| served > limit) {
                            return Ok(());
                        }
                        match read {
                            Ok(_) => AfcPacket {
                                packet_num: n,
                                operation: op::DATA,
                                args: Vec::new(),
                                data,
                            },
                            Err(e) => status_of(io_status(&e)),
                        }
                    }
                }
            }
            op::FILE_WRITE => match files.get_mut(&p.arg_u64(0).unwrap_or(0)) {
                None => status_of(status::INVALID_ARG),
                Some(f) => match f.write_all(&p.data) {
                    Ok(()) => status_of(status::SUCCESS),
                    Err(e) => status_of(io_status(&e)),
                },
            },
            op::FILE_CLOSE => match files.remove(&p.arg_u64(0).unwrap_or(0)) {
                Some(_) => status_of(status::SUCCESS),
                None => status_of(status::INVALID_ARG),
            },
            // One client at a time takes the sync lock in practice; BackupAgent2
            // itself enforces one backup per device (Device::backup_busy).
            op::FILE_LOCK => match files.contains_key(&p.arg_u64(0).unwrap_or(0)) {
                true => status_of(status::SUCCESS),
                false => status_of(status::INVALID_ARG),
            },
            _ => status_of(status::UNKNOWN_PACKET_TYPE),
        };
        reply.write(&mut conn)?;
    }
}
