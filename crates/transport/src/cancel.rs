//! Stopping on request (Ctrl-C, a stop signal): every connection to
//! usbmuxd or a device is registered while it is open, and a request to
//! stop hangs all of them up at once. A read blocked on the device then
//! returns at once, so the code waiting on it unwinds as it does after a
//! pulled cable (the engine drops its staging folder and its lock) rather
//! than the process dying in the middle. Connections opened after the
//! request fail with `ErrorKind::Interrupted`.
//!
//! A [`Cancel`] is a handle: the CLI makes one, gives it to the transport
//! it opens and to its signal handler, and whoever holds a clone can ask
//! whether a stop was asked for. There is no process-wide state.

use std::io::{self, Read, Write};
use std::net::Shutdown;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use crate::stream::Stream;

/// Whatever ends one registered connection.
pub type Hangup = Box<dyn Fn() + Send>;

/// The open connections and whether a stop was asked for.
pub struct Hangups {
    requested: AtomicBool,
    open: Mutex<Open>,
}

struct Open {
    next_id: u64,
    hangups: Vec<(u64, Hangup)>,
}

/// A handle on one [`Hangups`]: cheap to clone, shared by the transport
/// (which registers every connection it opens) and whoever may ask for a
/// stop (the CLI's signal handler).
#[derive(Clone, Default)]
pub struct Cancel(Arc<Hangups>);

impl std::fmt::Debug for Cancel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Cancel(requested: {})", self.requested())
    }
}

impl Cancel {
    pub fn new() -> Self {
        Cancel::default()
    }
    /// Whether a stop was asked for.
    pub fn requested(&self) -> bool {
        self.0.requested()
    }
    /// Sleep for `d`, or less when a stop is asked for; whether it was.
    pub fn pause(&self, d: std::time::Duration) -> bool {
        self.0.pause(d)
    }
    /// Ask for a stop: end every open connection, and refuse new ones.
    pub fn stop(&self) {
        self.0.hang_up_all()
    }
    /// `s`, registered until it is dropped. Fails with
    /// `ErrorKind::Interrupted` once a stop was asked for.
    pub fn watch<S: Socket>(&self, s: S) -> io::Result<Watched<S>> {
        self.0.watch_with(s.hangup()?).map(|id| Watched {
            inner: s,
            id,
            registry: self.clone(),
        })
    }
    /// Register something that ends a connection (a direct-USB pipe, say)
    /// until the returned guard is dropped.
    pub fn register(&self, hang_up: Hangup) -> io::Result<Registered> {
        self.0.watch_with(hang_up).map(|id| Registered {
            id,
            registry: self.clone(),
        })
    }
}

/// A registered hang-up; dropping it forgets it.
pub struct Registered {
    id: u64,
    registry: Cancel,
}

impl Drop for Registered {
    fn drop(&mut self) {
        self.registry.0.forget(self.id);
    }
}

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

    fn watch_with(&self, hang_up: Hangup) -> io::Result<u64> {
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
        Ok(id)
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
    registry: Cancel,
}

impl<S: Socket> Drop for Watched<S> {
    fn drop(&mut self) {
        self.registry.0.forget(self.id);
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
        let h = Cancel::new();
        let (a, _peer) = pair();
        let mut watched = h.watch(a).unwrap();
        assert_eq!(h.0.count(), 1);
        let reader = std::thread::spawn(move || {
            let t0 = Instant::now();
            let mut buf = [0u8; 16];
            // Blocks: the peer sends nothing and stays open.
            let n = watched.read(&mut buf);
            (n.ok(), t0.elapsed())
        });
        std::thread::sleep(Duration::from_millis(200));
        assert!(!h.requested());
        h.stop();
        let (n, waited) = reader.join().unwrap();
        assert_eq!(n, Some(0), "a hung-up socket reads as closed");
        assert!(waited < Duration::from_secs(10));
        // The reader's connection was dropped with its thread: forgotten.
        assert_eq!(h.0.count(), 0);
        assert!(h.requested());
        let (c, _peer2) = pair();
        let e = h.watch(c).err().expect("no new connection after a stop");
        assert_eq!(e.kind(), io::ErrorKind::Interrupted);
        assert_eq!(h.0.count(), 0);
    }

    #[test]
    fn connections_are_forgotten_when_dropped_and_others_are_untouched() {
        let h = Cancel::new();
        let (a, _pa) = pair();
        let (b, mut pb) = pair();
        let wa = h.watch(a).unwrap();
        let mut wb = h.watch(b).unwrap();
        assert_eq!(h.0.count(), 2);
        drop(wa);
        assert_eq!(h.0.count(), 1);
        pb.write_all(b"x").unwrap();
        let mut one = [0u8; 1];
        wb.read_exact(&mut one).unwrap();
        assert_eq!(&one, b"x");
        assert!(!h.requested());
    }
}
