//! `ibackup-sim`: a simulated iPhone for tests and benchmarks.
//!
//! It serves devices as usbmuxd does, so real clients (libimobiledevice,
//! pymobiledevice3) and ours can talk to it through
//! `USBMUXD_SOCKET_ADDRESS`. See `docs/simulator.md` for what it covers and
//! what a real device does that it does not.

pub mod conn;
pub mod device;
pub mod error;
pub mod fsx;
pub mod keys;
pub mod lockdownd;
pub mod personal;
pub mod populate;
pub mod services;
pub mod usb;
pub mod usbmuxd;

pub use device::{Device, DeviceConfig};
pub use error::SimError;
