//! Direct USB: ibackup speaks the usbmux protocol to the phone itself, for
//! machines with no usbmuxd (a server, a container with the device passed
//! through, Windows without Apple's software). A [`Bus`] finds Apple
//! devices and opens their mux interface; a [`Link`] per device runs
//! `ibackup_proto::mux` over it; pair records live in a [`PairStore`].

pub mod bus;
pub mod emulated;
pub mod link;
#[cfg(not(target_arch = "wasm32"))]
pub mod native;
pub mod records;

use std::collections::HashMap;
use std::io;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ibackup_proto::error::{ProtoError, Result};
use ibackup_proto::mux::Role;
use ibackup_proto::pairing::PairRecord;
use ibackup_proto::usbemu::{
    find_mux_interface, udid_from_serial, DeviceDesc, MuxInterface, APPLE_VENDOR, PRODUCTS,
};
use ibackup_proto::usbmux::{DeviceRecord, MuxEvent, MuxResult};

pub use bus::{Bus, BusWatch, InEndpoint, OpenError, OutEndpoint, Pipe};
pub use link::{Link, MuxStream};
pub use records::PairStore;

use crate::cancel::Cancel;
use crate::stream::Stream;
use crate::{DeviceEvents, Transport};

/// How long a phone may take to answer the VERSION request and a connect.
const ANSWER_LIMIT: Duration = Duration::from_secs(10);

/// The Apple devices in their normal mode with a mux interface.
pub fn phones(list: Vec<DeviceDesc>) -> Vec<(DeviceDesc, MuxInterface)> {
    list.into_iter()
        .filter(|d| d.vendor == APPLE_VENDOR && PRODUCTS.contains(&d.product))
        .filter_map(|d| find_mux_interface(&d.configs).map(|m| (d, m)))
        .collect()
}

fn record_of(d: &DeviceDesc) -> DeviceRecord {
    DeviceRecord {
        device_id: d.location,
        udid: udid_from_serial(&d.serial),
        product_id: u32::from(d.product),
        location_id: d.location,
        connection_type: "USB".into(),
    }
}

/// A [`Transport`] that reaches phones over a [`Bus`] with no usbmuxd.
pub struct UsbTransport {
    bus: Box<dyn Bus>,
    records: PairStore,
    cancel: Cancel,
    stall_timeout: Option<Duration>,
    /// One open link per device (by location), reused by every connection.
    links: Mutex<HashMap<u32, Open>>,
}

struct Open {
    link: Arc<Link>,
    close: Box<dyn Fn() + Send + Sync>,
}

impl UsbTransport {
    pub fn new(bus: Box<dyn Bus>) -> Self {
        UsbTransport {
            bus,
            records: PairStore::for_this_user(),
            cancel: Cancel::new(),
            stall_timeout: None,
            links: Mutex::new(HashMap::new()),
        }
    }

    pub fn with_cancel(mut self, cancel: Cancel) -> Self {
        self.cancel = cancel;
        self
    }

    pub fn with_stall_timeout(mut self, stall_timeout: Option<Duration>) -> Self {
        self.stall_timeout = stall_timeout;
        self
    }

    pub fn with_records(mut self, records: PairStore) -> Self {
        self.records = records;
        self
    }

    fn phones(&self) -> Result<Vec<(DeviceDesc, MuxInterface)>> {
        Ok(phones(self.bus.list()?))
    }

    /// The device's link, opened (and the VERSION exchanged) if it is not
    /// open or the last one died.
    fn link(&self, device_id: u32) -> Result<Arc<Link>> {
        let mut links = self.links.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(o) = links.get(&device_id) {
            if o.link.dead().is_none() {
                return Ok(o.link.clone());
            }
            (o.close)();
            links.remove(&device_id);
        }
        let (desc, mux) = self
            .phones()?
            .into_iter()
            .find(|(d, _)| d.location == device_id)
            .ok_or_else(|| ProtoError::Mux {
                request: "Connect".into(),
                result: MuxResult::BadDevice as u64,
            })?;
        let pipe = self
            .bus
            .open(&desc, &mux)
            .map_err(|e| ProtoError::Unreachable(explain(&desc, e)))?;
        let (link, close) = start(pipe, mux.max_packet);
        if let Err(e) = link.wait_ready(ANSWER_LIMIT) {
            close();
            return Err(e.into());
        }
        links.insert(
            device_id,
            Open {
                link: link.clone(),
                close,
            },
        );
        Ok(link)
    }
}

impl Drop for UsbTransport {
    fn drop(&mut self) {
        let links = self.links.lock().unwrap_or_else(|p| p.into_inner());
        for o in links.values() {
            (o.close)();
        }
    }
}

