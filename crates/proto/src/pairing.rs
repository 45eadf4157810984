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
use rsa::pkcs1::{EncodeRsaPrivateKey, EncodeRsaPublicKey};
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

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

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
    fn device_key_is_pkcs1_pem() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
        let k = DeviceKey::generate(&mut rng).unwrap();
        assert!(k.public_pem.starts_with("-----BEGIN RSA PUBLIC KEY-----"));
        assert!(k.private_pem.starts_with("-----BEGIN RSA PRIVATE KEY-----"));
    }
}
