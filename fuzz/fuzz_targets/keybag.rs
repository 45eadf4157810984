//! Manifest.plist's BackupKeyBag (TLV bytes from a backup folder, which may
//! be damaged or crafted): parsed or refused, never a panic; a parsed
//! keybag encodes to bytes that parse to the same values.
#![no_main]
use ibackup_store::crypto::Keybag;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(kb) = Keybag::parse(data) {
        let again = Keybag::parse(&kb.encode()).expect("an encoded keybag parses");
        assert_eq!(again.iterations, kb.iterations);
        assert_eq!(again.salt, kb.salt);
    }
});
