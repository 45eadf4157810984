//! The mux state machine, each role against packets written by hand from
//! usbmuxd's (so a mistake shared by both roles cannot pass), and the two
//! roles against each other.

use super::packet::{hex, FIN, PROTO_TCP};
use super::*;

fn sent(m: &mut Mux) -> Vec<Vec<u8>> {
    std::iter::from_fn(|| m.poll_transmit())
        .map(|t| t.bytes)
        .collect()
}

fn events(m: &mut Mux) -> Vec<Event> {
    std::iter::from_fn(|| m.poll_event()).collect()
}

const LOCKDOWN: u16 = 62078;

/// A host past the VERSION exchange with a device answering as an iPhone.
fn ready_host() -> Mux {
    let mut h = Mux::new(Role::Host, 512);
    sent(&mut h);
    h.handle_input(&hex("00000000 00000014 00000002 00000000 00000000"))
        .unwrap();
    sent(&mut h);
    events(&mut h);
    h
}

/// A ready host connected to lockdownd, the device's SYN|ACK carrying
/// initial sequence number `isn` (what both sent since is drained).
fn connected_host(isn: u32) -> (Mux, ConnId) {
    let mut h = ready_host();
    let id = h.connect(LOCKDOWN).unwrap();
    sent(&mut h);
    let syn_ack = Packet::Tcp {
        tcp: Tcp {
            sport: LOCKDOWN,
            dport: id.local,
            seq: isn,
            ack: 1,
            flags: SYN | ACK,
            window: 0x200,
        },
        payload: vec![],
    };
    h.handle_input(&syn_ack.encode(HeaderKind::Long {
        tx_seq: 0,
        rx_seq: 1,
    }))
    .unwrap();
    assert_eq!(events(&mut h), [Event::Connected(id)]);
    sent(&mut h);
    (h, id)
}

#[test]
fn host_handshake_and_connect_byte_for_byte() {
    let mut h = Mux::new(Role::Host, 512);
    assert_eq!(
        sent(&mut h),
        [hex("00000000 00000014 00000002 00000000 00000000")],
        "VERSION 2.0 with the short header"
    );
    assert!(
        h.connect(LOCKDOWN).is_err(),
        "not before the VERSION answer"
    );
    // The device's VERSION answer, split across two IN transfers.
    let answer = hex("00000000 00000014 00000002 00000000 00000000");
    h.handle_input(&answer[..5]).unwrap();
    assert!(events(&mut h).is_empty());
    h.handle_input(&answer[5..]).unwrap();
    assert_eq!(events(&mut h), [Event::Ready { version: 2 }]);
    assert_eq!(
        sent(&mut h),
        [hex("00000002 00000011 feedface 0000 ffff 07")],
        "SETUP 0x07, counters reset"
    );

    let id = h.connect(LOCKDOWN).unwrap();
    assert_eq!(
        id,
        ConnId {
            local: 1,
            remote: LOCKDOWN
        }
    );
    assert_eq!(
        sent(&mut h),
        [hex("00000006 00000024 feedface 0001 ffff  0001 f27e 00000000 00000000 50 02 1000 0000 0000")],
        "SYN, window 1 MiB"
    );
    // SYN|ACK as a device sends it: its ISN 0, window 128 KiB, rx_seq 1.
    h.handle_input(&hex(
        "00000006 00000024 feedface 0000 0001  f27e 0001 00000000 00000001 50 12 0200 0000 0000",
    ))
    .unwrap();
    assert_eq!(events(&mut h), [Event::Connected(id)]);
    assert_eq!(
        sent(&mut h),
        [hex("00000006 00000024 feedface 0002 0001  0001 f27e 00000001 00000001 50 10 1000 0000 0000")],
        "ACK: seq 1, ack the device's ISN + 1, header rx_seq echoed"
    );
}

