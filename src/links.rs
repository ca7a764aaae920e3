//! Links in outgoing mail: one-click unsubscribe (RFC 8058), the preference page, the open
//! pixel and click redirects. A token is the claims (postcard) sealed with AES-SIV (RFC 5297,
//! the `aes-siv` crate) under a key derived from `mail.secret`, in base64url: a recipient can
//! neither read whose link it is (contact, workflow, destination) nor forge one, for someone
//! else or as an open redirect. SIV is deterministic, so the same message renders the same
//! links on every attempt.
//!
//! Secrets from before a rotation (`mail.previous_secrets`) still open tokens. Tokens of the
//! earlier format (`base64url(JSON claims).base64url(HMAC-SHA256)`, readable) are still
//! verified under the same secrets, so links in mail already delivered keep working.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

/// The HMAC bytes of an earlier-format token.
const MAC_LEN: usize = 16;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Purpose {
    #[serde(rename = "u")]
    Unsubscribe,
    #[serde(rename = "o")]
    Open,
    #[serde(rename = "c")]
    Click,
}

/// What a token vouches for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    #[serde(rename = "p")]
    pub purpose: Purpose,
    /// Contact id.
    #[serde(rename = "c")]
    pub contact: String,
    #[serde(rename = "w")]
    pub workflow: String,
    /// Send id (hex) of the message the link is in.
    #[serde(rename = "m")]
    pub message: String,
    /// Click: the destination. Always encoded: postcard has no field names, so a skipped field
    /// would shift the ones after it.
    #[serde(rename = "u", default)]
    pub url: Option<String>,
}

/// Associated data of every sealed token: a token of another use of the same secret (none
/// today) cannot pass for a link token.
const AD: &[u8] = b"dripline link token v2";

/// One secret: its AES-SIV key and, for tokens of the earlier format, its HMAC key.
struct Secret {
    siv: aes_siv::Key<aes_siv::siv::Aes128Siv>,
    legacy: Vec<u8>,
}

impl Secret {
    fn new(secret: &str) -> Self {
        let mut kdf = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes any key length");
        kdf.update(b"dripline link key v2");
        Secret {
            siv: kdf.finalize().into_bytes(),
            legacy: secret.as_bytes().to_vec(),
        }
    }

    fn open(&self, sealed: &[u8]) -> Option<Vec<u8>> {
        use aes_siv::KeyInit;
        aes_siv::siv::Aes128Siv::new(&self.siv).decrypt([AD], sealed).ok()
    }

    fn legacy_mac(&self, data: &[u8]) -> Hmac<Sha256> {
        let mut m = Hmac::<Sha256>::new_from_slice(&self.legacy).expect("HMAC takes any key length");
        m.update(data);
        m
    }
}

pub struct Links {
    /// The current secret first (it seals), then those of before a rotation (they only open).
    secrets: Vec<Secret>,
    base: String,
    mailto: String,
}

impl Links {
    /// `secrets`: the current one first, then any from before a rotation.
    pub fn new(secrets: &[impl AsRef<str>], public_url: &str, mailto: &str) -> Self {
        assert!(!secrets.is_empty(), "links need a secret");
        Links {
            secrets: secrets.iter().map(|s| Secret::new(s.as_ref())).collect(),
            base: public_url.trim_end_matches('/').to_owned(),
            mailto: mailto.to_owned(),
        }
    }

    pub fn from_settings(mail: &crate::config::MailSettings, keys: &crate::auth::Keys) -> Self {
        Links::new(&keys.link_secrets, &mail.public_url, &mail.unsubscribe_mailto)
    }

    /// The token for `claims`: sealed, opaque, URL-safe.
    pub fn sign(&self, claims: &Claims) -> String {
        use aes_siv::KeyInit;
        let body = postcard::to_stdvec(claims).expect("claims encode");
        let sealed = aes_siv::siv::Aes128Siv::new(&self.secrets[0].siv)
            .encrypt([AD], &body)
            .expect("AES-SIV seals any length");
        B64.encode(sealed)
    }

    /// The claims of a token made under one of the secrets, or `None` (forged, tampered,
    /// truncated, or under another secret).
    pub fn verify(&self, token: &str) -> Option<Claims> {
        if token.contains('.') {
            return self.verify_legacy(token);
        }
        let sealed = B64.decode(token).ok()?;
        let body = self.secrets.iter().find_map(|s| s.open(&sealed))?;
        postcard::from_bytes(&body).ok()
    }

    /// A token of the earlier, signed-only format.
    fn verify_legacy(&self, token: &str) -> Option<Claims> {
        let (body, tag) = token.split_once('.')?;
        let body = B64.decode(body).ok()?;
        let tag = B64.decode(tag).ok()?;
        if tag.len() != MAC_LEN {
            return None;
        }
        // Constant-time comparison of the truncated tag.
        self.secrets
            .iter()
            .find(|s| s.legacy_mac(&body).verify_truncated_left(&tag).is_ok())?;
        serde_json::from_slice(&body).ok()
    }

    fn claims(&self, purpose: Purpose, contact: &str, workflow: &str, message: &str) -> Claims {
        Claims {
            purpose,
            contact: contact.into(),
            workflow: workflow.into(),
            message: message.into(),
            url: None,
        }
    }

