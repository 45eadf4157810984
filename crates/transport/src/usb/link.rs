//! One USB pipe's usbmux, shared by threads: the [`Mux`] state machine
//! under a lock, fed by a reader thread ([`Link::input`]), its transfers
//! handed to a writer thread through a channel, and each connection a
//! blocking byte stream ([`MuxStream`]). Host and device (the simulator)
//! both use it.
//!
//! Transfers leave through a channel rather than from under the lock: a
//! writer blocked on a full pipe must never hold the lock the reader needs
//! to take the other direction's bytes, or both ends would wait for ever.
//! What the channel can hold is bounded by the peers' windows.

use std::collections::{HashMap, HashSet, VecDeque};
use std::io::{self, Read, Write};
use std::sync::{mpsc, Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use ibackup_proto::mux::{ConnId, Event, Mux, Role, Transfer};

use crate::cancel::{Cancel, Registered};

pub struct Link {
    state: Mutex<State>,
    /// Woken for what concerns the link as a whole: the VERSION answer,
    /// connections accepted or refused, the pipe dying. Each connection's
    /// stream has its own condition variable (`State::waiters`), so a
    /// packet for one wakes only the thread that reads it.
    changed: Condvar,
}

/// Where the link's transfers go: called under the link's lock, so it must
/// not block for long (a channel to a writer thread; the simulator's bus
/// queue). False: the pipe is gone.
pub type Sink = Box<dyn FnMut(Transfer) -> bool + Send>;

struct State {
    mux: Mux,
    out: Sink,
    version: Option<u32>,
    /// Why the whole pipe is unusable (unplugged, broken protocol, cut).
    dead: Option<String>,
    /// Connections that ended, and why.
    ended: HashMap<ConnId, String>,
    refused: HashMap<ConnId, String>,
    /// Host: connections the device accepted.
    connected: HashSet<ConnId>,
    /// Device: connections a host opened, not yet taken by [`Link::accept`].
    accepted: VecDeque<ConnId>,
    /// The condition variable of each open stream.
    waiters: HashMap<ConnId, Arc<Condvar>>,
}

impl Link {
    /// A link for one end of a pipe whose OUT endpoint takes packets of
    /// `max_packet` bytes, and the transfers it wants sent, in order.
    pub fn new(role: Role, max_packet: usize) -> (Arc<Link>, mpsc::Receiver<Transfer>) {
        let (tx, rx) = mpsc::channel();
        let link = Link::with_sink(role, max_packet, Box::new(move |t| tx.send(t).is_ok()));
        (link, rx)
    }

    /// A link whose transfers go to `sink`, in order.
    pub fn with_sink(role: Role, max_packet: usize, sink: Sink) -> Arc<Link> {
        let link = Arc::new(Link {
            state: Mutex::new(State {
                mux: Mux::new(role, max_packet),
                out: sink,
                version: None,
                dead: None,
                ended: HashMap::new(),
                refused: HashMap::new(),
                connected: HashSet::new(),
                accepted: VecDeque::new(),
                waiters: HashMap::new(),
            }),
            changed: Condvar::new(),
        });
        // The host's VERSION goes out at once.
        link.settle(link.lock());
        link
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Take what the state machine has to say and to send; wake those
    /// whom it concerns.
    fn settle(&self, mut st: MutexGuard<'_, State>) {
        let mut general = false;
        let mut touched: Vec<ConnId> = Vec::new();
        while let Some(e) = st.mux.poll_event() {
            match e {
                Event::Ready { version } => {
                    st.version = Some(version);
                    general = true;
                }
                Event::Connected(id) => {
                    st.connected.insert(id);
                    st.accepted.push_back(id);
                    general = true;
                }
                Event::Refused(id, why) => {
                    st.refused.insert(id, why);
                    general = true;
                }
                Event::Closed(id, why) => {
                    log::info!("usbmux connection to port {} ended: {why}", id.remote);
                    st.ended.insert(id, why);
                    touched.push(id);
                }
                Event::Log { kind, text } => {
                    log::info!("device says ({kind}): {}", text.trim_end_matches('\0'))
                }
                Event::Readable(id) | Event::Writable(id) => touched.push(id),
            }
        }
        let was_dead = st.dead.is_some();
        while let Some(t) = st.mux.poll_transmit() {
            if !(st.out)(t) && st.dead.is_none() {
                st.dead = Some("the USB pipe is closed".into());
            }
        }
        let wake: Vec<Arc<Condvar>> = if st.dead.is_some() && !was_dead {
            st.waiters.values().cloned().collect()
        } else {
            touched.dedup();
            touched
                .iter()
                .filter_map(|id| st.waiters.get(id).cloned())
                .collect()
        };
        general |= st.dead.is_some() && !was_dead;
        drop(st);
        for w in wake {
            w.notify_all();
        }
        if general {
            self.changed.notify_all();
        }
    }

    /// Wake every waiter (the link died, or a connection was ended here).
    fn wake_all(&self, st: MutexGuard<'_, State>) {
        let wake: Vec<Arc<Condvar>> = st.waiters.values().cloned().collect();
        drop(st);
        for w in wake {
            w.notify_all();
        }
        self.changed.notify_all();
    }

    /// Bytes of a completed IN transfer. A protocol error kills the link:
    /// after garbage nothing on the pipe can be trusted.
    pub fn input(&self, bytes: &[u8]) {
        self.input_vec(bytes.to_vec())
    }

    /// [`Link::input`] taking the transfer's buffer (no copy).
    pub fn input_vec(&self, bytes: Vec<u8>) {
        let mut st = self.lock();
        if st.dead.is_some() {
            return;
        }
        if let Err(e) = st.mux.handle_input_vec(bytes) {
            st.dead = Some(format!("the device broke the usbmux protocol ({e})"));
        }
        self.settle(st);
    }

    /// The pipe failed (unplugged, cut): every connection ends with `why`.
    pub fn fail(&self, why: &str) {
        let mut st = self.lock();
        if st.dead.is_none() {
            st.dead = Some(why.to_string());
        }
        self.wake_all(st);
    }

    /// Why the link is unusable, if it is.
    pub fn dead(&self) -> Option<String> {
        self.lock().dead.clone()
    }

    /// Change the state machine (a device's listening ports) and send
    /// what that makes it send.
    pub fn with_mux(&self, f: impl FnOnce(&mut Mux)) {
        let mut st = self.lock();
        f(&mut st.mux);
        self.settle(st);
    }

    /// Wait until `f` gives an answer, the link dies or `limit` passes.
    fn wait_for<T>(
        &self,
        cv: &Condvar,
        limit: Option<Duration>,
        mut f: impl FnMut(&mut State) -> Option<io::Result<T>>,
    ) -> io::Result<T> {
        let until = limit.map(|l| Instant::now() + l);
        let mut st = self.lock();
        loop {
            if let Some(r) = f(&mut st) {
                return r;
            }
            if let Some(why) = &st.dead {
                return Err(io::Error::new(
                    io::ErrorKind::ConnectionAborted,
                    why.clone(),
                ));
            }
            st = match until {
                None => cv.wait(st).unwrap_or_else(|p| p.into_inner()),
                Some(u) => {
                    let left = u.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        return Err(io::Error::new(
                            io::ErrorKind::TimedOut,
                            "the device did not answer in time",
                        ));
                    }
                    cv.wait_timeout(st, left)
                        .unwrap_or_else(|p| p.into_inner())
                        .0
                }
            };
        }
    }

    /// Wait for the VERSION exchange; the version agreed.
    pub fn wait_ready(&self, limit: Duration) -> io::Result<u32> {
        self.wait_for(&self.changed, Some(limit), |st| st.version.map(Ok))
            .map_err(|e| match e.kind() {
                io::ErrorKind::TimedOut => io::Error::new(
                    io::ErrorKind::TimedOut,
                    "the device did not answer the usbmux VERSION request",
                ),
                _ => e,
            })
    }

    /// Host: a connection to the device's `port`.
    pub fn connect(
        self: &Arc<Self>,
        port: u16,
        limit: Duration,
        cancel: &Cancel,
    ) -> io::Result<MuxStream> {
        let id = {
            let mut st = self.lock();
            if let Some(why) = &st.dead {
                return Err(io::Error::new(
                    io::ErrorKind::ConnectionAborted,
                    why.clone(),
                ));
            }
            let id = st
                .mux
                .connect(port)
                .map_err(|e| io::Error::new(io::ErrorKind::NotConnected, e.to_string()))?;
            self.settle(st);
            id
        };
        let answer = self.wait_for(&self.changed, Some(limit), |st| {
            if st.connected.remove(&id) {
                st.accepted.retain(|a| *a != id);
                Some(Ok(()))
            } else {
                st.refused.remove(&id).map(|why| {
                    Err(io::Error::new(
                        io::ErrorKind::ConnectionRefused,
                        if why.is_empty() {
                            format!("the device refused a connection to port {port}")
                        } else {
                            format!("the device refused a connection to port {port}: {why}")
                        },
                    ))
                })
            }
        });
        if let Err(e) = answer {
            self.end(id, "given up");
            return Err(e);
        }
        MuxStream::new(self.clone(), id, cancel)
    }

    /// Device: the next connection a host opens.
    pub fn accept(self: &Arc<Self>, cancel: &Cancel) -> io::Result<MuxStream> {
        let id = self.wait_for(&self.changed, None, |st| st.accepted.pop_front().map(Ok))?;
        self.lock().connected.remove(&id);
        MuxStream::new(self.clone(), id, cancel)
    }

    /// End connection `id` from this side (a RST).
    fn end(&self, id: ConnId, why: &str) {
        let mut st = self.lock();
        st.mux.close(id);
        st.ended.entry(id).or_insert_with(|| why.to_string());
        let w = st.waiters.get(&id).cloned();
        self.settle(st);
        if let Some(w) = w {
            w.notify_all();
        }
    }
}

/// One connection over a [`Link`]: a blocking byte stream. Reads end (0)
/// when the peer resets it, as a socket to usbmuxd does; when the pipe
/// dies they fail with the reason (unplugged, a broken protocol).
pub struct MuxStream {
    link: Arc<Link>,
    id: ConnId,
    cv: Arc<Condvar>,
    read_timeout: Option<Duration>,
    write_timeout: Option<Duration>,
    _stop: Registered,
}

impl MuxStream {
    fn new(link: Arc<Link>, id: ConnId, cancel: &Cancel) -> io::Result<MuxStream> {
        let weak = Arc::downgrade(&link);
        let stop = cancel.register(Box::new(move || {
            if let Some(l) = weak.upgrade() {
                l.end(id, "stopped");
            }
        }));
        let stop = match stop {
            Ok(s) => s,
            Err(e) => {
                link.end(id, "stopped");
                return Err(e);
            }
        };
        let cv = Arc::new(Condvar::new());
        link.lock().waiters.insert(id, cv.clone());
        Ok(MuxStream {
            link,
            id,
            cv,
            read_timeout: None,
            write_timeout: None,
            _stop: stop,
        })
    }

    /// How long a read or write may wait; `None` waits for ever.
    pub fn set_timeouts(&mut self, read: Option<Duration>, write: Option<Duration>) {
        self.read_timeout = read;
        self.write_timeout = write;
    }

    /// The device's port this connection reaches.
    pub fn port(&self) -> u16 {
        self.id.remote
    }

    /// The device's own port, seen from the device (its listening port).
    pub fn local_port(&self) -> u16 {
        self.id.local
    }

    /// Reset the connection from this side at once (a RST), dropping what
    /// it had not sent yet.
    pub fn reset(&self) {
        self.link.end(self.id, "reset");
    }

    /// The link this connection runs over.
    pub fn link(&self) -> &Arc<Link> {
        &self.link
    }
}

impl Read for MuxStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        let id = self.id;
        let got = self.link.wait_for(&self.cv, self.read_timeout, |st| {
            if let Ok(n) = st.mux.recv(id, buf) {
                if n > 0 {
                    return Some(Ok(n));
                }
            }
            // The peer's RST ends the stream as a hang-up ends a socket;
            // a dead pipe is an error that says why (the link's `dead`).
            if st.ended.contains_key(&id) {
                return Some(Ok(0));
            }
            None
        });
        if matches!(got, Ok(n) if n > 0) {
            // Reading may have reopened the window: say so.
            self.link.settle(self.link.lock());
        }
        got
    }
}

