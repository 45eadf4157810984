//! DeviceLink: the message layer under mobilebackup2.
//!
//! Each message is a binary plist array whose first element names it. The
//! device drives a backup or restore by sending requests (`DLMessage…`) that
//! the host answers with `DLMessageStatusResponse`. Array positions follow
//! libimobiledevice `tools/idevicebackup2.c` (`mb2_set_overall_progress_from_message`
//! and the main loop) and pymobiledevice3 `services/device_link.py`.

use plist::{Dictionary, Value};

use crate::error::{ProtoError, Result};

pub const VERSION_MAJOR: u64 = 300;
pub const VERSION_MINOR: u64 = 0;
/// DeviceLink writes this where a string parameter is empty.
pub const EMPTY_PARAMETER: &str = "___EmptyParameterString___";

/// Status code for a bulk operation where some files failed.
pub const BULK_OPERATION_ERROR: i64 = -13;

/// A DeviceLink message, either direction.
#[derive(Debug, Clone, PartialEq)]
pub enum DlMessage {
    /// device → host: `[name, major, minor]`.
    VersionExchange {
        major: u64,
        minor: u64,
    },
    /// host → device: `[name, "DLVersionsOk", major]`.
    VersionsOk {
        major: u64,
    },
    DeviceReady,
    /// Either direction: `[name, dict]`.
    ProcessMessage(Dictionary),
    /// `[name, reason]`.
    Disconnect(String),
    /// host → device answer to a request: `[name, code, description, payload]`.
    StatusResponse {
        code: i64,
        description: Option<String>,
        payload: Value,
    },
    /// device asks the host for files: `[name, [paths], {}, progress]`.
    DownloadFiles {
        paths: Vec<String>,
        progress: f64,
    },
    /// device sends files; the stream follows the message: `[name, {}, progress, total_bytes]`.
    UploadFiles {
        progress: f64,
        total_bytes: u64,
    },
    GetFreeDiskSpace,
    PurgeDiskSpace {
        amount: u64,
    },
    ContentsOfDirectory {
        path: String,
    },
    CreateDirectory {
        path: String,
    },
    /// `[name, {src: dst}, {}, progress]`.
    MoveItems {
        moves: Vec<(String, String)>,
        progress: f64,
    },
    /// `[name, [paths], {}, progress]`.
    RemoveItems {
        paths: Vec<String>,
        progress: f64,
    },
    CopyItem {
        from: String,
        to: String,
    },
    Other(Vec<Value>),
}

fn real(v: Option<&Value>) -> f64 {
    match v {
        Some(Value::Real(r)) => *r,
        Some(Value::Integer(i)) => i.as_signed().unwrap_or(0) as f64,
        _ => 0.0,
    }
}

fn uint(v: Option<&Value>) -> Option<u64> {
    match v {
        Some(Value::Integer(i)) => i.as_unsigned().or_else(|| i.as_signed().map(|s| s as u64)),
        _ => None,
    }
}

fn string(v: Option<&Value>, what: &str) -> Result<String> {
    v.and_then(Value::as_string)
        .map(str::to_string)
        .ok_or_else(|| ProtoError::protocol(format!("{what}: missing string")))
}

fn strings(v: Option<&Value>, what: &str) -> Result<Vec<String>> {
    let arr = v
        .and_then(Value::as_array)
        .ok_or_else(|| ProtoError::protocol(format!("{what}: missing array")))?;
    arr.iter()
        .map(|s| {
            s.as_string()
                .map(str::to_string)
                .ok_or_else(|| ProtoError::protocol(format!("{what}: non-string entry")))
        })
        .collect()
}

impl DlMessage {
    pub fn name(&self) -> &str {
        match self {
            DlMessage::VersionExchange { .. } | DlMessage::VersionsOk { .. } => {
                "DLMessageVersionExchange"
            }
            DlMessage::DeviceReady => "DLMessageDeviceReady",
            DlMessage::ProcessMessage(_) => "DLMessageProcessMessage",
            DlMessage::Disconnect(_) => "DLMessageDisconnect",
            DlMessage::StatusResponse { .. } => "DLMessageStatusResponse",
            DlMessage::DownloadFiles { .. } => "DLMessageDownloadFiles",
            DlMessage::UploadFiles { .. } => "DLMessageUploadFiles",
            DlMessage::GetFreeDiskSpace => "DLMessageGetFreeDiskSpace",
            DlMessage::PurgeDiskSpace { .. } => "DLMessagePurgeDiskSpace",
            DlMessage::ContentsOfDirectory { .. } => "DLContentsOfDirectory",
            DlMessage::CreateDirectory { .. } => "DLMessageCreateDirectory",
            DlMessage::MoveItems { .. } => "DLMessageMoveItems",
            DlMessage::RemoveItems { .. } => "DLMessageRemoveItems",
            DlMessage::CopyItem { .. } => "DLMessageCopyItem",
            DlMessage::Other(v) => v.first().and_then(Value::as_string).unwrap_or(""),
        }
    }

