//! A frame of the emulated USB bus, as either end reads it from a hostile
//! or broken peer: its length is checked before anything is allocated, and
//! a frame that decodes encodes back to the same bytes (descriptors
//! travel as a plist, so only their values, not their bytes, round-trip).
#![no_main]
use ibackup_proto::usbemu::{find_mux_interface, Frame};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if data.len() >= 4 {
        let _ = Frame::body_len(data[..4].try_into().unwrap());
    }
    if let Ok(f) = Frame::decode(data) {
        let bytes = f.encode();
        let again = Frame::decode(&bytes[4..]).expect("an encoded frame decodes");
        assert_eq!(again, f);
        if let Frame::Devices(list) = &f {
            for d in list {
                let _ = find_mux_interface(&d.configs);
            }
        }
    }
});
