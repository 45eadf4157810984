//! Pair records and the device's key pair.
//!
//! A host pairs with a device by sending lockdownd a `PairRecord` holding
//! three PEM certificates it made: its own root CA, a host certificate, and
//! a device certificate that wraps the public key the device gave it
//! (`GetValue DevicePublicKey`, a PKCS#1 PEM RSA key). From then on the
//! device is the TLS server of every session, presenting that device
//! certificate. Facts from libimobiledevice `common/userpref.c` and
//! `src/lockdown.c` (`lockdownd_pair_record_to_plist`), pymobiledevice3
//! `ca.py`.

use plist::{Dictionary, Value};
use rand::{CryptoRng, RngCore};
use rsa::pkcs1::{DecodeRsaPublicKey, EncodeRsaPrivateKey, EncodeRsaPublicKey};
use rsa::pkcs8::EncodePrivateKey;
use rsa::pkcs8::LineEnding;
use rsa::RsaPrivateKey;

use crate::error::{ProtoError, Result};
use crate::plistx::{dict, DictExt};

/// The host's half of a pairing as stored by usbmuxd (`ReadPairRecord`) and
/// sent, without private keys, in lockdownd `Pair`/`ValidatePair`.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct PairRecord {
    pub device_certificate: Vec<u8>,
    pub host_certificate: Vec<u8>,
    pub root_certificate: Vec<u8>,
    pub host_id: String,
    pub system_buid: String,
    pub host_private_key: Option<Vec<u8>>,
    pub root_private_key: Option<Vec<u8>>,
    pub escrow_bag: Option<Vec<u8>>,
    pub wifi_mac_address: Option<String>,
}

impl PairRecord {
    pub fn from_dict(d: &Dictionary) -> Result<PairRecord> {
        let data = |k: &str| -> Result<Vec<u8>> {
            d.data_of(k)
                .map(<[u8]>::to_vec)
                .ok_or_else(|| ProtoError::protocol(format!("pair record without {k}")))
        };
        Ok(PairRecord {
            device_certificate: data("DeviceCertificate")?,
            host_certificate: data("HostCertificate")?,
            root_certificate: data("RootCertificate")?,
            host_id: d.req_str("HostID")?.to_string(),
            system_buid: d.str_of("SystemBUID").unwrap_or_default().to_string(),
            host_private_key: d.data_of("HostPrivateKey").map(<[u8]>::to_vec),
            root_private_key: d.data_of("RootPrivateKey").map(<[u8]>::to_vec),
            escrow_bag: d.data_of("EscrowBag").map(<[u8]>::to_vec),
            wifi_mac_address: d.str_of("WiFiMACAddress").map(str::to_string),
        })
    }

    /// The full record, private keys included (what usbmuxd stores).
    pub fn to_dict(&self) -> Dictionary {
        let mut d = self.public_dict();
        if let Some(k) = &self.host_private_key {
            d.insert("HostPrivateKey".into(), Value::Data(k.clone()));
        }
        if let Some(k) = &self.root_private_key {
            d.insert("RootPrivateKey".into(), Value::Data(k.clone()));
        }
        if let Some(b) = &self.escrow_bag {
            d.insert("EscrowBag".into(), Value::Data(b.clone()));
        }
        if let Some(m) = &self.wifi_mac_address {
            d.insert("WiFiMACAddress".into(), Value::from(m.as_str()));
        }
        d
    }

    /// What is sent to the device: no private keys, no escrow bag.
    pub fn public_dict(&self) -> Dictionary {
        dict([
            (
                "DeviceCertificate",
                Value::Data(self.device_certificate.clone()),
            ),
            (
                "HostCertificate",
                Value::Data(self.host_certificate.clone()),
            ),
            (
                "RootCertificate",
                Value::Data(self.root_certificate.clone()),
            ),
            ("HostID", Value::from(self.host_id.as_str())),
            ("SystemBUID", Value::from(self.system_buid.as_str())),
        ])
    }
}

/// The device's own RSA key pair, PEM-encoded as lockdownd hands it out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceKey {
    /// PKCS#1 PEM (`-----BEGIN RSA PRIVATE KEY-----`).
    pub private_pem: String,
    /// PKCS#1 PEM (`-----BEGIN RSA PUBLIC KEY-----`), the `DevicePublicKey` value.
    pub public_pem: String,
}