impl Write for MuxStream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        let id = self.id;
        let n = self.link.wait_for(&self.cv, self.write_timeout, |st| {
            if let Some(why) = st.ended.get(&id) {
                return Some(Err(io::Error::new(io::ErrorKind::BrokenPipe, why.clone())));
            }
            match st.mux.send(id, buf) {
                Ok(0) => None,
                Ok(n) => Some(Ok(n)),
                Err(e) => Some(Err(io::Error::new(
                    io::ErrorKind::BrokenPipe,
                    e.to_string(),
                ))),
            }
        })?;
        self.link.settle(self.link.lock());
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// How long a closing connection waits for the peer to take what it still
/// has to send (usbmuxd gives up after a second without progress).
const DRAIN_LIMIT: Duration = Duration::from_secs(5);

impl Drop for MuxStream {
    fn drop(&mut self) {
        // What was written goes out before the RST, as on a socket.
        let id = self.id;
        let _ = self.link.wait_for(&self.cv, Some(DRAIN_LIMIT), |st| {
            (st.mux.unsent(id) == 0 || st.ended.contains_key(&id)).then_some(Ok(()))
        });
        let mut st = self.link.lock();
        if st.mux.connections().contains(&self.id) {
            st.mux.close(self.id);
        }
        st.ended.remove(&self.id);
        st.waiters.remove(&self.id);
        self.link.settle(st);
    }
}

