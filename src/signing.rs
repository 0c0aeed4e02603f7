//! Standard Webhooks signatures: `v1,<base64 HMAC-SHA256>` over
//! `{webhook-id}.{webhook-timestamp}.{body}`, keyed with the base64 part of
//! the endpoint's `whsec_…` secret, so receivers can verify with any Standard
//! Webhooks library.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, Mac};
use sha2::Sha256;

const SECRET_PREFIX: &str = "whsec_";

#[derive(Debug, thiserror::Error)]
pub enum SigningError {
    /// The message never includes the secret itself.
    #[error("endpoint secret is not 'whsec_' followed by base64")]
    MalformedSecret,
}

/// A decoded signing key. Its `Debug` never shows the key.
#[derive(Clone)]
pub struct SigningKey(Vec<u8>);

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SigningKey(<redacted>)")
    }
}

impl SigningKey {
    pub fn from_secret(secret: &str) -> Result<Self, SigningError> {
        let encoded = secret.strip_prefix(SECRET_PREFIX).unwrap_or(secret);
        let key = STANDARD
            .decode(encoded)
            .map_err(|_| SigningError::MalformedSecret)?;
        if key.is_empty() {
            return Err(SigningError::MalformedSecret);
        }
        Ok(Self(key))
    }

    /// The `webhook-signature` header value.
    pub fn sign(&self, msg_id: &str, timestamp: i64, body: &[u8]) -> String {
        let mac = self.mac(msg_id, timestamp, body);
        format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()))
    }

    /// HMAC-SHA256 over `msg_id.timestamp.body`, the signed content.
    fn mac(&self, msg_id: &str, timestamp: i64, body: &[u8]) -> Hmac<Sha256> {
        // HMAC accepts keys of any length; new_from_slice cannot fail for it.
        let mut mac = match Hmac::<Sha256>::new_from_slice(&self.0) {
            Ok(mac) => mac,
            Err(_) => unreachable!("HMAC-SHA256 takes keys of any length"),
        };
        mac.update(msg_id.as_bytes());
        mac.update(b".");
        mac.update(timestamp.to_string().as_bytes());
        mac.update(b".");
        mac.update(body);
        mac
    }

    /// Whether a `webhook-signature` header (space-separated `v1,<base64>`
    /// signatures) holds a valid signature of this message by this key, as
    /// a receiver checks it (in constant time).
    pub fn verify(&self, msg_id: &str, timestamp: i64, body: &[u8], header: &str) -> bool {
        header.split_whitespace().any(|signature| {
            let Some(encoded) = signature.strip_prefix("v1,") else {
                return false;
            };
            let Ok(expected) = STANDARD.decode(encoded) else {
                return false;
            };
            self.mac(msg_id, timestamp, body)
                .verify_slice(&expected)
                .is_ok()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signature_verifies_with_its_key_only() {
        let key = SigningKey::from_secret("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").expect("key");
        let other = SigningKey::from_secret("whsec_bm90IHRoZSBzYW1lIGtleSBhdCBhbGwh").expect("key");
        let signature = key.sign("msg_1", 1_700_000_000, b"{}");
        assert!(key.verify(
            "msg_1",
            1_700_000_000,
            b"{}",
            &format!("v1,bad {signature}")
        ));
        assert!(!key.verify("msg_1", 1_700_000_001, b"{}", &signature));
        assert!(!other.verify("msg_1", 1_700_000_000, b"{}", &signature));
    }

    /// The example published with the Standard Webhooks specification.
    #[test]
    fn matches_the_specification_example() {
        let key = SigningKey::from_secret("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").expect("key");
        let sig = key.sign(
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            1614265330,
            br#"{"test": 2432232314}"#,
        );
        assert_eq!(sig, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
    }

    #[test]
    fn rejects_a_secret_that_is_not_base64_without_echoing_it() {
        let err = SigningKey::from_secret("whsec_not*base64!").expect_err("malformed");
        assert!(!err.to_string().contains("not*base64"));
        assert_eq!(
            format!("{:?}", SigningKey::from_secret("whsec_AAAA").expect("key")),
            "SigningKey(<redacted>)"
        );
    }
}
