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
#[path = "receive_tests.rs"]
mod tests;
