//! `ibackup photos OUT`: the camera roll copied over AFC, without a
//! backup. The phone serves /var/mobile/Media over AFC; photos and videos
//! (Live Photos are a still and a `.MOV` of the same name) are in
//! `/DCIM/1xxAPPLE/`, and an edit made on the phone is kept apart, in
//! `/PhotoData/Mutations/DCIM/1xxAPPLE/IMG_1234/Adjustments/
//! FullSizeRender.jpg`; it is copied as `IMG_E1234.jpg`, the name Apple's
//! own import gives it.
//!
//! Incremental and resumable: a file already in OUT with the phone's size
//! and modification time is whole and not copied again; each file is
//! written beside its place and renamed into it, so a run cut anywhere
//! leaves only whole files. Names the device gives are checked like a
//! backup's paths: one that would lead out of OUT (`..`, `/`), or that is
//! not UTF-8, is refused and listed; one the disk cannot hold (`:` on
//! exFAT) is changed there and said.

use std::collections::HashSet;
use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, UNIX_EPOCH};

use ibackup_proto::afc::{self as afc_proto, mode};
use ibackup_store::extract::{name_rules, windows_name, NameRules};

use crate::afc::AfcClient;
use crate::backup::Events;
use crate::device::Session;
use crate::error::{EngineError, Result};

#[derive(Debug, Clone, Default)]
pub struct Options {
    /// OUT/YYYY/MM/ by each file's date (UTC) instead of OUT/1xxAPPLE/.
    pub by_month: bool,
}

/// What a run did.
#[derive(Debug, Default)]
pub struct Copied {
    /// Files on the phone's camera roll (edits included).
    pub files: u64,
    pub bytes: u64,
    /// Copied this run, and their bytes.
    pub copied: u64,
    pub copied_bytes: u64,
    /// Already in OUT, whole.
    pub already: u64,
    /// Names the device listed that were refused (escaped for printing).
    pub refused: Vec<String>,
    /// Names changed for OUT's disk: "from -> to".
    pub renamed: Vec<String>,
}

/// One file to copy.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Item {
    device: String,
    /// Below OUT.
    to: PathBuf,
    size: u64,
    mtime_ns: u128,
}

/// A name from the device, if it can be a file name below OUT.
fn usable(name: &[u8]) -> Option<&str> {
    let s = std::str::from_utf8(name).ok()?;
    let bad = s.is_empty()
        || s == "."
        || s == ".."
        || s.contains(['/', '\\', '\0'])
        || s.chars().any(char::is_control);
    (!bad).then_some(s)
}

fn escaped(name: &[u8]) -> String {
    String::from_utf8_lossy(name).escape_debug().to_string()
}

/// `IMG_1234` → `IMG_E1234`, Apple's name for an edited copy; other names
/// get `_edited`.
fn edited_name(stem: &str, ext: &str) -> String {
    match stem.strip_prefix("IMG_") {
        Some(n) => format!("IMG_E{n}.{ext}"),
        None => format!("{stem}_edited.{ext}"),
    }
}

/// `YYYY/MM` of a time in nanoseconds since 1970, in UTC (the same on every
/// machine, so that a later run finds what an earlier one copied).
fn year_month(mtime_ns: u128) -> String {
    let days = (mtime_ns / 1_000_000_000 / 86_400) as i64;
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}/{month:02}")
}

/// The usable names in the device folder `dir`, sorted; the others are
/// recorded as refused; none when there is no such folder.
fn names_in(afc: &mut AfcClient, dir: &str, done: &mut Copied) -> Result<Vec<String>> {
    let mut names = afc.list(dir)?.unwrap_or_default();
    names.sort();
    Ok(names
        .into_iter()
        .filter_map(|name| match usable(&name) {
            Some(n) => Some(n.to_string()),
            None => {
                done.refused.push(format!("{dir}/{}", escaped(&name)));
                None
            }
        })
        .collect())
}

/// Everything on the camera roll, in a stable order.
fn list(
    afc: &mut AfcClient,
    o: &Options,
    rules: &NameRules,
    done: &mut Copied,
) -> Result<Vec<Item>> {
    let mut items = Vec::new();
    for f in names_in(afc, "/DCIM", done)? {
        let dir = format!("/DCIM/{f}");
        if !afc.info(&dir)?.is_some_and(|i| i.is_dir) {
            continue;
        }
        for n in names_in(afc, &dir, done)? {
            let device = format!("{dir}/{n}");
            if let Some(i) = afc.info(&device)?.filter(|i| i.is_file) {
                items.push(item(device, &f, &n, i.size, i.mtime_ns, o));
            }
        }
        edits(afc, &f, o, &mut items, done)?;
    }
    place(&mut items, rules, done);
    Ok(items)
}

fn item(device: String, folder: &str, name: &str, size: u64, mtime_ns: u128, o: &Options) -> Item {
    let to = if o.by_month {
        PathBuf::from(year_month(mtime_ns)).join(name)
    } else {
        PathBuf::from(folder).join(name)
    };
    Item {
        device,
        to,
        size,
        mtime_ns,
    }
}

