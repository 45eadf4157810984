//! The categories a user thinks in ("photos", "messages"), mapped to the
//! backup domains and paths that hold them. This table is the one place the
//! mapping lives; `docs/categories.md` prints it for users.
//!
//! Sources: the shared format fact sheet §4 (domain and path table), with
//! the referee readers' own tables (iphone_backup_decrypt `RelativePath`,
//! pymobiledevice3 backup selections). SQLite databases travel with their
//! `-wal` and `-shm` siblings, which a path prefix carries along.

use crate::error::{Result, StoreError};

/// One rule: rows of `domain` (or of every domain starting with it, when it
/// ends in `*`) whose relative path is `prefix`, or lies below it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rule {
    pub domain: &'static str,
    /// Empty: the whole domain.
    pub prefix: &'static str,
}

pub struct Category {
    pub name: &'static str,
    pub what: &'static str,
    pub rules: &'static [Rule],
    /// Only present in encrypted backups (the device leaves it out otherwise).
    pub encrypted_only: bool,
}

const fn r(domain: &'static str, prefix: &'static str) -> Rule {
    Rule { domain, prefix }
}

pub const CATEGORIES: &[Category] = &[
    Category {
        name: "photos",
        what: "camera roll: photos, videos, the Photos library and its thumbnails",
        rules: &[r("CameraRollDomain", "")],
        encrypted_only: false,
    },
    Category {
        name: "messages",
        what: "iMessage and SMS, with attachments",
        rules: &[
            r("HomeDomain", "Library/SMS"),
            r("MediaDomain", "Library/SMS"),
        ],
        encrypted_only: false,
    },
    Category {
        name: "contacts",
        what: "the address book and its images",
        rules: &[r("HomeDomain", "Library/AddressBook")],
        encrypted_only: false,
    },
    Category {
        name: "call-history",
        what: "calls made and received",
        rules: &[
            r("HomeDomain", "Library/CallHistoryDB"),
            r("WirelessDomain", "Library/CallHistory"),
        ],
        encrypted_only: false,
    },
    Category {
        name: "notes",
        what: "Notes (the notes group container, and the pre-iOS 9 store)",
        rules: &[
            r("AppDomainGroup-group.com.apple.notes", ""),
            r("HomeDomain", "Library/Notes"),
        ],
        encrypted_only: false,
    },
    Category {
        name: "calendars",
        what: "calendars and reminders kept on the device",
        rules: &[r("HomeDomain", "Library/Calendar")],
        encrypted_only: false,
    },
    Category {
        name: "voice-memos",
        what: "Voice Memos recordings",
        rules: &[
            r("MediaDomain", "Media/Recordings"),
            r("AppDomainGroup-group.com.apple.VoiceMemos.shared", ""),
        ],
        encrypted_only: false,
    },
    Category {
        name: "safari",
        what: "Safari bookmarks, history and tabs",
        rules: &[
            r("HomeDomain", "Library/Safari"),
            r("AppDomain-com.apple.mobilesafari", ""),
        ],
        encrypted_only: false,
    },
    Category {
        name: "whatsapp",
        what: "WhatsApp chats, media and settings",
        rules: &[
            r("AppDomain-net.whatsapp.WhatsApp", ""),
            r("AppDomainGroup-group.net.whatsapp.*", ""),
            r("AppDomainPlugin-net.whatsapp.WhatsApp.*", ""),
        ],
        encrypted_only: false,
    },
    Category {
        name: "health",
        what: "Health data (encrypted backups only)",
        rules: &[r("HealthDomain", "")],
        encrypted_only: true,
    },
    Category {
        name: "keychain",
        what: "saved passwords and keys (encrypted backups only)",
        rules: &[r("KeychainDomain", "")],
        encrypted_only: true,
    },
];

/// Does `path` equal `prefix` or lie below it?
fn under(path: &str, prefix: &str) -> bool {
    prefix.is_empty()
        || (path.starts_with(prefix)
            && (path.len() == prefix.len() || path.as_bytes()[prefix.len()] == b'/'))
}

