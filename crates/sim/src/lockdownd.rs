//! The device side of lockdownd: values, pairing, sessions with TLS, and
//! starting services.

use std::sync::Arc;
use std::time::Instant;

use ibackup_proto::frame;
use ibackup_proto::lockdown::{error_response, ok_response, LockdownError, Request, SERVICE_TYPE};
use ibackup_proto::pairing::PairRecord;
use ibackup_proto::plistx::{dict, DictExt};
use ibackup_proto::tls::{self, TlsStream};
use ibackup_proto::ProtoError;
use plist::{Dictionary, Value};

use crate::conn::{Conn, Link};
use crate::device::{Device, DeviceConfig, Trust};
use crate::error::Result;
use crate::usbmuxd::random_uuid;

/// Services this device offers through StartService.
pub const SERVICES: [&str; 5] = [
    ibackup_proto::mb2::SERVICE_NAME,
    ibackup_proto::afc::SERVICE_NAME,
    ibackup_proto::services::NOTIFICATION_PROXY,
    ibackup_proto::services::INSTALLATION_PROXY,
    ibackup_proto::services::SPRINGBOARD,
];

/// Services that need the device unlocked (backup data is class-protected;
/// the media folder AFC serves is readable once the phone was unlocked after boot).
const NEEDS_UNLOCK: [&str; 1] = [ibackup_proto::mb2::SERVICE_NAME];

/// Values anyone may read before pairing (what an untrusted host sees).
const PUBLIC_KEYS: [&str; 12] = [
    "BuildVersion",
    "DeviceClass",
    "DeviceColor",
    "DeviceName",
    "DevicePublicKey",
    "HardwareModel",
    "ProductType",
    "ProductVersion",
    "SerialNumber",
    "UniqueDeviceID",
    "WiFiAddress",
    "ActivationState",
];

fn all_values(c: &DeviceConfig, device: &Device) -> Dictionary {
    let mut d = dict([
        ("ActivationState", Value::from("Activated")),
        ("BasebandVersion", Value::from("3.02.01")),
        ("BluetoothAddress", Value::from("a4:c3:f0:12:34:57")),
        ("BoardId", Value::from(12u64)),
        ("BuildVersion", Value::from(c.build_version.as_str())),
        ("CPUArchitecture", Value::from("arm64e")),
        ("ChipID", Value::from(33040u64)),
        ("DeviceClass", Value::from(c.device_class.as_str())),
        ("DeviceColor", Value::from("1")),
        ("DeviceName", Value::from(c.name.as_str())),
        (
            "DevicePublicKey",
            Value::Data(device.key.public_pem.as_bytes().to_vec()),
        ),
        ("FirmwareVersion", Value::from("iBoot-10151.120.3")),
        ("HardwareModel", Value::from(c.hardware_model.as_str())),
        ("HardwarePlatform", Value::from("t8110")),
        ("HostAttached", Value::Boolean(true)),
        ("PasswordProtected", Value::Boolean(c.passcode_locked)),
        ("ProductName", Value::from("iPhone OS")),
        ("ProductType", Value::from(c.product_type.as_str())),
        ("ProductVersion", Value::from(c.product_version.as_str())),
        ("ProtocolVersion", Value::from("2")),
        ("SerialNumber", Value::from(c.serial_number.as_str())),
        ("TimeZone", Value::from("Europe/London")),
        ("TimeZoneOffsetFromUTC", Value::Real(0.0)),
        ("UniqueChipID", Value::from(0x1A2B3C4D5E6Fu64)),
        ("UniqueDeviceID", Value::from(c.udid.as_str())),
        ("WiFiAddress", Value::from(c.wifi_address.as_str())),
    ]);
    if let Some(imei) = &c.imei {
        d.insert(
            "InternationalMobileEquipmentIdentity".into(),
            Value::from(imei.as_str()),
        );
        d.insert(
            "IntegratedCircuitCardIdentity".into(),
            Value::from("8944500102198304826"),
        );
    }
    if let Some(p) = &c.phone_number {
        d.insert("PhoneNumber".into(), Value::from(p.as_str()));
    }
    d
}

