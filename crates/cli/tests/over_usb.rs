//! Every end-to-end device scenario of ibackup again, over direct USB: the
//! same tests, run by this binary with `--transport usb` against the
//! simulator's emulated USB bus instead of its usbmuxd socket
//! (`ibackup_suite::transport_under_test` knows this binary by its name).
//! Full, incremental, restore to another device, encryption, a pulled
//! cable, a killed run, a hostile device, watch and trust all run here.

#[path = "backup.rs"]
mod backup;
#[path = "data.rs"]
mod data;
#[path = "history.rs"]
mod history;
#[path = "unattended.rs"]
mod unattended;
