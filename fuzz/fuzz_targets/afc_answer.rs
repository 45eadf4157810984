//! An AFC packet and the answers in it, as the host reads them from a
//! hostile phone (`ibackup photos`, the sync lock): lengths are checked
//! before anything is allocated, a packet that decodes encodes back to the
//! same bytes, and file-info and listing answers decode without panicking.
#![no_main]
use ibackup_proto::afc::{decode_kv, decode_names, AfcPacket};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut r = data;
    if let Ok(p) = AfcPacket::read(&mut r) {
        let used = data.len() - r.len();
        assert_eq!(p.encode(), &data[..used]);
        let _ = decode_kv(&p.data);
        for n in decode_names(&p.data) {
            assert!(!n.is_empty() && !n.contains(&0));
        }
    }
    let _ = decode_kv(data);
});