fn domain_matches(pattern: &str, domain: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(stem) => domain.starts_with(stem),
        None => pattern == domain,
    }
}

impl Rule {
    pub fn matches(&self, domain: &str, path: &str) -> bool {
        domain_matches(self.domain, domain) && under(path, self.prefix)
    }
}

/// The key ibackup adds to the Info.plist it writes for a backup made with
/// `--only`: [`Selection::names`], the categories (and `domain:` names) it
/// kept. Host-written, like the rest of Info.plist; other readers ignore it.
pub const INFO_ONLY_KEY: &str = "ibackup Only";

/// What `--only` and `--domain` select. Empty: everything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Selection {
    /// Category names as given (checked), for messages.
    pub categories: Vec<String>,
    /// Whole domains given with `--domain`, as given.
    pub domains: Vec<String>,
    rules: Vec<OwnedRule>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct OwnedRule {
    domain: String,
    prefix: String,
}

impl Selection {
    /// `only`: comma-separated category names or `app:<bundle id>`;
    /// `domains`: whole domains (a trailing `*` matches a prefix).
    pub fn parse(only: &[String], domains: &[String]) -> Result<Selection> {
        let mut s = Selection::default();
        for item in only.iter().flat_map(|o| o.split(',')) {
            let item = item.trim();
            if item.is_empty() {
                continue;
            }
            if let Some(bundle) = item.strip_prefix("app:") {
                if bundle.is_empty() || bundle.contains(['/', '*', '\0']) {
                    return Err(StoreError::Record(format!(
                        "{item:?} is not an app: give app:<bundle id>, e.g. app:net.whatsapp.WhatsApp"
                    )));
                }
                for d in [
                    format!("AppDomain-{bundle}"),
                    format!("AppDomainPlugin-{bundle}.*"),
                    format!("AppDomainGroup-group.{bundle}*"),
                ] {
                    s.rules.push(OwnedRule {
                        domain: d,
                        prefix: String::new(),
                    });
                }
            } else {
                let Some(c) = CATEGORIES.iter().find(|c| c.name == item) else {
                    return Err(StoreError::Record(format!(
                        "unknown category {item:?}; known: {}, app:<bundle id>",
                        CATEGORIES
                            .iter()
                            .map(|c| c.name)
                            .collect::<Vec<_>>()
                            .join(", ")
                    )));
                };
                for rule in c.rules {
                    s.rules.push(OwnedRule {
                        domain: rule.domain.into(),
                        prefix: rule.prefix.into(),
                    });
                }
            }
            s.categories.push(item.to_string());
        }
        for d in domains {
            if d.is_empty() || d.contains(['/', '\0']) {
                return Err(StoreError::Record(format!("{d:?} is not a domain name")));
            }
            s.rules.push(OwnedRule {
                domain: d.clone(),
                prefix: String::new(),
            });
            s.domains.push(d.clone());
        }
        Ok(s)
    }

    /// What was chosen, as the user named it: the categories, then the
    /// domains (`domain:<name>`), for messages and records.
    pub fn names(&self) -> Vec<String> {
        self.categories
            .iter()
            .cloned()
            .chain(self.domains.iter().map(|d| format!("domain:{d}")))
            .collect()
    }

    /// Nothing chosen: everything is selected.
    pub fn is_all(&self) -> bool {
        self.rules.is_empty()
    }

    pub fn matches(&self, domain: &str, path: &str) -> bool {
        self.is_all()
            || self
                .rules
                .iter()
                .any(|r| domain_matches(&r.domain, domain) && under(path, &r.prefix))
    }

    /// Is this row a folder above something selected (kept so a filtered
    /// backup still describes the folders its files live in)?
    pub fn is_ancestor(&self, domain: &str, path: &str) -> bool {
        self.rules.iter().any(|r| {
            domain_matches(&r.domain, domain)
                && !r.prefix.is_empty()
                && (path.is_empty() || under(&r.prefix, path))
        })
    }

