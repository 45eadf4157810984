//! The emulated USB bus between ibackup and the simulated iPhone
//! (`ibackup-sim serve --usb-emulated ADDR`, `IBACKUP_USB_EMULATOR=ADDR`):
//! what a USB host controller gives a program — device descriptors, plug
//! events, and bulk transfers on a claimed interface — carried as frames
//! over a TCP connection, so the direct-USB transport can be tested with
//! no phone and no root.
//!
//! The bus keeps USB's framing rules (shared/docs/direct-usb-facts.md §2):
//! an IN transfer is asked for with a size that is a whole number of max
//! packets, and completes when that many bytes came or a short packet
//! (including a zero-length one) ended a device transfer; an OUT transfer
//! whose length is a whole number of max packets does not end for the
//! device until a zero-length transfer follows. A side that breaks these
//! rules hangs here as it would on a cable.
//!
//! A frame is a big-endian u32 length (of what follows), a kind byte and
//! the kind's body. Descriptors travel as an XML plist.

use plist::{Dictionary, Value};

use crate::error::{ProtoError, Result};
use crate::plistx::DictExt;

/// The largest frame either side accepts: an IN or OUT transfer of 1 MiB
/// and its header.
pub const MAX_FRAME: usize = (1 << 20) + 16;

/// One bulk endpoint of an interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointDesc {
    /// With bit 0x80 set for IN.
    pub address: u8,
    pub max_packet: u16,
    /// Bulk (the mux's kind); anything else is interrupt or isochronous.
    pub bulk: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InterfaceDesc {
    pub number: u8,
    pub class: u8,
    pub subclass: u8,
    pub protocol: u8,
    pub endpoints: Vec<EndpointDesc>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigDesc {
    /// bConfigurationValue (1 and up).
    pub value: u8,
    pub interfaces: Vec<InterfaceDesc>,
}

/// A device on the bus, as its descriptors describe it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceDesc {
    /// `(bus << 16) | address`, as usbmuxd numbers devices.
    pub location: u32,
    pub vendor: u16,
    pub product: u16,
    /// The iSerialNumber string.
    pub serial: String,
    /// Link speed in Mbit/s (480 USB 2, 5000 USB 3).
    pub speed_mbps: u32,
    pub configs: Vec<ConfigDesc>,
}

/// Why opening a device failed, as the operating system says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpenRefusal {
    /// The device node is not ours to open (no udev rule).
    Permission,
    /// Another program (usbmuxd) has claimed the interface.
    Busy,
    /// The device is gone.
    NoDevice,
}

