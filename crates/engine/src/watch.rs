//! `ibackup watch`: stay running, hear devices come and go (usbmuxd
//! `Listen`), and back up each paired device when it appears and its last
//! successful backup is older than the interval. Survives devices coming
//! and going and usbmuxd restarting (it reconnects).

use std::collections::HashMap;
use std::path::Path;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use ibackup_proto::usbmux::{DeviceRecord, MuxEvent};
use ibackup_transport::Transport;

use crate::backup::{self, Events, Options, Outcome};
use crate::error::EngineError;
use crate::snapshots::{self, Keep};

#[derive(Debug, Clone)]
pub struct WatchOptions {
    /// Back up a device whose last successful backup is older than this.
    pub every: Duration,
    /// Retention applied after each successful backup (nothing when empty).
    pub keep: Keep,
    /// Also back up devices usbmuxd sees over Wi-Fi.
    pub network: bool,
    /// How often attached devices are looked at again without an event.
    pub recheck: Duration,
    /// How long after a failed backup the same device is tried again
    /// (unplugging and plugging it in tries at once).
    pub retry_after: Duration,
}

/// What the watcher tells its caller.
#[derive(Debug)]
pub enum Note {
    Listening,
    UsbmuxdLost(String),
    Attached(String),
    Detached(String),
    NotPaired(String),
    /// The last backup is recent enough: (device, its age).
    Fresh(String, Duration),
    Starting(String),
    Done(Box<Outcome>),
    Failed(String, EngineError),
    Pruned(String, Vec<String>),
    /// The backup worked; removing old snapshots after it did not.
    PruneFailed(String, EngineError),
}

/// Seconds since the last successful backup of `udid` in `root`.
pub fn age_of_last_backup(root: &Path, udid: &str) -> Option<Duration> {
    let date = snapshots::newest_date(root, udid)?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .ok()?
        .as_secs() as i64;
    Some(Duration::from_secs((now - date).max(0) as u64))
}

/// Is a backup of this device due? (`None`: no backup yet.)
pub fn due(age: Option<Duration>, every: Duration) -> bool {
    age.is_none_or(|a| a >= every)
}

enum Heard {
    Event(MuxEvent),
    Lost(String),
}

/// Run until a stop is asked for (the transport's [`Cancel`](ibackup_transport::Cancel)): a backup under way then
/// ends as an interrupted one, and this returns.
pub fn run(
    mux: &dyn Transport,
    root: &Path,
    opts: &WatchOptions,
    options_for: &dyn Fn(&str) -> Option<Options>,
    note: &mut dyn FnMut(Note),
    events: &mut dyn Events,
) {
    let mut backoff = Duration::from_secs(1);
    loop {
        let listener = match mux.listen() {
            Ok(l) => l,
            Err(_) if mux.cancel().requested() => return,
            Err(e) => {
                note(Note::UsbmuxdLost(e.to_string()));
                mux.cancel().pause(backoff);
                backoff = (backoff * 2).min(Duration::from_secs(30));
                continue;
            }
        };
        backoff = Duration::from_secs(1);
        note(Note::Listening);
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut l = listener;
            loop {
                match l.next_event() {
                    Ok(e) => {
                        if tx.send(Heard::Event(e)).is_err() {
                            return;
                        }
                    }
                    Err(e) => {
                        let _ = tx.send(Heard::Lost(e.to_string()));
                        return;
                    }
                }
            }
        });
        let mut attached: HashMap<u32, DeviceRecord> = HashMap::new();
        let mut w = Watcher {
            mux,
            root,
            opts,
            options_for,
            failed_at: HashMap::new(),
        };
        loop {
            if mux.cancel().requested() {
                return;
            }
            match rx.recv_timeout(opts.recheck) {
                Ok(Heard::Event(MuxEvent::Attached(d))) => {
                    note(Note::Attached(d.udid.clone()));
                    // A re-plug is a reason to try a failed device again.
                    w.failed_at.remove(&d.udid);
                    attached.insert(d.device_id, d.clone());
                    w.consider(&d, true, note, events);
                }
                Ok(Heard::Event(MuxEvent::Detached(id))) => {
                    if let Some(d) = attached.remove(&id) {
                        note(Note::Detached(d.udid));
                    }
                }
                Ok(Heard::Event(MuxEvent::Other(_))) => {}
                // The stop hung the listener up: not news.
                Ok(Heard::Lost(_)) | Err(mpsc::RecvTimeoutError::Disconnected)
                    if mux.cancel().requested() =>
                {
                    return
                }
                Ok(Heard::Lost(why)) => {
                    note(Note::UsbmuxdLost(why));
                    break;
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    note(Note::UsbmuxdLost("the listener stopped".into()));
                    break;
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    let now: Vec<DeviceRecord> = attached.values().cloned().collect();
                    for d in now {
                        // Quietly: a fresh device is not news every minute.
                        w.consider(&d, false, note, events);
                    }
                }
            }
        }
        mux.cancel().pause(backoff);
    }
}

