//! Real USB through nusb (pure Rust: usbfs on Linux, IOKit on macOS,
//! WinUSB on Windows). See docs/direct-usb.md for what each system needs.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Wake, Waker};
use std::time::Duration;

use futures_core::Stream as _;
use ibackup_proto::mux::Transfer;
use ibackup_proto::usbemu::{
    find_mux_interface, ConfigDesc, DeviceDesc, EndpointDesc, InterfaceDesc, MuxInterface,
    APPLE_VENDOR, PRODUCTS,
};
use nusb::descriptors::TransferType;
use nusb::transfer::{Buffer, Bulk, In, Out};
use nusb::MaybeFuture;

use super::bus::{Bus, BusWatch, InEndpoint, OpenError, OutEndpoint, Pipe};
use super::bus::{IN_TRANSFERS, IN_TRANSFER_SIZE};

/// OUT transfers allowed in flight before waiting for the oldest.
const OUT_IN_FLIGHT: usize = 3;

pub struct NativeBus;

fn location(info: &nusb::DeviceInfo) -> u32 {
    #[cfg(target_os = "linux")]
    {
        (u32::from(info.busnum()) << 16) | u32::from(info.device_address())
    }
    #[cfg(target_os = "macos")]
    {
        info.location_id()
    }
    #[cfg(not(any(target_os = "linux", target_os = "macos")))]
    {
        u32::from(info.device_address()) | (info.port_number() << 8)
    }
}

fn speed_mbps(info: &nusb::DeviceInfo) -> u32 {
    use nusb::Speed::*;
    match info.speed() {
        Some(Low) => 1,
        Some(Full) => 12,
        Some(High) => 480,
        Some(Super) => 5000,
        Some(SuperPlus) => 10000,
        _ => 0,
    }
}

fn is_phone(info: &nusb::DeviceInfo) -> bool {
    info.vendor_id() == APPLE_VENDOR && PRODUCTS.contains(&info.product_id())
}

fn configs(dev: &nusb::Device) -> Vec<ConfigDesc> {
    dev.configurations()
        .map(|c| ConfigDesc {
            value: c.configuration_value(),
            interfaces: c
                .interfaces()
                .filter_map(|group| group.alt_settings().next())
                .map(|i| InterfaceDesc {
                    number: i.interface_number(),
                    class: i.class(),
                    subclass: i.subclass(),
                    protocol: i.protocol(),
                    endpoints: i
                        .endpoints()
                        .map(|e| EndpointDesc {
                            address: e.address(),
                            max_packet: e.max_packet_size() as u16,
                            bulk: e.transfer_type() == TransferType::Bulk,
                        })
                        .collect(),
                })
                .collect(),
        })
        .collect()
}

/// A phone as listed: its configurations when it could be opened to read
/// them; none when it could not (then opening it says why).
fn describe(info: &nusb::DeviceInfo) -> DeviceDesc {
    let configs = info.open().wait().map(|d| configs(&d)).unwrap_or_default();
    DeviceDesc {
        location: location(info),
        vendor: info.vendor_id(),
        product: info.product_id(),
        serial: info.serial_number().unwrap_or_default().to_string(),
        speed_mbps: speed_mbps(info),
        configs,
    }
}

fn open_error(e: nusb::Error, what: &str) -> OpenError {
    let why = format!("{what}: {e}");
    match e.kind() {
        nusb::ErrorKind::PermissionDenied => OpenError::Permission(why),
        nusb::ErrorKind::Busy => OpenError::Busy(why),
        nusb::ErrorKind::Unsupported => OpenError::NoDriver(why),
        _ => OpenError::Other(io::Error::other(why)),
    }
}

impl Bus for NativeBus {
    fn describe(&self) -> String {
        "nusb".into()
    }

    fn list(&self) -> io::Result<Vec<DeviceDesc>> {
        Ok(nusb::list_devices()
            .wait()
            .map_err(io::Error::other)?
            .filter(is_phone)
            .map(|i| describe(&i))
            .collect())
    }

    fn watch(&self) -> io::Result<Box<dyn BusWatch>> {
        Ok(Box::new(Watch {
            watch: Box::pin(nusb::watch_devices().map_err(io::Error::other)?),
        }))
    }

