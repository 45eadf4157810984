//! The usbmuxd socket protocol (plist flavour, version 1).
//!
//! Each packet is a 16-byte little-endian header — total length, protocol
//! version, message type, tag — followed by an XML plist. Facts from
//! libusbmuxd `include/usbmuxd-proto.h` and `src/libusbmuxd.c`.
//! After a successful `Connect` the socket stops carrying usbmux packets and
//! becomes a byte pipe to the chosen port on the device.

use std::io::{Read, Write};

use plist::{Dictionary, Value};

use crate::error::{ProtoError, Result};
use crate::frame::read_exact_or_closed;
use crate::plistx::{self, dict, DictExt};

pub const HEADER_LEN: usize = 16;
pub const PLIST_VERSION: u32 = 1;
pub const MESSAGE_RESULT: u32 = 1;
pub const MESSAGE_PLIST: u32 = 8;
/// Larger than any real usbmux message (pair records are a few KiB).
pub const MAX_PACKET: u32 = 4 * 1024 * 1024;

/// The port lockdownd listens on, as seen through usbmux.
pub const LOCKDOWN_PORT: u16 = 62078;

/// Result numbers usbmuxd answers with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MuxResult {
    Ok = 0,
    BadCommand = 1,
    BadDevice = 2,
    ConnectionRefused = 3,
    BadVersion = 6,
}

impl MuxResult {
    pub fn from_number(n: u64) -> Option<Self> {
        Some(match n {
            0 => Self::Ok,
            1 => Self::BadCommand,
            2 => Self::BadDevice,
            3 => Self::ConnectionRefused,
            6 => Self::BadVersion,
            _ => return None,
        })
    }
}

/// One usbmux packet: header fields plus the plist payload.
#[derive(Debug, Clone, PartialEq)]
pub struct Packet {
    pub version: u32,
    pub message: u32,
    pub tag: u32,
    pub payload: Dictionary,
}

impl Packet {
    pub fn plist(tag: u32, payload: Dictionary) -> Self {
        Packet {
            version: PLIST_VERSION,
            message: MESSAGE_PLIST,
            tag,
            payload,
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        let body = plistx::to_xml(&Value::Dictionary(self.payload.clone()));
        let mut out = Vec::with_capacity(HEADER_LEN + body.len());
        out.extend_from_slice(&((HEADER_LEN + body.len()) as u32).to_le_bytes());
        out.extend_from_slice(&self.version.to_le_bytes());
        out.extend_from_slice(&self.message.to_le_bytes());
        out.extend_from_slice(&self.tag.to_le_bytes());
        out.extend_from_slice(&body);
        out
    }

    /// Read one packet. `Err(Closed)` on a clean end of stream.
    pub fn read<R: Read>(r: &mut R) -> Result<Packet> {
        let mut hdr = [0u8; HEADER_LEN];
        read_exact_or_closed(r, &mut hdr)?;
        let word = |i: usize| u32::from_le_bytes([hdr[i], hdr[i + 1], hdr[i + 2], hdr[i + 3]]);
        let (len, version, message, tag) = (word(0), word(4), word(8), word(12));
        if len < HEADER_LEN as u32 || len > MAX_PACKET {
            return Err(ProtoError::protocol(format!(
                "usbmux packet length {len} out of range"
            )));
        }
        let mut body = vec![0u8; len as usize - HEADER_LEN];
        r.read_exact(&mut body)?;
        if version != PLIST_VERSION || message != MESSAGE_PLIST {
            // The old binary protocol (version 0) is not spoken; the payload
            // is returned empty so the server can answer BadVersion.
            return Ok(Packet {
                version,
                message,
                tag,
                payload: Dictionary::new(),
            });
        }
        let payload = plistx::dict_from_bytes(&body)?;
        Ok(Packet {
            version,
            message,
            tag,
            payload,
        })
    }

    pub fn write<W: Write>(&self, w: &mut W) -> Result<()> {
        w.write_all(&self.encode())?;
        w.flush()?;
        Ok(())
    }
}

/// What a client asks usbmuxd for.
#[derive(Debug, Clone, PartialEq)]
pub enum Request {
    ListDevices,
    Listen,
    /// `port` in host byte order (on the wire it is big-endian inside the integer).
    Connect {
        device_id: u32,
        port: u16,
    },
    ReadBuid,
    ReadPairRecord {
        udid: String,
    },
    SavePairRecord {
        udid: String,
        record: Vec<u8>,
        device_id: Option<u32>,
    },
    DeletePairRecord {
        udid: String,
    },
    ListListeners,
    Other(String),
}

impl Request {
    pub fn message_type(&self) -> &str {
        match self {
            Request::ListDevices => "ListDevices",
            Request::Listen => "Listen",
            Request::Connect { .. } => "Connect",
            Request::ReadBuid => "ReadBUID",
            Request::ReadPairRecord { .. } => "ReadPairRecord",
            Request::SavePairRecord { .. } => "SavePairRecord",
            Request::DeletePairRecord { .. } => "DeletePairRecord",
            Request::ListListeners => "ListListeners",
            Request::Other(s) => s,
        }
    }

