//! The phone owner's messages, contacts, calendar and call history, as
//! iOS keeps them: SQLite databases with the tables and columns of the
//! real ones (iOS 16–18), so that a reader of real backups reads ours.
//!
//! Where the layouts come from (facts only; no code taken):
//! - sms.db: the columns imessage-exporter's `imessage-database` crate
//!   (5.0) reads from `message`, `chat`, `handle`, `attachment` and the
//!   join tables; dates are nanoseconds since 2001-01-01 (iOS 11 on).
//! - AddressBook.sqlitedb / AddressBookImages.sqlitedb: `ABPerson`,
//!   `ABMultiValue` (property 3 phone, 4 e-mail, labels in
//!   `ABMultiValueLabel`), `ABFullSizeImage`, as iLEAPP's address-book
//!   artifact reads them.
//! - Calendar.sqlitedb: `CalendarItem`, `Calendar`, `Store`, `Location`,
//!   dates in seconds since 2001, `start_tz` `_float` for floating times,
//!   birthdays with `calendar_scale` 'gregorian' (iLEAPP calendarAll.py).
//! - CallHistory.storedata: Core Data's `ZCALLRECORD` (iLEAPP callHistory).
//!
//! Every database carries `_SqliteDatabaseProperties` with a
//! `_ClientVersion`, as the real ones do.

use rand::{Rng, RngCore};
use rand_chacha::ChaCha8Rng;
use rusqlite::{params, Connection};

/// Seconds from 1970-01-01 to 2001-01-01, the epoch of Apple's dates.
pub const APPLE_EPOCH: i64 = 978_307_200;

/// The people the owner writes to: handle `i` is `+1555010{i:04}`.
pub const HANDLES: usize = 20;

/// Contacts whose phone numbers are handles (so exports can name senders).
pub const NAMED_HANDLES: usize = 12;

pub fn handle_number(i: usize) -> String {
    format!("+1555010{i:04}")
}

/// One message attachment: its file below MediaDomain and what sms.db says.
pub struct Attachment {
    pub guid: String,
    /// `Library/SMS/Attachments/...` in MediaDomain.
    pub path: String,
    pub size: u64,
}

fn properties(c: &Connection, version: &str) -> rusqlite::Result<()> {
    c.execute_batch("CREATE TABLE _SqliteDatabaseProperties (key TEXT, value TEXT, UNIQUE(key));")?;
    c.execute(
        "INSERT INTO _SqliteDatabaseProperties VALUES ('_ClientVersion', ?1)",
        params![version],
    )?;
    Ok(())
}

