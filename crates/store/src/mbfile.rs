//! `MBFile`: the NSKeyedArchiver record in the `file` column of Manifest.db.
//!
//! Layout as iOS writes it (fact sheet §3.2, from Apple's `MBFile
//! encodeWithCoder:` and rows of a real iOS 14.3 Manifest.db):
//! `$objects[0] = "$null"`, `$objects[1]` the MBFile dictionary,
//! `$objects[2]` the relative path, then (only if present) target, digest,
//! encryption key (an NSMutableData dictionary with `NS.data`) and its class,
//! extended attributes, and last the MBFile class. Readers (pyiosbackup,
//! iphone_backup_decrypt, mvt, crabapple) rely on `$top.root` being a UID,
//! on the class chain naming `MBFile`, and on all integer keys being present.

use plist::{Dictionary, Uid, Value};

use crate::error::{Result, StoreError};

pub const FLAG_FILE: i64 = 1;
pub const FLAG_DIRECTORY: i64 = 2;
pub const FLAG_SYMLINK: i64 = 4;

pub const S_IFMT: u32 = 0o170000;
pub const S_IFREG: u32 = 0o100000;
pub const S_IFDIR: u32 = 0o040000;
pub const S_IFLNK: u32 = 0o120000;

/// One file, directory or symlink as a backup records it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct MbFile {
    pub relative_path: String,
    /// Symlink target (an absolute device path); symlinks only.
    pub target: Option<String>,
    /// SHA-1 of the stored content file, for some system-domain files.
    pub digest: Option<Vec<u8>>,
    /// 4-byte little-endian class + 40-byte wrapped key; encrypted backups only.
    pub encryption_key: Option<Vec<u8>>,
    /// A binary plist mapping xattr name to value.
    pub extended_attributes: Option<Vec<u8>>,
    pub mode: u32,
    pub inode: u64,
    pub user_id: i64,
    pub group_id: i64,
    pub last_modified: i64,
    pub last_status_change: i64,
    pub birth: i64,
    pub size: u64,
    pub protection_class: i64,
    pub flags: i64,
}

impl MbFile {
    /// The Manifest.db `flags` column for this entry.
    pub fn kind_flag(&self) -> i64 {
        match self.mode & S_IFMT {
            S_IFDIR => FLAG_DIRECTORY,
            S_IFLNK => FLAG_SYMLINK,
            _ => FLAG_FILE,
        }
    }

    /// Encode as a binary NSKeyedArchiver plist in the device's layout.
    pub fn to_archive(&self) -> Vec<u8> {
        let mut objects: Vec<Value> = vec![Value::from("$null"), Value::Boolean(false)];
        let mut rec = Dictionary::new();
        let push = |objects: &mut Vec<Value>, v: Value| -> Uid {
            objects.push(v);
            Uid::new(objects.len() as u64 - 1)
        };
        let path = push(&mut objects, Value::from(self.relative_path.as_str()));
        rec.insert("RelativePath".into(), Value::Uid(path));
        if let Some(t) = &self.target {
            let u = push(&mut objects, Value::from(t.as_str()));
            rec.insert("Target".into(), Value::Uid(u));
        }
        if let Some(d) = &self.digest {
            let u = push(&mut objects, Value::Data(d.clone()));
            rec.insert("Digest".into(), Value::Uid(u));
        }
        if let Some(k) = &self.encryption_key {
            let key_idx = objects.len() as u64;
            let mut kd = Dictionary::new();
            kd.insert("NS.data".into(), Value::Data(k.clone()));
            kd.insert("$class".into(), Value::Uid(Uid::new(key_idx + 1)));
            objects.push(Value::Dictionary(kd));
            let mut cls = Dictionary::new();
            cls.insert("$classname".into(), Value::from("NSMutableData"));
            cls.insert(
                "$classes".into(),
                Value::Array(vec![
                    "NSMutableData".into(),
                    "NSData".into(),
                    "NSObject".into(),
                ]),
            );
            objects.push(Value::Dictionary(cls));
            rec.insert("EncryptionKey".into(), Value::Uid(Uid::new(key_idx)));
        }
        if let Some(x) = &self.extended_attributes {
            let u = push(&mut objects, Value::Data(x.clone()));
            rec.insert("ExtendedAttributes".into(), Value::Uid(u));
        }
        let ints: [(&str, i64); 10] = [
            ("Birth", self.birth),
            ("Flags", self.flags),
            ("GroupID", self.group_id),
            ("InodeNumber", self.inode as i64),
            ("LastModified", self.last_modified),
            ("LastStatusChange", self.last_status_change),
            ("Mode", self.mode as i64),
            ("ProtectionClass", self.protection_class),
            ("Size", self.size as i64),
            ("UserID", self.user_id),
        ];
        for (k, v) in ints {
            rec.insert(k.into(), Value::from(v));
        }
        let mut cls = Dictionary::new();
        cls.insert("$classname".into(), Value::from("MBFile"));
        cls.insert(
            "$classes".into(),
            Value::Array(vec!["MBFile".into(), "NSObject".into()]),
        );
        let cls_uid = push(&mut objects, Value::Dictionary(cls));
        rec.insert("$class".into(), Value::Uid(cls_uid));
        objects[1] = Value::Dictionary(rec);

        let mut top = Dictionary::new();
        top.insert("root".into(), Value::Uid(Uid::new(1)));
        let mut archive = Dictionary::new();
        archive.insert("$version".into(), Value::from(100000u64));
        archive.insert("$archiver".into(), Value::from("NSKeyedArchiver"));
        archive.insert("$top".into(), Value::Dictionary(top));
        archive.insert("$objects".into(), Value::Array(objects));
        let mut out = Vec::new();
        Value::Dictionary(archive)
            .to_writer_binary(&mut out)
            .expect("plist serialisation to memory");
        out
    }

