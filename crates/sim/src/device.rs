//! A simulated device is a folder:
//!
//! ```text
//! DIR/device.toml          identity, behaviour knobs, faults
//! DIR/fs/<Domain>/<path>   the files a backup carries
//! DIR/media/               what AFC shows (/var/mobile/Media)
//! DIR/state/               what the device remembers: its key pair, the
//!                          hosts it trusts, usbmuxd's pair record, logs
//! ```
//!
//! State is written back into the folder so a test can compare folders
//! before and after an operation.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use ibackup_proto::pairing::DeviceKey;
use plist::{Dictionary, Value};
use rand::SeedableRng;
use serde::{Deserialize, Serialize};

use crate::error::{Result, SimError};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Trust {
    /// Trusts every host at once (a phone that already tapped Trust).
    #[default]
    Auto,
    /// Answers "dialog pending" until `trust_after_seconds` have passed.
    Prompt,
    /// The user tapped Don't Trust.
    Deny,
}

/// `device.toml`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceConfig {
    pub udid: String,
    pub name: String,
    pub product_type: String,
    pub product_version: String,
    pub build_version: String,
    pub serial_number: String,
    #[serde(default = "default_class")]
    pub device_class: String,
    #[serde(default = "default_hw")]
    pub hardware_model: String,
    #[serde(default)]
    pub imei: Option<String>,
    #[serde(default)]
    pub phone_number: Option<String>,
    #[serde(default = "default_mac")]
    pub wifi_address: String,
    /// Total storage in bytes.
    #[serde(default = "default_capacity")]
    pub total_capacity: u64,
    /// Free storage in bytes (a restore larger than this fails).
    #[serde(default = "default_free")]
    pub free_capacity: u64,
    /// How the device is attached: "USB" or "Network".
    #[serde(default = "default_conn")]
    pub connection: String,
    #[serde(default)]
    pub trust: Trust,
    #[serde(default)]
    pub trust_after_seconds: u64,
    #[serde(default)]
    pub passcode_locked: bool,
    #[serde(default)]
    pub find_my: bool,
    /// Set when backup encryption is on. Changed by ChangePassword.
    #[serde(default)]
    pub backup_password: Option<String>,
    /// PBKDF2-SHA256 rounds (DPIC) of a new backup keybag. Devices use
    /// 10,000,000; tests lower it to keep key derivation fast.
    #[serde(default = "default_dpic")]
    pub backup_kdf_iterations: u32,
    /// Drop the connection once this many bytes of file payload were sent
    /// in one backup session.
    #[serde(default)]
    pub fault_disconnect_after_bytes: Option<u64>,
    /// Drop the connection once this many files were sent in one session
    /// (in a restore: once this many were received, as the next batch
    /// streams in).
    #[serde(default)]
    pub fault_disconnect_after_files: Option<u64>,
    /// Go silent after this many files of a backup: send nothing more and
    /// keep the connection open until the host hangs up (a device that
    /// stops answering without a disconnect).
    #[serde(default)]
    pub fault_stall_after_files: Option<u64>,
    /// Pause this many milliseconds before sending each file (a slow
    /// device, so a test can interrupt a backup mid-way).
    #[serde(default)]
    pub fault_slow_file_ms: Option<u64>,
    /// Refuse every backup with this MBErrorDomain code.
    #[serde(default)]
    pub fault_refuse_backup: Option<u64>,
    /// Answer backup, restore and password requests with "another backup
    /// or restore is in progress" for this many seconds from the first
    /// one (a device still winding down a session, or another computer
    /// backing it up).
    #[serde(default)]
    pub fault_busy_seconds: Option<u64>,
    /// Skip the free-space check before uploading (a device that misjudges
    /// the size, so the host disk fills up mid-write).
    #[serde(default)]
    pub fault_ignore_free_space: bool,
    /// Ask the host to write files under these backup-relative paths
    /// (hostile-device tests: `../x`, absolute paths).
    #[serde(default)]
    pub fault_hostile_paths: Vec<String>,
    /// Extra names in every AFC listing of a camera-roll folder
    /// (`DCIM/100APPLE`): hostile names a client must refuse (`..`,
    /// `../../x`, `/etc/passwd`, names the host's disk cannot hold).
    #[serde(default)]
    pub fault_afc_names: Vec<String>,
    /// AFC drops the connection once it has served this many bytes of
    /// file reads (a cable pulled while photos are being copied).
    #[serde(default)]
    pub fault_afc_disconnect_after_bytes: Option<u64>,
    /// The USB endpoints' max packet size on the emulated bus (512 USB 2,
    /// 1024 USB 3).
    #[serde(default)]
    pub usb_max_packet: Option<u16>,
    /// Opening the device on the emulated bus fails: "permission" (no udev
    /// rule) or "busy" (usbmuxd holds it).
    #[serde(default)]
    pub fault_usb_open: Option<String>,
    /// Send CONTROL log lines between the packets of the emulated pipe.
    #[serde(default)]
    pub fault_usb_control_messages: bool,
    /// Send now and then a segment for a connection the host never made.
    #[serde(default)]
    pub fault_usb_unknown_port: bool,
    /// Reset (RST) the connection that has sent this many bytes on the
    /// emulated pipe, leaving the pipe itself up.
    #[serde(default)]
    pub fault_usb_reset_after_bytes: Option<u64>,
    /// After this many bytes on the emulated pipe, send garbage that is no
    /// usbmux packet.
    #[serde(default)]
    pub fault_usb_garbage_after_bytes: Option<u64>,
    /// Plugged in. `false` is a pulled cable: usbmuxd stops listing the
    /// device, refuses connections to it and tells listeners it detached.
    #[serde(default = "default_true")]
    pub attached: bool,
}