impl crate::stream::Stream for MuxStream {}

#[cfg(test)]
mod tests {
    use super::*;
    use ibackup_proto::mux::Role;
    use std::thread;

    /// Two links joined back to back in memory, each transfer delivered
    /// whole to the other side.
    fn pair() -> (Arc<Link>, Arc<Link>) {
        let (host, to_device) = Link::new(Role::Host, 512);
        let (device, to_host) = Link::new(Role::Device, 512);
        for (rx, peer) in [(to_device, device.clone()), (to_host, host.clone())] {
            thread::spawn(move || {
                for t in rx {
                    peer.input(&t.bytes);
                }
                peer.fail("the other end went away");
            });
        }
        (host, device)
    }

    /// A connection to lockdownd's port over a fresh pair: the host's
    /// stream and the device's (kept, so the device does not reset it).
    fn connected(host: &Arc<Link>, device: &Arc<Link>, cancel: &Cancel) -> (MuxStream, MuxStream) {
        device.with_mux(|m| m.listen(62078));
        let d2 = device.clone();
        let server = thread::spawn(move || d2.accept(&Cancel::new()));
        let c = host.connect(62078, Duration::from_secs(5), cancel).unwrap();
        (c, server.join().unwrap().unwrap())
    }

    #[test]
    fn a_megabyte_each_way_over_one_connection() {
        let (host, device) = pair();
        host.wait_ready(Duration::from_secs(5)).unwrap();
        device.with_mux(|m| m.listen(62078));
        let cancel = Cancel::new();
        let server = {
            let device = device.clone();
            let cancel = cancel.clone();
            thread::spawn(move || {
                let mut s = device.accept(&cancel).unwrap();
                let mut got = vec![0u8; 1 << 20];
                s.read_exact(&mut got).unwrap();
                s.write_all(&got).unwrap();
                got
            })
        };
        let mut c = host
            .connect(62078, Duration::from_secs(5), &cancel)
            .unwrap();
        let sent: Vec<u8> = (0..1u32 << 20).map(|i| (i * 7 + i / 1000) as u8).collect();
        c.write_all(&sent).unwrap();
        let mut back = vec![0u8; 1 << 20];
        c.read_exact(&mut back).unwrap();
        assert_eq!(server.join().unwrap(), sent);
        assert_eq!(back, sent);
    }

