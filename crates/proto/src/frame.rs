//! The framing lockdownd and every plist service use: a 32-bit big-endian
//! length followed by that many bytes of plist (XML for lockdownd, binary
//! for DeviceLink services).

use std::io::{Read, Write};

use plist::Value;

use crate::error::{ProtoError, Result};
use crate::plistx;

/// The largest plist message we accept. Real messages are a few KiB; the
/// largest seen (an `Info.plist` with app icons) is a few MiB.
pub const MAX_PLIST_MESSAGE: u32 = 64 * 1024 * 1024;

/// Encode a plist message: length prefix plus XML body.
pub fn encode_xml(value: &Value) -> Vec<u8> {
    with_prefix(plistx::to_xml(value))
}

/// Encode a plist message: length prefix plus binary body.
pub fn encode_binary(value: &Value) -> Vec<u8> {
    with_prefix(plistx::to_binary(value))
}

fn with_prefix(body: Vec<u8>) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + 4);
    out.extend_from_slice(&(body.len() as u32).to_be_bytes());
    out.extend_from_slice(&body);
    out
}

/// Read one framed plist. `Err(Closed)` when the peer closed cleanly before
/// the first byte of the frame.
pub fn read_plist<R: Read + ?Sized>(r: &mut R) -> Result<Value> {
    let body = read_frame(r)?;
    plistx::from_bytes(&body)
}

/// Read one frame's raw body.
pub fn read_frame<R: Read + ?Sized>(r: &mut R) -> Result<Vec<u8>> {
    let mut len = [0u8; 4];
    read_exact_or_closed(r, &mut len)?;
    let len = u32::from_be_bytes(len);
    if len > MAX_PLIST_MESSAGE {
        return Err(ProtoError::TooLarge {
            len: len as u64,
            max: MAX_PLIST_MESSAGE as u64,
        });
    }
    let mut body = vec![0u8; len as usize];
    r.read_exact(&mut body)?;
    Ok(body)
}

pub fn write_xml<W: Write + ?Sized>(w: &mut W, value: &Value) -> Result<()> {
    w.write_all(&encode_xml(value))?;
    w.flush()?;
    Ok(())
}

pub fn write_binary<W: Write + ?Sized>(w: &mut W, value: &Value) -> Result<()> {
    w.write_all(&encode_binary(value))?;
    w.flush()?;
    Ok(())
}

/// `read_exact`, but a clean end of stream before any byte is `Closed`.
pub fn read_exact_or_closed<R: Read + ?Sized>(r: &mut R, buf: &mut [u8]) -> Result<()> {
    let mut done = 0;
    while done < buf.len() {
        match r.read(&mut buf[done..]) {
            Ok(0) if done == 0 => return Err(ProtoError::Closed),
            Ok(0) => {
                return Err(ProtoError::Io(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "connection closed mid-message",
                )))
            }
            Ok(n) => done += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plistx::dict;

    #[test]
    fn round_trip_both_encodings() {
        let v = Value::Dictionary(dict([("Request", Value::from("QueryType"))]));
        for bytes in [encode_xml(&v), encode_binary(&v)] {
            let mut r = &bytes[..];
            assert_eq!(read_plist(&mut r).unwrap(), v);
            assert!(matches!(read_plist(&mut r), Err(ProtoError::Closed)));
        }
    }

    #[test]
    fn oversized_length_is_refused_before_allocation() {
        let bytes = (MAX_PLIST_MESSAGE + 1).to_be_bytes();
        let mut r = &bytes[..];
        assert!(matches!(
            read_plist(&mut r),
            Err(ProtoError::TooLarge { .. })
        ));
    }

    #[test]
    fn truncated_frame_is_an_io_error_not_closed() {
        let mut bytes = encode_xml(&Value::from("x"));
        bytes.truncate(10);
        let mut r = &bytes[..];
        assert!(matches!(read_plist(&mut r), Err(ProtoError::Io(_))));
        let mut r = &bytes[..2];
        assert!(matches!(read_plist(&mut r), Err(ProtoError::Io(_))));
    }
}