#[test]
fn the_host_takes_the_devices_initial_sequence_number_from_its_syn_ack() {
    // ISN 0x1000 (usbmuxd itself assumes 0; the facts say take it).
    let (mut h, id) = connected_host(0x1000);
    // Five bytes of data at 0x1001.
    h.handle_input(&hex(
        "00000006 00000029 feedface 0001 0002  f27e 0001 00001001 00000001 50 10 0200 0000 0000 68656c6c6f",
    ))
    .unwrap();
    assert_eq!(events(&mut h), [Event::Readable(id)]);
    let ack = sent(&mut h);
    assert_eq!(ack.len(), 1, "a prompt ACK");
    let (_, p) = Packet::decode(&ack[0], true).unwrap();
    let Packet::Tcp { tcp, payload } = p else {
        panic!()
    };
    assert_eq!((tcp.flags, tcp.ack, payload.len()), (ACK, 0x1006, 0));
    let mut buf = [0u8; 16];
    assert_eq!(h.recv(id, &mut buf).unwrap(), 5);
    assert_eq!(&buf[..5], b"hello");
}

#[test]
fn a_refused_connection_an_unknown_port_a_log_line_and_a_reset() {
    let mut h = ready_host();
    let id = h.connect(1234).unwrap();
    sent(&mut h);
    // RST|ACK with a reason, as a device refuses a port with no service.
    h.handle_input(&hex(
        "00000006 00000028 feedface 0000 0001  04d2 0001 00000000 00000001 50 14 0000 0000 0000 6e6f7065",
    ))
    .unwrap();
    assert_eq!(events(&mut h), [Event::Refused(id, "nope".into())]);
    assert!(h.connections().is_empty());

    // Data for a connection the host never made: an anonymous RST.
    h.handle_input(&hex(
        "00000006 00000025 feedface 0001 0001  f27e 0063 00000010 00000020 50 10 0200 0000 0000 78",
    ))
    .unwrap();
    let rst = sent(&mut h);
    let (_, p) = Packet::decode(&rst[0], true).unwrap();
    let Packet::Tcp { tcp, .. } = p else { panic!() };
    assert_eq!(
        (tcp.sport, tcp.dport, tcp.flags, tcp.ack),
        (0x63, LOCKDOWN, RST, 0x10)
    );

    // CONTROL, type 7 (info), between TCP packets: logged.
    h.handle_input(&hex("00000001 00000016 feedface 0002 0001 07 68656c6c6f"))
        .unwrap();
    assert_eq!(
        events(&mut h),
        [Event::Log {
            kind: 7,
            text: "hello".into()
        }]
    );

    // A connected device that resets the connection.
    let id = h.connect(LOCKDOWN).unwrap();
    sent(&mut h);
    h.handle_input(&hex(
        "00000006 00000024 feedface 0003 0001  f27e 0002 00000000 00000001 50 12 0200 0000 0000",
    ))
    .unwrap();
    events(&mut h);
    h.handle_input(&hex(
        "00000006 00000024 feedface 0004 0001  f27e 0002 00000001 00000001 50 04 0000 0000 0000",
    ))
    .unwrap();
    assert!(
        matches!(&events(&mut h)[..], [Event::Closed(c, why)] if *c == id && why.contains("reset"))
    );
    assert!(h.send(id, b"x").is_err(), "closed");
}

