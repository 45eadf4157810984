//! The device side of mobilebackup2: the DeviceLink handshake, Hello, and
//! the backup conversation, as BackupAgent2 drives it.
//!
//! A backup, as this device runs it:
//! 1. ask the host for the previous `Status.plist`, `Manifest.plist` and
//!    (unless a full backup is forced) `Manifest.db`, and decide from them
//!    whether an incremental backup is possible — the device, not the host,
//!    decides what changed, as iOS does;
//! 2. ask for the host's free space and refuse (MBErrorDomain 105) if the
//!    upload does not fit;
//! 3. create the `xx/` directories, send `Status.plist` marked `uploading`,
//!    remove files that no longer exist, upload new and changed files in
//!    batches;
//! 4. upload `Manifest.db` and `Manifest.plist` into `Snapshot/`, move them
//!    into place, remove `Snapshot/`, send `Status.plist` marked `finished`;
//! 5. report the result in a final `DLMessageProcessMessage`.

use std::collections::HashMap;
use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use ibackup_proto::devicelink::{DlMessage, VERSION_MAJOR, VERSION_MINOR};
use ibackup_proto::frame;
use ibackup_proto::mb2::{
    self, error_code, FileStreamReader, FileStreamWriter, Mb2Request, StreamItem,
};
use ibackup_proto::plistx::{dict, DictExt};
use ibackup_proto::ProtoError;
use ibackup_store::crypto::{self, CbcEncryptor, Keybag};
use ibackup_store::manifest_db::{ManifestDb, ManifestWriter};
use ibackup_store::mbfile::{MbFile, S_IFDIR, S_IFLNK, S_IFREG};
use ibackup_store::paths::file_id;
use plist::{Dictionary, Value};
use sha1::{Digest, Sha1};

use crate::conn::Conn;
use crate::device::Device;
use crate::error::{Result, SimError};
use crate::populate::ENCRYPTED_ONLY_DOMAINS;

/// File data travels in blocks of this size.
const BLOCK: usize = 1 << 20;
/// Files per DLMessageUploadFiles.
const BATCH_FILES: usize = 2000;
/// Bytes per DLMessageUploadFiles.
const BATCH_BYTES: u64 = 512 << 20;

/// A DeviceLink connection with the fault counters of one session.
pub struct Dl {
    pub conn: crate::conn::Buffered<Box<dyn Conn>>,
    pub device: Arc<Device>,
    bytes_sent: u64,
    files_sent: u64,
}

impl Dl {
    pub fn send(&mut self, m: &DlMessage) -> Result<()> {
        frame::write_binary(&mut self.conn, &m.encode())?;
        Ok(())
    }

    pub fn recv(&mut self) -> Result<DlMessage> {
        Ok(DlMessage::decode(frame::read_plist(&mut self.conn)?)?)
    }

    /// Receive the host's answer to a request; a non-zero code is returned as an error text.
    pub fn status(&mut self) -> Result<std::result::Result<Value, String>> {
        match self.recv()? {
            DlMessage::StatusResponse {
                code: 0, payload, ..
            } => Ok(Ok(payload)),
            DlMessage::StatusResponse {
                code, description, ..
            } => Ok(Err(format!(
                "host error {code}: {}",
                description.unwrap_or_default()
            ))),
            other => Err(SimError::Protocol(format!(
                "expected a status response, got {}",
                other.name()
            ))),
        }
    }

    pub fn finish(&mut self, code: u64, description: &str) -> Result<()> {
        log::info!("mobilebackup2 result {code}: {description}");
        self.send(&DlMessage::ProcessMessage(mb2::result_message(
            code,
            description,
        )))
    }

    /// Count payload about to be sent and fire the disconnect faults.
    fn account(&mut self, bytes: u64, new_file: bool) -> Result<()> {
        let c = self.device.cfg();
        if let (true, Some(ms)) = (new_file, c.fault_slow_file_ms) {
            self.conn.flush()?;
            std::thread::sleep(std::time::Duration::from_millis(ms));
        }
        if let (true, Some(limit)) = (new_file, c.fault_stall_after_files) {
            if self.files_sent >= limit {
                self.conn.flush()?;
                // Silent, with the connection open, until the host gives up.
                let mut b = [0u8; 1];
                loop {
                    match std::io::Read::read(&mut self.conn, &mut b) {
                        Ok(0) => break,
                        Ok(_) => {}
                        Err(e)
                            if matches!(
                                e.kind(),
                                std::io::ErrorKind::WouldBlock
                                    | std::io::ErrorKind::TimedOut
                                    | std::io::ErrorKind::Interrupted
                            ) => {}
                        Err(_) => break,
                    }
                }
                return Err(SimError::Fault(format!("stalled after {limit} files")));
            }
        }
        if new_file {
            if let Some(limit) = c.fault_disconnect_after_files {
                if self.files_sent >= limit {
                    self.conn.cut();
                    return Err(SimError::Fault(format!("disconnect after {limit} files")));
                }
            }
            self.files_sent += 1;
        }
        if let Some(limit) = c.fault_disconnect_after_bytes {
            if self.bytes_sent + bytes > limit {
                // Send what fits, then pull the cable.
                self.conn.cut();
                return Err(SimError::Fault(format!("disconnect after {limit} bytes")));
            }
        }
        self.bytes_sent += bytes;
        Ok(())
    }
}

pub fn serve(conn: Box<dyn Conn>, device: Arc<Device>) -> Result<()> {
    let mut dl = Dl {
        conn: crate::conn::Buffered::new(conn),
        device,
        bytes_sent: 0,
        files_sent: 0,
    };
    dl.send(&DlMessage::VersionExchange {
        major: VERSION_MAJOR,
        minor: VERSION_MINOR,
    })?;
    match dl.recv()? {
        DlMessage::VersionsOk { .. } => {}
        other => {
            return Err(SimError::Protocol(format!(
                "version exchange answered with {}",
                other.name()
            )))
        }
    }
    dl.send(&DlMessage::DeviceReady)?;
    loop {
        let msg = match dl.recv() {
            Ok(m) => m,
            Err(SimError::Proto(ProtoError::Closed)) => return Ok(()),
            Err(e) => return Err(e),
        };
        match msg {
            DlMessage::ProcessMessage(d) => {
                let req = Mb2Request::decode(&d)?;
                log::info!("mobilebackup2 request {}", req.name);
                match req.name.as_str() {
                    "Hello" => {
                        let versions: Vec<f64> = d
                            .get("SupportedProtocolVersions")
                            .and_then(Value::as_array)
                            .map(|a| a.iter().filter_map(Value::as_real).collect())
                            .unwrap_or_default();
                        dl.send(&DlMessage::ProcessMessage(mb2::hello_response(&versions)))?;
                    }
                    "Backup" => exclusive(&mut dl, |dl| backup(dl, &req))?,
                    "Restore" => exclusive(&mut dl, |dl| super::restore::restore(dl, &req))?,
                    "ChangePassword" => exclusive(&mut dl, |dl| change_password(dl, &req))?,
                    other => dl.finish(1, &format!("{other} is not supported by this device"))?,
                }
            }
            DlMessage::Disconnect(_) => return Ok(()),
            other => log::info!("mobilebackup2: ignoring {}", other.name()),
        }
    }
}

