//! Transports a built message can be handed to: `.eml` files (the embedded default) or SMTP
//! through lettre's pooled client. A transient failure leaves the message for a later try; a
//! permanent one is reported so the mailer can take it out of the outbox.

use super::eml;
use crate::config::MailSettings;
use crate::machine::SendId;
use lettre::{Message, Transport as _};
use std::path::PathBuf;

pub enum Transport {
    File { dir: PathBuf },
    Smtp(Box<lettre::SmtpTransport>),
}

#[derive(Debug, thiserror::Error)]
pub enum DeliverError {
    /// Try again later: server down, 4xx, I/O.
    #[error("transient: {0}")]
    Transient(String),
    /// The server refused this message for good (5xx).
    #[error("permanent: {0}")]
    Permanent(String),
}

impl Transport {
    pub fn from_settings(mail: &MailSettings) -> Transport {
        match mail.transport.as_str() {
            "smtp" => Transport::Smtp(Box::new(
                lettre::SmtpTransport::builder_dangerous(mail.smtp_host.clone())
                    .port(mail.smtp_port)
                    .timeout(Some(std::time::Duration::from_secs(10)))
                    .build(),
            )),
            _ => Transport::File {
                dir: mail.outbox_dir.clone(),
            },
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            Transport::File { .. } => "file",
            Transport::Smtp(_) => "smtp",
        }
    }

    pub fn deliver(&self, id: SendId, msg: &Message) -> Result<(), DeliverError> {
        match self {
            Transport::File { dir } => eml::write(dir, id, msg)
                .map(|_| ())
                .map_err(|e| DeliverError::Transient(e.to_string())),
            Transport::Smtp(smtp) => smtp.send(msg).map(|_| ()).map_err(|e| {
                if e.is_permanent() {
                    DeliverError::Permanent(e.to_string())
                } else {
                    DeliverError::Transient(e.to_string())
                }
            }),
        }
    }
}