    #[test]
    fn a_refused_port_and_a_dead_pipe_are_errors_not_hangs() {
        let (host, device) = pair();
        host.wait_ready(Duration::from_secs(5)).unwrap();
        let cancel = Cancel::new();
        let e = host
            .connect(1234, Duration::from_secs(5), &cancel)
            .err()
            .unwrap();
        assert_eq!(e.kind(), io::ErrorKind::ConnectionRefused, "{e}");
        assert!(e.to_string().contains("1234"), "{e}");
        let (mut c, _kept) = connected(&host, &device, &cancel);
        // Unplugged: a blocked read fails at once, saying so.
        let h2 = host.clone();
        thread::spawn(move || {
            thread::sleep(Duration::from_millis(100));
            h2.fail("unplugged");
        });
        let mut b = [0u8; 8];
        let e = c.read(&mut b).err().unwrap();
        assert!(e.to_string().contains("unplugged"), "{e}");
        assert!(c.write(b"x").is_err() || host.dead().is_some());
        let e = host
            .connect(62078, Duration::from_secs(5), &cancel)
            .err()
            .unwrap();
        assert!(e.to_string().contains("unplugged"), "{e}");
    }

    #[test]
    fn a_stop_ends_a_blocked_read_and_refuses_new_connections() {
        let (host, device) = pair();
        host.wait_ready(Duration::from_secs(5)).unwrap();
        let cancel = Cancel::new();
        let (mut c, _kept) = connected(&host, &device, &cancel);
        let stopper = cancel.clone();
        thread::spawn(move || {
            thread::sleep(Duration::from_millis(100));
            stopper.stop();
        });
        let t0 = Instant::now();
        let mut b = [0u8; 8];
        assert_eq!(c.read(&mut b).unwrap(), 0);
        assert!(t0.elapsed() < Duration::from_secs(10));
        let e = host
            .connect(62078, Duration::from_secs(5), &cancel)
            .err()
            .unwrap();
        assert_eq!(e.kind(), io::ErrorKind::Interrupted);
    }

    #[test]
    fn a_silent_device_times_a_read_out() {
        let (host, device) = pair();
        host.wait_ready(Duration::from_secs(5)).unwrap();
        let cancel = Cancel::new();
        let (mut c, _kept) = connected(&host, &device, &cancel);
        c.set_timeouts(Some(Duration::from_millis(200)), None);
        let e = c.read(&mut [0u8; 4]).err().unwrap();
        assert_eq!(e.kind(), io::ErrorKind::TimedOut);
    }
}
