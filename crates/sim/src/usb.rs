//! The simulated iPhone on an emulated USB bus (`serve --usb-emulated
//! ADDR`): what ibackup's direct-USB transport reaches with
//! `IBACKUP_USB_EMULATOR=ADDR`. Each TCP connection asks the bus for its
//! device list, for plug events, or opens a device's mux interface; an
//! open pipe then carries bulk transfers with USB's framing rules (see
//! `ibackup_proto::usbemu`) and the device speaks the mux over it with the
//! same state machine as the host, in its device role.

use std::collections::VecDeque;
use std::io::{self, BufReader, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::Duration;

use ibackup_proto::mux::{Packet, Role, Transfer};
use ibackup_proto::usbemu::{
    find_mux_interface, iphone_descriptors, serial_from_udid, DeviceDesc, Frame, OpenRefusal,
};
use ibackup_proto::usbmux::LOCKDOWN_PORT;
use ibackup_transport::usb::emulated::{read_frame, write_frame};
use ibackup_transport::usb::{Link, MuxStream};
use ibackup_transport::Cancel;

use crate::conn::Conn;
use crate::device::{Device, DeviceConfig};
use crate::error::Result;
use crate::usbmuxd::Mux;
use crate::{lockdownd, services};

/// How much a device takes from its OUT endpoint in one read: a transfer
/// that is a whole number of packets and not followed by a zero-length
/// one waits here for more, as on a real pipe.
const DEVICE_READ: usize = 64 * 1024;

/// Where a simulated device sits on the bus.
pub fn location(d: &Device) -> u32 {
    0x0010_0000 + d.device_id
}

fn descriptors(d: &Device, c: &DeviceConfig) -> DeviceDesc {
    iphone_descriptors(
        location(d),
        &serial_from_udid(&c.udid),
        c.usb_max_packet.unwrap_or(512),
    )
}

fn attached(mux: &Mux) -> Vec<DeviceDesc> {
    // Read once a device per look (watchers look every 200 ms): what is
    // plugged in and how, as device.toml says now.
    mux.devices
        .iter()
        .filter_map(|d| {
            let c = d.config_on_disk();
            (c.attached && c.connection != "Network").then(|| descriptors(d, &c))
        })
        .collect()
}

/// Accept bus connections on `listener` until it fails.
pub fn serve(listener: TcpListener, mux: Arc<Mux>) {
    for s in listener.incoming() {
        let Ok(s) = s else { continue };
        let _ = s.set_nodelay(true);
        let mux = mux.clone();
        thread::spawn(move || {
            if let Err(e) = handle(s, &mux) {
                log::info!("USB bus connection ended: {e}");
            }
        });
    }
}

/// Serve the bus on an ephemeral loopback port; its address.
pub fn spawn_loopback(mux: Arc<Mux>) -> Result<String> {
    let l = TcpListener::bind("127.0.0.1:0")?;
    let addr = l.local_addr()?.to_string();
    thread::spawn(move || serve(l, mux));
    Ok(addr)
}

fn handle(mut s: TcpStream, mux: &Mux) -> Result<()> {
    match read_frame(&mut s)? {
        Frame::List => write_frame(&mut s, &Frame::Devices(attached(mux)))?,
        Frame::Watch => watch(s, mux)?,
        Frame::Open {
            location: at,
            config,
            interface,
        } => {
            let Some(dev) = mux
                .devices
                .iter()
                .find(|d| location(d) == at && d.is_attached())
                .cloned()
            else {
                let f = Frame::Refused(OpenRefusal::NoDevice, "no such device".into());
                return Ok(write_frame(&mut s, &f)?);
            };
            // Plugged in afresh: the phone's state as device.toml says now.
            dev.reload_config();
            let desc = descriptors(&dev, &dev.cfg());
            let refusal = match dev.cfg().fault_usb_open.as_deref() {
                Some("permission") => Some((OpenRefusal::Permission, "permission denied")),
                Some("busy") => Some((
                    OpenRefusal::Busy,
                    "the interface is claimed by another program",
                )),
                _ => None,
            };
            if let Some((why, text)) = refusal {
                return Ok(write_frame(&mut s, &Frame::Refused(why, text.into()))?);
            }
            let Some(m) = find_mux_interface(&desc.configs)
                .filter(|m| m.config == config && m.interface == interface)
            else {
                let f = Frame::Refused(
                    OpenRefusal::NoDevice,
                    format!("configuration {config} has no mux interface {interface}"),
                );
                return Ok(write_frame(&mut s, &f)?);
            };
            // One claim at a time, as the kernel allows: a second program
            // (another ibackup run, a usbmuxd) is told the interface is busy.
            // A program that just exited lets go at once on a real bus;
            // here its hang-up may still be on its way: give it a moment.
            let mut claimed = dev
                .usb_claimed
                .swap(true, std::sync::atomic::Ordering::SeqCst);
            for _ in 0..30 {
                if !claimed {
                    break;
                }
                thread::sleep(Duration::from_millis(100));
                claimed = dev
                    .usb_claimed
                    .swap(true, std::sync::atomic::Ordering::SeqCst);
            }
            if claimed {
                let f = Frame::Refused(
                    OpenRefusal::Busy,
                    "the interface is claimed by another program".into(),
                );
                return Ok(write_frame(&mut s, &f)?);
            }
            let r = write_frame(&mut s, &Frame::Opened)
                .map_err(Into::into)
                .and_then(|_| pipe(s, dev.clone(), m.max_packet));
            dev.usb_claimed
                .store(false, std::sync::atomic::Ordering::SeqCst);
            r?;
        }
        f => log::info!("USB bus: a connection began with {f:?}"),
    }
    Ok(())
}

/// Tell the host the device list now and after every change.
fn watch(mut s: TcpStream, mux: &Mux) -> Result<()> {
    s.set_read_timeout(Some(Duration::from_millis(200)))?;
    let mut shown: Option<Vec<DeviceDesc>> = None;
    let mut sink = [0u8; 64];
    loop {
        let now = attached(mux);
        if shown.as_ref() != Some(&now) {
            write_frame(&mut s, &Frame::Devices(now.clone()))?;
            shown = Some(now);
        }
        match s.read(&mut sink) {
            Ok(0) => return Ok(()),
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) => {}
            Err(e) => return Err(e.into()),
        }
    }
}

