//! Byte streams to usbmuxd or a device port, and how large file blocks
//! leave them: [`Stream::receive_into`] (on Linux a socket's large blocks
//! are spliced, see [`receive`](crate::receive)).

use std::fs::File;
use std::io::{BufRead, Read, Write};
use std::net::TcpStream;
#[cfg(target_os = "linux")]
use std::os::fd::AsFd;
#[cfg(unix)]
use std::os::unix::net::UnixStream;

use ibackup_proto::tls::TlsStream;

use crate::receive::{copy_through, WriteOutcome, SPLICE_MIN};

/// A byte stream to usbmuxd or, after `Connect`, to a device port.
pub trait Stream: Read + Write + Send {
    /// Take the next `len` bytes of the stream and write them to `out`, or
    /// drop them when `out` is `None`. A failed write does not stop the
    /// reading: it is returned once all `len` bytes are taken, so the
    /// stream stays in step; `Err` is a failure to read. See
    /// [`receive`](crate::receive) for how large blocks avoid a copy.
    fn receive_into(
        &mut self,
        out: Option<&mut File>,
        len: u64,
        buf: &mut [u8],
    ) -> std::io::Result<WriteOutcome> {
        copy_through(self, out, len, buf)
    }
}

/// A plain socket: on Linux its large blocks are spliced
/// ([`receive`](crate::receive)); elsewhere the trait's default reads them.
macro_rules! socket_stream {
    ($socket:ty) => {
        impl Stream for $socket {
            #[cfg(target_os = "linux")]
            fn receive_into(
                &mut self,
                out: Option<&mut File>,
                len: u64,
                buf: &mut [u8],
            ) -> std::io::Result<WriteOutcome> {
                let s: &$socket = self;
                crate::receive::splice::receive(s.as_fd(), &mut &*s, out, len, buf)
            }
        }
    };
}

socket_stream!(TcpStream);
#[cfg(unix)]
socket_stream!(UnixStream);

impl Stream for Box<dyn Stream> {
    fn receive_into(
        &mut self,
        out: Option<&mut File>,
        len: u64,
        buf: &mut [u8],
    ) -> std::io::Result<WriteOutcome> {
        (**self).receive_into(out, len, buf)
    }
}

impl<S: Stream> Stream for TlsStream<S> {}

/// Buffers reads (many small headers arrive between file blocks); writes
/// pass straight through.
pub struct BufStream<S: Read + Write> {
    inner: std::io::BufReader<S>,
    /// The last block taken by `receive_into` was large, so the next is
    /// likely large too: read only what is asked for (a block's header)
    /// rather than filling the buffer with the block itself, which
    /// `receive_into` can then take whole without a copy.
    lean: bool,
}

impl<S: Read + Write> BufStream<S> {
    pub fn new(s: S) -> Self {
        BufStream {
            inner: std::io::BufReader::with_capacity(256 * 1024, s),
            lean: false,
        }
    }
}

impl<S: Read + Write> Read for BufStream<S> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.lean && self.inner.buffer().is_empty() {
            return self.inner.get_mut().read(buf);
        }
        self.inner.read(buf)
    }
}

impl<S: Read + Write> Write for BufStream<S> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.inner.get_mut().write(buf)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.get_mut().flush()
    }
}

impl<S: Stream> Stream for BufStream<S> {
    /// What is already buffered goes first; a large remainder is taken by
    /// the inner stream directly (on Linux, without a copy), a small one
    /// through the buffer.
    fn receive_into(
        &mut self,
        mut out: Option<&mut File>,
        len: u64,
        buf: &mut [u8],
    ) -> std::io::Result<WriteOutcome> {
        let have = (self.inner.buffer().len() as u64).min(len) as usize;
        let mut failed = None;
        if have > 0 {
            if let Some(f) = out.as_deref_mut() {
                failed = f.write_all(&self.inner.buffer()[..have]).err();
            }
            self.inner.consume(have);
        }
        let rest = len - have as u64;
        let out = if failed.is_none() { out } else { None };
        self.lean = len >= SPLICE_MIN;
        let later = if rest >= SPLICE_MIN {
            self.inner.get_mut().receive_into(out, rest, buf)?
        } else {
            copy_through(&mut self.inner, out, rest, buf)?
        };
        Ok(failed.or(later))
    }
}
