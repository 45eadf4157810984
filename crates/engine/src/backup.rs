//! The host side of a mobilebackup2 backup: answer each DeviceLink request
//! the device sends, writing only inside the staging folder, and commit
//! when the device reports success.

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ibackup_proto::devicelink::{DlMessage, BULK_OPERATION_ERROR};
use ibackup_proto::frame;
use ibackup_proto::mb2::{
    self, error_code, FileStreamReader, FileStreamWriter, Mb2Request, StreamItem,
};
use ibackup_proto::plistx::{dict, DictExt};
use ibackup_proto::usbmux::DeviceRecord;
use ibackup_transport::{Stream, Transport};
use plist::{Dictionary, Value};

use crate::device;
use crate::error::{EngineError, Result};
use crate::files::{part_path, replace_file};
use crate::staging::{Area, BackupDir};
use ibackup_store::categories::Selection;
use ibackup_store::mbfile::FLAG_FILE;
use ibackup_store::reader::Backup;

/// What a caller hears while a backup runs.
pub trait Events {
    /// Overall percent as the device reports it, bytes and files moved so
    /// far (received in a backup, sent in a restore).
    fn progress(&mut self, _percent: f64, _bytes: u64, _files: u64) {}
    /// A step worth a line in a log.
    fn step(&mut self, _what: &str) {}
    /// The device asks the user to tap Trust.
    fn waiting_for_trust(&mut self) {}
}

pub struct NoEvents;
impl Events for NoEvents {}

#[derive(Debug, Clone)]
pub struct Options {
    /// Ask the device for a full backup even if an earlier one exists.
    pub full: bool,
    /// How long to wait for the user to tap Trust.
    pub trust_wait: Duration,
    /// Keep only these files in the stored backup (everything when empty).
    pub selection: Selection,
    /// The backup password, needed to filter an encrypted backup.
    pub password: Option<String>,
    /// Before continuing the last backup, read all of it against its
    /// digests (not only that every file is there and of its size).
    pub check_content: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            full: false,
            trust_wait: Duration::from_secs(120),
            selection: Selection::default(),
            password: None,
            check_content: false,
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Outcome {
    pub udid: String,
    pub full: bool,
    pub files_received: u64,
    pub bytes_received: u64,
    /// Paths the device named that were refused (outside the backup folder).
    pub refused_paths: u64,
    pub path: PathBuf,
    /// The snapshot this backup became.
    pub snapshot: String,
    /// Time spent committing it (staged folder checked, renamed into place).
    pub commit_seconds: f64,
    /// Why the last backup could not be continued, when it could not: the
    /// backup was then made full, so that this one is whole.
    pub repaired: Option<String>,
    /// Files in the stored backup, and their bytes (after `--only`, what
    /// was kept).
    pub kept_files: u64,
    pub kept_bytes: u64,
}

/// Device error numbers for host-side failures (libimobiledevice `errno_to_device_error`).
fn device_errno(e: &std::io::Error) -> i64 {
    match e.kind() {
        std::io::ErrorKind::NotFound => -6,
        std::io::ErrorKind::AlreadyExists => -7,
        std::io::ErrorKind::IsADirectory => -8,
        std::io::ErrorKind::StorageFull => -15,
        _ => -1,
    }
}

const BLOCK: usize = 1 << 20;
/// How long a device that says another backup or restore is in progress
/// is given to finish it before we give up (see [`Host::converse_when_free`]).
pub(crate) const BUSY_WAIT: Duration = Duration::from_secs(20);
/// Host → device frames stay small: BackupAgent2 buffers a whole frame
/// (pymobiledevice3 `device_link.py`, matching Apple's 32 KiB default).
const SEND_BLOCK: usize = 32 * 1024;

pub(crate) struct Host<'a> {
    s: Box<dyn Stream>,
    dir: Area<'a>,
    pub(crate) events: &'a mut dyn Events,
    percent: f64,
    bytes: u64,
    files: u64,
    refused: u64,
    buf: Vec<u8>,
}

