//! Messages (sms.db) as one HTML page per conversation, an index page,
//! and `messages.json` with every message for programs; attachments are
//! copied into `attachments/` and linked from the pages.

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::Path;

use html_escape::{encode_double_quoted_attribute as attr, encode_text as text};
use rusqlite::Connection;
use serde::Serialize;

use crate::contacts;
use crate::error::Result;
use crate::output::{self, err, safe_name, Part};
use crate::schema::{or_null, Layout};
use crate::source::{Db, Source};
use crate::time;
use crate::Exported;

pub const SMS: Db = Db {
    what: "messages",
    file: "sms.db",
    domain: "HomeDomain",
    path: "Library/SMS/sms.db",
};

pub const KNOWN: &str =
    "the sms.db of iOS 11 to 18 (message, chat, handle and their join tables; dates in nanoseconds), and older ones with the same columns (dates in seconds)";

#[derive(Serialize)]
struct Message {
    date_utc: String,
    date_local: String,
    from_me: bool,
    /// The sender's handle (phone number or e-mail); empty for the owner.
    sender: String,
    /// The sender's name in the backup's contacts, when it is there.
    sender_name: Option<String>,
    text: String,
    /// Paths below OUT of the attachments copied.
    attachments: Vec<String>,
    /// Names of attachments the message had that the backup does not hold.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    missing: Vec<String>,
}

#[derive(Serialize)]
struct Conversation {
    id: i64,
    title: String,
    service: String,
    /// The members' handles, and their names where the contacts have them.
    members: Vec<String>,
    member_names: Vec<String>,
    page: String,
    messages: Vec<Message>,
}

struct Chat {
    identifier: String,
    display_name: Option<String>,
    service: String,
}

pub fn export(src: &Source, out: &Path) -> Result<Exported> {
    let c = src.require(&SMS)?;
    let layout = Layout::read(&c, SMS.file, KNOWN)?;
    let mcols = layout.require(
        &c,
        "message",
        &["ROWID", "text", "handle_id", "date", "is_from_me"],
    )?;
    layout.require(&c, "chat", &["ROWID", "chat_identifier"])?;
    layout.require(&c, "handle", &["ROWID", "id"])?;
    layout.require(&c, "chat_message_join", &["chat_id", "message_id"])?;
    let names = contacts::names(src);
    let handles = handles(&c, &layout)?;
    let chats = chats(&c, &layout)?;
    let members = members(&c, &layout, &handles)?;
    let mut done = Exported {
        layout: "sms.db (iOS 11 or later layout)".into(),
        ..Exported::default()
    };
    let attachments = attachments(src, &c, &layout, out, &mut done)?;
    let body = or_null(&mcols, "attributedBody");
    let mut s = c
        .prepare(&format!(
            "SELECT coalesce(j.chat_id, 0), m.ROWID, m.text, {body}, m.handle_id, m.date, m.is_from_me
             FROM message m LEFT JOIN chat_message_join j ON j.message_id = m.ROWID
             ORDER BY 1, m.date, m.ROWID"
        ))
        .map_err(layout.unreadable())?;
    let mut convs: BTreeMap<i64, Vec<Message>> = BTreeMap::new();
    let mut rows = s.query([]).map_err(layout.unreadable())?;
    while let Some(r) = rows.next().map_err(layout.unreadable())? {
        let get = |e| layout.unreadable()(e);
        let chat: i64 = r.get(0).map_err(get)?;
        let id: i64 = r.get(1).map_err(get)?;
        let plain: Option<String> = r.get(2).unwrap_or(None);
        let rich: Option<Vec<u8>> = r.get(3).unwrap_or(None);
        let handle: i64 = r.get::<_, Option<i64>>(4).map_err(get)?.unwrap_or(0);
        let date: i64 = r.get::<_, Option<i64>>(5).map_err(get)?.unwrap_or(0);
        let from_me = r.get::<_, Option<i64>>(6).map_err(get)?.unwrap_or(0) != 0;
        let text = plain
            .filter(|t| !t.is_empty())
            .or_else(|| rich.as_deref().and_then(decode_attributed_body))
            .unwrap_or_default()
            // The object replacement character marks where an attachment sat.
            .replace('\u{FFFC}', "");
        let sender = if from_me {
            String::new()
        } else {
            handles.get(&handle).cloned().unwrap_or_default()
        };
        let t = time::message_date(date);
        convs.entry(chat).or_default().push(Message {
            date_utc: t.map(time::utc).unwrap_or_default(),
            date_local: t.map(time::local).unwrap_or_default(),
            from_me,
            sender_name: contacts::lookup(&names, &sender),
            sender,
            text,
            attachments: attachments
                .get(&id)
                .map(|a| a.0.clone())
                .unwrap_or_default(),
            missing: attachments
                .get(&id)
                .map(|a| a.1.clone())
                .unwrap_or_default(),
        });
    }
    let mut list = Vec::new();
    for (id, messages) in convs {
        let chat = chats.get(&id);
        let m = members.get(&id).cloned().unwrap_or_default();
        let title = title(chat, &m, &names);
        done.items += messages.len() as u64;
        list.push(Conversation {
            page: format!("{id:04} {}.html", safe_name(&title)),
            id,
            service: chat.map(|c| c.service.clone()).unwrap_or_default(),
            member_names: m
                .iter()
                .map(|h| contacts::lookup(&names, h).unwrap_or_else(|| h.clone()))
                .collect(),
            members: m,
            title,
            messages,
        });
    }
    done.conversations = list.len() as u64;
    for conv in &list {
        output::write(&out.join(&conv.page), page(conv).as_bytes())?;
    }
    done.files.push(output::write(
        &out.join("index.html"),
        index(&list).as_bytes(),
    )?);
    let json = out.join("messages.json");
    let mut p = Part::new(&json)?;
    serde_json::to_writer_pretty(&mut p.w, &serde_json::json!({ "conversations": list }))
        .map_err(|e| err(&json)(e.into()))?;
    p.w.write_all(b"\n").map_err(err(&json))?;
    done.files.push(p.finish()?);
    Ok(done)
}