/// One backup or restore per device at a time, as BackupAgent2.
fn exclusive(dl: &mut Dl, f: impl FnOnce(&mut Dl) -> Result<()>) -> Result<()> {
    if let Some(seconds) = dl.device.cfg().fault_busy_seconds {
        let since = *dl
            .device
            .busy_fault_since
            .lock()
            .expect("busy fault lock")
            .get_or_insert_with(std::time::Instant::now);
        if since.elapsed() < std::time::Duration::from_secs(seconds) {
            return dl.finish(error_code::BUSY, "Another backup or restore is in progress");
        }
    }
    {
        let mut busy = dl.device.backup_busy.lock().expect("busy lock");
        if *busy {
            drop(busy);
            return dl.finish(error_code::BUSY, "Another backup or restore is in progress");
        }
        *busy = true;
    }
    let r = f(dl);
    *dl.device.backup_busy.lock().expect("busy lock") = false;
    r
}

/// What one row of an index says, as far as deciding what changed needs:
/// the fields that tell whether the content changed, and a fingerprint of
/// every other field but the two that follow the content (digest, key).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Known {
    size: u64,
    last_modified: i64,
    mode: u32,
    inode: u64,
    flags: i64,
    encrypted: bool,
    fingerprint: u64,
}

impl Known {
    fn of(f: &MbFile) -> Known {
        Known {
            size: f.size,
            last_modified: f.last_modified,
            mode: f.mode,
            inode: f.inode,
            flags: f.kind_flag(),
            encrypted: f.encryption_key.is_some(),
            fingerprint: fingerprint(f),
        }
    }

    /// Does the file system entry `f` still have this row's content?
    fn same_content(&self, f: &MbFile, encrypted: bool) -> bool {
        self.size == f.size
            && self.last_modified == f.last_modified
            && self.mode == f.mode
            && self.inode == f.inode
            && self.encrypted == encrypted
    }
}

/// A hash of every field of `f` but `digest` and `encryption_key`.
fn fingerprint(f: &MbFile) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    (&f.relative_path, &f.target, &f.extended_attributes).hash(&mut h);
    (f.mode, f.inode, f.user_id, f.group_id, f.size).hash(&mut h);
    (f.last_modified, f.last_status_change, f.birth).hash(&mut h);
    (f.protection_class, f.flags).hash(&mut h);
    h.finish()
}

/// An index's rows in its order: domain, relative path, what the row says.
type KnownRows = Vec<(String, String, Known)>;

/// Pair each scanned entry with its row in `rows` and call `matched` with
/// both; returns which rows were paired. A device that has not changed
/// lists its entries in the order of the index it last gave, so both are
/// walked together and each entry is compared with the row after the last
/// one paired; a table of all rows is built only when that row is not it.
fn pair_rows(
    rows: &KnownRows,
    entries: &mut [Entry],
    mut matched: impl FnMut(&mut Entry, Known) -> Result<()>,
) -> Result<Vec<bool>> {
    let mut taken = vec![false; rows.len()];
    let mut next = 0;
    let mut table: Option<HashMap<(&str, &str), usize>> = None;
    for e in entries.iter_mut() {
        let key = (e.domain.as_str(), e.file.relative_path.as_str());
        let found = match rows.get(next) {
            Some((d, p, _)) if !taken[next] && (d.as_str(), p.as_str()) == key => Some(next),
            _ => table
                .get_or_insert_with(|| {
                    rows.iter()
                        .enumerate()
                        .map(|(i, (d, p, _))| ((d.as_str(), p.as_str()), i))
                        .collect()
                })
                .get(&key)
                .copied()
                .filter(|&i| !taken[i]),
        };
        let Some(i) = found else { continue };
        taken[i] = true;
        next = i + 1;
        matched(e, rows[i].2)?;
    }
    Ok(taken)
}

/// The last index this device gave a host, kept as BackupAgent2 keeps its
/// own record of its last backup: a copy of the file exactly as it was
/// sent, the same index in plain SQLite, and what its rows say. When the
/// host shows the device that same index again (compared byte for byte as
/// it arrives, so it need not be stored again), the device continues from
/// its own copy and need not decode every record to learn what it already
/// knows. Any other index is stored and decoded.
pub struct LastIndex {
    /// The index as sent (encrypted when the backup is).
    sent: PathBuf,
    /// The index in plain SQLite: `sent` itself unless encrypted.
    plain: PathBuf,
    rows: KnownRows,
}

/// Where the device keeps its copy of the last index it gave a host.
fn last_index_dir(device: &Device) -> PathBuf {
    device.state_dir().join("last-index")
}

/// Keep the index just sent in `dir`: the plain file `db` (moved there
/// unless it already is the kept one) and, for an encrypted backup, the
/// ciphertext as sent. Returns where the sent bytes and the plain file are.
fn keep_index(dir: &Path, db: &Path, cipher: Option<&Path>) -> Result<(PathBuf, PathBuf)> {
    std::fs::create_dir_all(dir)?;
    let plain = dir.join("index.db");
    if db != plain {
        std::fs::rename(db, &plain)?;
    }
    let sent = dir.join("sent.db");
    match cipher {
        Some(c) => {
            std::fs::rename(c, &sent)?;
            Ok((sent, plain))
        }
        None => {
            let _ = std::fs::remove_file(&sent);
            Ok((plain.clone(), plain))
        }
    }
}

/// One entry of the device's file system, as the backup records it.
pub struct Entry {
    pub domain: String,
    pub file: MbFile,
    pub upload: bool,
    /// The host's row for this entry, when it stays as it is.
    pub kept: Option<Known>,
}

impl Entry {
    /// Where the entry is on the device whose `fs/` folder is `fs_root`.
    pub fn source(&self, fs_root: &Path) -> PathBuf {
        fs_root.join(&self.domain).join(&self.file.relative_path)
    }
}

/// Domains whose files carry a Digest (system domains; fact sheet §3.4).
pub fn has_digest(domain: &str) -> bool {
    !(domain.starts_with("AppDomain")
        || domain.starts_with("Sys")
        || matches!(domain, "CameraRollDomain" | "MediaDomain" | "TonesDomain"))
}