impl<'a> Host<'a> {
    /// Start mobilebackup2 and agree on a protocol version.
    pub(crate) fn open(
        session: &mut device::Session<'_>,
        dir: Area<'a>,
        events: &'a mut dyn Events,
    ) -> Result<Host<'a>> {
        Ok(Host {
            s: Self::connect(session)?,
            dir,
            events,
            percent: 0.0,
            bytes: 0,
            files: 0,
            refused: 0,
            buf: vec![0u8; BLOCK],
        })
    }

    /// A new mobilebackup2 connection, past the version exchange.
    fn connect(session: &mut device::Session<'_>) -> Result<Box<dyn Stream>> {
        let mut s: Box<dyn Stream> = Box::new(ibackup_transport::BufStream::new(
            session.service(mb2::SERVICE_NAME)?,
        ));
        if let Err((code, description)) = mb2::host_hello(&mut s)? {
            return Err(EngineError::DeviceRefused { code, description });
        }
        Ok(s)
    }

    /// [`Host::converse`], but when the device answers at once that
    /// another backup or restore is in progress, ask again on a new
    /// connection every second for up to [`BUSY_WAIT`]: a device still
    /// winding down a session whose cable was just pulled frees itself
    /// in moments. Busy for longer is [`EngineError::DeviceBusy`].
    pub(crate) fn converse_when_free(
        &mut self,
        session: &mut device::Session<'_>,
        req: &Mb2Request,
    ) -> Result<Dictionary> {
        let start = std::time::Instant::now();
        let mut told = false;
        loop {
            let last = self.converse(req)?;
            let busy = last.u64_of("ErrorCode") == Some(error_code::BUSY)
                && self.files == 0
                && self.bytes == 0;
            if !busy {
                return Ok(last);
            }
            if start.elapsed() >= BUSY_WAIT {
                self.disconnect();
                return Err(EngineError::DeviceBusy {
                    waited: BUSY_WAIT.as_secs(),
                });
            }
            if !told {
                self.events.step(&format!(
                    "the device is busy with another backup or restore; waiting up to {} s for it",
                    BUSY_WAIT.as_secs()
                ));
                told = true;
            }
            self.disconnect();
            if session.transport().cancel().pause(Duration::from_secs(1)) {
                return Err(EngineError::DeviceBusy {
                    waited: start.elapsed().as_secs(),
                });
            }
            self.s = Self::connect(session)?;
        }
    }

    /// Send a request and answer the device until it reports its result
    /// (the final `ProcessMessage`, returned).
    pub(crate) fn converse(&mut self, req: &Mb2Request) -> Result<Dictionary> {
        self.send(&DlMessage::ProcessMessage(req.encode()))?;
        let t0 = std::time::Instant::now();
        loop {
            let m = self.recv()?;
            log::debug!("{:?} {}", t0.elapsed(), m.name());
            if let Some(d) = self.handle(m)? {
                return Ok(d);
            }
        }
    }

    /// Say goodbye; the device may already be gone.
    pub(crate) fn disconnect(&mut self) {
        let _ = self.send(&DlMessage::Disconnect(String::new()));
    }

    fn send(&mut self, m: &DlMessage) -> Result<()> {
        frame::write_binary(&mut self.s, &m.encode())?;
        Ok(())
    }

    fn recv(&mut self) -> Result<DlMessage> {
        Ok(DlMessage::decode(frame::read_plist(&mut self.s)?)?)
    }

    fn status(&mut self, code: i64, description: Option<String>, payload: Value) -> Result<()> {
        self.send(&DlMessage::StatusResponse {
            code,
            description,
            payload,
        })
    }

    fn ok(&mut self) -> Result<()> {
        self.status(0, None, Value::Dictionary(Dictionary::new()))
    }

    fn progress(&mut self) {
        self.events.progress(self.percent, self.bytes, self.files);
    }

    /// Device → host files. Each lands in a new file renamed into place.
    fn upload_files(&mut self, batch_bytes: u64) -> Result<()> {
        let start_bytes = self.bytes;
        let mut error: Option<(i64, String)> = None;
        loop {
            let mut r = FileStreamReader::new(&mut self.s);
            let _device_name = match r.name()? {
                StreamItem::End => break,
                StreamItem::Name(n) => n,
            };
            let backup_name = match r.name()? {
                StreamItem::End => {
                    return Err(EngineError::Protocol(
                        "file stream ended between two names".into(),
                    ))
                }
                StreamItem::Name(n) => n,
            };
            let target = match self.dir.resolve_write(&backup_name) {
                Ok(p) => {
                    self.dir.ready_for(&backup_name)?;
                    Some(p)
                }
                Err(e) => {
                    log::warn!("{e}");
                    self.refused += 1;
                    error = Some((-1, format!("refused unsafe path {backup_name:?}")));
                    None
                }
            };
            let part = target.as_deref().map(part_path);
            let mut written = 0u64;
            let mut out: Option<File> = None;
            let mut write_err: Option<std::io::Error> = None;
            let dir = &self.dir;
            let open = |part: &Path| -> std::io::Result<File> {
                if let Some(parent) = part.parent() {
                    dir.make_folder(parent).map_err(as_io)?;
                }
                let _ = std::fs::remove_file(part);
                File::options().write(true).create_new(true).open(part)
            };
            let mut following = false;
            if let Some(p) = &part {
                match open(p) {
                    Ok(f) => {
                        out = Some(f);
                        following = self.dir.receiving(&backup_name, p);
                    }
                    Err(e) => write_err = Some(e),
                }
            }
            let finished = loop {
                let h = FileStreamReader::new(&mut self.s).block_header()?;
                match h.code {
                    mb2::CODE_FILE_DATA => {
                        let len = u64::from(h.len);
                        let file = out.as_mut().filter(|_| write_err.is_none());
                        let writing = file.is_some();
                        match self
                            .s
                            .receive_into(file, len, &mut self.buf)
                            .map_err(ibackup_proto::error::ProtoError::Io)?
                        {
                            None if writing => {
                                written += len;
                                if following {
                                    self.dir.receiving_more(len);
                                }
                            }
                            None => {}
                            Some(e) => write_err = Some(e),
                        }
                        self.bytes += len;
                        self.progress();
                    }
                    mb2::CODE_SUCCESS => break true,
                    _ => {
                        let text = FileStreamReader::new(&mut self.s).text(h.len)?;
                        log::warn!("device could not send {backup_name}: {text}");
                        break false;
                    }
                }
            };
            drop(out);
            // The digest of what landed, taken as it landed; a file that did
            // not land whole is forgotten.
            let whole = finished && write_err.is_none() && target.is_some();
            if following {
                self.dir.received_whole(whole);
            }
            match (&part, &target, write_err) {
                (Some(p), Some(t), None) if finished => {
                    let old = std::fs::symlink_metadata(t).ok();
                    std::fs::rename(p, t)?;
                    self.dir.wrote(&backup_name, old.as_ref(), written);
                    self.files += 1;
                }
                (Some(p), _, Some(e)) => {
                    let _ = std::fs::remove_file(p);
                    if e.kind() == std::io::ErrorKind::StorageFull {
                        self.status(
                            device_errno(&e),
                            Some(e.to_string()),
                            Value::Dictionary(Dictionary::new()),
                        )?;
                        // What the batch still holds, or what the rest of
                        // the backup holds by the device's progress, the
                        // larger, with a tenth more: a figure that frees
                        // enough, not the few bytes the last write lacked.
                        let batch = batch_bytes.saturating_sub(self.bytes - start_bytes);
                        let rest = if self.percent >= 1.0 && self.percent < 100.0 {
                            (self.bytes as f64 * (100.0 - self.percent) / self.percent) as u64
                        } else {
                            0
                        };
                        let needed = batch
                            .max(rest)
                            .saturating_add(batch.max(rest) / 10)
                            .max(1 << 20);
                        return Err(EngineError::DiskFull {
                            needed,
                            first: false,
                        });
                    }
                    // A disk that went away fails every file after, and a
                    // file too large for it (FAT32: 4 GiB) every backup
                    // after: stop, and say which.
                    let stop = match self.dir.still_there() {
                        Err(gone) => Some(gone),
                        Ok(()) if e.kind() == std::io::ErrorKind::FileTooLarge => {
                            Some(EngineError::FileTooLarge { written })
                        }
                        Ok(()) => None,
                    };
                    if let Some(stop) = stop {
                        self.status(
                            device_errno(&e),
                            Some(e.to_string()),
                            Value::Dictionary(Dictionary::new()),
                        )?;
                        return Err(stop);
                    }
                    error = Some((device_errno(&e), e.to_string()));
                }
                (Some(p), _, None) => {
                    let _ = std::fs::remove_file(p);
                }
                _ => {}
            }
        }
        match error {
            None => self.ok(),
            Some((code, text)) => {
                self.status(code, Some(text), Value::Dictionary(Dictionary::new()))
            }
        }
    }

    /// Host → device files (the previous backup's plists and index).
    fn download_files(&mut self, paths: &[String]) -> Result<()> {
        // A restore's progress counts what the device was sent; a backup's
        // counts only what it received.
        let restoring = matches!(self.dir, Area::ReadOnly { .. });
        let mut errors = Dictionary::new();
        for p in paths {
            FileStreamWriter::new(&mut self.s).name(p)?;
            let opened = self.dir.open(p);
            match opened {
                Ok(mut f) => {
                    let mut chunk = vec![0u8; SEND_BLOCK];
                    loop {
                        let n = f.read(&mut chunk)?;
                        if n == 0 {
                            break;
                        }
                        FileStreamWriter::new(&mut self.s).data(&chunk[..n])?;
                        if restoring {
                            self.bytes += n as u64;
                        }
                    }
                    FileStreamWriter::new(&mut self.s).end_of_file()?;
                    if restoring {
                        self.files += 1;
                        self.progress();
                    }
                }
                Err(e) => {
                    let (code, text) = match &e {
                        EngineError::Io(io) => (device_errno(io), io.to_string()),
                        other => (-1, other.to_string()),
                    };
                    FileStreamWriter::new(&mut self.s).error(mb2::CODE_ERROR_LOCAL, &text)?;
                    errors.insert(
                        p.clone(),
                        Value::Dictionary(dict([
                            ("DLFileErrorString", Value::from(text)),
                            ("DLFileErrorCode", Value::from(code as u64)),
                        ])),
                    );
                }
            }
        }
        FileStreamWriter::new(&mut self.s).terminate()?;
        if errors.is_empty() {
            self.ok()
        } else {
            self.status(
                BULK_OPERATION_ERROR,
                Some("Multi status".into()),
                Value::Dictionary(errors),
            )
        }
    }

    /// Do `f` to each device path's place in the backup being written
    /// (`f` gets the area, the device path and the local path).
    fn each_path(
        &mut self,
        paths: &[String],
        f: impl Fn(&Area, &str, &Path) -> std::io::Result<()>,
    ) -> Result<()> {
        let mut failure: Option<(i64, String)> = None;
        for p in paths {
            match self.dir.resolve_write(p) {
                Ok(local) => {
                    if let Err(e) = f(&self.dir, p, &local) {
                        if e.kind() != std::io::ErrorKind::NotFound {
                            failure = Some((device_errno(&e), e.to_string()));
                        }
                    }
                }
                Err(e) => {
                    log::warn!("{e}");
                    self.refused += 1;
                    failure = Some((-1, e.to_string()));
                }
            }
        }
        match failure {
            None => self.ok(),
            Some((c, t)) => {
                self.status(c, Some(t), Value::Dictionary(Dictionary::new()))?;
                // A disk that went away fails everything after: stop.
                self.dir.still_there()
            }
        }
    }

    fn handle(&mut self, m: DlMessage) -> Result<Option<Dictionary>> {
        if let Some(p) = m.progress() {
            if p > 0.0 {
                self.percent = p;
                self.progress();
            }
        }
        // A backup's staging folder may still be getting its links: what
        // touches the folders being linked waits for them (files the device
        // uploads, in upload_files, one by one).
        let touched: Option<Vec<&String>> = match &m {
            DlMessage::GetFreeDiskSpace
            | DlMessage::PurgeDiskSpace { .. }
            | DlMessage::UploadFiles { .. }
            | DlMessage::ProcessMessage(_)
            | DlMessage::Disconnect(_) => Some(Vec::new()),
            DlMessage::DownloadFiles { paths, .. } | DlMessage::RemoveItems { paths, .. } => {
                Some(paths.iter().collect())
            }
            DlMessage::CreateDirectory { path } | DlMessage::ContentsOfDirectory { path } => {
                Some(vec![path])
            }
            DlMessage::MoveItems { moves, .. } => {
                Some(moves.iter().flat_map(|(a, b)| [a, b]).collect())
            }
            DlMessage::CopyItem { from, to } => Some(vec![from, to]),
            _ => None,
        };
        match touched {
            Some(paths) => {
                for p in paths {
                    self.dir.ready_for(p)?;
                }
            }
            None => self.dir.ready_all()?,
        }
        match m {
            DlMessage::UploadFiles { total_bytes, .. } => self.upload_files(total_bytes)?,
            DlMessage::DownloadFiles { paths, .. } => self.download_files(&paths)?,
            DlMessage::GetFreeDiskSpace => {
                let free = fs4::available_space(self.dir.disk())?;
                self.status(0, None, Value::from(free))?;
            }
            DlMessage::PurgeDiskSpace { .. } => self.status(
                -1,
                Some("DLPurgeDiskSpace failed to purge".into()),
                Value::Dictionary(Dictionary::new()),
            )?,
            DlMessage::CreateDirectory { path } => self.each_path(&[path], |area, name, p| {
                area.make_folder(p).map_err(as_io)?;
                area.created_folder(name);
                Ok(())
            })?,
            DlMessage::RemoveItems { paths, .. } => self.each_path(&paths, |area, name, p| {
                let old = std::fs::symlink_metadata(p)?;
                let r = if old.is_dir() {
                    std::fs::remove_dir_all(p)
                } else {
                    std::fs::remove_file(p)
                };
                match &r {
                    Ok(()) => area.removed(name, &old),
                    Err(_) => area.changed(name),
                }
                r
            })?,
            DlMessage::MoveItems { moves, .. } => {
                let mut failure = None;
                for (from, to) in &moves {
                    match (self.dir.resolve_write(from), self.dir.resolve_write(to)) {
                        (Ok(a), Ok(b)) => {
                            self.dir.changed(from);
                            self.dir.changed(to);
                            if b.is_dir() {
                                let _ = std::fs::remove_dir_all(&b);
                            }
                            if let Some(parent) = b.parent() {
                                self.dir.make_folder(parent)?;
                            }
                            match std::fs::rename(&a, &b) {
                                Ok(()) => self.dir.moved(from, to, &b),
                                Err(e) => failure = Some((device_errno(&e), e.to_string())),
                            }
                        }
                        (Err(e), _) | (_, Err(e)) => {
                            log::warn!("{e}");
                            self.refused += 1;
                            failure = Some((-1, e.to_string()));
                        }
                    }
                }
                match failure {
                    None => self.ok()?,
                    Some((c, t)) => {
                        self.status(c, Some(t), Value::Dictionary(Dictionary::new()))?
                    }
                }
            }
            DlMessage::CopyItem { from, to } => {
                let r = match (self.dir.resolve(&from), self.dir.resolve_write(&to)) {
                    (Ok(a), Ok(b)) => {
                        self.dir.changed(&to);
                        // b may be a link to a committed file: unlink, then copy to a new inode.
                        let _ = std::fs::remove_file(&b);
                        std::fs::copy(a, &b)
                            .map(|_| self.dir.received(&to, &b))
                            .map_err(|e| (device_errno(&e), e.to_string()))
                    }
                    (Err(e), _) | (_, Err(e)) => {
                        self.refused += 1;
                        Err((-1, e.to_string()))
                    }
                };
                match r {
                    Ok(()) => self.ok()?,
                    Err((c, t)) => self.status(c, Some(t), Value::Dictionary(Dictionary::new()))?,
                }
            }
            DlMessage::ContentsOfDirectory { path } => {
                let mut listing = Dictionary::new();
                if let Ok(local) = self.dir.resolve(&path) {
                    for e in std::fs::read_dir(local).into_iter().flatten().flatten() {
                        let Ok(md) = e.metadata() else { continue };
                        let kind = if md.is_dir() {
                            "DLFileTypeDirectory"
                        } else if md.is_file() {
                            "DLFileTypeRegular"
                        } else {
                            "DLFileTypeUnknown"
                        };
                        let mut d = dict([
                            ("DLFileType", Value::from(kind)),
                            ("DLFileSize", Value::from(md.len())),
                        ]);
                        if let Ok(t) = md.modified() {
                            d.insert("DLFileModificationDate".into(), Value::Date(t.into()));
                        }
                        listing.insert(
                            e.file_name().to_string_lossy().into_owned(),
                            Value::Dictionary(d),
                        );
                    }
                }
                self.status(0, None, Value::Dictionary(listing))?;
            }
            DlMessage::ProcessMessage(d) => return Ok(Some(d)),
            DlMessage::Disconnect(reason) => {
                return Err(EngineError::ConnectionLost(format!(
                    "the device ended the session: {reason}"
                )))
            }
            other => log::warn!("ignoring DeviceLink message {}", other.name()),
        }
        Ok(None)
    }
}