impl OpenRefusal {
    fn code(self) -> u8 {
        match self {
            OpenRefusal::Permission => 1,
            OpenRefusal::Busy => 2,
            OpenRefusal::NoDevice => 3,
        }
    }
    fn from_code(c: u8) -> Result<Self> {
        Ok(match c {
            1 => OpenRefusal::Permission,
            2 => OpenRefusal::Busy,
            3 => OpenRefusal::NoDevice,
            n => return Err(ProtoError::protocol(format!("unknown open refusal {n}"))),
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// Host: the devices on the bus now.
    List,
    /// Host: the devices now and after every plug or unplug, until the
    /// connection ends.
    Watch,
    /// Host: open the device at `location`, set `config`, claim
    /// `interface`; the connection then carries that interface's pipe.
    Open {
        location: u32,
        config: u8,
        interface: u8,
    },
    /// Host: an IN transfer of `len` bytes is queued.
    In { len: u32 },
    /// Host: an OUT transfer (empty: a zero-length packet).
    Out(Vec<u8>),
    /// Bus: the devices (answer to List, and each Watch update).
    Devices(Vec<DeviceDesc>),
    /// Bus: the interface is claimed; transfers may flow.
    Opened,
    /// Bus: the open failed.
    Refused(OpenRefusal, String),
    /// Bus: the oldest queued IN transfer completed with these bytes.
    InDone(Vec<u8>),
}

const K_LIST: u8 = 1;
const K_WATCH: u8 = 2;
const K_OPEN: u8 = 3;
const K_IN: u8 = 4;
const K_OUT: u8 = 5;
const K_DEVICES: u8 = 10;
const K_OPENED: u8 = 11;
const K_REFUSED: u8 = 12;
const K_IN_DONE: u8 = 13;

impl Frame {
    pub fn encode(&self) -> Vec<u8> {
        let (kind, body): (u8, Vec<u8>) = match self {
            Frame::List => (K_LIST, Vec::new()),
            Frame::Watch => (K_WATCH, Vec::new()),
            Frame::Open {
                location,
                config,
                interface,
            } => {
                let mut b = location.to_be_bytes().to_vec();
                b.extend([*config, *interface]);
                (K_OPEN, b)
            }
            Frame::In { len } => (K_IN, len.to_be_bytes().to_vec()),
            Frame::Out(bytes) => (K_OUT, bytes.clone()),
            Frame::Devices(d) => (K_DEVICES, devices_to_xml(d)),
            Frame::Opened => (K_OPENED, Vec::new()),
            Frame::Refused(why, text) => {
                let mut b = vec![why.code()];
                b.extend_from_slice(text.as_bytes());
                (K_REFUSED, b)
            }
            Frame::InDone(bytes) => (K_IN_DONE, bytes.clone()),
        };
        let mut out = Vec::with_capacity(5 + body.len());
        out.extend_from_slice(&(body.len() as u32 + 1).to_be_bytes());
        out.push(kind);
        out.extend_from_slice(&body);
        out
    }

    /// The first five bytes of an `Out` (host) or `InDone` (bus) frame
    /// carrying `len` bytes, for a writer that sends the bytes from where
    /// they lie rather than copying them into a frame.
    pub fn data_header(in_done: bool, len: usize) -> [u8; 5] {
        let mut h = [0u8; 5];
        h[..4].copy_from_slice(&(len as u32 + 1).to_be_bytes());
        h[4] = if in_done { K_IN_DONE } else { K_OUT };
        h
    }

    /// The frame's length from its first four bytes: how many more to read.
    pub fn body_len(head: [u8; 4]) -> Result<usize> {
        let n = u32::from_be_bytes(head) as usize;
        if n == 0 || n > MAX_FRAME {
            return Err(ProtoError::TooLarge {
                len: n as u64,
                max: MAX_FRAME as u64,
            });
        }
        Ok(n)
    }

    /// Decode what follows the length: the kind byte and the body.
    pub fn decode(bytes: &[u8]) -> Result<Frame> {
        let (&kind, body) = bytes
            .split_first()
            .ok_or_else(|| ProtoError::protocol("an empty emulator frame"))?;
        let exact = |n: usize| {
            if body.len() == n {
                Ok(())
            } else {
                Err(ProtoError::protocol(format!(
                    "emulator frame {kind} of {} bytes, not {n}",
                    body.len()
                )))
            }
        };
        Ok(match kind {
            K_LIST => {
                exact(0)?;
                Frame::List
            }
            K_WATCH => {
                exact(0)?;
                Frame::Watch
            }
            K_OPEN => {
                exact(6)?;
                Frame::Open {
                    location: u32::from_be_bytes(body[..4].try_into().expect("4 bytes")),
                    config: body[4],
                    interface: body[5],
                }
            }
            K_IN => {
                exact(4)?;
                Frame::In {
                    len: u32::from_be_bytes(body.try_into().expect("4 bytes")),
                }
            }
            K_OUT => Frame::Out(body.to_vec()),
            K_DEVICES => Frame::Devices(devices_from_xml(body)?),
            K_OPENED => {
                exact(0)?;
                Frame::Opened
            }
            K_REFUSED => {
                let (&code, text) = body
                    .split_first()
                    .ok_or_else(|| ProtoError::protocol("a refusal without its reason"))?;
                Frame::Refused(
                    OpenRefusal::from_code(code)?,
                    String::from_utf8_lossy(text).into_owned(),
                )
            }
            K_IN_DONE => Frame::InDone(body.to_vec()),
            n => return Err(ProtoError::protocol(format!("unknown emulator frame {n}"))),
        })
    }
}

fn devices_to_xml(devices: &[DeviceDesc]) -> Vec<u8> {
    let list = devices
        .iter()
        .map(|d| {
            let mut m = Dictionary::new();
            m.insert("Location".into(), Value::from(d.location as u64));
            m.insert("Vendor".into(), Value::from(d.vendor as u64));
            m.insert("Product".into(), Value::from(d.product as u64));
            m.insert("Serial".into(), Value::from(d.serial.clone()));
            m.insert("Speed".into(), Value::from(d.speed_mbps as u64));
            let configs = d
                .configs
                .iter()
                .map(|c| {
                    let mut cm = Dictionary::new();
                    cm.insert("Value".into(), Value::from(c.value as u64));
                    let ifs = c
                        .interfaces
                        .iter()
                        .map(|i| {
                            let mut im = Dictionary::new();
                            im.insert("Number".into(), Value::from(i.number as u64));
                            im.insert("Class".into(), Value::from(i.class as u64));
                            im.insert("SubClass".into(), Value::from(i.subclass as u64));
                            im.insert("Protocol".into(), Value::from(i.protocol as u64));
                            let eps = i
                                .endpoints
                                .iter()
                                .map(|e| {
                                    let mut em = Dictionary::new();
                                    em.insert("Address".into(), Value::from(e.address as u64));
                                    em.insert("MaxPacket".into(), Value::from(e.max_packet as u64));
                                    em.insert("Bulk".into(), Value::Boolean(e.bulk));
                                    Value::Dictionary(em)
                                })
                                .collect();
                            im.insert("Endpoints".into(), Value::Array(eps));
                            Value::Dictionary(im)
                        })
                        .collect();
                    cm.insert("Interfaces".into(), Value::Array(ifs));
                    Value::Dictionary(cm)
                })
                .collect();
            m.insert("Configurations".into(), Value::Array(configs));
            Value::Dictionary(m)
        })
        .collect();
    crate::plistx::to_xml(&Value::Array(list))
}

fn num<T: TryFrom<u64>>(d: &Dictionary, key: &str) -> Result<T> {
    d.u64_of(key)
        .and_then(|n| T::try_from(n).ok())
        .ok_or_else(|| ProtoError::protocol(format!("a descriptor without a valid {key}")))
}

fn dicts<'a>(d: &'a Dictionary, key: &str) -> Result<Vec<&'a Dictionary>> {
    match d.get(key) {
        Some(Value::Array(a)) => a
            .iter()
            .map(|v| {
                v.as_dictionary()
                    .ok_or_else(|| ProtoError::protocol(format!("{key} holds a non-dictionary")))
            })
            .collect(),
        _ => Err(ProtoError::protocol(format!("a descriptor without {key}"))),
    }
}

fn devices_from_xml(bytes: &[u8]) -> Result<Vec<DeviceDesc>> {
    let v: Value = plist::from_bytes(bytes)?;
    let Value::Array(list) = v else {
        return Err(ProtoError::protocol("a device list that is not an array"));
    };
    list.iter()
        .map(|v| {
            let d = v
                .as_dictionary()
                .ok_or_else(|| ProtoError::protocol("a device that is not a dictionary"))?;
            let configs = dicts(d, "Configurations")?
                .into_iter()
                .map(|c| {
                    let interfaces = dicts(c, "Interfaces")?
                        .into_iter()
                        .map(|i| {
                            let endpoints = dicts(i, "Endpoints")?
                                .into_iter()
                                .map(|e| {
                                    Ok(EndpointDesc {
                                        address: num(e, "Address")?,
                                        max_packet: num(e, "MaxPacket")?,
                                        bulk: e.bool_of("Bulk").unwrap_or(false),
                                    })
                                })
                                .collect::<Result<_>>()?;
                            Ok(InterfaceDesc {
                                number: num(i, "Number")?,
                                class: num(i, "Class")?,
                                subclass: num(i, "SubClass")?,
                                protocol: num(i, "Protocol")?,
                                endpoints,
                            })
                        })
                        .collect::<Result<_>>()?;
                    Ok(ConfigDesc {
                        value: num(c, "Value")?,
                        interfaces,
                    })
                })
                .collect::<Result<_>>()?;
            Ok(DeviceDesc {
                location: num(d, "Location")?,
                vendor: num(d, "Vendor")?,
                product: num(d, "Product")?,
                serial: d
                    .str_of("Serial")
                    .ok_or_else(|| ProtoError::protocol("a device without a serial"))?
                    .to_string(),
                speed_mbps: num(d, "Speed")?,
                configs,
            })
        })
        .collect()
}

/// The mux interface of a device, as a host picks it: the
/// highest-numbered configuration holding an interface of class 0xFF,
/// subclass 0xFE, protocol 2 with exactly one bulk IN and one bulk OUT
/// endpoint (all three must match: usbmuxd's OR test is a bug).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MuxInterface {
    pub config: u8,
    pub interface: u8,
    pub ep_in: u8,
    pub ep_out: u8,
    /// The OUT endpoint's max packet size (64 when it says 0).
    pub max_packet: usize,
}

