//! The device's backup keybag: made when a backup password is set, kept in
//! `state/backup_keys.plist` with its class keys unwrapped (on a real phone
//! they live in the Secure Enclave), dropped when encryption is turned off.

use std::path::Path;

use ibackup_proto::plistx::{dict, DictExt};
use ibackup_store::crypto::Keybag;
use plist::{Dictionary, Value};

use crate::device::{set_private, write_atomic, Device};
use crate::error::{Result, SimError};

fn path(device: &Device) -> std::path::PathBuf {
    device.state_dir().join("backup_keys.plist")
}

/// The unlocked keybag, if encryption is on.
pub fn load(device: &Device) -> Result<Option<Keybag>> {
    let p = path(device);
    if !p.exists() {
        return Ok(None);
    }
    let d = Value::from_file(&p)?
        .into_dictionary()
        .ok_or_else(|| SimError::Config(format!("{} is damaged", p.display())))?;
    let mut kb = Keybag::parse(d.data_of("Keybag").unwrap_or_default())?;
    let keys = d.dict_of("ClassKeys").cloned().unwrap_or_default();
    for c in kb.classes.iter_mut() {
        if let Some(k) = keys.data_of(&c.class.to_string()) {
            c.key = k.try_into().ok();
        }
    }
    Ok(Some(kb))
}

pub fn save(device: &Device, kb: Option<&Keybag>) -> Result<()> {
    let p = path(device);
    match kb {
        None => match std::fs::remove_file(&p) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e.into()),
            _ => Ok(()),
        },
        Some(kb) => {
            let keys: Dictionary = kb
                .classes
                .iter()
                .filter_map(|c| Some((c.class.to_string(), Value::Data(c.key?.to_vec()))))
                .collect();
            let v = Value::Dictionary(dict([
                ("Keybag", Value::Data(kb.encode())),
                ("ClassKeys", Value::Dictionary(keys)),
            ]));
            let mut out = Vec::new();
            v.to_writer_xml(&mut out)?;
            write_atomic(&p, &out)?;
            set_private(Path::new(&p));
            Ok(())
        }
    }
}

/// Make the stored keybag agree with `backup_password` in device.toml (a
/// device folder may be written by hand with a password already set).
pub fn ensure(device: &Device) -> Result<()> {
    let c = device.cfg();
    match (&c.backup_password, load(device)?) {
        (Some(pw), None) => {
            let kb = Keybag::new_backup(pw, c.backup_kdf_iterations, &mut rand::rngs::OsRng)?;
            save(device, Some(&kb))
        }
        (None, Some(_)) => save(device, None),
        _ => Ok(()),
    }
}