/// The edited versions of the photos in DCIM/`folder`.
fn edits(
    afc: &mut AfcClient,
    folder: &str,
    o: &Options,
    items: &mut Vec<Item>,
    done: &mut Copied,
) -> Result<()> {
    let base = format!("/PhotoData/Mutations/DCIM/{folder}");
    for s in names_in(afc, &base, done)? {
        let adj = format!("{base}/{s}/Adjustments");
        for n in names_in(afc, &adj, done)? {
            let Some(ext) = n.strip_prefix("FullSizeRender.") else {
                continue;
            };
            if usable(ext.as_bytes()).is_none() {
                continue;
            }
            let device = format!("{adj}/{n}");
            if let Some(i) = afc.info(&device)?.filter(|i| i.is_file) {
                items.push(item(
                    device,
                    folder,
                    &edited_name(&s, ext),
                    i.size,
                    i.mtime_ns,
                    o,
                ));
            }
        }
    }
    Ok(())
}

/// Names OUT's disk can hold, each used once: Windows' rules where the
/// disk has them, and a second file of the same name (another DCIM folder
/// in the same month, or a name differing only in case on a disk that
/// folds case) gets its folder's name added.
fn place(items: &mut [Item], rules: &NameRules, done: &mut Copied) {
    let mut taken = HashSet::new();
    for it in items.iter_mut() {
        let name = it
            .to
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned();
        if rules.windows {
            let fixed = windows_name(&name);
            if fixed != name {
                done.renamed
                    .push(format!("{} -> {fixed}", it.device.escape_debug()));
                it.to.set_file_name(&*fixed);
            }
        }
        let key = |p: &Path| {
            let s = p.to_string_lossy().into_owned();
            if rules.folds_case {
                s.to_lowercase()
            } else {
                s
            }
        };
        if !taken.insert(key(&it.to)) {
            let folder = it.device.split('/').nth(2).unwrap_or("other").to_string();
            let p = it.to.clone();
            let stem = p
                .file_stem()
                .unwrap_or_default()
                .to_string_lossy()
                .into_owned();
            let ext = p
                .extension()
                .map(|e| format!(".{}", e.to_string_lossy()))
                .unwrap_or_default();
            for n in 1u32.. {
                let tag = if n == 1 {
                    folder.clone()
                } else {
                    format!("{folder} {n}")
                };
                it.to.set_file_name(format!("{stem} ({tag}){ext}"));
                if taken.insert(key(&it.to)) {
                    break;
                }
            }
        }
    }
}

/// Already in OUT, whole: a regular file of the phone's size and time
/// (within two seconds: FAT and exFAT disks keep times that coarse).
fn whole(at: &Path, it: &Item) -> bool {
    let Ok(m) = fs::symlink_metadata(at) else {
        return false;
    };
    let secs = |t: std::time::SystemTime| t.duration_since(UNIX_EPOCH).map(|d| d.as_secs()).ok();
    let phone = (it.mtime_ns / 1_000_000_000) as u64;
    m.is_file()
        && m.len() == it.size
        && m.modified()
            .ok()
            .and_then(secs)
            .is_some_and(|t| t.abs_diff(phone) <= 2)
}

/// Make the folders from OUT down to `dir`, refusing a link or a file on
/// the way (nothing is ever written through a link into somewhere else).
fn make_dirs(out: &Path, dir: &Path) -> Result<()> {
    let rel = dir
        .strip_prefix(out)
        .map_err(|_| EngineError::Protocol("a folder outside OUT".into()))?;
    let mut at = out.to_path_buf();
    for c in rel.components() {
        at.push(c);
        match fs::symlink_metadata(&at) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => {
                return Err(EngineError::Output {
                    path: at,
                    source: std::io::Error::new(
                        std::io::ErrorKind::AlreadyExists,
                        "a file or a link is where a folder goes",
                    ),
                })
            }
            Err(_) => fs::create_dir(&at).map_err(|source| EngineError::Output {
                path: at.clone(),
                source,
            })?,
        }
    }
    Ok(())
}

/// Copy one file: into `.NAME.ibackup-part` beside its place, its time
/// set, then renamed into place. On any failure the part is removed.
fn copy_one(
    afc: &mut AfcClient,
    it: &Item,
    at: &Path,
    progress: &mut dyn FnMut(u64),
) -> Result<()> {
    let name = at.file_name().unwrap_or_default().to_string_lossy();
    let part = at.with_file_name(format!(".{name}.ibackup-part"));
    let _ = fs::remove_file(&part);
    let out = |source| EngineError::Output {
        path: part.clone(),
        source,
    };
    let r = (|| {
        let mut f = File::options()
            .write(true)
            .create_new(true)
            .open(&part)
            .map_err(out)?;
        let handle = afc.open(&it.device, mode::RDONLY)?.ok_or_else(|| {
            EngineError::Protocol(format!(
                "the device would not open {}",
                it.device.escape_debug()
            ))
        })?;
        let mut got = 0u64;
        loop {
            let chunk = afc.read(handle, 1 << 20)?;
            if chunk.is_empty() {
                break;
            }
            got += chunk.len() as u64;
            if got > it.size {
                return Err(EngineError::Protocol(format!(
                    "{} is longer than the {} bytes the device said",
                    it.device.escape_debug(),
                    it.size
                )));
            }
            f.write_all(&chunk).map_err(out)?;
            progress(chunk.len() as u64);
        }
        afc.close(handle)?;
        if got != it.size {
            return Err(EngineError::Protocol(format!(
                "{} ended after {got} of the {} bytes the device said",
                it.device.escape_debug(),
                it.size
            )));
        }
        let t = UNIX_EPOCH + Duration::from_nanos(u64::try_from(it.mtime_ns).unwrap_or(u64::MAX));
        f.set_modified(t).map_err(out)?;
        f.sync_all().map_err(out)?;
        drop(f);
        fs::rename(&part, at).map_err(|source| EngineError::Output {
            path: at.to_path_buf(),
            source,
        })
    })();
    if r.is_err() {
        let _ = fs::remove_file(&part);
    }
    r
}

