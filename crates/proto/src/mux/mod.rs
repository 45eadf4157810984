//! The usbmux protocol spoken over a USB bulk pipe, as a state machine
//! with no I/O (the quinn-proto shape): feed it the bytes of bulk IN
//! transfers in any split ([`Mux::handle_input`]), take from it the
//! transfers to send ([`Mux::poll_transmit`]) and what happened
//! ([`Mux::poll_event`]). Both ends: the host (ibackup talking to a phone
//! with no usbmuxd) and the device (the simulated iPhone), so one tested
//! implementation serves both, and each is also tested against packets
//! written by hand from usbmuxd's (shared/docs/direct-usb-facts.md §3).
//!
//! On top of the packets sits a TCP-like layer with no retransmission
//! (USB bulk is reliable and ordered): SYN, SYN|ACK, ACK, RST; windows
//! advertised as bytes >> 8; segments of at most [`MAX_SEGMENT`] bytes;
//! an ACK for every data segment received.

pub mod packet;

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use packet::{Deframer, ACK, RST, SYN};
pub use packet::{HeaderKind, Packet, Tcp, MAX_SEGMENT};

use crate::error::{ProtoError, Result};

/// Which end of the cable this is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Host,
    Device,
}

/// One connection, by the ports at each end (ours first).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ConnId {
    pub local: u16,
    pub remote: u16,
}

/// A bulk OUT transfer to submit. `zlp`: its length is a whole number of
/// max-size packets, so a zero-length transfer must follow it for the
/// other end to see where it ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transfer {
    pub bytes: Vec<u8>,
    pub zlp: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The VERSION exchange is done: connections can be made.
    Ready { version: u32 },
    /// Host: a connection was accepted. Device: a host connected to a
    /// listening port.
    Connected(ConnId),
    /// Host: the device refused a connection (RST), with its reason text.
    Refused(ConnId, String),
    /// Data can be read from the connection ([`Mux::recv`]).
    Readable(ConnId),
    /// Room to send opened up on the connection.
    Writable(ConnId),
    /// The connection ended: the peer reset it, or it broke a rule.
    Closed(ConnId, String),
    /// A log line from the device (CONTROL: 3 error, 5 warning, 7 info).
    Log { kind: u8, text: String },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    SynSent,
    Connected,
    /// Ended by the peer or a broken rule: what arrived before stays
    /// readable until [`Mux::close`], nothing more is sent or taken.
    Closed,
}

#[derive(Debug)]
struct Conn {
    state: State,
    /// Our next sequence number.
    seq: u32,
    /// The peer's ACK: everything before it is delivered.
    peer_acked: u32,
    /// The peer's window, in bytes, from its last segment.
    peer_window: u32,
    /// The peer's next sequence number: what we acknowledge.
    expect: u32,
    /// The window we last advertised, counted from `expect`.
    advertised: u32,
    inbuf: Chunks,
    outbuf: VecDeque<u8>,
}

/// Received payloads, kept as they arrived (no copy until read).
#[derive(Debug, Default)]
struct Chunks {
    /// Each payload and how much of it was read.
    chunks: VecDeque<(Vec<u8>, usize)>,
    len: usize,
}

impl Chunks {
    fn push(&mut self, v: Vec<u8>) {
        if !v.is_empty() {
            self.len += v.len();
            self.chunks.push_back((v, 0));
        }
    }

    fn len(&self) -> usize {
        self.len
    }

    /// Copy what fits into `buf`; how much.
    fn take(&mut self, buf: &mut [u8]) -> usize {
        let mut n = 0;
        while n < buf.len() {
            let Some((v, at)) = self.chunks.front_mut() else {
                break;
            };
            let k = (v.len() - *at).min(buf.len() - n);
            buf[n..n + k].copy_from_slice(&v[*at..*at + k]);
            *at += k;
            n += k;
            if *at == v.len() {
                self.chunks.pop_front();
            }
        }
        self.len -= n;
        n
    }
}

/// The receive buffer of each connection, and so the most it advertises:
/// 1 MiB (at least the 512 KiB the design asks for).
pub const RECV_BUFFER: u32 = 1 << 20;
/// Data waiting to be sent, per connection.
pub const SEND_BUFFER: usize = 1 << 20;

pub struct Mux {
    role: Role,
    /// 0 until the VERSION exchange; then 1 or 2.
    version: u32,
    deframer: Deframer,
    /// Header counters (version 2): ours, and the last the peer sent.
    tx_seq: u16,
    rx_seq: u16,
    /// The OUT endpoint's max packet size, for the zero-length rule.
    max_packet: usize,
    conns: BTreeMap<ConnId, Conn>,
    listening: BTreeSet<u16>,
    next_port: u16,
    out: VecDeque<Transfer>,
    events: VecDeque<Event>,
}