    /// Decode an archive written by a device or another host. Tolerant of
    /// layout (any UID order) but strict about types.
    pub fn from_archive(bytes: &[u8]) -> Result<MbFile> {
        let bad = |m: &str| StoreError::Record(m.to_string());
        let v = Value::from_reader(std::io::Cursor::new(bytes))?;
        let d = v
            .as_dictionary()
            .ok_or_else(|| bad("archive is not a dictionary"))?;
        let objects = d
            .get("$objects")
            .and_then(Value::as_array)
            .ok_or_else(|| bad("archive without $objects"))?;
        let root_uid = d
            .get("$top")
            .and_then(Value::as_dictionary)
            .and_then(|t| t.get("root"))
            .and_then(|r| match r {
                Value::Uid(u) => Some(u.get()),
                _ => None,
            })
            .unwrap_or(1);
        fn deref<'a>(objects: &'a [Value], v: &'a Value) -> Option<&'a Value> {
            match v {
                Value::Uid(u) => objects.get(usize::try_from(u.get()).ok()?),
                other => Some(other),
            }
        }
        let deref = |v| deref(objects, v);
        let rec = objects
            .get(root_uid as usize)
            .and_then(Value::as_dictionary)
            .ok_or_else(|| bad("root object is not a dictionary"))?;
        let obj = |k: &str| rec.get(k).and_then(deref);
        let string = |k: &str| obj(k).and_then(Value::as_string).map(str::to_string);
        let data = |k: &str| -> Option<Vec<u8>> {
            match obj(k)? {
                Value::Data(d) => Some(d.clone()),
                Value::Dictionary(nd) => nd
                    .get("NS.data")
                    .and_then(Value::as_data)
                    .map(<[u8]>::to_vec),
                _ => None,
            }
        };
        let int = |k: &str| -> Result<i64> {
            match rec.get(k) {
                None => Ok(0),
                Some(Value::Integer(i)) => i
                    .as_signed()
                    .or_else(|| i.as_unsigned().map(|u| u as i64))
                    .ok_or_else(|| bad("integer out of range")),
                Some(_) => Err(StoreError::Record(format!("{k} is not an integer"))),
            }
        };
        let relative_path = match rec.get("RelativePath") {
            Some(v) => deref(v)
                .and_then(Value::as_string)
                .map(str::to_string)
                .ok_or_else(|| bad("RelativePath is not a string"))?,
            None => return Err(bad("record without RelativePath")),
        };
        Ok(MbFile {
            relative_path,
            target: string("Target"),
            digest: data("Digest"),
            encryption_key: data("EncryptionKey"),
            extended_attributes: data("ExtendedAttributes"),
            mode: int("Mode")? as u32,
            inode: int("InodeNumber")? as u64,
            user_id: int("UserID")?,
            group_id: int("GroupID")?,
            last_modified: int("LastModified")?,
            last_status_change: int("LastStatusChange")?,
            birth: int("Birth")?,
            size: int("Size")?.max(0) as u64,
            protection_class: int("ProtectionClass")?,
            flags: int("Flags")?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> MbFile {
        MbFile {
            relative_path: "Library/SMS/sms.db".into(),
            mode: S_IFREG | 0o644,
            inode: 123456789,
            user_id: 501,
            group_id: -2,
            last_modified: 1_700_000_000,
            last_status_change: 1_700_000_001,
            birth: 1_600_000_000,
            size: 1 << 33,
            protection_class: 3,
            ..Default::default()
        }
    }

    #[test]
    fn round_trips_every_shape() {
        let plain = sample();
        let mut digest = sample();
        digest.digest = Some(vec![7; 20]);
        let mut enc = sample();
        enc.encryption_key = Some(vec![3, 0, 0, 0].into_iter().chain([9u8; 40]).collect());
        enc.extended_attributes = Some(vec![1, 2, 3]);
        let dir = MbFile {
            relative_path: "Library".into(),
            mode: S_IFDIR | 0o755,
            ..Default::default()
        };
        let link = MbFile {
            relative_path: "timezone/localtime".into(),
            mode: S_IFLNK | 0o755,
            target: Some("/var/db/timezone/zoneinfo/Europe/London".into()),
            ..Default::default()
        };
        for f in [plain, digest, enc, dir.clone(), link.clone()] {
            assert_eq!(MbFile::from_archive(&f.to_archive()).unwrap(), f);
        }
        assert_eq!(dir.kind_flag(), FLAG_DIRECTORY);
        assert_eq!(link.kind_flag(), FLAG_SYMLINK);
        assert_eq!(sample().kind_flag(), FLAG_FILE);
    }

    #[test]
    fn device_layout_puts_mbfile_at_one_and_class_last() {
        let mut f = sample();
        f.digest = Some(vec![1; 20]);
        let v = Value::from_reader(std::io::Cursor::new(f.to_archive())).unwrap();
        let objs = v.as_dictionary().unwrap()["$objects"].as_array().unwrap();
        assert_eq!(objs[0].as_string(), Some("$null"));
        assert!(objs[1].as_dictionary().unwrap().contains_key("Mode"));
        assert_eq!(objs[2].as_string(), Some("Library/SMS/sms.db"));
        let last = objs.last().unwrap().as_dictionary().unwrap();
        assert_eq!(last["$classname"].as_string(), Some("MBFile"));
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert!(MbFile::from_archive(b"not a plist").is_err());
        let mut d = Dictionary::new();
        d.insert(
            "$objects".into(),
            Value::Array(vec![Value::from("$null"), Value::from(5u64)]),
        );
        let mut out = Vec::new();
        Value::Dictionary(d).to_writer_binary(&mut out).unwrap();
        assert!(MbFile::from_archive(&out).is_err());
    }
}