fn domain_values(c: &DeviceConfig, domain: &str) -> Option<Dictionary> {
    Some(match domain {
        "com.apple.mobile.backup" => dict([
            ("WillEncrypt", Value::Boolean(c.backup_password.is_some())),
            ("RequiresEncrypt", Value::Boolean(false)),
            ("CloudBackupEnabled", Value::Boolean(false)),
        ]),
        "com.apple.disk_usage" | "com.apple.disk_usage.factory" => dict([
            ("TotalDiskCapacity", Value::from(c.total_capacity)),
            (
                "TotalDataCapacity",
                Value::from(c.total_capacity - 8_000_000_000),
            ),
            ("TotalDataAvailable", Value::from(c.free_capacity)),
            ("AmountDataAvailable", Value::from(c.free_capacity)),
            ("AmountDataReserved", Value::from(200_000_000u64)),
        ]),
        "com.apple.mobile.iTunes" => dict([("MinITunesVersion", Value::from("12.5.0"))]),
        "com.apple.iTunes" => Dictionary::new(),
        "com.apple.mobile.battery" => dict([
            ("BatteryCurrentCapacity", Value::from(87u64)),
            ("BatteryIsCharging", Value::Boolean(true)),
            ("ExternalConnected", Value::Boolean(true)),
        ]),
        "com.apple.fmip" => dict([("IsAssociated", Value::Boolean(c.find_my))]),
        "com.apple.mobile.wireless_lockdown" => {
            dict([("EnableWifiConnections", Value::Boolean(false))])
        }
        "com.apple.mobile.data_sync"
        | "com.apple.mobile.sync_data_class"
        | "com.apple.international" => Dictionary::new(),
        _ => return None,
    })
}

struct Session {
    id: String,
    host_id: String,
}

/// Serve one lockdownd connection until the host leaves.
pub fn serve(conn: Box<dyn Conn>, device: Arc<Device>) -> Result<()> {
    device.reload_config();
    let mut link = Link::Plain(conn);
    let mut session: Option<Session> = None;
    loop {
        let req = match frame::read_plist(&mut link) {
            Ok(Value::Dictionary(d)) => d,
            Ok(_) => {
                frame::write_xml(
                    &mut link,
                    &Value::Dictionary(error_response("", LockdownError::InvalidRequest)),
                )?;
                continue;
            }
            Err(ProtoError::Closed) => return Ok(()),
            Err(e) => return Err(e.into()),
        };
        let name = req.str_of("Request").unwrap_or("").to_string();
        let request = match Request::decode(&req) {
            Ok(r) => r,
            Err(e) => {
                log::info!("lockdownd: malformed {name}: {e}");
                let err = if name == "StartSession" {
                    LockdownError::MissingHostId
                } else {
                    LockdownError::InvalidRequest
                };
                frame::write_xml(&mut link, &Value::Dictionary(error_response(&name, err)))?;
                continue;
            }
        };
        log::debug!("lockdownd: {}", request.name());
        let answer = handle(&request, &device, &mut session);
        frame::write_xml(&mut link, &Value::Dictionary(answer.clone()))?;
        if answer.contains_key("Error") {
            continue;
        }
        match request {
            Request::StartSession { host_id, .. } => {
                // The device is the TLS server, with the certificate the host issued it.
                let Some(host) = device.trusted_host(&host_id) else {
                    // Unpaired by another connection since the answer went out.
                    return Err(crate::error::SimError::Protocol(
                        "host forgotten during StartSession".into(),
                    ));
                };
                let cert = host
                    .record
                    .data_of("DeviceCertificate")
                    .unwrap_or_default()
                    .to_vec();
                let config = tls::server_config(&cert, device.key.private_pem.as_bytes())?;
                let Link::Plain(plain) = std::mem::replace(&mut link, Link::Gone) else {
                    return Err(crate::error::SimError::Protocol(
                        "StartSession inside a session".into(),
                    ));
                };
                link = Link::Tls(Box::new(TlsStream::accept(plain, config)?));
            }
            Request::StopSession { .. } => {
                session = None;
                if let Link::Tls(mut t) = std::mem::replace(&mut link, Link::Gone) {
                    // The host sends close_notify and continues in plaintext.
                    let mut probe = [0u8; 1];
                    match std::io::Read::read(&mut t, &mut probe) {
                        Ok(0) if t.peer_closed() => link = Link::Plain(t.into_inner()),
                        Ok(0) => return Ok(()),
                        Ok(_) => {
                            return Err(crate::error::SimError::Protocol(
                                "data after StopSession".into(),
                            ))
                        }
                        Err(_) => return Ok(()),
                    }
                }
            }
            Request::Goodbye => return Ok(()),
            _ => {}
        }
    }
}