/// Run a link over `pipe`: a thread feeds it the IN transfers, another
/// sends its OUT transfers. Returns the link and what closes the pipe.
pub fn start(pipe: Pipe, max_packet: usize) -> (Arc<Link>, Box<dyn Fn() + Send + Sync>) {
    let (link, to_send) = Link::new(Role::Host, max_packet);
    let Pipe {
        mut input,
        mut output,
        close,
    } = pipe;
    let l = link.clone();
    std::thread::spawn(move || {
        let mut batch = Vec::new();
        while let Ok(t) = to_send.recv() {
            batch.push(t);
            while let Ok(t) = to_send.try_recv() {
                batch.push(t);
                if batch.len() >= 64 {
                    break;
                }
            }
            if let Err(e) = output.send_all(&batch) {
                l.fail(&format!("the device was unplugged ({e})"));
                return;
            }
            batch.clear();
        }
    });
    let l = link.clone();
    std::thread::spawn(move || loop {
        match input.next() {
            Ok(bytes) => {
                l.input_vec(bytes);
                if l.dead().is_some() {
                    return;
                }
            }
            Err(e) => {
                l.fail(&format!("the device was unplugged ({e})"));
                return;
            }
        }
    });
    (link, close)
}

/// What went wrong opening `d`, and what to do about it.
pub fn explain(d: &DeviceDesc, e: OpenError) -> String {
    let which = format!(
        "the device {} at USB {:08x}",
        udid_from_serial(&d.serial),
        d.location
    );
    match e {
        OpenError::Permission(why) => format!(
            "cannot open {which}: {why}. Install ibackup's udev rule (sudo install -m 644 dist/udev/69-ibackup.rules /etc/udev/rules.d/ && sudo udevadm control --reload-rules), then unplug the phone and plug it in again; or use --transport usbmuxd"
        ),
        OpenError::Busy(why) if cfg!(target_os = "macos") => format!(
            "cannot claim {which}: {why}. On macOS Apple's usbmuxd always holds the phone: use --transport usbmuxd (what auto picks there)"
        ),
        OpenError::Busy(why) => format!(
            "cannot claim {which}: {why}. Another program holds it: usbmuxd (use --transport usbmuxd, or auto; or stop it first: sudo systemctl stop usbmuxd), or another ibackup run on this phone over direct USB (only one program at a time can; wait for it to finish)"
        ),
        OpenError::NoDriver(why) => format!(
            "cannot use {which}: {why}. Windows lets a program choose the phone's mux configuration only with the libusbK or libusb-win32 driver on the whole device (Zadig installs it); or install Apple Devices (or iTunes) and use --transport usbmuxd"
        ),
        OpenError::Other(e) => format!("cannot open {which}: {e}"),
    }
}

impl Transport for UsbTransport {
    fn describe(&self) -> String {
        format!("direct USB ({})", self.bus.describe())
    }

    fn cancel(&self) -> &Cancel {
        &self.cancel
    }

    fn listen(&self) -> Result<Box<dyn DeviceEvents>> {
        Ok(Box::new(Events {
            watch: self.bus.watch()?,
            shown: HashMap::new(),
            queued: Vec::new(),
        }))
    }

    fn devices(&self) -> Result<Vec<DeviceRecord>> {
        Ok(self.phones()?.iter().map(|(d, _)| record_of(d)).collect())
    }

    fn connect(&self, device_id: u32, port: u16) -> Result<Box<dyn Stream>> {
        let link = self.link(device_id)?;
        let mut s = link
            .connect(port, ANSWER_LIMIT, &self.cancel)
            .map_err(|e| match e.kind() {
                io::ErrorKind::ConnectionRefused => ProtoError::Mux {
                    request: format!("Connect to port {port}"),
                    result: MuxResult::ConnectionRefused as u64,
                },
                _ => ProtoError::Io(e),
            })?;
        s.set_timeouts(self.stall_timeout, self.stall_timeout);
        Ok(Box::new(s))
    }

    fn buid(&self) -> Result<String> {
        self.records.buid()
    }

    fn read_pair_record(&self, udid: &str) -> Result<Option<PairRecord>> {
        self.records.read(udid)
    }

    fn save_pair_record(&self, udid: &str, _device_id: u32, rec: &PairRecord) -> Result<()> {
        self.records.save(udid, rec)
    }

    fn delete_pair_record(&self, udid: &str) -> Result<()> {
        self.records.delete(udid)
    }
}

