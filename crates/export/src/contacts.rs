//! Contacts (AddressBook.sqlitedb, photos from AddressBookImages.sqlitedb)
//! as one vCard 3.0 file, the version every common address book imports.

use std::collections::HashMap;
use std::path::Path;

use calcard::common::{Data, PartialDateTime};
use calcard::vcard::{VCard, VCardEntry, VCardParameter, VCardProperty, VCardValue, VCardVersion};
use rusqlite::Connection;

use crate::error::Result;
use crate::output;
use crate::schema::{or_null, Layout};
use crate::source::{Db, Source};
use crate::time;
use crate::Exported;

pub const ADDRESS_BOOK: Db = Db {
    what: "contacts",
    file: "AddressBook.sqlitedb",
    domain: "HomeDomain",
    path: "Library/AddressBook/AddressBook.sqlitedb",
};

const IMAGES: Db = Db {
    what: "contact photos",
    file: "AddressBookImages.sqlitedb",
    domain: "HomeDomain",
    path: "Library/AddressBook/AddressBookImages.sqlitedb",
};

pub const KNOWN: &str = "the AddressBook.sqlitedb of iOS 9 to 18 (ABPerson with ABMultiValue: property 3 phone numbers, 4 e-mail addresses)";

/// A person as the exporters use them.
#[derive(Default)]
struct Person {
    first: String,
    last: String,
    middle: String,
    prefix: String,
    suffix: String,
    nickname: String,
    organization: String,
    department: String,
    job_title: String,
    note: String,
    /// Seconds since 2001, as text.
    birthday: Option<String>,
    guid: Option<String>,
    phones: Vec<(String, String)>,
    emails: Vec<(String, String)>,
}

impl Person {
    fn display(&self) -> String {
        let name = [self.first.as_str(), self.last.as_str()]
            .iter()
            .filter(|s| !s.is_empty())
            .copied()
            .collect::<Vec<_>>()
            .join(" ");
        if name.is_empty() {
            self.organization.clone()
        } else {
            name
        }
    }
}

/// The names of the people in the backup's contacts, by phone number (its
/// last ten digits) and by e-mail address (lower case).
pub type Names = HashMap<String, String>;

fn key(handle: &str) -> Option<String> {
    if handle.contains('@') {
        return Some(handle.trim().to_lowercase());
    }
    let digits: String = handle.chars().filter(char::is_ascii_digit).collect();
    (digits.len() >= 7).then(|| digits[digits.len().saturating_sub(10)..].to_string())
}

/// The contact named for a message handle, if any.
pub fn lookup(names: &Names, handle: &str) -> Option<String> {
    key(handle).and_then(|k| names.get(&k).cloned())
}

/// The backup's contacts as [`Names`]; empty when they cannot be read (a
/// message export then shows numbers instead of names).
pub fn names(src: &Source) -> Names {
    let people = match src.open(&ADDRESS_BOOK).and_then(|c| match c {
        Some(c) => read(&c),
        None => Ok(Vec::new()),
    }) {
        Ok(p) => p,
        Err(e) => {
            log::info!("senders are shown by number: {e}");
            Vec::new()
        }
    };
    let mut names = Names::new();
    for (_, p) in people {
        let n = p.display();
        if n.is_empty() {
            continue;
        }
        for (_, v) in p.phones.iter().chain(&p.emails) {
            if let Some(k) = key(v) {
                names.entry(k).or_insert_with(|| n.clone());
            }
        }
    }
    names
}

