//! Backup encryption as iOS does it (fact sheet §5): the backup keybag,
//! password → key-encryption key, class keys, per-file keys, and
//! AES-256-CBC with a zero IV and PKCS#7 padding for files and Manifest.db.
//!
//! The device encrypts; the host only decrypts. Both directions live here
//! because the simulator is a device and because filtered restores
//! re-encrypt Manifest.db with the backup's own key.

use aes::cipher::{BlockDecryptMut, BlockEncryptMut, KeyIvInit};
use aes_kw::KekAes256;
use rand::{CryptoRng, RngCore};
use sha2::Sha256;

use crate::error::{Result, StoreError};

type Enc = cbc::Encryptor<aes::Aes256>;
type Dec = cbc::Decryptor<aes::Aes256>;

/// iphone_backup_decrypt refuses keybags beyond these (utils.py limits);
/// a bound also keeps a hostile keybag from pinning a CPU for hours.
pub const MAX_DPIC: u32 = 20_000_000;
pub const MAX_ITER: u32 = 1_000_000;
/// What devices use (fact sheet §5.1).
pub const DEVICE_DPIC: u32 = 10_000_000;
pub const DEVICE_ITER: u32 = 10_000;

fn bad(m: impl Into<String>) -> StoreError {
    StoreError::Record(m.into())
}

/// The password did not unlock the keybag.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("wrong backup password")]
pub struct WrongPassword;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClassKey {
    pub uuid: Vec<u8>,
    pub class: u32,
    pub wrap: u32,
    pub key_type: u32,
    pub wrapped: Vec<u8>,
    /// The unwrapped key, once unlocked.
    pub key: Option<[u8; 32]>,
}

/// A parsed `BackupKeyBag`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Keybag {
    pub version: u32,
    pub kind: u32,
    pub uuid: Vec<u8>,
    pub hmck: Vec<u8>,
    pub wrap: u32,
    pub salt: Vec<u8>,
    pub iterations: u32,
    pub dp_wrap: Option<u32>,
    pub dp_iterations: Option<u32>,
    pub dp_salt: Option<Vec<u8>>,
    pub classes: Vec<ClassKey>,
}

fn be32(v: &[u8]) -> Result<u32> {
    let a: [u8; 4] = v
        .try_into()
        .map_err(|_| bad("keybag integer is not 4 bytes"))?;
    Ok(u32::from_be_bytes(a))
}

