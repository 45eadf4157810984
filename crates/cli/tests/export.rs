//! `ibackup export`: messages, contacts, calendar and calls out of a
//! backup, checked against the simulated phone's own databases and read
//! back by an independent reader (Python's vobject). The device is only
//! used to make the backups, so this runs over one transport only.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use ibackup_sim::populate::Profile;
use ibackup_suite::*;

fn ib(host: &SimHost, args: &[&str], env: &[(&str, &str)]) -> std::process::Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_ibackup"));
    host.point(&mut c);
    c.env_remove("IBACKUP_PASSWORD");
    c.env_remove("IBACKUP_NEW_PASSWORD");
    c.args(args);
    for (k, v) in env {
        c.env(k, v);
    }
    run(c)
}

fn p(path: &Path) -> &str {
    path.to_str().unwrap()
}

fn code(o: &std::process::Output) -> Option<i32> {
    o.status.code()
}

/// (chat ROWID, texts in date order) for every chat in a phone's sms.db.
fn phone_messages(sms: &Path) -> BTreeMap<i64, Vec<String>> {
    let c = rusqlite::Connection::open(sms).unwrap();
    let mut s = c
        .prepare("SELECT coalesce(j.chat_id, 0), m.text FROM message m LEFT JOIN chat_message_join j ON j.message_id = m.ROWID ORDER BY 1, m.date, m.ROWID")
        .unwrap();
    let mut out: BTreeMap<i64, Vec<String>> = BTreeMap::new();
    for r in s
        .query_map([], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?)))
        .unwrap()
    {
        let (chat, text) = r.unwrap();
        // U+FFFC marks where an attachment sits; readers show the attachment there.
        out.entry(chat)
            .or_default()
            .push(text.replace('\u{FFFC}', ""));
    }
    out
}

fn count(db: &Path, sql: &str) -> i64 {
    rusqlite::Connection::open(db)
        .unwrap()
        .query_row(sql, [], |r| r.get(0))
        .unwrap()
}