fn read(c: &Connection) -> Result<Vec<(i64, Person)>> {
    let layout = Layout::read(c, ADDRESS_BOOK.file, KNOWN)?;
    let cols = layout.require(c, "ABPerson", &["ROWID", "First", "Last"])?;
    layout.require(
        c,
        "ABMultiValue",
        &["record_id", "property", "label", "value"],
    )?;
    let opt = |c: &str| or_null(&cols, c);
    let mut s = c
        .prepare(&format!(
            "SELECT ROWID, First, Last, {}, {}, {}, {}, {}, {}, {}, {}, {}, {} FROM ABPerson ORDER BY ROWID",
            opt("Middle"),
            opt("Prefix"),
            opt("Suffix"),
            opt("Nickname"),
            opt("Organization"),
            opt("Department"),
            opt("JobTitle"),
            opt("Note"),
            opt("Birthday"),
            opt("guid"),
        ))
        .map_err(layout.unreadable())?;
    let text = |r: &rusqlite::Row, i| -> rusqlite::Result<String> {
        // Birthday is text in some versions and a number in others.
        Ok(match r.get_ref(i)? {
            rusqlite::types::ValueRef::Text(t) => String::from_utf8_lossy(t).into_owned(),
            rusqlite::types::ValueRef::Integer(n) => n.to_string(),
            rusqlite::types::ValueRef::Real(f) => f.to_string(),
            _ => String::new(),
        })
    };
    let mut people: Vec<(i64, Person)> = s
        .query_map([], |r| {
            let birthday = text(r, 11)?;
            let guid = text(r, 12)?;
            Ok((
                r.get(0)?,
                Person {
                    first: text(r, 1)?,
                    last: text(r, 2)?,
                    middle: text(r, 3)?,
                    prefix: text(r, 4)?,
                    suffix: text(r, 5)?,
                    nickname: text(r, 6)?,
                    organization: text(r, 7)?,
                    department: text(r, 8)?,
                    job_title: text(r, 9)?,
                    note: text(r, 10)?,
                    birthday: (!birthday.is_empty()).then_some(birthday),
                    guid: (!guid.is_empty()).then_some(guid),
                    ..Person::default()
                },
            ))
        })
        .map_err(layout.unreadable())?
        .collect::<rusqlite::Result<_>>()
        .map_err(layout.unreadable())?;
    let at: HashMap<i64, usize> = people
        .iter()
        .enumerate()
        .map(|(i, (id, _))| (*id, i))
        .collect();
    let labels = if layout.has_table("ABMultiValueLabel") {
        "(SELECT l.value FROM ABMultiValueLabel l WHERE l.ROWID = v.label)"
    } else {
        "NULL"
    };
    let mut s = c
        .prepare(&format!(
            "SELECT v.record_id, v.property, {labels}, v.value FROM ABMultiValue v WHERE v.property IN (3, 4) ORDER BY v.record_id, v.UID"
        ))
        .map_err(layout.unreadable())?;
    let rows = s
        .query_map([], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, i64>(1)?,
                r.get::<_, Option<String>>(2)?,
                r.get::<_, Option<String>>(3)?,
            ))
        })
        .map_err(layout.unreadable())?;
    for row in rows {
        let (id, property, label, value) = row.map_err(layout.unreadable())?;
        let (Some(&i), Some(value)) = (at.get(&id), value) else {
            continue;
        };
        let label = label
            .map(|l| {
                l.trim_start_matches("_$!<")
                    .trim_end_matches(">!$_")
                    .to_string()
            })
            .unwrap_or_default();
        let p = &mut people[i].1;
        if property == 3 {
            p.phones.push((label, value));
        } else {
            p.emails.push((label, value));
        }
    }
    Ok(people)
}

/// Photos by person ROWID: the full-size image, else the thumbnail.
fn photos(src: &Source) -> HashMap<i64, Vec<u8>> {
    let mut out = HashMap::new();
    let Ok(Some(c)) = src.open(&IMAGES) else {
        return out;
    };
    for table in ["ABThumbnailImage", "ABFullSizeImage"] {
        let Ok(mut s) = c.prepare(&format!(
            "SELECT record_id, data FROM {table} WHERE data IS NOT NULL"
        )) else {
            continue;
        };
        let Ok(rows) = s.query_map([], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, Vec<u8>>(1)?)))
        else {
            continue;
        };
        for (id, data) in rows.flatten() {
            out.insert(id, data);
        }
    }
    out
}

fn tel_type(label: &str) -> &'static str {
    match label.to_lowercase().as_str() {
        "mobile" | "iphone" => "CELL",
        "home" => "HOME",
        "work" => "WORK",
        "main" => "MAIN",
        "homefax" | "workfax" | "otherfax" => "FAX",
        "pager" => "PAGER",
        _ => "VOICE",
    }
}

