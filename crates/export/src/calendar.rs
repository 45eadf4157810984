//! The calendar (Calendar.sqlitedb) as one iCalendar file.

use std::path::Path;

use icalendar::{Calendar, Component, Event, EventLike};
use rusqlite::Connection;

use crate::error::Result;
use crate::output;
use crate::schema::{or_null, Layout};
use crate::source::{Db, Source};
use crate::time;
use crate::Exported;

pub const CALENDAR: Db = Db {
    what: "calendar",
    file: "Calendar.sqlitedb",
    domain: "HomeDomain",
    path: "Library/Calendar/Calendar.sqlitedb",
};

pub const KNOWN: &str = "the Calendar.sqlitedb of iOS 9 to 18 (CalendarItem with Calendar and Location; dates in seconds since 2001)";

struct Item {
    id: i64,
    summary: String,
    description: Option<String>,
    start: f64,
    end: Option<f64>,
    tz: Option<String>,
    all_day: bool,
    uid: Option<String>,
    calendar: Option<String>,
    location: Option<String>,
    modified: Option<f64>,
}

fn items(c: &Connection) -> Result<Vec<Item>> {
    let layout = Layout::read(c, CALENDAR.file, KNOWN)?;
    let cols = layout.require(
        c,
        "CalendarItem",
        &["ROWID", "summary", "start_date", "end_date"],
    )?;
    let opt = |c: &str| or_null(&cols, c);
    let calendar = if layout.has_table("Calendar") && cols.contains("calendar_id") {
        "(SELECT k.title FROM Calendar k WHERE k.ROWID = i.calendar_id)"
    } else {
        "NULL"
    };
    let location = if layout.columns(c, "Location")?.contains("address")
        && cols.contains("location_id")
    {
        "(SELECT trim(coalesce(l.title, '') || ', ' || coalesce(l.address, ''), ', ') FROM Location l WHERE l.ROWID = i.location_id)"
    } else {
        "NULL"
    };
    // Reminders and birthdays live in other tables (or other scales) and
    // are not events.
    let events_only = if cols.contains("entity_type") {
        "WHERE coalesce(i.entity_type, 2) = 2"
    } else {
        ""
    };
    let sql = format!(
        "SELECT i.ROWID, i.summary, {}, i.start_date, i.end_date, {}, {}, {}, {calendar}, {location}, {} FROM CalendarItem i {events_only} ORDER BY i.start_date, i.ROWID",
        opt("description"),
        opt("start_tz"),
        opt("all_day"),
        opt("unique_identifier"),
        opt("last_modified"),
    );
    let mut s = c.prepare(&sql).map_err(layout.unreadable())?;
    let v = s
        .query_map([], |r| {
            Ok(Item {
                id: r.get(0)?,
                summary: r.get::<_, Option<String>>(1)?.unwrap_or_default(),
                description: r.get::<_, Option<String>>(2)?.filter(|d| !d.is_empty()),
                start: r.get::<_, Option<f64>>(3)?.unwrap_or(0.0),
                end: r.get(4)?,
                tz: r.get(5)?,
                all_day: r.get::<_, Option<i64>>(6)?.unwrap_or(0) != 0,
                uid: r.get::<_, Option<String>>(7)?.filter(|u| !u.is_empty()),
                calendar: r.get(8)?,
                location: r.get::<_, Option<String>>(9)?.filter(|l| !l.is_empty()),
                modified: r.get(10)?,
            })
        })
        .map_err(layout.unreadable())?
        .collect::<rusqlite::Result<_>>()
        .map_err(layout.unreadable())?;
    Ok(v)
}

fn utc(secs: f64) -> Option<chrono::DateTime<chrono::Utc>> {
    let t = time::apple_seconds(secs)?;
    chrono::DateTime::from_timestamp(t.as_second(), 0)
}

fn event(i: &Item) -> Event {
    let mut e = Event::new();
    e.summary(&i.summary);
    e.uid(
        &i.uid
            .clone()
            .unwrap_or_else(|| format!("ibackup-calendar-item-{}", i.id)),
    );
    let floating = i.tz.as_deref() == Some("_float");
    match (utc(i.start), i.end.and_then(utc)) {
        (Some(s), end) if i.all_day => {
            e.starts(s.date_naive());
            if let Some(end) = end.filter(|end| end.date_naive() > s.date_naive()) {
                e.ends(end.date_naive());
            }
        }
        // Floating times are wall-clock times, stored as if they were UTC.
        (Some(s), end) if floating => {
            e.starts(s.naive_utc());
            if let Some(end) = end {
                e.ends(end.naive_utc());
            }
        }
        (Some(s), end) => {
            e.starts(s);
            if let Some(end) = end {
                e.ends(end);
            }
        }
        (None, _) => {}
    }
    if let Some(d) = &i.description {
        e.description(d);
    }
    if let Some(l) = &i.location {
        e.location(l);
    }
    if let Some(k) = &i.calendar {
        e.add_property("CATEGORIES", k);
    }
    if let Some(m) = i.modified.and_then(utc) {
        e.timestamp(m);
    }
    e.done()
}

pub fn export(src: &Source, out: &Path) -> Result<Exported> {
    let c = src.require(&CALENDAR)?;
    let list = items(&c)?;
    let mut cal = Calendar::new();
    cal.name("Calendar (from an iOS backup)");
    for i in &list {
        cal.push(event(i));
    }
    let mut done = Exported {
        items: list.len() as u64,
        layout: "Calendar.sqlitedb".into(),
        ..Exported::default()
    };
    done.files.push(output::write(
        &out.join("calendar.ics"),
        cal.done().to_string().as_bytes(),
    )?);
    Ok(done)
}