fn unix(t: std::io::Result<std::time::SystemTime>) -> i64 {
    t.ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// Walk `fs/` in a stable order (each folder before its contents, names
/// sorted) and describe every entry.
pub fn scan(fs_root: &Path, include_encrypted_only: bool) -> Result<Vec<Entry>> {
    let mut domains: Vec<(String, PathBuf)> = std::fs::read_dir(fs_root)?
        .flatten()
        .filter(|e| e.path().is_dir())
        .filter_map(|e| Some((e.file_name().to_str()?.to_string(), e.path())))
        .filter(|(d, _)| include_encrypted_only || !ENCRYPTED_ONLY_DOMAINS.contains(&d.as_str()))
        .collect();
    domains.sort();
    // Domains are independent: a few threads take them in turn, and the
    // results are put back in order.
    let next = std::sync::atomic::AtomicUsize::new(0);
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get().min(4));
    let mut parts: Vec<(usize, Result<Vec<Entry>>)> = std::thread::scope(|s| {
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                s.spawn(|| {
                    let mut done = Vec::new();
                    loop {
                        let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        let Some((domain, path)) = domains.get(i) else {
                            return done;
                        };
                        let mut out = Vec::new();
                        let r = std::fs::symlink_metadata(path)
                            .map_err(SimError::from)
                            .and_then(|md| {
                                push_entry(&mut out, domain, String::new(), &|| path.clone(), &md)
                            })
                            .and_then(|()| scan_dir(&mut out, domain, "", path));
                        done.push((i, r.map(|()| out)));
                    }
                })
            })
            .collect();
        workers
            .into_iter()
            .flat_map(|w| w.join().expect("scan thread"))
            .collect()
    });
    parts.sort_by_key(|(i, _)| *i);
    let parts = parts
        .into_iter()
        .map(|(_, part)| part)
        .collect::<Result<Vec<_>>>()?;
    let mut all = Vec::with_capacity(parts.iter().map(Vec::len).sum());
    for part in parts {
        all.extend(part);
    }
    Ok(all)
}

/// Describe the contents of `dir` (relative path `rel`), recursively.
/// Metadata comes from the open folder (`fstatat`), not from full paths.
fn scan_dir(out: &mut Vec<Entry>, domain: &str, rel: &str, dir: &Path) -> Result<()> {
    let mut children: Vec<(std::ffi::OsString, std::fs::DirEntry)> = std::fs::read_dir(dir)?
        .map(|c| c.map(|c| (c.file_name(), c)))
        .collect::<std::io::Result<_>>()?;
    children.sort_unstable_by(|a, b| a.0.cmp(&b.0));
    for (name, c) in children {
        // APFS names are UTF-8, and an index's paths are text: anything
        // else is no file an iPhone has (skipped, as domains are).
        let Some(name) = name.to_str() else {
            log::warn!("skipping {}: not a UTF-8 name", c.path().display());
            continue;
        };
        let child_rel = if rel.is_empty() {
            name.to_string()
        } else {
            format!("{rel}/{name}")
        };
        let md = c.metadata()?;
        if md.is_dir() {
            let path = c.path();
            push_entry(out, domain, child_rel.clone(), &|| path.clone(), &md)?;
            scan_dir(out, domain, &child_rel, &path)?;
        } else {
            push_entry(out, domain, child_rel, &|| c.path(), &md)?;
        }
    }
    Ok(())
}

/// Describe the entry `rel` of `domain`, whose metadata is `md`. `path`
/// gives its full path, which only a link's target and (off Unix) the
/// stand-in inode need: most entries go without making one.
fn push_entry(
    out: &mut Vec<Entry>,
    domain: &str,
    rel: String,
    path: &dyn Fn() -> PathBuf,
    md: &std::fs::Metadata,
) -> Result<()> {
    let ft = md.file_type();
    let (mode, size, target) = if ft.is_symlink() {
        (
            S_IFLNK | 0o755,
            0,
            Some(std::fs::read_link(path())?.to_string_lossy().into_owned()),
        )
    } else if ft.is_dir() {
        (S_IFDIR | 0o755, 0, None)
    } else {
        (S_IFREG | 0o644, md.len(), None)
    };
    let root = domain == "RootDomain";
    let mtime = unix(md.modified());
    out.push(Entry {
        file: MbFile {
            relative_path: rel,
            target,
            mode,
            inode: crate::fsx::inode(md, path),
            user_id: if root { 0 } else { 501 },
            group_id: if root { 0 } else { 501 },
            last_modified: mtime,
            last_status_change: mtime,
            birth: mtime,
            size,
            protection_class: if ft.is_file() {
                if domain == "KeychainDomain" {
                    4
                } else {
                    3
                }
            } else {
                0
            },
            ..Default::default()
        },
        domain: domain.to_string(),
        upload: ft.is_file(),
        kept: None,
    });
    Ok(())
}

/// Fetch files from the host into `dest`, named by their last path component.
/// Missing files are simply absent afterwards. With `same_as` (a name and
/// a file of the device's own), that name's bytes are compared with the
/// file as they arrive and stored only if they differ; returns whether they
/// were the same (then nothing is stored for it).
pub fn download(
    dl: &mut Dl,
    paths: &[String],
    dest: &Path,
    progress: f64,
    same_as: Option<(&str, &Path)>,
) -> Result<bool> {
    dl.send(&DlMessage::DownloadFiles {
        paths: paths.to_vec(),
        progress,
    })?;
    receive_files(
        dl,
        paths,
        |name| {
            let file_name = name.rsplit('/').next().unwrap_or("x");
            Some(dest.join(file_name))
        },
        same_as,
    )
}

/// Read the host's file stream for `paths`; `place` maps each name to
/// where it goes. `same_as`: as in [`download`].
pub fn receive_files(
    dl: &mut Dl,
    paths: &[String],
    mut place: impl FnMut(&str) -> Option<PathBuf>,
    same_as: Option<(&str, &Path)>,
) -> Result<bool> {
    let mut r = FileStreamReader::new(&mut dl.conn);
    let mut buf = vec![0u8; BLOCK];
    let mut same = false;
    loop {
        let name = match r.name()? {
            StreamItem::End => break,
            StreamItem::Name(n) => n,
        };
        if !paths.contains(&name) {
            return Err(SimError::Protocol(format!(
                "host sent {name:?}, which was not asked for"
            )));
        }
        let target =
            place(&name).ok_or_else(|| SimError::Protocol(format!("no place for {name:?}")))?;
        let tmp = target.with_extension("partial");
        let mut out: Option<File> = None;
        let mut failed = false;
        // A copy the device cannot read is simply not compared.
        let mut mine = match same_as {
            Some((n, own)) if n == name => Compare::open(own).ok(),
            _ => None,
        };
        loop {
            let h = r.block_header()?;
            match h.code {
                mb2::CODE_FILE_DATA => {
                    let mut left = h.len as usize;
                    while left > 0 {
                        let n = left.min(buf.len());
                        r.payload(&mut buf[..n])?;
                        left -= n;
                        if let Some(c) = mine.as_mut() {
                            if c.same(&buf[..n])? {
                                continue;
                            }
                            // They differ: store what matched so far, then the rest.
                            out = Some(c.diverge(&tmp)?);
                            mine = None;
                        }
                        if out.is_none() {
                            out = Some(File::create(&tmp)?);
                        }
                        out.as_mut().expect("opened").write_all(&buf[..n])?;
                    }
                }
                mb2::CODE_SUCCESS => break,
                _ => {
                    let text = r.text(h.len)?;
                    log::debug!("host could not send {name}: {text}");
                    failed = true;
                    break;
                }
            }
        }
        if failed {
            drop(out);
            let _ = std::fs::remove_file(&tmp);
            continue;
        }
        if let Some(mut c) = mine {
            if c.at_end()? {
                same = true;
                continue;
            }
            // The device's copy is longer: the host's is a prefix of it.
            out = Some(c.diverge(&tmp)?);
        }
        if out.is_none() {
            File::create(&tmp)?;
        }
        drop(out);
        std::fs::rename(&tmp, &target)?;
    }
    if let Err(e) = dl.status()? {
        // Multi status: some files were missing; what arrived is kept.
        log::debug!("download status: {e}");
    }
    Ok(same)
}

