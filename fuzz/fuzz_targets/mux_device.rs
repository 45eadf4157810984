//! The device's usbmux state machine (the simulator's) fed what a host
//! might send: it may refuse the bytes, never panic.
#![no_main]
use ibackup_proto::mux::{Event, Mux, Role};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut m = Mux::new(Role::Device, 512);
    m.listen(62078);
    let (split, rest) = data
        .split_first()
        .map_or((1, &[][..]), |(s, r)| (*s as usize + 1, r));
    for chunk in rest.chunks(split) {
        if m.handle_input(chunk).is_err() {
            return;
        }
        while let Some(e) = m.poll_event() {
            if let Event::Readable(id) = e {
                let mut buf = [0u8; 4096];
                let n = m.recv(id, &mut buf).unwrap_or(0);
                let _ = m.send(id, &buf[..n]);
            }
        }
        while m.poll_transmit().is_some() {}
    }
});
