//! One usbmux packet as it crosses a USB bulk pipe: a header (8 bytes
//! before the VERSION exchange and with version 1, 16 bytes with version
//! 2), then a payload by protocol. Every integer is big-endian.
//! Facts: shared/docs/direct-usb-facts.md §3 (usbmuxd `src/device.c`,
//! `struct mux_header`, `struct version_header`, `send_tcp()`).

use crate::error::{ProtoError, Result};

/// `magic` of a version-2 header.
pub const MAGIC: u32 = 0xfeed_face;
/// The largest packet either side accepts (usbmuxd's `DEV_MRU`).
pub const MAX_PACKET: usize = 65_536;
/// The largest packet sent in one bulk OUT transfer (usbmuxd's `USB_MTU`).
pub const MTU: usize = 3 * 16_384;
/// TCP payload a segment carries at most: the MTU less both headers.
pub const MAX_SEGMENT: usize = MTU - 16 - TCP_HEADER;
/// A TCP header without options.
pub const TCP_HEADER: usize = 20;

pub const PROTO_VERSION: u32 = 0;
pub const PROTO_CONTROL: u32 = 1;
pub const PROTO_SETUP: u32 = 2;
pub const PROTO_TCP: u32 = 6;

pub const FIN: u8 = 0x01;
pub const SYN: u8 = 0x02;
pub const RST: u8 = 0x04;
pub const ACK: u8 = 0x10;

/// The header's size: 8 bytes (version 0 or 1), 16 with version 2.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeaderKind {
    Short,
    Long { tx_seq: u16, rx_seq: u16 },
}

/// The TCP-like header of protocol 6 (no options, no checksum).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Tcp {
    pub sport: u16,
    pub dport: u16,
    pub seq: u32,
    pub ack: u32,
    pub flags: u8,
    /// The window field: bytes >> 8.
    pub window: u16,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Packet {
    Version {
        major: u32,
        minor: u32,
    },
    /// A log line from the device: kind 3 error, 5 warning, 7 info.
    Control {
        kind: u8,
        text: Vec<u8>,
    },
    Setup(u8),
    Tcp {
        tcp: Tcp,
        payload: Vec<u8>,
    },
}

impl Packet {
    fn protocol(&self) -> u32 {
        match self {
            Packet::Version { .. } => PROTO_VERSION,
            Packet::Control { .. } => PROTO_CONTROL,
            Packet::Setup(_) => PROTO_SETUP,
            Packet::Tcp { .. } => PROTO_TCP,
        }
    }

    /// Append the body (what follows the header) to `b`.
    fn body_into(&self, b: &mut Vec<u8>) {
        match self {
            Packet::Version { major, minor } => {
                for v in [*major, *minor, 0] {
                    b.extend(v.to_be_bytes());
                }
            }
            Packet::Control { kind, text } => {
                b.push(*kind);
                b.extend_from_slice(text);
            }
            Packet::Setup(x) => b.push(*x),
            Packet::Tcp { tcp, payload } => {
                tcp_header_into(tcp, b);
                b.extend_from_slice(payload);
            }
        }
    }

    fn body_len(&self) -> usize {
        match self {
            Packet::Version { .. } => 12,
            Packet::Control { text, .. } => 1 + text.len(),
            Packet::Setup(_) => 1,
            Packet::Tcp { payload, .. } => TCP_HEADER + payload.len(),
        }
    }

    /// The packet's bytes with a header of `kind`.
    pub fn encode(&self, kind: HeaderKind) -> Vec<u8> {
        let mut out = header(self.protocol(), kind, self.body_len());
        self.body_into(&mut out);
        out
    }

    /// A TCP packet's bytes, its payload taken from `parts` in order:
    /// the same bytes as `encode` of `Packet::Tcp`, built with one copy.
    pub fn encode_tcp(kind: HeaderKind, tcp: &Tcp, parts: &[&[u8]]) -> Vec<u8> {
        let len: usize = parts.iter().map(|p| p.len()).sum();
        let mut out = header(PROTO_TCP, kind, TCP_HEADER + len);
        tcp_header_into(tcp, &mut out);
        for p in parts {
            out.extend_from_slice(p);
        }
        out
    }

