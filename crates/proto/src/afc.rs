//! AFC (Apple File Conduit) packets: the subset backup clients use.
//!
//! A packet is a 40-byte little-endian header — magic `CFA6LPAA`, entire
//! length, header-plus-arguments length, packet number, operation — then
//! the operation's arguments, then bulk data. Operation and status numbers
//! from libimobiledevice `src/afc.h` and `include/libimobiledevice/afc.h`.
//! Backup clients open `/com.apple.itunes.lock_sync`, lock it, read a few
//! iTunes files, and close it.

use std::io::{Read, Write};

use crate::error::{ProtoError, Result};
use crate::frame::read_exact_or_closed;

pub const SERVICE_NAME: &str = "com.apple.afc";
pub const MAGIC: &[u8; 8] = b"CFA6LPAA";
pub const HEADER_LEN: u64 = 40;
/// Bound on a packet; clients read and write in chunks far below this.
pub const MAX_PACKET: u64 = 16 * 1024 * 1024;

pub mod op {
    pub const STATUS: u64 = 0x01;
    pub const DATA: u64 = 0x02;
    pub const READ_DIR: u64 = 0x03;
    pub const REMOVE_PATH: u64 = 0x08;
    pub const MAKE_DIR: u64 = 0x09;
    pub const GET_FILE_INFO: u64 = 0x0A;
    pub const GET_DEVINFO: u64 = 0x0B;
    pub const FILE_OPEN: u64 = 0x0D;
    pub const FILE_OPEN_RES: u64 = 0x0E;
    pub const FILE_READ: u64 = 0x0F;
    pub const FILE_WRITE: u64 = 0x10;
    pub const FILE_CLOSE: u64 = 0x14;
    pub const FILE_LOCK: u64 = 0x1B;
}

pub mod status {
    pub const SUCCESS: u64 = 0;
    pub const UNKNOWN_PACKET_TYPE: u64 = 6;
    pub const INVALID_ARG: u64 = 7;
    pub const OBJECT_NOT_FOUND: u64 = 8;
    pub const OBJECT_IS_DIR: u64 = 9;
    pub const PERM_DENIED: u64 = 10;
    pub const OP_WOULD_BLOCK: u64 = 19;
}

/// Open modes (`AFC_FOPEN_*`).
pub mod mode {
    pub const RDONLY: u64 = 1;
    pub const RW: u64 = 2;
    pub const WRONLY: u64 = 3;
    pub const WR: u64 = 4;
    pub const APPEND: u64 = 5;
    pub const RDAPPEND: u64 = 6;
}

/// One AFC packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AfcPacket {
    pub packet_num: u64,
    pub operation: u64,
    /// Arguments that count into `this_length`.
    pub args: Vec<u8>,
    /// Bulk data after the arguments.
    pub data: Vec<u8>,
}

impl AfcPacket {
    pub fn encode(&self) -> Vec<u8> {
        let this_len = HEADER_LEN + self.args.len() as u64;
        let entire = this_len + self.data.len() as u64;
        let mut out = Vec::with_capacity(entire as usize);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&entire.to_le_bytes());
        out.extend_from_slice(&this_len.to_le_bytes());
        out.extend_from_slice(&self.packet_num.to_le_bytes());
        out.extend_from_slice(&self.operation.to_le_bytes());
        out.extend_from_slice(&self.args);
        out.extend_from_slice(&self.data);
        out
    }

    pub fn read<R: Read>(r: &mut R) -> Result<AfcPacket> {
        let mut hdr = [0u8; HEADER_LEN as usize];
        read_exact_or_closed(r, &mut hdr)?;
        if &hdr[0..8] != MAGIC {
            return Err(ProtoError::protocol("AFC packet without CFA6LPAA magic"));
        }
        let word = |i: usize| u64::from_le_bytes(hdr[i..i + 8].try_into().expect("8 bytes"));
        let (entire, this_len, packet_num, operation) = (word(8), word(16), word(24), word(32));
        if this_len < HEADER_LEN || entire < this_len || entire > MAX_PACKET {
            return Err(ProtoError::protocol(format!(
                "AFC packet lengths out of range: entire {entire}, this {this_len}"
            )));
        }
        let mut args = vec![0u8; (this_len - HEADER_LEN) as usize];
        r.read_exact(&mut args)?;
        let mut data = vec![0u8; (entire - this_len) as usize];
        r.read_exact(&mut data)?;
        Ok(AfcPacket {
            packet_num,
            operation,
            args,
            data,
        })
    }

    pub fn write<W: Write>(&self, w: &mut W) -> Result<()> {
        w.write_all(&self.encode())?;
        w.flush()?;
        Ok(())
    }

    pub fn status(packet_num: u64, code: u64) -> AfcPacket {
        AfcPacket {
            packet_num,
            operation: op::STATUS,
            args: code.to_le_bytes().to_vec(),
            data: Vec::new(),
        }
    }

    /// The `n`th little-endian u64 argument.
    pub fn arg_u64(&self, n: usize) -> Option<u64> {
        let s = self.args.get(n * 8..n * 8 + 8)?;
        Some(u64::from_le_bytes(s.try_into().ok()?))
    }

    /// A NUL-terminated path argument starting at byte `offset`.
    pub fn arg_path(&self, offset: usize) -> Option<String> {
        let s = self.args.get(offset..)?;
        let end = s.iter().position(|b| *b == 0).unwrap_or(s.len());
        String::from_utf8(s[..end].to_vec()).ok()
    }
}

