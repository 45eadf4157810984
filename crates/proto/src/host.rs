//! The host side: talking to usbmuxd and to a device's lockdownd.
//!
//! Blocking and generic over the stream, like the rest of this crate's I/O
//! helpers; the engine runs each session on its own thread.

use std::fs::File;
use std::io::{BufRead, Read, Write};
use std::net::TcpStream;
#[cfg(target_os = "linux")]
use std::os::fd::AsFd;
#[cfg(unix)]
use std::os::unix::net::UnixStream;
use std::time::Duration;

use plist::{Dictionary, Value};

use crate::error::{ProtoError, Result};
use crate::frame;
use crate::interrupt::STOP;
use crate::lockdown::{self, LockdownError, Request as LdRequest};
use crate::pairing::PairRecord;
use crate::plistx::DictExt;
use crate::receive::{copy_through, WriteOutcome, SPLICE_MIN};
use crate::tls::{self, TlsStream};
use crate::usbmux::{self, DeviceRecord, MuxResult, Packet, Request, SocketAddress};

/// A byte stream to usbmuxd or, after `Connect`, to a device port.
pub trait Stream: Read + Write + Send {
    /// Take the next `len` bytes of the stream and write them to `out`, or
    /// drop them when `out` is `None`. A failed write does not stop the
    /// reading: it is returned once all `len` bytes are taken, so the
    /// stream stays in step; `Err` is a failure to read. See
    /// [`receive`](crate::receive) for how large blocks avoid a copy.
    fn receive_into(
        &mut self,
        out: Option<&mut File>,
        len: u64,
        buf: &mut [u8],
    ) -> std::io::Result<WriteOutcome> {
        copy_through(self, out, len, buf)
    }
}

/// A plain socket: on Linux its large blocks are spliced
/// ([`receive`](crate::receive)); elsewhere the trait's default reads them.
macro_rules! socket_stream {
    ($socket:ty) => {
        impl Stream for $socket {
            #[cfg(target_os = "linux")]
            fn receive_into(
                &mut self,
                out: Option<&mut File>,
                len: u64,
                buf: &mut [u8],
            ) -> std::io::Result<WriteOutcome> {
                let s: &$socket = self;
                crate::receive::splice::receive(s.as_fd(), &mut &*s, out, len, buf)
            }
        }
    };
}

socket_stream!(TcpStream);
#[cfg(unix)]
socket_stream!(UnixStream);

impl Stream for Box<dyn Stream> {
    fn receive_into(
        &mut self,
        out: Option<&mut File>,
        len: u64,
        buf: &mut [u8],
    ) -> std::io::Result<WriteOutcome> {
        (**self).receive_into(out, len, buf)
    }
}

impl<S: Stream> Stream for TlsStream<S> {}

/// Buffers reads (many small headers arrive between file blocks); writes
/// pass straight through.
pub struct BufStream<S: Read + Write> {
    inner: std::io::BufReader<S>,
    /// The last block taken by `receive_into` was large, so the next is
    /// likely large too: read only what is asked for (a block's header)
    /// rather than filling the buffer with the block itself, which
    /// `receive_into` can then take whole without a copy.
    lean: bool,
}

impl<S: Read + Write> BufStream<S> {
    pub fn new(s: S) -> Self {
        BufStream {
            inner: std::io::BufReader::with_capacity(256 * 1024, s),
            lean: false,
        }
    }
}

impl<S: Read + Write> Read for BufStream<S> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.lean && self.inner.buffer().is_empty() {
            return self.inner.get_mut().read(buf);
        }
        self.inner.read(buf)
    }
}

impl<S: Read + Write> Write for BufStream<S> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.inner.get_mut().write(buf)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.get_mut().flush()
    }
}

