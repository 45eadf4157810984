//! The configuration file (TOML) for unattended use: the backup folder,
//! retention, the password file, a log file, per-device settings. Flags
//! override it. Found at `--config FILE`, `$IBACKUP_CONFIG`, or the
//! platform's config folder (`~/.config/ibackup/config.toml` on Linux,
//! `~/Library/Application Support/ibackup/config.toml` on macOS,
//! `%APPDATA%\ibackup\config.toml` on Windows). See docs/nightly.md.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ibackup_engine::EngineError;
use serde::Deserialize;

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The backup folder, when DIR is left out.
    pub dir: Option<PathBuf>,
    pub password_file: Option<PathBuf>,
    pub log_file: Option<PathBuf>,
    /// `--log-format`: text or json.
    pub log_format: Option<crate::LogFormat>,
    /// `watch --every`, e.g. "24h".
    pub every: Option<String>,
    /// `--wait-for-device`, e.g. "10m".
    pub wait_for_device: Option<String>,
    pub trust_timeout: Option<u64>,
    /// `--stall-timeout`, e.g. "30m".
    pub stall_timeout: Option<String>,
    /// `--transport`: auto, usbmuxd or usb.
    pub transport: Option<crate::TransportChoice>,
    #[serde(default)]
    pub keep: KeepConfig,
    #[serde(default)]
    pub devices: BTreeMap<String, DeviceConfig>,
}

#[derive(Debug, Default, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeepConfig {
    pub last: Option<usize>,
    pub daily: Option<usize>,
    pub weekly: Option<usize>,
    pub monthly: Option<usize>,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceConfig {
    /// Categories kept in this device's backups (`backup --only`).
    #[serde(default)]
    pub only: Vec<String>,
    pub password_file: Option<PathBuf>,
    /// Leave this device out of `watch`.
    #[serde(default)]
    pub skip: bool,
}

/// Where the configuration file is looked for when none is named.
pub fn default_path() -> Option<PathBuf> {
    let env = |k: &str| {
        std::env::var_os(k)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    if cfg!(windows) {
        return env("APPDATA").map(|d| d.join("ibackup").join("config.toml"));
    }
    if cfg!(target_os = "macos") {
        return env("HOME").map(|h| h.join("Library/Application Support/ibackup/config.toml"));
    }
    env("XDG_CONFIG_HOME")
        .or_else(|| env("HOME").map(|h| h.join(".config")))
        .map(|d| d.join("ibackup").join("config.toml"))
}

impl Config {
    /// Read the file named (which must exist), else the default one if present.
    pub fn load(named: Option<&Path>) -> Result<Config, EngineError> {
        let from_env = std::env::var_os("IBACKUP_CONFIG").map(PathBuf::from);
        let (path, required) = match named.map(Path::to_path_buf).or(from_env) {
            Some(p) => (p, true),
            None => match default_path() {
                Some(p) => (p, false),
                None => return Ok(Config::default()),
            },
        };
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if !required && e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(Config::default())
            }
            Err(e) => {
                return Err(EngineError::Usage(format!(
                    "cannot read the configuration file {}: {e}",
                    path.display()
                )))
            }
        };
        let c: Config = toml::from_str(&text).map_err(|e| {
            // The parser's text ends in a newline; the sentence's full stop follows it.
            EngineError::Usage(format!(
                "configuration file {}: {}",
                path.display(),
                e.to_string().trim_end()
            ))
        })?;
        for d in [&c.every, &c.wait_for_device].into_iter().flatten() {
            parse_duration(d)?;
        }
        Ok(c)
    }

    pub fn device(&self, udid: &str) -> DeviceConfig {
        self.devices.get(udid).cloned().unwrap_or_default()
    }
}

/// "90s", "10m", "24h", "7d", "1h30m"; a bare number is seconds.
pub fn parse_duration(s: &str) -> Result<Duration, EngineError> {
    let bad = || {
        EngineError::Usage(format!(
            "{s:?} is not a duration; write e.g. 90s, 10m, 24h, 7d or 1h30m"
        ))
    };
    let s = s.trim();
    if s.is_empty() {
        return Err(bad());
    }
    if let Ok(n) = s.parse::<u64>() {
        return Ok(Duration::from_secs(n));
    }
    let (mut total, mut num) = (0u64, String::new());
    for c in s.chars() {
        if c.is_ascii_digit() {
            num.push(c);
            continue;
        }
        let unit = match c {
            's' => 1,
            'm' => 60,
            'h' => 3600,
            'd' => 86_400,
            'w' => 7 * 86_400,
            _ => return Err(bad()),
        };
        let n: u64 = num.parse().map_err(|_| bad())?;
        total = total
            .checked_add(n.checked_mul(unit).ok_or_else(bad)?)
            .ok_or_else(bad)?;
        num.clear();
    }
    if !num.is_empty() {
        return Err(bad());
    }
    Ok(Duration::from_secs(total))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("90").unwrap().as_secs(), 90);
        assert_eq!(parse_duration("10m").unwrap().as_secs(), 600);
        assert_eq!(parse_duration("1h30m").unwrap().as_secs(), 5400);
        assert_eq!(parse_duration("7d").unwrap().as_secs(), 604_800);
        for bad in ["", "h", "10x", "5m3", "-1s"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_example_in_the_nightly_docs_parses() {
        let doc = include_str!("../../../docs/nightly.md");
        let start = doc.find("```toml\n").expect("a toml block") + "```toml\n".len();
        let end = start + doc[start..].find("```").expect("its end");
        let c: Config = toml::from_str(&doc[start..end]).expect("the documented example");
        assert_eq!(c.stall_timeout.as_deref(), Some("30m"));
        assert_eq!(c.trust_timeout, Some(60));
        assert_eq!(c.devices.len(), 2);
    }

    #[test]
    fn a_full_file_parses_and_typos_are_errors() {
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("c.toml");
        std::fs::write(
            &p,
            r#"
dir = "/srv/iphone"
password_file = "/etc/ibackup/pw"
log_file = "/var/log/ibackup.log"
every = "24h"
wait_for_device = "10m"
[keep]
last = 7
daily = 14
[devices."00008110-AAAA"]
only = ["photos", "messages"]
"#,
        )
        .unwrap();
        let c = Config::load(Some(&p)).unwrap();
        assert_eq!(c.dir.as_deref(), Some(Path::new("/srv/iphone")));
        assert_eq!(c.keep.daily, Some(14));
        assert_eq!(c.device("00008110-AAAA").only, ["photos", "messages"]);
        assert!(c.device("other").only.is_empty());
        std::fs::write(&p, "dirr = \"/x\"\n").unwrap();
        match Config::load(Some(&p)) {
            Err(EngineError::Usage(why)) => {
                assert!(why.contains("unknown field `dirr`"), "{why}");
                assert!(!why.ends_with(char::is_whitespace), "{why:?}");
            }
            other => panic!("unknown keys are refused: {other:?}"),
        }
        std::fs::write(&p, "every = \"daily\"\n").unwrap();
        assert!(Config::load(Some(&p)).is_err());
        assert!(Config::load(Some(&t.path().join("missing.toml"))).is_err());
    }
}