    pub fn encode(&self) -> Value {
        let n = Value::from(self.name());
        let empty = || Value::Dictionary(Dictionary::new());
        Value::Array(match self {
            DlMessage::VersionExchange { major, minor } => {
                vec![n, Value::from(*major), Value::from(*minor)]
            }
            DlMessage::VersionsOk { major } => {
                vec![n, Value::from("DLVersionsOk"), Value::from(*major)]
            }
            DlMessage::DeviceReady | DlMessage::GetFreeDiskSpace => vec![n],
            DlMessage::ProcessMessage(d) => vec![n, Value::Dictionary(d.clone())],
            DlMessage::Disconnect(r) => vec![
                n,
                Value::from(if r.is_empty() {
                    EMPTY_PARAMETER
                } else {
                    r.as_str()
                }),
            ],
            DlMessage::StatusResponse {
                code,
                description,
                payload,
            } => vec![
                n,
                // DeviceLink carries the code as an unsigned 64-bit integer
                // (pymobiledevice3 wraps it with ctypes.c_uint64).
                Value::from(*code as u64),
                Value::from(description.as_deref().unwrap_or(EMPTY_PARAMETER)),
                payload.clone(),
            ],
            DlMessage::DownloadFiles { paths, progress } => vec![
                n,
                Value::Array(paths.iter().map(|p| Value::from(p.as_str())).collect()),
                empty(),
                Value::Real(*progress),
            ],
            DlMessage::UploadFiles {
                progress,
                total_bytes,
            } => vec![
                n,
                empty(),
                Value::Real(*progress),
                Value::from(*total_bytes),
            ],
            DlMessage::PurgeDiskSpace { amount } => vec![n, Value::from(*amount)],
            DlMessage::ContentsOfDirectory { path } | DlMessage::CreateDirectory { path } => {
                vec![n, Value::from(path.as_str())]
            }
            DlMessage::MoveItems { moves, progress } => {
                let mut d = Dictionary::new();
                for (a, b) in moves {
                    d.insert(a.clone(), Value::from(b.as_str()));
                }
                vec![n, Value::Dictionary(d), empty(), Value::Real(*progress)]
            }
            DlMessage::RemoveItems { paths, progress } => vec![
                n,
                Value::Array(paths.iter().map(|p| Value::from(p.as_str())).collect()),
                empty(),
                Value::Real(*progress),
            ],
            DlMessage::CopyItem { from, to } => {
                vec![n, Value::from(from.as_str()), Value::from(to.as_str())]
            }
            DlMessage::Other(v) => v.clone(),
        })
    }

    pub fn decode(v: Value) -> Result<DlMessage> {
        let arr = match v {
            Value::Array(a) => a,
            other => {
                return Err(ProtoError::protocol(format!(
                    "DeviceLink message is a {}, not an array",
                    crate::plistx::kind(&other)
                )))
            }
        };
        let name = arr
            .first()
            .and_then(Value::as_string)
            .ok_or_else(|| ProtoError::protocol("DeviceLink message without a name"))?
            .to_string();
        let at = |i: usize| arr.get(i);
        Ok(match name.as_str() {
            "DLMessageVersionExchange" => match at(1) {
                Some(Value::String(s)) if s == "DLVersionsOk" => DlMessage::VersionsOk {
                    major: uint(at(2)).unwrap_or(0),
                },
                _ => DlMessage::VersionExchange {
                    major: uint(at(1)).unwrap_or(0),
                    minor: uint(at(2)).unwrap_or(0),
                },
            },
            "DLMessageDeviceReady" => DlMessage::DeviceReady,
            "DLMessageProcessMessage" => DlMessage::ProcessMessage(
                at(1)
                    .and_then(Value::as_dictionary)
                    .cloned()
                    .ok_or_else(|| ProtoError::protocol("ProcessMessage without a dictionary"))?,
            ),
            "DLMessageDisconnect" => DlMessage::Disconnect(
                at(1)
                    .and_then(Value::as_string)
                    .filter(|s| *s != EMPTY_PARAMETER)
                    .unwrap_or("")
                    .to_string(),
            ),
            "DLMessageStatusResponse" => DlMessage::StatusResponse {
                code: uint(at(1)).unwrap_or(0) as i64,
                description: at(2)
                    .and_then(Value::as_string)
                    .filter(|s| *s != EMPTY_PARAMETER)
                    .map(str::to_string),
                payload: at(3)
                    .cloned()
                    .unwrap_or(Value::Dictionary(Dictionary::new())),
            },
            "DLMessageDownloadFiles" => DlMessage::DownloadFiles {
                paths: strings(at(1), "DownloadFiles")?,
                progress: real(at(3)),
            },
            "DLMessageUploadFiles" => DlMessage::UploadFiles {
                progress: real(at(2)),
                total_bytes: uint(at(3)).unwrap_or(0),
            },
            "DLMessageGetFreeDiskSpace" => DlMessage::GetFreeDiskSpace,
            "DLMessagePurgeDiskSpace" => DlMessage::PurgeDiskSpace {
                amount: uint(at(1)).unwrap_or(0),
            },
            "DLContentsOfDirectory" => DlMessage::ContentsOfDirectory {
                path: string(at(1), "ContentsOfDirectory")?,
            },
            "DLMessageCreateDirectory" => DlMessage::CreateDirectory {
                path: string(at(1), "CreateDirectory")?,
            },
            "DLMessageMoveItems" | "DLMessageMoveFiles" => {
                let d = at(1)
                    .and_then(Value::as_dictionary)
                    .ok_or_else(|| ProtoError::protocol("MoveItems without a dictionary"))?;
                let mut moves = Vec::with_capacity(d.len());
                for (k, v) in d {
                    let to = v
                        .as_string()
                        .ok_or_else(|| ProtoError::protocol("MoveItems: non-string target"))?;
                    moves.push((k.clone(), to.to_string()));
                }
                DlMessage::MoveItems {
                    moves,
                    progress: real(at(3)),
                }
            }
            "DLMessageRemoveItems" | "DLMessageRemoveFiles" => DlMessage::RemoveItems {
                paths: strings(at(1), "RemoveItems")?,
                progress: real(at(3)),
            },
            "DLMessageCopyItem" => DlMessage::CopyItem {
                from: string(at(1), "CopyItem")?,
                to: string(at(2), "CopyItem")?,
            },
            _ => DlMessage::Other(arr),
        })
    }