/// A file of the device's own, compared with bytes arriving from the host.
struct Compare {
    path: PathBuf,
    /// Read straight into `buf`: the host's blocks are large enough.
    file: File,
    /// How many bytes have matched so far.
    matched: u64,
    buf: Vec<u8>,
}

impl Compare {
    fn open(path: &Path) -> Result<Compare> {
        Ok(Compare {
            path: path.to_path_buf(),
            file: File::open(path)?,
            matched: 0,
            buf: Vec::new(),
        })
    }

    /// Do the next bytes of the device's file equal `data`?
    fn same(&mut self, data: &[u8]) -> Result<bool> {
        self.buf.resize(data.len(), 0);
        match self.file.read_exact(&mut self.buf) {
            Ok(()) if self.buf == data => {
                self.matched += data.len() as u64;
                Ok(true)
            }
            Ok(()) => Ok(false),
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// Has the device's file ended where the host's did?
    fn at_end(&mut self) -> Result<bool> {
        Ok(self.file.read(&mut [0u8; 1])? == 0)
    }

    /// A new file at `tmp` holding the bytes that matched so far.
    fn diverge(&self, tmp: &Path) -> Result<File> {
        let mut out = File::create(tmp)?;
        std::io::copy(&mut File::open(&self.path)?.take(self.matched), &mut out)?;
        Ok(out)
    }
}

/// Whether the previous backup on the host can be continued incrementally.
/// An encrypted one must be made with this device's current keybag. `own`:
/// the host's index was found to be the device's own last one (its
/// `Manifest.db` then was not stored in `dir`).
fn previous_backup(
    dir: &Path,
    udid: &str,
    keybag: Option<&Keybag>,
    own: Option<LastIndex>,
) -> Option<Previous> {
    if own.is_none() && !dir.join("Manifest.db").is_file() {
        return None;
    }
    let encrypted = keybag.is_some();
    let status = Value::from_file(dir.join("Status.plist"))
        .ok()?
        .into_dictionary()?;
    if status.str_of("SnapshotState") != Some("finished") {
        return None;
    }
    let manifest = Value::from_file(dir.join("Manifest.plist"))
        .ok()?
        .into_dictionary()?;
    if manifest.bool_of("IsEncrypted").unwrap_or(false) != encrypted {
        return None;
    }
    if manifest
        .dict_of("Lockdown")
        .and_then(|l| l.str_of("UniqueDeviceID"))
        != Some(udid)
    {
        return None;
    }
    if let Some(kb) = keybag {
        let theirs = Keybag::parse(manifest.data_of("BackupKeyBag")?).ok()?;
        if theirs.uuid != kb.uuid {
            return None;
        }
        if own.is_none() {
            let db_key = kb.unwrap_key(manifest.data_of("ManifestKey")?).ok()?;
            let plain =
                crypto::decrypt(&db_key, &std::fs::read(dir.join("Manifest.db")).ok()?).ok()?;
            std::fs::write(dir.join("Manifest-plain.db"), plain).ok()?;
            return Previous::open(dir.join("Manifest-plain.db"), None);
        }
    }
    match own {
        Some(own) => Previous::open(own.plain, Some(own.rows)),
        None => Previous::open(dir.join("Manifest.db"), None),
    }
}

/// The host's previous index in plain SQLite (this device's own copy:
/// updated in place into the next one), and what its rows say when the
/// device remembers them.
struct Previous {
    db: ManifestDb,
    plain: PathBuf,
    remembered: Option<KnownRows>,
}

impl Previous {
    fn open(plain: PathBuf, remembered: Option<KnownRows>) -> Option<Previous> {
        Some(Previous {
            db: ManifestDb::open(&plain).ok()?,
            plain,
            remembered,
        })
    }

    /// What each row says: remembered if this is the index the device last
    /// gave, otherwise decoded.
    fn rows(&mut self) -> Result<KnownRows> {
        if let Some(last) = self.remembered.take() {
            return Ok(last);
        }
        let mut rows = KnownRows::new();
        self.db.for_each(|row| {
            let known = Known::of(&row.file);
            rows.push((row.domain, row.relative_path, known));
            Ok(())
        })?;
        Ok(rows)
    }
}

fn status_plist(full: bool, state: &str) -> Vec<u8> {
    let v = Value::Dictionary(dict([
        ("BackupState", Value::from("new")),
        ("Date", Value::Date(std::time::SystemTime::now().into())),
        ("IsFullBackup", Value::Boolean(full)),
        ("SnapshotState", Value::from(state)),
        ("UUID", Value::from(crate::usbmuxd::random_uuid())),
        ("Version", Value::from("3.3")),
    ]));
    ibackup_proto::plistx::to_binary(&v)
}

pub fn manifest_plist(
    device: &Device,
    keybag: Option<&Keybag>,
    manifest_key: Option<Vec<u8>>,
) -> Vec<u8> {
    let c = device.cfg();
    let apps: Dictionary = super::misc::user_apps(device)
        .into_iter()
        .map(|id| {
            let v = Value::Dictionary(dict([
                ("CFBundleIdentifier", Value::from(id.as_str())),
                ("CFBundleVersion", Value::from("1.0")),
                ("ContainerContentClass", Value::from("Data/Application")),
                (
                    "Path",
                    Value::from(format!(
                        "/private/var/containers/Bundle/Application/{}/App.app",
                        file_id("app", &id)
                    )),
                ),
            ]));
            (id, v)
        })
        .collect();
    let lockdown = dict([
        ("BuildVersion", Value::from(c.build_version.as_str())),
        ("DeviceName", Value::from(c.name.as_str())),
        ("ProductType", Value::from(c.product_type.as_str())),
        ("ProductVersion", Value::from(c.product_version.as_str())),
        ("SerialNumber", Value::from(c.serial_number.as_str())),
        ("UniqueDeviceID", Value::from(c.udid.as_str())),
        (
            "com.apple.Accessibility",
            Value::Dictionary(Dictionary::new()),
        ),
        (
            "com.apple.mobile.data_sync",
            Value::Dictionary(Dictionary::new()),
        ),
    ]);
    let mut v = dict([
        ("Applications", Value::Dictionary(apps)),
        (
            "BackupKeyBag",
            Value::Data(
                keybag
                    .map(Keybag::encode)
                    .unwrap_or_else(|| Keybag::unprotected(&mut rand::rngs::OsRng).encode()),
            ),
        ),
        ("Date", Value::Date(std::time::SystemTime::now().into())),
        ("IsEncrypted", Value::Boolean(keybag.is_some())),
        ("Lockdown", Value::Dictionary(lockdown)),
        ("SystemDomainsVersion", Value::from("24.0")),
        ("Version", Value::from("10.0")),
        ("WasPasscodeSet", Value::Boolean(true)),
    ]);
    if let Some(k) = manifest_key {
        v.insert("ManifestKey".into(), Value::Data(k));
    }
    ibackup_proto::plistx::to_binary(&Value::Dictionary(v))
}

/// Send one file's content from disk, encrypted with `key` if given,
/// hashing what is sent (the stored bytes) if asked.
fn send_file(
    dl: &mut Dl,
    device_name: &str,
    backup_name: &str,
    source: &Path,
    key: Option<&[u8; 32]>,
    hash: bool,
    buf: &mut [u8],
) -> Result<Option<Vec<u8>>> {
    dl.account(0, true)?;
    let mut f = File::open(source)?;
    let mut sha1 = hash.then(Sha1::new);
    let mut hash_sent = |sent: &[u8]| {
        if let Some(h) = sha1.as_mut() {
            h.update(sent);
        }
    };
    stream(
        dl,
        (device_name, backup_name),
        &mut f,
        key,
        buf,
        &mut |dl, n| dl.account(n, false),
        hash.then_some(&mut hash_sent as Sink<'_>),
    )?;
    Ok(sha1.map(|h| h.finalize().to_vec()))
}

/// Sees the bytes of a file as they are sent.
type Sink<'a> = &'a mut dyn FnMut(&[u8]);

/// Send `f` as the file `names` (device name, backup name), encrypted with
/// `key` if given. `account` sees each plaintext block's size before it
/// goes, `sent` (if given) every byte that went.
fn stream(
    dl: &mut Dl,
    (device_name, backup_name): (&str, &str),
    f: &mut File,
    key: Option<&[u8; 32]>,
    buf: &mut [u8],
    account: &mut dyn FnMut(&mut Dl, u64) -> Result<()>,
    mut sent: Option<Sink<'_>>,
) -> Result<()> {
    {
        let mut w = FileStreamWriter::new(&mut dl.conn);
        w.name(device_name)?;
        w.name(backup_name)?;
    }
    if key.is_none() && sent.is_none() {
        // Plain bytes nobody here needs to see: from the file to the
        // connection, by the kernel where it can (see `Conn::send_from`).
        // The blocks on the wire are the same as below.
        let mut left = f.metadata()?.len();
        while left > 0 {
            let n = left.min(buf.len() as u64);
            account(dl, n)?;
            FileStreamWriter::new(&mut dl.conn).data_header(n as usize)?;
            if dl.conn.send_from(f, n, buf)? < n {
                // The header promised n bytes: the stream cannot go on.
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    format!("{device_name} shrank while it was being sent"),
                )
                .into());
            }
            left -= n;
        }
        FileStreamWriter::new(&mut dl.conn).end_of_file()?;
        return Ok(());
    }
    let mut enc = key.map(CbcEncryptor::new);
    let mut cipher = Vec::new();
    loop {
        let n = f.read(buf)?;
        if n == 0 {
            break;
        }
        account(dl, n as u64)?;
        let out: &[u8] = match enc.as_mut() {
            Some(e) => {
                cipher.clear();
                e.update(&buf[..n], &mut cipher);
                &cipher
            }
            None => &buf[..n],
        };
        if let Some(sent) = sent.as_mut() {
            sent(out);
        }
        if !out.is_empty() {
            FileStreamWriter::new(&mut dl.conn).data(out)?;
        }
    }
    if let Some(e) = enc {
        cipher.clear();
        e.finish(&mut cipher);
        if let Some(sent) = sent.as_mut() {
            sent(&cipher);
        }
        FileStreamWriter::new(&mut dl.conn).data(&cipher)?;
    }
    FileStreamWriter::new(&mut dl.conn).end_of_file()?;
    Ok(())
}

/// Send in-memory content as one file.
fn send_bytes(dl: &mut Dl, backup_name: &str, bytes: &[u8]) -> Result<()> {
    let mut w = FileStreamWriter::new(&mut dl.conn);
    w.name(&format!(
        "/var/mobile/Library/Backup/{}",
        backup_name.rsplit('/').next().unwrap_or("")
    ))?;
    w.name(backup_name)?;
    for chunk in bytes.chunks(BLOCK) {
        w.data(chunk)?;
    }
    w.end_of_file()?;
    Ok(())
}

/// One `DLMessageUploadFiles`: the announcement, the files `send` streams,
/// the stream's end, then the host's answer (its error text if it failed).
fn upload_batch(
    dl: &mut Dl,
    progress: f64,
    total_bytes: u64,
    send: impl FnOnce(&mut Dl) -> Result<()>,
) -> Result<std::result::Result<(), String>> {
    dl.send(&DlMessage::UploadFiles {
        progress,
        total_bytes,
    })?;
    send(dl)?;
    FileStreamWriter::new(&mut dl.conn).terminate()?;
    Ok(dl.status()?.map(|_| ()))
}

fn upload_metadata(
    dl: &mut Dl,
    files: &[(String, Vec<u8>)],
    progress: f64,
) -> Result<std::result::Result<(), String>> {
    let total = files.iter().map(|(_, b)| b.len() as u64).sum();
    upload_batch(dl, progress, total, |dl| {
        for (name, bytes) in files {
            send_bytes(dl, name, bytes)?;
        }
        Ok(())
    })
}

pub fn backup(dl: &mut Dl, req: &Mb2Request) -> Result<()> {
    let device = dl.device.clone();
    let c = device.cfg();
    let target = req.target.clone().unwrap_or_else(|| c.udid.clone());
    if target != c.udid {
        return dl.finish(
            error_code::MISSING_FILES,
            &format!("Target identifier {target} is not this device"),
        );
    }
    if let Some(code) = c.fault_refuse_backup {
        return dl.finish(
            code,
            "The backup was refused by the device (simulated refusal)",
        );
    }
    let keybag = crate::keys::load(&device)?;
    let encrypted = keybag.is_some();
    let force_full = req.options.bool_of("ForceFullBackup").unwrap_or(false);
    let work = tempdir_in(&device.state_dir())?;
    // Taken now: this backup changes the device's copy of the index, so
    // only its success remembers one again.
    let last = device.last_index.lock().expect("last index lock").take();

    // 1. The previous backup, as the host has it.
    let mut wanted = vec![
        format!("{target}/Status.plist"),
        format!("{target}/Manifest.plist"),
    ];
    if !force_full {
        wanted.push(format!("{target}/Manifest.db"));
    }
    // The device looks at its own files while the host sends its index.
    let scanning = {
        let root = device.fs_root();
        std::thread::spawn(move || scan(&root, encrypted))
    };
    let index_name = format!("{target}/Manifest.db");
    let same_as = match (&last, force_full) {
        (Some(l), false) => Some((index_name.as_str(), l.sent.as_path())),
        _ => None,
    };
    let same = download(dl, &wanted, work.path(), 0.0, same_as)?;
    let mut previous = if force_full {
        None
    } else {
        previous_backup(work.path(), &c.udid, keybag.as_ref(), last.filter(|_| same))
    };
    let full = previous.is_none();
    let had_backup = work.path().join("Status.plist").exists();
    log::info!(
        "backup of {}: {}",
        c.udid,
        if full { "full" } else { "incremental" }
    );

    // 2. What to send: what the previous index says (learnt while the
    // scan still runs) against the file system.
    let known = match &mut previous {
        Some(prev) => Some(prev.rows()?),
        None => None,
    };
    let mut entries = scanning
        .join()
        .map_err(|_| SimError::Protocol("the file system scan panicked".into()))??;
    // Content files for the host to delete; rows to drop from the index.
    let mut removed = Vec::new();
    let mut gone = Vec::new();
    if let (Some(prev), Some(known)) = (&previous, known) {
        let paired = pair_rows(&known, &mut entries, |e, k| {
            if !e.upload {
                // Directories and symlinks: keep the row when it says the same.
                if k == Known::of(&e.file) {
                    e.kept = Some(k);
                }
                return Ok(());
            }
            if !k.same_content(&e.file, encrypted) {
                return Ok(());
            }
            e.upload = false;
            if k.fingerprint == fingerprint(&e.file) {
                e.kept = Some(k);
            } else {
                // Same content, other metadata changed: a new row that
                // keeps the stored content's digest and key.
                let row = prev
                    .db
                    .get(&e.domain, &e.file.relative_path)?
                    .ok_or_else(|| {
                        SimError::Protocol(format!(
                            "{}-{}: row vanished",
                            e.domain, e.file.relative_path
                        ))
                    })?;
                e.file.digest = row.file.digest;
                e.file.encryption_key = row.file.encryption_key;
            }
            Ok(())
        })?;
        for ((domain, path, k), paired) in known.into_iter().zip(paired) {
            if paired {
                continue;
            }
            if k.flags == ibackup_store::mbfile::FLAG_FILE {
                let id = file_id(&domain, &path);
                removed.push(format!("{target}/{}/{id}", &id[..2]));
            }
            gone.push((domain, path));
        }
        removed.sort();
    }
    let total: u64 = entries
        .iter()
        .filter(|e| e.upload)
        .map(|e| e.file.size)
        .sum();

    // 3. Room on the host?
    dl.send(&DlMessage::GetFreeDiskSpace)?;
    let free = match dl.status()? {
        Ok(Value::Integer(i)) => i.as_unsigned().unwrap_or(0),
        Ok(_) => 0,
        Err(e) => {
            return dl.finish(
                error_code::INSUFFICIENT_DISK_SPACE,
                &format!("Could not get free disk space: {e}"),
            )
        }
    };
    let needed = total + 1_000_000;
    if free < needed && !c.fault_ignore_free_space {
        return dl.finish(
            error_code::INSUFFICIENT_DISK_SPACE,
            &format!("Insufficient free disk space on drive to upload files (need {needed} bytes, {free} available)"),
        );
    }

    // 4. A full backup over an earlier one starts from empty content
    //    folders, so nothing of the earlier backup lingers beside the new
    //    Manifest.db (hosts ignore missing paths here).
    if full && had_backup {
        let all: Vec<String> = (0..=255u8).map(|b| format!("{target}/{b:02x}")).collect();
        dl.send(&DlMessage::RemoveItems {
            paths: all,
            progress: 0.0,
        })?;
        if let Err(e) = dl.status()? {
            log::info!("host could not clear old content: {e}");
        }
    }
    // Directories, Status.plist (uploading), removals, then the files.
    let mut prefixes: Vec<String> = entries
        .iter()
        .filter(|e| e.upload)
        .map(|e| file_id(&e.domain, &e.file.relative_path)[..2].to_string())
        .collect();
    prefixes.sort();
    prefixes.dedup();
    for p in prefixes {
        dl.send(&DlMessage::CreateDirectory {
            path: format!("{target}/{p}"),
        })?;
        if let Err(e) = dl.status()? {
            return dl.finish(
                error_code::MISSING_FILES,
                &format!("Host could not create a directory: {e}"),
            );
        }
    }
    if let Err(e) = upload_metadata(
        dl,
        &[(
            format!("{target}/Status.plist"),
            status_plist(full, "uploading"),
        )],
        0.0,
    )? {
        return dl.finish(
            error_code::MISSING_FILES,
            &format!("Host could not store Status.plist: {e}"),
        );
    }
    for chunk in removed.chunks(1000) {
        dl.send(&DlMessage::RemoveItems {
            paths: chunk.to_vec(),
            progress: 0.0,
        })?;
        if let Err(e) = dl.status()? {
            log::info!("host could not remove files: {e}");
        }
    }
    if !c.fault_hostile_paths.is_empty() {
        let sent = upload_batch(dl, 0.0, 5, |dl| {
            for p in &c.fault_hostile_paths {
                let mut w = FileStreamWriter::new(&mut dl.conn);
                w.name("/var/mobile/evil")?;
                w.name(p)?;
                w.data(b"evil\n")?;
                w.end_of_file()?;
            }
            Ok(())
        })?;
        if let Err(e) = sent {
            log::info!("host refused hostile paths: {e}");
        }
    }
    let fs_root = device.fs_root();
    let mut done = 0u64;
    let mut buf = vec![0u8; BLOCK];
    let mut i = 0;
    while i < entries.len() {
        // One batch: up to BATCH_FILES files or BATCH_BYTES bytes.
        let mut j = i;
        let (mut n, mut bytes) = (0, 0);
        while j < entries.len() && n < BATCH_FILES && bytes < BATCH_BYTES {
            if entries[j].upload {
                n += 1;
                bytes += entries[j].file.size;
            }
            j += 1;
        }
        if n > 0 {
            let progress = if total == 0 {
                0.0
            } else {
                done as f64 * 100.0 / total as f64
            };
            let sent = upload_batch(dl, progress, bytes, |dl| {
                for e in entries[i..j].iter_mut().filter(|e| e.upload) {
                    let id = file_id(&e.domain, &e.file.relative_path);
                    let device_name = format!("/var/mobile/{}", e.file.relative_path);
                    let file_key: Option<[u8; 32]> = match &keybag {
                        Some(kb) => {
                            let k: [u8; 32] = rand::random();
                            e.file.encryption_key =
                                Some(kb.wrap_key(e.file.protection_class as u32, &k)?);
                            Some(k)
                        }
                        None => None,
                    };
                    let digest = send_file(
                        dl,
                        &device_name,
                        &format!("{target}/{}/{id}", &id[..2]),
                        &e.source(&fs_root),
                        file_key.as_ref(),
                        has_digest(&e.domain),
                        &mut buf,
                    )?;
                    e.file.digest = digest;
                    done += e.file.size;
                }
                Ok(())
            })?;
            if let Err(e) = sent {
                return dl.finish(
                    error_code::MISSING_FILES,
                    &format!("Host failed to store files: {e}"),
                );
            }
        }
        i = j;
    }

    // 5. The index and properties, through Snapshot/.
    // An incremental backup's index is the previous one (the device's own
    // copy of it) with the changes: rows that stay are not rewritten.
    let (db_path, mut w) = match previous {
        Some(prev) => {
            drop(prev.db);
            let w = ManifestWriter::update(&prev.plain)?;
            (prev.plain, w)
        }
        None => {
            let path = work.path().join("new-Manifest.db");
            let w = ManifestWriter::create(&path)?;
            (path, w)
        }
    };
    for (domain, path) in &gone {
        w.delete(domain, path)?;
    }
    for e in entries.iter().filter(|e| e.kept.is_none()) {
        w.insert(&e.domain, &e.file)?;
    }
    w.finish()?;
    let (mut db_key, mut manifest_key) = (None, None);
    if let Some(kb) = &keybag {
        // Manifest.db is encrypted under class 4 with a full PKCS#7 block (fact sheet §5.4).
        let key: [u8; 32] = rand::random();
        manifest_key = Some(kb.wrap_key(4, &key)?);
        db_key = Some(key);
    }
    dl.send(&DlMessage::CreateDirectory {
        path: format!("{target}/Snapshot"),
    })?;
    let _ = dl.status()?;
    let plist = manifest_plist(&device, keybag.as_ref(), manifest_key);
    let db_len = std::fs::metadata(&db_path)?.len();
    // The device keeps the index as sent; encrypted, that is a copy of
    // the ciphertext beside the plain file. Keeping it is best effort: a
    // device without it decodes the host's index next time.
    let keep = last_index_dir(&device);
    let cipher_copy = keep.join("sent.partial");
    let mut copy = match db_key {
        Some(_) => std::fs::create_dir_all(&keep)
            .and_then(|()| File::create(&cipher_copy))
            .ok(),
        None => None,
    };
    let sent = upload_batch(dl, 99.0, db_len + plist.len() as u64, |dl| {
        // The index is the backup's own file: the fault counters do not see it.
        stream(
            dl,
            (
                "/var/mobile/Library/Backup/Manifest.db",
                &format!("{target}/Snapshot/Manifest.db"),
            ),
            &mut File::open(&db_path)?,
            db_key.as_ref(),
            &mut buf,
            &mut |_, _| Ok(()),
            Some(&mut |sent| {
                if copy.as_mut().is_some_and(|f| f.write_all(sent).is_err()) {
                    copy = None;
                }
            }),
        )?;
        send_bytes(dl, &format!("{target}/Snapshot/Manifest.plist"), &plist)
    })?;
    if let Err(e) = sent {
        return dl.finish(
            error_code::MISSING_FILES,
            &format!("Host could not store the manifest: {e}"),
        );
    }
    dl.send(&DlMessage::MoveItems {
        moves: vec![
            (
                format!("{target}/Snapshot/Manifest.db"),
                format!("{target}/Manifest.db"),
            ),
            (
                format!("{target}/Snapshot/Manifest.plist"),
                format!("{target}/Manifest.plist"),
            ),
        ],
        progress: 99.5,
    })?;
    if let Err(e) = dl.status()? {
        return dl.finish(
            error_code::MISSING_FILES,
            &format!("Host could not move the manifest into place: {e}"),
        );
    }
    dl.send(&DlMessage::RemoveItems {
        paths: vec![format!("{target}/Snapshot")],
        progress: 99.9,
    })?;
    let _ = dl.status()?;
    if let Err(e) = upload_metadata(
        dl,
        &[(
            format!("{target}/Status.plist"),
            status_plist(full, "finished"),
        )],
        100.0,
    )? {
        return dl.finish(
            error_code::MISSING_FILES,
            &format!("Host could not store Status.plist: {e}"),
        );
    }
    // Kept as a list; the next backup makes the lookup table while its scan runs.
    let rows = entries
        .into_iter()
        .map(|e| {
            let known = e.kept.unwrap_or_else(|| Known::of(&e.file));
            (e.domain, e.file.relative_path, known)
        })
        .collect();
    // Plain, the kept file is the index itself; encrypted, only a whole copy will do.
    let keepable = db_key.is_none() || copy.is_some();
    drop(copy);
    if keepable {
        let cipher = db_key.is_some().then_some(&*cipher_copy);
        match keep_index(&keep, &db_path, cipher) {
            Ok((sent, plain)) => {
                *device.last_index.lock().expect("last index lock") =
                    Some(LastIndex { sent, plain, rows });
            }
            Err(e) => log::warn!("could not keep the index just sent: {e}"),
        }
    }
    dl.finish(0, "")
}

/// Turn backup encryption on (NewPassword), off (OldPassword) or change it
/// (both), as `idevicebackup2 encryption`/`changepw` and Finder ask.
fn change_password(dl: &mut Dl, req: &Mb2Request) -> Result<()> {
    let device = dl.device.clone();
    let c = device.cfg();
    let old = req.extra.str_of("OldPassword").map(str::to_string);
    let new = req.extra.str_of("NewPassword").map(str::to_string);
    match (&c.backup_password, &old) {
        (Some(_), None) => {
            return dl.finish(
                error_code::INVALID_PASSWORD,
                "The current backup password is required",
            )
        }
        (Some(cur), Some(o)) if cur != o => {
            return dl.finish(error_code::INVALID_PASSWORD, "Invalid password")
        }
        (None, Some(_)) => {
            return dl.finish(
                error_code::INVALID_PASSWORD,
                "Backup encryption is not enabled",
            )
        }
        _ => {}
    }
    if new.as_deref() == Some("") {
        return dl.finish(
            error_code::INVALID_PASSWORD,
            "The new backup password is empty",
        );
    }
    let keybag = match &new {
        Some(pw) => Some(Keybag::new_backup(
            pw,
            c.backup_kdf_iterations,
            &mut rand::rngs::OsRng,
        )?),
        None => None,
    };
    crate::keys::save(&device, keybag.as_ref())?;
    device.update_config(|c| c.backup_password = new.clone())?;
    dl.finish(0, "")
}

/// A scratch folder inside the device's state, removed when dropped.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub fn tempdir_in(state: &Path) -> Result<TempDir> {
    let p = state.join("tmp").join(crate::usbmuxd::random_uuid());
    std::fs::create_dir_all(&p)?;
    Ok(TempDir(p))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A plain file leaves the same bytes on the wire, and is counted in the
    /// same blocks by the fault counters, whether the kernel sends its
    /// blocks (nobody watches them) or they pass through the buffer
    /// (something watches them, as the digest does).
    #[cfg(unix)]
    #[test]
    fn a_plain_file_goes_out_the_same_by_either_path() {
        let dir = tempfile::tempdir().unwrap();
        crate::device::DeviceConfig::new("U1", "Test")
            .save(dir.path())
            .unwrap();
        let device = Device::open(dir.path(), 1).unwrap();
        let path = dir.path().join("file");
        for len in [0, 5, BLOCK, 2 * BLOCK + 77] {
            std::fs::write(&path, (0..len).map(|i| (i % 253) as u8).collect::<Vec<_>>()).unwrap();
            let wire = |watched: bool| -> (Vec<u8>, Vec<u64>, usize) {
                let (a, mut b) = std::os::unix::net::UnixStream::pair().unwrap();
                let reader = std::thread::spawn(move || {
                    let mut got = Vec::new();
                    b.read_to_end(&mut got).unwrap();
                    got
                });
                let mut dl = Dl {
                    conn: crate::conn::Buffered::new(Box::new(a)),
                    device: device.clone(),
                    bytes_sent: 0,
                    files_sent: 0,
                };
                let mut buf = vec![0u8; BLOCK];
                let (mut blocks, mut seen) = (Vec::new(), 0);
                let mut watch = |b: &[u8]| seen += b.len();
                stream(
                    &mut dl,
                    ("dev", "backup"),
                    &mut File::open(&path).unwrap(),
                    None,
                    &mut buf,
                    &mut |_, n| {
                        blocks.push(n);
                        Ok(())
                    },
                    watched.then_some(&mut watch as Sink<'_>),
                )
                .unwrap();
                dl.conn.flush().unwrap();
                drop(dl);
                (reader.join().unwrap(), blocks, seen)
            };
            let (direct, direct_blocks, _) = wire(false);
            let (through, through_blocks, seen) = wire(true);
            assert!(direct == through, "{len} bytes: the wire differs");
            assert_eq!(direct_blocks, through_blocks);
            assert_eq!(seen, len);
            // Two names, one header per block, the bytes, the end marker.
            let headers = len.div_ceil(BLOCK) * 5;
            assert_eq!(direct.len(), (4 + 3) + (4 + 6) + headers + len + 5);
        }
    }

    /// Feed `pieces` to a [`Compare`] of a file holding `own`: whether every
    /// piece and the end matched, and what a divergence would have stored.
    fn compare(own: &[u8], pieces: &[&[u8]]) -> (bool, Vec<u8>) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("own");
        std::fs::write(&path, own).unwrap();
        let mut c = Compare::open(&path).unwrap();
        let mut stored: Option<Vec<u8>> = None;
        for p in pieces {
            match stored.as_mut() {
                Some(s) => s.extend_from_slice(p),
                None if c.same(p).unwrap() => {}
                None => {
                    let tmp = dir.path().join("tmp");
                    drop(c.diverge(&tmp).unwrap());
                    let mut s = std::fs::read(&tmp).unwrap();
                    s.extend_from_slice(p);
                    stored = Some(s);
                }
            }
        }
        match stored {
            Some(s) => (false, s),
            None if c.at_end().unwrap() => (true, Vec::new()),
            None => {
                let tmp = dir.path().join("tmp");
                drop(c.diverge(&tmp).unwrap());
                (false, std::fs::read(&tmp).unwrap())
            }
        }
    }