fn default_true() -> bool {
    true
}

fn default_class() -> String {
    "iPhone".into()
}
fn default_hw() -> String {
    "D63AP".into()
}
fn default_mac() -> String {
    "a4:c3:f0:12:34:56".into()
}
fn default_capacity() -> u64 {
    128_000_000_000
}
fn default_free() -> u64 {
    64_000_000_000
}
fn default_dpic() -> u32 {
    ibackup_store::crypto::DEVICE_DPIC
}
fn default_conn() -> String {
    "USB".into()
}

impl DeviceConfig {
    pub fn new(udid: &str, name: &str) -> DeviceConfig {
        DeviceConfig {
            udid: udid.into(),
            name: name.into(),
            product_type: "iPhone14,2".into(),
            product_version: "17.5.1".into(),
            build_version: "21F90".into(),
            serial_number: "F2LXK0SIMQ6N".into(),
            device_class: default_class(),
            hardware_model: default_hw(),
            imei: Some("356789101234567".into()),
            phone_number: Some("+1 (555) 010-0199".into()),
            wifi_address: default_mac(),
            total_capacity: default_capacity(),
            free_capacity: default_free(),
            connection: default_conn(),
            trust: Trust::Auto,
            trust_after_seconds: 0,
            passcode_locked: false,
            find_my: false,
            backup_password: None,
            backup_kdf_iterations: default_dpic(),
            fault_disconnect_after_bytes: None,
            fault_disconnect_after_files: None,
            fault_stall_after_files: None,
            fault_slow_file_ms: None,
            fault_ignore_free_space: false,
            fault_refuse_backup: None,
            fault_busy_seconds: None,
            fault_hostile_paths: Vec::new(),
            fault_afc_names: Vec::new(),
            fault_afc_disconnect_after_bytes: None,
            usb_max_packet: None,
            fault_usb_open: None,
            fault_usb_control_messages: false,
            fault_usb_unknown_port: false,
            fault_usb_garbage_after_bytes: None,
            fault_usb_reset_after_bytes: None,
            attached: true,
        }
    }

    pub fn load(dir: &Path) -> Result<DeviceConfig> {
        let path = dir.join("device.toml");
        let text = std::fs::read_to_string(&path)
            .map_err(|e| SimError::Config(format!("cannot read {}: {e}", path.display())))?;
        let cfg: DeviceConfig = toml::from_str(&text)
            .map_err(|e| SimError::Config(format!("{}: {e}", path.display())))?;
        if cfg.udid.is_empty() || cfg.udid.contains('/') || cfg.udid.contains("..") {
            return Err(SimError::Config(format!(
                "{}: bad udid {:?}",
                path.display(),
                cfg.udid
            )));
        }
        Ok(cfg)
    }

