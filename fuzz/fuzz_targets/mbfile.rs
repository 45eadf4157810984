//! An MBFile record (an NSKeyedArchiver plist from a Manifest.db row of a
//! backup folder, damaged or crafted): decoded or refused, never a panic;
//! a decoded record archives to bytes that decode to the same record.
#![no_main]
use ibackup_store::mbfile::MbFile;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(f) = MbFile::from_archive(data) {
        let again = MbFile::from_archive(&f.to_archive()).expect("an archived record decodes");
        assert_eq!(again, f);
    }
});
