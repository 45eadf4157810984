//! Tests of `receive`: blocks through sockets, splice and the buffer.

use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::os::unix::net::UnixStream;
use std::thread;

use super::*;
use crate::stream::{BufStream, Stream};

const SIZES: [usize; 5] = [
    1,
    4_000,
    SPLICE_MIN as usize - 1,
    SPLICE_MIN as usize,
    (3 << 20) + 17,
];

fn block(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i % 251) as u8 ^ (i >> 12) as u8).collect()
}

/// A connected pair of each kind the host uses: (reader, writer).
fn pairs() -> Vec<(Box<dyn Stream>, Box<dyn Write + Send>)> {
    let (a, b) = UnixStream::pair().unwrap();
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let w = TcpStream::connect(l.local_addr().unwrap()).unwrap();
    let (r, _) = l.accept().unwrap();
    vec![(Box::new(a), Box::new(b)), (Box::new(r), Box::new(w))]
}

/// Write `HEAD`, the block (or its first `cut` bytes, then close), `TAIL`.
fn send(mut w: Box<dyn Write + Send>, data: Vec<u8>, cut: Option<usize>) -> thread::JoinHandle<()> {
    thread::spawn(move || {
        let _ = w.write_all(b"HEAD");
        match cut {
            Some(n) => {
                let _ = w.write_all(&data[..n]);
            }
            None => {
                let _ = w.write_all(&data);
                let _ = w.write_all(b"TAIL");
            }
        }
    })
}

/// The receiving end as the engine holds it (buffered) or bare.
fn engine_side(r: Box<dyn Stream>, buffered: bool) -> Box<dyn Stream> {
    if buffered {
        Box::new(BufStream::new(r))
    } else {
        r
    }
}

fn read4(s: &mut dyn Stream) -> [u8; 4] {
    let mut b = [0u8; 4];
    s.read_exact(&mut b).unwrap();
    b
}

/// Each size, through the buffered stream the engine uses (so part of
/// the block sits in the buffer) and straight from the socket.
#[test]
fn every_block_reaches_the_file_and_the_stream_stays_in_step() {
    let dir = tempfile::tempdir().unwrap();
    for buffered in [true, false] {
        for n in SIZES {
            for (r, w) in pairs() {
                let data = block(n);
                let sender = send(w, data.clone(), None);
                let mut s = engine_side(r, buffered);
                assert_eq!(&read4(s.as_mut()), b"HEAD");
                let path = dir.path().join("f");
                let mut f = File::create(&path).unwrap();
                let got = s
                    .receive_into(Some(&mut f), n as u64, &mut [0u8; 1000])
                    .unwrap();
                assert!(got.is_none(), "{got:?}");
                assert_eq!(&read4(s.as_mut()), b"TAIL", "size {n}, buffered {buffered}");
                drop(f);
                assert!(
                    std::fs::read(&path).unwrap() == data,
                    "size {n}, buffered {buffered}"
                );
                sender.join().unwrap();
            }
        }
    }
}

/// A file's blocks as the device sends them: a header, then the block,
/// large and small in turn, through the engine's buffered stream.
#[test]
fn headers_and_blocks_in_turn_keep_their_order() {
    let dir = tempfile::tempdir().unwrap();
    let sizes = [1 << 20, 1 << 20, 70_000, 10, 3 << 20, 5, 65_536, 200_000, 1];
    for (r, mut w) in pairs() {
        let blocks: Vec<Vec<u8>> = sizes.iter().map(|&n| block(n)).collect();
        let sent = blocks.clone();
        let sender = thread::spawn(move || {
            for (i, b) in sent.iter().enumerate() {
                w.write_all(&(i as u32).to_be_bytes()).unwrap();
                w.write_all(b).unwrap();
            }
            w.write_all(b"TAIL").unwrap();
        });
        let mut s: Box<dyn Stream> = Box::new(BufStream::new(r));
        for (i, b) in blocks.iter().enumerate() {
            assert_eq!(read4(s.as_mut()), (i as u32).to_be_bytes(), "header {i}");
            let path = dir.path().join(format!("b{i}"));
            let mut f = File::create(&path).unwrap();
            let got = s.receive_into(Some(&mut f), b.len() as u64, &mut [0u8; 1000]);
            assert!(got.unwrap().is_none());
            drop(f);
            assert!(std::fs::read(&path).unwrap() == *b, "block {i}");
        }
        assert_eq!(&read4(s.as_mut()), b"TAIL");
        sender.join().unwrap();
    }
}

#[test]
fn a_block_without_a_file_is_read_and_dropped() {
    for (r, w) in pairs() {
        let n = (2 << 20) + 5;
        let sender = send(w, block(n), None);
        let mut s: Box<dyn Stream> = Box::new(BufStream::new(r));
        read4(s.as_mut());
        assert!(s
            .receive_into(None, n as u64, &mut [0u8; 4096])
            .unwrap()
            .is_none());
        assert_eq!(&read4(s.as_mut()), b"TAIL");
        sender.join().unwrap();
    }
}

/// A file that refuses the bytes (here: opened only for reading, so
/// `splice` and `write` both fail) is reported once the whole block is
/// taken; the next message is still read where it starts.
#[test]
fn a_file_that_fails_is_reported_after_the_whole_block() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ro");
    std::fs::write(&path, b"").unwrap();
    for buffered in [true, false] {
        for n in SIZES {
            for (r, w) in pairs() {
                let sender = send(w, block(n), None);
                let mut s = engine_side(r, buffered);
                read4(s.as_mut());
                let mut f = File::open(&path).unwrap();
                let got = s
                    .receive_into(Some(&mut f), n as u64, &mut [0u8; 1000])
                    .unwrap();
                assert!(got.is_some(), "size {n}, buffered {buffered}");
                assert_eq!(&read4(s.as_mut()), b"TAIL", "size {n}, buffered {buffered}");
                sender.join().unwrap();
            }
        }
    }
    assert_eq!(std::fs::read(&path).unwrap(), b"");
}

/// `/dev/full` takes no `splice` (the ordinary write is used for the
/// block) and fails every write as a full disk would.
#[cfg(target_os = "linux")]
#[test]
fn a_full_disk_is_reported_as_storage_full() {
    for (r, w) in pairs() {
        let n = 1 << 20;
        let sender = send(w, block(n), None);
        let mut s: Box<dyn Stream> = Box::new(BufStream::new(r));
        read4(s.as_mut());
        let mut f = File::options().write(true).open("/dev/full").unwrap();
        let got = s
            .receive_into(Some(&mut f), n as u64, &mut [0u8; 1000])
            .unwrap();
        assert_eq!(got.map(|e| e.kind()), Some(io::ErrorKind::StorageFull));
        assert_eq!(&read4(s.as_mut()), b"TAIL");
        sender.join().unwrap();
    }
}

#[test]
fn a_connection_closed_inside_a_block_is_a_read_error() {
    let dir = tempfile::tempdir().unwrap();
    for buffered in [true, false] {
        for (r, w) in pairs() {
            let n = 3 << 20;
            let sender = send(w, block(n), Some(n / 2));
            let mut s = engine_side(r, buffered);
            read4(s.as_mut());
            let mut f = File::create(dir.path().join("f")).unwrap();
            let got = s.receive_into(Some(&mut f), n as u64, &mut [0u8; 1000]);
            assert!(got.is_err(), "buffered {buffered}: {got:?}");
            sender.join().unwrap();
        }
    }
}
