//! mobilebackup2: the requests above DeviceLink, and the raw file stream.
//!
//! Requests travel as `DLMessageProcessMessage` dictionaries with a
//! `MessageName` (Hello, Backup, Restore, Info, List, ChangePassword). File
//! contents travel outside plists, as a raw stream after
//! `DLMessageUploadFiles` (device → host) or in answer to
//! `DLMessageDownloadFiles` (host → device):
//!
//! ```text
//! per file:  u32 BE len, device path   (upload only)
//!            u32 BE len, backup path
//!            blocks: u32 BE (1 + n), u8 code, n bytes
//!              code 0x0C data, 0x00 end of file, 0x0B remote error text,
//!              0x06 local error text
//! end:       u32 0
//! ```
//! (libimobiledevice `tools/idevicebackup2.c` `mb2_handle_send_file`,
//! `mb2_handle_receive_files`; pymobiledevice3 `device_link.py`.)

use std::io::{Read, Write};

use plist::{Dictionary, Value};

use crate::error::{ProtoError, Result};
use crate::plistx::{dict, DictExt};

pub const SERVICE_NAME: &str = "com.apple.mobilebackup2";
pub const PROTOCOL_VERSIONS: [f64; 2] = [2.0, 2.1];

pub const CODE_SUCCESS: u8 = 0x00;
pub const CODE_ERROR_LOCAL: u8 = 0x06;
pub const CODE_ERROR_REMOTE: u8 = 0x0B;
pub const CODE_FILE_DATA: u8 = 0x0C;

/// libimobiledevice refuses longer names (`mb2_receive_filename`).
pub const MAX_NAME_LEN: u32 = 4096;
/// Largest block we accept. Devices and hosts send 32 KiB to a few MiB.
pub const MAX_BLOCK_LEN: u32 = 64 * 1024 * 1024;

/// Device error codes carried in a final `ProcessMessage` (`ErrorCode`).
/// Values seen in libimobiledevice and pymobiledevice3 and in MBErrorDomain logs.
pub mod error_code {
    pub const SUCCESS: u64 = 0;
    pub const INSUFFICIENT_DISK_SPACE: u64 = 105;
    pub const MISSING_FILES: u64 = 205;
    pub const UNSUPPORTED_VERSION: u64 = 203;
    pub const BACKUP_STATE_EMPTY: u64 = 204;
    pub const INVALID_PASSWORD: u64 = 207;
    pub const FIND_MY_ENABLED: u64 = 211;
    /// A session is already running (the device allows one backup or restore at a time).
    pub const BUSY: u64 = 102;
}

/// A mobilebackup2 request sent by the host.
#[derive(Debug, Clone, PartialEq)]
pub struct Mb2Request {
    pub name: String,
    pub target: Option<String>,
    pub source: Option<String>,
    pub options: Dictionary,
    /// Everything else in the message (e.g. `NewPassword`, `OldPassword`).
    pub extra: Dictionary,
}

impl Mb2Request {
    /// `Backup` of the device `udid` into the host folder of the same name.
    pub fn backup(udid: &str, force_full: bool) -> Mb2Request {
        let mut options = Dictionary::new();
        if force_full {
            options.insert("ForceFullBackup".into(), Value::Boolean(true));
        }
        Mb2Request {
            name: "Backup".into(),
            target: Some(udid.into()),
            source: Some(udid.into()),
            options,
            extra: Dictionary::new(),
        }
    }

    pub fn decode(d: &Dictionary) -> Result<Mb2Request> {
        let name = d.req_str("MessageName")?.to_string();
        let mut extra = d.clone();
        for k in [
            "MessageName",
            "TargetIdentifier",
            "SourceIdentifier",
            "Options",
        ] {
            extra.remove(k);
        }
        Ok(Mb2Request {
            name,
            target: d.str_of("TargetIdentifier").map(str::to_string),
            source: d.str_of("SourceIdentifier").map(str::to_string),
            options: d.dict_of("Options").cloned().unwrap_or_default(),
            extra,
        })
    }

    pub fn encode(&self) -> Dictionary {
        let mut d = dict([("MessageName", Value::from(self.name.as_str()))]);
        if let Some(t) = &self.target {
            d.insert("TargetIdentifier".into(), Value::from(t.as_str()));
        }
        if let Some(s) = &self.source {
            d.insert("SourceIdentifier".into(), Value::from(s.as_str()));
        }
        if !self.options.is_empty() {
            d.insert("Options".into(), Value::Dictionary(self.options.clone()));
        }
        d.extend(self.extra.clone());
        d
    }
}