fn string_of(values: &Dictionary, key: &str) -> Option<Value> {
    values.get(key).filter(|v| v.as_string().is_some()).cloned()
}

/// The host-written Info.plist, with libimobiledevice's key set (fact sheet §2.1).
pub fn info_plist(
    values: &Dictionary,
    udid: &str,
    itunes: Dictionary,
    itunes_files: Dictionary,
    apps: (Vec<Value>, Dictionary),
) -> Dictionary {
    let mut d = Dictionary::new();
    d.insert("Applications".into(), Value::Dictionary(apps.1));
    let name = string_of(values, "DeviceName").unwrap_or_else(|| Value::from("iPhone"));
    d.insert("Device Name".into(), name.clone());
    d.insert("Display Name".into(), name);
    let guid: [u8; 16] = rand::random();
    d.insert(
        "GUID".into(),
        Value::from(guid.iter().map(|b| format!("{b:02X}")).collect::<String>()),
    );
    d.insert("Installed Applications".into(), Value::Array(apps.0));
    // Whole seconds: XML readers (Python's plistlib) reject fractional dates.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let now = std::time::UNIX_EPOCH + Duration::from_secs(now);
    d.insert("Last Backup Date".into(), Value::Date(now.into()));
    for (ours, theirs) in [
        ("Build Version", "BuildVersion"),
        ("ICCID", "IntegratedCircuitCardIdentity"),
        ("IMEI", "InternationalMobileEquipmentIdentity"),
        ("MEID", "MobileEquipmentIdentifier"),
        ("Phone Number", "PhoneNumber"),
        ("Product Type", "ProductType"),
        ("Product Version", "ProductVersion"),
        ("Serial Number", "SerialNumber"),
    ] {
        if let Some(v) = string_of(values, theirs) {
            d.insert(ours.into(), v);
        }
    }
    d.insert("Target Identifier".into(), Value::from(udid));
    d.insert("Target Type".into(), Value::from("Device"));
    d.insert("Unique Identifier".into(), Value::from(udid.to_uppercase()));
    d.insert("iTunes Files".into(), Value::Dictionary(itunes_files));
    d.insert("iTunes Settings".into(), Value::Dictionary(itunes));
    d.insert("iTunes Version".into(), Value::from("12.5.0"));
    d
}

