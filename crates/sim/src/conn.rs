//! The byte streams the simulator serves: Unix or TCP sockets, optionally
//! wrapped in TLS.

use std::io::{self, Read, Write};
use std::net::TcpStream;
#[cfg(unix)]
use std::os::unix::net::UnixStream;

/// A client connection the simulator can read, write and cut.
pub trait Conn: Read + Write + Send {
    /// Cut the connection at once, as an unplugged cable does.
    fn cut(&self);
    /// Make reads give up after `d` (to poll while waiting for a client).
    fn set_read_timeout(&self, _d: Option<std::time::Duration>) -> io::Result<()> {
        Ok(())
    }
}

impl Conn for TcpStream {
    fn cut(&self) {
        let _ = self.shutdown(std::net::Shutdown::Both);
    }
    fn set_read_timeout(&self, d: Option<std::time::Duration>) -> io::Result<()> {
        TcpStream::set_read_timeout(self, d)
    }
}

#[cfg(unix)]
impl Conn for UnixStream {
    fn cut(&self) {
        let _ = self.shutdown(std::net::Shutdown::Both);
    }
    fn set_read_timeout(&self, d: Option<std::time::Duration>) -> io::Result<()> {
        UnixStream::set_read_timeout(self, d)
    }
}

impl Conn for Box<dyn Conn> {
    fn cut(&self) {
        (**self).cut()
    }
    fn set_read_timeout(&self, d: Option<std::time::Duration>) -> io::Result<()> {
        (**self).set_read_timeout(d)
    }
}

impl<S: Conn> Conn for ibackup_proto::tls::TlsStream<S> {
    fn cut(&self) {
        self.get_ref().cut()
    }
}

/// A plain or TLS stream that can switch between the two, as lockdownd does.
pub enum Link {
    Plain(Box<dyn Conn>),
    Tls(Box<ibackup_proto::tls::TlsStream<Box<dyn Conn>>>),
    /// Only during a switch.
    Gone,
}

impl Read for Link {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Link::Plain(c) => c.read(buf),
            Link::Tls(t) => t.read(buf),
            Link::Gone => Ok(0),
        }
    }
}

impl Write for Link {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Link::Plain(c) => c.write(buf),
            Link::Tls(t) => t.write(buf),
            Link::Gone => Err(io::ErrorKind::NotConnected.into()),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        match self {
            Link::Plain(c) => c.flush(),
            Link::Tls(t) => t.flush(),
            Link::Gone => Ok(()),
        }
    }
}

impl Conn for Link {
    fn cut(&self) {
        match self {
            Link::Plain(c) => c.cut(),
            Link::Tls(t) => t.cut(),
            Link::Gone => {}
        }
    }
}

/// Buffers writes and flushes them before every read, so the many small
/// pieces of a file stream (names, block headers) leave in few segments
/// while request/answer turns still see each other's bytes.
pub struct Buffered<C: Conn> {
    inner: io::BufWriter<C>,
}

impl<C: Conn> Buffered<C> {
    pub fn new(conn: C) -> Self {
        Buffered {
            inner: io::BufWriter::with_capacity(256 * 1024, conn),
        }
    }
}

impl<C: Conn> Read for Buffered<C> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.inner.flush()?;
        self.inner.get_mut().read(buf)
    }
}

impl<C: Conn> Write for Buffered<C> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.inner.write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

impl<C: Conn> Conn for Buffered<C> {
    fn cut(&self) {
        self.inner.get_ref().cut()
    }
}
