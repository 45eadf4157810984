//! lockdownd requests and answers, as values.
//!
//! lockdownd listens on port 62078 and speaks XML plists in the 32-bit
//! big-endian framing of [`crate::frame`]. Every request is a dictionary with
//! `Request` (and usually `Label`); every answer echoes `Request` and carries
//! either the result or `Error` with one of the names in [`LockdownError`]
//! (names from libimobiledevice `src/lockdown.c`, `lockdownd_error_str_map`).

use plist::{Dictionary, Value};

use crate::error::{ProtoError, Result};
use crate::plistx::{dict, DictExt};

pub const SERVICE_TYPE: &str = "com.apple.mobile.lockdown";

/// A request as the device receives it.
#[derive(Debug, Clone, PartialEq)]
pub enum Request {
    QueryType,
    GetValue {
        domain: Option<String>,
        key: Option<String>,
    },
    SetValue {
        domain: Option<String>,
        key: Option<String>,
        value: Value,
    },
    RemoveValue {
        domain: Option<String>,
        key: Option<String>,
    },
    Pair {
        record: Dictionary,
        options: Dictionary,
    },
    ValidatePair {
        record: Dictionary,
    },
    Unpair {
        record: Dictionary,
    },
    StartSession {
        host_id: String,
        system_buid: Option<String>,
    },
    StopSession {
        session_id: String,
    },
    StartService {
        service: String,
        escrow_bag: Option<Vec<u8>>,
    },
    Goodbye,
    Other(String),
}

impl Request {
    pub fn name(&self) -> &str {
        match self {
            Request::QueryType => "QueryType",
            Request::GetValue { .. } => "GetValue",
            Request::SetValue { .. } => "SetValue",
            Request::RemoveValue { .. } => "RemoveValue",
            Request::Pair { .. } => "Pair",
            Request::ValidatePair { .. } => "ValidatePair",
            Request::Unpair { .. } => "Unpair",
            Request::StartSession { .. } => "StartSession",
            Request::StopSession { .. } => "StopSession",
            Request::StartService { .. } => "StartService",
            Request::Goodbye => "Goodbye",
            Request::Other(s) => s,
        }
    }

    pub fn decode(d: &Dictionary) -> Result<Request> {
        let name = d.req_str("Request")?;
        let opt = |k: &str| d.str_of(k).map(str::to_string);
        let record = || -> Result<Dictionary> {
            d.dict_of("PairRecord")
                .cloned()
                .ok_or_else(|| ProtoError::protocol(format!("{name} without PairRecord")))
        };
        Ok(match name {
            "QueryType" => Request::QueryType,
            "GetValue" => Request::GetValue {
                domain: opt("Domain"),
                key: opt("Key"),
            },
            "SetValue" => Request::SetValue {
                domain: opt("Domain"),
                key: opt("Key"),
                value: d
                    .get("Value")
                    .cloned()
                    .ok_or_else(|| ProtoError::protocol("SetValue without Value"))?,
            },
            "RemoveValue" => Request::RemoveValue {
                domain: opt("Domain"),
                key: opt("Key"),
            },
            "Pair" => Request::Pair {
                record: record()?,
                options: d.dict_of("PairingOptions").cloned().unwrap_or_default(),
            },
            "ValidatePair" => Request::ValidatePair { record: record()? },
            "Unpair" => Request::Unpair { record: record()? },
            "StartSession" => Request::StartSession {
                host_id: d.req_str("HostID")?.to_string(),
                system_buid: opt("SystemBUID"),
            },
            "StopSession" => Request::StopSession {
                session_id: d.req_str("SessionID")?.to_string(),
            },
            "StartService" => Request::StartService {
                service: d.req_str("Service")?.to_string(),
                escrow_bag: d.data_of("EscrowBag").map(<[u8]>::to_vec),
            },
            "Goodbye" => Request::Goodbye,
            other => Request::Other(other.to_string()),
        })
    }