    /// The overall progress a device request carries, in percent.
    pub fn progress(&self) -> Option<f64> {
        match self {
            DlMessage::DownloadFiles { progress, .. }
            | DlMessage::UploadFiles { progress, .. }
            | DlMessage::MoveItems { progress, .. }
            | DlMessage::RemoveItems { progress, .. } => Some(*progress),
            _ => None,
        }
    }

    pub fn status_ok(payload: Value) -> DlMessage {
        DlMessage::StatusResponse {
            code: 0,
            description: None,
            payload,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plistx::{self, dict};

    #[test]
    fn every_message_round_trips_through_binary_plist() {
        let msgs = vec![
            DlMessage::VersionExchange {
                major: 300,
                minor: 0,
            },
            DlMessage::VersionsOk { major: 300 },
            DlMessage::DeviceReady,
            DlMessage::ProcessMessage(dict([("ErrorCode", Value::from(0u64))])),
            DlMessage::Disconnect("bye".into()),
            DlMessage::Disconnect(String::new()),
            DlMessage::StatusResponse {
                code: -13,
                description: Some("Multi status".into()),
                payload: Value::Dictionary(Dictionary::new()),
            },
            DlMessage::status_ok(Value::from(12345u64)),
            DlMessage::DownloadFiles {
                paths: vec!["U/Status.plist".into()],
                progress: 0.0,
            },
            DlMessage::UploadFiles {
                progress: 42.5,
                total_bytes: 1 << 40,
            },
            DlMessage::GetFreeDiskSpace,
            DlMessage::PurgeDiskSpace { amount: 5 },
            DlMessage::ContentsOfDirectory { path: "U".into() },
            DlMessage::CreateDirectory {
                path: "U/ab".into(),
            },
            DlMessage::MoveItems {
                moves: vec![("U/Snapshot/Manifest.db".into(), "U/Manifest.db".into())],
                progress: 99.0,
            },
            DlMessage::RemoveItems {
                paths: vec!["U/Snapshot".into()],
                progress: 100.0,
            },
            DlMessage::CopyItem {
                from: "a".into(),
                to: "b".into(),
            },
        ];
        for m in msgs {
            let bytes = plistx::to_binary(&m.encode());
            let back = DlMessage::decode(plistx::from_bytes(&bytes).unwrap()).unwrap();
            assert_eq!(back, m);
        }
    }

    #[test]
    fn malformed_messages_are_errors() {
        assert!(DlMessage::decode(Value::from("x")).is_err());
        assert!(DlMessage::decode(Value::Array(vec![])).is_err());
        assert!(DlMessage::decode(Value::Array(vec![
            Value::from("DLMessageRemoveItems"),
            Value::from(3u64)
        ]))
        .is_err());
        let m = DlMessage::decode(Value::Array(vec![Value::from("DLMessageNew")])).unwrap();
        assert_eq!(m.name(), "DLMessageNew");
    }
}