#[test]
fn a_device_that_overruns_the_window_or_sends_garbage_is_stopped_not_obeyed() {
    let (mut h, id) = connected_host(0);
    // Fill the 1 MiB window with full segments, never reading them.
    let mut seq = 1u32;
    let seg = vec![0xabu8; MAX_SEGMENT];
    let mut sent_bytes = 0u32;
    while sent_bytes + MAX_SEGMENT as u32 <= RECV_BUFFER {
        let p = Packet::Tcp {
            tcp: Tcp {
                sport: LOCKDOWN,
                dport: 1,
                seq,
                ack: 1,
                flags: ACK,
                window: 0x200,
            },
            payload: seg.clone(),
        };
        h.handle_input(&p.encode(HeaderKind::Long {
            tx_seq: 0,
            rx_seq: 0,
        }))
        .unwrap();
        seq += MAX_SEGMENT as u32;
        sent_bytes += MAX_SEGMENT as u32;
    }
    assert!(h.connections().contains(&id), "within the window");
    // One more full segment is past what was advertised.
    let p = Packet::Tcp {
        tcp: Tcp {
            sport: LOCKDOWN,
            dport: 1,
            seq,
            ack: 1,
            flags: ACK,
            window: 0x200,
        },
        payload: seg,
    };
    h.handle_input(&p.encode(HeaderKind::Long {
        tx_seq: 0,
        rx_seq: 0,
    }))
    .unwrap();
    let ev = events(&mut h);
    assert!(
        matches!(ev.last(), Some(Event::Closed(c, why)) if *c == id && why.contains("window")),
        "{ev:?}"
    );
    assert!(!h.connections().contains(&id));

    // A header that is no usbmux header: an error, never a panic or a wait.
    for garbage in [
        hex("00000006 00000010 deadbeef 0000 0000"),
        hex("00000006 ffffff00 feedface 0000 0000"),
        hex("00000063 00000010 feedface 0000 0000"),
        hex("00000006 00000012 feedface 0000 0000 0000"),
    ] {
        let mut h = ready_host();
        assert!(h.handle_input(&garbage).is_err(), "{garbage:x?}");
    }
    // An unknown usbmux version from the device.
    let mut h = Mux::new(Role::Host, 512);
    assert!(h
        .handle_input(&hex("00000000 00000014 00000007 00000000 00000000"))
        .is_err());
}

#[test]
fn the_device_role_answers_usbmuxds_own_packets() {
    let mut d = Mux::new(Role::Device, 512);
    d.listen(LOCKDOWN);
    assert!(sent(&mut d).is_empty(), "a device says nothing first");
    d.handle_input(&hex("00000000 00000014 00000002 00000000 00000000"))
        .unwrap();
    assert_eq!(
        sent(&mut d),
        [hex("00000000 00000014 00000002 00000000 00000000")]
    );
    d.handle_input(&hex("00000002 00000011 feedface 0000 ffff 07"))
        .unwrap();
    assert_eq!(events(&mut d), [Event::Ready { version: 2 }]);
    // usbmuxd's SYN: sport 1, window 128 KiB (0x0200).
    d.handle_input(&hex(
        "00000006 00000024 feedface 0001 ffff  0001 f27e 00000000 00000000 50 02 0200 0000 0000",
    ))
    .unwrap();
    let id = ConnId {
        local: LOCKDOWN,
        remote: 1,
    };
    assert_eq!(events(&mut d), [Event::Connected(id)]);
    assert_eq!(
        sent(&mut d),
        [hex("00000006 00000024 feedface 0000 0001  f27e 0001 00000000 00000001 50 12 1000 0000 0000")],
        "SYN|ACK, ISN 0, ack 1"
    );
    // usbmuxd's ACK, then 4 bytes of data: the device ACKs at once.
    d.handle_input(&hex(
        "00000006 00000024 feedface 0002 0000  0001 f27e 00000001 00000001 50 10 0200 0000 0000",
    ))
    .unwrap();
    d.handle_input(&hex(
        "00000006 00000028 feedface 0003 0000  0001 f27e 00000001 00000001 50 10 0200 0000 0000 00000000",
    ))
    .unwrap();
    assert_eq!(events(&mut d), [Event::Readable(id)]);
    let ack = sent(&mut d);
    let (_, p) = Packet::decode(&ack[0], true).unwrap();
    let Packet::Tcp { tcp, .. } = p else { panic!() };
    assert_eq!((tcp.flags, tcp.seq, tcp.ack), (ACK, 1, 5));

    // A port nobody listens on: RST with a reason.
    d.handle_input(&hex(
        "00000006 00000024 feedface 0004 0000  0002 1234 00000000 00000000 50 02 0200 0000 0000",
    ))
    .unwrap();
    let rst = sent(&mut d);
    let (_, p) = Packet::decode(&rst[0], true).unwrap();
    let Packet::Tcp { tcp, payload } = p else {
        panic!()
    };
    assert_eq!(tcp.flags & RST, RST);
    assert!(String::from_utf8_lossy(&payload).contains("4660"));
    // The host's close: RST. The device forgets the connection.
    d.handle_input(&hex(
        "00000006 00000024 feedface 0005 0000  0001 f27e 00000005 00000001 50 04 0000 0000 0000",
    ))
    .unwrap();
    assert!(matches!(&events(&mut d)[..], [Event::Closed(c, _)] if *c == id));
    // FIN is not part of this protocol: it ends the connection too.
    let _ = FIN;
    let _ = PROTO_TCP;
}