/// Encode `key\0value\0…` as AFC returns file and device info.
pub fn encode_kv(pairs: &[(&str, String)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (k, v) in pairs {
        out.extend_from_slice(k.as_bytes());
        out.push(0);
        out.extend_from_slice(v.as_bytes());
        out.push(0);
    }
    out
}

/// Decode the `key\0value\0…` of a GET_FILE_INFO or GET_DEVINFO answer.
/// A trailing key without a value is dropped; an empty one ends the list.
pub fn decode_kv(data: &[u8]) -> Vec<(String, String)> {
    let mut parts = data
        .split(|b| *b == 0)
        .map(|p| String::from_utf8_lossy(p).into_owned());
    let mut out = Vec::new();
    while let (Some(k), Some(v)) = (parts.next(), parts.next()) {
        if k.is_empty() {
            break;
        }
        out.push((k, v));
    }
    out
}

/// The names of a READ_DIR answer (NUL-separated, `.` and `..` left out),
/// as bytes: a device may send names that are not UTF-8.
pub fn decode_names(data: &[u8]) -> Vec<Vec<u8>> {
    data.split(|b| *b == 0)
        .filter(|n| !n.is_empty() && *n != b"." && *n != b"..")
        .map(<[u8]>::to_vec)
        .collect()
}

/// A request packet: its 8-byte arguments then a NUL-terminated path.
pub fn request(packet_num: u64, operation: u64, words: &[u64], path: Option<&str>) -> AfcPacket {
    let mut args: Vec<u8> = words.iter().flat_map(|w| w.to_le_bytes()).collect();
    if let Some(p) = path {
        args.extend_from_slice(p.as_bytes());
        args.push(0);
    }
    AfcPacket {
        packet_num,
        operation,
        args,
        data: Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_arguments() {
        let mut args = mode::RW.to_le_bytes().to_vec();
        args.extend_from_slice(b"/com.apple.itunes.lock_sync\0");
        let p = AfcPacket {
            packet_num: 3,
            operation: op::FILE_OPEN,
            args,
            data: b"xyz".to_vec(),
        };
        let back = AfcPacket::read(&mut &p.encode()[..]).unwrap();
        assert_eq!(back, p);
        assert_eq!(back.arg_u64(0), Some(mode::RW));
        assert_eq!(
            back.arg_path(8).as_deref(),
            Some("/com.apple.itunes.lock_sync")
        );
        assert_eq!(back.arg_u64(9), None);
    }

    #[test]
    fn bad_packets_are_refused() {
        let mut b = AfcPacket::status(1, 0).encode();
        b[0] = b'X';
        assert!(AfcPacket::read(&mut &b[..]).is_err());
        let mut b = AfcPacket::status(1, 0).encode();
        b[8..16].copy_from_slice(&(MAX_PACKET + 1).to_le_bytes());
        assert!(AfcPacket::read(&mut &b[..]).is_err());
        let mut b = AfcPacket::status(1, 0).encode();
        b[16..24].copy_from_slice(&8u64.to_le_bytes());
        assert!(AfcPacket::read(&mut &b[..]).is_err());
    }

    #[test]
    fn answers_decode_and_round_trip() {
        let kv = encode_kv(&[("st_size", "12".into()), ("st_ifmt", "S_IFREG".into())]);
        assert_eq!(
            decode_kv(&kv),
            vec![
                ("st_size".into(), "12".into()),
                ("st_ifmt".into(), "S_IFREG".into())
            ]
        );
        assert_eq!(
            decode_kv(b"st_size\0"),
            vec![("st_size".into(), String::new())]
        );
        assert_eq!(decode_kv(b""), vec![]);
        assert_eq!(
            decode_names(b".\0..\0IMG_0001.HEIC\0../x\0\xff\0"),
            vec![b"IMG_0001.HEIC".to_vec(), b"../x".to_vec(), vec![0xff]]
        );
        let r = request(3, op::FILE_OPEN, &[mode::RDONLY], Some("/DCIM/a"));
        assert_eq!(r.arg_u64(0), Some(mode::RDONLY));
        assert_eq!(r.arg_path(8).as_deref(), Some("/DCIM/a"));
        assert_eq!(AfcPacket::read(&mut &r.encode()[..]).unwrap(), r);
    }

    #[test]
    fn kv_encoding() {
        assert_eq!(encode_kv(&[("st_size", "5".into())]), b"st_size\x005\x00");
    }
}