impl Keybag {
    /// Parse the TLV form: `tag(4) | u32 BE length | value`. The first
    /// `UUID` is the keybag's; each later one opens a class block.
    pub fn parse(bytes: &[u8]) -> Result<Keybag> {
        let mut kb = Keybag {
            version: 0,
            kind: 0,
            uuid: Vec::new(),
            hmck: Vec::new(),
            wrap: 0,
            salt: Vec::new(),
            iterations: 0,
            dp_wrap: None,
            dp_iterations: None,
            dp_salt: None,
            classes: Vec::new(),
        };
        let mut i = 0;
        let mut current: Option<ClassKey> = None;
        while i < bytes.len() {
            if bytes.len() - i < 8 {
                return Err(bad("truncated keybag tag"));
            }
            let tag = &bytes[i..i + 4];
            let len = u32::from_be_bytes(bytes[i + 4..i + 8].try_into().expect("4 bytes")) as usize;
            let v = bytes
                .get(i + 8..i + 8 + len)
                .ok_or_else(|| bad("keybag value runs past the end"))?;
            i += 8 + len;
            match tag {
                b"UUID" if kb.uuid.is_empty() => kb.uuid = v.to_vec(),
                b"UUID" => {
                    if let Some(c) = current.take() {
                        kb.classes.push(c);
                    }
                    current = Some(ClassKey {
                        uuid: v.to_vec(),
                        class: 0,
                        wrap: 0,
                        key_type: 0,
                        wrapped: Vec::new(),
                        key: None,
                    });
                }
                _ => match (current.as_mut(), tag) {
                    (Some(c), b"CLAS") => c.class = be32(v)?,
                    (Some(c), b"WRAP") => c.wrap = be32(v)?,
                    (Some(c), b"KTYP") => c.key_type = be32(v)?,
                    (Some(c), b"WPKY") => c.wrapped = v.to_vec(),
                    (Some(_), _) => {}
                    (None, b"VERS") => kb.version = be32(v)?,
                    (None, b"TYPE") => kb.kind = be32(v)?,
                    (None, b"HMCK") => kb.hmck = v.to_vec(),
                    (None, b"WRAP") => kb.wrap = be32(v)?,
                    (None, b"SALT") => kb.salt = v.to_vec(),
                    (None, b"ITER") => kb.iterations = be32(v)?,
                    (None, b"DPWT") => kb.dp_wrap = Some(be32(v)?),
                    (None, b"DPIC") => kb.dp_iterations = Some(be32(v)?),
                    (None, b"DPSL") => kb.dp_salt = Some(v.to_vec()),
                    (None, _) => {}
                },
            }
        }
        if let Some(c) = current {
            kb.classes.push(c);
        }
        if kb.uuid.is_empty() || kb.salt.is_empty() {
            return Err(bad("keybag without UUID or SALT"));
        }
        Ok(kb)
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        let mut tag = |t: &[u8; 4], v: &[u8]| {
            out.extend_from_slice(t);
            out.extend_from_slice(&(v.len() as u32).to_be_bytes());
            out.extend_from_slice(v);
        };
        tag(b"VERS", &self.version.to_be_bytes());
        tag(b"TYPE", &self.kind.to_be_bytes());
        tag(b"UUID", &self.uuid);
        tag(b"HMCK", &self.hmck);
        tag(b"WRAP", &self.wrap.to_be_bytes());
        tag(b"SALT", &self.salt);
        tag(b"ITER", &self.iterations.to_be_bytes());
        if let Some(w) = self.dp_wrap {
            tag(b"DPWT", &w.to_be_bytes());
        }
        if let Some(n) = self.dp_iterations {
            tag(b"DPIC", &n.to_be_bytes());
        }
        if let Some(s) = &self.dp_salt {
            tag(b"DPSL", s);
        }
        for c in &self.classes {
            tag(b"UUID", &c.uuid);
            tag(b"CLAS", &c.class.to_be_bytes());
            tag(b"WRAP", &c.wrap.to_be_bytes());
            tag(b"KTYP", &c.key_type.to_be_bytes());
            tag(b"WPKY", &c.wrapped);
        }
        out
    }

    /// Whether this keybag protects an encrypted backup (has the double-protection salt).
    pub fn is_password_protected(&self) -> bool {
        self.dp_salt.is_some() && self.dp_iterations.is_some()
    }

    /// PBKDF2-SHA256 (DPSL, DPIC) then PBKDF2-SHA1 (SALT, ITER), 32 bytes.
    pub fn derive_kek(&self, password: &str) -> Result<[u8; 32]> {
        if self.iterations == 0 || self.iterations > MAX_ITER {
            return Err(bad(format!("keybag ITER {} out of range", self.iterations)));
        }
        let mut k1 = [0u8; 32];
        let first: &[u8] = match (&self.dp_salt, self.dp_iterations) {
            (Some(salt), Some(n)) => {
                if n == 0 || n > MAX_DPIC {
                    return Err(bad(format!("keybag DPIC {n} out of range")));
                }
                pbkdf2::pbkdf2_hmac::<Sha256>(password.as_bytes(), salt, n, &mut k1);
                &k1
            }
            _ => password.as_bytes(),
        };
        let mut kek = [0u8; 32];
        pbkdf2::pbkdf2_hmac::<sha1::Sha1>(first, &self.salt, self.iterations, &mut kek);
        Ok(kek)
    }

    /// Unwrap every password-wrapped class key. Any integrity failure means
    /// the password is wrong.
    pub fn unlock_with_kek(&mut self, kek: &[u8; 32]) -> std::result::Result<(), WrongPassword> {
        let kek = KekAes256::from(*kek);
        for c in self.classes.iter_mut().filter(|c| c.wrap & 2 != 0) {
            if c.wrapped.len() != 40 {
                return Err(WrongPassword);
            }
            let mut key = [0u8; 32];
            kek.unwrap(&c.wrapped, &mut key)
                .map_err(|_| WrongPassword)?;
            c.key = Some(key);
        }
        Ok(())
    }

    pub fn unlock(&mut self, password: &str) -> Result<std::result::Result<(), WrongPassword>> {
        let kek = self.derive_kek(password)?;
        Ok(self.unlock_with_kek(&kek))
    }