    /// Decode one whole packet (`bytes` is exactly one, header included),
    /// whose header is long (`long`) or short.
    pub fn decode(bytes: &[u8], long: bool) -> Result<(HeaderKind, Packet)> {
        let header = if long { 16 } else { 8 };
        if bytes.len() < header {
            return Err(ProtoError::protocol(format!(
                "usbmux packet of {} bytes, shorter than its header",
                bytes.len()
            )));
        }
        let u32_at = |i: usize| u32::from_be_bytes(bytes[i..i + 4].try_into().expect("4 bytes"));
        let u16_at = |i: usize| u16::from_be_bytes(bytes[i..i + 2].try_into().expect("2 bytes"));
        let (protocol, length) = (u32_at(0), u32_at(4) as usize);
        if length != bytes.len() {
            return Err(ProtoError::protocol(format!(
                "usbmux header says {length} bytes, the packet has {}",
                bytes.len()
            )));
        }
        let kind = if long {
            if u32_at(8) != MAGIC {
                return Err(ProtoError::protocol(format!(
                    "usbmux header magic {:#010x}, not {MAGIC:#010x}",
                    u32_at(8)
                )));
            }
            HeaderKind::Long {
                tx_seq: u16_at(12),
                rx_seq: u16_at(14),
            }
        } else {
            HeaderKind::Short
        };
        let body = &bytes[header..];
        let packet = match protocol {
            PROTO_VERSION if body.len() >= 8 => Packet::Version {
                major: u32::from_be_bytes(body[0..4].try_into().expect("4")),
                minor: u32::from_be_bytes(body[4..8].try_into().expect("4")),
            },
            PROTO_CONTROL if !body.is_empty() => Packet::Control {
                kind: body[0],
                text: body[1..].to_vec(),
            },
            PROTO_SETUP if !body.is_empty() => Packet::Setup(body[0]),
            PROTO_TCP if body.len() >= TCP_HEADER => {
                let b = |i: usize| u16::from_be_bytes(body[i..i + 2].try_into().expect("2"));
                let w = |i: usize| u32::from_be_bytes(body[i..i + 4].try_into().expect("4"));
                let offset = usize::from(body[12] >> 4) * 4;
                if offset < TCP_HEADER || offset > body.len() {
                    return Err(ProtoError::protocol(format!(
                        "usbmux TCP data offset {offset} does not fit a segment of {} bytes",
                        body.len()
                    )));
                }
                Packet::Tcp {
                    tcp: Tcp {
                        sport: b(0),
                        dport: b(2),
                        seq: w(4),
                        ack: w(8),
                        flags: body[13],
                        window: b(14),
                    },
                    payload: body[offset..].to_vec(),
                }
            }
            other => {
                return Err(ProtoError::protocol(format!(
                    "usbmux packet of protocol {other} with {} bytes of payload",
                    body.len()
                )))
            }
        };
        Ok((kind, packet))
    }
}

/// A header of `kind` for a packet of `protocol` with `body` bytes, in a
/// vector with room for the body.
fn header(protocol: u32, kind: HeaderKind, body: usize) -> Vec<u8> {
    let size = match kind {
        HeaderKind::Short => 8,
        HeaderKind::Long { .. } => 16,
    };
    let mut out = Vec::with_capacity(size + body);
    out.extend(protocol.to_be_bytes());
    out.extend(((size + body) as u32).to_be_bytes());
    if let HeaderKind::Long { tx_seq, rx_seq } = kind {
        out.extend(MAGIC.to_be_bytes());
        out.extend(tx_seq.to_be_bytes());
        out.extend(rx_seq.to_be_bytes());
    }
    out
}

fn tcp_header_into(tcp: &Tcp, b: &mut Vec<u8>) {
    b.extend(tcp.sport.to_be_bytes());
    b.extend(tcp.dport.to_be_bytes());
    b.extend(tcp.seq.to_be_bytes());
    b.extend(tcp.ack.to_be_bytes());
    b.push(0x50); // data offset 5 words, no options
    b.push(tcp.flags);
    b.extend(tcp.window.to_be_bytes());
    b.extend([0, 0, 0, 0]); // checksum, urgent pointer
}

/// Cuts a byte stream (the bulk IN transfers, in any split) into packets
/// by their headers' lengths.
#[derive(Debug, Default)]
pub struct Deframer {
    buf: Vec<u8>,
}