/// The bus side of the IN endpoint: the host's queued transfer requests
/// and the device's transfers, cut into USB packets' worth.
struct InSide {
    /// Sizes of the IN transfers the host has queued, oldest first.
    requests: VecDeque<usize>,
    /// Device data not yet taken: (bytes, how many of them are taken,
    /// whether they end with a short packet). Data not ending short is a
    /// whole number of packets.
    data: VecDeque<(Vec<u8>, usize, bool)>,
    closed: bool,
}

struct Bus {
    state: Mutex<InSide>,
    changed: Condvar,
    max_packet: usize,
}

impl Bus {
    fn push(&self, t: Transfer) {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let short = !t.bytes.len().is_multiple_of(self.max_packet);
        if !t.bytes.is_empty() {
            st.data.push_back((t.bytes, 0, short));
        }
        if t.zlp {
            st.data.push_back((Vec::new(), 0, true));
        }
        drop(st);
        self.changed.notify_all();
    }

    fn close(&self) {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).closed = true;
        self.changed.notify_all();
    }

    /// Write the next completed IN transfer to `w`: the oldest request
    /// filled until it is full or a short packet ends it. False once
    /// closed.
    fn complete(&self, w: &mut impl Write) -> io::Result<bool> {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        // Wait for a request and data enough to complete it.
        let want = loop {
            if st.closed {
                return Ok(false);
            }
            if let Some(&want) = st.requests.front() {
                if ready(&st, want) {
                    break want;
                }
            }
            st = self.changed.wait(st).unwrap_or_else(|p| p.into_inner());
        };
        st.requests.pop_front();
        // How many bytes the transfer takes, and whether a zero-length
        // packet ends it (taken with it).
        let (mut len, mut zlp) = (0, false);
        for (bytes, taken, short) in st.data.iter() {
            let room = want - len;
            let here = bytes.len() - taken;
            len += here.min(room);
            if here >= room || *short {
                zlp = here == 0 && *short && room > 0;
                break;
            }
        }
        // Take the bytes out under the lock (whole segments moved, a part
        // copied), write them after it: a writer blocked on a full socket
        // must not hold the queue the device's link pushes to.
        let mut parts: Vec<(Vec<u8>, usize, usize)> = Vec::new();
        let mut left = len;
        while left > 0 {
            let Some((bytes, taken, _)) = st.data.front_mut() else {
                break;
            };
            let n = (bytes.len() - *taken).min(left);
            left -= n;
            if *taken + n == bytes.len() {
                let (bytes, taken, _) = st.data.pop_front().expect("front");
                parts.push((bytes, taken, n));
            } else {
                parts.push((bytes[*taken..*taken + n].to_vec(), 0, n));
                *taken += n;
            }
        }
        if zlp {
            st.data.pop_front();
        }
        drop(st);
        w.write_all(&Frame::data_header(true, len))?;
        for (bytes, at, n) in &parts {
            w.write_all(&bytes[*at..*at + *n])?;
        }
        Ok(true)
    }
}