const SMS_SCHEMA: &str = "
CREATE TABLE handle (ROWID INTEGER PRIMARY KEY AUTOINCREMENT UNIQUE, id TEXT NOT NULL, country TEXT, service TEXT NOT NULL, uncanonicalized_id TEXT, person_centric_id TEXT, UNIQUE (id, service));
CREATE TABLE chat (ROWID INTEGER PRIMARY KEY AUTOINCREMENT, guid TEXT UNIQUE NOT NULL, style INTEGER, state INTEGER, account_id TEXT, properties BLOB, chat_identifier TEXT, service_name TEXT, room_name TEXT, account_login TEXT, is_archived INTEGER DEFAULT 0, last_addressed_handle TEXT, display_name TEXT, group_id TEXT, is_filtered INTEGER DEFAULT 0, successful_query INTEGER, engram_id TEXT, server_change_token TEXT, ck_sync_state INTEGER DEFAULT 0, original_group_id TEXT, last_read_message_timestamp INTEGER DEFAULT 0, cloudkit_record_id TEXT, last_addressed_sim_id TEXT, is_blackholed INTEGER DEFAULT 0, syndication_date INTEGER DEFAULT 0, syndication_type INTEGER DEFAULT 0, is_recovered INTEGER DEFAULT 0, is_deleting_incoming_messages INTEGER DEFAULT 0, is_pending_review INTEGER DEFAULT 0);
CREATE TABLE message (ROWID INTEGER PRIMARY KEY AUTOINCREMENT, guid TEXT UNIQUE NOT NULL, text TEXT, replace INTEGER DEFAULT 0, service_center TEXT, handle_id INTEGER DEFAULT 0, subject TEXT, country TEXT, attributedBody BLOB, version INTEGER DEFAULT 0, type INTEGER DEFAULT 0, service TEXT, account TEXT, account_guid TEXT, error INTEGER DEFAULT 0, date INTEGER, date_read INTEGER, date_delivered INTEGER, is_delivered INTEGER DEFAULT 0, is_finished INTEGER DEFAULT 0, is_emote INTEGER DEFAULT 0, is_from_me INTEGER DEFAULT 0, is_empty INTEGER DEFAULT 0, is_delayed INTEGER DEFAULT 0, is_auto_reply INTEGER DEFAULT 0, is_prepared INTEGER DEFAULT 0, is_read INTEGER DEFAULT 0, is_system_message INTEGER DEFAULT 0, is_sent INTEGER DEFAULT 0, has_dd_results INTEGER DEFAULT 0, is_service_message INTEGER DEFAULT 0, is_forward INTEGER DEFAULT 0, was_downgraded INTEGER DEFAULT 0, is_archive INTEGER DEFAULT 0, cache_has_attachments INTEGER DEFAULT 0, cache_roomnames TEXT, was_data_detected INTEGER DEFAULT 0, was_deduplicated INTEGER DEFAULT 0, is_audio_message INTEGER DEFAULT 0, is_played INTEGER DEFAULT 0, date_played INTEGER, item_type INTEGER DEFAULT 0, other_handle INTEGER DEFAULT 0, group_title TEXT, group_action_type INTEGER DEFAULT 0, share_status INTEGER DEFAULT 0, share_direction INTEGER DEFAULT 0, is_expirable INTEGER DEFAULT 0, expire_state INTEGER DEFAULT 0, message_action_type INTEGER DEFAULT 0, message_source INTEGER DEFAULT 0, associated_message_guid TEXT, associated_message_type INTEGER DEFAULT 0, balloon_bundle_id TEXT, payload_data BLOB, expressive_send_style_id TEXT, associated_message_range_location INTEGER DEFAULT 0, associated_message_range_length INTEGER DEFAULT 0, time_expressive_send_played INTEGER, message_summary_info BLOB, ck_sync_state INTEGER DEFAULT 0, ck_record_id TEXT, ck_record_change_tag TEXT, destination_caller_id TEXT, is_corrupt INTEGER DEFAULT 0, reply_to_guid TEXT, sort_id INTEGER, is_spam INTEGER DEFAULT 0, has_unseen_mention INTEGER DEFAULT 0, thread_originator_guid TEXT, thread_originator_part TEXT, syndication_ranges TEXT, synced_syndication_ranges TEXT, was_delivered_quietly INTEGER DEFAULT 0, did_notify_recipient INTEGER DEFAULT 0, date_retracted INTEGER, date_edited INTEGER, was_detonated INTEGER DEFAULT 0, part_count INTEGER, is_stewie INTEGER DEFAULT 0, is_kt_verified INTEGER DEFAULT 0, is_sos INTEGER DEFAULT 0, is_critical INTEGER DEFAULT 0, bia_reference_id TEXT, fallback_hash TEXT, associated_message_emoji TEXT, is_pending_satellite_send INTEGER DEFAULT 0, needs_relay INTEGER DEFAULT 0, schedule_type INTEGER DEFAULT 0, schedule_state INTEGER DEFAULT 0, sent_or_received_off_grid INTEGER DEFAULT 0);
CREATE TABLE attachment (ROWID INTEGER PRIMARY KEY AUTOINCREMENT, guid TEXT UNIQUE NOT NULL, created_date INTEGER DEFAULT 0, start_date INTEGER DEFAULT 0, filename TEXT, uti TEXT, mime_type TEXT, transfer_state INTEGER DEFAULT 0, is_outgoing INTEGER DEFAULT 0, user_info BLOB, transfer_name TEXT, total_bytes INTEGER DEFAULT 0, is_sticker INTEGER DEFAULT 0, sticker_user_info BLOB, attribution_info BLOB, hide_attachment INTEGER DEFAULT 0, ck_sync_state INTEGER DEFAULT 0, ck_server_change_token_blob BLOB, ck_record_id TEXT, original_guid TEXT UNIQUE NOT NULL, is_commsafety_sensitive INTEGER DEFAULT 0, emoji_image_content_identifier TEXT, emoji_image_short_description TEXT, preview_generation_state INTEGER DEFAULT 0);
CREATE TABLE chat_handle_join (chat_id INTEGER REFERENCES chat (ROWID) ON DELETE CASCADE, handle_id INTEGER REFERENCES handle (ROWID) ON DELETE CASCADE, UNIQUE(chat_id, handle_id));
CREATE TABLE chat_message_join (chat_id INTEGER REFERENCES chat (ROWID) ON DELETE CASCADE, message_id INTEGER REFERENCES message (ROWID) ON DELETE CASCADE, message_date INTEGER DEFAULT 0, PRIMARY KEY (chat_id, message_id));
CREATE TABLE message_attachment_join (message_id INTEGER REFERENCES message (ROWID) ON DELETE CASCADE, attachment_id INTEGER REFERENCES attachment (ROWID) ON DELETE CASCADE, UNIQUE(message_id, attachment_id));
CREATE TABLE deleted_messages (ROWID INTEGER PRIMARY KEY AUTOINCREMENT UNIQUE, guid TEXT NOT NULL);
CREATE TABLE chat_recoverable_message_join (chat_id INTEGER REFERENCES chat (ROWID) ON DELETE CASCADE, message_id INTEGER REFERENCES message (ROWID) ON DELETE CASCADE, delete_date INTEGER, ck_sync_state INTEGER DEFAULT 0, PRIMARY KEY (chat_id, message_id));
CREATE INDEX chat_message_join_idx_message_date_id_chat_id ON chat_message_join(chat_id, message_date, message_id);
";

