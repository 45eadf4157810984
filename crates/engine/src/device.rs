//! Finding a device, making sure it trusts this host, and opening services.

use std::time::{Duration, Instant};

use ibackup_proto::lockdown::LockdownError;
use ibackup_proto::pairing::PairRecord;
use ibackup_proto::plistx::DictExt;
use ibackup_proto::tls::{self, TlsStream};
use ibackup_proto::usbmux::{DeviceRecord, LOCKDOWN_PORT};
use ibackup_proto::ProtoError;
use ibackup_transport::{is_lockdown_error, LockdownClient, Stream, Transport};
use plist::{Dictionary, Value};

use crate::error::{EngineError, Result};

/// The devices usbmuxd lists, with a clear error when it cannot be reached.
pub fn list(mux: &dyn Transport) -> Result<Vec<DeviceRecord>> {
    mux.devices().map_err(|e| match e {
        ProtoError::Io(source) => EngineError::Usbmuxd {
            addr: mux.describe(),
            source,
        },
        other => other.into(),
    })
}

/// A device's name and model ("Anna's iPhone", "iPhone14,5"), from the
/// values lockdownd gives without pairing; empty where it does not answer.
pub fn name_and_model(mux: &dyn Transport, device: &DeviceRecord) -> (String, String) {
    let asked = mux
        .connect(device.device_id, LOCKDOWN_PORT)
        .map_err(EngineError::from)
        .and_then(|s| {
            let mut l = LockdownClient::new(s, "ibackup");
            l.get_value(None, None).map_err(EngineError::from)
        });
    let Ok(Value::Dictionary(d)) = asked else {
        return (String::new(), String::new());
    };
    let get = |k: &str| {
        d.get(k)
            .and_then(Value::as_string)
            .unwrap_or("")
            .to_string()
    };
    (get("DeviceName"), get("ProductType"))
}

/// The one device to use: the given UDID, or the only one attached.
/// Wi-Fi devices are considered only with `network`.
pub fn choose(mux: &dyn Transport, udid: Option<&str>, network: bool) -> Result<DeviceRecord> {
    let all: Vec<DeviceRecord> = list(mux)?
        .into_iter()
        .filter(|d| network || !d.is_network())
        .collect();
    match udid {
        Some(u) => all
            .into_iter()
            .find(|d| d.udid.eq_ignore_ascii_case(u))
            .ok_or_else(|| EngineError::DeviceNotFound(u.to_string())),
        None => {
            let mut unique: Vec<DeviceRecord> = Vec::new();
            for d in all {
                if !unique.iter().any(|x| x.udid == d.udid) {
                    unique.push(d);
                }
            }
            match unique.len() {
                0 => Err(EngineError::NoDevice),
                1 => Ok(unique.remove(0)),
                _ => Err(EngineError::SeveralDevices(
                    unique
                        .iter()
                        .map(|d| d.udid.as_str())
                        .collect::<Vec<_>>()
                        .join(", "),
                )),
            }
        }
    }
}

/// A device with a trusted lockdownd session, over the transport that
/// reaches it: services are started and connected to through the session.
pub struct Session<'t> {
    pub device: DeviceRecord,
    pub pair: PairRecord,
    pub lockdown: LockdownClient,
    transport: &'t dyn Transport,
}