impl Deframer {
    pub fn feed(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// The same, taking the transfer's own buffer when nothing is waiting
    /// (a transfer usually holds exactly one packet: no copy at all).
    pub fn feed_vec(&mut self, bytes: Vec<u8>) {
        if self.buf.is_empty() {
            self.buf = bytes;
        } else {
            self.buf.extend_from_slice(&bytes);
        }
    }

    /// The next whole packet's bytes, if they are all here. A length that
    /// no packet can have is an error (the stream cannot be resynchronised).
    pub fn next_packet(&mut self, long: bool) -> Result<Option<Vec<u8>>> {
        if self.buf.len() < 8 {
            return Ok(None);
        }
        let length = u32::from_be_bytes(self.buf[4..8].try_into().expect("4")) as usize;
        let header = if long { 16 } else { 8 };
        if length < header || length > MAX_PACKET {
            return Err(ProtoError::protocol(format!(
                "usbmux packet length {length} (a packet is {header} to {MAX_PACKET} bytes)"
            )));
        }
        if self.buf.len() < length {
            return Ok(None);
        }
        let rest = self.buf.split_off(length);
        Ok(Some(std::mem::replace(&mut self.buf, rest)))
    }

    /// Bytes received but not yet a whole packet.
    pub fn pending(&self) -> usize {
        self.buf.len()
    }
}

/// Bytes written as hex with spaces anywhere, for tests that spell out
/// packets as usbmuxd sends them.
#[cfg(test)]
pub(super) fn hex(s: &str) -> Vec<u8> {
    let s: String = s.split_whitespace().collect();
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packets_as_usbmuxd_writes_them() {
        // VERSION from the host before any version is agreed: 8-byte
        // header, length 20, major 2, minor 0, padding 0.
        let v = Packet::Version { major: 2, minor: 0 };
        assert_eq!(
            v.encode(HeaderKind::Short),
            hex("00000000 00000014 00000002 00000000 00000000")
        );
        // SETUP 0x07 with the 16-byte header; counters reset to 0 / 0xffff.
        assert_eq!(
            Packet::Setup(7).encode(HeaderKind::Long {
                tx_seq: 0,
                rx_seq: 0xffff
            }),
            hex("00000002 00000011 feedface 0000 ffff 07")
        );
        // SYN from local port 1 to lockdownd (62078 = 0xf27e), window
        // 512 KiB (field 0x0800).
        let syn = Packet::Tcp {
            tcp: Tcp {
                sport: 1,
                dport: 62078,
                seq: 0,
                ack: 0,
                flags: SYN,
                window: 0x0800,
            },
            payload: vec![],
        };
        let bytes = syn.encode(HeaderKind::Long {
            tx_seq: 1,
            rx_seq: 0xffff,
        });
        assert_eq!(
            bytes,
            hex("00000006 00000024 feedface 0001 ffff  0001 f27e 00000000 00000000 50 02 0800 0000 0000")
        );
        assert_eq!(Packet::decode(&bytes, true).unwrap().1, syn);
    }

    #[test]
    fn every_packet_round_trips_and_damage_is_an_error() {
        let all = [
            Packet::Version { major: 1, minor: 0 },
            Packet::Control {
                kind: 7,
                text: b"info line".to_vec(),
            },
            Packet::Setup(7),
            Packet::Tcp {
                tcp: Tcp {
                    sport: 9,
                    dport: 62078,
                    seq: 77,
                    ack: 1 << 31,
                    flags: ACK,
                    window: 2,
                },
                payload: b"payload".to_vec(),
            },
        ];
        for p in all {
            for kind in [
                HeaderKind::Short,
                HeaderKind::Long {
                    tx_seq: 5,
                    rx_seq: 6,
                },
            ] {
                let b = p.encode(kind);
                let long = matches!(kind, HeaderKind::Long { .. });
                assert_eq!(Packet::decode(&b, long).unwrap(), (kind, p.clone()));
                let mut bad = b.clone();
                bad.pop();
                assert!(Packet::decode(&bad, long).is_err(), "a short packet");
            }
        }
        let mut bad = Packet::Setup(7).encode(HeaderKind::Long {
            tx_seq: 0,
            rx_seq: 0,
        });
        bad[8] = 0;
        assert!(Packet::decode(&bad, true).is_err(), "bad magic");
        assert!(
            Packet::decode(&hex("00000009 0000000c 00000000"), false).is_err(),
            "unknown protocol"
        );
    }

    #[test]
    fn the_deframer_takes_any_split() {
        let a = Packet::Setup(7).encode(HeaderKind::Long {
            tx_seq: 0,
            rx_seq: 0,
        });
        let b = Packet::Control {
            kind: 7,
            text: vec![b'x'; 600],
        }
        .encode(HeaderKind::Long {
            tx_seq: 1,
            rx_seq: 0,
        });
        let stream: Vec<u8> = a.iter().chain(b.iter()).copied().collect();
        for split in [1, 3, 7, 16, 17, 512, stream.len()] {
            let mut d = Deframer::default();
            let mut got = Vec::new();
            for chunk in stream.chunks(split) {
                d.feed(chunk);
                while let Some(p) = d.next_packet(true).unwrap() {
                    got.push(p);
                }
            }
            assert_eq!(got, vec![a.clone(), b.clone()], "split {split}");
            assert_eq!(d.pending(), 0);
        }
        let mut d = Deframer::default();
        d.feed(&hex("00000006 ffffffff"));
        assert!(d.next_packet(true).is_err(), "a length no packet has");
    }
}
