//! The usbmuxd side: lists the simulated devices, keeps pair records and
//! the system BUID, and turns a `Connect` into a pipe to lockdownd or to a
//! service port the device handed out.

use std::io::{Read, Write};
use std::net::TcpListener;
#[cfg(unix)]
use std::os::unix::net::UnixListener;
use std::path::PathBuf;
use std::sync::Arc;
use std::thread;

use ibackup_proto::usbmux::{self, DeviceRecord, MuxResult, Packet, Request, SocketAddress};
use ibackup_proto::ProtoError;
use plist::{Dictionary, Value};

use crate::conn::Conn;
use crate::device::{set_private, write_atomic, Device};
use crate::error::{Result, SimError};
use crate::{lockdownd, services};

/// Everything a connection handler needs.
pub struct Mux {
    pub devices: Vec<Arc<Device>>,
    /// Where usbmuxd keeps its own state (the BUID, pair records).
    pub state_dir: PathBuf,
}

impl Mux {
    pub fn new(devices: Vec<Arc<Device>>) -> Result<Arc<Mux>> {
        let first = devices
            .first()
            .ok_or_else(|| SimError::Config("no devices to serve".into()))?;
        // usbmuxd's own state lives with the first device: one host, one BUID.
        let state_dir = first.state_dir().join("usbmuxd");
        std::fs::create_dir_all(&state_dir)?;
        Ok(Arc::new(Mux { devices, state_dir }))
    }

    pub fn buid(&self) -> Result<String> {
        let p = self.state_dir.join("SystemBUID");
        if let Ok(s) = std::fs::read_to_string(&p) {
            return Ok(s.trim().to_string());
        }
        let b = random_uuid();
        write_atomic(&p, b.as_bytes())?;
        Ok(b)
    }

    fn record_path(&self, udid: &str) -> Option<PathBuf> {
        let d = self.devices.iter().find(|d| d.udid() == udid)?;
        Some(d.state_dir().join("usbmuxd_pair_record.plist"))
    }

    fn device_records(&self) -> Vec<DeviceRecord> {
        self.devices
            .iter()
            .filter(|d| d.is_attached())
            .map(|d| {
                let c = d.cfg();
                DeviceRecord {
                    device_id: d.device_id,
                    udid: c.udid,
                    product_id: 0x12a8,
                    location_id: 0x0010_0000 + d.device_id,
                    connection_type: if c.connection == "Network" {
                        "Network".into()
                    } else {
                        "USB".into()
                    },
                }
            })
            .collect()
    }
}

pub use ibackup_proto::pairing::random_uuid;

/// Serve until the process is killed.
pub fn serve(addr: &SocketAddress, mux: Arc<Mux>) -> Result<()> {
    match addr {
        SocketAddress::Tcp(a) => {
            let l = TcpListener::bind(a)?;
            log::info!("usbmuxd listening on {}", l.local_addr()?);
            serve_tcp(l, mux);
        }
        #[cfg(unix)]
        SocketAddress::Unix(p) => {
            let _ = std::fs::remove_file(p);
            let l = UnixListener::bind(p)?;
            log::info!("usbmuxd listening on UNIX:{}", p.display());
            for s in l.incoming() {
                spawn(Box::new(s?), mux.clone());
            }
        }
        #[cfg(not(unix))]
        SocketAddress::Unix(_) => {
            return Err(SimError::Config("Unix sockets need a Unix system".into()))
        }
    }
    Ok(())
}

/// Accept connections on a bound listener until it fails.
pub fn serve_tcp(listener: TcpListener, mux: Arc<Mux>) {
    for s in listener.incoming() {
        let Ok(s) = s else { continue };
        let _ = s.set_nodelay(true);
        spawn(Box::new(s), mux.clone());
    }
}

/// Serve on an ephemeral loopback port in a background thread; returns the
/// `USBMUXD_SOCKET_ADDRESS` value for clients.
pub fn spawn_loopback(mux: Arc<Mux>) -> Result<String> {
    let l = TcpListener::bind("127.0.0.1:0")?;
    let addr = l.local_addr()?.to_string();
    thread::spawn(move || serve_tcp(l, mux));
    Ok(addr)
}

fn spawn(conn: Box<dyn Conn>, mux: Arc<Mux>) {
    thread::spawn(move || match handle(conn, &mux) {
        Ok(()) | Err(SimError::Proto(ProtoError::Closed)) => {}
        Err(e) => log::info!("connection ended: {e}"),
    });
}

fn reply<W: Write>(w: &mut W, tag: u32, payload: Dictionary) -> Result<()> {
    Packet::plist(tag, payload).write(w)?;
    Ok(())
}