impl<S: Stream> Stream for BufStream<S> {
    /// What is already buffered goes first; a large remainder is taken by
    /// the inner stream directly (on Linux, without a copy), a small one
    /// through the buffer.
    fn receive_into(
        &mut self,
        mut out: Option<&mut File>,
        len: u64,
        buf: &mut [u8],
    ) -> std::io::Result<WriteOutcome> {
        let have = (self.inner.buffer().len() as u64).min(len) as usize;
        let mut failed = None;
        if have > 0 {
            if let Some(f) = out.as_deref_mut() {
                failed = f.write_all(&self.inner.buffer()[..have]).err();
            }
            self.inner.consume(have);
        }
        let rest = len - have as u64;
        let out = if failed.is_none() { out } else { None };
        self.lean = len >= SPLICE_MIN;
        let later = if rest >= SPLICE_MIN {
            self.inner.get_mut().receive_into(out, rest, buf)?
        } else {
            copy_through(&mut self.inner, out, rest, buf)?
        };
        Ok(failed.or(later))
    }
}

/// How the host reaches devices: through usbmuxd today ([`MuxClient`]),
/// or directly over USB later. The engine sees only this.
pub trait Transport: Send + Sync {
    /// Where devices are reached, for messages.
    fn describe(&self) -> String;
    fn devices(&self) -> Result<Vec<DeviceRecord>>;
    /// A byte pipe to `port` on the device.
    fn connect(&self, device_id: u32, port: u16) -> Result<Box<dyn Stream>>;
    /// The host's system BUID, sent with pair records.
    fn buid(&self) -> Result<String>;
    fn read_pair_record(&self, udid: &str) -> Result<Option<PairRecord>>;
    fn save_pair_record(&self, udid: &str, device_id: u32, rec: &PairRecord) -> Result<()>;
    fn delete_pair_record(&self, udid: &str) -> Result<()>;
}

impl Transport for MuxClient {
    fn describe(&self) -> String {
        format!("usbmuxd at {}", self.addr)
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
}

/// An open `Listen` connection.
pub struct MuxEvents {
    s: Box<dyn Stream>,
}

impl MuxEvents {
    /// The next event; an error when usbmuxd goes away.
    pub fn next_event(&mut self) -> Result<usbmux::MuxEvent> {
        usbmux::parse_event(&Packet::read(&mut self.s)?.payload)
    }
}

impl MuxClient {
    pub fn new(addr: SocketAddress) -> Self {
        MuxClient {
            addr,
            prog_name: "ibackup".into(),
            stall_timeout: None,
        }
    }

