//! AES-256-GCM sealing with a key ring: every ciphertext names the key that sealed it, so a
//! new key can take over while old ciphertexts are re-encrypted in the background.

pub use crate::model::secret::Sealed;
use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Key, Nonce};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

/// Errors of keys and sealing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CryptoError {
    #[error("{var}: expected 64 hexadecimal characters (a 32-byte key), got {got}")]
    MalformedKey { var: &'static str, got: String },
    #[error(
        "sealed with key {0}, which is neither MANTLE_ENCRYPTION_KEY nor MANTLE_ENCRYPTION_KEY_PREVIOUS"
    )]
    UnknownKey(String),
    #[error(
        "cannot decrypt: the ciphertext was altered, or it belongs to another tenant or secret"
    )]
    Tampered,
}

struct SealingKey {
    id: String,
    cipher: Aes256Gcm,
}

impl SealingKey {
    fn from_hex(var: &'static str, text: &str) -> Result<SealingKey, CryptoError> {
        let text = text.trim();
        let malformed = || CryptoError::MalformedKey {
            var,
            got: if text.len() == 64 {
                "64 characters that are not all hexadecimal".to_owned()
            } else {
                format!("{} characters", text.len())
            },
        };
        if text.len() != 64 {
            return Err(malformed());
        }
        let bytes = Zeroizing::new(hex::decode(text).map_err(|_| malformed())?);
        let key = Key::<Aes256Gcm>::try_from(bytes.as_slice()).map_err(|_| malformed())?;
        Ok(SealingKey {
            id: key_id(&bytes),
            cipher: Aes256Gcm::new(&key),
        })
    }
}

/// A short, stable, non-secret name for a key: 8 bytes of a hash of it, in hex.
fn key_id(key: &[u8]) -> String {
    let mut h = Sha256::new();
    h.update(b"mantle key id\0");
    h.update(key);
    hex::encode(&h.finalize()[..8])
}

/// The current key, and the previous one while a rotation is under way.
pub struct KeyRing {
    current: SealingKey,
    previous: Option<SealingKey>,
}

impl std::fmt::Debug for KeyRing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyRing")
            .field("current", &self.current.id)
            .field("previous", &self.previous.as_ref().map(|k| &k.id))
            .finish()
    }
}

const CHECK_AAD: &[u8] = b"mantle key check";
const CHECK_PLAINTEXT: &[u8] = b"mantle";

impl KeyRing {
    /// Builds the ring from `MANTLE_ENCRYPTION_KEY` and `MANTLE_ENCRYPTION_KEY_PREVIOUS`.
    pub fn from_hex(current: &str, previous: Option<&str>) -> Result<KeyRing, CryptoError> {
        let current = SealingKey::from_hex("MANTLE_ENCRYPTION_KEY", current)?;
        let previous = previous
            .filter(|p| !p.trim().is_empty())
            .map(|p| SealingKey::from_hex("MANTLE_ENCRYPTION_KEY_PREVIOUS", p))
            .transpose()?;
        Ok(KeyRing { current, previous })
    }

    /// A new random key, as 64 hex characters.
    pub fn generate_hex() -> Zeroizing<String> {
        let mut bytes = Zeroizing::new([0u8; 32]);
        getrandom::fill(bytes.as_mut()).expect("the operating system's random source failed");
        Zeroizing::new(hex::encode(bytes.as_ref()))
    }

    pub fn current_id(&self) -> &str {
        &self.current.id
    }

    pub fn previous_id(&self) -> Option<&str> {
        self.previous.as_ref().map(|k| k.id.as_str())
    }

    /// Whether a key id is one this ring can open.
    pub fn knows(&self, key_id: &str) -> bool {
        self.key(key_id).is_some()
    }

    fn key(&self, key_id: &str) -> Option<&SealingKey> {
        if self.current.id == key_id {
            Some(&self.current)
        } else {
            self.previous.as_ref().filter(|k| k.id == key_id)
        }
    }

    /// Seals with the current key and a fresh random nonce; `aad` binds the ciphertext to
    /// its owner, so a copy moved elsewhere does not open.
    pub fn seal(&self, aad: &[u8], plaintext: &[u8]) -> Sealed {
        let mut nonce = [0u8; 12];
        getrandom::fill(&mut nonce).expect("the operating system's random source failed");
        let ciphertext = self
            .current
            .cipher
            .encrypt(
                &Nonce::from(nonce),
                Payload {
                    msg: plaintext,
                    aad,
                },
            )
            .expect("AES-GCM encryption of a bounded message cannot fail");
        Sealed {
            key_id: self.current.id.clone(),
            nonce: nonce.to_vec(),
            ciphertext,
        }
    }