/// The answer to Hello: `{MessageName: Response, ErrorCode: 0, ProtocolVersion: 2.1}`
/// (libimobiledevice `mobilebackup2_version_exchange` requires the name and
/// an unsigned ErrorCode).
pub fn hello_response(client_versions: &[f64]) -> Dictionary {
    let best = PROTOCOL_VERSIONS
        .iter()
        .rev()
        .find(|v| client_versions.iter().any(|c| (c - **v).abs() < 1e-9));
    match best {
        Some(v) => dict([
            ("MessageName", Value::from("Response")),
            ("ErrorCode", Value::from(0u64)),
            ("ProtocolVersion", Value::Real(*v)),
        ]),
        None => dict([
            ("MessageName", Value::from("Response")),
            // 1 is "no common version" to libimobiledevice.
            ("ErrorCode", Value::from(1u64)),
            (
                "ErrorDescription",
                Value::from("No supported protocol version"),
            ),
        ]),
    }
}

/// Host side of opening a mobilebackup2 connection: the DeviceLink version
/// exchange (libimobiledevice accepts device versions up to 400), then
/// Hello. `Ok(Ok(version))` is the negotiated protocol version;
/// `Ok(Err((code, description)))` the device refusing Hello.
pub fn host_hello<S: std::io::Read + std::io::Write + ?Sized>(
    s: &mut S,
) -> Result<std::result::Result<f64, (u64, String)>> {
    use crate::devicelink::{DlMessage, VERSION_MAJOR};
    let recv = |s: &mut S| -> Result<DlMessage> { DlMessage::decode(crate::frame::read_plist(s)?) };
    match recv(s)? {
        DlMessage::VersionExchange { major, .. } if major <= 400 => {}
        other => {
            return Err(ProtoError::protocol(format!(
                "unexpected DeviceLink greeting {}",
                other.name()
            )))
        }
    }
    crate::frame::write_binary(
        s,
        &DlMessage::VersionsOk {
            major: VERSION_MAJOR,
        }
        .encode(),
    )?;
    match recv(s)? {
        DlMessage::DeviceReady => {}
        other => {
            return Err(ProtoError::protocol(format!(
                "device not ready: {}",
                other.name()
            )))
        }
    }
    let hello = dict([
        ("MessageName", Value::from("Hello")),
        (
            "SupportedProtocolVersions",
            Value::Array(PROTOCOL_VERSIONS.iter().map(|v| Value::Real(*v)).collect()),
        ),
    ]);
    crate::frame::write_binary(s, &DlMessage::ProcessMessage(hello).encode())?;
    match recv(s)? {
        DlMessage::ProcessMessage(d) if d.u64_of("ErrorCode") == Some(0) => Ok(Ok(d
            .get("ProtocolVersion")
            .and_then(Value::as_real)
            .unwrap_or(2.0))),
        DlMessage::ProcessMessage(d) => Ok(Err((
            d.u64_of("ErrorCode").unwrap_or(0),
            d.str_of("ErrorDescription")
                .unwrap_or("no common protocol version")
                .to_string(),
        ))),
        other => Err(ProtoError::protocol(format!(
            "Hello answered with {}",
            other.name()
        ))),
    }
}

/// `{MessageName: Response, ErrorCode, ErrorDescription}` as sent in the final ProcessMessage.
pub fn result_message(code: u64, description: &str) -> Dictionary {
    let mut d = dict([
        ("MessageName", Value::from("Response")),
        ("ErrorCode", Value::from(code)),
    ]);
    if code != 0 || !description.is_empty() {
        d.insert("ErrorDescription".into(), Value::from(description));
    }
    d
}

/// Writes the raw file stream.
pub struct FileStreamWriter<W> {
    w: W,
}

impl<W: Write> FileStreamWriter<W> {
    pub fn new(w: W) -> Self {
        FileStreamWriter { w }
    }

    pub fn name(&mut self, name: &str) -> Result<()> {
        self.w.write_all(&(name.len() as u32).to_be_bytes())?;
        self.w.write_all(name.as_bytes())?;
        Ok(())
    }

    pub fn data(&mut self, chunk: &[u8]) -> Result<()> {
        self.block(CODE_FILE_DATA, chunk)
    }

    pub fn end_of_file(&mut self) -> Result<()> {
        self.block(CODE_SUCCESS, &[])
    }

    /// The header of a data block of `len` bytes; the caller writes the
    /// `len` bytes themselves next, to the same stream.
    pub fn data_header(&mut self, len: usize) -> Result<()> {
        self.header(CODE_FILE_DATA, len)
    }