/// What the watcher knows between events.
struct Watcher<'a> {
    mux: &'a dyn Transport,
    root: &'a Path,
    opts: &'a WatchOptions,
    options_for: &'a dyn Fn(&str) -> Option<Options>,
    /// When each device's last backup failed.
    failed_at: HashMap<String, Instant>,
}

impl Watcher<'_> {
    /// Back up `d` if it is paired, allowed, and due.
    fn consider(
        &mut self,
        d: &DeviceRecord,
        say_fresh: bool,
        note: &mut dyn FnMut(Note),
        events: &mut dyn Events,
    ) {
        let (mux, root, opts, options_for) = (self.mux, self.root, self.opts, self.options_for);
        let failed_at = &mut self.failed_at;
        if d.is_network() && !opts.network {
            return;
        }
        let Some(backup_opts) = options_for(&d.udid) else {
            return;
        };
        if failed_at
            .get(&d.udid)
            .is_some_and(|t| t.elapsed() < opts.retry_after)
        {
            return;
        }
        // Only devices that already trust this computer: nobody is there to tap Trust.
        match mux.read_pair_record(&d.udid) {
            Ok(Some(_)) => {}
            _ => {
                note(Note::NotPaired(d.udid.clone()));
                failed_at.insert(d.udid.clone(), Instant::now());
                return;
            }
        }
        let age = age_of_last_backup(root, &d.udid);
        if !due(age, opts.every) {
            if say_fresh {
                note(Note::Fresh(d.udid.clone(), age.unwrap_or_default()));
            }
            return;
        }
        note(Note::Starting(d.udid.clone()));
        match backup::run(mux, d, root, &backup_opts, events) {
            Ok(o) => {
                failed_at.remove(&d.udid);
                note(Note::Done(Box::new(o)));
                if !opts.keep.is_empty() {
                    match crate::staging::BackupDir::open(root, &d.udid)
                        .and_then(|_lock| snapshots::prune(root, &d.udid, &opts.keep, false))
                    {
                        Ok(p) if !p.removed.is_empty() => {
                            note(Note::Pruned(d.udid.clone(), p.removed))
                        }
                        Ok(_) => {}
                        Err(e) => note(Note::PruneFailed(d.udid.clone(), e)),
                    }
                }
            }
            Err(e) => {
                failed_at.insert(d.udid.clone(), Instant::now());
                note(Note::Failed(
                    d.udid.clone(),
                    e.after_stop(mux.cancel(), crate::error::stopped::BACKUP),
                ));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_backup_is_due_when_none_exists_or_the_last_is_old() {
        let day = Duration::from_secs(86_400);
        assert!(due(None, day));
        assert!(!due(Some(Duration::from_secs(3600)), day));
        assert!(due(Some(day), day));
    }
}
