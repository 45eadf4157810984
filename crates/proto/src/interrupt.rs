//! Stopping on request (Ctrl-C, a stop signal): every connection to
//! usbmuxd or a device is registered while it is open, and a request to
//! stop hangs all of them up at once. A read blocked on the device then
//! returns at once, so the code waiting on it unwinds as it does after a
//! pulled cable (the engine drops its staging folder and its lock) rather
//! than the process dying in the middle. Connections opened after the
//! request fail with `ErrorKind::Interrupted`.
//!
//! The process has one [`STOP`]; tests make their own [`Hangups`].

use std::io::{self, Read, Write};
use std::net::Shutdown;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use crate::host::Stream;

/// Whatever ends one registered connection.
type Hangup = Box<dyn Fn() + Send>;

/// The open connections and whether a stop was asked for.
pub struct Hangups {
    requested: AtomicBool,
    open: Mutex<Open>,
}

struct Open {
    next_id: u64,
    hangups: Vec<(u64, Hangup)>,
}

/// The process's own: the CLI's signal handler calls
/// [`Hangups::hang_up_all`] on it; [`MuxClient`](crate::host::MuxClient)
/// registers every connection it opens.
pub static STOP: Hangups = Hangups::new();

impl Hangups {
    pub const fn new() -> Self {
        Hangups {
            requested: AtomicBool::new(false),
            open: Mutex::new(Open {
                next_id: 0,
                hangups: Vec::new(),
            }),
        }
    }

    /// Whether a stop was asked for.
    pub fn requested(&self) -> bool {
        self.requested.load(Ordering::SeqCst)
    }

    /// Sleep for `d`, or less when a stop is asked for (checked every
    /// 100 ms); whether a stop was asked for.
    pub fn pause(&self, d: std::time::Duration) -> bool {
        let until = std::time::Instant::now() + d;
        while !self.requested() {
            let left = until.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                return false;
            }
            std::thread::sleep(left.min(std::time::Duration::from_millis(100)));
        }
        true
    }

    /// Ask for a stop: end every open connection, and refuse new ones.
    pub fn hang_up_all(&self) {
        let open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        self.requested.store(true, Ordering::SeqCst);
        for (_, hang_up) in &open.hangups {
            hang_up();
        }
    }

    /// `s`, registered until it is dropped. Fails with
    /// `ErrorKind::Interrupted` once a stop was asked for.
    pub fn watch<S: Socket>(&'static self, s: S) -> io::Result<Watched<S>> {
        let hang_up = s.hangup()?;
        // Under the lock, so a stop asked for now either sees this
        // connection or is seen here.
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        if self.requested() {
            return Err(io::Error::new(
                io::ErrorKind::Interrupted,
                "stopping: no new connections",
            ));
        }
        let id = open.next_id;
        open.next_id += 1;
        open.hangups.push((id, hang_up));
        Ok(Watched {
            inner: s,
            id,
            registry: self,
        })
    }

    fn forget(&self, id: u64) {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        open.hangups.retain(|(i, _)| *i != id);
    }

    #[cfg(test)]
    fn count(&self) -> usize {
        self.open.lock().unwrap().hangups.len()
    }
}

impl Default for Hangups {
    fn default() -> Self {
        Self::new()
    }
}

/// A socket that can be hung up from another thread.
pub trait Socket: Stream + Sized {
    /// Something that shuts this socket down for both directions.
    fn hangup(&self) -> io::Result<Hangup>;
}

macro_rules! socket {
    ($socket:ty) => {
        impl Socket for $socket {
            fn hangup(&self) -> io::Result<Hangup> {
                let twin = self.try_clone()?;
                Ok(Box::new(move || {
                    let _ = twin.shutdown(Shutdown::Both);
                }))
            }
        }
    };
}

socket!(std::net::TcpStream);
#[cfg(unix)]
socket!(std::os::unix::net::UnixStream);

/// A registered connection; dropping it forgets it.
pub struct Watched<S: Socket> {
    inner: S,
    id: u64,
    registry: &'static Hangups,
}

impl<S: Socket> Drop for Watched<S> {
    fn drop(&mut self) {
        self.registry.forget(self.id);
    }
}

impl<S: Socket> Read for Watched<S> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.inner.read(buf)
    }
}

impl<S: Socket> Write for Watched<S> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.inner.write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

impl<S: Socket> Stream for Watched<S> {
    fn receive_into(
        &mut self,
        out: Option<&mut std::fs::File>,
        len: u64,
        buf: &mut [u8],
    ) -> io::Result<crate::receive::WriteOutcome> {
        self.inner.receive_into(out, len, buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{TcpListener, TcpStream};
    use std::time::{Duration, Instant};

    fn pair() -> (TcpStream, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let a = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (b, _) = l.accept().unwrap();
        (a, b)
    }

    #[test]
    fn a_pause_says_whether_a_stop_ended_it() {
        let h = Hangups::new();
        assert!(!h.pause(Duration::from_millis(10)), "slept its time");
        h.hang_up_all();
        assert!(h.pause(Duration::from_secs(3600)), "a stop ends it");
    }

    #[test]
    fn a_stop_ends_a_blocked_read_and_refuses_new_connections() {
        static H: Hangups = Hangups::new();
        let (a, _peer) = pair();
        let mut watched = H.watch(a).unwrap();
        assert_eq!(H.count(), 1);
        let reader = std::thread::spawn(move || {
            let t0 = Instant::now();
            let mut buf = [0u8; 16];
            // Blocks: the peer sends nothing and stays open.
            let n = watched.read(&mut buf);
            (n.ok(), t0.elapsed())
        });
        std::thread::sleep(Duration::from_millis(200));
        assert!(!H.requested());
        H.hang_up_all();
        let (n, waited) = reader.join().unwrap();
        assert_eq!(n, Some(0), "a hung-up socket reads as closed");
        assert!(waited < Duration::from_secs(10));
        // The reader's connection was dropped with its thread: forgotten.
        assert_eq!(H.count(), 0);
        assert!(H.requested());
        let (c, _peer2) = pair();
        let e = H.watch(c).err().expect("no new connection after a stop");
        assert_eq!(e.kind(), io::ErrorKind::Interrupted);
        assert_eq!(H.count(), 0);
    }

    #[test]
    fn connections_are_forgotten_when_dropped_and_others_are_untouched() {
        static H: Hangups = Hangups::new();
        let (a, _pa) = pair();
        let (b, mut pb) = pair();
        let wa = H.watch(a).unwrap();
        let mut wb = H.watch(b).unwrap();
        assert_eq!(H.count(), 2);
        drop(wa);
        assert_eq!(H.count(), 1);
        pb.write_all(b"x").unwrap();
        let mut one = [0u8; 1];
        wb.read_exact(&mut one).unwrap();
        assert_eq!(&one, b"x");
        assert!(!H.requested());
    }
}