/// Copy the camera roll of the phone `session` is open to into `out`.
pub fn copy(
    session: &mut Session<'_>,
    out: &Path,
    o: &Options,
    events: &mut dyn Events,
) -> Result<Copied> {
    if !out.is_dir() {
        fs::create_dir_all(out).map_err(|source| EngineError::Output {
            path: out.to_path_buf(),
            source,
        })?;
    }
    let mut afc = AfcClient::new(session.service(afc_proto::SERVICE_NAME)?);
    let rules = name_rules(out);
    let mut done = Copied::default();
    events.step("listing the camera roll");
    let items = list(&mut afc, o, &rules, &mut done)?;
    done.files = items.len() as u64;
    done.bytes = items.iter().map(|i| i.size).sum();
    let todo: Vec<&Item> = items
        .iter()
        .filter(|it| !whole(&out.join(&it.to), it))
        .collect();
    done.already = done.files - todo.len() as u64;
    let total: u64 = todo.iter().map(|i| i.size).sum();
    events.step(&format!(
        "{} of {} files to copy, {} already here",
        todo.len(),
        done.files,
        done.already
    ));
    for it in todo {
        let at = out.join(&it.to);
        make_dirs(out, at.parent().unwrap_or(out))?;
        let (copied, bytes) = (done.copied, done.copied_bytes);
        let mut moved = 0u64;
        copy_one(&mut afc, it, &at, &mut |n| {
            moved += n;
            let b = bytes + moved;
            events.progress(b as f64 * 100.0 / total.max(1) as f64, b, copied);
        })?;
        done.copied += 1;
        done.copied_bytes += it.size;
    }
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_that_leave_out_or_are_not_text_are_refused() {
        for bad in [
            &b""[..],
            b".",
            b"..",
            b"../x",
            b"/etc/passwd",
            b"a\\b",
            b"a\0b",
            b"\xff\xfe",
            b"a\nb",
        ] {
            assert_eq!(usable(bad), None, "{bad:?}");
        }
        assert_eq!(usable(b"IMG_0001.HEIC"), Some("IMG_0001.HEIC"));
        assert_eq!(usable("Café:1.JPG".as_bytes()), Some("Café:1.JPG"));
    }

    #[test]
    fn edits_get_apples_names_and_months_are_utc() {
        assert_eq!(edited_name("IMG_0042", "jpg"), "IMG_E0042.jpg");
        assert_eq!(edited_name("DSC_1", "heic"), "DSC_1_edited.heic");
        assert_eq!(year_month(0), "1970/01");
        assert_eq!(year_month(1_700_000_000 * 1_000_000_000), "2023/11");
        assert_eq!(year_month(951_782_400 * 1_000_000_000), "2000/02"); // 2000-02-29
        assert_eq!(year_month(951_868_800 * 1_000_000_000), "2000/03");
    }

    #[test]
    fn a_second_file_of_a_name_gets_its_folder_and_windows_names_change_there_only() {
        let it = |device: &str, to: &str| Item {
            device: device.into(),
            to: to.into(),
            size: 1,
            mtime_ns: 0,
        };
        let mut items = vec![
            it("/DCIM/100APPLE/IMG_0001.JPG", "2023/11/IMG_0001.JPG"),
            it("/DCIM/101APPLE/IMG_0001.JPG", "2023/11/IMG_0001.JPG"),
            it("/DCIM/101APPLE/img_0001.jpg", "2023/11/img_0001.jpg"),
            it("/DCIM/101APPLE/a:b.JPG", "101APPLE/a:b.JPG"),
        ];
        let mut done = Copied::default();
        place(
            &mut items,
            &NameRules {
                folds_case: true,
                windows: true,
            },
            &mut done,
        );
        let to: Vec<_> = items
            .iter()
            .map(|i| i.to.to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            to,
            [
                "2023/11/IMG_0001.JPG",
                "2023/11/IMG_0001 (101APPLE).JPG",
                "2023/11/img_0001 (101APPLE 2).jpg",
                "101APPLE/a_b.JPG"
            ]
        );
        assert_eq!(done.renamed.len(), 1);
    }
}