    pub fn save(&self, dir: &Path) -> Result<()> {
        let text = toml::to_string_pretty(self).map_err(|e| SimError::Config(e.to_string()))?;
        write_atomic(&dir.join("device.toml"), text.as_bytes())
    }
}

/// Write a file by writing a sibling and renaming it over.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_extension("tmp-write");
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}

/// What lockdownd remembers about a trusted host.
#[derive(Debug, Clone)]
pub struct TrustedHost {
    pub host_id: String,
    pub record: Dictionary,
}

/// A loaded device: its folder, configuration and mutable state.
pub struct Device {
    pub dir: PathBuf,
    pub device_id: u32,
    pub config: Mutex<DeviceConfig>,
    pub key: DeviceKey,
    /// When the first pairing attempt of this run was seen (trust prompt timer).
    pub first_pair_attempt: Mutex<Option<Instant>>,
    /// Ports handed out by StartService and not yet connected to.
    pub pending_services: Mutex<BTreeMap<u16, String>>,
    pub next_port: Mutex<u16>,
    /// One backup/restore at a time, as BackupAgent2.
    pub backup_busy: Mutex<bool>,
    /// When `fault_busy_seconds` began to count (the first request it
    /// answered).
    pub busy_fault_since: Mutex<Option<Instant>>,
    /// The index of the last backup this device completed (see
    /// [`crate::services::backup::LastIndex`]).
    pub last_index: Mutex<Option<crate::services::backup::LastIndex>>,
    /// A host has claimed the mux interface on the emulated USB bus: as on
    /// a real bus, no other may until it lets go.
    pub usb_claimed: std::sync::atomic::AtomicBool,
}

impl Device {
    pub fn open(dir: &Path, device_id: u32) -> Result<Arc<Device>> {
        let config = DeviceConfig::load(dir)?;
        for sub in ["fs", "media", "state/trusted_hosts"] {
            std::fs::create_dir_all(dir.join(sub))?;
        }
        let key_path = dir.join("state/device_key.pem");
        let pub_path = dir.join("state/device_public_key.pem");
        let key = if key_path.exists() && pub_path.exists() {
            DeviceKey {
                private_pem: std::fs::read_to_string(&key_path)?,
                public_pem: std::fs::read_to_string(&pub_path)?,
            }
        } else {
            // Deterministic per UDID, so re-created devices keep their key.
            let seed = ibackup_store::paths::file_id("device-key", &config.udid);
            let mut s = [0u8; 32];
            s[..20].copy_from_slice(
                &hex::decode(&seed[..40]).map_err(|e| SimError::Config(e.to_string()))?,
            );
            let mut rng = rand_chacha::ChaCha20Rng::from_seed(s);
            let k = DeviceKey::generate(&mut rng)?;
            write_atomic(&key_path, k.private_pem.as_bytes())?;
            set_private(&key_path);
            write_atomic(&pub_path, k.public_pem.as_bytes())?;
            k
        };
        let device = Arc::new(Device {
            dir: dir.to_path_buf(),
            device_id,
            config: Mutex::new(config),
            key,
            first_pair_attempt: Mutex::new(None),
            pending_services: Mutex::new(BTreeMap::new()),
            next_port: Mutex::new(49152),
            backup_busy: Mutex::new(false),
            busy_fault_since: Mutex::new(None),
            last_index: Mutex::new(None),
            usb_claimed: std::sync::atomic::AtomicBool::new(false),
        });
        crate::keys::ensure(&device)?;
        Ok(device)
    }

    pub fn cfg(&self) -> DeviceConfig {
        self.config.lock().expect("config lock").clone()
    }

    pub fn udid(&self) -> String {
        self.cfg().udid
    }

    pub fn fs_root(&self) -> PathBuf {
        self.dir.join("fs")
    }

    pub fn state_dir(&self) -> PathBuf {
        self.dir.join("state")
    }

    /// Is the cable in? Read from `device.toml` each time, so a test can
    /// pull and plug it while the simulator runs.
    pub fn is_attached(&self) -> bool {
        self.config_on_disk().attached
    }

    /// `device.toml` as it is now (a test changes it while the simulator
    /// runs), else the last good configuration; nothing is reloaded.
    pub fn config_on_disk(&self) -> DeviceConfig {
        DeviceConfig::load(&self.dir).unwrap_or_else(|_| self.cfg())
    }