/// Group chats after the one-to-one chats: (name, member handles).
const GROUPS: [(&str, [usize; 3]); 2] = [("Family", [0, 1, 2]), ("Climbing", [3, 5, 8])];

/// The handles, a chat with each, and the group chats with their members.
fn chats(c: &Connection) -> rusqlite::Result<()> {
    for h in 0..HANDLES {
        let service = if h % 3 == 0 { "SMS" } else { "iMessage" };
        c.execute(
            "INSERT INTO handle (id, country, service, uncanonicalized_id) VALUES (?1, 'us', ?2, ?1)",
            params![handle_number(h), service],
        )?;
        c.execute(
            "INSERT INTO chat (guid, style, state, account_id, chat_identifier, service_name, account_login, last_addressed_handle)
             VALUES (?1, 45, 3, 'SIM-ACCOUNT', ?2, ?3, 'E:owner@example.org', '+15550199999')",
            params![format!("{service};-;{}", handle_number(h)), handle_number(h), service],
        )?;
        c.execute(
            "INSERT INTO chat_handle_join VALUES (?1, ?1)",
            params![h as i64 + 1],
        )?;
    }
    for (g, (name, members)) in GROUPS.iter().enumerate() {
        c.execute(
            "INSERT INTO chat (guid, style, state, account_id, chat_identifier, service_name, room_name, display_name, group_id)
             VALUES (?1, 43, 3, 'SIM-ACCOUNT', ?2, 'iMessage', ?2, ?3, ?4)",
            params![
                format!("iMessage;+;chat{:018}", 100_000 + g),
                format!("chat{:018}", 100_000 + g),
                name,
                format!("SIM-GROUP-{g}")
            ],
        )?;
        for m in members {
            c.execute(
                "INSERT INTO chat_handle_join VALUES (?1, ?2)",
                params![(HANDLES + g + 1) as i64, *m as i64 + 1],
            )?;
        }
    }
    Ok(())
}

