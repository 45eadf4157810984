//! The byte streams the simulator serves: Unix or TCP sockets, optionally
//! wrapped in TLS.

use std::fs::File;
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
    /// Send the next `len` bytes of `file`, from its current position,
    /// through `buf`; returns how many went, fewer only if the file ended.
    fn send_from(&mut self, file: &mut File, len: u64, buf: &mut [u8]) -> io::Result<u64> {
        send_through(self, file, len, buf)
    }
}

/// Read the next `len` bytes of `file` into `buf` and write them to `w`,
/// a buffer at a time; returns how many went, fewer only if the file ended.
pub fn send_through<W: Write + ?Sized>(
    w: &mut W,
    file: &mut File,
    len: u64,
    buf: &mut [u8],
) -> io::Result<u64> {
    let mut sent = 0;
    while sent < len {
        let want = (len - sent).min(buf.len() as u64) as usize;
        let n = match file.read(&mut buf[..want]) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        w.write_all(&buf[..n])?;
        sent += n as u64;
    }
    Ok(sent)
}

/// `sendfile(2)`: the kernel sends the next `len` bytes of `file` to the
/// socket from the page cache. `None` if this file and socket cannot be
/// paired so (nothing was sent), else how many bytes went.
#[cfg(target_os = "linux")]
fn sendfile(socket: std::os::fd::BorrowedFd, file: &File, len: u64) -> io::Result<Option<u64>> {
    use std::os::fd::AsRawFd;
    let mut sent = 0u64;
    while sent < len {
        let want = (len - sent).min(1 << 30) as usize;
        // SAFETY: both descriptors are open for the call; a null offset
        // makes the kernel use and advance the file's own position.
        let n = unsafe {
            libc::sendfile(
                socket.as_raw_fd(),
                file.as_raw_fd(),
                std::ptr::null_mut(),
                want,
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            match e.raw_os_error() {
                Some(libc::EINTR) => continue,
                Some(libc::EINVAL | libc::ENOSYS) if sent == 0 => return Ok(None),
                _ => return Err(e),
            }
        }
        if n == 0 {
            break;
        }
        sent += n as u64;
    }
    Ok(Some(sent))
}

/// The sockets. On Linux a file's bytes go to them with `sendfile`, not
/// through the simulator's memory: a real phone's sending costs the
/// computer nothing, and on one machine the simulator's copies would take
/// time from the client being measured. The bytes on the wire are the same.
macro_rules! socket_conn {
    ($t:ty) => {
        impl Conn for $t {
            fn cut(&self) {
                let _ = self.shutdown(std::net::Shutdown::Both);
            }
            fn set_read_timeout(&self, d: Option<std::time::Duration>) -> io::Result<()> {
                <$t>::set_read_timeout(self, d)
            }
            fn send_from(&mut self, file: &mut File, len: u64, buf: &mut [u8]) -> io::Result<u64> {
                #[cfg(target_os = "linux")]
                if let Some(n) = sendfile(std::os::fd::AsFd::as_fd(self), file, len)? {
                    return Ok(n);
                }
                send_through(self, file, len, buf)
            }
        }
    };
}

socket_conn!(TcpStream);
#[cfg(unix)]
socket_conn!(UnixStream);

impl Conn for Box<dyn Conn> {
    fn cut(&self) {
        (**self).cut()
    }
    fn set_read_timeout(&self, d: Option<std::time::Duration>) -> io::Result<()> {
        (**self).set_read_timeout(d)
    }
    fn send_from(&mut self, file: &mut File, len: u64, buf: &mut [u8]) -> io::Result<u64> {
        (**self).send_from(file, len, buf)
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
    fn send_from(&mut self, file: &mut File, len: u64, buf: &mut [u8]) -> io::Result<u64> {
        match self {
            Link::Plain(c) => c.send_from(file, len, buf),
            _ => send_through(self, file, len, buf),
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
    fn send_from(&mut self, file: &mut File, len: u64, buf: &mut [u8]) -> io::Result<u64> {
        self.inner.flush()?;
        self.inner.get_mut().send_from(file, len, buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    /// A file of `len` bytes that differ from their neighbours.
    fn sample(len: usize) -> (tempfile::NamedTempFile, Vec<u8>) {
        let bytes: Vec<u8> = (0..len).map(|i| (i * 7 + i / 251) as u8).collect();
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(&bytes).unwrap();
        (f, bytes)
    }

    /// Through `conn` (as the backup service holds it): a header, the
    /// file's first `first` bytes, a marker, then asking for more than the
    /// rest of the file, which sends the rest and says how much that was.
    /// Also says whether the buffer was left untouched (the kernel sent).
    fn send_in_two(conn: Box<dyn Conn>, path: &std::path::Path, first: u64) -> (u64, bool) {
        let mut conn = Buffered::new(conn);
        let mut file = File::open(path).unwrap();
        let mut buf = vec![0xA5u8; 64 * 1024];
        conn.write_all(b"head").unwrap();
        assert_eq!(conn.send_from(&mut file, first, &mut buf).unwrap(), first);
        conn.write_all(b"mark").unwrap();
        let rest = conn.send_from(&mut file, u64::MAX / 2, &mut buf).unwrap();
        conn.flush().unwrap();
        (rest, buf.iter().all(|&b| b == 0xA5))
    }

    /// [`send_in_two`] through a socket whose far end `reader` collects
    /// what arrives: all of it arrives in order, and on Linux the kernel
    /// sent it.
    fn send_through_socket(
        conn: Box<dyn Conn>,
        reader: std::thread::JoinHandle<Vec<u8>>,
        f: &tempfile::NamedTempFile,
        bytes: &[u8],
        first: usize,
    ) {
        let (rest, untouched) = send_in_two(conn, f.path(), first as u64);
        assert_eq!(rest, (bytes.len() - first) as u64);
        assert_eq!(
            untouched,
            cfg!(target_os = "linux"),
            "sendfile on Linux only"
        );
        check_received(&reader.join().unwrap(), bytes, first);
    }

    fn check_received(got: &[u8], bytes: &[u8], first: usize) {
        assert_eq!(got.len(), 8 + bytes.len());
        assert_eq!(&got[..4], b"head");
        assert!(got[4..4 + first] == bytes[..first], "first part differs");
        assert_eq!(&got[4 + first..8 + first], b"mark");
        assert!(got[8 + first..] == bytes[first..], "rest differs");
    }

    #[test]
    fn a_file_reaches_a_tcp_socket_exactly_and_in_order() {
        let (f, bytes) = sample(3 * 1024 * 1024 + 12_345);
        let first = 2 * 1024 * 1024 + 1;
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let reader = std::thread::spawn(move || {
            let (mut s, _) = l.accept().unwrap();
            let mut got = Vec::new();
            s.read_to_end(&mut got).unwrap();
            got
        });
        let conn = TcpStream::connect(addr).unwrap();
        send_through_socket(Box::new(conn), reader, &f, &bytes, first);
    }

    #[cfg(unix)]
    #[test]
    fn a_file_reaches_a_unix_socket_exactly_and_in_order() {
        let (f, bytes) = sample(1024 * 1024 + 3);
        let first = 700_001;
        let (a, mut b) = UnixStream::pair().unwrap();
        let reader = std::thread::spawn(move || {
            let mut got = Vec::new();
            b.read_to_end(&mut got).unwrap();
            got
        });
        send_through_socket(Box::new(a), reader, &f, &bytes, first);
    }

    /// A connection with no kernel path (as TLS): the bytes go through the
    /// buffer, with the same result.
    #[test]
    fn a_file_reaches_any_other_connection_through_the_buffer() {
        #[derive(Clone, Default)]
        struct Memory(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);
        impl Read for Memory {
            fn read(&mut self, _: &mut [u8]) -> io::Result<usize> {
                Ok(0)
            }
        }
        impl Write for Memory {
            fn write(&mut self, b: &[u8]) -> io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(b);
                Ok(b.len())
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        impl Conn for Memory {
            fn cut(&self) {}
        }
        let (f, bytes) = sample(200_000);
        let first = 65_537;
        let memory = Memory::default();
        let (rest, untouched) = send_in_two(Box::new(memory.clone()), f.path(), first as u64);
        assert_eq!(rest, (bytes.len() - first) as u64);
        assert!(!untouched);
        check_received(&memory.0.lock().unwrap(), &bytes, first);
    }

    /// At the end of the file nothing more is sent, and the caller is told.
    #[cfg(unix)]
    #[test]
    fn an_exhausted_file_sends_nothing() {
        use std::io::{Seek, SeekFrom};
        let (f, _) = sample(10);
        let (a, mut b) = UnixStream::pair().unwrap();
        let mut conn: Box<dyn Conn> = Box::new(a);
        let mut file = File::open(f.path()).unwrap();
        file.seek(SeekFrom::End(0)).unwrap();
        let mut buf = [0u8; 16];
        assert_eq!(conn.send_from(&mut file, 5, &mut buf).unwrap(), 0);
        drop(conn);
        let mut got = Vec::new();
        b.read_to_end(&mut got).unwrap();
        assert!(got.is_empty());
    }
}