    pub fn with_stall_timeout(self, stall_timeout: Option<Duration>) -> Self {
        MuxClient {
            stall_timeout,
            ..self
        }
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
                Box::new(STOP.watch(s)?)
            }
            #[cfg(unix)]
            SocketAddress::Unix(p) => {
                let s = UnixStream::connect(p)?;
                s.set_read_timeout(limit)?;
                s.set_write_timeout(limit)?;
                Box::new(STOP.watch(s)?)
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
                &crate::plistx::dict_from_bytes(bytes)?,
            )?)),
            None => Ok(None),
        }
    }

    pub fn save_pair_record(&self, udid: &str, device_id: u32, rec: &PairRecord) -> Result<()> {
        let req = Request::SavePairRecord {
            udid: udid.into(),
            record: crate::plistx::to_xml(&Value::Dictionary(rec.to_dict())),
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

enum Link {
    Plain(Box<dyn Stream>),
    Tls(Box<TlsStream<Box<dyn Stream>>>),
    Gone,
}

impl Link {
    fn io(&mut self) -> &mut dyn Stream {
        match self {
            Link::Plain(s) => s,
            Link::Tls(t) => t.as_mut(),
            Link::Gone => unreachable!("link used during a switch"),
        }
    }
}

/// A started service: where to connect and whether to speak TLS there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceInfo {
    pub port: u16,
    pub ssl: bool,
}

/// A lockdownd connection.
pub struct LockdownClient {
    link: Link,
    label: String,
    session: Option<String>,
}

impl LockdownClient {
    pub fn new(stream: Box<dyn Stream>, label: &str) -> Self {
        LockdownClient {
            link: Link::Plain(stream),
            label: label.into(),
            session: None,
        }
    }

    /// Send one request and return the answer, or the device's error name.
    pub fn request(&mut self, req: &LdRequest) -> Result<Dictionary> {
        let io = self.link.io();
        frame::write_xml(io, &Value::Dictionary(req.encode(&self.label)))?;
        let answer = match frame::read_plist(io)? {
            Value::Dictionary(d) => d,
            _ => {
                return Err(ProtoError::protocol(
                    "lockdownd answered with a non-dictionary",
                ))
            }
        };
        lockdown::check_response(req.name(), answer).map_err(|e| ProtoError::Lockdown {
            request: req.name().to_string(),
            error: match e {
                lockdown::ResponseError::Device(s) => s,
                lockdown::ResponseError::Mismatch => "answer to another request".into(),
            },
        })
    }

    pub fn query_type(&mut self) -> Result<String> {
        Ok(self
            .request(&LdRequest::QueryType)?
            .req_str("Type")?
            .to_string())
    }

    pub fn get_value(&mut self, domain: Option<&str>, key: Option<&str>) -> Result<Value> {
        let d = self.request(&LdRequest::GetValue {
            domain: domain.map(str::to_string),
            key: key.map(str::to_string),
        })?;
        d.get("Value")
            .cloned()
            .ok_or_else(|| ProtoError::protocol("GetValue answer without Value"))
    }

    /// Ask the device to trust this host. `PairingDialogResponsePending`
    /// means the user has not tapped Trust yet; the caller retries.
    pub fn pair(&mut self, rec: &PairRecord) -> Result<Option<Vec<u8>>> {
        let mut options = Dictionary::new();
        options.insert("ExtendedPairingErrors".into(), Value::Boolean(true));
        let d = self.request(&LdRequest::Pair {
            record: rec.public_dict(),
            options,
        })?;
        Ok(d.data_of("EscrowBag").map(<[u8]>::to_vec))
    }

    /// Open a session and switch to TLS with the pair record's host identity.
    pub fn start_session(&mut self, rec: &PairRecord) -> Result<()> {
        let d = self.request(&LdRequest::StartSession {
            host_id: rec.host_id.clone(),
            system_buid: Some(rec.system_buid.clone()),
        })?;
        self.session = d.str_of("SessionID").map(str::to_string);
        if d.bool_of("EnableSessionSSL").unwrap_or(false) {
            let key = rec
                .host_private_key
                .as_deref()
                .ok_or_else(|| ProtoError::Crypto("pair record without HostPrivateKey".into()))?;
            let config = tls::client_config(&rec.host_certificate, key)?;
            let Link::Plain(s) = std::mem::replace(&mut self.link, Link::Gone) else {
                return Err(ProtoError::protocol("session already encrypted"));
            };
            self.link = Link::Tls(Box::new(TlsStream::connect(s, config)?));
        }
        Ok(())
    }

    pub fn start_service(
        &mut self,
        service: &str,
        escrow_bag: Option<Vec<u8>>,
    ) -> Result<ServiceInfo> {
        let d = self.request(&LdRequest::StartService {
            service: service.into(),
            escrow_bag,
        })?;
        let port = d
            .u64_of("Port")
            .filter(|p| *p > 0 && *p <= u16::MAX as u64)
            .ok_or_else(|| ProtoError::protocol("StartService without a valid Port"))?;
        Ok(ServiceInfo {
            port: port as u16,
            ssl: d.bool_of("EnableServiceSSL").unwrap_or(false),
        })
    }

    /// Ask the device to forget this host.
    pub fn unpair(&mut self, rec: &PairRecord) -> Result<()> {
        self.request(&LdRequest::Unpair {
            record: rec.public_dict(),
        })?;
        Ok(())
    }

    pub fn has_session(&self) -> bool {
        self.session.is_some()
    }
}

/// Whether an error is lockdownd saying `e`.
pub fn is_lockdown_error(err: &ProtoError, e: LockdownError) -> bool {
    matches!(err, ProtoError::Lockdown { error, .. } if error == e.as_str())
}
