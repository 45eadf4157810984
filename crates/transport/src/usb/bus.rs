//! The seam under direct USB: a bus lists devices, reports plugs and
//! unplugs, and opens a device's mux interface as a pair of bulk
//! endpoints. [`super::native`] puts nusb behind it, [`super::emulated`]
//! the simulator's emulated bus; everything above (the mux, pairing, the
//! engine) cannot tell them apart.

use std::io;

use ibackup_proto::mux::Transfer;
use ibackup_proto::usbemu::{DeviceDesc, MuxInterface};

/// Why a device could not be opened, with what the user can do about it.
#[derive(Debug)]
pub enum OpenError {
    /// The device node is not ours (Linux without the udev rule).
    Permission(String),
    /// Another program holds the interface (a running usbmuxd).
    Busy(String),
    /// The operating system gives no way in (Windows without a driver
    /// that lets a program pick the configuration).
    NoDriver(String),
    /// The device went away, or another failure.
    Other(io::Error),
}

impl std::fmt::Display for OpenError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            OpenError::Permission(s) | OpenError::Busy(s) | OpenError::NoDriver(s) => {
                f.write_str(s)
            }
            OpenError::Other(e) => write!(f, "{e}"),
        }
    }
}

pub trait Bus: Send + Sync {
    /// Where devices are looked for, for messages.
    fn describe(&self) -> String;
    /// The devices on the bus now (all of them; the caller filters).
    fn list(&self) -> io::Result<Vec<DeviceDesc>>;
    /// Plug and unplug, as they happen.
    fn watch(&self) -> io::Result<Box<dyn BusWatch>>;
    /// Select `mux`'s configuration (detaching kernel drivers where it
    /// must), claim its interface and return its two endpoints.
    fn open(&self, device: &DeviceDesc, mux: &MuxInterface) -> Result<Pipe, OpenError>;
}

/// Hotplug: each call waits for the next change and returns every device
/// on the bus after it.
pub trait BusWatch: Send {
    fn next(&mut self) -> io::Result<Vec<DeviceDesc>>;
}

/// A claimed mux interface.
pub struct Pipe {
    pub input: Box<dyn InEndpoint>,
    pub output: Box<dyn OutEndpoint>,
    /// Ends the pipe from any thread: a blocked `next` or `send` returns.
    pub close: Box<dyn Fn() + Send + Sync>,
}

/// The bulk IN endpoint, with several transfers kept queued (at least
/// three: one waiting in the host controller while the last is handled).
pub trait InEndpoint: Send {
    /// The bytes of the next completed transfer; an error when the device
    /// is gone (any failed transfer counts as unplugged).
    fn next(&mut self) -> io::Result<Vec<u8>>;
}

/// The bulk OUT endpoint.
pub trait OutEndpoint: Send {
    /// Send one transfer, then a zero-length one when `t.zlp` says so.
    fn send(&mut self, t: &Transfer) -> io::Result<()>;
    /// Send several in order (the ACKs that pile up while the last write
    /// was under way), as one write where the endpoint can.
    fn send_all(&mut self, ts: &[Transfer]) -> io::Result<()> {
        ts.iter().try_for_each(|t| self.send(t))
    }
}

/// How many IN transfers each pipe keeps queued, and their size. usbmuxd
/// keeps three of 16 KiB (old usbfs split larger ones); rusbmux three of
/// 48 KiB. Four of 64 KiB (usbmuxd's largest packet) keep a fast pipe busy
/// while the link thread works, with a quarter of the completions. Packets
/// still cross transfer boundaries (a 48 KiB packet after a short one);
/// the mux's deframer joins them, and the tests also run with transfers of
/// a few KiB (`IBACKUP_USB_IN_TRANSFER` on the emulated bus).
pub const IN_TRANSFERS: usize = 4;
pub const IN_TRANSFER_SIZE: usize = 64 * 1024;