/// Whether the queued data completes a transfer of `want` bytes: it fills
/// it, or a short packet (a zero-length one too) ends it.
fn ready(st: &InSide, want: usize) -> bool {
    let mut len = 0;
    for (bytes, taken, short) in st.data.iter() {
        len += bytes.len() - taken;
        if len >= want || *short {
            return true;
        }
    }
    false
}

/// A connection of the device over the pipe, as the simulator's services
/// see connections.
struct UsbConn {
    s: MuxStream,
    cut: Arc<dyn Fn() + Send + Sync>,
    /// Bytes this connection may still send before it is reset
    /// (`fault_usb_reset_after_bytes`).
    reset_after: Option<u64>,
}

impl Read for UsbConn {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.s.read(buf)
    }
}

impl Write for UsbConn {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if let Some(left) = self.reset_after {
            if left < buf.len() as u64 {
                self.s.reset();
                return Err(io::Error::new(
                    io::ErrorKind::ConnectionReset,
                    "the simulated device reset the connection",
                ));
            }
            self.reset_after = Some(left - buf.len() as u64);
        }
        self.s.write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.s.flush()
    }
}

impl Conn for UsbConn {
    /// A pulled cable ends the whole pipe, not one connection.
    fn cut(&self) {
        (self.cut)()
    }
}

