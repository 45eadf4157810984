//! Helpers for the end-to-end and interop tests: a simulated host with
//! devices on an ephemeral loopback port, the referee clients, and tree
//! comparisons between a device's `fs/`, a backup folder and an extraction.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use ibackup_sim::device::DeviceConfig;
use ibackup_sim::populate::{populate, Profile, ENCRYPTED_ONLY_DOMAINS};
use ibackup_sim::usbmuxd::{spawn_loopback, Mux};
use ibackup_sim::Device;
use ibackup_store::manifest_db::ManifestDb;
use ibackup_store::mbfile::{FLAG_DIRECTORY, FLAG_FILE, FLAG_SYMLINK};
use sha1::{Digest, Sha1};

/// A temporary folder of simulated devices served on 127.0.0.1.
pub struct SimHost {
    pub root: tempfile::TempDir,
    /// The simulated usbmuxd's address (`USBMUXD_SOCKET_ADDRESS`).
    pub addr: String,
    /// The same devices on the emulated USB bus (`IBACKUP_USB_EMULATOR`).
    pub usb_addr: String,
    pub devices: Vec<PathBuf>,
    pub udids: Vec<String>,
}

impl SimHost {
    /// Populate one device per spec, let `edit` adjust each `device.toml`, serve them.
    pub fn start(specs: &[(Profile, u64)], edit: impl Fn(usize, &mut DeviceConfig)) -> SimHost {
        let root = tempfile::tempdir().expect("tempdir");
        let mut devices = Vec::new();
        let mut udids = Vec::new();
        let mut opened = Vec::new();
        for (i, (profile, seed)) in specs.iter().enumerate() {
            let dir = root.path().join(format!("device{i}"));
            populate(&dir, *profile, *seed).expect("populate");
            let mut cfg = DeviceConfig::load(&dir).expect("config");
            edit(i, &mut cfg);
            cfg.save(&dir).expect("save config");
            udids.push(cfg.udid.clone());
            opened.push(Device::open(&dir, i as u32 + 1).expect("open device"));
            devices.push(dir);
        }
        let mux = Mux::new(opened).expect("mux");
        let addr = spawn_loopback(mux.clone()).expect("listen");
        let usb_addr = ibackup_sim::usb::spawn_loopback(mux).expect("listen on the USB bus");
        SimHost {
            root,
            addr,
            usb_addr,
            devices,
            udids,
        }
    }

    /// Point an `ibackup` command at this host, over the transport the
    /// run tests ([`transport_under_test`]): usbmuxd's socket, or direct
    /// USB on the emulated bus (pair records then kept in the host's
    /// temporary folder).
    pub fn point(&self, c: &mut Command) {
        c.env("USBMUXD_SOCKET_ADDRESS", &self.addr);
        c.env("IBACKUP_TRANSPORT", transport_under_test());
        c.env("IBACKUP_USB_EMULATOR", &self.usb_addr);
        c.env(
            "IBACKUP_LOCKDOWN_DIR",
            self.root.path().join("host-lockdown"),
        );
    }

    pub fn path(&self, name: &str) -> PathBuf {
        let p = self.root.path().join(name);
        std::fs::create_dir_all(&p).expect("mkdir");
        p
    }

    /// A referee command pointed at this host's usbmuxd.
    pub fn cmd(&self, tool: &Referee) -> Command {
        self.cmd_within(tool, 600)
    }

    /// The same, killed after `secs` seconds: idevicebackup2 waits forever
    /// on a connection that was cut (its `mb2_receive_filename` retries
    /// zero-length reads), so fault tests bound it.
    pub fn cmd_within(&self, tool: &Referee, secs: u32) -> Command {
        let mut c = Command::new("timeout");
        c.arg(secs.to_string()).arg(&tool.0);
        c.env("USBMUXD_SOCKET_ADDRESS", &self.addr);
        c
    }
}