    /// A new backup keybag for `password`, with fresh class keys 1–11
    /// (1–4 password-wrapped, 5–11 also device-wrapped as on real devices,
    /// which a host cannot unwrap further). The returned keybag is unlocked.
    pub fn new_backup<R: RngCore + CryptoRng>(
        password: &str,
        dp_iterations: u32,
        rng: &mut R,
    ) -> Result<Keybag> {
        let mut bytes = |n: usize| {
            let mut v = vec![0u8; n];
            rng.fill_bytes(&mut v);
            v
        };
        let mut kb = Keybag {
            version: 5,
            kind: 1,
            uuid: bytes(16),
            hmck: bytes(40),
            wrap: 0,
            salt: bytes(20),
            iterations: DEVICE_ITER,
            dp_wrap: Some(1),
            dp_iterations: Some(dp_iterations),
            dp_salt: Some(bytes(20)),
            classes: Vec::new(),
        };
        let kek = KekAes256::from(kb.derive_kek(password)?);
        for class in 1..=11u32 {
            let key: [u8; 32] = bytes(32).try_into().expect("32 bytes");
            let mut wrapped = vec![0u8; 40];
            kek.wrap(&key, &mut wrapped)
                .map_err(|e| bad(format!("key wrap: {e}")))?;
            kb.classes.push(ClassKey {
                uuid: bytes(16),
                class,
                wrap: if class <= 4 { 2 } else { 3 },
                key_type: 0,
                wrapped,
                key: Some(key),
            });
        }
        Ok(kb)
    }

    /// The keybag an unencrypted backup carries (fact sheet §2.2, shape of
    /// TrollRestore's device-made one): no DPSL/DPIC, HMCK zeros, classes
    /// 1–4 WRAP 2 and 5–11 WRAP 3 with random wrapped keys nobody unwraps.
    pub fn unprotected<R: RngCore + CryptoRng>(rng: &mut R) -> Keybag {
        let mut bytes = |n: usize| {
            let mut v = vec![0u8; n];
            rng.fill_bytes(&mut v);
            v
        };
        let classes = (1..=11u32)
            .map(|class| ClassKey {
                uuid: bytes(16),
                class,
                wrap: if class <= 4 { 2 } else { 3 },
                key_type: 0,
                wrapped: bytes(40),
                key: None,
            })
            .collect();
        Keybag {
            version: 5,
            kind: 1,
            uuid: bytes(16),
            hmck: vec![0; 40],
            wrap: 0,
            salt: bytes(20),
            iterations: DEVICE_ITER,
            dp_wrap: None,
            dp_iterations: None,
            dp_salt: None,
            classes,
        }
    }

    fn class_kek(&self, class: u32) -> Result<KekAes256> {
        let key = self
            .classes
            .iter()
            .find(|c| c.class == class)
            .and_then(|c| c.key)
            .ok_or_else(|| {
                bad(format!(
                    "protection class {class} is not in the keybag or not unlocked"
                ))
            })?;
        Ok(KekAes256::from(key))
    }

    /// `u32 LE class ‖ AES-wrap(classKey, key)`: the 44-byte form of
    /// `EncryptionKey` and `ManifestKey`.
    pub fn wrap_key(&self, class: u32, key: &[u8; 32]) -> Result<Vec<u8>> {
        let mut out = class.to_le_bytes().to_vec();
        out.resize(44, 0);
        self.class_kek(class)?
            .wrap(key, &mut out[4..])
            .map_err(|e| bad(format!("key wrap: {e}")))?;
        Ok(out)
    }

    pub fn unwrap_key(&self, blob: &[u8]) -> Result<[u8; 32]> {
        if blob.len() != 44 {
            return Err(bad(format!(
                "wrapped key of {} bytes, expected 44",
                blob.len()
            )));
        }
        let class = u32::from_le_bytes(blob[..4].try_into().expect("4 bytes"));
        let mut key = [0u8; 32];
        self.class_kek(class)?
            .unwrap(&blob[4..], &mut key)
            .map_err(|_| bad(format!("key of class {class} does not unwrap")))?;
        Ok(key)
    }
}

/// Streaming AES-256-CBC encryption, zero IV, PKCS#7 (always at least one
/// padding byte, so aligned input gains a full block, as devices write).
pub struct CbcEncryptor {
    enc: Enc,
    pending: Vec<u8>,
}

impl CbcEncryptor {
    pub fn new(key: &[u8; 32]) -> Self {
        CbcEncryptor {
            enc: Enc::new(key.into(), &[0u8; 16].into()),
            pending: Vec::with_capacity(16),
        }
    }