/// Pair with the device: make a pair record, ask for trust until the user
/// answers or `trust_wait` runs out, and share the record through usbmuxd
/// so other tools (libimobiledevice) use the same pairing.
pub fn pair(
    mux: &dyn Transport,
    device: &DeviceRecord,
    lockdown: &mut LockdownClient,
    trust_wait: Duration,
    on_wait: &mut dyn FnMut(),
) -> Result<PairRecord> {
    let public_key = match lockdown.get_value(None, Some("DevicePublicKey"))? {
        Value::Data(d) => d,
        _ => return Err(EngineError::Protocol("DevicePublicKey is not data".into())),
    };
    let buid = mux.buid()?;
    let mut rec = PairRecord::generate(
        &public_key,
        &ibackup_proto::pairing::random_uuid(),
        &buid,
        &mut rand::rngs::OsRng,
    )?;
    let start = Instant::now();
    let mut told = false;
    loop {
        match lockdown.pair(&rec) {
            Ok(escrow) => {
                rec.escrow_bag = escrow;
                mux.save_pair_record(&device.udid, device.device_id, &rec)?;
                return Ok(rec);
            }
            Err(e) if is_lockdown_error(&e, LockdownError::PairingDialogResponsePending) => {
                if !told {
                    on_wait();
                    told = true;
                }
                if start.elapsed() >= trust_wait {
                    return Err(EngineError::NotTrusted);
                }
                std::thread::sleep(Duration::from_millis(500));
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// Connect to lockdownd and open a trusted session, pairing first if this
/// host has no pair record for the device or the device forgot it.
pub fn open<'t>(
    mux: &'t dyn Transport,
    device: &DeviceRecord,
    trust_wait: Duration,
    on_wait: &mut dyn FnMut(),
) -> Result<Session<'t>> {
    let connect = || -> Result<LockdownClient> {
        let mut l = LockdownClient::new(mux.connect(device.device_id, LOCKDOWN_PORT)?, "ibackup");
        let ty = l.query_type()?;
        if ty != ibackup_proto::lockdown::SERVICE_TYPE {
            return Err(EngineError::Protocol(format!(
                "port 62078 answers as {ty}, not lockdownd"
            )));
        }
        Ok(l)
    };
    let mut lockdown = connect()?;
    let mut record = mux.read_pair_record(&device.udid).ok().flatten();
    for attempt in 0..2 {
        let rec = match record.take() {
            Some(r) => r,
            None => pair(mux, device, &mut lockdown, trust_wait, on_wait)?,
        };
        match lockdown.start_session(&rec) {
            Ok(()) => {
                return Ok(Session {
                    device: device.clone(),
                    pair: rec,
                    lockdown,
                    transport: mux,
                })
            }
            Err(e) if attempt == 0 && is_lockdown_error(&e, LockdownError::InvalidHostId) => {
                // The device no longer trusts this record (reset, or unpaired elsewhere).
                let _ = mux.delete_pair_record(&device.udid);
                lockdown = connect()?;
            }
            Err(e) => return Err(e.into()),
        }
    }
    Err(EngineError::NotTrusted)
}

/// Open a session with the pairing usbmuxd already has, without pairing:
/// `Ok` means the device still trusts this host.
pub fn validate<'t>(mux: &'t dyn Transport, device: &DeviceRecord) -> Result<Session<'t>> {
    let rec = mux
        .read_pair_record(&device.udid)?
        .ok_or(EngineError::NotTrusted)?;
    let mut lockdown =
        LockdownClient::new(mux.connect(device.device_id, LOCKDOWN_PORT)?, "ibackup");
    match lockdown.start_session(&rec) {
        Ok(()) => Ok(Session {
            device: device.clone(),
            pair: rec,
            lockdown,
            transport: mux,
        }),
        Err(e) if is_lockdown_error(&e, LockdownError::InvalidHostId) => {
            Err(EngineError::NotTrusted)
        }
        Err(e) => Err(e.into()),
    }
}

/// Make the device forget this host and drop usbmuxd's pair record.
pub fn unpair(mux: &dyn Transport, device: &DeviceRecord) -> Result<()> {
    let Some(rec) = mux.read_pair_record(&device.udid)? else {
        return Ok(());
    };
    let mut lockdown =
        LockdownClient::new(mux.connect(device.device_id, LOCKDOWN_PORT)?, "ibackup");
    match lockdown.unpair(&rec) {
        Ok(()) => {}
        // Already forgotten on the device: still drop our copy.
        Err(e) if is_lockdown_error(&e, LockdownError::InvalidHostId) => {}
        Err(e) => return Err(e.into()),
    }
    mux.delete_pair_record(&device.udid)?;
    Ok(())
}

impl Session<'_> {
    /// The transport the session runs over.
    pub fn transport(&self) -> &dyn Transport {
        self.transport
    }

    /// All lockdownd values, for Info.plist and `ibackup info`.
    pub fn values(&mut self) -> Result<Dictionary> {
        match self.lockdown.get_value(None, None)? {
            Value::Dictionary(d) => Ok(d),
            _ => Err(EngineError::Protocol(
                "GetValue answered with a non-dictionary".into(),
            )),
        }
    }

    pub fn domain(&mut self, domain: &str) -> Result<Dictionary> {
        match self.lockdown.get_value(Some(domain), None) {
            Ok(Value::Dictionary(d)) => Ok(d),
            Ok(_) => Ok(Dictionary::new()),
            Err(e) if is_lockdown_error(&e, LockdownError::MissingValue) => Ok(Dictionary::new()),
            Err(e) => Err(e.into()),
        }
    }

    /// Start a service and connect to it.
    pub fn service(&mut self, name: &str) -> Result<Box<dyn Stream>> {
        let escrow = self.pair.escrow_bag.clone();
        let info = self.lockdown.start_service(name, escrow)?;
        let stream = self.transport.connect(self.device.device_id, info.port)?;
        if info.ssl {
            let key =
                self.pair.host_private_key.as_deref().ok_or_else(|| {
                    EngineError::Protocol("pair record without a host key".into())
                })?;
            let config = tls::client_config(&self.pair.host_certificate, key)?;
            return Ok(Box::new(TlsStream::connect(stream, config)?));
        }
        Ok(stream)
    }
}

/// Is backup encryption on for this device (`WillEncrypt`)?
pub fn will_encrypt(session: &mut Session<'_>) -> Result<bool> {
    Ok(session
        .domain("com.apple.mobile.backup")?
        .bool_of("WillEncrypt")
        .unwrap_or(false))
}
