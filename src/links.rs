//! Signed links in outgoing mail: one-click unsubscribe (RFC 8058), the preference page, the
//! open pixel and click redirects. A token is `base64url(claims).base64url(hmac)` with
//! HMAC-SHA256 over the claims under `mail.secret`, so a recipient can neither forge an
//! unsubscribe for someone else nor turn a click link into an open redirect.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

/// 128 bits of the HMAC: far beyond guessing, and keeps links short.
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
    /// Click: the destination.
    #[serde(rename = "u", default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
}

pub struct Links {
    key: Vec<u8>,
    base: String,
    mailto: String,
}

impl Links {
    pub fn new(secret: &str, public_url: &str, mailto: &str) -> Self {
        Links {
            key: secret.as_bytes().to_vec(),
            base: public_url.trim_end_matches('/').to_owned(),
            mailto: mailto.to_owned(),
        }
    }

    pub fn from_settings(mail: &crate::config::MailSettings) -> Self {
        Links::new(&mail.secret, &mail.public_url, &mail.unsubscribe_mailto)
    }

    fn mac(&self, data: &[u8]) -> Hmac<Sha256> {
        let mut m = Hmac::<Sha256>::new_from_slice(&self.key).expect("HMAC takes any key length");
        m.update(data);
        m
    }

    pub fn sign(&self, claims: &Claims) -> String {
        let body = serde_json::to_vec(claims).expect("claims encode");
        let tag = self.mac(&body).finalize().into_bytes();
        format!("{}.{}", B64.encode(&body), B64.encode(&tag[..MAC_LEN]))
    }

    /// The claims of a token signed with this key, or `None` (unsigned, tampered, truncated).
    pub fn verify(&self, token: &str) -> Option<Claims> {
        let (body, tag) = token.split_once('.')?;
        let body = B64.decode(body).ok()?;
        let tag = B64.decode(tag).ok()?;
        if tag.len() != MAC_LEN {
            return None;
        }
        // Constant-time comparison of the truncated tag.
        self.mac(&body).verify_truncated_left(&tag).ok()?;
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

    #[test]
    fn tokens_verify_only_untouched_and_under_the_same_key() {
        let links = Links::new("0123456789abcdef-secret", "https://mail.example.com/", "u@example.com");
        let url = links.click_url("ann", "welcome", "00ff", "https://shop.example.com/a?b=c");
        let token = url
            .strip_prefix("https://mail.example.com/c/")
            .expect("base without double slash");
        let claims = links.verify(token).expect("own token verifies");
        assert_eq!(claims.purpose, Purpose::Click);
        assert_eq!(claims.url.as_deref(), Some("https://shop.example.com/a?b=c"));

        // Another key, a flipped character in the body or the tag, a cut tag: all refused.
        assert!(
            Links::new("another-secret-0123456789", "x", "y")
                .verify(token)
                .is_none()
        );
        let (body, tag) = token.split_once('.').unwrap();
        let mut forged = body.as_bytes().to_vec();
        forged[3] = if forged[3] == b'A' { b'B' } else { b'A' };
        let forged = format!("{}.{tag}", String::from_utf8(forged).unwrap());
        assert!(links.verify(&forged).is_none());
        assert!(links.verify(&format!("{body}.{}", &tag[..tag.len() - 2])).is_none());
        assert!(links.verify(body).is_none());

        let lu = links.list_unsubscribe("ann", "welcome", "00ff");
        assert!(lu.starts_with("<https://mail.example.com/u/"), "{lu}");
        assert!(lu.contains("<mailto:u@example.com?subject=unsubscribe%20"), "{lu}");
    }
}