impl Mux {
    /// A mux for the given end of a pipe whose OUT endpoint takes packets
    /// of `max_packet` bytes (512 on USB 2, 1024 on USB 3).
    pub fn new(role: Role, max_packet: usize) -> Mux {
        let mut m = Mux {
            role,
            version: 0,
            deframer: Deframer::default(),
            tx_seq: 0,
            rx_seq: 0xffff,
            max_packet: max_packet.max(1),
            conns: BTreeMap::new(),
            listening: BTreeSet::new(),
            next_port: 1,
            out: VecDeque::new(),
            events: VecDeque::new(),
        };
        if role == Role::Host {
            // The host speaks first, with the short header: no version yet.
            m.queue(Packet::Version { major: 2, minor: 0 });
        }
        m
    }

    pub fn is_ready(&self) -> bool {
        self.version > 0
    }

    fn long_headers(&self) -> bool {
        self.version >= 2
    }

    /// The header for the next packet other than VERSION: long with this
    /// end's counters once version 2 is agreed (counting it), else short.
    fn next_header(&mut self) -> HeaderKind {
        if self.long_headers() {
            let k = HeaderKind::Long {
                tx_seq: self.tx_seq,
                rx_seq: self.rx_seq,
            };
            self.tx_seq = self.tx_seq.wrapping_add(1);
            k
        } else {
            HeaderKind::Short
        }
    }

    fn queue(&mut self, p: Packet) {
        let kind = if matches!(p, Packet::Version { .. }) {
            HeaderKind::Short
        } else {
            self.next_header()
        };
        self.push_bytes(p.encode(kind));
    }

    fn push_bytes(&mut self, bytes: Vec<u8>) {
        let zlp = !bytes.is_empty() && bytes.len().is_multiple_of(self.max_packet);
        self.out.push_back(Transfer { bytes, zlp });
    }

    /// The next transfer to submit on the OUT endpoint.
    pub fn poll_transmit(&mut self) -> Option<Transfer> {
        self.flush_all();
        self.out.pop_front()
    }

    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// Queue a packet as it is, with this end's header (a device's
    /// CONTROL log line; a simulator's deliberate stray segment).
    pub fn send_raw(&mut self, p: Packet) {
        self.queue(p);
    }

    /// Device: accept connections to `port`.
    pub fn listen(&mut self, port: u16) {
        self.listening.insert(port);
    }

    /// Host: open a connection to the device's `port`.
    pub fn connect(&mut self, port: u16) -> Result<ConnId> {
        if self.role != Role::Host {
            return Err(ProtoError::protocol(
                "only the host opens usbmux connections",
            ));
        }
        if !self.is_ready() {
            return Err(ProtoError::protocol(
                "the usbmux VERSION exchange is not done yet",
            ));
        }
        let mut local = self.next_port;
        while self.conns.keys().any(|c| c.local == local) || local == 0 {
            local = local.wrapping_add(1);
        }
        self.next_port = local.wrapping_add(1);
        let id = ConnId {
            local,
            remote: port,
        };
        self.conns.insert(
            id,
            Conn {
                state: State::SynSent,
                seq: 0,
                peer_acked: 0,
                peer_window: 0,
                expect: 0,
                advertised: RECV_BUFFER,
                inbuf: Chunks::default(),
                outbuf: VecDeque::new(),
            },
        );
        self.queue(tcp(id, 0, 0, SYN, RECV_BUFFER, Vec::new()));
        Ok(id)
    }

    /// Queue `data` to send on `id`; how much was taken (less when the
    /// send buffer is full: wait for [`Event::Writable`]).
    pub fn send(&mut self, id: ConnId, data: &[u8]) -> Result<usize> {
        let c = self
            .conns
            .get_mut(&id)
            .filter(|c| c.state != State::Closed)
            .ok_or_else(|| closed(id))?;
        let n = data.len().min(SEND_BUFFER - c.outbuf.len());
        c.outbuf.extend(&data[..n]);
        Ok(n)
    }

    /// Read what arrived on `id` into `buf`; 0 when nothing is waiting.
    pub fn recv(&mut self, id: ConnId, buf: &mut [u8]) -> Result<usize> {
        let c = self.conns.get_mut(&id).ok_or_else(|| closed(id))?;
        let n = c.inbuf.take(buf);
        // Reopen the window once half of it is free again.
        let free = RECV_BUFFER - c.inbuf.len() as u32;
        if n > 0 && c.advertised < RECV_BUFFER / 2 && free >= RECV_BUFFER / 2 {
            c.advertised = free;
            let p = tcp(id, c.seq, c.expect, ACK, free, Vec::new());
            self.queue(p);
        }
        Ok(n)
    }

