//! Builds the RFC 5322 message for a send (with lettre) and writes it as an `.eml` file named
//! by its deterministic send id. A file is never overwritten: should the same send ever be
//! written twice, the second is `<send id>.2.eml`, so a repeat is as visible as a second copy
//! at an SMTP server.

use crate::machine::SendId;
use crate::workflow::{MailKind, Rendered};
use lettre::Message;
use lettre::message::header::{ContentType, HeaderName, HeaderValue};
use lettre::message::{Attachment, Mailbox, MultiPart, SinglePart};
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum EmlError {
    #[error("invalid address `{0}`: {1}")]
    Address(String, lettre::address::AddressError),
    #[error("cannot build message: {0}")]
    Build(#[from] lettre::error::Error),
    #[error("cannot write {0}: {1}")]
    Io(PathBuf, std::io::Error),
}

/// What a message is made of, whoever decided it.
pub struct Mail<'a> {
    pub id: SendId,
    /// Parsed by the caller, which needs its domain first (rate limits).
    pub to: Mailbox,
    pub rendered: &'a Rendered,
    pub workflow: &'a str,
    pub version: u32,
    pub kind: MailKind,
    /// Transport additions such as `List-Unsubscribe`.
    pub headers: Vec<(&'static str, String)>,
    /// A calendar invite (`.ics` text, `METHOD:REQUEST`).
    pub calendar: Option<String>,
}

pub fn message_id(id: SendId, domain: &str) -> String {
    format!("<{id}@{domain}>")
}

fn header(name: &'static str, value: String) -> (HeaderName, String) {
    (HeaderName::new_from_ascii_str(name), value)
}

/// The full message. Header values come from contact data only through lettre's encoders, so
/// CR/LF in a name or subject cannot inject headers.
pub fn build(cmd: Mail, from: &Mailbox, domain: &str, date: std::time::SystemTime) -> Result<Message, EmlError> {
    let rendered = cmd.rendered;
    let mut b = Message::builder()
        .from(from.clone())
        .to(cmd.to)
        .subject(rendered.subject.replace(['\r', '\n'], " "))
        .message_id(Some(message_id(cmd.id, domain)))
        .date(date);
    let fixed = [
        header("X-Dripline-Workflow", format!("{} v{}", cmd.workflow, cmd.version)),
        header("X-Dripline-Kind", format!("{:?}", cmd.kind).to_lowercase()),
    ];
    let extra = cmd.headers.iter().map(|(n, v)| header(n, v.clone()));
    for (name, value) in fixed.into_iter().chain(extra) {
        // Values we build ourselves, but folded line breaks must never split a header.
        b = b.raw_header(HeaderValue::new(name, value.replace(['\r', '\n'], " ")));
    }
    let body = match (&rendered.html, &rendered.text) {
        (Some(h), Some(t)) => MultiPart::alternative_plain_html(t.clone(), document(h)),
        // Receivers (and their spam filters) expect a text alternative to an HTML body.
        (Some(h), None) => MultiPart::alternative_plain_html(plain_text(h), document(h)),
        (None, t) if cmd.calendar.is_some() => MultiPart::alternative().singlepart(
            SinglePart::builder()
                .header(ContentType::TEXT_PLAIN)
                .body(t.clone().unwrap_or_default()),
        ),
        (None, t) => MultiPart::mixed().singlepart(
            SinglePart::builder()
                .header(ContentType::TEXT_PLAIN)
                .body(t.clone().unwrap_or_default()),
        ),
    };
    let Some(ics) = cmd.calendar else {
        return Ok(b.multipart(body)?);
    };
    // The layout calendar clients send and read: the invite as the last alternative (what
    // Gmail and Outlook act on) and again as an `.ics` attachment (for every other client).
    // The part's method is the invite's (iTIP): a request, or a cancellation.
    let method = if ics.contains("\r\nMETHOD:CANCEL\r\n") {
        "CANCEL"
    } else {
        "REQUEST"
    };
    let inline =
        ContentType::parse(&format!("text/calendar; charset=UTF-8; method={method}")).expect("a valid content type");
    let file = ContentType::parse("application/ics; name=\"invite.ics\"").expect("a valid content type");
    let body = body.singlepart(SinglePart::builder().header(inline).body(ics.clone()));
    Ok(b.multipart(
        MultiPart::mixed()
            .multipart(body)
            .singlepart(Attachment::new("invite.ics".into()).body(ics, file)),
    )?)
}

/// The text alternative of an HTML body: its text, wrapped at 78 columns, links listed as
/// numbered references at the end (html2text). A link is never broken across lines: a signed
/// token cut in two would not open.
fn plain_text(html: &str) -> String {
    html2text::config::plain()
        .no_link_wrapping()
        .allow_width_overflow()
        .string_from_read(html.as_bytes(), 78)
        .unwrap_or_default()
}

/// An HTML body as a whole document: a template's fragment is wrapped in `<html>` and `<body>`,
/// with its character set declared; a full document is kept as written.
fn document(html: &str) -> String {
    // Bytes, not a string slice: the first 512 bytes may end inside a character.
    let head = &html.as_bytes()[..html.len().min(512)];
    if head.windows(5).any(|w| w.eq_ignore_ascii_case(b"<html")) {
        return html.to_owned();
    }
    format!("<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"></head><body>\n{html}\n</body></html>\n")
}

/// Writes `<dir>/<send id>.eml` atomically (a temporary file, then a link that never replaces
/// a file); a repeat gets `<send id>.2.eml`, `.3.eml`, ….
pub fn write(dir: &Path, id: SendId, formatted: &[u8]) -> Result<PathBuf, EmlError> {
    std::fs::create_dir_all(dir).map_err(|e| EmlError::Io(dir.into(), e))?;
    let tmp = dir.join(format!(".{id}.tmp"));
    // A crash between the link and the removal below leaves the temporary name linked to the
    // message: unlinked first, so writing it never rewrites that file.
    match std::fs::remove_file(&tmp) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(EmlError::Io(tmp.clone(), e)),
    }
    std::fs::write(&tmp, formatted).map_err(|e| EmlError::Io(tmp.clone(), e))?;
    let mut n = 1;
    let path = loop {
        let path = match n {
            1 => dir.join(format!("{id}.eml")),
            _ => dir.join(format!("{id}.{n}.eml")),
        };
        match std::fs::hard_link(&tmp, &path) {
            Ok(()) => break path,
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => n += 1,
            Err(e) => return Err(EmlError::Io(path, e)),
        }
    };
    std::fs::remove_file(&tmp).map_err(|e| EmlError::Io(tmp.clone(), e))?;
    if n > 1 {
        tracing::warn!("send {id} written again, as {}", path.display());
    }
    Ok(path)
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_text_alternative_keeps_every_link_whole_and_the_html_is_a_document() {
        let url = format!("https://links.example.com/c/{}", "A".repeat(180));
        let html = format!("<p>Hello, here is <a href=\"{url}\">your offer</a> for today.</p>");
        let text = super::plain_text(&html);
        assert!(text.contains("your offer"), "{text}");
        assert!(text.contains(&url), "the link is whole: {text}");
        let doc = super::document(&html);
        assert!(doc.starts_with("<!DOCTYPE html>") && doc.contains("<body>") && doc.contains(&html));
        let full = "<html><body>x</body></html>";
        assert_eq!(super::document(full), full, "a full document is kept");
        assert_eq!(
            super::document("<HTML lang=\"en\">x</HTML>"),
            "<HTML lang=\"en\">x</HTML>"
        );
        // A multi-byte character across the 512th byte.
        let long = format!("<p>{}é</p>", "a".repeat(508));
        assert!(super::document(&long).starts_with("<!DOCTYPE html>"));
    }

    #[test]
    fn a_repeat_is_a_second_file_never_an_overwrite() {
        let tmp = tempfile::tempdir().unwrap();
        let id = crate::machine::SendId(7);
        let first = super::write(tmp.path(), id, b"one").unwrap();
        let second = super::write(tmp.path(), id, b"two").unwrap();
        assert_ne!(first, second);
        assert_eq!(std::fs::read(&first).unwrap(), b"one");
        assert_eq!(std::fs::read(&second).unwrap(), b"two");
        let names: Vec<_> = std::fs::read_dir(tmp.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 2, "no temporary file left: {names:?}");
    }
}
