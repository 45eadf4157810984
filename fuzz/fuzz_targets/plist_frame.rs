//! A length-prefixed plist message from the phone (lockdownd, services,
//! DeviceLink): the declared length is checked before anything is
//! allocated; a frame that reads decodes as a plist or is refused.
#![no_main]
use ibackup_proto::frame::{read_frame, read_plist};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = read_frame(&mut &data[..]);
    let _ = read_plist(&mut &data[..]);
});
