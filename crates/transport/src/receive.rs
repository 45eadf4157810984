//! Moving a received block of file data from a device stream into a file.
//!
//! [`Stream::receive_into`](crate::stream::Stream::receive_into) is the entry
//! point. Everywhere it reads the block into a buffer and writes it out. On
//! Linux, a plain socket's large blocks go through a pipe with `splice(2)`
//! instead, so the bytes are not copied out of the kernel and back in: on a
//! 2 GiB file that copy was a fifth of the host's time (docs/benchmarks.md).
//!
//! The contract is the same on both paths: exactly `len` bytes are taken
//! from the stream unless reading fails, so the stream stays in step with
//! the protocol; a failure to write the file is returned beside the read
//! result, the rest of the block is read and dropped, and nothing more is
//! written to that file.

use std::fs::File;
use std::io::{self, Read, Write};

/// What became of a block: `None` when all of it reached the file (or
/// there was no file), or the error the file gave.
pub type WriteOutcome = Option<io::Error>;

/// Read `len` bytes from `r` through `buf` and write them to `out`.
pub fn copy_through<R: Read + ?Sized>(
    r: &mut R,
    mut out: Option<&mut File>,
    len: u64,
    buf: &mut [u8],
) -> io::Result<WriteOutcome> {
    let mut failed = None;
    let mut left = len;
    while left > 0 {
        let n = (left.min(buf.len() as u64)) as usize;
        r.read_exact(&mut buf[..n])?;
        if failed.is_none() {
            if let Some(f) = out.as_deref_mut() {
                if let Err(e) = f.write_all(&buf[..n]) {
                    failed = Some(e);
                }
            }
        }
        left -= n as u64;
    }
    Ok(failed)
}

/// Below this a block is copied through the buffer: two `splice` calls
/// cost more than one copy of a small block.
pub const SPLICE_MIN: u64 = 64 * 1024;

#[cfg(target_os = "linux")]
pub(crate) mod splice {
    use std::cell::RefCell;
    use std::fs::File;
    use std::io::{self, Read};
    use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

    use super::{copy_through, WriteOutcome, SPLICE_MIN};

    /// The pipe the bytes pass through, kept per thread between blocks.
    struct Pipe {
        r: File,
        w: OwnedFd,
        size: usize,
    }

    impl Pipe {
        fn new() -> io::Result<Pipe> {
            let mut fds = [0 as libc::c_int; 2];
            // SAFETY: `fds` has room for the two descriptors pipe2 writes.
            if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
                return Err(io::Error::last_os_error());
            }
            // SAFETY: pipe2 succeeded, so both are open descriptors we own.
            let (r, w) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
            let r = File::from(r);
            // A bigger pipe means fewer calls per block; the default (64 KiB)
            // still works if the system refuses.
            // SAFETY: plain fcntl calls on a descriptor we own.
            let size = unsafe {
                libc::fcntl(w.as_raw_fd(), libc::F_SETPIPE_SZ, 1 << 20);
                libc::fcntl(w.as_raw_fd(), libc::F_GETPIPE_SZ)
            };
            Ok(Pipe {
                r,
                w,
                size: if size > 0 { size as usize } else { 64 * 1024 },
            })
        }
    }

    thread_local! {
        static PIPE: RefCell<Option<Pipe>> = const { RefCell::new(None) };
    }

    fn splice(from: BorrowedFd, to: BorrowedFd, len: usize) -> io::Result<usize> {
        loop {
            // SAFETY: both descriptors are open for the call; null offsets
            // mean each file's own position is used and advanced.
            let n = unsafe {
                libc::splice(
                    from.as_raw_fd(),
                    std::ptr::null_mut(),
                    to.as_raw_fd(),
                    std::ptr::null_mut(),
                    len,
                    libc::SPLICE_F_MOVE,
                )
            };
            if n >= 0 {
                return Ok(n as usize);
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
        }
    }

    /// Whether `splice` cannot be used on this pair at all, as opposed to
    /// failing for a reason the caller must hear.
    fn unsupported(e: &io::Error) -> bool {
        matches!(e.raw_os_error(), Some(libc::EINVAL) | Some(libc::ENOSYS))
    }

    /// `Stream::receive_into` for a socket: `sock` is its descriptor and
    /// `r` reads the same socket, for small blocks and fallbacks.
    pub(crate) fn receive<R: Read>(
        sock: BorrowedFd,
        r: &mut R,
        out: Option<&mut File>,
        len: u64,
        buf: &mut [u8],
    ) -> io::Result<WriteOutcome> {
        let out = match out {
            Some(f) if len >= SPLICE_MIN => f,
            other => return copy_through(r, other, len, buf),
        };
        let pipe = match PIPE.with(|p| p.borrow_mut().take()) {
            Some(p) => p,
            None => match Pipe::new() {
                Ok(p) => p,
                Err(_) => return copy_through(r, Some(out), len, buf),
            },
        };
        let result = through(&pipe, sock, r, out, len, buf);
        // On success the pipe is empty and serves the next block; after an
        // error it may not be, and the session is ending anyway.
        if result.is_ok() {
            PIPE.with(|p| *p.borrow_mut() = Some(pipe));
        }
        result
    }

    fn through<R: Read>(
        pipe: &Pipe,
        sock: BorrowedFd,
        r: &mut R,
        out: &mut File,
        len: u64,
        buf: &mut [u8],
    ) -> io::Result<WriteOutcome> {
        let mut left = len;
        while left > 0 {
            let want = left.min(pipe.size as u64) as usize;
            let got = match splice(sock, pipe.w.as_fd(), want) {
                Ok(0) => {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the connection closed in the middle of a file block",
                    ))
                }
                Ok(n) => n,
                // Not a socket splice can read: nothing was taken yet.
                Err(e) if unsupported(&e) && left == len => {
                    return copy_through(r, Some(out), len, buf)
                }
                Err(e) => return Err(e),
            };
            left -= got as u64;
            let mut in_pipe = got;
            while in_pipe > 0 {
                match splice(pipe.r.as_fd(), out.as_fd(), in_pipe) {
                    Ok(0) => {
                        let e = io::Error::new(io::ErrorKind::WriteZero, "the file took no bytes");
                        return give_up(pipe, r, in_pipe, left, buf, e);
                    }
                    Ok(n) => in_pipe -= n,
                    // A file splice cannot write to: the ordinary way for
                    // this block.
                    Err(e) if unsupported(&e) => {
                        let failed = copy_through(&mut &pipe.r, Some(out), in_pipe as u64, buf)?;
                        let rest = if failed.is_none() { Some(out) } else { None };
                        let later = copy_through(r, rest, left, buf)?;
                        return Ok(failed.or(later));
                    }
                    Err(e) => return give_up(pipe, r, in_pipe, left, buf, e),
                }
            }
        }
        Ok(None)
    }

    /// The file failed with `e`: drop what is in the pipe and the rest of
    /// the block, so the stream stays in step, and report `e`.
    fn give_up<R: Read>(
        pipe: &Pipe,
        r: &mut R,
        in_pipe: usize,
        left: u64,
        buf: &mut [u8],
        e: io::Error,
    ) -> io::Result<WriteOutcome> {
        copy_through(&mut &pipe.r, None, in_pipe as u64, buf)?;
        copy_through(r, None, left, buf)?;
        Ok(Some(e))
    }
}

#[cfg(all(test, unix))]
mod tests {
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
    fn send(
        mut w: Box<dyn Write + Send>,
        data: Vec<u8>,
        cut: Option<usize>,
    ) -> thread::JoinHandle<()> {
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
}