    pub fn to_payload(&self, prog_name: &str) -> Dictionary {
        let mut d = dict([
            ("MessageType", Value::from(self.message_type())),
            ("ClientVersionString", Value::from("ibackup")),
            ("ProgName", Value::from(prog_name)),
            ("kLibUSBMuxVersion", Value::from(3u64)),
        ]);
        match self {
            Request::Connect { device_id, port } => {
                d.insert("DeviceID".into(), Value::from(*device_id as u64));
                d.insert("PortNumber".into(), Value::from(port.to_be() as u64));
            }
            Request::ReadPairRecord { udid } | Request::DeletePairRecord { udid } => {
                d.insert("PairRecordID".into(), Value::from(udid.as_str()));
            }
            Request::SavePairRecord {
                udid,
                record,
                device_id,
            } => {
                d.insert("PairRecordID".into(), Value::from(udid.as_str()));
                d.insert("PairRecordData".into(), Value::Data(record.clone()));
                if let Some(id) = device_id {
                    d.insert("DeviceID".into(), Value::from(*id as u64));
                }
            }
            _ => {}
        }
        d
    }

    pub fn from_payload(d: &Dictionary) -> Result<Request> {
        let ty = d.req_str("MessageType")?;
        let udid = || -> Result<String> { Ok(d.req_str("PairRecordID")?.to_string()) };
        Ok(match ty {
            "ListDevices" => Request::ListDevices,
            "Listen" => Request::Listen,
            "ListListeners" => Request::ListListeners,
            "ReadBUID" => Request::ReadBuid,
            "Connect" => {
                let device_id = d
                    .u64_of("DeviceID")
                    .ok_or_else(|| ProtoError::protocol("Connect without DeviceID"))?
                    as u32;
                let raw = d
                    .u64_of("PortNumber")
                    .ok_or_else(|| ProtoError::protocol("Connect without PortNumber"))?;
                // libusbmuxd sends htons(port) as a plain integer.
                let port = u16::from_be(raw as u16);
                Request::Connect { device_id, port }
            }
            "ReadPairRecord" => Request::ReadPairRecord { udid: udid()? },
            "DeletePairRecord" => Request::DeletePairRecord { udid: udid()? },
            "SavePairRecord" => Request::SavePairRecord {
                udid: udid()?,
                record: d
                    .data_of("PairRecordData")
                    .ok_or_else(|| ProtoError::protocol("SavePairRecord without data"))?
                    .to_vec(),
                device_id: d.u64_of("DeviceID").map(|v| v as u32),
            },
            other => Request::Other(other.to_string()),
        })
    }
}

/// A device as usbmuxd describes it in `ListDevices` and `Attached`.
#[derive(Debug, Clone, PartialEq)]
pub struct DeviceRecord {
    pub device_id: u32,
    pub udid: String,
    pub product_id: u32,
    pub location_id: u32,
    /// `USB` or `Network`.
    pub connection_type: String,
}

impl DeviceRecord {
    pub fn is_network(&self) -> bool {
        self.connection_type == "Network"
    }

    pub fn properties(&self) -> Dictionary {
        let mut d = dict([
            ("ConnectionType", Value::from(self.connection_type.as_str())),
            ("DeviceID", Value::from(self.device_id as u64)),
            ("LocationID", Value::from(self.location_id as u64)),
            ("ProductID", Value::from(self.product_id as u64)),
            ("SerialNumber", Value::from(self.udid.as_str())),
        ]);
        if self.is_network() {
            // libusbmuxd requires a network address for Wi-Fi devices.
            d.insert(
                "EscapedFullServiceName".into(),
                Value::from(format!("{}._apple-mobdev2._tcp.local.", self.udid)),
            );
            d.insert("NetworkAddress".into(), Value::Data(vec![0x10, 0x02]));
        } else {
            d.insert("ConnectionSpeed".into(), Value::from(480_000_000u64));
            d.insert("USBSerialNumber".into(), Value::from(self.udid.as_str()));
        }
        d
    }

    /// The `Attached` message (also each entry of `DeviceList`).
    pub fn attached(&self) -> Dictionary {
        dict([
            ("DeviceID", Value::from(self.device_id as u64)),
            ("MessageType", Value::from("Attached")),
            ("Properties", Value::Dictionary(self.properties())),
        ])
    }

