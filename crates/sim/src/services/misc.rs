//! notification_proxy, installation_proxy and springboardservices: the
//! small plist services backup clients touch before a backup.

use std::sync::Arc;

use ibackup_proto::frame;
use ibackup_proto::plistx::{dict, DictExt};
use ibackup_proto::services::{self, NpMessage};
use ibackup_proto::ProtoError;
use plist::{Dictionary, Value};

use crate::conn::Conn;
use crate::device::Device;
use crate::error::Result;

fn next(conn: &mut Box<dyn Conn>) -> Result<Option<Dictionary>> {
    match frame::read_plist(conn) {
        Ok(Value::Dictionary(d)) => Ok(Some(d)),
        Ok(_) => Ok(Some(Dictionary::new())),
        Err(ProtoError::Closed) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Observe/Post are accepted; Shutdown is answered with ProxyDeath
/// (libimobiledevice `np_client_free`, pymobiledevice3 `notification_proxy.py`).
pub fn notification_proxy(mut conn: Box<dyn Conn>) -> Result<()> {
    while let Some(d) = next(&mut conn)? {
        match NpMessage::decode(&d) {
            NpMessage::Shutdown => {
                frame::write_xml(&mut conn, &NpMessage::ProxyDeath.encode())?;
                return Ok(());
            }
            other => log::debug!("notification_proxy: {other:?}"),
        }
    }
    Ok(())
}

/// The user apps: one per `AppDomain-<bundle id>` folder on the device.
pub fn user_apps(device: &Device) -> Vec<String> {
    let mut apps: Vec<String> = std::fs::read_dir(device.fs_root())
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            e.file_name()
                .to_str()?
                .strip_prefix("AppDomain-")
                .map(str::to_string)
        })
        .collect();
    apps.sort();
    apps
}

/// `Browse` answers in pages, then `Complete` (libimobiledevice `instproxy_browse`).
pub fn installation_proxy(mut conn: Box<dyn Conn>, device: Arc<Device>) -> Result<()> {
    while let Some(d) = next(&mut conn)? {
        match d.str_of("Command") {
            Some("Browse") | Some("Lookup") => {
                let list: Vec<Value> = user_apps(&device)
                    .into_iter()
                    .map(|id| {
                        let meta = Value::Dictionary(dict([
                            ("itemName", Value::from(id.as_str())),
                            ("softwareVersionBundleId", Value::from(id.as_str())),
                        ]));
                        let mut meta_bytes = Vec::new();
                        let _ = meta.to_writer_binary(&mut meta_bytes);
                        Value::Dictionary(dict([
                            ("CFBundleIdentifier", Value::from(id.as_str())),
                            ("ApplicationType", Value::from("User")),
                            ("CFBundleVersion", Value::from("1.0")),
                            (
                                "ApplicationSINF",
                                Value::Data(format!("SINF:{id}").into_bytes()),
                            ),
                            ("iTunesMetadata", Value::Data(meta_bytes)),
                        ]))
                    })
                    .collect();
                let total = list.len() as u64;
                frame::write_xml(
                    &mut conn,
                    &Value::Dictionary(services::browse_page(list, 0, total)),
                )?;
                frame::write_xml(&mut conn, &Value::Dictionary(services::browse_complete()))?;
            }
            _ => frame::write_xml(
                &mut conn,
                &Value::Dictionary(dict([("Error", Value::from("UnknownCommand"))])),
            )?,
        }
    }
    Ok(())
}

/// A 1×1 PNG: every app gets the same placeholder icon.
const ICON_PNG: [u8; 67] = [
    0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a, 0x00, 0x00, 0x00, 0x0d, 0x49, 0x48, 0x44, 0x52,
    0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x01, 0x08, 0x06, 0x00, 0x00, 0x00, 0x1f, 0x15, 0xc4,
    0x89, 0x00, 0x00, 0x00, 0x0a, 0x49, 0x44, 0x41, 0x54, 0x78, 0x9c, 0x63, 0x00, 0x01, 0x00, 0x00,
    0x05, 0x00, 0x01, 0x0d, 0x0a, 0x2d, 0xb4, 0x00, 0x00, 0x00, 0x00, 0x49, 0x45, 0x4e, 0x44, 0xae,
    0x42, 0x60, 0x82,
];

pub fn springboard(mut conn: Box<dyn Conn>) -> Result<()> {
    while let Some(d) = next(&mut conn)? {
        // springboardservices answers getIconState with an array; everything else a dict.
        let answer = match d.str_of("command") {
            Some("getIconPNGData") => Value::Dictionary(services::icon_response(ICON_PNG.to_vec())),
            Some("getIconState") => Value::Array(vec![]),
            _ => Value::Dictionary(dict([("Error", Value::from("UnknownCommand"))])),
        };
        frame::write_binary(&mut conn, &answer)?;
    }
    Ok(())
}