    fn open(&self, device: &DeviceDesc, _hint: &MuxInterface) -> Result<Pipe, OpenError> {
        let info = nusb::list_devices()
            .wait()
            .map_err(|e| OpenError::Other(io::Error::other(e)))?
            .find(|i| is_phone(i) && location(i) == device.location)
            .ok_or_else(|| {
                OpenError::Other(io::Error::new(
                    io::ErrorKind::NotFound,
                    "the device is gone",
                ))
            })?;
        let dev = info.open().wait().map_err(|e| open_error(e, "open"))?;
        let mux = find_mux_interface(&configs(&dev)).ok_or_else(|| {
            OpenError::Other(io::Error::other(
                "the device shows no usbmux interface in any configuration",
            ))
        })?;
        let active = dev.active_configuration().map(|c| c.configuration_value());
        if active.ok() != Some(mux.config) {
            // Kernel drivers (ipheth, PTP) bound to the current
            // configuration's interfaces must let go first (Linux).
            #[cfg(target_os = "linux")]
            if let Ok(c) = dev.active_configuration() {
                for i in c.interfaces() {
                    let _ = dev.detach_kernel_driver(i.interface_number());
                }
            }
            dev.set_configuration(mux.config)
                .wait()
                .map_err(|e| open_error(e, "choosing the mux configuration"))?;
        }
        let iface = dev
            .detach_and_claim_interface(mux.interface)
            .wait()
            .map_err(|e| open_error(e, "claiming the mux interface"))?;
        let ep_in = iface
            .endpoint::<Bulk, In>(mux.ep_in)
            .map_err(|e| open_error(e, "the IN endpoint"))?;
        let ep_out = iface
            .endpoint::<Bulk, Out>(mux.ep_out)
            .map_err(|e| open_error(e, "the OUT endpoint"))?;
        let closed = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let size = IN_TRANSFER_SIZE - IN_TRANSFER_SIZE % ep_in.max_packet_size().max(1);
        let mut input = NativeIn {
            ep: ep_in,
            size,
            closed: closed.clone(),
        };
        for _ in 0..IN_TRANSFERS {
            let b = input.ep.allocate(size);
            input.ep.submit(b);
        }
        let iface = Arc::new(Mutex::new(Some(iface)));
        Ok(Pipe {
            input: Box::new(input),
            output: Box::new(NativeOut { ep: ep_out }),
            close: Box::new(move || {
                closed.store(true, std::sync::atomic::Ordering::SeqCst);
                // Releasing the interface ends the pending transfers.
                iface.lock().unwrap_or_else(|p| p.into_inner()).take();
            }),
        })
    }
}

struct NativeIn {
    ep: nusb::Endpoint<Bulk, In>,
    size: usize,
    closed: Arc<std::sync::atomic::AtomicBool>,
}

impl InEndpoint for NativeIn {
    fn next(&mut self) -> io::Result<Vec<u8>> {
        loop {
            if self.closed.load(std::sync::atomic::Ordering::SeqCst) {
                return Err(io::Error::new(io::ErrorKind::NotConnected, "closed"));
            }
            // Wake now and then to see a close from another thread.
            let Some(c) = self.ep.wait_next_complete(Duration::from_millis(500)) else {
                continue;
            };
            c.status
                .map_err(|e| io::Error::new(io::ErrorKind::NotConnected, e.to_string()))?;
            let bytes = c.buffer[..c.actual_len].to_vec();
            let mut b = c.buffer;
            b.clear();
            b.set_requested_len(self.size);
            self.ep.submit(b);
            return Ok(bytes);
        }
    }
}

struct NativeOut {
    ep: nusb::Endpoint<Bulk, Out>,
}

impl NativeOut {
    fn reap(&mut self, keep: usize) -> io::Result<()> {
        while self.ep.pending() > keep {
            let c = self
                .ep
                .wait_next_complete(Duration::from_secs(3600))
                .ok_or_else(|| io::Error::new(io::ErrorKind::TimedOut, "an OUT transfer hung"))?;
            c.status
                .map_err(|e| io::Error::new(io::ErrorKind::NotConnected, e.to_string()))?;
        }
        Ok(())
    }
}

impl OutEndpoint for NativeOut {
    fn send(&mut self, t: &Transfer) -> io::Result<()> {
        self.reap(OUT_IN_FLIGHT - 1)?;
        let mut b = Buffer::new(t.bytes.len());
        b.extend_from_slice(&t.bytes);
        self.ep.submit(b);
        if t.zlp {
            self.reap(OUT_IN_FLIGHT - 1)?;
            self.ep.submit(Buffer::new(0));
        }
        Ok(())
    }
}

struct Watch {
    watch: Pin<Box<nusb::hotplug::HotplugWatch>>,
}

impl BusWatch for Watch {
    fn next(&mut self) -> io::Result<Vec<DeviceDesc>> {
        loop {
            let ev = block_on(std::future::poll_fn(|cx| self.watch.as_mut().poll_next(cx)));
            match ev {
                None => return Err(io::Error::other("hotplug events ended")),
                Some(nusb::hotplug::HotplugEvent::Connected(i)) if !is_phone(&i) => continue,
                Some(_) => {
                    // Windows: a composite device's interfaces may not be
                    // ready when it is announced (nusb's docs).
                    std::thread::sleep(Duration::from_millis(300));
                    return NativeBus.list();
                }
            }
        }
    }
}

/// Wait for a future on this thread (hotplug is the one async API used).
fn block_on<F: Future>(f: F) -> F::Output {
    struct Unpark(std::thread::Thread);
    impl Wake for Unpark {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = Waker::from(Arc::new(Unpark(std::thread::current())));
    let mut cx = Context::from_waker(&waker);
    let mut f = std::pin::pin!(f);
    loop {
        if let Poll::Ready(v) = f.as_mut().poll(&mut cx) {
            return v;
        }
        std::thread::park();
    }
}
