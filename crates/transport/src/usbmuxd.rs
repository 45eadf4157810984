//! The host side of usbmuxd's socket: listing devices, plug events, pair
//! records, the BUID, and `Connect` to a device port.

use std::net::TcpStream;
#[cfg(unix)]
use std::os::unix::net::UnixStream;
use std::time::Duration;

use plist::{Dictionary, Value};

use ibackup_proto::error::{ProtoError, Result};
use ibackup_proto::pairing::PairRecord;
use ibackup_proto::plistx::DictExt;
use ibackup_proto::usbmux::{self, DeviceRecord, MuxResult, Packet, Request, SocketAddress};

use crate::cancel::Cancel;
use crate::stream::Stream;
use crate::{DeviceEvents, Transport};

impl Transport for MuxClient {
    fn describe(&self) -> String {
        format!("usbmuxd at {}", self.addr)
    }
    fn cancel(&self) -> &Cancel {
        &self.cancel
    }
    fn listen(&self) -> Result<Box<dyn DeviceEvents>> {
        Ok(Box::new(MuxClient::listen(self)?))
    }
    fn devices(&self) -> Result<Vec<DeviceRecord>> {
        MuxClient::devices(self)
    }
    fn connect(&self, device_id: u32, port: u16) -> Result<Box<dyn Stream>> {
        MuxClient::connect(self, device_id, port)
    }
    fn buid(&self) -> Result<String> {
        MuxClient::buid(self)
    }
    fn read_pair_record(&self, udid: &str) -> Result<Option<PairRecord>> {
        MuxClient::read_pair_record(self, udid)
    }
    fn save_pair_record(&self, udid: &str, device_id: u32, rec: &PairRecord) -> Result<()> {
        MuxClient::save_pair_record(self, udid, device_id, rec)
    }
    fn delete_pair_record(&self, udid: &str) -> Result<()> {
        MuxClient::delete_pair_record(self, udid)
    }
}

/// usbmuxd, reached at one address. Each request uses a fresh connection,
/// as libusbmuxd does.
#[derive(Debug, Clone)]
pub struct MuxClient {
    pub addr: SocketAddress,
    pub prog_name: String,
    /// How long a read or write on a connection (to usbmuxd, or through it
    /// to the device) may wait before it fails (`WouldBlock` or
    /// `TimedOut`, as the system reports it): a device
    /// that stops answering without hanging up must not hold a backup (and
    /// its lock) for ever. `None` waits for ever. Plug events (`listen`)
    /// never time out.
    pub stall_timeout: Option<Duration>,
    /// Every connection opened is registered here, so a stop hangs it up.
    pub cancel: Cancel,
}

/// An open `Listen` connection.
pub struct MuxEvents {
    s: Box<dyn Stream>,
}

impl DeviceEvents for MuxEvents {
    /// The next event; an error when usbmuxd goes away.
    fn next_event(&mut self) -> Result<usbmux::MuxEvent> {
        usbmux::parse_event(&Packet::read(&mut self.s)?.payload)
    }
}

impl MuxClient {
    pub fn new(addr: SocketAddress) -> Self {
        MuxClient {
            addr,
            prog_name: "ibackup".into(),
            stall_timeout: None,
            cancel: Cancel::new(),
        }
    }

    pub fn with_stall_timeout(self, stall_timeout: Option<Duration>) -> Self {
        MuxClient {
            stall_timeout,
            ..self
        }
    }

    /// Connections register with `cancel` (the caller's stop handle).
    pub fn with_cancel(self, cancel: Cancel) -> Self {
        MuxClient { cancel, ..self }
    }

    fn open(&self) -> Result<Box<dyn Stream>> {
        self.open_waiting(self.stall_timeout)
    }

    fn open_waiting(&self, limit: Option<Duration>) -> Result<Box<dyn Stream>> {
        Ok(match &self.addr {
            SocketAddress::Tcp(a) => {
                let s = TcpStream::connect(a)?;
                let _ = s.set_nodelay(true);
                s.set_read_timeout(limit)?;
                s.set_write_timeout(limit)?;
                Box::new(self.cancel.watch(s)?)
            }
            #[cfg(unix)]
            SocketAddress::Unix(p) => {
                let s = UnixStream::connect(p)?;
                s.set_read_timeout(limit)?;
                s.set_write_timeout(limit)?;
                Box::new(self.cancel.watch(s)?)
            }
            #[cfg(not(unix))]
            SocketAddress::Unix(_) => {
                return Err(ProtoError::protocol("Unix sockets need a Unix system"))
            }
        })
    }

    fn exchange(&self, s: &mut Box<dyn Stream>, req: &Request) -> Result<Dictionary> {
        Packet::plist(1, req.to_payload(&self.prog_name)).write(s)?;
        Ok(Packet::read(s)?.payload)
    }

    fn request(&self, req: &Request) -> Result<Dictionary> {
        let mut s = self.open()?;
        self.exchange(&mut s, req)
    }

    fn check(req: &Request, d: &Dictionary) -> Result<()> {
        match usbmux::parse_result(d) {
            Ok(0) => Ok(()),
            Ok(n) => Err(ProtoError::Mux {
                request: req.message_type().to_string(),
                result: n,
            }),
            Err(e) => Err(e),
        }
    }

    /// Subscribe to plug and unplug events (`Listen`). The connection stays
    /// open; read events with [`MuxEvents::next_event`].
    pub fn listen(&self) -> Result<MuxEvents> {
        let mut s = self.open_waiting(None)?;
        let d = self.exchange(&mut s, &Request::Listen)?;
        Self::check(&Request::Listen, &d)?;
        Ok(MuxEvents { s })
    }

    pub fn devices(&self) -> Result<Vec<DeviceRecord>> {
        usbmux::parse_device_list(&self.request(&Request::ListDevices)?)
    }

    pub fn buid(&self) -> Result<String> {
        Ok(self
            .request(&Request::ReadBuid)?
            .req_str("BUID")?
            .to_string())
    }

    /// The pair record usbmuxd keeps for `udid`, if any.
    pub fn read_pair_record(&self, udid: &str) -> Result<Option<PairRecord>> {
        let d = self.request(&Request::ReadPairRecord { udid: udid.into() })?;
        match d.data_of("PairRecordData") {
            Some(bytes) => Ok(Some(PairRecord::from_dict(
                &ibackup_proto::plistx::dict_from_bytes(bytes)?,
            )?)),
            None => Ok(None),
        }
    }

    pub fn save_pair_record(&self, udid: &str, device_id: u32, rec: &PairRecord) -> Result<()> {
        let req = Request::SavePairRecord {
            udid: udid.into(),
            record: ibackup_proto::plistx::to_xml(&Value::Dictionary(rec.to_dict())),
            device_id: Some(device_id),
        };
        Self::check(&req, &self.request(&req)?)
    }

    pub fn delete_pair_record(&self, udid: &str) -> Result<()> {
        let req = Request::DeletePairRecord { udid: udid.into() };
        Self::check(&req, &self.request(&req)?)
    }

    /// A pipe to `port` on the device.
    pub fn connect(&self, device_id: u32, port: u16) -> Result<Box<dyn Stream>> {
        let mut s = self.open()?;
        let req = Request::Connect { device_id, port };
        let d = self.exchange(&mut s, &req)?;
        match usbmux::parse_result(&d)? {
            0 => Ok(s),
            n if n == MuxResult::ConnectionRefused as u64 => Err(ProtoError::Mux {
                request: format!("Connect to port {port}"),
                result: n,
            }),
            n => Err(ProtoError::Mux {
                request: "Connect".into(),
                result: n,
            }),
        }
    }
}