    pub fn encode(&self, label: &str) -> Dictionary {
        let mut d = dict([
            ("Label", Value::from(label)),
            ("Request", Value::from(self.name())),
        ]);
        let mut put = |k: &str, v: Value| {
            d.insert(k.to_string(), v);
        };
        match self {
            Request::GetValue { domain, key } | Request::RemoveValue { domain, key } => {
                if let Some(x) = domain {
                    put("Domain", Value::from(x.as_str()));
                }
                if let Some(x) = key {
                    put("Key", Value::from(x.as_str()));
                }
            }
            Request::SetValue { domain, key, value } => {
                if let Some(x) = domain {
                    put("Domain", Value::from(x.as_str()));
                }
                if let Some(x) = key {
                    put("Key", Value::from(x.as_str()));
                }
                put("Value", value.clone());
            }
            Request::Pair { record, options } => {
                put("PairRecord", Value::Dictionary(record.clone()));
                put("PairingOptions", Value::Dictionary(options.clone()));
                put("ProtocolVersion", Value::from("2"));
            }
            Request::ValidatePair { record } | Request::Unpair { record } => {
                put("PairRecord", Value::Dictionary(record.clone()));
                put("ProtocolVersion", Value::from("2"));
            }
            Request::StartSession {
                host_id,
                system_buid,
            } => {
                put("HostID", Value::from(host_id.as_str()));
                if let Some(b) = system_buid {
                    put("SystemBUID", Value::from(b.as_str()));
                }
            }
            Request::StopSession { session_id } => {
                put("SessionID", Value::from(session_id.as_str()))
            }
            Request::StartService {
                service,
                escrow_bag,
            } => {
                put("Service", Value::from(service.as_str()));
                if let Some(b) = escrow_bag {
                    put("EscrowBag", Value::Data(b.clone()));
                }
            }
            _ => {}
        }
        d
    }
}

/// The error names lockdownd answers with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LockdownError {
    InvalidResponse,
    MissingKey,
    MissingValue,
    GetProhibited,
    SetProhibited,
    PasswordProtected,
    UserDeniedPairing,
    PairingDialogResponsePending,
    MissingHostId,
    InvalidHostId,
    SessionActive,
    SessionInactive,
    InvalidSessionId,
    MissingService,
    InvalidService,
    ServiceLimit,
    InvalidPairRecord,
    ServiceProhibited,
    EscrowLocked,
    FmipProtected,
    InvalidRequest,
}

impl LockdownError {
    pub fn as_str(self) -> &'static str {
        use LockdownError::*;
        match self {
            InvalidResponse => "InvalidResponse",
            MissingKey => "MissingKey",
            MissingValue => "MissingValue",
            GetProhibited => "GetProhibited",
            SetProhibited => "SetProhibited",
            PasswordProtected => "PasswordProtected",
            UserDeniedPairing => "UserDeniedPairing",
            PairingDialogResponsePending => "PairingDialogResponsePending",
            MissingHostId => "MissingHostID",
            InvalidHostId => "InvalidHostID",
            SessionActive => "SessionActive",
            SessionInactive => "SessionInactive",
            InvalidSessionId => "InvalidSessionID",
            MissingService => "MissingService",
            InvalidService => "InvalidService",
            ServiceLimit => "ServiceLimit",
            InvalidPairRecord => "InvalidPairRecord",
            ServiceProhibited => "ServiceProhibited",
            EscrowLocked => "EscrowLocked",
            FmipProtected => "FMiPProtected",
            InvalidRequest => "InvalidRequest",
        }
    }

    pub fn parse(s: &str) -> Option<LockdownError> {
        Self::ALL.into_iter().find(|e| e.as_str() == s)
    }

    pub const ALL: [LockdownError; 21] = {
        use LockdownError::*;
        [
            InvalidResponse,
            MissingKey,
            MissingValue,
            GetProhibited,
            SetProhibited,
            PasswordProtected,
            UserDeniedPairing,
            PairingDialogResponsePending,
            MissingHostId,
            InvalidHostId,
            SessionActive,
            SessionInactive,
            InvalidSessionId,
            MissingService,
            InvalidService,
            ServiceLimit,
            InvalidPairRecord,
            ServiceProhibited,
            EscrowLocked,
            FmipProtected,
            InvalidRequest,
        ]
    };
}