    /// Categories chosen that only encrypted backups hold.
    pub fn encrypted_only(&self) -> Vec<&'static str> {
        CATEGORIES
            .iter()
            .filter(|c| c.encrypted_only && self.categories.iter().any(|n| n == c.name))
            .map(|c| c.name)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sel(only: &[&str]) -> Selection {
        Selection::parse(&only.iter().map(|s| s.to_string()).collect::<Vec<_>>(), &[]).unwrap()
    }

    #[test]
    fn categories_select_their_domains_and_paths_only() {
        let s = sel(&["messages"]);
        assert!(s.matches("HomeDomain", "Library/SMS/sms.db"));
        assert!(s.matches("HomeDomain", "Library/SMS/sms.db-wal"));
        assert!(s.matches("HomeDomain", "Library/SMS"));
        assert!(s.matches("MediaDomain", "Library/SMS/Attachments/ab/01/x.jpeg"));
        assert!(!s.matches("HomeDomain", "Library/SMSX/other"));
        assert!(!s.matches("HomeDomain", "Library/AddressBook/AddressBook.sqlitedb"));
        assert!(!s.matches("CameraRollDomain", "Media/DCIM/100APPLE/IMG_0001.HEIC"));
        assert!(s.is_ancestor("HomeDomain", "Library"));
        assert!(s.is_ancestor("HomeDomain", ""));
        assert!(!s.is_ancestor("HomeDomain", "Library/Preferences"));
        assert!(!s.is_ancestor("RootDomain", ""));

        let p = sel(&["photos"]);
        assert!(p.matches("CameraRollDomain", ""));
        assert!(p.matches("CameraRollDomain", "Media/PhotoData/Photos.sqlite"));
        assert!(!p.matches("MediaDomain", "Media/Recordings/a.m4a"));
    }

    #[test]
    fn apps_and_domains_and_lists() {
        let s = sel(&["app:net.whatsapp.WhatsApp,contacts"]);
        assert_eq!(s.categories, ["app:net.whatsapp.WhatsApp", "contacts"]);
        assert!(s.matches("AppDomain-net.whatsapp.WhatsApp", "Documents/x"));
        assert!(s.matches(
            "AppDomainGroup-group.net.whatsapp.WhatsApp.shared",
            "ChatStorage.sqlite"
        ));
        assert!(s.matches("AppDomainPlugin-net.whatsapp.WhatsApp.Share", "x"));
        assert!(!s.matches("AppDomain-net.whatsapp.WhatsAppBusiness", "x"));
        assert!(s.matches("HomeDomain", "Library/AddressBook/AddressBook.sqlitedb"));

        let d = Selection::parse(&[], &["KeychainDomain".into()]).unwrap();
        assert!(d.matches("KeychainDomain", "keychain-backup.plist"));
        assert!(!d.matches("HealthDomain", "x"));
        assert!(Selection::parse(&[], &[]).unwrap().matches("Any", "thing"));
        assert_eq!(sel(&["health", "photos"]).encrypted_only(), ["health"]);
    }

    #[test]
    fn docs_list_the_same_rules() {
        let doc = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../docs/categories.md"
        ))
        .unwrap();
        for c in CATEGORIES {
            assert!(
                doc.contains(&format!("| `{}` | {} |", c.name, c.what)),
                "{} in docs/categories.md",
                c.name
            );
            for rule in c.rules {
                let path = if rule.prefix.is_empty() {
                    "(all)".to_string()
                } else {
                    format!("`{}`", rule.prefix)
                };
                assert!(
                    doc.contains(&format!("| `{}` | {path} |", rule.domain)),
                    "{rule:?} in docs/categories.md"
                );
            }
        }
    }

    #[test]
    fn unknown_names_are_refused_with_the_known_ones() {
        let e = Selection::parse(&["fotos".into()], &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("fotos") && e.contains("photos, messages"), "{e}");
        assert!(Selection::parse(&["app:".into()], &[]).is_err());
        assert!(Selection::parse(&[], &["../x".into()]).is_err());
    }
}
