//! A message's `attributedBody` from a backup's sms.db (typedstream bytes
//! a phone, or whoever made the backup, wrote): the text is found or not,
//! never a panic or an allocation sized by the input's length fields.
#![no_main]
use ibackup_export::decode_attributed_body;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Some(t) = decode_attributed_body(data) {
        assert!(t.len() <= data.len());
    }
});
