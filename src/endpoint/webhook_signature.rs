//! The signature on webhook posts, so a receiver can tell a post from this
//! endpoint from anyone else's: with `--webhook-secret`, each post carries
//! `X-Jobpipe-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256 of
//! "<t>.<body>">`, Stripe's scheme. Signing the time with the body lets a
//! receiver refuse old posts replayed by someone who saw one. Without a
//! secret no header is sent. The secret is never printed: this type has no
//! `Debug` and error messages never hold it.

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

/// The header's name.
pub const HEADER: &str = "X-Jobpipe-Signature";

/// Signs post bodies with the configured secret.
#[derive(Clone)]
pub(super) struct Signer {
    key: Hmac<Sha256>,
}

impl Signer {
    pub(super) fn new(secret: &str) -> Signer {
        Signer {
            // HMAC takes a key of any length.
            key: Hmac::new_from_slice(secret.as_bytes()).expect("HMAC accepts any key length"),
        }
    }

    /// The header's value for `body` sent at `unix_seconds`.
    pub(super) fn header(&self, body: &[u8], unix_seconds: u64) -> String {
        let mut mac = self.key.clone();
        mac.update(unix_seconds.to_string().as_bytes());
        mac.update(b".");
        mac.update(body);
        let digest = mac.finalize().into_bytes();
        let hex = crate::text::hex(&digest);
        format!("t={unix_seconds},v1={hex}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_signature_is_hmac_sha256_of_the_time_and_body() {
        // Python: hmac.new(b"whsec_test", b'1700000000.{"id":"j1"}',
        // hashlib.sha256).hexdigest()
        let signer = Signer::new("whsec_test");
        assert_eq!(
            signer.header(br#"{"id":"j1"}"#, 1_700_000_000),
            "t=1700000000,v1=dc498648beb37ef9558bf34aa28aad5dd4ab1f611dbc1c741bf02cdd69d71603"
        );
    }
}