fn handles(c: &Connection, layout: &Layout) -> Result<HashMap<i64, String>> {
    let mut s = c
        .prepare("SELECT ROWID, id FROM handle")
        .map_err(layout.unreadable())?;
    let v = s
        .query_map([], |r| {
            Ok((
                r.get(0)?,
                r.get::<_, Option<String>>(1)?.unwrap_or_default(),
            ))
        })
        .map_err(layout.unreadable())?
        .collect::<rusqlite::Result<HashMap<_, _>>>()
        .map_err(layout.unreadable())?;
    Ok(v)
}

fn chats(c: &Connection, layout: &Layout) -> Result<HashMap<i64, Chat>> {
    let cols = layout.columns(c, "chat")?;
    let mut s = c
        .prepare(&format!(
            "SELECT ROWID, chat_identifier, {}, {} FROM chat",
            or_null(&cols, "display_name"),
            or_null(&cols, "service_name")
        ))
        .map_err(layout.unreadable())?;
    let v = s
        .query_map([], |r| {
            Ok((
                r.get(0)?,
                Chat {
                    identifier: r.get::<_, Option<String>>(1)?.unwrap_or_default(),
                    display_name: r.get::<_, Option<String>>(2)?.filter(|n| !n.is_empty()),
                    service: r.get::<_, Option<String>>(3)?.unwrap_or_default(),
                },
            ))
        })
        .map_err(layout.unreadable())?
        .collect::<rusqlite::Result<HashMap<_, _>>>()
        .map_err(layout.unreadable())?;
    Ok(v)
}

/// Each chat's members' handles (chat_handle_join; none in old layouts).
fn members(
    c: &Connection,
    layout: &Layout,
    handles: &HashMap<i64, String>,
) -> Result<HashMap<i64, Vec<String>>> {
    let mut out: HashMap<i64, Vec<String>> = HashMap::new();
    if !layout.has_table("chat_handle_join") {
        return Ok(out);
    }
    let mut s = c
        .prepare("SELECT chat_id, handle_id FROM chat_handle_join ORDER BY chat_id, handle_id")
        .map_err(layout.unreadable())?;
    let rows = s
        .query_map([], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?)))
        .map_err(layout.unreadable())?;
    for row in rows {
        let (chat, h) = row.map_err(layout.unreadable())?;
        if let Some(id) = handles.get(&h) {
            out.entry(chat).or_default().push(id.clone());
        }
    }
    Ok(out)
}