    pub fn error(&mut self, code: u8, message: &str) -> Result<()> {
        self.block(code, message.as_bytes())
    }

    fn block(&mut self, code: u8, payload: &[u8]) -> Result<()> {
        self.header(code, payload.len())?;
        self.w.write_all(payload)?;
        Ok(())
    }

    /// A block's length (its code and payload) and code.
    fn header(&mut self, code: u8, payload_len: usize) -> Result<()> {
        self.w.write_all(&(payload_len as u32 + 1).to_be_bytes())?;
        self.w.write_all(&[code])?;
        Ok(())
    }

    pub fn terminate(&mut self) -> Result<()> {
        self.w.write_all(&0u32.to_be_bytes())?;
        self.w.flush()?;
        Ok(())
    }

    pub fn inner(&mut self) -> &mut W {
        &mut self.w
    }
}

/// One event read from a file stream.
#[derive(Debug, PartialEq)]
pub enum StreamItem {
    /// The stream is over (`u32 0` where a name was expected).
    End,
    /// A name (device path or backup path).
    Name(String),
}

/// A block header in a file stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockHeader {
    pub code: u8,
    /// Payload bytes following the code.
    pub len: u32,
}

/// Reads the raw file stream, bounding every length before allocating.
pub struct FileStreamReader<R> {
    r: R,
}

impl<R: Read> FileStreamReader<R> {
    pub fn new(r: R) -> Self {
        FileStreamReader { r }
    }

    pub fn name(&mut self) -> Result<StreamItem> {
        let mut len = [0u8; 4];
        self.r.read_exact(&mut len)?;
        let len = u32::from_be_bytes(len);
        if len == 0 {
            return Ok(StreamItem::End);
        }
        if len > MAX_NAME_LEN {
            return Err(ProtoError::TooLarge {
                len: len as u64,
                max: MAX_NAME_LEN as u64,
            });
        }
        let mut buf = vec![0u8; len as usize];
        self.r.read_exact(&mut buf)?;
        String::from_utf8(buf)
            .map(StreamItem::Name)
            .map_err(|_| ProtoError::protocol("file name is not UTF-8"))
    }

    pub fn block_header(&mut self) -> Result<BlockHeader> {
        let mut hdr = [0u8; 5];
        self.r.read_exact(&mut hdr)?;
        let len = u32::from_be_bytes([hdr[0], hdr[1], hdr[2], hdr[3]]);
        if len == 0 {
            return Err(ProtoError::protocol("file block of length zero"));
        }
        if len > MAX_BLOCK_LEN {
            return Err(ProtoError::TooLarge {
                len: len as u64,
                max: MAX_BLOCK_LEN as u64,
            });
        }
        Ok(BlockHeader {
            code: hdr[4],
            len: len - 1,
        })
    }

    /// Read a block's payload into `buf` (which must be `len` long).
    pub fn payload(&mut self, buf: &mut [u8]) -> Result<()> {
        self.r.read_exact(buf)?;
        Ok(())
    }

    /// Read a small text payload (error messages), bounded.
    pub fn text(&mut self, len: u32) -> Result<String> {
        if len > MAX_NAME_LEN * 16 {
            return Err(ProtoError::TooLarge {
                len: len as u64,
                max: (MAX_NAME_LEN * 16) as u64,
            });
        }
        let mut buf = vec![0u8; len as usize];
        self.r.read_exact(&mut buf)?;
        Ok(String::from_utf8_lossy(&buf).into_owned())
    }