/// sms.db: one chat with each handle, two group chats, `n` messages
/// (every 50th with one of `attachments`), oldest first.
pub fn sms(
    c: &Connection,
    rng: &mut ChaCha8Rng,
    n: usize,
    attachments: &[Attachment],
    phrase: fn(&mut ChaCha8Rng, usize) -> String,
) -> rusqlite::Result<()> {
    c.execute_batch(SMS_SCHEMA)?;
    properties(c, "18026")?;
    chats(c)?;
    let chats = HANDLES + GROUPS.len();
    let start_ns = 700_000_000_000_000_000i64;
    for m in 0..n {
        let chat = rng.gen_range(0..chats);
        let from_me = rng.gen_bool(0.5);
        let handle = if chat < HANDLES {
            chat + 1
        } else if from_me {
            0
        } else {
            GROUPS[chat - HANDLES].1[rng.gen_range(0..3)] + 1
        };
        let words = rng.gen_range(1..12);
        let mut text = phrase(rng, words);
        let date = start_ns + m as i64 * 1_800_000_000_000 + rng.gen_range(0..1_000_000_000);
        let attachment = (m % 50 == 0).then(|| &attachments[(m / 50) % attachments.len().max(1)]);
        let attachment = attachment.filter(|_| !attachments.is_empty());
        if attachment.is_some() {
            // iOS marks where an attachment sits in the text with U+FFFC.
            text.insert(0, '\u{FFFC}');
        }
        let service = if chat < HANDLES && chat % 3 == 0 {
            "SMS"
        } else {
            "iMessage"
        };
        c.execute(
            "INSERT INTO message (guid, text, handle_id, service, account, account_guid, date, date_read, date_delivered,
                                  is_delivered, is_finished, is_from_me, is_read, is_sent, cache_has_attachments, destination_caller_id, part_count)
             VALUES (?1, ?2, ?3, ?4, 'E:owner@example.org', 'SIM-ACCOUNT', ?5, ?6, ?7, 1, 1, ?8, 1, ?8, ?9, '+15550199999', 1)",
            params![
                format!("{:08X}-SIM-MSG-{m:08}", rng.next_u32()),
                text,
                handle as i64,
                service,
                date,
                date + 60_000_000_000,
                date + 1_000_000_000,
                from_me as i64,
                attachment.is_some() as i64,
            ],
        )?;
        let id = c.last_insert_rowid();
        c.execute(
            "INSERT INTO chat_message_join VALUES (?1, ?2, ?3)",
            params![chat as i64 + 1, id, date],
        )?;
        if let Some(a) = attachment {
            let exists: bool = c.query_row(
                "SELECT COUNT(*) FROM attachment WHERE guid = ?1",
                params![a.guid],
                |r| r.get::<_, i64>(0).map(|n| n > 0),
            )?;
            if !exists {
                let name = a.path.rsplit('/').next().unwrap_or("");
                c.execute(
                    "INSERT INTO attachment (guid, created_date, filename, uti, mime_type, transfer_state, is_outgoing, transfer_name, total_bytes, original_guid)
                     VALUES (?1, ?2, ?3, 'public.jpeg', 'image/jpeg', 5, ?4, ?5, ?6, ?1)",
                    params![a.guid, date / 1_000_000_000, format!("~/{}", a.path), from_me as i64, name, a.size as i64],
                )?;
            }
            c.execute(
                "INSERT INTO message_attachment_join SELECT ?1, ROWID FROM attachment WHERE guid = ?2",
                params![id, a.guid],
            )?;
        }
    }
    Ok(())
}

