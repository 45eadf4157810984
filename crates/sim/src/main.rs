use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use ibackup_proto::usbmux::SocketAddress;
use ibackup_sim::populate::{populate, Profile};
use ibackup_sim::usbmuxd::{serve, Mux};
use ibackup_sim::Device;

#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// A simulated iPhone that real backup clients can talk to.
#[derive(Parser)]
#[command(name = "ibackup-sim", version)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Make a device folder with realistic, reproducible content.
    Populate {
        dir: PathBuf,
        #[arg(long, value_enum, default_value = "small")]
        profile: Profile,
        #[arg(long, default_value_t = 1)]
        seed: u64,
    },
    /// Serve device folders as usbmuxd would, and/or on an emulated USB
    /// bus, until killed.
    Serve {
        /// `UNIX:/path`, `/path` or `HOST:PORT` (USBMUXD_SOCKET_ADDRESS syntax).
        #[arg(long, required_unless_present = "usb_emulated")]
        listen: Option<String>,
        /// `HOST:PORT`: also put the devices on an emulated USB bus there,
        /// for `IBACKUP_USB_EMULATOR=HOST:PORT ibackup --transport usb`.
        #[arg(long)]
        usb_emulated: Option<String>,
        #[arg(required = true)]
        devices: Vec<PathBuf>,
    },
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"))
        .format_timestamp_millis()
        .init();
    let cli = Cli::parse();
    let r = match cli.cmd {
        Cmd::Populate { dir, profile, seed } => {
            populate(&dir, profile, seed).map(|(files, bytes)| {
                println!("{}: {files} files, {bytes} bytes", dir.display());
            })
        }
        Cmd::Serve {
            listen,
            usb_emulated,
            devices,
        } => (|| {
            let devs = devices
                .iter()
                .enumerate()
                .map(|(i, d)| Device::open(d, i as u32 + 1))
                .collect::<Result<Vec<_>, _>>()?;
            let mux = Mux::new(devs)?;
            let usb = usb_emulated
                .map(|a| -> Result<_, ibackup_sim::SimError> {
                    let l = std::net::TcpListener::bind(&a)?;
                    log::info!("emulated USB bus on {}", l.local_addr()?);
                    let mux = mux.clone();
                    Ok(std::thread::spawn(move || ibackup_sim::usb::serve(l, mux)))
                })
                .transpose()?;
            match (listen, usb) {
                (Some(listen), _) => serve(&SocketAddress::parse(&listen)?, mux),
                (None, Some(t)) => {
                    let _ = t.join();
                    Ok(())
                }
                (None, None) => Ok(()),
            }
        })(),
    };
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ibackup-sim: {e}");
            ExitCode::FAILURE
        }
    }
}