/// Run the device's side of an opened pipe until the host closes it or
/// the cable is pulled.
fn pipe(s: TcpStream, dev: Arc<Device>, max_packet: usize) -> Result<()> {
    let bus = Arc::new(Bus {
        state: Mutex::new(InSide {
            requests: VecDeque::new(),
            data: VecDeque::new(),
            closed: false,
        }),
        changed: Condvar::new(),
        max_packet,
    });
    // The device's transfers go straight onto the bus (a queue that never
    // blocks), with the faults that play with framing.
    let link = {
        let (bus, c) = (bus.clone(), dev.cfg());
        let (mut n, mut sent) = (0u64, 0u64);
        let mut garbage_sent = false;
        Link::with_sink(
            Role::Device,
            max_packet,
            Box::new(move |t: Transfer| {
                n += 1;
                sent += t.bytes.len() as u64;
                if c.fault_usb_control_messages && n % 50 == 7 {
                    // A CONTROL log line between packets.
                    bus.push(raw(Packet::Control {
                        kind: 7,
                        text: b"simulated: a log line mid-stream\0".to_vec(),
                    }));
                }
                if c.fault_usb_unknown_port && n % 50 == 11 {
                    bus.push(raw(stray_segment()));
                }
                if garbage_sent {
                    return true;
                }
                bus.push(t);
                if c.fault_usb_garbage_after_bytes.is_some_and(|g| sent >= g) {
                    bus.push(Transfer {
                        bytes: b"\x00\x00\x00\x06garbage that is no usbmux header".to_vec(),
                        zlp: false,
                    });
                    garbage_sent = true;
                }
                true
            }),
        )
    };
    link.with_mux(|m| m.listen(LOCKDOWN_PORT));
    let closer = s.try_clone()?;
    let cut: Arc<dyn Fn() + Send + Sync> = {
        let (link, bus) = (link.clone(), bus.clone());
        Arc::new(move || {
            link.fail("the cable was pulled");
            bus.close();
            let _ = closer.shutdown(Shutdown::Both);
        })
    };
    // Completed IN transfers to the host.
    let mut w = io::BufWriter::with_capacity(256 * 1024, s.try_clone()?);
    {
        let bus = bus.clone();
        let cut = cut.clone();
        thread::spawn(move || {
            loop {
                match bus.complete(&mut w) {
                    Ok(true) => {}
                    Ok(false) => break,
                    Err(_) => {
                        cut();
                        return;
                    }
                }
                // Flush unless another completion follows at once: the
                // host queues more IN transfers only once it has these.
                let more = {
                    let st = bus.state.lock().unwrap_or_else(|p| p.into_inner());
                    st.requests.front().is_some_and(|&want| ready(&st, want))
                };
                if !more && w.flush().is_err() {
                    cut();
                    return;
                }
            }
            let _ = w.flush();
        });
    }
    // Connections the host opens, each served on its own thread.
    {
        let (link, dev, cut) = (link.clone(), dev.clone(), cut.clone());
        thread::spawn(move || {
            let cancel = Cancel::new();
            while let Ok(stream) = link.accept(&cancel) {
                let port = stream.local_port();
                let conn: Box<dyn Conn> = Box::new(UsbConn {
                    s: stream,
                    cut: cut.clone(),
                    reset_after: dev.cfg().fault_usb_reset_after_bytes,
                });
                let dev = dev.clone();
                thread::spawn(move || {
                    let r = if port == LOCKDOWN_PORT {
                        lockdownd::serve(conn, dev)
                    } else if let Some(service) = dev.take_service(port) {
                        services::serve(&service, conn, dev)
                    } else {
                        Ok(())
                    };
                    if let Err(e) = r {
                        log::info!("USB connection to port {port} ended: {e}");
                    }
                });
            }
        });
    }
    // The host's frames: IN requests and OUT transfers.
    let mut r = BufReader::with_capacity(256 * 1024, s);
    let mut out = Vec::new();
    let result = loop {
        let f = match read_frame(&mut r) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => break Ok(()),
            Err(e) => break Err(e),
        };
        match f {
            Frame::In { len } if len > 0 && (len as usize).is_multiple_of(max_packet) => {
                let mut st = bus.state.lock().unwrap_or_else(|p| p.into_inner());
                st.requests.push_back(len as usize);
                drop(st);
                bus.changed.notify_all();
            }
            Frame::Out(bytes) => {
                let ends = bytes.is_empty() || !bytes.len().is_multiple_of(max_packet);
                out.extend_from_slice(&bytes);
                if ends || out.len() >= DEVICE_READ {
                    let ports = dev.pending_ports();
                    if !ports.is_empty() {
                        link.with_mux(|m| ports.iter().for_each(|p| m.listen(*p)));
                    }
                    link.input_vec(std::mem::take(&mut out));
                }
            }
            f => {
                break Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("the host sent {f:?} on an open pipe"),
                ))
            }
        }
    };
    link.fail("the host closed the pipe");
    bus.close();
    result.map_err(Into::into)
}

/// A packet as a transfer of its own, with a long header (nobody checks
/// its counters).
fn raw(p: Packet) -> Transfer {
    Transfer {
        bytes: p.encode(ibackup_proto::mux::HeaderKind::Long {
            tx_seq: 0,
            rx_seq: 0,
        }),
        zlp: false,
    }
}

/// A segment for a connection nobody opened (the host must answer with
/// an anonymous RST and carry on).
fn stray_segment() -> Packet {
    Packet::Tcp {
        tcp: ibackup_proto::mux::Tcp {
            sport: 9,
            dport: 4242,
            seq: 1,
            ack: 1,
            flags: 0x10,
            window: 0x200,
        },
        payload: b"stray".to_vec(),
    }
}