    pub fn inner(&mut self) -> &mut R {
        &mut self.r
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_round_trip() {
        let mut out = Vec::new();
        {
            let mut w = FileStreamWriter::new(&mut out);
            w.name("/var/mobile/a").unwrap();
            w.name("U/ab/abcd").unwrap();
            w.data(b"hello").unwrap();
            w.data(b" world").unwrap();
            w.end_of_file().unwrap();
            w.name("U/empty").unwrap();
            w.end_of_file().unwrap();
            w.name("U/missing").unwrap();
            w.error(CODE_ERROR_LOCAL, "No such file").unwrap();
            w.terminate().unwrap();
        }
        let mut r = FileStreamReader::new(&out[..]);
        assert_eq!(r.name().unwrap(), StreamItem::Name("/var/mobile/a".into()));
        assert_eq!(r.name().unwrap(), StreamItem::Name("U/ab/abcd".into()));
        let mut content = Vec::new();
        loop {
            let h = r.block_header().unwrap();
            if h.code != CODE_FILE_DATA {
                assert_eq!(
                    h,
                    BlockHeader {
                        code: CODE_SUCCESS,
                        len: 0
                    }
                );
                break;
            }
            let mut buf = vec![0; h.len as usize];
            r.payload(&mut buf).unwrap();
            content.extend(buf);
        }
        assert_eq!(content, b"hello world");
        assert_eq!(r.name().unwrap(), StreamItem::Name("U/empty".into()));
        assert_eq!(r.block_header().unwrap().code, CODE_SUCCESS);
        assert_eq!(r.name().unwrap(), StreamItem::Name("U/missing".into()));
        let h = r.block_header().unwrap();
        assert_eq!(h.code, CODE_ERROR_LOCAL);
        assert_eq!(r.text(h.len).unwrap(), "No such file");
        assert_eq!(r.name().unwrap(), StreamItem::End);
    }

    #[test]
    fn hostile_lengths_are_refused() {
        let bytes = (MAX_NAME_LEN + 1).to_be_bytes();
        assert!(matches!(
            FileStreamReader::new(&bytes[..]).name(),
            Err(ProtoError::TooLarge { .. })
        ));
        let mut b = (MAX_BLOCK_LEN + 1).to_be_bytes().to_vec();
        b.push(CODE_FILE_DATA);
        assert!(matches!(
            FileStreamReader::new(&b[..]).block_header(),
            Err(ProtoError::TooLarge { .. })
        ));
        let b = [0u8, 0, 0, 0, CODE_FILE_DATA];
        assert!(FileStreamReader::new(&b[..]).block_header().is_err());
        let mut b = 2u32.to_be_bytes().to_vec();
        b.extend([0xff, 0xfe]);
        assert!(FileStreamReader::new(&b[..]).name().is_err());
    }

    /// Reads a recorded device side, keeps what the host writes.
    struct Recorded {
        from_device: std::io::Cursor<Vec<u8>>,
        from_host: Vec<u8>,
    }
    impl std::io::Read for Recorded {
        fn read(&mut self, b: &mut [u8]) -> std::io::Result<usize> {
            self.from_device.read(b)
        }
    }
    impl std::io::Write for Recorded {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.from_host.write(b)
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn device_says(answer: Dictionary) -> Recorded {
        use crate::devicelink::DlMessage;
        let mut bytes = Vec::new();
        for m in [
            DlMessage::VersionExchange {
                major: 300,
                minor: 0,
            },
            DlMessage::DeviceReady,
            DlMessage::ProcessMessage(answer),
        ] {
            bytes.extend(crate::frame::encode_binary(&m.encode()));
        }
        Recorded {
            from_device: std::io::Cursor::new(bytes),
            from_host: Vec::new(),
        }
    }

    #[test]
    fn host_hello_negotiates_and_reports_refusal() {
        use crate::devicelink::DlMessage;
        let mut s = device_says(hello_response(&[2.0, 2.1]));
        assert_eq!(host_hello(&mut s).unwrap(), Ok(2.1));
        // The host answered VersionsOk, then sent Hello with both versions.
        let mut sent = &s.from_host[..];
        assert_eq!(
            DlMessage::decode(crate::frame::read_plist(&mut sent).unwrap()).unwrap(),
            DlMessage::VersionsOk { major: 300 }
        );
        let DlMessage::ProcessMessage(hello) =
            DlMessage::decode(crate::frame::read_plist(&mut sent).unwrap()).unwrap()
        else {
            panic!()
        };
        assert_eq!(hello.str_of("MessageName"), Some("Hello"));
        let mut s = device_says(hello_response(&[1.0]));
        assert_eq!(host_hello(&mut s).unwrap().unwrap_err().0, 1);
        let mut short = Recorded {
            from_device: std::io::Cursor::new(Vec::new()),
            from_host: Vec::new(),
        };
        assert!(
            host_hello(&mut short).is_err(),
            "a closed connection is an error"
        );
    }

    #[test]
    fn request_round_trip_and_hello() {
        let r = Mb2Request {
            name: "Backup".into(),
            target: Some("U".into()),
            source: Some("U".into()),
            options: dict([("ForceFullBackup", Value::Boolean(true))]),
            extra: Dictionary::new(),
        };
        assert_eq!(Mb2Request::decode(&r.encode()).unwrap(), r);
        let h = hello_response(&[2.0, 2.1]);
        assert_eq!(h.get("ProtocolVersion"), Some(&Value::Real(2.1)));
        let h = hello_response(&[1.0]);
        assert_eq!(h.u64_of("ErrorCode"), Some(1));
        assert_eq!(h.str_of("MessageName"), Some("Response"));
    }
}
