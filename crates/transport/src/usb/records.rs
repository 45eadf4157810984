//! Pair records and the host's SystemBUID when no usbmuxd keeps them.
//!
//! Read from the platform's lockdown folder where this user can read it
//! (shared with libimobiledevice and usbmuxd: `/var/lib/lockdown` on
//! Linux, `/var/db/lockdown` on macOS, `%ProgramData%\Apple\Lockdown` on
//! Windows), otherwise from ibackup's own per-user store, which is also
//! where new records are written (files 0600 in a 0700 folder).
//! `IBACKUP_LOCKDOWN_DIR` names the own store and turns the platform
//! folder off (tests; a machine with several users of one phone).

use std::io::Write;
use std::path::{Path, PathBuf};

use ibackup_proto::error::{ProtoError, Result};
use ibackup_proto::pairing::{random_uuid, PairRecord};
use ibackup_proto::plistx::{self, DictExt};
use plist::Value;

#[derive(Debug, Clone)]
pub struct PairStore {
    /// Read first, never written: the platform's lockdown folder.
    pub shared: Option<PathBuf>,
    /// Ours: read after `shared`, and where records are saved.
    pub own: PathBuf,
}

/// The platform's lockdown folder.
fn platform_dir() -> Option<PathBuf> {
    if cfg!(target_os = "macos") {
        Some(PathBuf::from("/var/db/lockdown"))
    } else if cfg!(windows) {
        std::env::var_os("ProgramData").map(|p| PathBuf::from(p).join("Apple").join("Lockdown"))
    } else {
        Some(PathBuf::from("/var/lib/lockdown"))
    }
}

/// ibackup's own per-user store.
fn own_dir() -> PathBuf {
    let home = || std::env::var_os("HOME").map(PathBuf::from);
    if cfg!(windows) {
        if let Some(p) = std::env::var_os("LOCALAPPDATA") {
            return PathBuf::from(p).join("ibackup").join("Lockdown");
        }
    } else if cfg!(target_os = "macos") {
        if let Some(h) = home() {
            return h.join("Library/Application Support/ibackup/lockdown");
        }
    } else if let Some(x) = std::env::var_os("XDG_DATA_HOME").filter(|x| !x.is_empty()) {
        return PathBuf::from(x).join("ibackup").join("lockdown");
    } else if let Some(h) = home() {
        return h.join(".local/share/ibackup/lockdown");
    }
    std::env::temp_dir().join("ibackup-lockdown")
}

impl PairStore {
    /// The store for this user and machine.
    pub fn for_this_user() -> PairStore {
        match std::env::var_os("IBACKUP_LOCKDOWN_DIR").filter(|d| !d.is_empty()) {
            Some(d) => PairStore {
                shared: None,
                own: PathBuf::from(d),
            },
            None => PairStore {
                shared: platform_dir(),
                own: own_dir(),
            },
        }
    }

    fn readable(&self) -> impl Iterator<Item = &Path> {
        self.shared
            .iter()
            .map(PathBuf::as_path)
            .chain(std::iter::once(self.own.as_path()))
    }

    /// The host's SystemBUID: the platform's, where readable, else ours
    /// (made once, then kept: a new one would make the phone ask for
    /// Trust again).
    pub fn buid(&self) -> Result<String> {
        if let Some(shared) = &self.shared {
            if let Ok(bytes) = std::fs::read(shared.join("SystemConfiguration.plist")) {
                if let Ok(d) = plistx::dict_from_bytes(&bytes) {
                    if let Some(b) = d.str_of("SystemBUID") {
                        return Ok(b.to_string());
                    }
                }
            }
        }
        let p = self.own.join("SystemBUID");
        if let Ok(s) = std::fs::read_to_string(&p) {
            if !s.trim().is_empty() {
                return Ok(s.trim().to_string());
            }
        }
        let b = random_uuid();
        self.write(&p, b.as_bytes())?;
        Ok(b)
    }

    pub fn read(&self, udid: &str) -> Result<Option<PairRecord>> {
        check_udid(udid)?;
        for dir in self.readable() {
            match std::fs::read(dir.join(format!("{udid}.plist"))) {
                Ok(bytes) => {
                    return Ok(Some(PairRecord::from_dict(&plistx::dict_from_bytes(
                        &bytes,
                    )?)?))
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::NotFound | std::io::ErrorKind::PermissionDenied
                    ) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(None)
    }

    pub fn save(&self, udid: &str, rec: &PairRecord) -> Result<()> {
        check_udid(udid)?;
        let bytes = plistx::to_xml(&Value::Dictionary(rec.to_dict()));
        self.write(&self.own.join(format!("{udid}.plist")), &bytes)
    }

    /// Forget `udid` in our store (the platform's folder is usbmuxd's).
    pub fn delete(&self, udid: &str) -> Result<()> {
        check_udid(udid)?;
        match std::fs::remove_file(self.own.join(format!("{udid}.plist"))) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e.into()),
            _ => Ok(()),
        }
    }