/// `export` gives every message of every conversation, every contact,
/// event and call of the phone, in files other programs read: the .vcf
/// and .ics by Python's vobject, the backup's messages by
/// imessage-exporter (as many per conversation, the same texts, the same
/// attachments); an encrypted backup
/// exports the same with its password; a backup without messages and a
/// wrong password each get a sentence and write nothing.
#[test]
fn exports_hold_everything_the_phone_has_and_other_readers_agree() {
    let host = SimHost::start(&[(Profile::Small, 211)], |_, _| {});
    let a = &host.udids[0];
    let phone = host.devices[0].join("fs/HomeDomain/Library");
    // A message no chat holds (phones have them): exported all the same.
    rusqlite::Connection::open(phone.join("SMS/sms.db"))
        .unwrap()
        .execute_batch(
            "INSERT INTO message (guid, text, handle_id, service, date, is_from_me) VALUES ('SIM-ORPHAN', 'a message in no chat', 1, 'SMS', 700000000000000000, 0);",
        )
        .unwrap();
    let dir = host.path("backups");
    assert_ok(&ib(&host, &["-u", a, "full", p(&dir)], &[]), "backup");
    let out = host.path("out");
    let export = |kind: &str, to: &Path, env: &[(&str, &str)]| {
        ib(&host, &["export", kind, p(&dir), "--to", p(to)], env)
    };

    // Messages: every conversation, every text in order, every attachment byte for byte.
    let m = out.join("messages");
    assert_ok(&export("messages", &m, &[]), "export messages");
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(m.join("messages.json")).unwrap()).unwrap();
    let convs = json["conversations"].as_array().unwrap();
    let want = phone_messages(&phone.join("SMS/sms.db"));
    assert_eq!(convs.len(), want.len());
    let mut attachments = 0;
    for c in convs {
        let id = c["id"].as_i64().unwrap();
        let texts: Vec<String> = c["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["text"].as_str().unwrap().to_string())
            .collect();
        assert_eq!(texts, want[&id], "conversation {id}");
        assert!(m.join(c["page"].as_str().unwrap()).is_file());
        for msg in c["messages"].as_array().unwrap() {
            for f in msg["attachments"].as_array().unwrap() {
                let name = f.as_str().unwrap();
                let original = walkdir::WalkDir::new(host.devices[0].join("fs/MediaDomain"))
                    .into_iter()
                    .flatten()
                    .find(|e| name.ends_with(&*e.file_name().to_string_lossy()))
                    .unwrap();
                assert_eq!(
                    std::fs::read(m.join(name)).unwrap(),
                    std::fs::read(original.path()).unwrap()
                );
                attachments += 1;
            }
        }
    }
    assert!(attachments > 0);
    let page = std::fs::read_to_string(m.join(convs[0]["page"].as_str().unwrap())).unwrap();
    assert!(
        page.contains("<!DOCTYPE html>") && page.contains("<time datetime="),
        "{page}"
    );
    let titles: Vec<&str> = convs.iter().map(|c| c["title"].as_str().unwrap()).collect();
    assert!(
        titles.contains(&"Family"),
        "group chats keep their names: {titles:?}"
    );
    let named = convs
        .iter()
        .flat_map(|c| c["messages"].as_array().unwrap())
        .filter(|m| m["sender_name"].is_string())
        .count();
    assert!(named > 0, "senders named from the contacts");

    // Contacts, calendar and calls: every one, read back by other readers.
    let people = count(
        &phone.join("AddressBook/AddressBook.sqlitedb"),
        "SELECT COUNT(*) FROM ABPerson",
    );
    let events = count(
        &phone.join("Calendar/Calendar.sqlitedb"),
        "SELECT COUNT(*) FROM CalendarItem",
    );
    let calls = count(
        &phone.join("CallHistoryDB/CallHistory.storedata"),
        "SELECT COUNT(*) FROM ZCALLRECORD",
    );
    for kind in ["contacts", "calendar", "calls"] {
        assert_ok(&export(kind, &out.join(kind), &[]), kind);
    }
    let csv = std::fs::read_to_string(out.join("calls/calls.csv")).unwrap();
    assert_eq!(csv.lines().count() as i64, calls + 1, "{csv}");
    if let Some(py) = python_referee("vobject") {
        let script = "import sys, vobject\n\
cards = list(vobject.readComponents(open(sys.argv[1], encoding='utf-8').read()))\n\
print(len(cards), sum(1 for c in cards if hasattr(c, 'photo')))\n\
cal = vobject.readOne(open(sys.argv[2], encoding='utf-8').read())\n\
print(len(cal.vevent_list))\n";
        let o = run({
            let mut c = Command::new(&py.0);
            c.args(["-c", script])
                .arg(out.join("contacts/contacts.vcf"))
                .arg(out.join("calendar/calendar.ics"));
            c
        });
        assert_ok(&o, "vobject reads the .vcf and the .ics");
        let lines: Vec<String> = String::from_utf8_lossy(&o.stdout)
            .lines()
            .map(str::to_string)
            .collect();
        assert_eq!(
            lines[0],
            format!("{people} {}", (people + 3) / 4),
            "contacts, with photos"
        );
        assert_eq!(lines[1], events.to_string(), "events");
    }

    // imessage-exporter (run as an outside program: GPL) reads the same backup.
    if let Some(ie) = referee("imessage-exporter") {
        let theirs = host.path("imessage-exporter");
        let o = run({
            let mut c = Command::new(&ie.0);
            c.args(["-f", "txt", "-c", "clone", "-a", "iOS", "-p"])
                .arg(dir.join(a))
                .arg("-o")
                .arg(&theirs);
            c
        });
        assert_ok(&o, "imessage-exporter reads the backup");
        let ours_attached: std::collections::BTreeSet<String> =
            walkdir::WalkDir::new(m.join("attachments"))
                .into_iter()
                .flatten()
                .filter(|e| e.file_type().is_file())
                .map(|e| sha1_file(e.path()))
                .collect();
        let (mut counts, mut texts, mut attached) = (Vec::new(), Vec::new(), 0);
        for e in std::fs::read_dir(&theirs).unwrap().flatten() {
            if !e.file_name().to_string_lossy().ends_with(".txt") {
                continue;
            }
            let t = std::fs::read_to_string(e.path()).unwrap();
            let blocks: Vec<&str> = t.split("\n\n").filter(|b| !b.trim().is_empty()).collect();
            if blocks.is_empty() {
                continue;
            }
            counts.push(blocks.len());
            for b in blocks {
                // A date line, the sender, then attachments and the text.
                for line in b.lines().skip(2) {
                    if line.starts_with("attachments/") {
                        assert!(
                            ours_attached.contains(&sha1_file(&theirs.join(line))),
                            "{line}"
                        );
                        attached += 1;
                    } else {
                        texts.push(line.to_string());
                    }
                }
            }
        }
        let mut our_counts: Vec<usize> = want.values().map(Vec::len).collect();
        let mut our_texts: Vec<String> = want.values().flatten().cloned().collect();
        counts.sort_unstable();
        our_counts.sort_unstable();
        texts.sort();
        our_texts.sort();
        assert_eq!(
            counts, our_counts,
            "messages per conversation: imessage-exporter vs ours"
        );
        assert_eq!(texts, our_texts, "texts: imessage-exporter vs ours");
        assert_eq!(
            attached, attachments,
            "attachments: imessage-exporter vs ours"
        );
    }

    // The same from an encrypted backup, with its password; a wrong one writes nothing.
    let enc = host.path("encrypted");
    let pw = [
        ("IBACKUP_PASSWORD", "pw 1"),
        ("IBACKUP_NEW_PASSWORD", "pw 1"),
    ];
    assert_ok(
        &ib(&host, &["-u", a, "encryption", "on"], &pw),
        "encryption on",
    );
    assert_ok(
        &ib(&host, &["-u", a, "full", p(&enc)], &pw),
        "encrypted backup",
    );
    let o = ib(
        &host,
        &["export", "contacts", p(&enc), "--to", p(&out.join("wrong"))],
        &[("IBACKUP_PASSWORD", "nope")],
    );
    assert_eq!(code(&o), Some(13), "{}", text(&o));
    assert!(!out.join("wrong/contacts.vcf").exists());
    let o = ib(
        &host,
        &["export", "contacts", p(&enc), "--to", p(&out.join("enc"))],
        &pw,
    );
    assert_ok(&o, "export from the encrypted backup");
    assert_eq!(
        std::fs::read(out.join("enc/contacts.vcf")).unwrap(),
        std::fs::read(out.join("contacts/contacts.vcf")).unwrap()
    );
    let left: Vec<_> = std::fs::read_dir(out.join("enc"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert_eq!(
        left,
        vec![std::ffi::OsString::from("contacts.vcf")],
        "no decrypted database left behind"
    );

    // A backup without messages: a sentence, exit 18, nothing written.
    let photos_only = host.path("photos-only");
    assert_ok(
        &ib(
            &host,
            &["-u", a, "backup", "--only", "photos", p(&photos_only)],
            &pw,
        ),
        "backup --only photos",
    );
    let o = ib(
        &host,
        &[
            "export",
            "messages",
            p(&photos_only),
            "--to",
            p(&out.join("none")),
        ],
        &pw,
    );
    assert_eq!(code(&o), Some(18), "{}", text(&o));
    assert!(text(&o).contains("holds no messages"), "{}", text(&o));
    assert!(!out.join("none/index.html").exists());

    // An sms.db in a layout ibackup does not know (a column it reads is
    // gone): a sentence naming it, exit 18, nothing written.
    let sms = host.devices[0].join("fs/HomeDomain/Library/SMS/sms.db");
    rusqlite::Connection::open(&sms)
        .unwrap()
        .execute_batch("ALTER TABLE message DROP COLUMN is_from_me;")
        .unwrap();
    let changed = host.path("changed");
    assert_ok(&ib(&host, &["-u", a, "full", p(&changed)], &pw), "backup");
    let o = ib(
        &host,
        &[
            "export",
            "messages",
            p(&changed),
            "--to",
            p(&out.join("unknown")),
        ],
        &pw,
    );
    assert_eq!(code(&o), Some(18), "{}", text(&o));
    assert!(
        text(&o).contains("sms.db is not in a layout ibackup knows (message has no is_from_me)"),
        "{}",
        text(&o)
    );
    assert!(
        !out.join("unknown/index.html").exists() && !out.join("unknown/messages.json").exists()
    );
}