fn title(chat: Option<&Chat>, members: &[String], names: &contacts::Names) -> String {
    if let Some(n) = chat.and_then(|c| c.display_name.clone()) {
        return n;
    }
    if !members.is_empty() {
        return members
            .iter()
            .map(|m| contacts::lookup(names, m).unwrap_or_else(|| m.clone()))
            .collect::<Vec<_>>()
            .join(", ");
    }
    // Messages no chat holds (id 0 here): imessage-exporter's "orphaned".
    chat.map(|c| c.identifier.clone())
        .unwrap_or_else(|| "Not in any conversation".into())
}

/// A message's attachments: paths below OUT, and names the backup lacks.
type Attached = (Vec<String>, Vec<String>);

/// Copy each message's attachments into OUT/attachments; message ROWID →
/// the paths below OUT, and the names of those the backup lacks.
fn attachments(
    src: &Source,
    c: &Connection,
    layout: &Layout,
    out: &Path,
    done: &mut Exported,
) -> Result<HashMap<i64, Attached>> {
    let mut map: HashMap<i64, Attached> = HashMap::new();
    let cols = layout.columns(c, "attachment")?;
    if !layout.has_table("message_attachment_join") || !cols.contains("filename") {
        return Ok(map);
    }
    let mut s = c
        .prepare(&format!(
            "SELECT j.message_id, a.ROWID, a.filename, {} FROM message_attachment_join j JOIN attachment a ON a.ROWID = j.attachment_id ORDER BY j.message_id, a.ROWID",
            or_null(&cols, "transfer_name")
        ))
        .map_err(layout.unreadable())?;
    let rows: Vec<(i64, i64, Option<String>, Option<String>)> = s
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
        .map_err(layout.unreadable())?
        .collect::<rusqlite::Result<_>>()
        .map_err(layout.unreadable())?;
    let dir = out.join("attachments");
    for (message, id, filename, transfer) in rows {
        let Some(filename) = filename else { continue };
        // `~/Library/SMS/Attachments/..` or `/var/mobile/Library/...`: MediaDomain.
        let rel = filename
            .strip_prefix("~/")
            .or_else(|| filename.strip_prefix("/var/mobile/"))
            .unwrap_or(&filename);
        let name = transfer.unwrap_or_else(|| rel.rsplit('/').next().unwrap_or("").to_string());
        let local = format!("attachments/{id:05} {}", safe_name(&name));
        output::make_dir(&dir)?;
        let to = out.join(&local);
        let part = to.with_extension("part-attachment");
        if src.copy("MediaDomain", rel, &part)? {
            std::fs::rename(&part, &to).map_err(err(&to))?;
            done.attachments += 1;
            map.entry(message).or_default().0.push(local);
        } else {
            done.missing_attachments.push(filename.clone());
            map.entry(message).or_default().1.push(name);
        }
    }
    Ok(map)
}

const STYLE: &str = "body{font-family:-apple-system,'Segoe UI',sans-serif;max-width:46em;margin:2em auto;padding:0 1em;color:#111}\
.m{margin:.4em 0;padding:.5em .8em;border-radius:1em;max-width:75%;clear:both}\
.me{background:#0b84ff;color:#fff;float:right}.them{background:#e9e9eb;float:left}\
.who{font-size:.8em;opacity:.75;display:block}time{font-size:.75em;opacity:.7;display:block}\
.m img{max-width:100%;border-radius:.5em}.end{clear:both}a.back{display:block;margin-bottom:1em}";

fn page(c: &Conversation) -> String {
    let mut h = format!(
        "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>{t}</title><style>{STYLE}</style></head><body>\n<a class=\"back\" href=\"index.html\">All conversations</a>\n<h1>{t}</h1>\n<p>{n} messages{members}</p>\n",
        t = text(&c.title),
        n = c.messages.len(),
        members = if c.members.is_empty() {
            String::new()
        } else {
            format!(" · {}", text(&c.member_names.join(", ")))
        },
    );
    for m in &c.messages {
        let who = if m.from_me {
            "Me".to_string()
        } else {
            m.sender_name.clone().unwrap_or_else(|| m.sender.clone())
        };
        h += &format!(
            "<div class=\"m {}\"><span class=\"who\">{}</span>{}",
            if m.from_me { "me" } else { "them" },
            text(&who),
            text(&m.text).replace('\n', "<br>")
        );
        for a in &m.attachments {
            let lower = a.to_lowercase();
            let image = [".jpg", ".jpeg", ".png", ".gif", ".heic", ".webp"]
                .iter()
                .any(|e| lower.ends_with(e));
            h += &if image {
                format!(
                    "<br><a href=\"{0}\"><img src=\"{0}\" alt=\"{1}\"></a>",
                    attr(&url(a)),
                    attr(a)
                )
            } else {
                format!("<br><a href=\"{}\">{}</a>", attr(&url(a)), text(a))
            };
        }
        for a in &m.missing {
            h += &format!("<br><em>({} is not in the backup)</em>", text(a));
        }
        h += &format!(
            "<time datetime=\"{}\">{}</time></div>\n",
            attr(&m.date_utc),
            text(&m.date_local)
        );
    }
    h + "<div class=\"end\"></div></body></html>\n"
}