/// A successful answer: `{Request: name}` plus the given entries.
pub fn ok_response(request: &str, extra: Dictionary) -> Dictionary {
    let mut d = dict([("Request", Value::from(request))]);
    d.extend(extra);
    d
}

/// An error answer: `{Request: name, Error: e}`.
pub fn error_response(request: &str, e: LockdownError) -> Dictionary {
    dict([
        ("Request", Value::from(request)),
        ("Error", Value::from(e.as_str())),
    ])
}

/// Host side: check an answer to `request`, returning it on success.
pub fn check_response(
    request: &str,
    d: Dictionary,
) -> std::result::Result<Dictionary, ResponseError> {
    if d.str_of("Request") != Some(request) {
        return Err(ResponseError::Mismatch);
    }
    if let Some(e) = d.str_of("Error") {
        return Err(ResponseError::Device(e.to_string()));
    }
    Ok(d)
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResponseError {
    #[error("lockdownd answered another request")]
    Mismatch,
    #[error("lockdownd error: {0}")]
    Device(String),
}

impl ResponseError {
    pub fn kind(&self) -> Option<LockdownError> {
        match self {
            ResponseError::Device(s) => LockdownError::parse(s),
            ResponseError::Mismatch => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_round_trip() {
        let reqs = vec![
            Request::QueryType,
            Request::GetValue {
                domain: None,
                key: Some("ProductVersion".into()),
            },
            Request::GetValue {
                domain: Some("com.apple.mobile.backup".into()),
                key: Some("WillEncrypt".into()),
            },
            Request::SetValue {
                domain: None,
                key: Some("K".into()),
                value: Value::Boolean(true),
            },
            Request::Pair {
                record: dict([("HostID", Value::from("H"))]),
                options: Dictionary::new(),
            },
            Request::ValidatePair {
                record: dict([("HostID", Value::from("H"))]),
            },
            Request::StartSession {
                host_id: "H".into(),
                system_buid: Some("B".into()),
            },
            Request::StopSession {
                session_id: "S".into(),
            },
            Request::StartService {
                service: "com.apple.afc".into(),
                escrow_bag: Some(vec![1]),
            },
            Request::Goodbye,
        ];
        for r in reqs {
            let enc = r.encode("test");
            assert_eq!(enc.str_of("Label"), Some("test"));
            assert_eq!(Request::decode(&enc).unwrap(), r);
        }
    }

    #[test]
    fn malformed_requests_are_errors() {
        assert!(Request::decode(&Dictionary::new()).is_err());
        let d = dict([("Request", Value::from("StartSession"))]);
        assert!(Request::decode(&d).is_err());
        let d = dict([("Request", Value::from("Pair"))]);
        assert!(Request::decode(&d).is_err());
    }

    #[test]
    fn responses_are_checked() {
        let ok = ok_response("GetValue", dict([("Value", Value::from("x"))]));
        assert!(check_response("GetValue", ok.clone()).is_ok());
        assert_eq!(check_response("Pair", ok), Err(ResponseError::Mismatch));
        let err = check_response(
            "Pair",
            error_response("Pair", LockdownError::UserDeniedPairing),
        )
        .unwrap_err();
        assert_eq!(err.kind(), Some(LockdownError::UserDeniedPairing));
        for e in [
            LockdownError::FmipProtected,
            LockdownError::InvalidHostId,
            LockdownError::PairingDialogResponsePending,
        ] {
            assert_eq!(LockdownError::parse(e.as_str()), Some(e));
        }
    }
}
