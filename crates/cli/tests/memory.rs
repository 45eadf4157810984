//! Memory stays bounded whatever the backup's size: files stream through a
//! fixed buffer. Alone in its test binary, so the peak RSS of this
//! process's children is ibackup's. (The `large` profile, 20 GB, is
//! measured by examples/bench.sh: docs/benchmarks.md.) Unix only: it reads
//! the children's peak RSS with getrusage.
#![cfg(unix)]

use std::process::Command;

use ibackup_sim::populate::Profile;
use ibackup_suite::*;

fn children_peak_rss_mb() -> f64 {
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: getrusage writes into the struct we own.
    assert_eq!(unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut u) }, 0);
    u.ru_maxrss as f64 / 1024.0
}

#[test]
fn a_256_mb_file_does_not_raise_peak_memory_past_64_mb() {
    let host = SimHost::start(&[(Profile::Small, 201)], |_, _| {});
    let a = &host.udids[0];
    let big = host.devices[0].join("fs/CameraRollDomain/Media/DCIM/100APPLE/IMG_9999.MOV");
    let chunk = vec![0x5au8; 1 << 20];
    let mut f = std::fs::File::create(&big).unwrap();
    for _ in 0..256 {
        std::io::Write::write_all(&mut f, &chunk).unwrap();
    }
    drop(f);
    let dir = host.path("backups");
    let o = run({
        let mut c = Command::new(env!("CARGO_BIN_EXE_ibackup"));
        host.point(&mut c);
        c.args(["-u", a, "full"]).arg(&dir);
        c
    });
    assert_ok(&o, "backup with a 256 MB file");
    let peak = children_peak_rss_mb();
    eprintln!("ibackup peak RSS: {peak:.1} MB");
    assert!(peak < 64.0, "peak RSS {peak:.1} MB");
    assert_eq!(
        std::fs::metadata(dir.join(a)).map(|m| m.is_dir()).ok(),
        Some(true)
    );
}