/// Run host and device against each other until neither has anything to
/// send, moving each transfer in pieces of `split` bytes (USB IN
/// transfers of any size). Returns the events each saw.
fn pump(h: &mut Mux, d: &mut Mux, split: usize) -> (Vec<Event>, Vec<Event>) {
    let (mut he, mut de) = (Vec::new(), Vec::new());
    loop {
        let mut moved = false;
        while let Some(t) = h.poll_transmit() {
            assert!(
                t.bytes.len() <= packet::MTU,
                "one bulk OUT transfer at most the MTU"
            );
            assert_eq!(t.zlp, t.bytes.len() % 512 == 0);
            for c in t.bytes.chunks(split) {
                d.handle_input(c).unwrap();
            }
            moved = true;
        }
        while let Some(t) = d.poll_transmit() {
            for c in t.bytes.chunks(split) {
                h.handle_input(c).unwrap();
            }
            moved = true;
        }
        he.extend(std::iter::from_fn(|| h.poll_event()));
        de.extend(std::iter::from_fn(|| d.poll_event()));
        if !moved {
            return (he, de);
        }
    }
}

#[test]
fn host_and_device_move_megabytes_both_ways_in_any_split_within_the_windows() {
    for split in [1000, 512, 16_384, 7] {
        let mut h = Mux::new(Role::Host, 512);
        let mut d = Mux::new(Role::Device, 512);
        d.listen(LOCKDOWN);
        let (he, de) = pump(&mut h, &mut d, split);
        assert_eq!(he, [Event::Ready { version: 2 }]);
        assert_eq!(de, [Event::Ready { version: 2 }]);
        let id = h.connect(LOCKDOWN).unwrap();
        let (he, de) = pump(&mut h, &mut d, split);
        assert_eq!(he, [Event::Connected(id)]);
        let did = ConnId {
            local: LOCKDOWN,
            remote: id.local,
        };
        assert_eq!(de, [Event::Connected(did)]);

        // 3 MiB from the device (a backup's direction), read slowly by
        // the host: the device may never overrun the host's window (the
        // host would close the connection if it did).
        let data: Vec<u8> = (0..3 * 1024 * 1024u32)
            .map(|i| (i * 7 % 251) as u8)
            .collect();
        let mut offered = 0;
        let mut got = Vec::new();
        let mut buf = vec![0u8; 200_000];
        while got.len() < data.len() {
            if offered < data.len() {
                offered += d.send(did, &data[offered..]).unwrap();
            }
            let (he, de) = pump(&mut h, &mut d, split);
            assert!(!he.iter().any(|e| matches!(e, Event::Closed(..))), "{he:?}");
            assert!(!de.iter().any(|e| matches!(e, Event::Closed(..))), "{de:?}");
            let n = h.recv(id, &mut buf).unwrap();
            got.extend_from_slice(&buf[..n]);
        }
        assert!(
            got == data,
            "split {split}: the bytes arrive whole and in order"
        );

        // And the other way.
        assert_eq!(h.send(id, b"request").unwrap(), 7);
        pump(&mut h, &mut d, split);
        let mut small = [0u8; 32];
        assert_eq!(d.recv(did, &mut small).unwrap(), 7);
        assert_eq!(&small[..7], b"request");

        h.close(id);
        let (_, de) = pump(&mut h, &mut d, split);
        assert!(matches!(&de[..], [Event::Closed(c, _)] if *c == did));
        assert!(h.connections().is_empty() && d.connections().is_empty());
    }
}