/// The transport the end-to-end tests run over: `usb` in the test binary
/// `over_usb` (which runs the device suites again) or when
/// `IBACKUP_TEST_TRANSPORT=usb`, else `usbmuxd`.
pub fn transport_under_test() -> &'static str {
    match std::env::var("IBACKUP_TEST_TRANSPORT").as_deref() {
        Ok("usb") => return "usb",
        Ok("usbmuxd") => return "usbmuxd",
        _ => {}
    }
    let exe = std::env::current_exe().unwrap_or_default();
    let name = exe.file_name().unwrap_or_default().to_string_lossy();
    if name.starts_with("over_usb") {
        "usb"
    } else {
        "usbmuxd"
    }
}

/// A referee client found on this machine.
pub struct Referee(pub PathBuf);

/// Find a referee client. In CI (`CI` set) a missing referee fails the test;
/// elsewhere it is skipped with a note, so a developer without them can
/// still run the rest. A referee counts as present only when it can run: an
/// executable file, not a name that happens to be on the PATH.
pub fn referee(name: &str) -> Option<Referee> {
    let mut dirs: Vec<PathBuf> = Vec::new();
    if let Ok(v) = std::env::var("IBACKUP_REFEREE_VENV") {
        dirs.push(Path::new(&v).join("bin"));
    }
    dirs.push(PathBuf::from("/tmp/ref/bin"));
    if let Some(path) = std::env::var_os("PATH") {
        dirs.extend(std::env::split_paths(&path));
    }
    if let Some(p) = dirs.iter().map(|d| d.join(name)).find(|p| executable(p)) {
        return Some(Referee(p));
    }
    missing(&format!("referee client {name} not found"))
}

/// A Python interpreter in which `module` (a Python referee such as
/// `iphone_backup_decrypt`) imports: the referees' venv first, then the
/// system's. A `python3` without the module is no referee (a fresh machine
/// has Python but none of them).
pub fn python_referee(module: &str) -> Option<Referee> {
    let mut candidates: Vec<PathBuf> = Vec::new();
    if let Ok(v) = std::env::var("IBACKUP_REFEREE_VENV") {
        candidates.push(Path::new(&v).join("bin/python3"));
    }
    candidates.push(PathBuf::from("/tmp/ref/bin/python3"));
    candidates.push(PathBuf::from("python3"));
    for p in candidates {
        let imports = Command::new(&p)
            .args(["-c", &format!("import {module}")])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if imports {
            return Some(Referee(p));
        }
    }
    missing(&format!("no Python with the module {module}"))
}

fn executable(p: &Path) -> bool {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    }
    #[cfg(not(unix))]
    p.is_file()
}

/// A referee that is not here: a failure in CI, a SKIP elsewhere.
fn missing(what: &str) -> Option<Referee> {
    if std::env::var_os("CI").is_some() {
        panic!("{what}; .ci/run installs the referees");
    }
    eprintln!("SKIP: {what} (install it as .ci/run does)");
    None
}

/// Run and capture, with a readable failure.
pub fn run(mut c: Command) -> Output {
    let out = c.output().expect("spawn");
    if std::env::var_os("IBACKUP_TEST_VERBOSE").is_some() {
        eprintln!(
            "{:?}\n{}\n{}",
            c,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    out
}

pub fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
    .replace('\r', "\n")
}

#[track_caller]
pub fn assert_ok(o: &Output, what: &str) {
    assert!(
        o.status.success(),
        "{what} failed ({}):\n{}",
        o.status,
        tail(&text(o), 40)
    );
}

pub fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().filter(|l| !l.starts_with('[')).collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// What a tree entry is, for comparisons.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Node {
    Dir,
    File { sha1: String, size: u64, mtime: i64 },
    Link(String),
}

pub fn sha1_file(p: &Path) -> String {
    let mut h = Sha1::new();
    let mut f = std::fs::File::open(p).expect("open");
    std::io::copy(&mut f, &mut h).expect("read");
    hex::encode(h.finalize())
}