const ADDRESS_BOOK_SCHEMA: &str = "
CREATE TABLE ABPerson (ROWID INTEGER PRIMARY KEY AUTOINCREMENT, First TEXT, Last TEXT, Middle TEXT, FirstPhonetic TEXT, MiddlePhonetic TEXT, LastPhonetic TEXT, Organization TEXT, Department TEXT, Note TEXT, Kind INTEGER, Birthday TEXT, JobTitle TEXT, Nickname TEXT, Prefix TEXT, Suffix TEXT, FirstSort TEXT, LastSort TEXT, CreationDate INTEGER, ModificationDate INTEGER, CompositeNameFallback TEXT, ExternalIdentifier TEXT, ExternalModificationTag TEXT, ExternalUUID TEXT, StoreID INTEGER, DisplayName TEXT, ExternalRepresentation BLOB, FirstSortSection TEXT, LastSortSection TEXT, FirstSortLanguageIndex INTEGER DEFAULT 2147483647, LastSortLanguageIndex INTEGER DEFAULT 2147483647, PersonLink INTEGER DEFAULT -1, ImageURI TEXT, IsPreferredName INTEGER DEFAULT 1, guid TEXT, PhonemeData TEXT, AlternateBirthday TEXT, MapsData TEXT, FirstPronunciation TEXT, MiddlePronunciation TEXT, LastPronunciation TEXT, OrganizationPhonetic TEXT, OrganizationPronunciation TEXT, PreviousFamilyName TEXT, PreferredLikenessSource TEXT, PreferredPersonaIdentifier TEXT, UNIQUE(guid));
CREATE TABLE ABMultiValue (UID INTEGER PRIMARY KEY, record_id INTEGER, property INTEGER, identifier INTEGER, label INTEGER, value TEXT, guid TEXT, UNIQUE(guid));
CREATE TABLE ABMultiValueLabel (value TEXT, UNIQUE(value));
CREATE TABLE ABMultiValueEntry (parent_id INTEGER, key INTEGER, value TEXT, UNIQUE(parent_id, key));
CREATE TABLE ABMultiValueEntryKey (value TEXT, UNIQUE(value));
CREATE TABLE ABGroup (ROWID INTEGER PRIMARY KEY AUTOINCREMENT, Name TEXT, ExternalIdentifier TEXT, StoreID INTEGER, guid TEXT);
CREATE TABLE ABStore (ROWID INTEGER PRIMARY KEY AUTOINCREMENT, Name TEXT, Type INTEGER, Enabled INTEGER DEFAULT 1);
";

/// One contact as written, for the simulator's own checks.
pub struct Contact {
    pub first: String,
    pub last: String,
}

