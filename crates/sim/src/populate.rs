//! `ibackup-sim populate`: realistic, reproducible device folders.
//!
//! Same profile and seed, same bytes: every size, name, content byte and
//! modification time comes from one ChaCha stream seeded by `--seed`.
//! Content mimics what a backup of a real phone holds: camera-roll photos
//! and videos of real sizes with real container headers, real SQLite
//! databases for messages, contacts, call history, notes, calendars and
//! photos, many small app files, empty files, symlinks, unicode names and
//! deep trees.

use std::fs::{self, File};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use rand::{Rng, RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rusqlite::{params, Connection};

use crate::device::DeviceConfig;
use crate::error::{Result, SimError};
use crate::personal;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Profile {
    Empty,
    Small,
    Medium,
    Large,
}

struct Sizes {
    photos: usize,
    videos: usize,
    app_files: usize,
    messages: usize,
    contacts: usize,
    /// Mean photo size in bytes.
    photo_mean: u64,
    video_mean: u64,
}

impl Profile {
    fn sizes(self) -> Sizes {
        match self {
            Profile::Empty => Sizes {
                photos: 0,
                videos: 0,
                app_files: 0,
                messages: 0,
                contacts: 0,
                photo_mean: 0,
                video_mean: 0,
            },
            // ~3,000 files, ~120 MB.
            Profile::Small => Sizes {
                photos: 36,
                videos: 2,
                app_files: 2_800,
                messages: 300,
                contacts: 120,
                photo_mean: 2_400_000,
                video_mean: 9_000_000,
            },
            // ~20,000 files, ~2 GB.
            Profile::Medium => Sizes {
                photos: 560,
                videos: 16,
                app_files: 19_000,
                messages: 3_000,
                contacts: 600,
                photo_mean: 2_600_000,
                video_mean: 24_000_000,
            },
            // ~200,000 files, ~20 GB.
            Profile::Large => Sizes {
                photos: 5_600,
                videos: 100,
                app_files: 193_000,
                messages: 30_000,
                contacts: 2_000,
                photo_mean: 2_500_000,
                video_mean: 48_000_000,
            },
        }
    }
}

/// The files of a device whose domains only encrypted backups carry.
pub const ENCRYPTED_ONLY_DOMAINS: [&str; 2] = ["HealthDomain", "KeychainDomain"];

struct Gen {
    rng: ChaCha8Rng,
    fs: PathBuf,
    base_time: u64,
    files: u64,
    bytes: u64,
}

impl Gen {
    fn path(&self, domain: &str, rel: &str) -> PathBuf {
        self.fs.join(domain).join(rel)
    }

    fn mtime(&mut self) -> SystemTime {
        SystemTime::UNIX_EPOCH
            + Duration::from_secs(self.base_time + self.rng.gen_range(0..30_000_000))
    }

    fn finish_file(&mut self, p: &Path) -> Result<()> {
        let t = self.mtime();
        File::options().write(true).open(p)?.set_modified(t)?;
        self.files += 1;
        self.bytes += fs::metadata(p)?.len();
        Ok(())
    }

    /// A file with `header` followed by pseudo-random bytes up to `size`.
    fn blob(&mut self, domain: &str, rel: &str, header: &[u8], size: u64) -> Result<()> {
        let p = self.path(domain, rel);
        fs::create_dir_all(p.parent().expect("has parent"))?;
        let mut w = BufWriter::with_capacity(1 << 20, File::create(&p)?);
        let head = &header[..header.len().min(size as usize)];
        w.write_all(head)?;
        let mut left = size - head.len() as u64;
        let mut buf = vec![0u8; 1 << 20];
        while left > 0 {
            let n = left.min(buf.len() as u64) as usize;
            self.rng.fill_bytes(&mut buf[..n]);
            w.write_all(&buf[..n])?;
            left -= n as u64;
        }
        w.flush()?;
        drop(w);
        self.finish_file(&p)
    }

    fn text(&mut self, domain: &str, rel: &str, text: &str) -> Result<()> {
        let p = self.path(domain, rel);
        fs::create_dir_all(p.parent().expect("has parent"))?;
        fs::write(&p, text)?;
        self.finish_file(&p)
    }

    fn plist(&mut self, domain: &str, rel: &str, v: plist::Value) -> Result<()> {
        let p = self.path(domain, rel);
        fs::create_dir_all(p.parent().expect("has parent"))?;
        v.to_file_binary(&p)?;
        self.finish_file(&p)
    }

    fn sqlite(
        &mut self,
        domain: &str,
        rel: &str,
        fill: impl FnOnce(&Connection, &mut ChaCha8Rng) -> rusqlite::Result<()>,
    ) -> Result<()> {
        let p = self.path(domain, rel);
        fs::create_dir_all(p.parent().expect("has parent"))?;
        let conn = Connection::open(&p)?;
        conn.execute_batch("PRAGMA journal_mode = DELETE; BEGIN;")?;
        fill(&conn, &mut self.rng)?;
        conn.execute_batch("COMMIT;")?;
        conn.close().map_err(|(_, e)| SimError::Sqlite(e))?;
        self.finish_file(&p)
    }

    fn size_around(&mut self, mean: u64) -> u64 {
        let lo = mean / 2;
        lo + self.rng.gen_range(0..=mean)
    }
}

const FIRST: [&str; 16] = [
    "Anna", "Ben", "Chloé", "David", "Émile", "Fatima", "Georg", "Hana", "Ivan", "Jürgen", "Keiko",
    "Liam", "María", "Noah", "Olga", "Priya",
];
const LAST: [&str; 12] = [
    "Smith",
    "Müller",
    "García",
    "Tanaka",
    "Kowalski",
    "Dubois",
    "Rossi",
    "Nguyen",
    "O'Brien",
    "Søndergaard",
    "Ivanova",
    "Chen",
];
const WORDS: [&str; 20] = [
    "hey",
    "see you",
    "tomorrow",
    "at",
    "the",
    "station",
    "thanks!",
    "ok",
    "lunch?",
    "running late",
    "🙂",
    "call me",
    "where",
    "are you",
    "great",
    "photo",
    "sent",
    "love it",
    "meeting",
    "10 min",
];

fn phrase(rng: &mut ChaCha8Rng, n: usize) -> String {
    (0..n)
        .map(|_| WORDS[rng.gen_range(0..WORDS.len())])
        .collect::<Vec<_>>()
        .join(" ")
}

/// Make a device folder at `dir` (created; must be empty or absent).
pub fn populate(dir: &Path, profile: Profile, seed: u64) -> Result<(u64, u64)> {
    if dir.exists() && fs::read_dir(dir)?.next().is_some() {
        return Err(SimError::Config(format!("{} is not empty", dir.display())));
    }
    fs::create_dir_all(dir.join("fs"))?;
    fs::create_dir_all(dir.join("media"))?;
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let udid = format!("00008110-{:016X}", rng.next_u64());
    // What iTunes left on the device and Finder copies into Info.plist.
    let itunes = dir.join("media/iTunes_Control/iTunes");
    fs::create_dir_all(&itunes)?;
    let mut prefs = vec![0u8; 1024];
    ChaCha8Rng::seed_from_u64(seed ^ 0x1705).fill_bytes(&mut prefs);
    fs::write(itunes.join("iTunesPrefs"), &prefs)?;
    fs::write(itunes.join("IC-Info.sidv"), b"SIDV\x00\x00\x00\x01")?;
    let mut cfg = DeviceConfig::new(&udid, &format!("Simulated iPhone {}", seed));
    cfg.serial_number = format!("F2L{:09X}", rng.next_u64() & 0xf_ffff_ffff);
    cfg.imei = Some(format!("35{:013}", rng.next_u64() % 10_000_000_000_000));
    cfg.save(dir)?;

    let sizes = profile.sizes();
    let mut g = Gen {
        rng,
        fs: dir.join("fs"),
        base_time: 1_700_000_000,
        files: 0,
        bytes: 0,
    };
    if profile == Profile::Empty {
        return Ok((0, 0));
    }

    // Camera roll: HEIC/JPEG photos and MOV videos with real container headers.
    for i in 0..sizes.photos {
        let folder = 100 + i / 1000;
        let size = g.size_around(sizes.photo_mean);
        if g.rng.gen_bool(0.7) {
            let hdr = b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic";
            g.blob(
                "CameraRollDomain",
                &format!("Media/DCIM/{folder}APPLE/IMG_{:04}.HEIC", i + 1),
                hdr,
                size,
            )?;
            if i % 10 == 3 {
                // A Live Photo: its movie beside it, under the same name.
                let size = g.size_around(2_000_000);
                g.blob(
                    "CameraRollDomain",
                    &format!("Media/DCIM/{folder}APPLE/IMG_{:04}.MOV", i + 1),
                    b"\x00\x00\x00\x14ftypqt  \x00\x00\x00\x00qt  ",
                    size,
                )?;
            }
        } else {
            let hdr = b"\xff\xd8\xff\xe1\x00\x18Exif\x00\x00MM\x00\x2a";
            g.blob(
                "CameraRollDomain",
                &format!("Media/DCIM/{folder}APPLE/IMG_{:04}.JPG", i + 1),
                hdr,
                size,
            )?;
        }
        if i % 15 == 4 {
            // Edited on the phone: the original stays, the edit is kept apart.
            let size = g.size_around(sizes.photo_mean);
            g.blob(
                "CameraRollDomain",
                &format!(
                    "Media/PhotoData/Mutations/DCIM/{folder}APPLE/IMG_{:04}/Adjustments/FullSizeRender.jpg",
                    i + 1
                ),
                b"\xff\xd8\xff\xe1\x00\x18Exif\x00\x00MM\x00\x2a",
                size,
            )?;
        }
        let thumb = g.size_around(30_000);
        g.blob(
            "CameraRollDomain",
            &format!(
                "Media/PhotoData/Thumbnails/V2/DCIM/{folder}APPLE/IMG_{:04}/5005.JPG",
                i + 1
            ),
            b"\xff\xd8\xff\xe0\x00\x10JFIF",
            thumb,
        )?;
    }
    for i in 0..sizes.videos {
        let size = g.size_around(sizes.video_mean);
        g.blob(
            "CameraRollDomain",
            &format!("Media/DCIM/100APPLE/IMG_{:04}.MOV", 5000 + i),
            b"\x00\x00\x00\x14ftypqt  \x00\x00\x00\x00qt  ",
            size,
        )?;
    }
    let n_assets = sizes.photos + sizes.videos;
    g.sqlite("CameraRollDomain", "Media/PhotoData/Photos.sqlite", |c, rng| {
        c.execute_batch("CREATE TABLE ZASSET (Z_PK INTEGER PRIMARY KEY, ZDIRECTORY TEXT, ZFILENAME TEXT, ZDATECREATED REAL, ZKIND INTEGER, ZWIDTH INTEGER, ZHEIGHT INTEGER);")?;
        for i in 0..n_assets {
            c.execute("INSERT INTO ZASSET VALUES (?1, ?2, ?3, ?4, ?5, 4032, 3024)", params![i as i64 + 1, "DCIM/100APPLE", format!("IMG_{:04}", i + 1), 700_000_000.0 + rng.gen_range(0.0..30_000_000.0), (i >= sizes.photos) as i64])?;
        }
        Ok(())
    })?;

    // Messages with attachments, contacts, call history and calendar, in
    // the layouts of the real databases (see personal.rs).
    let n_msgs = sizes.messages;
    let attachments: Vec<personal::Attachment> = (0..(n_msgs / 50))
        .map(|a| {
            let guid = format!("{:08X}-{:04X}-SIM", g.rng.next_u32(), a);
            let path = format!(
                "Library/SMS/Attachments/{:02x}/{:02}/{guid}/IMG_{:04}.jpeg",
                a % 256,
                a % 16,
                7000 + a
            );
            let size = g.size_around(400_000);
            personal::Attachment { guid, path, size }
        })
        .collect();
    g.sqlite("HomeDomain", "Library/SMS/sms.db", |c, rng| {
        personal::sms(c, rng, n_msgs, &attachments, phrase)
    })?;
    for a in &attachments {
        g.blob(
            "MediaDomain",
            &a.path,
            b"\xff\xd8\xff\xe0\x00\x10JFIF",
            a.size,
        )?;
    }
    let people: Vec<personal::Contact> = (0..sizes.contacts)
        .map(|_| personal::Contact {
            first: FIRST[g.rng.gen_range(0..FIRST.len())].to_string(),
            last: LAST[g.rng.gen_range(0..LAST.len())].to_string(),
        })
        .collect();
    g.sqlite(
        "HomeDomain",
        "Library/AddressBook/AddressBook.sqlitedb",
        |c, rng| personal::address_book(c, rng, &people),
    )?;
    g.sqlite(
        "HomeDomain",
        "Library/AddressBook/AddressBookImages.sqlitedb",
        |c, rng| personal::address_book_images(c, rng, people.len()),
    )?;
    g.sqlite(
        "HomeDomain",
        "Library/CallHistoryDB/CallHistory.storedata",
        |c, rng| personal::call_history(c, rng, sizes.contacts / 2 + 10),
    )?;
    g.sqlite(
        "HomeDomain",
        "Library/Calendar/Calendar.sqlitedb",
        |c, rng| personal::calendar(c, rng, 40, phrase),
    )?;
    g.sqlite("AppDomainGroup-group.com.apple.notes", "NoteStore.sqlite", |c, rng| {
        c.execute_batch("CREATE TABLE ZICNOTEDATA (Z_PK INTEGER PRIMARY KEY, ZDATA BLOB); CREATE TABLE ZICCLOUDSYNCINGOBJECT (Z_PK INTEGER PRIMARY KEY, ZTITLE1 TEXT, ZNOTEDATA INTEGER);")?;
        for i in 0..25 {
            let mut body = vec![0u8; rng.gen_range(100..3000)];
            rng.fill_bytes(&mut body);
            c.execute("INSERT INTO ZICNOTEDATA VALUES (?1, ?2)", params![i + 1, body])?;
            c.execute("INSERT INTO ZICCLOUDSYNCINGOBJECT VALUES (?1, ?2, ?1)", params![i + 1, phrase(rng, 3)])?;
        }
        Ok(())
    })?;
    g.sqlite("HomeDomain", "Library/Safari/Bookmarks.db", |c, _| {
        c.execute_batch("CREATE TABLE bookmarks (id INTEGER PRIMARY KEY, title TEXT, url TEXT); INSERT INTO bookmarks VALUES (1, 'Example', 'https://example.org/');")
    })?;
    g.sqlite("HomeDomain", "Library/Safari/History.db", |c, _| {
        c.execute_batch("CREATE TABLE history_items (id INTEGER PRIMARY KEY, url TEXT, visit_count INTEGER); INSERT INTO history_items VALUES (1, 'https://example.org/', 3);")
    })?;
    for i in 0..3 {
        let size = g.size_around(800_000);
        g.blob(
            "MediaDomain",
            &format!(
                "Media/Recordings/2026011{i} 081500-{:08X}.m4a",
                0xA1B2C3 + i
            ),
            b"\x00\x00\x00\x1cftypM4A \x00\x00\x00\x00",
            size,
        )?;
    }

    // System domains, preferences, a symlink.
    let prefs = |name: &str| {
        plist::Value::Dictionary(ibackup_proto::plistx::dict([(
            "SimulatedPreference",
            plist::Value::from(name),
        )]))
    };
    g.plist(
        "HomeDomain",
        "Library/Preferences/com.apple.springboard.plist",
        prefs("springboard"),
    )?;
    g.plist(
        "RootDomain",
        "Library/Preferences/com.apple.backupd.plist",
        prefs("backupd"),
    )?;
    g.plist(
        "SystemPreferencesDomain",
        "SystemConfiguration/com.apple.wifi.plist",
        prefs("wifi"),
    )?;
    g.plist(
        "WirelessDomain",
        "Library/Preferences/com.apple.commcenter.plist",
        prefs("commcenter"),
    )?;
    g.plist(
        "ManagedPreferencesDomain",
        "mobile/com.apple.webcontentfilter.plist",
        prefs("filter"),
    )?;
    let link = g.path("DatabaseDomain", "timezone/localtime");
    fs::create_dir_all(link.parent().expect("parent"))?;
    crate::fsx::symlink("/var/db/timezone/zoneinfo/Europe/London", &link)?;
    g.files += 1;

    // Health and Keychain (only encrypted backups carry them).
    g.sqlite("HealthDomain", "Health/healthdb.sqlite", |c, rng| {
        c.execute_batch("CREATE TABLE samples (data_id INTEGER PRIMARY KEY, start_date REAL, data_type INTEGER, quantity REAL);")?;
        for i in 0..200 {
            c.execute("INSERT INTO samples VALUES (?1, ?2, 7, ?3)", params![i + 1, 700_000_000.0 + i as f64 * 86400.0, rng.gen_range(2000.0..15000.0)])?;
        }
        Ok(())
    })?;
    g.sqlite("HealthDomain", "Health/healthdb_secure.sqlite", |c, _| {
        c.execute_batch(
            "CREATE TABLE quantity_samples (data_id INTEGER PRIMARY KEY, quantity REAL);",
        )
    })?;
    g.plist(
        "KeychainDomain",
        "keychain-backup.plist",
        plist::Value::Dictionary(ibackup_proto::plistx::dict([
            ("genp", plist::Value::Array(vec![])),
            ("inet", plist::Value::Array(vec![])),
        ])),
    )?;

    // Apps: many small files, unicode and space-containing names, a deep tree, empty files.
    let apps = [
        "net.whatsapp.WhatsApp",
        "com.spotify.client",
        "com.example.field-notes",
        "com.apple.mobilesafari",
        "org.wikipedia",
        "com.getdropbox.Dropbox",
    ];
    let special = [
        "Documents/Über Café/naïve résumé.pdf",
        "Documents/日本語/ファイル.txt",
        "Documents/emoji 😀 note.txt",
        "Documents/with  two  spaces .txt",
        "Library/Caches/.hidden",
        "Documents/empty.txt",
    ];
    for (k, rel) in special.iter().enumerate() {
        let size = if rel.ends_with("empty.txt") {
            0
        } else {
            100 + k as u64 * 37
        };
        g.blob("AppDomain-com.example.field-notes", rel, b"", size)?;
    }
    let mut deep = String::from("Library/Application Support");
    for level in 0..24 {
        deep.push_str(&format!("/level {level}"));
    }
    g.text(
        "AppDomain-com.example.field-notes",
        &format!("{deep}/bottom.json"),
        "{\"deep\": true}\n",
    )?;
    g.sqlite("AppDomainGroup-group.net.whatsapp.WhatsApp.shared", "ChatStorage.sqlite", |c, rng| {
        c.execute_batch("CREATE TABLE ZWAMESSAGE (Z_PK INTEGER PRIMARY KEY, ZTEXT TEXT, ZMESSAGEDATE REAL);")?;
        for i in 0..(n_msgs / 3 + 5) {
            c.execute("INSERT INTO ZWAMESSAGE VALUES (?1, ?2, ?3)", params![i as i64 + 1, phrase(rng, 5), 700_000_000.0 + i as f64 * 60.0])?;
        }
        Ok(())
    })?;
    let made_so_far = g.files as usize;
    let remaining = sizes.app_files.saturating_sub(made_so_far);
    for i in 0..remaining {
        let app = apps[i % apps.len()];
        let domain = if i % 11 == 0 {
            format!("AppDomainPlugin-{app}.widget")
        } else {
            format!("AppDomain-{app}")
        };
        let sub = [
            "Library/Caches",
            "Documents",
            "Library/Preferences",
            "tmp",
            "Library/Application Support/Data",
        ][g.rng.gen_range(0..5)];
        let empty = i % 97 == 0;
        let size = if empty {
            0
        } else {
            g.rng.gen_range(64..12_000)
        };
        let rel = format!("{sub}/{:03}/item-{i:06}.dat", i / 500);
        g.blob(&domain, &rel, b"", size)?;
    }
    Ok((g.files, g.bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn digest_tree(root: &Path) -> Vec<(String, u64, Vec<u8>)> {
        let mut out = Vec::new();
        for e in walkdir::WalkDir::new(root).sort_by_file_name() {
            let e = e.unwrap();
            let rel = e
                .path()
                .strip_prefix(root)
                .unwrap()
                .to_string_lossy()
                .into_owned();
            let md = fs::symlink_metadata(e.path()).unwrap();
            let content = if md.is_file() {
                fs::read(e.path()).unwrap()
            } else {
                vec![]
            };
            let mtime = md
                .modified()
                .unwrap()
                .duration_since(SystemTime::UNIX_EPOCH)
                .unwrap()
                .as_secs();
            // Device files keep seeded mtimes; device.toml is written "now".
            let keep_mtime = md.is_file() && rel.starts_with("fs");
            out.push((rel, if keep_mtime { mtime } else { 0 }, content));
        }
        out
    }

    #[test]
    fn same_seed_same_bytes_other_seed_other_bytes() {
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        let c = tempfile::tempdir().unwrap();
        // The small profile minus most of its bulk keeps this test quick.
        let (files, bytes) = populate(&a.path().join("d"), Profile::Small, 7).unwrap();
        populate(&b.path().join("d"), Profile::Small, 7).unwrap();
        populate(&c.path().join("d"), Profile::Small, 8).unwrap();
        assert!((2_500..4_000).contains(&files), "{files} files");
        assert!((50_000_000..200_000_000).contains(&bytes), "{bytes} bytes");
        let ta = digest_tree(&a.path().join("d"));
        assert!(ta == digest_tree(&b.path().join("d")));
        assert!(ta != digest_tree(&c.path().join("d")));
        assert!(
            fs::symlink_metadata(a.path().join("d/fs/DatabaseDomain/timezone/localtime"))
                .unwrap()
                .file_type()
                .is_symlink()
        );
        assert!(a
            .path()
            .join("d/fs/HomeDomain/Library/SMS/sms.db")
            .is_file());
        assert!(
            populate(&a.path().join("d"), Profile::Empty, 1).is_err(),
            "refuses a non-empty folder"
        );
    }
}