/// Back up `device` into `root/<UDID>/`.
pub fn run(
    mux: &dyn Transport,
    device: &DeviceRecord,
    root: &Path,
    opts: &Options,
    events: &mut dyn Events,
) -> Result<Outcome> {
    let dir = BackupDir::open(root, &device.udid)?;
    events.step("connecting to the device");
    let mut session = device::open(mux, device, opts.trust_wait, &mut || {
        events.waiting_for_trust()
    })?;
    let values = session.values()?;
    let itunes = session.domain("com.apple.iTunes")?;
    if !opts.selection.is_all() && opts.password.is_none() && device::will_encrypt(&mut session)? {
        // Filtering rewrites the encrypted index, which needs the password.
        return Err(EngineError::PasswordRequired);
    }
    let has_previous = dir.committed().join("Manifest.db").is_file();
    // `--only` needs the password only at the end, to rewrite the index:
    // a wrong one is found now, on the last backup, not after the whole
    // phone was received. (`--full` skips this, for a password changed
    // since the last backup.)
    if let (false, false, Some(pw), true) = (
        opts.selection.is_all(),
        opts.full,
        &opts.password,
        has_previous,
    ) {
        match ibackup_store::reader::check_password(&dir.committed(), pw) {
            Err(ibackup_store::StoreError::WrongPassword) => {
                return Err(EngineError::PasswordNotForLast {
                    folder: dir.committed().display().to_string(),
                })
            }
            Err(e) => log::info!("the password was not tried on the last backup: {e}"),
            Ok(_) => {}
        }
    }
    // The device continues from the index it is shown; a filtered index
    // would make it skip what was dropped, so it gets a full backup.
    let was_filtered = filtered_marker(root, &device.udid).exists();
    let mut full = opts.full || !has_previous || was_filtered;
    // The device sends only what changed on the phone: a file missing or
    // damaged in the last backup would stay so for ever. Continue only a
    // whole backup; else make a full one, and say why.
    let mut repaired = None;
    if !full {
        events.step(if opts.check_content {
            "checking the last backup (every file against its digest)"
        } else {
            "checking the last backup (every file there, of its size)"
        });
        let t0 = std::time::Instant::now();
        let damage = previous_damage(&dir.committed(), opts.check_content);
        log::info!("last backup checked in {:?}", t0.elapsed());
        if let Some(why) = damage {
            events.step(&format!(
                "the last backup is not whole ({why}): making a full backup, so that this one is"
            ));
            full = true;
            repaired = Some(why);
        }
    }
    // A full backup re-sends the whole phone: about what the last one
    // took. Said before the transfer when the disk looks short (only said:
    // the phone may hold less now, and it asks for the space itself).
    if full && has_previous {
        let last = crate::snapshots::newest_info(root, &device.udid).map(|i| i.bytes);
        let free = fs4::available_space(root).ok();
        if let (Some(last), Some(free)) = (last, free) {
            if free < last {
                events.step(&format!(
                    "the backup disk has {} MB free and the last backup of this phone took {} MB: a full backup may not fit (`ibackup prune` frees old snapshots)",
                    free / 1_000_000,
                    last / 1_000_000
                ));
            }
        }
    }
    let t0 = std::time::Instant::now();
    if !dir.links_files() {
        events.step(
            "this disk has no hard links (FAT or exFAT?): continuing a backup copies the last one, \
             and every snapshot takes its full size; on a disk formatted ext4, APFS or NTFS \
             snapshots share unchanged files",
        );
    }
    dir.prepare(!full)?;
    let apps = crate::sync::user_apps(&mut session).unwrap_or_else(|e| {
        log::warn!("could not list the apps for Info.plist: {e}");
        (Vec::new(), Dictionary::new())
    });
    events.step("taking the sync lock");
    let mut lock = match crate::sync::SyncLock::acquire(&mut session) {
        Ok(l) => l,
        Err(e) => {
            dir.abandon();
            return Err(e);
        }
    };
    let itunes_files = lock.itunes_files();
    log::info!("staging prepared in {:?}", t0.elapsed());
    let result = (|| -> Result<Outcome> {
        let mut info = info_plist(&values, &device.udid, itunes, itunes_files, apps);
        if !opts.selection.is_all() {
            // The folder itself says it is part of a device, wherever it is
            // copied: a restore of it then removes nothing it lacks.
            info.insert(
                ibackup_store::categories::INFO_ONLY_KEY.into(),
                Value::Array(
                    opts.selection
                        .names()
                        .into_iter()
                        .map(Value::from)
                        .collect(),
                ),
            );
        }
        // Staged files may be hard links to the committed backup: write a
        // new file and rename it over, never into the existing one.
        let mut bytes = Vec::new();
        Value::Dictionary(info)
            .to_writer_xml(&mut bytes)
            .map_err(|e| EngineError::Io(std::io::Error::other(e.to_string())))?;
        replace_file(&dir.staging().join("Info.plist"), &bytes)?;

        events.step("starting the backup service");
        let mut host = Host::open(&mut session, Area::Staging(&dir), events)?;
        host.events.step(if full {
            "receiving a full backup"
        } else {
            "receiving an incremental backup"
        });
        let last =
            host.converse_when_free(&mut session, &Mb2Request::backup(&device.udid, full))?;
        let code = last.u64_of("ErrorCode").unwrap_or(0);
        if code != error_code::SUCCESS {
            let description = last.str_of("ErrorDescription").unwrap_or("").to_string();
            if code == error_code::INSUFFICIENT_DISK_SPACE {
                let free = fs4::available_space(dir.staging()).unwrap_or(0);
                return Err(EngineError::DiskFull {
                    needed: parse_needed(&description)
                        .map(|n| n.saturating_sub(free))
                        .unwrap_or(0),
                    first: false,
                });
            }
            return Err(EngineError::DeviceRefused { code, description });
        }
        host.disconnect();
        Ok(Outcome {
            udid: device.udid.clone(),
            full,
            files_received: host.files,
            bytes_received: host.bytes,
            refused_paths: host.refused,
            path: dir.committed(),
            snapshot: String::new(),
            commit_seconds: 0.0,
            repaired: repaired.clone(),
            kept_files: 0,
            kept_bytes: 0,
        })
    })();
    // Best effort: after a lost connection there is no device to tell.
    if let Err(e) = lock.release(&mut session) {
        log::info!("sync lock not released: {e}");
    }
    // A first backup has no earlier one to keep intact: said so.
    let result = result.map_err(|e| match e {
        EngineError::DiskFull { needed, .. } => EngineError::DiskFull {
            needed,
            first: !has_previous,
        },
        e => e,
    });
    match result {
        Ok(mut outcome) => {
            let t0 = std::time::Instant::now();
            // Not committable (a copy that ran out of space, a device that
            // did not finish): what was staged goes, as after any failure.
            let committable = dir
                .still_there()
                .and_then(|()| dir.ready())
                .and_then(|()| verify_staged(&dir.staging()));
            if let Err(e) = committable {
                dir.abandon();
                return Err(e);
            }
            let marker = filtered_marker(root, &device.udid);
            if !opts.selection.is_all() {
                events.step("keeping only the chosen categories");
                if let Err(e) = dir.link_all().and_then(|()| {
                    dir.recount();
                    keep_only(&dir.staging(), &opts.selection, opts.password.as_deref())
                }) {
                    dir.abandon();
                    return Err(e);
                }
                std::fs::write(&marker, opts.selection.categories.join(",") + "\n")?;
            }
            // The device may turn an incremental request into a full backup
            // (after encryption was turned on, or an index it could not
            // read): its Status.plist says which it made.
            let device_full = Value::from_file(dir.staging().join("Status.plist"))
                .ok()
                .and_then(Value::into_dictionary)
                .and_then(|d| d.bool_of("IsFullBackup"))
                .unwrap_or(false);
            outcome.full |= device_full;
            let snap = dir.commit(outcome.full, !opts.selection.is_all())?;
            outcome.kept_files = snap.files;
            outcome.kept_bytes = snap.bytes;
            if opts.selection.is_all() {
                let _ = std::fs::remove_file(&marker);
            }
            outcome.snapshot = snap.id;
            outcome.commit_seconds = t0.elapsed().as_secs_f64();
            log::info!("committed in {:?}", t0.elapsed());
            Ok(outcome)
        }
        Err(e) => {
            dir.abandon();
            Err(e)
        }
    }
}

