//! What hosts do around a backup, as Finder and idevicebackup2 do it: post
//! the sync notifications, hold `/com.apple.itunes.lock_sync` over AFC so
//! no other host syncs at the same time, and list the user's apps for
//! Info.plist (libimobiledevice `tools/idevicebackup2.c`,
//! pymobiledevice3 `services/mobilebackup2.py`).

use std::time::Duration;

use ibackup_proto::afc::{self, mode, op, status};
use ibackup_proto::frame;
use ibackup_proto::plistx::{dict, DictExt};
use ibackup_proto::services::{self, NpMessage};
use plist::{Dictionary, Value};

use crate::afc::AfcClient;
use crate::device::Session;
use crate::error::{EngineError, Result};

pub const WILL_START: &str = "com.apple.itunes-mobdev.syncWillStart";
pub const LOCK_REQUEST: &str = "com.apple.itunes-mobdev.syncLockRequest";
pub const DID_START: &str = "com.apple.itunes-mobdev.syncDidStart";
pub const DID_FINISH: &str = "com.apple.itunes-mobdev.syncDidFinish";
const LOCK_FILE: &str = "/com.apple.itunes.lock_sync";
const LOCK_EX: u64 = 2 | 4;
const LOCK_UN: u64 = 8 | 4;

/// Post one notification through notification_proxy.
pub fn post(session: &mut Session<'_>, name: &str) -> Result<()> {
    let mut np = session.service(services::NOTIFICATION_PROXY)?;
    frame::write_xml(&mut np, &NpMessage::Post(name.into()).encode())?;
    frame::write_xml(&mut np, &NpMessage::Shutdown.encode())?;
    // The device answers ProxyDeath; the notification is already out either way.
    let _ = frame::read_plist(&mut np);
    Ok(())
}

/// The files Info.plist's `iTunes Files` holds (libimobiledevice
/// `mobilebackup_factory_info_plist_new`).
pub const ITUNES_FILES: [&str; 11] = [
    "ApertureAlbumPrefs",
    "IC-Info.sidb",
    "IC-Info.sidv",
    "PhotosFolderAlbums",
    "PhotosFolderName",
    "PhotosFolderPrefs",
    "VoiceMemos.plist",
    "iPhotoAlbumPrefs",
    "iTunesApplicationIDs",
    "iTunesPrefs",
    "iTunesPrefs.plist",
];

/// The sync lock, held for the length of a backup.
pub struct SyncLock {
    afc: AfcClient,
    handle: u64,
}

impl SyncLock {
    /// Take the lock, waiting while another host holds it.
    pub fn acquire(session: &mut Session<'_>) -> Result<SyncLock> {
        post(session, WILL_START)?;
        let mut afc = AfcClient::new(session.service(afc::SERVICE_NAME)?);
        let r = afc.call(op::FILE_OPEN, &[mode::RW], Some(LOCK_FILE))?;
        let handle = match (r.operation, r.arg_u64(0)) {
            (op::FILE_OPEN_RES, Some(h)) => h,
            _ => {
                return Err(EngineError::Protocol(format!(
                    "the device would not open {LOCK_FILE} (AFC status {:?})",
                    r.arg_u64(0)
                )))
            }
        };
        let mut lock = SyncLock { afc, handle };
        post(session, LOCK_REQUEST)?;
        for _ in 0..50 {
            let r = lock
                .afc
                .call(op::FILE_LOCK, &[lock.handle, LOCK_EX], None)?;
            match r.arg_u64(0) {
                Some(status::SUCCESS) => {
                    post(session, DID_START)?;
                    return Ok(lock);
                }
                Some(status::OP_WOULD_BLOCK) => std::thread::sleep(Duration::from_millis(200)),
                other => {
                    return Err(EngineError::Protocol(format!(
                        "the device would not lock {LOCK_FILE} (AFC status {other:?})"
                    )))
                }
            }
        }
        Err(EngineError::Busy(format!(
            "{LOCK_FILE} on the device: another computer is syncing it"
        )))
    }

    /// A file's contents over the same AFC connection; `None` when the
    /// device has no such file.
    pub fn read_file(&mut self, path: &str) -> Result<Option<Vec<u8>>> {
        self.afc.read_small(path, 64 << 20)
    }

    /// The files Finder copies into Info.plist's `iTunes Files`, as
    /// libimobiledevice reads them (`/iTunes_Control/iTunes/`).
    pub fn itunes_files(&mut self) -> Dictionary {
        let mut d = Dictionary::new();
        for name in ITUNES_FILES {
            match self.read_file(&format!("/iTunes_Control/iTunes/{name}")) {
                Ok(Some(bytes)) => {
                    d.insert(name.to_string(), Value::Data(bytes));
                }
                Ok(None) => {}
                Err(e) => log::info!("could not read iTunes file {name}: {e}"),
            }
        }
        d
    }

    /// Release the lock and tell the device the sync is over.
    pub fn release(mut self, session: &mut Session<'_>) -> Result<()> {
        self.afc
            .call(op::FILE_LOCK, &[self.handle, LOCK_UN], None)?;
        self.afc.close(self.handle)?;
        post(session, DID_FINISH)
    }
}

/// The user's apps as Info.plist records them: bundle IDs, and for each the
/// SINF and iTunes metadata a restore uses to reinstall it.
pub fn user_apps(session: &mut Session<'_>) -> Result<(Vec<Value>, Dictionary)> {
    let mut ip = session.service(services::INSTALLATION_PROXY)?;
    frame::write_xml(&mut ip, &Value::Dictionary(services::browse_user_apps()))?;
    let (mut ids, mut apps) = (Vec::new(), Dictionary::new());
    loop {
        let Value::Dictionary(d) = frame::read_plist(&mut ip)? else {
            break;
        };
        let (list, last) = services::parse_browse(&d);
        for app in &list {
            let Some(id) = app.str_of("CFBundleIdentifier") else {
                continue;
            };
            ids.push(Value::from(id));
            if let (Some(sinf), Some(meta)) =
                (app.get("ApplicationSINF"), app.get("iTunesMetadata"))
            {
                apps.insert(
                    id.to_string(),
                    Value::Dictionary(dict([
                        ("ApplicationSINF", sinf.clone()),
                        ("iTunesMetadata", meta.clone()),
                    ])),
                );
            }
        }
        if last {
            break;
        }
    }
    // Each app's icon, for Finder's restore screen (springboardservices).
    if !apps.is_empty() {
        match session.service(services::SPRINGBOARD) {
            Ok(mut sb) => {
                for (id, entry) in apps.iter_mut() {
                    frame::write_binary(&mut sb, &Value::Dictionary(services::icon_request(id)))?;
                    let png = match frame::read_plist(&mut sb)? {
                        Value::Dictionary(d) => d.data_of("pngData").map(<[u8]>::to_vec),
                        _ => None,
                    };
                    if let (Some(png), Some(e)) = (png, entry.as_dictionary_mut()) {
                        e.insert("PlaceholderIcon".into(), Value::Data(png));
                    }
                }
            }
            Err(e) => log::info!("no app icons: {e}"),
        }
    }
    Ok((ids, apps))
}
