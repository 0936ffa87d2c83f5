//! API key tokens: `mntl_<id>_<secret>`, stored only as a SHA-256 hash.
//!
//! The id (32 hex characters, a UUIDv7 so keys list newest first) locates the stored key;
//! the secret is 32 random bytes. 256 bits of entropy make an unsalted hash safe: there is
//! nothing to brute-force. The stored hash is compared in constant time.

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

const PREFIX: &str = "mntl_";

/// A freshly minted token and what gets stored of it.
pub struct MintedToken {
    pub id: String,
    pub token: String,
    pub hash: [u8; 32],
}

/// Creates a new random token.
pub fn mint() -> MintedToken {
    let id = uuid::Uuid::now_v7().simple().to_string();
    let mut secret = [0u8; 32];
    getrandom::fill(&mut secret).expect("the operating system's random source failed");
    let token = format!("{PREFIX}{id}_{}", hex::encode(secret));
    let hash = hash(&token);
    MintedToken { id, token, hash }
}

/// The key id inside a well-formed token, or `None` when the token is not one of ours.
pub fn key_id(token: &str) -> Option<&str> {
    let rest = token.strip_prefix(PREFIX)?;
    let (id, secret) = rest.split_once('_')?;
    let is_hex = |s: &str, len: usize| {
        s.len() == len
            && s.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
    (is_hex(id, 32) && is_hex(secret, 64)).then_some(id)
}

/// SHA-256 of the whole token.
pub fn hash(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// Constant-time comparison of a presented token against a stored hash.
pub fn matches(token: &str, stored_hash: &[u8]) -> bool {
    hash(token).as_slice().ct_eq(stored_hash).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minted_tokens_parse_and_match_their_hash() {
        let t = mint();
        assert_eq!(key_id(&t.token), Some(t.id.as_str()));
        assert!(matches(&t.token, &t.hash));
        assert!(!matches(&format!("{}0", t.token), &t.hash));
        assert_eq!(t.token.len(), 5 + 32 + 1 + 64);
    }

    #[test]
    fn minted_tokens_differ() {
        assert_ne!(mint().token, mint().token);
    }

    #[test]
    fn malformed_tokens_have_no_id() {
        for bad in [
            "",
            "mntl_",
            "mntl_abc_def",
            "Bearer mntl_x",
            &format!("mntl_{}_{}", "A".repeat(32), "0".repeat(64)),
            &format!("mntl_{}_{}", "0".repeat(32), "0".repeat(63)),
            &format!("xxxx_{}_{}", "0".repeat(32), "0".repeat(64)),
        ] {
            assert_eq!(key_id(bad), None, "{bad}");
        }
        let good = format!("mntl_{}_{}", "0".repeat(32), "f".repeat(64));
        assert_eq!(key_id(&good), Some("0".repeat(32).as_str()));
    }
}