/// AddressBook.sqlitedb: `people` contacts, the first [`NAMED_HANDLES`]
/// with a message handle's number (formatted as a person types it), the
/// others with a number of their own; every third an e-mail, every
/// seventh a company, some a birthday.
pub fn address_book(
    c: &Connection,
    rng: &mut ChaCha8Rng,
    people: &[Contact],
) -> rusqlite::Result<()> {
    c.execute_batch(ADDRESS_BOOK_SCHEMA)?;
    properties(c, "1600")?;
    c.execute_batch(
        "INSERT INTO ABMultiValueLabel (value) VALUES ('_$!<Mobile>!$_'), ('_$!<Home>!$_'), ('_$!<Work>!$_'), ('iPhone');
         INSERT INTO ABStore (Name, Type) VALUES ('Local', 0);",
    )?;
    for (i, p) in people.iter().enumerate() {
        let birthday = (i % 5 == 0).then(|| {
            // Midnight UTC of a day between 1950 and 2005, in seconds since 2001.
            let day = rng.gen_range(-18_600i64..1_600);
            format!("{}", day * 86_400)
        });
        c.execute(
            "INSERT INTO ABPerson (First, Last, Organization, Kind, Birthday, CreationDate, ModificationDate, StoreID, guid, Note)
             VALUES (?1, ?2, ?3, 0, ?4, ?5, ?5, 1, ?6, ?7)",
            params![
                p.first,
                p.last,
                (i % 7 == 0).then_some("Acme GmbH"),
                birthday,
                700_000_000 + i as i64 * 3_600,
                format!("SIM-PERSON-{i:05}:ABPerson"),
                (i % 11 == 0).then_some("Met at the conference;\nsays \"hi\", often"),
            ],
        )?;
        let id = c.last_insert_rowid();
        let phone = if i < NAMED_HANDLES {
            let n = handle_number(i);
            format!("+1 ({}) {}-{}", &n[2..5], &n[5..8], &n[8..])
        } else {
            format!("+1 555 01{:05}", rng.gen_range(0..99_999))
        };
        c.execute(
            "INSERT INTO ABMultiValue (record_id, property, identifier, label, value, guid) VALUES (?1, 3, 0, 1, ?2, ?3)",
            params![id, phone, format!("SIM-MV-{i:05}-P")],
        )?;
        if i % 3 == 0 {
            c.execute(
                "INSERT INTO ABMultiValue (record_id, property, identifier, label, value, guid) VALUES (?1, 4, 1, 2, ?2, ?3)",
                params![
                    id,
                    format!("{}.{}@example.org", ascii(&p.first), ascii(&p.last)),
                    format!("SIM-MV-{i:05}-E")
                ],
            )?;
        }
    }
    Ok(())
}

fn ascii(s: &str) -> String {
    s.chars()
        .filter(char::is_ascii_alphanumeric)
        .collect::<String>()
        .to_lowercase()
}

/// AddressBookImages.sqlitedb: a photo (JPEG bytes) for every fourth contact.
pub fn address_book_images(
    c: &Connection,
    rng: &mut ChaCha8Rng,
    people: usize,
) -> rusqlite::Result<()> {
    c.execute_batch(
        "CREATE TABLE ABFullSizeImage (ROWID INTEGER PRIMARY KEY AUTOINCREMENT, record_id INTEGER, crop_x INTEGER, crop_y INTEGER, crop_width INTEGER, crop_height INTEGER, data BLOB, UNIQUE(record_id));
         CREATE TABLE ABThumbnailImage (ROWID INTEGER PRIMARY KEY AUTOINCREMENT, record_id INTEGER, format INTEGER, derived_from_format INTEGER, data BLOB, UNIQUE(record_id, format));",
    )?;
    properties(c, "1600")?;
    for i in (0..people).step_by(4) {
        let mut data =
            b"\xff\xd8\xff\xe0\x00\x10JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00".to_vec();
        let mut body = vec![0u8; rng.gen_range(2_000..6_000)];
        rng.fill_bytes(&mut body);
        data.extend_from_slice(&body);
        data.extend_from_slice(b"\xff\xd9");
        c.execute(
            "INSERT INTO ABFullSizeImage (record_id, crop_x, crop_y, crop_width, crop_height, data) VALUES (?1, 0, 0, 600, 600, ?2)",
            params![i as i64 + 1, data],
        )?;
    }
    Ok(())
}