fn mtime(md: &std::fs::Metadata) -> i64 {
    md.modified()
        .unwrap()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// `<Domain>/<path>` → node for everything below `fs_root`, leaving out
/// `skip` domains. Domain roots are directories with an empty path.
pub fn device_tree(fs_root: &Path, skip: &[&str]) -> BTreeMap<String, Node> {
    let mut out = BTreeMap::new();
    for e in walkdir::WalkDir::new(fs_root).min_depth(1) {
        let e = e.expect("walk");
        let rel = e
            .path()
            .strip_prefix(fs_root)
            .unwrap()
            .to_string_lossy()
            .into_owned();
        let domain = rel.split('/').next().unwrap();
        if skip.contains(&domain) {
            continue;
        }
        let md = std::fs::symlink_metadata(e.path()).unwrap();
        let node = if md.file_type().is_symlink() {
            Node::Link(
                std::fs::read_link(e.path())
                    .unwrap()
                    .to_string_lossy()
                    .into_owned(),
            )
        } else if md.is_dir() {
            Node::Dir
        } else {
            Node::File {
                sha1: sha1_file(e.path()),
                size: md.len(),
                mtime: mtime(&md),
            }
        };
        out.insert(rel, node);
    }
    out
}

/// The same map read from a plain backup folder: Manifest.db rows, with
/// each file's content taken from `xx/<fileID>`. Also checks that the
/// content files on disk are exactly those the rows name.
pub fn backup_tree(backup: &Path) -> BTreeMap<String, Node> {
    let db = ManifestDb::open(&backup.join("Manifest.db")).expect("Manifest.db opens");
    let mut out = BTreeMap::new();
    let mut expected_files = std::collections::BTreeSet::new();
    db.for_each(|row| {
        assert_eq!(
            row.file_id,
            ibackup_store::paths::file_id(&row.domain, &row.relative_path),
            "fileID is SHA-1 of domain-path"
        );
        let key = if row.relative_path.is_empty() {
            row.domain.clone()
        } else {
            format!("{}/{}", row.domain, row.relative_path)
        };
        let node = match row.flags {
            FLAG_DIRECTORY => Node::Dir,
            FLAG_SYMLINK => Node::Link(row.file.target.clone().unwrap_or_default()),
            FLAG_FILE => {
                let p = backup.join(&row.file_id[..2]).join(&row.file_id);
                expected_files.insert(p.clone());
                let size = std::fs::metadata(&p)
                    .unwrap_or_else(|_| panic!("content file for {key} missing"))
                    .len();
                assert_eq!(size, row.file.size, "{key}: Size matches content");
                Node::File {
                    sha1: sha1_file(&p),
                    size,
                    mtime: row.file.last_modified,
                }
            }
            f => panic!("{key}: unknown flags {f}"),
        };
        out.insert(key, node);
        Ok(())
    })
    .expect("rows");
    let mut on_disk = std::collections::BTreeSet::new();
    for e in std::fs::read_dir(backup).unwrap().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.len() == 2 && e.path().is_dir() {
            for f in std::fs::read_dir(e.path()).unwrap().flatten() {
                on_disk.insert(f.path());
            }
        }
    }
    let stray: Vec<_> = on_disk.difference(&expected_files).take(5).collect();
    let missing: Vec<_> = expected_files.difference(&on_disk).take(5).collect();
    assert!(
        stray.is_empty() && missing.is_empty(),
        "content files on disk are exactly those in Manifest.db: {} stray (e.g. {stray:?}), {} missing (e.g. {missing:?})",
        on_disk.difference(&expected_files).count(),
        expected_files.difference(&on_disk).count()
    );
    out
}

/// Plain backups leave out the domains only encrypted backups carry.
pub const PLAIN_SKIP: [&str; 2] = ENCRYPTED_ONLY_DOMAINS;

#[track_caller]
pub fn assert_same_tree(a: &BTreeMap<String, Node>, b: &BTreeMap<String, Node>, what: &str) {
    let only_a: Vec<_> = a.keys().filter(|k| !b.contains_key(*k)).take(5).collect();
    let only_b: Vec<_> = b.keys().filter(|k| !a.contains_key(*k)).take(5).collect();
    let differ: Vec<_> = a
        .iter()
        .filter(|(k, v)| b.get(*k).is_some_and(|w| w != *v))
        .map(|(k, _)| k)
        .take(5)
        .collect();
    assert!(
        only_a.is_empty() && only_b.is_empty() && differ.is_empty(),
        "{what}: only in first {only_a:?}, only in second {only_b:?}, different {differ:?}"
    );
}