fn card(p: &Person, photo: Option<&Vec<u8>>) -> VCard {
    let mut e = vec![
        VCardEntry::new(VCardProperty::N).with_values(
            [&p.last, &p.first, &p.middle, &p.prefix, &p.suffix]
                .iter()
                .map(|s| VCardValue::Text(s.to_string()))
                .collect(),
        ),
        VCardEntry::new(VCardProperty::Fn).with_value(p.display()),
    ];
    let mut add = |prop, v: &str| {
        if !v.is_empty() {
            e.push(VCardEntry::new(prop).with_value(v.to_string()));
        }
    };
    add(VCardProperty::Nickname, &p.nickname);
    add(VCardProperty::Title, &p.job_title);
    add(VCardProperty::Note, &p.note);
    if let Some(g) = &p.guid {
        add(VCardProperty::Uid, g);
    }
    if !p.organization.is_empty() || !p.department.is_empty() {
        e.push(VCardEntry::new(VCardProperty::Org).with_values(vec![
            VCardValue::Text(p.organization.clone()),
            VCardValue::Text(p.department.clone()),
        ]));
    }
    if let Some(t) = p
        .birthday
        .as_deref()
        .and_then(|b| b.trim().parse::<f64>().ok())
        .and_then(time::apple_seconds)
    {
        let d = t.to_zoned(jiff::tz::TimeZone::UTC).date();
        e.push(
            VCardEntry::new(VCardProperty::Bday).with_value(VCardValue::PartialDateTime(
                PartialDateTime {
                    year: Some(d.year() as u16),
                    month: Some(d.month() as u8),
                    day: Some(d.day() as u8),
                    ..PartialDateTime::default()
                },
            )),
        );
    }
    for (label, v) in &p.phones {
        e.push(
            VCardEntry::new(VCardProperty::Tel)
                .with_param(VCardParameter::typ(tel_type(label).to_string()))
                .with_value(v.clone()),
        );
    }
    for (label, v) in &p.emails {
        let mut entry = VCardEntry::new(VCardProperty::Email)
            .with_param(VCardParameter::typ("INTERNET".to_string()));
        if matches!(label.to_lowercase().as_str(), "home" | "work") {
            entry = entry.with_param(VCardParameter::typ(label.to_uppercase()));
        }
        e.push(entry.with_value(v.clone()));
    }
    if let Some(data) = photo {
        e.push(
            VCardEntry::new(VCardProperty::Photo).with_value(VCardValue::Binary(Data {
                content_type: Some("image/jpeg".into()),
                data: data.clone(),
            })),
        );
    }
    VCard { entries: e }
}

pub fn export(src: &Source, out: &Path) -> Result<Exported> {
    let c = src.require(&ADDRESS_BOOK)?;
    let people = read(&c)?;
    let photos = photos(src);
    let mut done = Exported {
        layout: "AddressBook.sqlitedb".into(),
        ..Exported::default()
    };
    let mut vcf = String::new();
    for (id, p) in &people {
        let photo = photos.get(id);
        done.photos += photo.is_some() as u64;
        card(p, photo)
            .write_to(&mut vcf, VCardVersion::V3_0)
            .expect("writing to a String");
        done.items += 1;
    }
    done.files
        .push(output::write(&out.join("contacts.vcf"), vcf.as_bytes())?);
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handles_match_contacts_however_the_number_is_written() {
        let mut names = Names::new();
        names.insert(key("+1 (555) 010-0003").unwrap(), "Anna Smith".into());
        names.insert(key("Anna@Example.org").unwrap(), "Anna Smith".into());
        assert_eq!(
            lookup(&names, "+15550100003").as_deref(),
            Some("Anna Smith")
        );
        assert_eq!(
            lookup(&names, "555-010-0003").as_deref(),
            Some("Anna Smith")
        );
        assert_eq!(
            lookup(&names, "anna@example.org").as_deref(),
            Some("Anna Smith")
        );
        assert_eq!(lookup(&names, "+15550100004"), None);
        assert_eq!(lookup(&names, "12"), None);
    }

    #[test]
    fn a_card_escapes_what_vcard_reserves() {
        let p = Person {
            first: "Jürgen".into(),
            last: "O'Brien; Jr.".into(),
            note: "line one\nline, two".into(),
            birthday: Some("-662774400".into()),
            phones: vec![("Mobile".into(), "+1 555 0100".into())],
            ..Person::default()
        };
        let mut s = String::new();
        card(&p, Some(&vec![0xff, 0xd8, 0xff]))
            .write_to(&mut s, VCardVersion::V3_0)
            .unwrap();
        assert!(s.starts_with("BEGIN:VCARD\r\nVERSION:3.0\r\n"), "{s}");
        assert!(s.contains(":O'Brien\\; Jr.;Jürgen;;;\r\n"), "{s}");
        assert!(s.contains("NOTE:line one\\nline\\, two"), "{s}");
        assert!(
            s.contains("BDAY:1980-01-01") || s.contains("BDAY:19800101"),
            "{s}"
        );
        assert!(s.contains("TEL;TYPE=CELL:+1 555 0100"), "{s}");
        assert!(s.contains("PHOTO;ENCODING=b;TYPE=JPEG:/9j/"), "{s}");
    }
}
