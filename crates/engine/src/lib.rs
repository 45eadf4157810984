//! Runs a session with a device: finds it through usbmuxd, makes sure this
//! host is trusted, and runs a backup that lands in a staging folder and is
//! committed only when the device reports success.

pub mod afc;
pub mod backup;
pub mod device;
pub mod error;
mod files;
pub mod photos;
pub mod restore;
pub mod snapshots;
pub mod staging;
pub mod sync;
pub mod watch;

pub use error::EngineError;