/// Change a device's `device.toml`; the simulator reads it on the next connection.
pub fn edit_device(dir: &Path, f: impl FnOnce(&mut DeviceConfig)) {
    let mut cfg = DeviceConfig::load(dir).expect("config");
    f(&mut cfg);
    cfg.save(dir).expect("save config");
}

/// Status.plist's SnapshotState, if readable.
pub fn snapshot_state(backup: &Path) -> Option<String> {
    let v = plist::Value::from_file(backup.join("Status.plist")).ok()?;
    v.as_dictionary()?
        .get("SnapshotState")?
        .as_string()
        .map(str::to_string)
}

/// A small filesystem (tmpfs) for a full-disk test; needs mount rights
/// (root). `None`, with a SKIP line, where it cannot be mounted outside CI.
pub struct SmallDisk(pub PathBuf);

impl SmallDisk {
    pub fn mount(at: &Path, megabytes: u32) -> Option<SmallDisk> {
        std::fs::create_dir_all(at).unwrap();
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={megabytes}m"), "tmpfs"])
            .arg(at)
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        if !ok {
            if std::env::var_os("CI").is_some() {
                panic!("cannot mount a small tmpfs for the full-disk test");
            }
            eprintln!("SKIP: cannot mount a tmpfs here (needs root)");
            return None;
        }
        Some(SmallDisk(at.to_path_buf()))
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

/// An exFAT disk (a file image, through FUSE), as a USB drive shared with
/// macOS and Windows is usually formatted: no hard links, no symbolic
/// links. Needs root, a loop device and /dev/fuse, with exfatprogs and
/// exfat-fuse installed (`.ci/run` installs them). `None`, with a SKIP
/// line, where that is not so outside CI.
pub struct ExfatDisk {
    pub path: PathBuf,
    loop_device: String,
}

impl ExfatDisk {
    pub fn mount(at: &Path, megabytes: u32) -> Option<ExfatDisk> {
        let image = at.with_extension("img");
        std::fs::create_dir_all(at).unwrap();
        let sh = |cmd: &mut Command| -> Option<String> {
            let o = cmd.output().ok()?;
            o.status
                .success()
                .then(|| String::from_utf8_lossy(&o.stdout).trim().to_string())
        };
        let made = std::fs::File::create(&image)
            .and_then(|f| f.set_len(u64::from(megabytes) << 20))
            .is_ok()
            && sh(Command::new("mkfs.exfat").arg(&image)).is_some();
        let loop_device = made
            .then(|| sh(Command::new("losetup").args(["-f", "--show"]).arg(&image)))
            .flatten();
        let mounted = loop_device
            .as_ref()
            .is_some_and(|dev| sh(Command::new("mount.exfat-fuse").arg(dev).arg(at)).is_some());
        if !mounted {
            if let Some(dev) = &loop_device {
                let _ = Command::new("losetup").args(["-d", dev]).status();
            }
            if std::env::var_os("CI").is_some() {
                panic!(
                    "cannot mount an exFAT disk (exfatprogs, exfat-fuse, a loop device, /dev/fuse)"
                );
            }
            eprintln!("SKIP: cannot mount an exFAT disk here");
            return None;
        }
        Some(ExfatDisk {
            path: at.to_path_buf(),
            loop_device: loop_device.unwrap_or_default(),
        })
    }
}

impl Drop for ExfatDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.path).status();
        let _ = Command::new("losetup")
            .args(["-d", &self.loop_device])
            .status();
    }
}

/// Make `c` run as if its disk held files of at most `bytes`: writes past
/// that fail with `EFBIG`, as on FAT32 past 4 GiB (RLIMIT_FSIZE, with
/// SIGXFSZ ignored, since a filesystem's limit comes without a signal).
#[cfg(unix)]
pub fn limit_file_size(c: &mut Command, bytes: u64) {
    use std::os::unix::process::CommandExt;
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        c.pre_exec(move || {
            libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
            let limit = libc::rlimit {
                rlim_cur: bytes as libc::rlim_t,
                rlim_max: bytes as libc::rlim_t,
            };
            if libc::setrlimit(libc::RLIMIT_FSIZE, &limit) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}