/// A relative link to `path` (spaces and the like percent-encoded).
fn url(path: &str) -> String {
    path.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"/-_.~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

fn index(list: &[Conversation]) -> String {
    let mut h = format!(
        "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>Messages</title><style>{STYLE}</style></head><body>\n<h1>Messages</h1>\n<ul>\n"
    );
    for c in list {
        let last = c
            .messages
            .last()
            .map(|m| m.date_local.clone())
            .unwrap_or_default();
        h += &format!(
            "<li><a href=\"{}\">{}</a> — {} messages, last {}</li>\n",
            attr(&url(&c.page)),
            text(&c.title),
            c.messages.len(),
            text(&last)
        );
    }
    h + "</ul></body></html>\n"
}

/// The text of an `attributedBody` (an NSAttributedString in Apple's
/// typedstream format, which iOS 16 on fills instead of `text` for many
/// messages): the bytes of the first NSString after its class name.
pub fn decode_attributed_body(b: &[u8]) -> Option<String> {
    let at = find(b, b"NSString")? + b"NSString".len();
    let rest = &b[at..];
    // The string's bytes follow a `+` (0x2B) type tag, then a length: one
    // byte, or 0x81 and two bytes little-endian, or 0x82 and four.
    let plus = rest.iter().take(16).position(|&x| x == b'+')?;
    let rest = &rest[plus + 1..];
    let (len, skip): (usize, usize) = match *rest.first()? {
        0x81 => (
            u16::from_le_bytes([*rest.get(1)?, *rest.get(2)?]) as usize,
            3,
        ),
        0x82 => (
            u32::from_le_bytes([*rest.get(1)?, *rest.get(2)?, *rest.get(3)?, *rest.get(4)?])
                as usize,
            5,
        ),
        n if n < 0x80 => (n as usize, 1),
        _ => return None,
    };
    let bytes = rest.get(skip..skip.checked_add(len)?)?;
    String::from_utf8(bytes.to_vec()).ok()
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(s: &str) -> Vec<u8> {
        let mut b = b"\x04\x0bstreamtyped\x81\xe8\x03\x84\x01@\x84\x84\x84\x12NSAttributedString\x00\x84\x84\x08NSObject\x00\x85\x92\x84\x84\x84\x08NSString\x01\x94\x84\x01+".to_vec();
        let n = s.len();
        if n < 0x80 {
            b.push(n as u8);
        } else {
            b.push(0x81);
            b.extend_from_slice(&(n as u16).to_le_bytes());
        }
        b.extend_from_slice(s.as_bytes());
        b.extend_from_slice(b"\x86\x84\x02iI\x01");
        b
    }

    #[test]
    fn attributed_bodies_give_their_text_and_garbage_gives_none() {
        assert_eq!(
            decode_attributed_body(&body("hi 🙂")).as_deref(),
            Some("hi 🙂")
        );
        let long = "x".repeat(300);
        assert_eq!(
            decode_attributed_body(&body(&long)).as_deref(),
            Some(long.as_str())
        );
        let b = body("cut short");
        assert_eq!(decode_attributed_body(&b[..b.len() - 12]), None);
        assert_eq!(decode_attributed_body(b"NSString"), None);
        assert_eq!(decode_attributed_body(b""), None);
        assert_eq!(
            decode_attributed_body(b"NSString\x01+\x82\xff\xff\xff\xff"),
            None
        );
    }

    #[test]
    fn links_to_attachments_are_escaped() {
        assert_eq!(
            url("attachments/00001 IMG 1.jpeg"),
            "attachments/00001%20IMG%201.jpeg"
        );
        assert_eq!(url("a\"<b>"), "a%22%3Cb%3E");
    }
}
