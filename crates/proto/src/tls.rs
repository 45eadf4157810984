//! TLS over an existing byte stream, for lockdownd sessions and services.
//!
//! lockdownd switches a plain connection to TLS after `StartSession`, and
//! back to plain after `StopSession`: the host sends a TLS close_notify and
//! immediately continues in plaintext on the same socket
//! (libimobiledevice `idevice_connection_disable_ssl`; pymobiledevice3 reads
//! "one whole TLS record at a time" for the same reason). So the reader here
//! never pulls more than one TLS record off the socket at a time: after the
//! close_notify, every following byte is still unread and belongs to the
//! plaintext protocol.
//!
//! The device is always the TLS server; it presents the device certificate
//! from the pair record. The host presents its host certificate. Neither
//! side verifies the other's chain: trust was established by pairing.

use std::io::{self, Read, Write};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, ClientConnection, Connection, ServerConfig, ServerConnection};

use crate::error::{ProtoError, Result};

/// Largest TLS record: 2^14 plaintext plus expansion allowance (RFC 8446 §5.2).
const MAX_RECORD: usize = 16384 + 2048;

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn certs_from_pem(pem: &[u8]) -> Result<Vec<CertificateDer<'static>>> {
    let certs: std::result::Result<Vec<_>, _> = CertificateDer::pem_slice_iter(pem).collect();
    let certs = certs.map_err(|e| ProtoError::Crypto(format!("bad certificate PEM: {e}")))?;
    if certs.is_empty() {
        return Err(ProtoError::Crypto("no certificate in PEM".into()));
    }
    Ok(certs)
}

fn key_from_pem(pem: &[u8]) -> Result<PrivateKeyDer<'static>> {
    PrivateKeyDer::from_pem_slice(pem)
        .map_err(|e| ProtoError::Crypto(format!("bad private key PEM: {e}")))
}

/// The device side: serve TLS 1.2 with the device certificate and key.
pub fn server_config(device_cert_pem: &[u8], device_key_pem: &[u8]) -> Result<Arc<ServerConfig>> {
    let config = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS12])?
        .with_no_client_auth()
        .with_single_cert(
            certs_from_pem(device_cert_pem)?,
            key_from_pem(device_key_pem)?,
        )?;
    Ok(Arc::new(config))
}

/// The host side: present the host certificate, accept the device's.
pub fn client_config(host_cert_pem: &[u8], host_key_pem: &[u8]) -> Result<Arc<ClientConfig>> {
    let config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(PairedDevice(provider())))
        .with_client_auth_cert(certs_from_pem(host_cert_pem)?, key_from_pem(host_key_pem)?)?;
    Ok(Arc::new(config))
}

/// Accepts the device's certificate unverified (it is self-issued by the
/// host's own root at pairing time) but still checks handshake signatures.
#[derive(Debug)]
struct PairedDevice(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for PairedDevice {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> std::result::Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> std::result::Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> std::result::Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// A TLS session layered on a stream, reading one record at a time.
pub struct TlsStream<S> {
    conn: Connection,
    sock: S,
    peer_closed: bool,
}

impl<S: Read + Write> TlsStream<S> {
    /// Device side: run the server handshake on `sock`.
    pub fn accept(sock: S, config: Arc<ServerConfig>) -> Result<Self> {
        let conn = ServerConnection::new(config)?;
        Self::handshake(Connection::Server(conn), sock)
    }

    /// Host side: run the client handshake on `sock`.
    pub fn connect(sock: S, config: Arc<ClientConfig>) -> Result<Self> {
        // The name is never checked (see PairedDevice); lockdownd has none.
        let name = ServerName::try_from("device.invalid").expect("static name");
        let conn = ClientConnection::new(config, name)?;
        Self::handshake(Connection::Client(conn), sock)
    }

    fn handshake(conn: Connection, sock: S) -> Result<Self> {
        let mut s = TlsStream {
            conn,
            sock,
            peer_closed: false,
        };
        while s.conn.is_handshaking() {
            if s.conn.wants_write() {
                s.flush_tls()?;
            } else if !s.read_record()? {
                return Err(ProtoError::Closed);
            }
        }
        s.flush_tls()?;
        Ok(s)
    }

    /// Whether the peer has sent close_notify.
    pub fn peer_closed(&self) -> bool {
        self.peer_closed
    }

    /// Return to plaintext on the same socket. Call after the peer's
    /// close_notify (read returned 0); nothing past it has been consumed.
    pub fn into_inner(self) -> S {
        self.sock
    }

    /// Send our close_notify, then hand back the socket.
    pub fn close(mut self) -> Result<S> {
        self.conn.send_close_notify();
        self.flush_tls()?;
        Ok(self.sock)
    }

    pub fn get_ref(&self) -> &S {
        &self.sock
    }

    fn flush_tls(&mut self) -> Result<()> {
        while self.conn.wants_write() {
            self.conn.write_tls(&mut self.sock)?;
        }
        self.sock.flush()?;
        Ok(())
    }

    /// Pull exactly one TLS record off the socket into rustls.
    /// `Ok(false)` on a clean end of stream between records.
    fn read_record(&mut self) -> Result<bool> {
        let mut hdr = [0u8; 5];
        match crate::frame::read_exact_or_closed(&mut self.sock, &mut hdr) {
            Ok(()) => {}
            Err(ProtoError::Closed) => return Ok(false),
            Err(e) => return Err(e),
        }
        let len = u16::from_be_bytes([hdr[3], hdr[4]]) as usize;
        if !(20..=23).contains(&hdr[0]) || hdr[1] != 3 || len > MAX_RECORD {
            return Err(ProtoError::protocol(format!(
                "peer sent non-TLS data where a TLS record was expected: {:02x?}",
                hdr
            )));
        }
        let mut rec = Vec::with_capacity(5 + len);
        rec.extend_from_slice(&hdr);
        rec.resize(5 + len, 0);
        self.sock.read_exact(&mut rec[5..])?;
        let mut cursor = &rec[..];
        while !cursor.is_empty() {
            self.conn.read_tls(&mut cursor)?;
        }
        if let Err(e) = self.conn.process_new_packets() {
            // Tell the peer why before giving up.
            let _ = self.flush_tls();
            return Err(e.into());
        }
        if self.conn.wants_write() {
            self.flush_tls()?;
        }
        Ok(true)
    }
}

impl<S: Read + Write> Read for TlsStream<S> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        loop {
            match self.conn.reader().read(buf) {
                Ok(0) => {
                    self.peer_closed = true;
                    return Ok(0);
                }
                Ok(n) => return Ok(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
            match self.read_record() {
                Ok(true) => {}
                Ok(false) => return Ok(0),
                Err(ProtoError::Io(e)) => return Err(e),
                Err(e) => return Err(io::Error::new(io::ErrorKind::InvalidData, e.to_string())),
            }
        }
    }
}

impl<S: Read + Write> Write for TlsStream<S> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.conn.writer().write(buf)?;
        self.flush_tls().map_err(|e| match e {
            ProtoError::Io(e) => e,
            other => io::Error::other(other.to_string()),
        })?;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.flush_tls().map_err(|e| match e {
            ProtoError::Io(e) => e,
            other => io::Error::other(other.to_string()),
        })
    }
}