pub fn find_mux_interface(configs: &[ConfigDesc]) -> Option<MuxInterface> {
    let mut by_value: Vec<&ConfigDesc> = configs.iter().collect();
    by_value.sort_by_key(|c| std::cmp::Reverse(c.value));
    by_value.into_iter().find_map(|c| {
        c.interfaces.iter().find_map(|i| {
            if (i.class, i.subclass, i.protocol) != (0xff, 0xfe, 2) || i.endpoints.len() != 2 {
                return None;
            }
            let ep_in = i
                .endpoints
                .iter()
                .find(|e| e.bulk && e.address & 0x80 != 0)?;
            let ep_out = i
                .endpoints
                .iter()
                .find(|e| e.bulk && e.address & 0x80 == 0)?;
            Some(MuxInterface {
                config: c.value,
                interface: i.number,
                ep_in: ep_in.address,
                ep_out: ep_out.address,
                max_packet: if ep_out.max_packet == 0 {
                    64
                } else {
                    ep_out.max_packet as usize
                },
            })
        })
    })
}

/// Apple's vendor ID, and the product IDs of iPhones, iPads and iPods in
/// their normal mode.
pub const APPLE_VENDOR: u16 = 0x05ac;
pub const PRODUCTS: std::ops::RangeInclusive<u16> = 0x1290..=0x12af;