/// What is wrong with the committed backup `folder`, if anything, in a
/// phrase: a file missing, of the wrong size, a link where a file or
/// folder should be, or (with `content`) bytes that do not match their
/// digest. Checked against ibackup's digest record where there is one
/// (one `lstat` a file: cheap enough for every night), else against the
/// index (a plain backup another tool or an earlier version made).
fn previous_damage(folder: &Path, content: bool) -> Option<String> {
    use ibackup_store::verify::{verify_with, Options as Check};
    let digests = crate::snapshots::digests_for(folder);
    if let Some(record) = &digests {
        return record_damage(folder, record, content);
    }
    let scratch = tempfile::tempdir().ok()?;
    let check = Check {
        password: None,
        digests: None,
        quick: !content,
    };
    match verify_with(folder, scratch.path(), &check) {
        Ok(r) if r.is_sound() => None,
        Ok(r) => Some(summary(r.problem_count, r.problems.into_iter().next())),
        // Encrypted, and no record to check it by: the device will read
        // the index itself.
        Err(ibackup_store::StoreError::PasswordRequired) => None,
        Err(e) => Some(e.to_string()),
    }
}

/// "a problem" or "N problems, e.g. a problem".
fn summary(count: u64, first: Option<String>) -> String {
    let first = first.unwrap_or_default();
    if count <= 1 {
        first
    } else {
        format!("{count} problems, e.g. {first}")
    }
}