/// Plug events from a bus watch: each list compared with the last.
struct Events {
    watch: Box<dyn BusWatch>,
    shown: HashMap<u32, DeviceRecord>,
    queued: Vec<MuxEvent>,
}

impl DeviceEvents for Events {
    fn next_event(&mut self) -> Result<MuxEvent> {
        while self.queued.is_empty() {
            let now: HashMap<u32, DeviceRecord> = phones(self.watch.next()?)
                .iter()
                .map(|(d, _)| (d.location, record_of(d)))
                .collect();
            for (id, _) in self.shown.iter().filter(|(id, _)| !now.contains_key(id)) {
                self.queued.push(MuxEvent::Detached(*id));
            }
            for (id, r) in now.iter().filter(|(id, _)| !self.shown.contains_key(id)) {
                let _ = id;
                self.queued.push(MuxEvent::Attached(r.clone()));
            }
            self.shown = now;
            self.queued.reverse();
        }
        Ok(self.queued.pop().expect("not empty"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ibackup_proto::usbemu::iphone_descriptors;

    #[test]
    fn only_apple_phones_with_a_mux_interface_are_listed() {
        let phone = iphone_descriptors(0x0001_0002, "00008110001A2B3C4D5E6F70", 512);
        let mut keyboard = phone.clone();
        keyboard.vendor = 0x046d;
        keyboard.location = 3;
        let mut recovery = phone.clone();
        recovery.product = 0x1281;
        recovery.location = 4;
        let mut no_mux = phone.clone();
        no_mux.location = 5;
        no_mux.configs.truncate(2);
        let found = phones(vec![keyboard, phone.clone(), recovery, no_mux]);
        assert_eq!(found.len(), 1);
        let r = record_of(&found[0].0);
        assert_eq!(r.udid, "00008110-001A2B3C4D5E6F70");
        assert_eq!(r.device_id, 0x0001_0002);
        assert_eq!(found[0].1.config, 4);
    }

    /// udev's glob: `*`, `?` and `[...]` classes with ranges.
    fn glob(pat: &[u8], s: &[u8]) -> bool {
        match (pat.first(), s.first()) {
            (None, None) => true,
            (Some(b'*'), _) => glob(&pat[1..], s) || (!s.is_empty() && glob(pat, &s[1..])),
            (Some(b'['), Some(c)) => {
                let end = pat.iter().position(|b| *b == b']').expect("closed class");
                let class = &pat[1..end];
                let mut hit = false;
                let mut i = 0;
                while i < class.len() {
                    if i + 2 < class.len() && class[i + 1] == b'-' {
                        hit |= (class[i]..=class[i + 2]).contains(c);
                        i += 3;
                    } else {
                        hit |= class[i] == *c;
                        i += 1;
                    }
                }
                hit && glob(&pat[end + 1..], &s[1..])
            }
            (Some(p), Some(c)) => (*p == b'?' || p == c) && glob(&pat[1..], &s[1..]),
            _ => false,
        }
    }

    #[test]
    fn the_shipped_udev_rule_matches_every_phone_and_nothing_else() {
        let rules = include_str!("../../../../dist/udev/69-ibackup.rules");
        let rule = rules
            .lines()
            .find(|l| !l.starts_with('#') && l.contains("idProduct"))
            .expect("a rule");
        let attr = |name: &str| {
            let start = rule.find(&format!("ATTR{{{name}}}==\"")).expect(name) + name.len() + 9;
            &rule[start..start + rule[start..].find('"').unwrap()]
        };
        assert_eq!(attr("idVendor"), format!("{APPLE_VENDOR:04x}"));
        let products = attr("idProduct").as_bytes().to_vec();
        for pid in 0u16..=0xffff {
            let hex = format!("{pid:04x}");
            assert_eq!(
                glob(&products, hex.as_bytes()),
                PRODUCTS.contains(&pid),
                "product {hex}"
            );
        }
        assert!(rule.contains("TAG+=\"uaccess\""));
    }

    #[test]
    fn each_way_of_failing_to_open_says_what_to_do() {
        let d = iphone_descriptors(1, "00008110001A2B3C4D5E6F70", 512);
        let p = explain(&d, OpenError::Permission("permission denied".into()));
        assert!(
            p.contains("udev") && p.contains("--transport usbmuxd"),
            "{p}"
        );
        let b = explain(&d, OpenError::Busy("busy".into()));
        assert!(b.contains("usbmuxd"), "{b}");
        let w = explain(&d, OpenError::NoDriver("no driver".into()));
        assert!(w.contains("libusbK") && w.contains("Apple Devices"), "{w}");
        assert!(p.contains("00008110-001A2B3C4D5E6F70"), "{p}");
    }
}
