//! Transports a built message can be handed to: `.eml` files (the embedded default) or the SMTP
//! connection pool. Both answer with an [`Outcome`]; the mailer decides what it means for the
//! outbox entry.

use super::eml;
pub use super::smtp::Outcome;
use super::smtp::SmtpPool;
use crate::config::MailSettings;
use crate::machine::SendId;
use futures::future::BoxFuture;
use lettre::address::Envelope;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

pub enum Transport {
    File {
        dir: PathBuf,
    },
    Smtp {
        settings: Box<MailSettings>,
        /// Started on first use, on the mailer actor's arbiter (the connection actors live there).
        pool: Mutex<Option<Arc<SmtpPool>>>,
        open: prometheus::IntGauge,
    },
}

impl Transport {
    pub fn from_settings(mail: &MailSettings, open: prometheus::IntGauge) -> Transport {
        match mail.transport.as_str() {
            "smtp" => Transport::Smtp {
                settings: Box::new(mail.clone()),
                pool: Mutex::new(None),
                open,
            },
            _ => Transport::File {
                dir: mail.outbox_dir.clone(),
            },
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            Transport::File { .. } => "file",
            Transport::Smtp { .. } => "smtp",
        }
    }

    /// Messages worth having in flight at once.
    pub fn concurrency(&self) -> usize {
        match self {
            Transport::File { .. } => 1,
            Transport::Smtp { settings, .. } => settings.smtp.connections.max(1) * 2,
        }
    }

    /// Hands the message over at once (the returned future only waits for the answer).
    pub fn deliver(&self, id: SendId, envelope: Envelope, message: Arc<[u8]>) -> BoxFuture<'static, Outcome> {
        match self {
            Transport::File { dir } => {
                let outcome = match eml::write(dir, id, &message) {
                    Ok(_) => Outcome::Accepted,
                    Err(e) => Outcome::Unavailable(e.to_string()),
                };
                Box::pin(std::future::ready(outcome))
            }
            Transport::Smtp { settings, pool, open } => {
                let pool = {
                    let mut guard = pool.lock().expect("pool lock");
                    match guard.as_ref() {
                        Some(p) if p.alive() => p.clone(),
                        _ => match SmtpPool::start(settings, open.clone()) {
                            Ok(p) => guard.insert(Arc::new(p)).clone(),
                            Err(e) => return Box::pin(std::future::ready(Outcome::Unavailable(e))),
                        },
                    }
                };
                Box::pin(pool.deliver(envelope, message))
            }
        }
    }
}