    /// Encrypt what forms whole blocks, appending ciphertext to `out`.
    pub fn update(&mut self, mut data: &[u8], out: &mut Vec<u8>) {
        if !self.pending.is_empty() {
            let need = 16 - self.pending.len();
            let take = need.min(data.len());
            self.pending.extend_from_slice(&data[..take]);
            data = &data[take..];
            if self.pending.len() < 16 {
                return;
            }
            let mut block: [u8; 16] = self.pending[..].try_into().expect("16 bytes");
            self.enc.encrypt_block_mut((&mut block).into());
            out.extend_from_slice(&block);
            self.pending.clear();
        }
        let whole = data.len() / 16 * 16;
        let start = out.len();
        out.extend_from_slice(&data[..whole]);
        for chunk in out[start..].chunks_exact_mut(16) {
            self.enc.encrypt_block_mut(chunk.into());
        }
        self.pending.extend_from_slice(&data[whole..]);
    }

    pub fn finish(mut self, out: &mut Vec<u8>) {
        let pad = 16 - self.pending.len() as u8;
        let mut block = [pad; 16];
        block[..self.pending.len()].copy_from_slice(&self.pending);
        self.enc.encrypt_block_mut((&mut block).into());
        out.extend_from_slice(&block);
    }
}

/// Streaming decryption that holds back the last block until `finish`
/// strips and checks the padding.
pub struct CbcDecryptor {
    dec: Dec,
    pending: Vec<u8>,
}

impl CbcDecryptor {
    pub fn new(key: &[u8; 32]) -> Self {
        CbcDecryptor {
            dec: Dec::new(key.into(), &[0u8; 16].into()),
            pending: Vec::with_capacity(32),
        }
    }

    pub fn update(&mut self, data: &[u8], out: &mut Vec<u8>) {
        self.pending.extend_from_slice(data);
        // Keep at least one whole block (and any partial one) back.
        let keep = match self.pending.len() % 16 {
            0 => 16,
            r => r,
        }
        .min(self.pending.len());
        let ready = self.pending.len() - keep;
        let start = out.len();
        out.extend_from_slice(&self.pending[..ready]);
        // Whole runs of blocks at once: CBC decryption is parallel, and the
        // AES-NI backend decrypts several blocks per instruction stream.
        let (blocks, rest) = aes::cipher::inout::InOutBuf::from(&mut out[start..]).into_chunks();
        debug_assert!(rest.is_empty());
        self.dec.decrypt_blocks_inout_mut(blocks);
        self.pending.drain(..ready);
    }

    /// Decrypt whole blocks in place (nothing may be pending from `update`).
    pub fn decrypt_in_place(&mut self, data: &mut [u8]) {
        assert!(self.pending.is_empty() && data.len().is_multiple_of(16));
        let (blocks, _) = aes::cipher::inout::InOutBuf::from(data).into_chunks();
        self.dec.decrypt_blocks_inout_mut(blocks);
    }

    /// Strip PKCS#7; an error when the length or padding is wrong (a wrong
    /// key, or a damaged or truncated file).
    pub fn finish(mut self, out: &mut Vec<u8>) -> Result<()> {
        if self.pending.len() != 16 {
            return Err(bad("encrypted content is not a whole number of blocks"));
        }
        let mut block: [u8; 16] = self.pending[..].try_into().expect("16 bytes");
        self.dec.decrypt_block_mut((&mut block).into());
        let pad = block[15];
        if pad == 0 || pad > 16 || block[16 - pad as usize..].iter().any(|b| *b != pad) {
            return Err(bad("bad PKCS#7 padding"));
        }
        out.extend_from_slice(&block[..16 - pad as usize]);
        Ok(())
    }
}

pub fn encrypt(key: &[u8; 32], plain: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(plain.len() + 16);
    let mut e = CbcEncryptor::new(key);
    e.update(plain, &mut out);
    e.finish(&mut out);
    out
}