#[test]
fn a_transfer_of_a_whole_number_of_max_size_packets_asks_for_a_zero_length_packet() {
    let mut h = Mux::new(Role::Host, 512);
    let mut d = Mux::new(Role::Device, 512);
    d.listen(LOCKDOWN);
    pump(&mut h, &mut d, 512);
    let id = h.connect(LOCKDOWN).unwrap();
    pump(&mut h, &mut d, 512);
    // 16 + 20 + 476 = 512 bytes: exactly one max-size packet.
    h.send(id, &[1u8; 476]).unwrap();
    let t = h.poll_transmit().unwrap();
    assert_eq!((t.bytes.len(), t.zlp), (512, true));
    h.send(id, &[1u8; 477]).unwrap();
    let t = h.poll_transmit().unwrap();
    assert_eq!((t.bytes.len(), t.zlp), (513, false));
    // USB 3: 1024-byte packets.
    let mut h3 = Mux::new(Role::Host, 1024);
    let t = h3.poll_transmit().unwrap();
    assert!(!t.zlp);
}

#[test]
fn segments_never_exceed_the_largest_usbmuxd_takes() {
    let mut h = Mux::new(Role::Host, 512);
    let mut d = Mux::new(Role::Device, 512);
    d.listen(LOCKDOWN);
    pump(&mut h, &mut d, 4096);
    let id = h.connect(LOCKDOWN).unwrap();
    pump(&mut h, &mut d, 4096);
    h.send(id, &vec![9u8; 200_000]).unwrap();
    let mut sizes = Vec::new();
    while let Some(t) = h.poll_transmit() {
        let (_, p) = Packet::decode(&t.bytes, true).unwrap();
        if let Packet::Tcp { payload, .. } = p {
            sizes.push(payload.len());
        }
    }
    assert!(
        sizes.iter().all(|&n| n <= MAX_SEGMENT) && sizes[0] == MAX_SEGMENT,
        "{sizes:?}"
    );
    assert_eq!(MAX_SEGMENT, 49_116);
    // The device's window (1 MiB) allows all of it at once.
    assert_eq!(sizes.iter().sum::<usize>(), 200_000);
}

/// A little deterministic generator: the test is the same every run.
struct XorShift(u64);
impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

#[test]
fn damaged_streams_are_refused_or_survived_never_a_panic() {
    // A valid conversation from the device's side, then damaged copies of
    // it: bytes flipped, cut short, split anywhere (what the fuzz targets
    // do at length, here on stable in every test run).
    let mut h = Mux::new(Role::Host, 512);
    let mut d = Mux::new(Role::Device, 512);
    d.listen(LOCKDOWN);
    let mut device_bytes = Vec::new();
    let relay = |h: &mut Mux, d: &mut Mux, log: &mut Vec<u8>| loop {
        let mut moved = false;
        while let Some(t) = h.poll_transmit() {
            d.handle_input(&t.bytes).unwrap();
            moved = true;
        }
        while let Some(t) = d.poll_transmit() {
            log.extend_from_slice(&t.bytes);
            h.handle_input(&t.bytes).unwrap();
            moved = true;
        }
        if !moved {
            break;
        }
    };
    relay(&mut h, &mut d, &mut device_bytes);
    let id = h.connect(LOCKDOWN).unwrap();
    relay(&mut h, &mut d, &mut device_bytes);
    let did = ConnId {
        local: LOCKDOWN,
        remote: id.local,
    };
    d.send(did, &[42u8; 70_000]).unwrap();
    relay(&mut h, &mut d, &mut device_bytes);
    assert!(device_bytes.len() > 70_000);

    let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
    for _ in 0..400 {
        let mut bytes = device_bytes.clone();
        for _ in 0..(rng.next() % 8) {
            let i = (rng.next() as usize) % bytes.len();
            bytes[i] ^= (rng.next() % 255 + 1) as u8;
        }
        bytes.truncate((rng.next() as usize) % (bytes.len() + 1));
        let split = 1 + (rng.next() as usize) % 20_000;
        let mut h = Mux::new(Role::Host, 512);
        let mut connected = false;
        for chunk in bytes.chunks(split) {
            if h.handle_input(chunk).is_err() {
                break;
            }
            while let Some(e) = h.poll_event() {
                if let Event::Readable(c) = e {
                    let mut buf = [0u8; 8192];
                    let _ = h.recv(c, &mut buf);
                }
            }
            if h.is_ready() && !connected {
                let _ = h.connect(LOCKDOWN);
                connected = true;
            }
            while h.poll_transmit().is_some() {}
        }
    }
    // Plain noise too, for both roles.
    for _ in 0..400 {
        let n = (rng.next() % 300) as usize;
        let noise: Vec<u8> = (0..n).map(|_| rng.next() as u8).collect();
        for role in [Role::Host, Role::Device] {
            let mut m = Mux::new(role, 512);
            let _ = m.handle_input(&noise);
            while m.poll_transmit().is_some() {}
        }
    }
}