    /// Close `id` as usbmuxd does: a RST, no FIN handshake (none when the
    /// peer already ended it).
    pub fn close(&mut self, id: ConnId) {
        if let Some(c) = self.conns.remove(&id) {
            if c.state != State::Closed {
                self.queue(tcp(id, c.seq, c.expect, RST, 0, Vec::new()));
            }
        }
    }

    /// Bytes queued on `id` that the peer's window has not let out yet.
    pub fn unsent(&self, id: ConnId) -> usize {
        self.conns.get(&id).map_or(0, |c| c.outbuf.len())
    }

    /// Connections open now (not those the peer ended, whose last bytes
    /// may still wait to be read).
    pub fn connections(&self) -> Vec<ConnId> {
        self.conns
            .iter()
            .filter(|(_, c)| c.state != State::Closed)
            .map(|(id, _)| *id)
            .collect()
    }

    /// Take the bytes of bulk IN transfers, in any split. An error is a
    /// pipe that cannot be trusted any more (drop the device).
    pub fn handle_input(&mut self, bytes: &[u8]) -> Result<()> {
        self.deframer.feed(bytes);
        self.take_packets()
    }

    /// [`Mux::handle_input`] for a transfer's own buffer (no copy when it
    /// holds whole packets).
    pub fn handle_input_vec(&mut self, bytes: Vec<u8>) -> Result<()> {
        self.deframer.feed_vec(bytes);
        self.take_packets()
    }

    fn take_packets(&mut self) -> Result<()> {
        while let Some(p) = self.deframer.next_packet(self.long_headers())? {
            let (kind, packet) = Packet::decode(&p, self.long_headers())?;
            if let HeaderKind::Long { tx_seq, rx_seq } = kind {
                // Nobody checks these. usbmuxd (a host) echoes the rx_seq
                // field it last saw; a device here tells the host's last
                // tx_seq back, what the field's name says.
                self.rx_seq = match self.role {
                    Role::Host => rx_seq,
                    Role::Device => tx_seq,
                };
            }
            self.handle_packet(packet)?;
        }
        Ok(())
    }

    fn handle_packet(&mut self, p: Packet) -> Result<()> {
        match (self.role, p) {
            (Role::Host, Packet::Version { major, .. }) if self.version == 0 => {
                if !(1..=2).contains(&major) {
                    return Err(ProtoError::protocol(format!(
                        "the device speaks usbmux version {major}; 1 and 2 are known"
                    )));
                }
                self.version = major;
                if major >= 2 {
                    self.tx_seq = 0;
                    self.rx_seq = 0xffff;
                    self.queue(Packet::Setup(7));
                }
                self.events.push_back(Event::Ready { version: major });
            }
            (Role::Device, Packet::Version { major, .. }) if self.version == 0 => {
                let v = major.clamp(1, 2);
                self.queue(Packet::Version { major: v, minor: 0 });
                self.version = v;
                self.events.push_back(Event::Ready { version: v });
            }
            (_, Packet::Version { .. }) => {} // a repeat: nothing changes
            (_, Packet::Setup(_)) => {}
            (_, Packet::Control { kind, text }) => self.events.push_back(Event::Log {
                kind,
                text: String::from_utf8_lossy(&text).into_owned(),
            }),
            (_, Packet::Tcp { tcp, payload }) => self.handle_tcp(tcp, payload),
        }
        Ok(())
    }