/// [`previous_damage`] by ibackup's record: every file it names is there
/// as a regular file of the size received (and, with `content`, of the
/// recorded digest), and no content folder is a link.
fn record_damage(folder: &Path, record: &Path, content: bool) -> Option<String> {
    let Some(d) = ibackup_store::digests::Digests::open(record) else {
        return Some(format!(
            "its digest record {} is unreadable",
            record.display()
        ));
    };
    let mut first: Option<String> = None;
    let mut count = 0u64;
    // A problem, and how many there are of its kind.
    let mut bad = |what: String, times: u64| {
        count += times;
        first.get_or_insert(what);
    };
    // The newest backup's content folders are real folders: a link there
    // is damage, however it came (the same rule verify applies).
    let bounds = ibackup_store::paths::content_bounds(folder);
    for e in std::fs::read_dir(folder).into_iter().flatten().flatten() {
        if e.file_name().len() == 2
            && e.file_type().is_ok_and(|t| t.is_symlink())
            && ibackup_store::paths::snapshot_link_target(&e.path(), &bounds).is_none()
        {
            bad(
                format!(
                    "content folder {} is a symbolic link",
                    e.file_name().to_string_lossy()
                ),
                1,
            );
        }
    }
    let check = |id: &str, e: ibackup_store::digests::Entry| -> Option<String> {
        let rel = Path::new(&id[..2]).join(id);
        if content {
            match ibackup_store::paths::open_in(folder, &rel, &bounds) {
                Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
                    Some(format!("missing: {id}"))
                }
                Err(err) => Some(format!("unusable: {id}: {err}")),
                Ok(f) => match ibackup_store::digests::sha256_of(f) {
                    Ok(got) if got == e => None,
                    Ok(got) if got.size != e.size => Some(format!("wrong size: {id}")),
                    Ok(_) => Some(format!("damaged: {id} does not match its recorded digest")),
                    Err(err) => Some(format!("unreadable: {id}: {err}")),
                },
            }
        } else {
            match std::fs::symlink_metadata(folder.join(&rel)) {
                Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
                    Some(format!("missing: {id}"))
                }
                Err(err) => Some(format!("unusable: {id}: {err}")),
                Ok(m) if !m.is_file() => Some(format!("unusable: {id} is not a regular file")),
                Ok(m) if m.len() != e.size => Some(format!("wrong size: {id}")),
                Ok(_) => None,
            }
        }
    };
    // Every core looks, a batch of entries at a time (memory stays
    // bounded whatever the number of files); the first problem told is
    // the one of the smallest file ID, whichever thread found it.
    let found: std::sync::Mutex<(u64, Option<(String, String)>)> = Default::default();
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get().clamp(1, 8));
    let (tx, rx) =
        std::sync::mpsc::sync_channel::<Vec<(String, ibackup_store::digests::Entry)>>(threads * 2);
    let rx = std::sync::Mutex::new(rx);
    let walk = std::thread::scope(|scope| {
        let tx = tx;
        for _ in 0..threads {
            let (rx, found, check) = (&rx, &found, &check);
            scope.spawn(move || loop {
                let Ok(batch) = rx.lock().expect("batches").recv() else {
                    return;
                };
                for (id, e) in batch {
                    if let Some(p) = check(&id, e) {
                        let mut f = found.lock().expect("found");
                        f.0 += 1;
                        if f.1.as_ref().is_none_or(|(first, _)| id < *first) {
                            f.1 = Some((id, p));
                        }
                    }
                }
            });
        }
        let mut batch = Vec::with_capacity(512);
        let walk = d.for_each(|id, e| {
            if id.len() >= 2 {
                batch.push((id.to_string(), e));
            }
            if batch.len() == 512 {
                let _ = tx.send(std::mem::take(&mut batch));
            }
            Ok(())
        });
        if !batch.is_empty() {
            let _ = tx.send(batch);
        }
        walk
    });
    let (n, first_file) = found.into_inner().expect("found");
    if let Some((_, p)) = first_file {
        bad(p, n);
    }
    if let Err(e) = walk {
        bad(format!("its digest record cannot be read: {e}"), 1);
    }
    // Named as the user knows it where the index is plain.
    let named = |f: String| -> String {
        let db = ibackup_store::manifest_db::ManifestDb::open(&folder.join("Manifest.db"));
        let id = f
            .split(|c: char| !c.is_ascii_hexdigit())
            .find(|w| ibackup_store::paths::is_file_id(w));
        match (db, id) {
            (Ok(db), Some(id)) => match db.name_of(id) {
                Ok(Some(name)) => f.replacen(id, &format!("{name} ({id})"), 1),
                _ => f,
            },
            _ => f,
        }
    };
    first.map(|f| summary(count, Some(named(f))))
}