pub fn decrypt(key: &[u8; 32], cipher: &[u8]) -> Result<Vec<u8>> {
    let mut out = Vec::with_capacity(cipher.len());
    let mut d = CbcDecryptor::new(key);
    d.update(cipher, &mut out);
    d.finish(&mut out)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn unhex(s: &str) -> Vec<u8> {
        hex::decode(s).unwrap()
    }

    /// hashcat module 14800 self-test vector (fact sheet §5.2, verified there).
    #[test]
    fn known_answer_kdf_and_unwrap() {
        let kb = Keybag {
            version: 5,
            kind: 1,
            uuid: vec![1; 16],
            hmck: vec![],
            wrap: 0,
            salt: unhex("2721336781705041205314422175267631184867"),
            iterations: 10000,
            dp_wrap: Some(1),
            dp_iterations: Some(1000),
            dp_salt: Some(unhex("99fafc983e732998adb9fadc162a2e382143f115")),
            classes: vec![ClassKey {
                uuid: vec![2; 16],
                class: 1,
                wrap: 2,
                key_type: 0,
                wrapped: unhex("17a3b858e79bc273be43a9f113b71efe7ec8e7e401396b350180b4592ef45db67ffef7b2d64329a5"),
                key: None,
            }],
        };
        let kek = kb.derive_kek("hashcat").unwrap();
        assert_eq!(
            hex::encode(kek),
            "ca1bdd8196307fe1e2ed421321267d96e2988bf12f736035192cfed20ec823ea"
        );
        let mut unlocked = kb.clone();
        unlocked.unlock_with_kek(&kek).unwrap();
        assert_eq!(
            hex::encode(unlocked.classes[0].key.unwrap()),
            "2ed7042e87b50000fa6ba698661c000013194470a1f70000c35bd72ce0360000"
        );
        let mut wrong = kb.clone();
        assert_eq!(wrong.unlock("nothashcat").unwrap(), Err(WrongPassword));
        // Encoding round-trips through the parser.
        assert_eq!(Keybag::parse(&kb.encode()).unwrap(), kb);
    }

    #[test]
    fn new_keybag_wraps_and_unwraps_keys() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
        let kb = Keybag::new_backup("pw", 1000, &mut rng).unwrap();
        let mut parsed = Keybag::parse(&kb.encode()).unwrap();
        assert!(parsed.is_password_protected());
        parsed.unlock("pw").unwrap().unwrap();
        let key = [7u8; 32];
        let blob = kb.wrap_key(3, &key).unwrap();
        assert_eq!(&blob[..4], &3u32.to_le_bytes());
        assert_eq!(parsed.unwrap_key(&blob).unwrap(), key);
        assert!(parsed.unwrap_key(&blob[..40]).is_err());
        let mut locked = Keybag::parse(&kb.encode()).unwrap();
        assert!(locked.unlock("PW").unwrap().is_err());
    }

    #[test]
    fn cbc_round_trips_in_any_chunking_and_pads_aligned_input() {
        let key = [9u8; 32];
        for n in [0usize, 1, 15, 16, 17, 4096, 100_003] {
            let plain: Vec<u8> = (0..n).map(|i| (i * 31 % 251) as u8).collect();
            let c = encrypt(&key, &plain);
            assert_eq!(c.len(), n / 16 * 16 + 16);
            let mut e = CbcEncryptor::new(&key);
            let mut streamed = Vec::new();
            for chunk in plain.chunks(7) {
                e.update(chunk, &mut streamed);
            }
            e.finish(&mut streamed);
            assert_eq!(streamed, c);
            let mut d = CbcDecryptor::new(&key);
            let mut back = Vec::new();
            for chunk in c.chunks(13) {
                d.update(chunk, &mut back);
            }
            d.finish(&mut back).unwrap();
            assert_eq!(back, plain);
        }
        assert!(
            decrypt(&[8u8; 32], &encrypt(&key, b"secret")).is_err(),
            "wrong key fails the padding check (almost always)"
        );
        assert!(decrypt(&key, &[0u8; 15]).is_err());
    }

    #[test]
    fn unprotected_keybag_round_trips_and_has_no_password() {
        let kb = Keybag::unprotected(&mut rand_chacha::ChaCha8Rng::seed_from_u64(6));
        let back = Keybag::parse(&kb.encode()).unwrap();
        assert_eq!(back, kb);
        assert!(!back.is_password_protected());
        assert_eq!(back.classes.len(), 11);
    }

    #[test]
    fn hostile_keybags_are_errors() {
        assert!(Keybag::parse(b"VERS\x00\x00\x00\x04").is_err());
        assert!(Keybag::parse(b"VERS\xff\xff\xff\xff").is_err());
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(4);
        let mut kb = Keybag::new_backup("pw", 1000, &mut rng).unwrap();
        kb.dp_iterations = Some(MAX_DPIC + 1);
        assert!(kb.derive_kek("pw").is_err());
    }
}