    /// Write `bytes` to `path` whole (a temporary file renamed over it),
    /// readable by this user only.
    fn write(&self, path: &Path, bytes: &[u8]) -> Result<()> {
        create_private_dir(&self.own)?;
        let tmp = path.with_extension("part");
        {
            let mut o = std::fs::OpenOptions::new();
            o.write(true).create(true).truncate(true);
            #[cfg(unix)]
            std::os::unix::fs::OpenOptionsExt::mode(&mut o, 0o600);
            let mut f = o.open(&tmp)?;
            f.write_all(bytes)?;
            f.sync_all()?;
        }
        std::fs::rename(&tmp, path)?;
        Ok(())
    }
}

fn create_private_dir(dir: &Path) -> Result<()> {
    let mut b = std::fs::DirBuilder::new();
    b.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut b, 0o700);
    b.create(dir)?;
    Ok(())
}

/// A UDID names a file here: hex digits and one hyphen, nothing that
/// could lead out of the folder.
fn check_udid(udid: &str) -> Result<()> {
    if !udid.is_empty()
        && udid.len() <= 64
        && udid.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
    {
        Ok(())
    } else {
        Err(ProtoError::protocol(format!(
            "{udid:?} is not a device UDID"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(host_id: &str) -> PairRecord {
        PairRecord {
            device_certificate: b"dev".to_vec(),
            host_certificate: b"host".to_vec(),
            root_certificate: b"root".to_vec(),
            host_id: host_id.into(),
            system_buid: "B".into(),
            host_private_key: Some(b"key".to_vec()),
            root_private_key: None,
            escrow_bag: Some(vec![1, 2, 3]),
            wifi_mac_address: None,
        }
    }

    #[test]
    fn records_are_private_and_the_shared_folder_is_read_first() {
        let t = tempfile::tempdir().unwrap();
        let shared = t.path().join("lockdown");
        std::fs::create_dir(&shared).unwrap();
        let store = PairStore {
            shared: Some(shared.clone()),
            own: t.path().join("own"),
        };
        let udid = "00008110-001A2B3C4D5E6F70";
        assert!(store.read(udid).unwrap().is_none());
        store.save(udid, &record("OURS")).unwrap();
        assert_eq!(store.read(udid).unwrap().unwrap().host_id, "OURS");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let m = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
            assert_eq!(m(&store.own.join(format!("{udid}.plist"))), 0o600);
            assert_eq!(m(&store.own), 0o700);
        }
        // usbmuxd's record for the same phone wins: it is the one the
        // phone trusts when usbmuxd paired it.
        std::fs::write(
            shared.join(format!("{udid}.plist")),
            plistx::to_xml(&Value::Dictionary(record("USBMUXD").to_dict())),
        )
        .unwrap();
        assert_eq!(store.read(udid).unwrap().unwrap().host_id, "USBMUXD");
        store.delete(udid).unwrap();
        assert!(store.own.read_dir().unwrap().all(|e| !e
            .unwrap()
            .file_name()
            .to_string_lossy()
            .starts_with("0000")));
    }

    #[test]
    fn the_buid_is_made_once_or_taken_from_the_shared_folder() {
        let t = tempfile::tempdir().unwrap();
        let store = PairStore {
            shared: Some(t.path().join("none")),
            own: t.path().join("own"),
        };
        let b = store.buid().unwrap();
        assert_eq!(store.buid().unwrap(), b);
        let shared = t.path().join("lockdown");
        std::fs::create_dir(&shared).unwrap();
        let mut d = plist::Dictionary::new();
        d.insert("SystemBUID".into(), Value::from("SHARED-BUID"));
        std::fs::write(
            shared.join("SystemConfiguration.plist"),
            plistx::to_xml(&Value::Dictionary(d)),
        )
        .unwrap();
        let store = PairStore {
            shared: Some(shared),
            ..store
        };
        assert_eq!(store.buid().unwrap(), "SHARED-BUID");
    }

    #[test]
    fn a_udid_cannot_lead_out_of_the_folder() {
        let t = tempfile::tempdir().unwrap();
        let store = PairStore {
            shared: None,
            own: t.path().join("own"),
        };
        for bad in ["../x", "a/b", "", ".."] {
            assert!(store.save(bad, &record("X")).is_err(), "{bad}");
            assert!(store.read(bad).is_err(), "{bad}");
        }
    }
}
