//! A lockdownd connection: requests and answers, pairing, the session's
//! switch to TLS, starting services.

use plist::{Dictionary, Value};

use ibackup_proto::error::{ProtoError, Result};
use ibackup_proto::frame;
use ibackup_proto::lockdown::{self, LockdownError, Request as LdRequest};
use ibackup_proto::pairing::PairRecord;
use ibackup_proto::plistx::DictExt;
use ibackup_proto::tls::{self, TlsStream};

use crate::stream::Stream;

enum Link {
    Plain(Box<dyn Stream>),
    Tls(Box<TlsStream<Box<dyn Stream>>>),
    Gone,
}

impl Link {
    fn io(&mut self) -> &mut dyn Stream {
        match self {
            Link::Plain(s) => s,
            Link::Tls(t) => t.as_mut(),
            Link::Gone => unreachable!("link used during a switch"),
        }
    }
}

/// A started service: where to connect and whether to speak TLS there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceInfo {
    pub port: u16,
    pub ssl: bool,
}

/// A lockdownd connection.
pub struct LockdownClient {
    link: Link,
    label: String,
    session: Option<String>,
}

impl LockdownClient {
    pub fn new(stream: Box<dyn Stream>, label: &str) -> Self {
        LockdownClient {
            link: Link::Plain(stream),
            label: label.into(),
            session: None,
        }
    }

    /// Send one request and return the answer, or the device's error name.
    pub fn request(&mut self, req: &LdRequest) -> Result<Dictionary> {
        let io = self.link.io();
        frame::write_xml(io, &Value::Dictionary(req.encode(&self.label)))?;
        let answer = match frame::read_plist(io)? {
            Value::Dictionary(d) => d,
            _ => {
                return Err(ProtoError::protocol(
                    "lockdownd answered with a non-dictionary",
                ))
            }
        };
        lockdown::check_response(req.name(), answer).map_err(|e| ProtoError::Lockdown {
            request: req.name().to_string(),
            error: match e {
                lockdown::ResponseError::Device(s) => s,
                lockdown::ResponseError::Mismatch => "answer to another request".into(),
            },
        })
    }

    pub fn query_type(&mut self) -> Result<String> {
        Ok(self
            .request(&LdRequest::QueryType)?
            .req_str("Type")?
            .to_string())
    }

    pub fn get_value(&mut self, domain: Option<&str>, key: Option<&str>) -> Result<Value> {
        let d = self.request(&LdRequest::GetValue {
            domain: domain.map(str::to_string),
            key: key.map(str::to_string),
        })?;
        d.get("Value")
            .cloned()
            .ok_or_else(|| ProtoError::protocol("GetValue answer without Value"))
    }

    /// Ask the device to trust this host. `PairingDialogResponsePending`
    /// means the user has not tapped Trust yet; the caller retries.
    pub fn pair(&mut self, rec: &PairRecord) -> Result<Option<Vec<u8>>> {
        let mut options = Dictionary::new();
        options.insert("ExtendedPairingErrors".into(), Value::Boolean(true));
        let d = self.request(&LdRequest::Pair {
            record: rec.public_dict(),
            options,
        })?;
        Ok(d.data_of("EscrowBag").map(<[u8]>::to_vec))
    }

    /// Open a session and switch to TLS with the pair record's host identity.
    pub fn start_session(&mut self, rec: &PairRecord) -> Result<()> {
        let d = self.request(&LdRequest::StartSession {
            host_id: rec.host_id.clone(),
            system_buid: Some(rec.system_buid.clone()),
        })?;
        self.session = d.str_of("SessionID").map(str::to_string);
        if d.bool_of("EnableSessionSSL").unwrap_or(false) {
            let key = rec
                .host_private_key
                .as_deref()
                .ok_or_else(|| ProtoError::Crypto("pair record without HostPrivateKey".into()))?;
            let config = tls::client_config(&rec.host_certificate, key)?;
            let Link::Plain(s) = std::mem::replace(&mut self.link, Link::Gone) else {
                return Err(ProtoError::protocol("session already encrypted"));
            };
            self.link = Link::Tls(Box::new(TlsStream::connect(s, config)?));
        }
        Ok(())
    }

    pub fn start_service(
        &mut self,
        service: &str,
        escrow_bag: Option<Vec<u8>>,
    ) -> Result<ServiceInfo> {
        let d = self.request(&LdRequest::StartService {
            service: service.into(),
            escrow_bag,
        })?;
        let port = d
            .u64_of("Port")
            .filter(|p| *p > 0 && *p <= u16::MAX as u64)
            .ok_or_else(|| ProtoError::protocol("StartService without a valid Port"))?;
        Ok(ServiceInfo {
            port: port as u16,
            ssl: d.bool_of("EnableServiceSSL").unwrap_or(false),
        })
    }

    /// Ask the device to forget this host.
    pub fn unpair(&mut self, rec: &PairRecord) -> Result<()> {
        self.request(&LdRequest::Unpair {
            record: rec.public_dict(),
        })?;
        Ok(())
    }

    pub fn has_session(&self) -> bool {
        self.session.is_some()
    }
}

/// Whether an error is lockdownd saying `e`.
pub fn is_lockdown_error(err: &ProtoError, e: LockdownError) -> bool {
    matches!(err, ProtoError::Lockdown { error, .. } if error == e.as_str())
}