    /// The one-click unsubscribe URL (POST) that also serves the preference page (GET).
    pub fn unsubscribe_url(&self, contact: &str, workflow: &str, message: &str) -> String {
        let t = self.sign(&self.claims(Purpose::Unsubscribe, contact, workflow, message));
        format!("{}/u/{t}", self.base)
    }

    /// `List-Unsubscribe` value: the signed https URL and a mailto fallback carrying the token.
    pub fn list_unsubscribe(&self, contact: &str, workflow: &str, message: &str) -> String {
        let url = self.unsubscribe_url(contact, workflow, message);
        let token = url.rsplit('/').next().unwrap_or_default();
        format!("<{url}>, <mailto:{}?subject=unsubscribe%20{token}>", self.mailto)
    }

    pub fn open_url(&self, contact: &str, workflow: &str, message: &str) -> String {
        let t = self.sign(&self.claims(Purpose::Open, contact, workflow, message));
        format!("{}/o/{t}", self.base)
    }

    pub fn click_url(&self, contact: &str, workflow: &str, message: &str, target: &str) -> String {
        let mut c = self.claims(Purpose::Click, contact, workflow, message);
        c.url = Some(target.into());
        format!("{}/c/{}", self.base, self.sign(&c))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "0123456789abcdef0123456789abcdef-secret";
    const OTHER: &str = "another-secret-0123456789abcdef-0123456789";

    #[test]
    fn tokens_open_only_untouched_and_under_the_same_secret() {
        let links = Links::new(&[SECRET], "https://mail.example.com/", "u@example.com");
        let url = links.click_url("ann@example.org", "welcome", "00ff", "https://shop.example.com/a?b=c");
        let token = url
            .strip_prefix("https://mail.example.com/c/")
            .expect("base without double slash");
        let claims = links.verify(token).expect("own token verifies");
        assert_eq!(claims.purpose, Purpose::Click);
        assert_eq!(claims.contact, "ann@example.org");
        assert_eq!(claims.url.as_deref(), Some("https://shop.example.com/a?b=c"));
        assert_eq!(links.sign(&claims), token, "deterministic");

        // Opaque: neither the contact, the workflow nor the destination can be read.
        let raw = B64.decode(token).unwrap();
        for secret in ["ann", "welcome", "shop.example"] {
            assert!(!raw.windows(secret.len()).any(|w| w == secret.as_bytes()), "{secret}");
        }
        // Another secret, a flipped bit anywhere, a cut token: all refused.
        assert!(Links::new(&[OTHER], "x", "y").verify(token).is_none());
        for i in 0..raw.len() {
            let mut forged = raw.clone();
            forged[i] ^= 1;
            assert!(links.verify(&B64.encode(&forged)).is_none(), "bit at {i}");
        }
        assert!(links.verify(&B64.encode(&raw[..raw.len() - 1])).is_none());
        assert!(links.verify("").is_none());

        let lu = links.list_unsubscribe("ann", "welcome", "00ff");
        assert!(lu.starts_with("<https://mail.example.com/u/"), "{lu}");
        assert!(lu.contains("<mailto:u@example.com?subject=unsubscribe%20"), "{lu}");
    }

    /// After a rotation links of the old secret still open; new ones are made with the new one.
    #[test]
    fn previous_secrets_open_old_links_and_new_links_use_the_current_one() {
        let old = Links::new(&[OTHER], "https://m.example.com", "u@example.com");
        let rotated = Links::new(&[SECRET, OTHER], "https://m.example.com", "u@example.com");
        let before = old.open_url("ann", "welcome", "00ff");
        let token = before.rsplit('/').next().unwrap();
        assert_eq!(rotated.verify(token).unwrap().contact, "ann");
        let after = rotated.open_url("ann", "welcome", "00ff");
        let new_token = after.rsplit('/').next().unwrap();
        assert!(old.verify(new_token).is_none(), "made with the new secret");
        assert!(Links::new(&[SECRET], "x", "y").verify(new_token).is_some());
        assert!(
            Links::new(&[SECRET], "x", "y").verify(token).is_none(),
            "old secret dropped"
        );
    }

    /// Tokens of the earlier format (readable claims with an HMAC) still verify under the same
    /// secret, and a forged one (another key, the retired development secret) does not.
    #[test]
    fn earlier_format_tokens_verify_under_their_secret_only() {
        let legacy = |key: &str, claims: &Claims| {
            let body = serde_json::to_vec(claims).unwrap();
            let mut m = Hmac::<Sha256>::new_from_slice(key.as_bytes()).unwrap();
            m.update(&body);
            let tag = m.finalize().into_bytes();
            format!("{}.{}", B64.encode(&body), B64.encode(&tag[..MAC_LEN]))
        };
        let claims = Claims {
            purpose: Purpose::Unsubscribe,
            contact: "ann".into(),
            workflow: "welcome".into(),
            message: "00ff".into(),
            url: None,
        };
        let links = Links::new(&[SECRET], "x", "y");
        assert_eq!(links.verify(&legacy(SECRET, &claims)), Some(claims.clone()));
        let forged = legacy(crate::config::RETIRED_DEVELOPMENT_SECRET, &claims);
        assert!(links.verify(&forged).is_none());
        let (body, tag) = legacy(SECRET, &claims)
            .split_once('.')
            .map(|(a, b)| (a.to_owned(), b.to_owned()))
            .unwrap();
        assert!(links.verify(&format!("{body}.{}", &tag[..tag.len() - 2])).is_none());
    }
}
