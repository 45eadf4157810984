//! The call history (CallHistory.storedata, a Core Data store) as CSV.

use std::path::Path;

use crate::contacts;
use crate::error::{ExportError, Result};
use crate::output::{self, Part};
use crate::schema::{or_null, Layout};
use crate::source::{Db, Source};
use crate::time;
use crate::Exported;

pub const CALLS: Db = Db {
    what: "call history",
    file: "CallHistory.storedata",
    domain: "HomeDomain",
    path: "Library/CallHistoryDB/CallHistory.storedata",
};

pub const KNOWN: &str =
    "the CallHistory.storedata of iOS 8 to 18 (ZCALLRECORD; dates in seconds since 2001)";

fn kind(call_type: Option<i64>, provider: Option<&str>) -> &'static str {
    match (call_type, provider) {
        (Some(8), _) => "FaceTime video",
        (Some(16), _) => "FaceTime audio",
        (_, Some(p)) if p.contains("FaceTime") => "FaceTime",
        (Some(1), _) | (_, Some("com.apple.Telephony")) => "phone",
        (_, Some(p)) if !p.is_empty() => "app",
        _ => "phone",
    }
}

pub fn export(src: &Source, out: &Path) -> Result<Exported> {
    let c = src.require(&CALLS)?;
    let layout = Layout::read(&c, CALLS.file, KNOWN)?;
    let cols = layout.require(
        &c,
        "ZCALLRECORD",
        &["ZADDRESS", "ZDATE", "ZDURATION", "ZORIGINATED"],
    )?;
    let names = contacts::names(src);
    let opt = |c: &str| or_null(&cols, c);
    let mut s = c
        .prepare(&format!(
            "SELECT ZDATE, ZDURATION, ZORIGINATED, {}, CAST(ZADDRESS AS TEXT), {}, {}, {} FROM ZCALLRECORD ORDER BY ZDATE",
            opt("ZANSWERED"),
            opt("ZCALLTYPE"),
            opt("ZSERVICE_PROVIDER"),
            opt("ZNAME"),
        ))
        .map_err(layout.unreadable())?;
    let path = out.join("calls.csv");
    let mut part = Part::new(&path)?;
    let csv_err = |p: &Path| {
        let p = p.to_path_buf();
        move |e: csv::Error| ExportError::Output {
            path: p,
            source: e.into(),
        }
    };
    let mut w = csv::Writer::from_writer(&mut part.w);
    w.write_record([
        "date_utc",
        "date_local",
        "direction",
        "answered",
        "duration_seconds",
        "number",
        "name",
        "kind",
    ])
    .map_err(csv_err(&path))?;
    let mut rows = s.query([]).map_err(layout.unreadable())?;
    let mut n = 0u64;
    while let Some(r) = rows.next().map_err(layout.unreadable())? {
        let get = |e| layout.unreadable()(e);
        let date = r
            .get::<_, Option<f64>>(0)
            .map_err(get)?
            .and_then(time::apple_seconds);
        let duration = r.get::<_, Option<f64>>(1).map_err(get)?.unwrap_or(0.0);
        let originated = r.get::<_, Option<i64>>(2).map_err(get)?.unwrap_or(0) != 0;
        let answered = r.get::<_, Option<i64>>(3).map_err(get)?;
        let number = r
            .get::<_, Option<String>>(4)
            .map_err(get)?
            .unwrap_or_default();
        let call_type = r.get::<_, Option<i64>>(5).map_err(get)?;
        let provider = r.get::<_, Option<String>>(6).map_err(get)?;
        let name = r
            .get::<_, Option<String>>(7)
            .map_err(get)?
            .filter(|n| !n.is_empty())
            .or_else(|| contacts::lookup(&names, &number))
            .unwrap_or_default();
        w.write_record([
            date.map(time::utc).unwrap_or_default(),
            date.map(time::local_full).unwrap_or_default(),
            if originated { "outgoing" } else { "incoming" }.to_string(),
            match answered {
                Some(0) => "no",
                Some(_) => "yes",
                None => "",
            }
            .to_string(),
            format!("{}", duration.round() as i64),
            number,
            name,
            kind(call_type, provider.as_deref()).to_string(),
        ])
        .map_err(csv_err(&path))?;
        n += 1;
    }
    w.flush().map_err(output::err(&path))?;
    drop(w);
    let mut done = Exported {
        items: n,
        layout: "CallHistory.storedata".into(),
        ..Exported::default()
    };
    done.files.push(part.finish()?);
    Ok(done)
}
