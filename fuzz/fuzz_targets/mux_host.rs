//! The host's usbmux state machine fed what a hostile or broken device
//! might send over the USB pipe: it may refuse the bytes, never panic or
//! grow without bound.
#![no_main]
use ibackup_proto::mux::{Event, Mux, Role};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut m = Mux::new(Role::Host, 512);
    // The first bytes answer VERSION; then the host opens a connection and
    // the rest arrives in pieces whose sizes the input chooses.
    let (split, rest) = data
        .split_first()
        .map_or((1, &[][..]), |(s, r)| (*s as usize + 1, r));
    let mut connected = false;
    for chunk in rest.chunks(split) {
        if m.handle_input(chunk).is_err() {
            return;
        }
        while let Some(e) = m.poll_event() {
            if let Event::Readable(id) = e {
                let mut buf = [0u8; 4096];
                let _ = m.recv(id, &mut buf);
                let _ = m.send(id, &buf[..16]);
            }
        }
        if m.is_ready() && !connected {
            let _ = m.connect(62078);
            connected = true;
        }
        while m.poll_transmit().is_some() {}
    }
});