    #[test]
    fn the_devices_own_index_is_recognised_however_it_arrives() {
        let own: Vec<u8> = (0..5000u32).map(|i| (i * 7 % 251) as u8).collect();
        assert_eq!(compare(&own, &[&own]), (true, Vec::new()));
        let (a, b) = own.split_at(1234);
        assert_eq!(compare(&own, &[a, &[], b]), (true, Vec::new()));
        assert_eq!(compare(&[], &[]), (true, Vec::new()));
    }

    #[test]
    fn any_other_index_is_stored_whole() {
        let own: Vec<u8> = (0..5000u32).map(|i| (i * 7 % 251) as u8).collect();
        let (a, b) = own.split_at(2000);
        // One byte changed in the second piece.
        let mut changed = b.to_vec();
        changed[100] ^= 1;
        let theirs = [a, &changed[..]].concat();
        assert_eq!(compare(&own, &[a, &changed]), (false, theirs));
        // Shorter: a prefix of the device's copy.
        assert_eq!(compare(&own, &[a]), (false, a.to_vec()));
        // Longer: the device's copy and more.
        let longer = [&own[..], b"more"].concat();
        assert_eq!(compare(&own, &[&longer]), (false, longer.clone()));
        assert_eq!(compare(&own, &[&own, b"more"]), (false, longer));
        // Empty, where the device has an index.
        assert_eq!(compare(&own, &[]), (false, Vec::new()));
    }