    pub fn open(&self, sealed: &Sealed, aad: &[u8]) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
        let key = self
            .key(&sealed.key_id)
            .ok_or_else(|| CryptoError::UnknownKey(sealed.key_id.clone()))?;
        let nonce: [u8; 12] = sealed
            .nonce
            .as_slice()
            .try_into()
            .map_err(|_| CryptoError::Tampered)?;
        key.cipher
            .decrypt(
                &Nonce::from(nonce),
                Payload {
                    msg: &sealed.ciphertext,
                    aad,
                },
            )
            .map(Zeroizing::new)
            .map_err(|_| CryptoError::Tampered)
    }

    /// A check value for the current key: proves later that a configured key is the same
    /// one, not merely one with the same id.
    pub fn check_value(&self) -> Sealed {
        self.seal(CHECK_AAD, CHECK_PLAINTEXT)
    }

    /// Whether `check` was made by one of this ring's keys.
    pub fn verify_check_value(&self, check: &Sealed) -> bool {
        self.open(check, CHECK_AAD)
            .is_ok_and(|p| p.as_slice() == CHECK_PLAINTEXT)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const K1: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";
    const K2: &str = "1f1e1d1c1b1a191817161514131211100f0e0d0c0b0a09080706050403020100";

    #[test]
    fn seals_and_opens_with_the_same_aad_only() {
        let ring = KeyRing::from_hex(K1, None).unwrap();
        let sealed = ring.seal(b"tenant-a/db", b"s3cret");
        assert_eq!(sealed.key_id, ring.current_id());
        assert_eq!(
            ring.open(&sealed, b"tenant-a/db").unwrap().as_slice(),
            b"s3cret"
        );
        assert_eq!(
            ring.open(&sealed, b"tenant-b/db"),
            Err(CryptoError::Tampered)
        );
        let other = ring.seal(b"tenant-a/db", b"s3cret");
        assert_ne!(sealed.nonce, other.nonce, "every seal uses a fresh nonce");
    }

    #[test]
    fn tampering_is_detected() {
        let ring = KeyRing::from_hex(K1, None).unwrap();
        let mut sealed = ring.seal(b"aad", b"value");
        sealed.ciphertext[0] ^= 1;
        assert_eq!(ring.open(&sealed, b"aad"), Err(CryptoError::Tampered));
    }

    #[test]
    fn rotation_opens_old_ciphertexts_with_the_previous_key() {
        let old = KeyRing::from_hex(K1, None).unwrap();
        let sealed = old.seal(b"aad", b"value");
        let rotated = KeyRing::from_hex(K2, Some(K1)).unwrap();
        assert_eq!(rotated.open(&sealed, b"aad").unwrap().as_slice(), b"value");
        assert_ne!(rotated.seal(b"aad", b"value").key_id, sealed.key_id);
        let new_only = KeyRing::from_hex(K2, None).unwrap();
        assert_eq!(
            new_only.open(&sealed, b"aad"),
            Err(CryptoError::UnknownKey(sealed.key_id.clone()))
        );
    }

    #[test]
    fn check_values_tell_keys_apart() {
        let ring = KeyRing::from_hex(K1, None).unwrap();
        let check = ring.check_value();
        assert!(ring.verify_check_value(&check));
        assert!(
            !KeyRing::from_hex(K2, None)
                .unwrap()
                .verify_check_value(&check)
        );
    }

    #[test]
    fn malformed_keys_are_explained() {
        let err = KeyRing::from_hex("abc", None).unwrap_err();
        assert_eq!(
            err.to_string(),
            "MANTLE_ENCRYPTION_KEY: expected 64 hexadecimal characters (a 32-byte key), got 3 characters"
        );
        let err = KeyRing::from_hex(K1, Some(&"zz".repeat(32))).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("MANTLE_ENCRYPTION_KEY_PREVIOUS:"),
            "{err}"
        );
        assert_eq!(KeyRing::generate_hex().len(), 64);
    }
}