const CALENDAR_SCHEMA: &str = "
CREATE TABLE Store (ROWID INTEGER PRIMARY KEY AUTOINCREMENT, name TEXT, default_alarm_offset INTEGER, type INTEGER, constraint_path TEXT, disabled INTEGER, external_id TEXT, persistent_id TEXT, flags INTEGER);
CREATE TABLE Calendar (ROWID INTEGER PRIMARY KEY AUTOINCREMENT, store_id INTEGER, title TEXT, flags INTEGER, color TEXT, symbolic_color_name TEXT, color_display_only INTEGER, notes TEXT, UUID TEXT, sharing_status INTEGER DEFAULT 0, self_identity_email TEXT, owner_identity_email TEXT, owner_identity_id INTEGER, display_order INTEGER, type TEXT);
CREATE TABLE Location (ROWID INTEGER PRIMARY KEY AUTOINCREMENT, title TEXT, address TEXT, latitude REAL, longitude REAL, reference_frame INTEGER, radius REAL, item_owner_id INTEGER, external_rep BLOB);
CREATE TABLE CalendarItem (ROWID INTEGER PRIMARY KEY AUTOINCREMENT, summary TEXT, location_id INTEGER, description TEXT, start_date REAL, start_tz TEXT, end_date REAL, all_day INTEGER, calendar_id INTEGER, orig_item_id INTEGER DEFAULT 0, orig_date REAL, organizer_id INTEGER DEFAULT 0, self_attendee_id INTEGER DEFAULT 0, status INTEGER DEFAULT 0, availability INTEGER DEFAULT 0, privacy_level INTEGER DEFAULT 0, url TEXT, last_modified REAL, sequence_num INTEGER DEFAULT 0, birthday_id INTEGER DEFAULT -1, modified_properties INTEGER DEFAULT 0, external_tracking_status INTEGER DEFAULT 0, external_id TEXT, external_mod_tag TEXT, unique_identifier TEXT, shared_item_created_date REAL, shared_item_modified_date REAL, invitation_status INTEGER DEFAULT 0, show_as_notification INTEGER DEFAULT 0, hidden INTEGER DEFAULT 0, has_recurrences INTEGER DEFAULT 0, has_attendees INTEGER DEFAULT 0, UUID TEXT, entity_type INTEGER DEFAULT 2, creation_date REAL, end_tz TEXT, calendar_scale TEXT, conference_url TEXT);
CREATE TABLE Participant (ROWID INTEGER PRIMARY KEY AUTOINCREMENT, entity_type INTEGER, type INTEGER, status INTEGER, role INTEGER, identity_id INTEGER, owner_id INTEGER, email TEXT);
CREATE TABLE Identity (ROWID INTEGER PRIMARY KEY AUTOINCREMENT, display_name TEXT, address TEXT);
";

/// Calendar.sqlitedb: two calendars, `n` events (every eighth all day,
/// every fifth at a place, every sixth in floating time).
pub fn calendar(
    c: &Connection,
    rng: &mut ChaCha8Rng,
    n: usize,
    phrase: fn(&mut ChaCha8Rng, usize) -> String,
) -> rusqlite::Result<()> {
    c.execute_batch(CALENDAR_SCHEMA)?;
    properties(c, "18012")?;
    c.execute_batch(
        "INSERT INTO Store (name, type) VALUES ('Default', 0), ('iCloud', 2);
         INSERT INTO Calendar (store_id, title, color, UUID, type) VALUES (1, 'Home', '#1BADF8', 'SIM-CAL-HOME', 'local'), (2, 'Work', '#FF2968', 'SIM-CAL-WORK', 'caldav');",
    )?;
    for i in 0..n {
        let all_day = i % 8 == 0;
        let start = if all_day {
            // Midnight in floating time, as iOS stores all-day events.
            (rng.gen_range(700_000_000i64..730_000_000) / 86_400 * 86_400) as f64
        } else {
            rng.gen_range(700_000_000i64..730_000_000) as f64
        };
        let end = if all_day {
            start + 86_400.0
        } else {
            start + rng.gen_range(1..6) as f64 * 1_800.0
        };
        let tz = if all_day || i % 6 == 0 {
            "_float"
        } else {
            "Europe/Berlin"
        };
        let location = if i % 5 == 0 {
            c.execute(
                "INSERT INTO Location (title, address, latitude, longitude) VALUES (?1, 'Unter den Linden 1, Berlin', 52.517, 13.389)",
                params![format!("Café {}", phrase(rng, 1))],
            )?;
            c.last_insert_rowid()
        } else {
            0
        };
        let summary = phrase(rng, 3);
        c.execute(
            "INSERT INTO CalendarItem (summary, location_id, description, start_date, start_tz, end_date, end_tz, all_day, calendar_id, last_modified, unique_identifier, UUID, creation_date)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?5, ?7, ?8, ?9, ?10, ?10, ?9)",
            params![
                summary,
                location,
                (i % 4 == 0).then(|| format!("Bring: {}, {}\nthen: {}", phrase(rng, 1), phrase(rng, 1), phrase(rng, 2))),
                start,
                tz,
                end,
                all_day as i64,
                (i % 2) as i64 + 1,
                start - 86_400.0,
                format!("SIM-EVENT-{i:05}"),
            ],
        )?;
        if location != 0 {
            c.execute(
                "UPDATE Location SET item_owner_id = ?1 WHERE ROWID = ?2",
                params![c.last_insert_rowid(), location],
            )?;
        }
    }
    Ok(())
}