    /// Re-read `device.toml`, as a phone's state (locked, Find My, faults)
    /// can change between connections. A file that no longer parses is
    /// reported and the last good configuration kept.
    pub fn reload_config(&self) {
        match DeviceConfig::load(&self.dir) {
            Ok(c) => *self.config.lock().expect("config lock") = c,
            Err(e) => log::warn!("keeping the previous configuration: {e}"),
        }
        if let Err(e) = crate::keys::ensure(self) {
            log::warn!("backup keybag: {e}");
        }
    }

    /// Change the configuration and write it back to `device.toml`.
    pub fn update_config(&self, f: impl FnOnce(&mut DeviceConfig)) -> Result<()> {
        let mut c = self.config.lock().expect("config lock");
        f(&mut c);
        c.save(&self.dir)
    }

    fn host_path(&self, host_id: &str) -> Result<PathBuf> {
        if host_id.is_empty()
            || !host_id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-')
        {
            return Err(SimError::Protocol(format!("bad HostID {host_id:?}")));
        }
        Ok(self
            .state_dir()
            .join("trusted_hosts")
            .join(format!("{host_id}.plist")))
    }

    pub fn trusted_host(&self, host_id: &str) -> Option<TrustedHost> {
        let p = self.host_path(host_id).ok()?;
        let v = Value::from_file(p).ok()?;
        Some(TrustedHost {
            host_id: host_id.to_string(),
            record: v.into_dictionary()?,
        })
    }

    pub fn trust_host(&self, host_id: &str, record: &Dictionary) -> Result<()> {
        let p = self.host_path(host_id)?;
        let mut out = Vec::new();
        Value::Dictionary(record.clone()).to_writer_xml(&mut out)?;
        write_atomic(&p, &out)
    }

    pub fn forget_host(&self, host_id: &str) -> Result<()> {
        let p = self.host_path(host_id)?;
        match std::fs::remove_file(p) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e.into()),
            _ => Ok(()),
        }
    }

    /// Reserve a port for a service the host will connect to next.
    pub fn register_service(&self, service: &str) -> u16 {
        let mut next = self.next_port.lock().expect("port lock");
        let port = *next;
        *next = if *next >= 65000 { 49152 } else { *next + 1 };
        self.pending_services
            .lock()
            .expect("service lock")
            .insert(port, service.to_string());
        port
    }

    /// Ports handed out for services not yet connected to.
    pub fn pending_ports(&self) -> Vec<u16> {
        self.pending_services
            .lock()
            .expect("service lock")
            .keys()
            .copied()
            .collect()
    }

    pub fn take_service(&self, port: u16) -> Option<String> {
        self.pending_services
            .lock()
            .expect("service lock")
            .remove(&port)
    }
}

/// Private keys and pair records are readable by their owner only.
pub fn set_private(path: &Path) {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600));
    }
    #[cfg(not(unix))]
    let _ = path;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_round_trips_and_rejects_typos() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = DeviceConfig::new("00008110-000A1B2C3D4E5F60", "Test");
        c.trust = Trust::Prompt;
        c.fault_disconnect_after_bytes = Some(5);
        c.save(dir.path()).unwrap();
        assert_eq!(DeviceConfig::load(dir.path()).unwrap(), c);
        std::fs::write(dir.path().join("device.toml"), "udid = \"x\"\nname = \"n\"\nproduct_type = \"p\"\nproduct_version = \"1\"\nbuild_version = \"b\"\nserial_number = \"s\"\ntrsut = \"auto\"\n").unwrap();
        assert!(DeviceConfig::load(dir.path()).is_err());
    }

    #[test]
    fn host_ids_cannot_escape_the_state_folder() {
        let dir = tempfile::tempdir().unwrap();
        DeviceConfig::new("U1", "Test").save(dir.path()).unwrap();
        let d = Device::open(dir.path(), 1).unwrap();
        assert!(d.trust_host("../../evil", &Dictionary::new()).is_err());
        d.trust_host("ABCD-1234", &Dictionary::new()).unwrap();
        assert!(d.trusted_host("ABCD-1234").is_some());
        d.forget_host("ABCD-1234").unwrap();
        assert!(d.trusted_host("ABCD-1234").is_none());
        // The key is stable across re-opening.
        let again = Device::open(dir.path(), 1).unwrap();
        assert_eq!(again.key, d.key);
    }
}