#[test]
fn what_arrived_before_a_reset_stays_readable_and_nothing_more_is_sent() {
    let (mut h, id) = connected_host(0);
    // The device's answer, then at once its RST (it served and hung up).
    let data = Packet::Tcp {
        tcp: Tcp {
            sport: LOCKDOWN,
            dport: id.local,
            seq: 1,
            ack: 1,
            flags: ACK,
            window: 0x200,
        },
        payload: b"last words".to_vec(),
    };
    let rst = Packet::Tcp {
        tcp: Tcp {
            sport: LOCKDOWN,
            dport: id.local,
            seq: 11,
            ack: 1,
            flags: RST,
            window: 0,
        },
        payload: vec![],
    };
    let long = |n| HeaderKind::Long {
        tx_seq: n,
        rx_seq: 1,
    };
    let mut both = data.encode(long(1));
    both.extend(rst.encode(long(2)));
    h.handle_input(&both).unwrap();
    let ev = events(&mut h);
    assert!(
        matches!(&ev[..], [Event::Readable(a), Event::Closed(b, _)] if *a == id && *b == id),
        "{ev:?}"
    );
    // Gone from the open connections, but its bytes are still there.
    assert!(h.connections().is_empty());
    let mut buf = [0u8; 64];
    assert_eq!(h.recv(id, &mut buf).unwrap(), 10);
    assert_eq!(&buf[..10], b"last words");
    assert_eq!(h.recv(id, &mut buf).unwrap(), 0);
    // Nothing may be sent on it, and closing it sends no RST back.
    sent(&mut h);
    assert!(h.send(id, b"more").is_err());
    h.close(id);
    assert!(sent(&mut h).is_empty(), "no RST answers a RST");
    assert!(h.recv(id, &mut buf).is_err(), "closed here: forgotten");
    // Segments for it afterwards get the anonymous RST of an unknown port.
    h.handle_input(&data.encode(long(3))).unwrap();
    let out = sent(&mut h);
    assert_eq!(out.len(), 1);
    let (_, p) = Packet::decode(&out[0], true).unwrap();
    assert!(matches!(p, Packet::Tcp { tcp, .. } if tcp.flags == RST));
}

#[test]
fn a_segment_is_encoded_from_parts_as_the_whole_packet_would_be() {
    let t = Tcp {
        sport: 3,
        dport: LOCKDOWN,
        seq: 77,
        ack: 5,
        flags: ACK,
        window: 0x1000,
    };
    let kind = HeaderKind::Long {
        tx_seq: 9,
        rx_seq: 4,
    };
    let whole = Packet::Tcp {
        tcp: t,
        payload: b"hello world".to_vec(),
    }
    .encode(kind);
    assert_eq!(
        Packet::encode_tcp(kind, &t, &[b"hello", b" ", b"world"]),
        whole
    );
    assert_eq!(Packet::encode_tcp(kind, &t, &[b"hello world", b""]), whole);
}