fn handle(req: &Request, device: &Device, session: &mut Option<Session>) -> Dictionary {
    let c = device.cfg();
    let name = req.name().to_string();
    let err = |e| error_response(&name, e);
    match req {
        Request::QueryType => ok_response(&name, dict([("Type", Value::from(SERVICE_TYPE))])),
        Request::GetValue { domain, key } => {
            let trusted = session.is_some();
            let source = match domain.as_deref() {
                None => {
                    let all = all_values(&c, device);
                    if trusted {
                        all
                    } else {
                        all.into_iter()
                            .filter(|(k, _)| PUBLIC_KEYS.contains(&k.as_str()))
                            .collect()
                    }
                }
                Some(d) if trusted => match domain_values(&c, d) {
                    Some(v) => v,
                    None => return err(LockdownError::MissingValue),
                },
                Some(_) => return err(LockdownError::GetProhibited),
            };
            let mut extra = Dictionary::new();
            if let Some(d) = domain {
                extra.insert("Domain".into(), Value::from(d.as_str()));
            }
            match key {
                None => {
                    extra.insert("Value".into(), Value::Dictionary(source));
                }
                Some(k) => {
                    extra.insert("Key".into(), Value::from(k.as_str()));
                    match source.get(k) {
                        Some(v) => {
                            extra.insert("Value".into(), v.clone());
                        }
                        None if !trusted
                            && domain.is_none()
                            && all_values(&c, device).contains_key(k) =>
                        {
                            return err(LockdownError::GetProhibited)
                        }
                        None => return err(LockdownError::MissingValue),
                    }
                }
            }
            ok_response(&name, extra)
        }
        Request::SetValue { .. } | Request::RemoveValue { .. } => {
            if session.is_none() {
                return err(LockdownError::SessionInactive);
            }
            err(LockdownError::SetProhibited)
        }
        Request::Pair { record, .. } => pair(device, &c, record, &name),
        Request::ValidatePair { record } => match record.str_of("HostID") {
            Some(h) if device.trusted_host(h).is_some() => ok_response(&name, Dictionary::new()),
            _ => err(LockdownError::InvalidHostId),
        },
        Request::Unpair { record } => match record.str_of("HostID") {
            Some(h) if device.trusted_host(h).is_some() => match device.forget_host(h) {
                Ok(()) => ok_response(&name, Dictionary::new()),
                Err(_) => err(LockdownError::InvalidHostId),
            },
            _ => err(LockdownError::InvalidHostId),
        },
        Request::StartSession { host_id, .. } => {
            if session.is_some() {
                return err(LockdownError::SessionActive);
            }
            let Some(host) = device.trusted_host(host_id) else {
                return err(LockdownError::InvalidHostId);
            };
            if host.record.data_of("DeviceCertificate").is_none() {
                return err(LockdownError::InvalidPairRecord);
            }
            let id = random_uuid();
            *session = Some(Session {
                id: id.clone(),
                host_id: host_id.clone(),
            });
            ok_response(
                &name,
                dict([
                    ("SessionID", Value::from(id)),
                    ("EnableSessionSSL", Value::Boolean(true)),
                ]),
            )
        }
        Request::StopSession { session_id } => match session {
            Some(s) if &s.id == session_id => ok_response(&name, Dictionary::new()),
            Some(_) => err(LockdownError::InvalidSessionId),
            None => err(LockdownError::SessionInactive),
        },
        Request::StartService { service, .. } => {
            let Some(s) = session.as_ref() else {
                return err(LockdownError::InvalidService);
            };
            log::debug!("host {} starts {service}", s.host_id);
            if !SERVICES.contains(&service.as_str()) {
                return err(LockdownError::InvalidService);
            }
            if c.passcode_locked && NEEDS_UNLOCK.contains(&service.as_str()) {
                return err(LockdownError::PasswordProtected);
            }
            let port = device.register_service(service);
            ok_response(
                &name,
                dict([
                    ("Service", Value::from(service.as_str())),
                    ("Port", Value::from(port as u64)),
                    ("EnableServiceSSL", Value::Boolean(false)),
                ]),
            )
        }
        Request::Goodbye => ok_response(&name, Dictionary::new()),
        Request::Other(_) => err(LockdownError::InvalidRequest),
    }
}

fn pair(device: &Device, c: &DeviceConfig, record: &Dictionary, name: &str) -> Dictionary {
    let err = |e| error_response(name, e);
    let Ok(rec) = PairRecord::from_dict(record) else {
        return err(LockdownError::InvalidPairRecord);
    };
    // A locked phone cannot show the Trust dialog.
    if c.passcode_locked {
        return err(LockdownError::PasswordProtected);
    }
    match c.trust {
        Trust::Deny => return err(LockdownError::UserDeniedPairing),
        Trust::Prompt => {
            let mut first = device.first_pair_attempt.lock().expect("pair lock");
            let started = *first.get_or_insert_with(Instant::now);
            if started.elapsed().as_secs() < c.trust_after_seconds {
                return err(LockdownError::PairingDialogResponsePending);
            }
        }
        Trust::Auto => {}
    }
    let escrow: [u8; 32] = rand::random();
    let mut stored = rec.public_dict();
    stored.insert("EscrowBag".into(), Value::Data(escrow.to_vec()));
    if device.trust_host(&rec.host_id, &stored).is_err() {
        return err(LockdownError::InvalidHostId);
    }
    ok_response(name, dict([("EscrowBag", Value::Data(escrow.to_vec()))]))
}