    pub fn from_properties(p: &Dictionary) -> Result<DeviceRecord> {
        Ok(DeviceRecord {
            device_id: p
                .u64_of("DeviceID")
                .ok_or_else(|| ProtoError::protocol("device without DeviceID"))?
                as u32,
            udid: p.req_str("SerialNumber")?.to_string(),
            product_id: p.u64_of("ProductID").unwrap_or(0) as u32,
            location_id: p.u64_of("LocationID").unwrap_or(0) as u32,
            connection_type: p.str_of("ConnectionType").unwrap_or("USB").to_string(),
        })
    }
}

/// `{MessageType: Result, Number: n}`.
pub fn result_payload(result: MuxResult) -> Dictionary {
    dict([
        ("MessageType", Value::from("Result")),
        ("Number", Value::from(result as u64)),
    ])
}

/// `{DeviceList: [...]}` as answered to `ListDevices`.
pub fn device_list_payload(devices: &[DeviceRecord]) -> Dictionary {
    dict([(
        "DeviceList",
        Value::Array(
            devices
                .iter()
                .map(|d| Value::Dictionary(d.attached()))
                .collect(),
        ),
    )])
}

pub fn detached_payload(device_id: u32) -> Dictionary {
    dict([
        ("DeviceID", Value::from(device_id as u64)),
        ("MessageType", Value::from("Detached")),
    ])
}

/// What a `Listen` connection reports.
#[derive(Debug, Clone, PartialEq)]
pub enum MuxEvent {
    Attached(DeviceRecord),
    Detached(u32),
    /// Another message (`Paired`, a future type): nothing to act on.
    Other(String),
}

/// Parse one message of a `Listen` connection.
pub fn parse_event(d: &Dictionary) -> Result<MuxEvent> {
    Ok(match d.str_of("MessageType") {
        Some("Attached") => MuxEvent::Attached(DeviceRecord::from_properties(
            d.dict_of("Properties")
                .ok_or_else(|| ProtoError::protocol("Attached without Properties"))?,
        )?),
        Some("Detached") => MuxEvent::Detached(
            d.u64_of("DeviceID")
                .ok_or_else(|| ProtoError::protocol("Detached without DeviceID"))?
                as u32,
        ),
        other => MuxEvent::Other(other.unwrap_or("").to_string()),
    })
}

/// Parse the answer to `ListDevices`.
pub fn parse_device_list(d: &Dictionary) -> Result<Vec<DeviceRecord>> {
    let list = d
        .get("DeviceList")
        .and_then(Value::as_array)
        .ok_or_else(|| ProtoError::protocol("ListDevices answer without DeviceList"))?;
    list.iter()
        .filter_map(Value::as_dictionary)
        .filter_map(|e| e.dict_of("Properties"))
        .map(DeviceRecord::from_properties)
        .collect()
}

/// Parse a `Result` answer's number.
pub fn parse_result(d: &Dictionary) -> Result<u64> {
    if d.str_of("MessageType") != Some("Result") {
        return Err(ProtoError::protocol("expected a Result message"));
    }
    d.u64_of("Number")
        .ok_or_else(|| ProtoError::protocol("Result without Number"))
}

/// Where the usbmuxd socket is: `USBMUXD_SOCKET_ADDRESS` syntax.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SocketAddress {
    Unix(std::path::PathBuf),
    Tcp(String),
}

impl SocketAddress {
    /// Parse `UNIX:/path`, `/path`, `HOST:PORT` or `[v6]:PORT`.
    pub fn parse(s: &str) -> Result<SocketAddress> {
        if let Some(p) = s.strip_prefix("UNIX:") {
            if p.is_empty() {
                return Err(ProtoError::protocol("empty UNIX socket path"));
            }
            return Ok(SocketAddress::Unix(p.into()));
        }
        if s.starts_with('/') || s.starts_with('.') {
            return Ok(SocketAddress::Unix(s.into()));
        }
        let (host, port) = s
            .rsplit_once(':')
            .ok_or_else(|| ProtoError::protocol(format!("bad usbmuxd address {s:?}")))?;
        let port: u16 =
            port.parse().ok().filter(|p| *p > 0).ok_or_else(|| {
                ProtoError::protocol(format!("bad port in usbmuxd address {s:?}"))
            })?;
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() {
            return Err(ProtoError::protocol(format!("bad usbmuxd address {s:?}")));
        }
        Ok(SocketAddress::Tcp(if host.contains(':') {
            format!("[{host}]:{port}")
        } else {
            format!("{host}:{port}")
        }))
    }

    /// From `USBMUXD_SOCKET_ADDRESS`, else the platform default.
    pub fn from_env() -> Result<SocketAddress> {
        match std::env::var("USBMUXD_SOCKET_ADDRESS") {
            Ok(s) if !s.is_empty() => SocketAddress::parse(&s),
            _ => Ok(SocketAddress::default_for_platform()),
        }
    }