    fn entry(domain: &str, path: &str) -> Entry {
        Entry {
            domain: domain.into(),
            file: MbFile {
                relative_path: path.into(),
                ..Default::default()
            },
            upload: true,
            kept: None,
        }
    }

    /// Pair `rows` with `entries` (both as domain and path): the row each
    /// entry got, by position, and the rows left over.
    fn pair(rows: &[(&str, &str)], entries: &[(&str, &str)]) -> (Vec<Option<u64>>, Vec<usize>) {
        let rows: KnownRows = rows
            .iter()
            .enumerate()
            .map(|(i, (d, p))| {
                let f = MbFile {
                    size: i as u64,
                    ..Default::default()
                };
                (d.to_string(), p.to_string(), Known::of(&f))
            })
            .collect();
        let mut entries: Vec<Entry> = entries.iter().map(|(d, p)| entry(d, p)).collect();
        let taken = pair_rows(&rows, &mut entries, |e, k| {
            e.kept = Some(k);
            Ok(())
        })
        .unwrap();
        let got = entries.iter().map(|e| e.kept.map(|k| k.size)).collect();
        let left = (0..taken.len()).filter(|&i| !taken[i]).collect();
        (got, left)
    }

    #[test]
    fn rows_pair_with_entries_in_any_order() {
        let rows = [("A", ""), ("A", "a"), ("A", "b"), ("B", ""), ("B", "c")];
        // Unchanged: the same order.
        assert_eq!(
            pair(&rows, &rows),
            (vec![Some(0), Some(1), Some(2), Some(3), Some(4)], vec![])
        );
        // An entry added and a row gone.
        assert_eq!(
            pair(
                &rows,
                &[("A", ""), ("A", "a"), ("A", "a2"), ("B", ""), ("B", "c")]
            ),
            (vec![Some(0), Some(1), None, Some(3), Some(4)], vec![2])
        );
        // Another order entirely, and the same path in another domain.
        assert_eq!(
            pair(
                &rows,
                &[("B", "c"), ("A", "b"), ("B", "a"), ("A", ""), ("A", "a")]
            ),
            (vec![Some(4), Some(2), None, Some(0), Some(1)], vec![3])
        );
        // No rows; no entries.
        assert_eq!(pair(&[], &[("A", "")]), (vec![None], vec![]));
        assert_eq!(pair(&rows, &[]), (vec![], vec![0, 1, 2, 3, 4]));
    }
}