/// CallHistory.storedata: `n` calls with the handles, phone and FaceTime.
pub fn call_history(c: &Connection, rng: &mut ChaCha8Rng, n: usize) -> rusqlite::Result<()> {
    c.execute_batch(
        "CREATE TABLE ZCALLRECORD (Z_PK INTEGER PRIMARY KEY, Z_ENT INTEGER, Z_OPT INTEGER, ZANSWERED INTEGER, ZCALL_CATEGORY INTEGER, ZCALLTYPE INTEGER, ZDISCONNECTED_CAUSE INTEGER, ZFACE_TIME_DATA INTEGER, ZHANDLE_TYPE INTEGER, ZNUMBER_AVAILABILITY INTEGER, ZORIGINATED INTEGER, ZREAD INTEGER, ZJUNKCONFIDENCE INTEGER, ZJUNKIDENTIFICATIONCATEGORY INTEGER, ZDATE TIMESTAMP, ZDURATION FLOAT, ZADDRESS VARCHAR, ZDEVICE_ID VARCHAR, ZISO_COUNTRY_CODE VARCHAR, ZLOCATION VARCHAR, ZNAME VARCHAR, ZSERVICE_PROVIDER VARCHAR, ZUNIQUE_ID VARCHAR);
         CREATE TABLE Z_PRIMARYKEY (Z_ENT INTEGER PRIMARY KEY, Z_NAME VARCHAR, Z_SUPER INTEGER, Z_MAX INTEGER);
         CREATE TABLE Z_METADATA (Z_VERSION INTEGER PRIMARY KEY, Z_UUID VARCHAR(255), Z_PLIST BLOB);",
    )?;
    for i in 0..n {
        let facetime = i % 5 == 0;
        let originated = rng.gen_bool(0.5);
        let answered = originated || rng.gen_bool(0.8);
        c.execute(
            "INSERT INTO ZCALLRECORD (Z_PK, Z_ENT, Z_OPT, ZANSWERED, ZCALL_CATEGORY, ZCALLTYPE, ZHANDLE_TYPE, ZORIGINATED, ZREAD, ZDATE, ZDURATION, ZADDRESS, ZISO_COUNTRY_CODE, ZLOCATION, ZSERVICE_PROVIDER, ZUNIQUE_ID)
             VALUES (?1, 2, 1, ?2, 1, ?3, 2, ?4, 1, ?5, ?6, ?7, 'us', 'United States', ?8, ?9)",
            params![
                i as i64 + 1,
                answered as i64,
                if facetime { 8 } else { 1 },
                originated as i64,
                700_000_000.0 + i as f64 * 3600.0 + rng.gen_range(0.0..600.0),
                if answered { rng.gen_range(0.0..900.0) } else { 0.0 },
                handle_number(rng.gen_range(0..HANDLES)),
                if facetime { "com.apple.FaceTime" } else { "com.apple.Telephony" },
                format!("SIM-CALL-{i:06}"),
            ],
        )?;
    }
    c.execute(
        "INSERT INTO Z_PRIMARYKEY VALUES (2, 'CallRecord', 0, ?1)",
        params![n as i64],
    )?;
    Ok(())
}
