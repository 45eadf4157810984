//! Wire protocols spoken between a host and an iPhone or iPad over usbmux.
//!
//! Every message is a value with `encode`/`decode`, and the usbmux of a
//! direct USB link is a state machine fed bytes ([`mux`]); nothing here
//! opens a socket or a file or keeps process-wide state (that is
//! `ibackup-transport`). The few helpers that do I/O ([`frame`], [`tls`])
//! are generic over `Read`/`Write`, so they serve a socket, an in-memory
//! buffer in a test, or a connection over the mux alike.
//!
//! Both sides of each protocol live here: the host side (our client) and the
//! device side (the simulator in `ibackup-sim`).

pub mod afc;
pub mod devicelink;
pub mod error;
pub mod frame;
pub mod lockdown;
pub mod mb2;
pub mod mux;
pub mod pairing;
pub mod plistx;
pub mod services;
pub mod tls;
pub mod usbemu;
pub mod usbmux;

pub use error::ProtoError;