/// Present while `DIR/<UDID>/` holds a filtered backup (`backup --only`).
fn filtered_marker(root: &Path, udid: &str) -> PathBuf {
    root.join(".ibackup/locks").join(format!("{udid}.filtered"))
}

/// Drop from the staged backup every file outside `sel`: a new index
/// holding only the kept rows (re-encrypted with the backup's own key when
/// encrypted), and the dropped rows' content files removed.
fn keep_only(staging: &Path, sel: &Selection, password: Option<&str>) -> Result<()> {
    let backup = Backup::open(staging, password)?;
    let new_index = staging.join("Manifest.db.ibackup-part");
    let _ = std::fs::remove_file(&new_index);
    backup.write_filtered_index(sel, &new_index)?;
    backup.for_each(|row| {
        if row.flags == FLAG_FILE && !sel.matches(&row.domain, &row.relative_path) {
            match std::fs::remove_file(backup.content_path(&row.file_id)) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e.into()),
                _ => {}
            }
        }
        Ok(())
    })?;
    drop(backup);
    std::fs::rename(&new_index, staging.join("Manifest.db"))?;
    Ok(())
}

/// An engine error as the I/O error of the step it stopped.
fn as_io(e: EngineError) -> std::io::Error {
    match e {
        EngineError::Io(io) => io,
        other => std::io::Error::other(other.to_string()),
    }
}

/// "need N bytes" in a device's free-space refusal.
fn parse_needed(description: &str) -> Option<u64> {
    let i = description.find("need ")?;
    description[i + 5..]
        .split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}

/// Refuse to commit what the device did not finish.
fn verify_staged(staging: &Path) -> Result<()> {
    let status = Value::from_file(staging.join("Status.plist"))
        .ok()
        .and_then(Value::into_dictionary);
    if status.as_ref().and_then(|s| s.str_of("SnapshotState")) != Some("finished") {
        return Err(EngineError::Protocol(
            "the device reported success but its Status.plist is not finished".into(),
        ));
    }
    if !staging.join("Manifest.db").is_file() || !staging.join("Manifest.plist").is_file() {
        return Err(EngineError::Protocol(
            "the device reported success without Manifest.db and Manifest.plist".into(),
        ));
    }
    Ok(())
}
