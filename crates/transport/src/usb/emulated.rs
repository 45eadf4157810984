//! The simulator's emulated USB bus (`ibackup-sim serve --usb-emulated
//! ADDR`), reached at `IBACKUP_USB_EMULATOR=ADDR`: the same [`Bus`] seam
//! as real USB, its frames in `ibackup_proto::usbemu`.

use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::sync::{Arc, Mutex};

use ibackup_proto::mux::Transfer;
use ibackup_proto::usbemu::{DeviceDesc, Frame, MuxInterface, OpenRefusal};

use super::bus::{Bus, BusWatch, InEndpoint, OpenError, OutEndpoint, Pipe};
use super::bus::{IN_TRANSFERS, IN_TRANSFER_SIZE};

pub struct EmulatedBus {
    pub addr: String,
}

impl EmulatedBus {
    pub fn new(addr: &str) -> Self {
        EmulatedBus {
            addr: addr.to_string(),
        }
    }

    fn dial(&self) -> io::Result<TcpStream> {
        let s = TcpStream::connect(&self.addr).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("the emulated USB bus at {} ({e})", self.addr),
            )
        })?;
        let _ = s.set_nodelay(true);
        Ok(s)
    }
}

/// The IN transfer size: [`IN_TRANSFER_SIZE`], or `IBACKUP_USB_IN_TRANSFER`
/// bytes (tests: small transfers make every packet span several), in whole
/// packets.
fn in_transfer_size(max_packet: usize) -> usize {
    let mp = max_packet.max(1);
    let want = std::env::var("IBACKUP_USB_IN_TRANSFER")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .unwrap_or(IN_TRANSFER_SIZE)
        .clamp(mp, 1 << 20);
    want - want % mp
}

pub fn read_frame(r: &mut impl Read) -> io::Result<Frame> {
    let mut head = [0u8; 4];
    r.read_exact(&mut head)?;
    let n = Frame::body_len(head).map_err(invalid)?;
    let mut body = vec![0u8; n];
    r.read_exact(&mut body)?;
    Frame::decode(&body).map_err(invalid)
}

pub fn write_frame(w: &mut impl Write, f: &Frame) -> io::Result<()> {
    w.write_all(&f.encode())
}

fn invalid(e: ibackup_proto::ProtoError) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e.to_string())
}

fn unexpected(f: &Frame) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("the emulated bus sent an unexpected {f:?}"),
    )
}

impl Bus for EmulatedBus {
    fn describe(&self) -> String {
        format!("the emulated bus at {}", self.addr)
    }

    fn list(&self) -> io::Result<Vec<DeviceDesc>> {
        let mut s = self.dial()?;
        write_frame(&mut s, &Frame::List)?;
        match read_frame(&mut s)? {
            Frame::Devices(d) => Ok(d),
            f => Err(unexpected(&f)),
        }
    }

    fn watch(&self) -> io::Result<Box<dyn BusWatch>> {
        let mut s = self.dial()?;
        write_frame(&mut s, &Frame::Watch)?;
        Ok(Box::new(Watch(s)))
    }

    fn open(&self, device: &DeviceDesc, mux: &MuxInterface) -> Result<Pipe, OpenError> {
        let mut s = self.dial().map_err(OpenError::Other)?;
        write_frame(
            &mut s,
            &Frame::Open {
                location: device.location,
                config: mux.config,
                interface: mux.interface,
            },
        )
        .map_err(OpenError::Other)?;
        match read_frame(&mut s).map_err(OpenError::Other)? {
            Frame::Opened => {}
            Frame::Refused(OpenRefusal::Permission, why) => return Err(OpenError::Permission(why)),
            Frame::Refused(OpenRefusal::Busy, why) => return Err(OpenError::Busy(why)),
            Frame::Refused(OpenRefusal::NoDevice, why) => {
                return Err(OpenError::Other(io::Error::new(
                    io::ErrorKind::NotFound,
                    why,
                )))
            }
            f => return Err(OpenError::Other(unexpected(&f))),
        }
        let writer = Arc::new(Mutex::new(s.try_clone().map_err(OpenError::Other)?));
        let closer = s.try_clone().map_err(OpenError::Other)?;
        let mut input = EmulatedIn {
            // Unbuffered: each frame is read straight into its own vector,
            // which the link then keeps (no copy on the way).
            reader: s,
            writer: writer.clone(),
            queued: 0,
            size: in_transfer_size(mux.max_packet),
        };
        input.top_up().map_err(OpenError::Other)?;
        Ok(Pipe {
            input: Box::new(input),
            output: Box::new(EmulatedOut { writer }),
            close: Box::new(move || {
                let _ = closer.shutdown(Shutdown::Both);
            }),
        })
    }
}

struct Watch(TcpStream);

impl BusWatch for Watch {
    fn next(&mut self) -> io::Result<Vec<DeviceDesc>> {
        match read_frame(&mut self.0)? {
            Frame::Devices(d) => Ok(d),
            f => Err(unexpected(&f)),
        }
    }
}

struct EmulatedIn {
    reader: TcpStream,
    writer: Arc<Mutex<TcpStream>>,
    queued: usize,
    size: usize,
}

impl EmulatedIn {
    /// Keep [`IN_TRANSFERS`] IN transfers queued on the bus.
    fn top_up(&mut self) -> io::Result<()> {
        let mut w = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        while self.queued < IN_TRANSFERS {
            write_frame(
                &mut *w,
                &Frame::In {
                    len: self.size as u32,
                },
            )?;
            self.queued += 1;
        }
        Ok(())
    }
}

impl InEndpoint for EmulatedIn {
    fn next(&mut self) -> io::Result<Vec<u8>> {
        self.top_up()?;
        match read_frame(&mut self.reader) {
            Ok(Frame::InDone(bytes)) => {
                self.queued -= 1;
                if bytes.len() > self.size {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!(
                            "an IN transfer of {} bytes where {} were asked for",
                            bytes.len(),
                            self.size
                        ),
                    ));
                }
                Ok(bytes)
            }
            Ok(f) => Err(unexpected(&f)),
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Err(io::Error::new(
                io::ErrorKind::NotConnected,
                "the device left the bus",
            )),
            Err(e) => Err(e),
        }
    }
}

struct EmulatedOut {
    writer: Arc<Mutex<TcpStream>>,
}

impl OutEndpoint for EmulatedOut {
    fn send(&mut self, t: &Transfer) -> io::Result<()> {
        self.send_all(std::slice::from_ref(t))
    }

    fn send_all(&mut self, ts: &[Transfer]) -> io::Result<()> {
        let size: usize = ts.iter().map(|t| t.bytes.len() + 10).sum();
        let mut frames = Vec::with_capacity(size);
        for t in ts {
            frames.extend_from_slice(&Frame::data_header(false, t.bytes.len()));
            frames.extend_from_slice(&t.bytes);
            if t.zlp {
                frames.extend_from_slice(&Frame::data_header(false, 0));
            }
        }
        let mut w = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        w.write_all(&frames)
    }
}
