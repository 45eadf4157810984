//! `--simulated`: the built-in simulated iPhone, for trying ibackup out.
//! Linked only with the `simulator` feature (on by default); a build
//! without it links no simulator and says so.

use ibackup_engine::EngineError;
use ibackup_transport::Transport;

use crate::Cli;

#[cfg(feature = "simulator")]
mod with_simulator {
    use std::path::{Path, PathBuf};

    use ibackup_engine::EngineError;
    use ibackup_proto::usbmux::SocketAddress;
    use ibackup_transport::usb::UsbTransport;
    use ibackup_transport::{MuxClient, Transport};

    use crate::{stop, Cli};

    /// The simulated iPhone's folder cannot be made or used.
    fn simulated_unusable(what: &str, dir: &Path, e: ibackup_sim::SimError) -> EngineError {
        EngineError::Usage(format!(
            "cannot {what} the simulated iPhone in {} ({e}); set IBACKUP_SIMULATED_DIR to a folder of your own with about 120 MB free",
            dir.display()
        ))
    }

    /// The built-in simulated iPhone, reached through a simulated usbmuxd or
    /// (with `--transport usb`) its emulated USB bus.
    pub fn transport(cli: &Cli, over_usb: bool) -> Result<Box<dyn Transport>, EngineError> {
        let dir = std::env::var_os("IBACKUP_SIMULATED_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| std::env::temp_dir().join("ibackup-simulated-iphone"));
        if !dir.join("device.toml").is_file() {
            if !cli.quiet && !cli.json {
                eprintln!(
                    "Making a simulated iPhone in {} (about 120 MB)...",
                    dir.display()
                );
            }
            // Made beside its place and renamed into it when whole: a first
            // run stopped part way (Ctrl-C, a full /tmp) must not leave a
            // phone with half its files that every later run then uses.
            let mut part = dir.clone().into_os_string();
            part.push(".part");
            let part = PathBuf::from(part);
            let _ = std::fs::remove_dir_all(&part);
            let _ = std::fs::remove_dir_all(&dir);
            ibackup_sim::populate::populate(&part, ibackup_sim::populate::Profile::Small, 1)
                .and_then(|_| std::fs::rename(&part, &dir).map_err(Into::into))
                .map_err(|e| {
                    let _ = std::fs::remove_dir_all(&part);
                    simulated_unusable("make", &dir, e)
                })?;
        }
        // Another user's (a shared /tmp), or a folder gone read-only: said as
        // such, not as a device's answer.
        let device =
            ibackup_sim::Device::open(&dir, 1).map_err(|e| simulated_unusable("use", &dir, e))?;
        let mux = ibackup_sim::usbmuxd::Mux::new(vec![device])
            .map_err(|e| EngineError::Protocol(e.to_string()))?;
        if over_usb {
            let addr = ibackup_sim::usb::spawn_loopback(mux)
                .map_err(|e| EngineError::Protocol(e.to_string()))?;
            // The simulated phone's pair records stay with it, not among the
            // user's real ones.
            let records = ibackup_transport::usb::PairStore {
                shared: None,
                own: dir.join("host-lockdown"),
            };
            return Ok(Box::new(
                UsbTransport::new(Box::new(
                    ibackup_transport::usb::emulated::EmulatedBus::new(&addr),
                ))
                .with_records(records)
                .with_stall_timeout(cli.stall()?)
                .with_cancel(stop::cancel()),
            ));
        }
        let addr = ibackup_sim::usbmuxd::spawn_loopback(mux)
            .map_err(|e| EngineError::Protocol(e.to_string()))?;
        Ok(Box::new(
            MuxClient::new(SocketAddress::Tcp(addr))
                .with_stall_timeout(cli.stall()?)
                .with_cancel(stop::cancel()),
        ))
    }
}

/// The simulated iPhone, over its simulated usbmuxd or (`over_usb`) its
/// emulated USB bus.
pub fn transport(cli: &Cli, over_usb: bool) -> Result<Box<dyn Transport>, EngineError> {
    #[cfg(feature = "simulator")]
    {
        with_simulator::transport(cli, over_usb)
    }
    #[cfg(not(feature = "simulator"))]
    {
        let _ = (cli, over_usb);
        Err(EngineError::Usage(
            "this ibackup was built without the simulated iPhone (the `simulator` feature); build it with default features to use --simulated".into(),
        ))
    }
}