impl DeviceKey {
    /// A fresh 2048-bit key, as devices use.
    pub fn generate<R: RngCore + CryptoRng>(rng: &mut R) -> Result<DeviceKey> {
        let key = RsaPrivateKey::new(rng, 2048).map_err(|e| ProtoError::Crypto(e.to_string()))?;
        let private_pem = key
            .to_pkcs1_pem(LineEnding::LF)
            .map_err(|e| ProtoError::Crypto(e.to_string()))?
            .to_string();
        let public_pem = key
            .to_public_key()
            .to_pkcs1_pem(LineEnding::LF)
            .map_err(|e| ProtoError::Crypto(e.to_string()))?;
        Ok(DeviceKey {
            private_pem,
            public_pem,
        })
    }
}

/// A random upper-case UUID string, the form lockdownd and usbmuxd use for
/// host IDs, BUIDs and session IDs.
pub fn random_uuid() -> String {
    let b: [u8; 16] = rand::random();
    let h: String = b.iter().map(|x| format!("{x:02X}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

/// The device's public key as rcgen needs it to issue the device certificate.
struct DevicePublicKey(Vec<u8>);

impl rcgen::PublicKeyData for DevicePublicKey {
    fn der_bytes(&self) -> &[u8] {
        &self.0
    }
    fn algorithm(&self) -> &rcgen::SignatureAlgorithm {
        &rcgen::PKCS_RSA_SHA256
    }
}

fn crypto(e: impl std::fmt::Display) -> ProtoError {
    ProtoError::Crypto(e.to_string())
}

/// An RSA key as rcgen signs with, plus its PKCS#1 PEM for the pair record.
fn rsa_key<R: RngCore + CryptoRng>(rng: &mut R) -> Result<(rcgen::KeyPair, String)> {
    let key = RsaPrivateKey::new(rng, 2048).map_err(crypto)?;
    let pkcs8 = key.to_pkcs8_der().map_err(crypto)?;
    let der = rustls::pki_types::PrivatePkcs8KeyDer::from(pkcs8.as_bytes().to_vec());
    let pair = rcgen::KeyPair::from_pkcs8_der_and_sign_algo(&der, &rcgen::PKCS_RSA_SHA256)
        .map_err(crypto)?;
    let pem = key
        .to_pkcs1_pem(LineEnding::LF)
        .map_err(crypto)?
        .to_string();
    Ok((pair, pem))
}

fn params(ca: bool) -> rcgen::CertificateParams {
    let mut p = rcgen::CertificateParams::default();
    // Hosts issue these without names (libimobiledevice `userpref.c`).
    p.distinguished_name = rcgen::DistinguishedName::new();
    p.serial_number = Some(rcgen::SerialNumber::from(if ca { 0u64 } else { 1 }));
    let now = std::time::SystemTime::now();
    p.not_before = now.into();
    p.not_after = (now + std::time::Duration::from_secs(10 * 365 * 86_400)).into();
    if ca {
        p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    } else {
        p.is_ca = rcgen::IsCa::ExplicitNoCa;
        p.key_usages = vec![
            rcgen::KeyUsagePurpose::DigitalSignature,
            rcgen::KeyUsagePurpose::KeyEncipherment,
        ];
    }
    p
}

impl PairRecord {
    /// Host side of pairing: make a root CA, a host certificate, and a
    /// device certificate over `device_public_key_pem` (the device's
    /// `DevicePublicKey`, PKCS#1 PEM), as libimobiledevice and
    /// pymobiledevice3 do before sending `Pair`.
    pub fn generate<R: RngCore + CryptoRng>(
        device_public_key_pem: &[u8],
        host_id: &str,
        system_buid: &str,
        rng: &mut R,
    ) -> Result<PairRecord> {
        let pem = std::str::from_utf8(device_public_key_pem).map_err(crypto)?;
        let device_key = rsa::RsaPublicKey::from_pkcs1_pem(pem.trim()).map_err(crypto)?;
        let device_der = device_key
            .to_pkcs1_der()
            .map_err(crypto)?
            .as_bytes()
            .to_vec();
        let (root_key, root_pem) = rsa_key(rng)?;
        let (host_key, host_pem) = rsa_key(rng)?;
        let root = params(true).self_signed(&root_key).map_err(crypto)?;
        let host = params(false)
            .signed_by(&host_key, &root, &root_key)
            .map_err(crypto)?;
        let device = params(false)
            .signed_by(&DevicePublicKey(device_der), &root, &root_key)
            .map_err(crypto)?;
        Ok(PairRecord {
            device_certificate: device.pem().into_bytes(),
            host_certificate: host.pem().into_bytes(),
            root_certificate: root.pem().into_bytes(),
            host_id: host_id.to_string(),
            system_buid: system_buid.to_string(),
            host_private_key: Some(host_pem.into_bytes()),
            root_private_key: Some(root_pem.into_bytes()),
            escrow_bag: None,
            wifi_mac_address: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use std::collections::VecDeque;
    use std::io::{Read, Write};
    use std::sync::{Arc, Condvar, Mutex};

    #[test]
    fn record_round_trip_and_public_view_hides_keys() {
        let r = PairRecord {
            device_certificate: b"D".to_vec(),
            host_certificate: b"H".to_vec(),
            root_certificate: b"R".to_vec(),
            host_id: "HOST".into(),
            system_buid: "BUID".into(),
            host_private_key: Some(b"hk".to_vec()),
            root_private_key: Some(b"rk".to_vec()),
            escrow_bag: Some(vec![9; 32]),
            wifi_mac_address: Some("aa:bb".into()),
        };
        assert_eq!(PairRecord::from_dict(&r.to_dict()).unwrap(), r);
        let p = r.public_dict();
        assert!(p.get("HostPrivateKey").is_none() && p.get("RootPrivateKey").is_none());
        assert!(p.get("EscrowBag").is_none());
        let mut broken = r.to_dict();
        broken.remove("HostID");
        assert!(PairRecord::from_dict(&broken).is_err());
    }

    #[test]
    fn generated_records_carry_a_session_both_ways_and_fall_back_to_plaintext() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(2);
        let device = DeviceKey::generate(&mut rng).unwrap();
        let rec =
            PairRecord::generate(device.public_pem.as_bytes(), "HOST-1", "BUID", &mut rng).unwrap();
        assert!(String::from_utf8_lossy(&rec.device_certificate)
            .starts_with("-----BEGIN CERTIFICATE-----"));
        let server =
            crate::tls::server_config(&rec.device_certificate, device.private_pem.as_bytes())
                .unwrap();
        let client = crate::tls::client_config(
            &rec.host_certificate,
            rec.host_private_key.as_ref().unwrap(),
        )
        .unwrap();
        let (a, b) = duplex();
        let device_side = std::thread::spawn(move || {
            let mut t = crate::tls::TlsStream::accept(a, server).unwrap();
            let mut buf = [0u8; 5];
            t.read_exact(&mut buf).unwrap();
            assert_eq!(&buf, b"hello");
            t.write_all(b"world").unwrap();
            // The host's close_notify ends TLS; what follows is plaintext, unread so far.
            assert_eq!(t.read(&mut buf).unwrap(), 0);
            assert!(t.peer_closed());
            let mut plain = t.into_inner();
            let mut rest = [0u8; 7];
            plain.read_exact(&mut rest).unwrap();
            assert_eq!(&rest, b"goodbye");
        });
        let mut t = crate::tls::TlsStream::connect(b, client).unwrap();
        t.write_all(b"hello").unwrap();
        let mut buf = [0u8; 5];
        t.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"world");
        let mut plain = t.close().unwrap();
        plain.write_all(b"goodbye").unwrap();
        device_side.join().unwrap();
    }

    /// Two ends of an in-memory byte pipe (no socket in this crate).
    fn duplex() -> (End, End) {
        let (x, y) = (Arc::new(Pipe::default()), Arc::new(Pipe::default()));
        (
            End {
                rx: x.clone(),
                tx: y.clone(),
            },
            End { rx: y, tx: x },
        )
    }

    #[derive(Default)]
    struct Pipe {
        bytes: Mutex<VecDeque<u8>>,
        more: Condvar,
    }

    struct End {
        rx: Arc<Pipe>,
        tx: Arc<Pipe>,
    }

    impl Read for End {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            let mut q = self.rx.bytes.lock().unwrap();
            while q.is_empty() {
                q = self.rx.more.wait(q).unwrap();
            }
            let n = buf.len().min(q.len());
            for (b, v) in buf.iter_mut().zip(q.drain(..n)) {
                *b = v;
            }
            Ok(n)
        }
    }

    impl Write for End {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.tx.bytes.lock().unwrap().extend(buf);
            self.tx.more.notify_all();
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_bad_device_key_is_an_error() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(5);
        assert!(PairRecord::generate(b"not a key", "H", "B", &mut rng).is_err());
    }

    #[test]
    fn device_key_is_pkcs1_pem() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
        let k = DeviceKey::generate(&mut rng).unwrap();
        assert!(k.public_pem.starts_with("-----BEGIN RSA PUBLIC KEY-----"));
        assert!(k.private_pem.starts_with("-----BEGIN RSA PRIVATE KEY-----"));
    }
}