/// The UDID a device's serial string stands for: a 24-character serial
/// (devices since 2018) gets a hyphen after its 8th character.
pub fn udid_from_serial(serial: &str) -> String {
    let s = serial.trim();
    if s.len() == 24 && s.is_ascii() {
        format!("{}-{}", &s[..8], &s[8..])
    } else {
        s.to_string()
    }
}

/// The serial string a device with `udid` shows (the reverse).
pub fn serial_from_udid(udid: &str) -> String {
    if udid.len() == 25 && udid.as_bytes()[8] == b'-' {
        udid.replacen('-', "", 1)
    } else {
        udid.to_string()
    }
}

/// The descriptors of an iPhone in its initial mode: four configurations
/// (1: PTP, 2: audio/iAP, 3: PTP + mux, 4: PTP + mux + tethering, as
/// usbmuxd's logs show them), the mux interface in the highest,
/// interface 1 with endpoints 0x04 (OUT) and 0x85 (IN).
pub fn iphone_descriptors(location: u32, serial: &str, max_packet: u16) -> DeviceDesc {
    let ptp = InterfaceDesc {
        number: 0,
        class: 6,
        subclass: 1,
        protocol: 1,
        endpoints: vec![
            EndpointDesc {
                address: 0x81,
                max_packet,
                bulk: true,
            },
            EndpointDesc {
                address: 0x02,
                max_packet,
                bulk: true,
            },
            EndpointDesc {
                address: 0x83,
                max_packet: 64,
                bulk: false,
            },
        ],
    };
    let mux = InterfaceDesc {
        number: 1,
        class: 0xff,
        subclass: 0xfe,
        protocol: 2,
        endpoints: vec![
            EndpointDesc {
                address: 0x04,
                max_packet,
                bulk: true,
            },
            EndpointDesc {
                address: 0x85,
                max_packet,
                bulk: true,
            },
        ],
    };
    let tether = InterfaceDesc {
        number: 2,
        class: 0xff,
        subclass: 0xfd,
        protocol: 1,
        endpoints: vec![
            EndpointDesc {
                address: 0x06,
                max_packet,
                bulk: true,
            },
            EndpointDesc {
                address: 0x87,
                max_packet,
                bulk: true,
            },
        ],
    };
    let audio = InterfaceDesc {
        number: 0,
        class: 1,
        subclass: 1,
        protocol: 0,
        endpoints: Vec::new(),
    };
    DeviceDesc {
        location,
        vendor: APPLE_VENDOR,
        product: 0x12a8,
        serial: serial.to_string(),
        speed_mbps: if max_packet >= 1024 { 5000 } else { 480 },
        configs: vec![
            ConfigDesc {
                value: 1,
                interfaces: vec![ptp.clone()],
            },
            ConfigDesc {
                value: 2,
                interfaces: vec![audio],
            },
            ConfigDesc {
                value: 3,
                interfaces: vec![ptp.clone(), mux.clone()],
            },
            ConfigDesc {
                value: 4,
                interfaces: vec![ptp, mux, tether],
            },
        ],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_frame_survives_a_round_trip() {
        let frames = vec![
            Frame::List,
            Frame::Watch,
            Frame::Open {
                location: 0x0001_0004,
                config: 4,
                interface: 1,
            },
            Frame::In { len: 65_536 },
            Frame::Out(vec![1, 2, 3]),
            Frame::Out(Vec::new()),
            Frame::Devices(vec![iphone_descriptors(7, "00008110001A2B3C4D5E6F70", 512)]),
            Frame::Opened,
            Frame::Refused(OpenRefusal::Busy, "claimed by usbmuxd".into()),
            Frame::InDone(vec![9; 1000]),
        ];
        let mut out = Frame::data_header(false, 3).to_vec();
        out.extend([1, 2, 3]);
        assert_eq!(out, Frame::Out(vec![1, 2, 3]).encode());
        let mut done = Frame::data_header(true, 2).to_vec();
        done.extend([7, 8]);
        assert_eq!(done, Frame::InDone(vec![7, 8]).encode());
        for f in frames {
            let bytes = f.encode();
            let n = Frame::body_len(bytes[..4].try_into().unwrap()).unwrap();
            assert_eq!(n, bytes.len() - 4);
            assert_eq!(Frame::decode(&bytes[4..]).unwrap(), f);
        }
    }

    #[test]
    fn hostile_frames_are_errors_not_panics() {
        assert!(Frame::body_len([0, 0, 0, 0]).is_err());
        assert!(Frame::body_len([0xff, 0xff, 0xff, 0xff]).is_err());
        for bad in [
            &[][..],
            &[K_IN, 1, 2][..],
            &[K_OPEN][..],
            &[99][..],
            &[K_REFUSED][..],
        ] {
            assert!(Frame::decode(bad).is_err(), "{bad:?}");
        }
        assert!(Frame::decode(&[K_DEVICES, b'<', b'x']).is_err());
    }

    #[test]
    fn the_mux_interface_is_the_highest_configuration_that_has_it() {
        let d = iphone_descriptors(1, "x", 512);
        let m = find_mux_interface(&d.configs).unwrap();
        assert_eq!(
            m,
            MuxInterface {
                config: 4,
                interface: 1,
                ep_in: 0x85,
                ep_out: 0x04,
                max_packet: 512
            }
        );
        // Config 5 without the mux (a CDC-NCM mode) is passed over.
        let mut five = d.configs.clone();
        five.push(ConfigDesc {
            value: 5,
            interfaces: vec![InterfaceDesc {
                number: 0,
                class: 2,
                subclass: 0x0d,
                protocol: 0,
                endpoints: Vec::new(),
            }],
        });
        assert_eq!(find_mux_interface(&five).unwrap().config, 4);
        // All three of class, subclass and protocol must match (usbmuxd's
        // OR test would take the tethering interface 0xff/0xfd/1).
        let only_tether: Vec<ConfigDesc> = vec![ConfigDesc {
            value: 4,
            interfaces: vec![d.configs[3].interfaces[2].clone()],
        }];
        assert_eq!(find_mux_interface(&only_tether), None);
        // Endpoints in either order; a third endpoint disqualifies it.
        let mut swapped = d.configs[3].interfaces[1].clone();
        swapped.endpoints.reverse();
        let c = vec![ConfigDesc {
            value: 3,
            interfaces: vec![swapped.clone()],
        }];
        assert_eq!(find_mux_interface(&c).unwrap().ep_in, 0x85);
        swapped.endpoints.push(EndpointDesc {
            address: 0x89,
            max_packet: 512,
            bulk: true,
        });
        let c = vec![ConfigDesc {
            value: 3,
            interfaces: vec![swapped],
        }];
        assert_eq!(find_mux_interface(&c), None);
    }

    #[test]
    fn a_new_style_serial_gets_its_hyphen() {
        assert_eq!(
            udid_from_serial("00008110001A2B3C4D5E6F70"),
            "00008110-001A2B3C4D5E6F70"
        );
        let old = "0123456789abcdef0123456789abcdef01234567";
        assert_eq!(udid_from_serial(old), old);
        assert_eq!(
            serial_from_udid("00008110-001A2B3C4D5E6F70"),
            "00008110001A2B3C4D5E6F70"
        );
        assert_eq!(serial_from_udid(old), old);
    }
}