    pub fn default_for_platform() -> SocketAddress {
        if cfg!(windows) {
            SocketAddress::Tcp("127.0.0.1:27015".into())
        } else {
            SocketAddress::Unix("/var/run/usbmuxd".into())
        }
    }
}

impl std::fmt::Display for SocketAddress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SocketAddress::Unix(p) => write!(f, "UNIX:{}", p.display()),
            SocketAddress::Tcp(a) => f.write_str(a),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packet_round_trip() {
        let p = Packet::plist(7, Request::ListDevices.to_payload("t"));
        let bytes = p.encode();
        assert_eq!(
            u32::from_le_bytes(bytes[0..4].try_into().unwrap()) as usize,
            bytes.len()
        );
        let back = Packet::read(&mut &bytes[..]).unwrap();
        assert_eq!(back, p);
        assert_eq!(
            Request::from_payload(&back.payload).unwrap(),
            Request::ListDevices
        );
    }

    #[test]
    fn connect_port_is_network_order_inside_the_integer() {
        let r = Request::Connect {
            device_id: 3,
            port: LOCKDOWN_PORT,
        };
        let d = r.to_payload("t");
        // 62078 = 0xF27E; htons on little-endian gives 0x7EF2 = 32498.
        assert_eq!(d.u64_of("PortNumber"), Some(0x7EF2));
        assert_eq!(Request::from_payload(&d).unwrap(), r);
    }

    #[test]
    fn pair_record_requests_round_trip() {
        for r in [
            Request::ReadPairRecord { udid: "U".into() },
            Request::DeletePairRecord { udid: "U".into() },
            Request::SavePairRecord {
                udid: "U".into(),
                record: vec![1, 2],
                device_id: Some(4),
            },
            Request::ReadBuid,
            Request::Listen,
        ] {
            assert_eq!(Request::from_payload(&r.to_payload("t")).unwrap(), r);
        }
        let mut d = Request::ReadBuid.to_payload("t");
        d.insert("MessageType".into(), Value::from("Frobnicate"));
        assert_eq!(
            Request::from_payload(&d).unwrap(),
            Request::Other("Frobnicate".into())
        );
        d.remove("MessageType");
        assert!(Request::from_payload(&d).is_err());
    }

    #[test]
    fn device_list_round_trip() {
        let devs = vec![
            DeviceRecord {
                device_id: 1,
                udid: "00008030-001D35093EF2402E".into(),
                product_id: 0x12a8,
                location_id: 0,
                connection_type: "USB".into(),
            },
            DeviceRecord {
                device_id: 2,
                udid: "abc".into(),
                product_id: 0,
                location_id: 0,
                connection_type: "Network".into(),
            },
        ];
        let back = parse_device_list(&device_list_payload(&devs)).unwrap();
        assert_eq!(back, devs);
        assert!(back[1].is_network());
    }

    #[test]
    fn bad_lengths_are_refused() {
        let mut bytes = Packet::plist(1, result_payload(MuxResult::Ok)).encode();
        bytes[0..4].copy_from_slice(&3u32.to_le_bytes());
        assert!(Packet::read(&mut &bytes[..]).is_err());
        bytes[0..4].copy_from_slice(&(MAX_PACKET + 1).to_le_bytes());
        assert!(Packet::read(&mut &bytes[..]).is_err());
        assert!(matches!(
            Packet::read(&mut &b""[..]),
            Err(ProtoError::Closed)
        ));
    }

    #[test]
    fn socket_address_syntax() {
        assert_eq!(
            SocketAddress::parse("UNIX:/tmp/m").unwrap(),
            SocketAddress::Unix("/tmp/m".into())
        );
        assert_eq!(
            SocketAddress::parse("/tmp/m").unwrap(),
            SocketAddress::Unix("/tmp/m".into())
        );
        assert_eq!(
            SocketAddress::parse("127.0.0.1:27015").unwrap(),
            SocketAddress::Tcp("127.0.0.1:27015".into())
        );
        assert_eq!(
            SocketAddress::parse("[::1]:5").unwrap(),
            SocketAddress::Tcp("[::1]:5".into())
        );
        for bad in ["UNIX:", "host", "host:0", "host:x", ":5"] {
            assert!(SocketAddress::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn listen_events_round_trip() {
        let d = DeviceRecord {
            device_id: 7,
            udid: "U".into(),
            product_id: 1,
            location_id: 2,
            connection_type: "USB".into(),
        };
        assert_eq!(parse_event(&d.attached()).unwrap(), MuxEvent::Attached(d));
        assert_eq!(
            parse_event(&detached_payload(7)).unwrap(),
            MuxEvent::Detached(7)
        );
        assert!(matches!(
            parse_event(&dict([("MessageType", Value::from("Paired"))])).unwrap(),
            MuxEvent::Other(_)
        ));
        assert!(parse_event(&dict([("MessageType", Value::from("Detached"))])).is_err());
    }
}
