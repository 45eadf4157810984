//! The small plist services around a backup: notification_proxy,
//! installation_proxy and springboardservices, as values. Both travel in
//! the 32-bit length framing of [`crate::frame`]. Facts from
//! libimobiledevice `src/notification_proxy.c`, `src/installation_proxy.c`,
//! `src/sbservices.c` and pymobiledevice3 `services/`.

use plist::{Dictionary, Value};

use crate::plistx::{dict, DictExt};

pub const NOTIFICATION_PROXY: &str = "com.apple.mobile.notification_proxy";
pub const INSTALLATION_PROXY: &str = "com.apple.mobile.installation_proxy";
pub const SPRINGBOARD: &str = "com.apple.springboardservices";

/// A notification_proxy message, either direction.
#[derive(Debug, Clone, PartialEq)]
pub enum NpMessage {
    Observe(String),
    Post(String),
    Shutdown,
    /// The device's answer to Shutdown.
    ProxyDeath,
    /// The device relays an observed notification.
    RelayNotification(String),
    Other(Dictionary),
}

impl NpMessage {
    pub fn encode(&self) -> Value {
        let cmd = |c: &str, name: Option<&str>| {
            let mut d = dict([("Command", Value::from(c))]);
            if let Some(n) = name {
                d.insert("Name".into(), Value::from(n));
            }
            Value::Dictionary(d)
        };
        match self {
            NpMessage::Observe(n) => cmd("ObserveNotification", Some(n)),
            NpMessage::Post(n) => cmd("PostNotification", Some(n)),
            NpMessage::Shutdown => cmd("Shutdown", None),
            NpMessage::ProxyDeath => cmd("ProxyDeath", None),
            NpMessage::RelayNotification(n) => cmd("RelayNotification", Some(n)),
            NpMessage::Other(d) => Value::Dictionary(d.clone()),
        }
    }

    pub fn decode(d: &Dictionary) -> NpMessage {
        let name = || d.str_of("Name").unwrap_or_default().to_string();
        match d.str_of("Command") {
            Some("ObserveNotification") => NpMessage::Observe(name()),
            Some("PostNotification") => NpMessage::Post(name()),
            Some("Shutdown") => NpMessage::Shutdown,
            Some("ProxyDeath") => NpMessage::ProxyDeath,
            Some("RelayNotification") => NpMessage::RelayNotification(name()),
            _ => NpMessage::Other(d.clone()),
        }
    }
}

/// installation_proxy `Browse` for user apps with the attributes a backup needs.
pub fn browse_user_apps() -> Dictionary {
    let options = dict([
        ("ApplicationType", Value::from("User")),
        (
            "ReturnAttributes",
            Value::Array(vec![
                "CFBundleIdentifier".into(),
                "ApplicationSINF".into(),
                "iTunesMetadata".into(),
            ]),
        ),
    ]);
    dict([
        ("Command", Value::from("Browse")),
        ("ClientOptions", Value::Dictionary(options)),
    ])
}

/// One page of a Browse answer: `{Status: BrowsingApplications, CurrentList, …}`.
pub fn browse_page(apps: Vec<Value>, index: u64, total: u64) -> Dictionary {
    dict([
        ("Status", Value::from("BrowsingApplications")),
        ("CurrentIndex", Value::from(index)),
        ("CurrentAmount", Value::from(apps.len() as u64)),
        ("Total", Value::from(total)),
        ("CurrentList", Value::Array(apps)),
    ])
}

/// The last message of a Browse answer.
pub fn browse_complete() -> Dictionary {
    dict([("Status", Value::from("Complete"))])
}

/// What a Browse answer message holds: its apps, and whether it is the last.
pub fn parse_browse(d: &Dictionary) -> (Vec<Dictionary>, bool) {
    let apps = d
        .get("CurrentList")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_dictionary)
        .cloned()
        .collect();
    let last = d.str_of("Status") == Some("Complete") || d.contains_key("Error");
    (apps, last)
}

/// springboardservices: ask for an app's icon as PNG.
pub fn icon_request(bundle_id: &str) -> Dictionary {
    dict([
        ("command", Value::from("getIconPNGData")),
        ("bundleId", Value::from(bundle_id)),
    ])
}

pub fn icon_response(png: Vec<u8>) -> Dictionary {
    dict([("pngData", Value::Data(png))])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notification_messages_round_trip() {
        for m in [
            NpMessage::Observe("a".into()),
            NpMessage::Post("b".into()),
            NpMessage::Shutdown,
            NpMessage::ProxyDeath,
            NpMessage::RelayNotification("c".into()),
        ] {
            let Value::Dictionary(d) = m.encode() else {
                panic!()
            };
            assert_eq!(NpMessage::decode(&d), m);
        }
        assert!(matches!(
            NpMessage::decode(&Dictionary::new()),
            NpMessage::Other(_)
        ));
    }

    #[test]
    fn browse_pages_parse() {
        let app = Value::Dictionary(dict([("CFBundleIdentifier", Value::from("x.y"))]));
        let (apps, last) = parse_browse(&browse_page(vec![app], 0, 1));
        assert_eq!(apps.len(), 1);
        assert!(!last);
        assert!(parse_browse(&browse_complete()).1);
        assert_eq!(browse_user_apps().str_of("Command"), Some("Browse"));
        assert_eq!(icon_request("x.y").str_of("bundleId"), Some("x.y"));
        assert!(icon_response(vec![1]).data_of("pngData").is_some());
    }
}