fn handle(mut conn: Box<dyn Conn>, mux: &Mux) -> Result<()> {
    loop {
        let pkt = Packet::read(&mut conn)?;
        if pkt.version != usbmux::PLIST_VERSION || pkt.message != usbmux::MESSAGE_PLIST {
            // Binary protocol: answer in kind with BadVersion, as usbmuxd does.
            let mut out = Vec::new();
            out.extend_from_slice(&20u32.to_le_bytes());
            out.extend_from_slice(&0u32.to_le_bytes());
            out.extend_from_slice(&usbmux::MESSAGE_RESULT.to_le_bytes());
            out.extend_from_slice(&pkt.tag.to_le_bytes());
            out.extend_from_slice(&(MuxResult::BadVersion as u32).to_le_bytes());
            conn.write_all(&out)?;
            continue;
        }
        let req = match Request::from_payload(&pkt.payload) {
            Ok(r) => r,
            Err(_) => {
                reply(
                    &mut conn,
                    pkt.tag,
                    usbmux::result_payload(MuxResult::BadCommand),
                )?;
                continue;
            }
        };
        log::debug!("usbmuxd: {}", req.message_type());
        match req {
            Request::ListDevices => reply(
                &mut conn,
                pkt.tag,
                usbmux::device_list_payload(&mux.device_records()),
            )?,
            Request::Listen => {
                reply(&mut conn, pkt.tag, usbmux::result_payload(MuxResult::Ok))?;
                // Tell the listener about every plug and unplug (device.toml
                // `attached`) until it hangs up.
                let mut shown: Vec<DeviceRecord> = Vec::new();
                conn.set_read_timeout(Some(std::time::Duration::from_millis(200)))?;
                let mut sink = [0u8; 256];
                loop {
                    let now = mux.device_records();
                    for d in shown.iter().filter(|d| !now.contains(d)) {
                        reply(&mut conn, 0, usbmux::detached_payload(d.device_id))?;
                    }
                    for d in now.iter().filter(|d| !shown.contains(d)) {
                        reply(&mut conn, 0, d.attached())?;
                    }
                    conn.flush()?;
                    shown = now;
                    match conn.read(&mut sink) {
                        Ok(0) => return Ok(()),
                        Ok(_) => {}
                        Err(e)
                            if matches!(
                                e.kind(),
                                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                            ) => {}
                        Err(e) => return Err(e.into()),
                    }
                }
            }
            Request::ReadBuid => {
                let mut d = Dictionary::new();
                d.insert("BUID".into(), Value::from(mux.buid()?));
                reply(&mut conn, pkt.tag, d)?;
            }
            Request::ReadPairRecord { udid } => match mux.record_path(&udid).filter(|p| p.exists())
            {
                Some(p) => {
                    let mut d = Dictionary::new();
                    d.insert("PairRecordData".into(), Value::Data(std::fs::read(p)?));
                    reply(&mut conn, pkt.tag, d)?;
                }
                None => reply(
                    &mut conn,
                    pkt.tag,
                    usbmux::result_payload(MuxResult::BadDevice),
                )?,
            },
            Request::SavePairRecord { udid, record, .. } => {
                let ok = match mux.record_path(&udid) {
                    Some(p) if ibackup_proto::plistx::dict_from_bytes(&record).is_ok() => {
                        write_atomic(&p, &record)?;
                        set_private(&p);
                        true
                    }
                    _ => false,
                };
                let r = if ok {
                    MuxResult::Ok
                } else {
                    MuxResult::BadDevice
                };
                reply(&mut conn, pkt.tag, usbmux::result_payload(r))?;
            }
            Request::DeletePairRecord { udid } => {
                if let Some(p) = mux.record_path(&udid) {
                    let _ = std::fs::remove_file(p);
                }
                reply(&mut conn, pkt.tag, usbmux::result_payload(MuxResult::Ok))?;
            }
            Request::Connect { device_id, port } => {
                let Some(dev) = mux
                    .devices
                    .iter()
                    .find(|d| d.device_id == device_id && d.is_attached())
                    .cloned()
                else {
                    reply(
                        &mut conn,
                        pkt.tag,
                        usbmux::result_payload(MuxResult::BadDevice),
                    )?;
                    continue;
                };
                if port == usbmux::LOCKDOWN_PORT {
                    reply(&mut conn, pkt.tag, usbmux::result_payload(MuxResult::Ok))?;
                    return lockdownd::serve(conn, dev);
                }
                match dev.take_service(port) {
                    Some(service) => {
                        reply(&mut conn, pkt.tag, usbmux::result_payload(MuxResult::Ok))?;
                        return services::serve(&service, conn, dev);
                    }
                    None => reply(
                        &mut conn,
                        pkt.tag,
                        usbmux::result_payload(MuxResult::ConnectionRefused),
                    )?,
                }
            }
            Request::ListListeners | Request::Other(_) => reply(
                &mut conn,
                pkt.tag,
                usbmux::result_payload(MuxResult::BadCommand),
            )?,
        }
    }
}