    fn handle_tcp(&mut self, t: Tcp, payload: Vec<u8>) {
        let id = ConnId {
            local: t.dport,
            remote: t.sport,
        };
        let window = u32::from(t.window) << 8;
        if !self.conns.contains_key(&id) {
            match (self.role, t.flags) {
                (_, f) if f & RST != 0 => {}
                (Role::Device, SYN) if self.listening.contains(&id.local) => {
                    // Initial sequence number 0, as devices send it (hosts
                    // in the manner of usbmuxd assume it).
                    self.conns.insert(
                        id,
                        Conn {
                            state: State::Connected,
                            seq: 1,
                            peer_acked: 1,
                            peer_window: window,
                            expect: t.seq.wrapping_add(1),
                            advertised: RECV_BUFFER,
                            inbuf: Chunks::default(),
                            outbuf: VecDeque::new(),
                        },
                    );
                    self.queue(tcp(
                        id,
                        0,
                        t.seq.wrapping_add(1),
                        SYN | ACK,
                        RECV_BUFFER,
                        Vec::new(),
                    ));
                    self.events.push_back(Event::Connected(id));
                }
                (Role::Device, SYN) => {
                    let reason = format!("no service on port {}", id.local).into_bytes();
                    self.queue(tcp(id, 0, t.seq.wrapping_add(1), RST | ACK, 0, reason));
                }
                // Traffic for a connection we do not have: an anonymous RST.
                _ => self.queue(tcp(id, t.ack, t.seq, RST, 0, Vec::new())),
            }
            return;
        }
        let c = self.conns.get_mut(&id).expect("checked");
        match c.state {
            State::SynSent => {
                if t.flags == SYN | ACK {
                    c.state = State::Connected;
                    c.seq = 1;
                    c.peer_acked = t.ack;
                    c.peer_window = window;
                    // The device's initial sequence number, whatever it is.
                    c.expect = t.seq.wrapping_add(1);
                    let ack = tcp(id, c.seq, c.expect, ACK, c.advertised, Vec::new());
                    self.queue(ack);
                    self.events.push_back(Event::Connected(id));
                } else {
                    self.conns.remove(&id);
                    let reason = String::from_utf8_lossy(&payload).into_owned();
                    self.events.push_back(Event::Refused(id, reason));
                }
            }
            State::Closed => {}
            State::Connected => {
                if t.flags != ACK {
                    c.state = State::Closed;
                    c.outbuf.clear();
                    let why = if t.flags & RST != 0 {
                        match String::from_utf8_lossy(&payload).trim() {
                            "" => "the other end reset the connection".to_string(),
                            r => format!("the other end reset the connection: {r}"),
                        }
                    } else {
                        format!("a segment with flags {:#04x}", t.flags)
                    };
                    self.events.push_back(Event::Closed(id, why));
                    return;
                }
                let had_room = c
                    .peer_window
                    .saturating_sub(c.seq.wrapping_sub(c.peer_acked));
                c.peer_acked = t.ack;
                c.peer_window = window;
                if payload.is_empty() {
                    let room = c
                        .peer_window
                        .saturating_sub(c.seq.wrapping_sub(c.peer_acked));
                    if room > had_room && !c.outbuf.is_empty() {
                        self.events.push_back(Event::Writable(id));
                    }
                    return;
                }
                // No reordering on USB: a segment that is not the next one,
                // or that runs past the window we gave, breaks the rules.
                let len = payload.len() as u32;
                if t.seq != c.expect || len > c.advertised {
                    let why = if t.seq != c.expect {
                        format!("a segment at {} where {} was next", t.seq, c.expect)
                    } else {
                        format!("{len} bytes where the window was {} bytes", c.advertised)
                    };
                    c.state = State::Closed;
                    c.outbuf.clear();
                    self.queue(tcp(id, 0, t.seq, RST, 0, Vec::new()));
                    self.events.push_back(Event::Closed(id, why));
                    return;
                }
                c.inbuf.push(payload);
                c.expect = c.expect.wrapping_add(len);
                c.advertised = RECV_BUFFER - c.inbuf.len() as u32;
                // A prompt ACK for every segment: devices send best so.
                let ack = tcp(id, c.seq, c.expect, ACK, c.advertised, Vec::new());
                self.queue(ack);
                self.events.push_back(Event::Readable(id));
            }
        }
    }

    /// Turn queued data into segments while the peers' windows allow,
    /// each encoded straight from the send buffer (one copy).
    fn flush_all(&mut self) {
        let ids: Vec<ConnId> = self.conns.keys().copied().collect();
        for id in ids {
            while let Some(c) = self.conns.get(&id) {
                if c.state != State::Connected || c.outbuf.is_empty() {
                    break;
                }
                let in_flight = c.seq.wrapping_sub(c.peer_acked);
                let room = c.peer_window.saturating_sub(in_flight) as usize;
                let n = room.min(MAX_SEGMENT).min(c.outbuf.len());
                if n == 0 {
                    break;
                }
                let t = Tcp {
                    sport: id.local,
                    dport: id.remote,
                    seq: c.seq,
                    ack: c.expect,
                    flags: ACK,
                    window: (c.advertised >> 8).min(u32::from(u16::MAX)) as u16,
                };
                let kind = self.next_header();
                let c = self.conns.get_mut(&id).expect("still here");
                let (a, b) = c.outbuf.as_slices();
                let from_a = n.min(a.len());
                let bytes = Packet::encode_tcp(kind, &t, &[&a[..from_a], &b[..n - from_a]]);
                c.outbuf.drain(..n);
                c.seq = c.seq.wrapping_add(n as u32);
                self.push_bytes(bytes);
            }
        }
    }
}

fn closed(id: ConnId) -> ProtoError {
    ProtoError::protocol(format!(
        "usbmux connection {}→{} is closed",
        id.local, id.remote
    ))
}

/// A TCP packet on connection `id`, advertising `window` bytes.
fn tcp(id: ConnId, seq: u32, ack: u32, flags: u8, window: u32, payload: Vec<u8>) -> Packet {
    Packet::Tcp {
        tcp: Tcp {
            sport: id.local,
            dport: id.remote,
            seq,
            ack,
            flags,
            window: (window >> 8).min(u32::from(u16::MAX)) as u16,
        },
        payload,
    }
}

#[cfg(test)]
mod tests;
