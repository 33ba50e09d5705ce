//! Sealing what the admin API hands out or keeps for later (list cursors, idempotent responses):
//! ChaCha20-Poly1305 under a key derived from the admin token and a purpose, with associated
//! data that binds the sealed bytes to where they may be used. Hex, nonce first.

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Nonce};
use sha2::{Digest, Sha256};

use crate::problem::{Problem, internal_error};

fn cipher(purpose: &str, token: &str) -> ChaCha20Poly1305 {
    let key = Sha256::digest(format!("keygate-{purpose}:{token}").as_bytes());
    ChaCha20Poly1305::new(&key)
}

/// `Err` is a 500: nothing sealed must ever be replaced by something unsealed.
pub(super) fn seal(purpose: &str, token: &str, aad: &[u8], plain: &[u8]) -> Result<String, Problem> {
    let mut nonce = [0u8; 12];
    getrandom::fill(&mut nonce).map_err(|_| internal_error("No randomness available."))?;
    let sealed = cipher(purpose, token)
        .encrypt(Nonce::from_slice(&nonce), Payload { msg: plain, aad })
        .map_err(|_| internal_error("Sealing failed."))?;
    let mut out = nonce.to_vec();
    out.extend_from_slice(&sealed);
    Ok(hex::encode(out))
}

/// `None` when `sealed` was not sealed for this purpose, token and associated data.
pub(super) fn open(purpose: &str, token: &str, aad: &[u8], sealed: &str) -> Option<Vec<u8>> {
    let bytes = hex::decode(sealed).ok()?;
    let (nonce, body) = (bytes.get(..12)?, bytes.get(12..)?);
    cipher(purpose, token)
        .decrypt(Nonce::from_slice(nonce), Payload { msg: body, aad })
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_bytes_open_only_where_they_were_sealed() {
        let s = seal("cursor", "token", b"scope", b"raw").unwrap();
        assert_eq!(open("cursor", "token", b"scope", &s).unwrap(), b"raw");
        assert!(open("cursor", "token", b"other", &s).is_none());
        assert!(open("idempotency", "token", b"scope", &s).is_none());
        assert!(open("cursor", "other token", b"scope", &s).is_none());
        assert!(open("cursor", "token", b"scope", "zz").is_none());
    }
}
