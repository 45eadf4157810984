//! How the host reaches a device, and the I/O of a conversation with it:
//! sockets, splicing file blocks to disk, TLS over a connection, and
//! stopping on request. The protocols themselves are values in
//! `ibackup-proto`; this crate moves their bytes.
//!
//! Two transports: usbmuxd's socket ([`usbmuxd::MuxClient`]), and direct USB
//! ([`usb`]) for machines with no usbmuxd, speaking the mux itself with
//! `ibackup_proto::mux`.

pub mod cancel;
pub mod lockdown;
pub mod receive;
pub mod stream;
pub mod usb;
pub mod usbmuxd;

use ibackup_proto::error::Result;
use ibackup_proto::pairing::PairRecord;
use ibackup_proto::usbmux::{DeviceRecord, MuxEvent};

pub use cancel::Cancel;
pub use lockdown::{is_lockdown_error, LockdownClient, ServiceInfo};
pub use stream::{BufStream, Stream};
pub use usbmuxd::MuxClient;

/// How the host reaches devices: through usbmuxd ([`MuxClient`]) or
/// directly over USB ([`usb`]). The engine sees only this.
pub trait Transport: Send + Sync {
    /// Where devices are reached, for messages.
    fn describe(&self) -> String;
    /// The stop handle every connection of this transport is registered
    /// with.
    fn cancel(&self) -> &Cancel;
    /// Plug and unplug events, as they happen.
    fn listen(&self) -> Result<Box<dyn DeviceEvents>>;
    fn devices(&self) -> Result<Vec<DeviceRecord>>;
    /// A byte pipe to `port` on the device.
    fn connect(&self, device_id: u32, port: u16) -> Result<Box<dyn Stream>>;
    /// The host's system BUID, sent with pair records.
    fn buid(&self) -> Result<String>;
    fn read_pair_record(&self, udid: &str) -> Result<Option<PairRecord>>;
    fn save_pair_record(&self, udid: &str, device_id: u32, rec: &PairRecord) -> Result<()>;
    fn delete_pair_record(&self, udid: &str) -> Result<()>;
}

/// A subscription to plug and unplug events.
pub trait DeviceEvents: Send {
    /// The next event, waiting for it; an error when the source of events
    /// goes away.
    fn next_event(&mut self) -> Result<MuxEvent>;
}
