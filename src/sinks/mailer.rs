//! Drains the durable outbox through a transport. An entry leaves the outbox only in the same
//! batch that records its id in the sent ledger, after the transport accepted it; an id already
//! in the ledger is never handed over again.

use super::eml;
use super::transport::{DeliverError, Transport};
use crate::machine::SendId;
use crate::runtime::metrics::Metrics;
use crate::storage::tables::{self, OutboxEntry};
use crate::storage::{Store, StoreError};
use lettre::message::Mailbox;
use rocksdb::WriteBatch;
use std::sync::Arc;

#[derive(Debug, thiserror::Error)]
pub enum MailerError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Deliver(#[from] DeliverError),
}

pub struct Mailer {
    store: Arc<Store>,
    transport: Transport,
    from: Mailbox,
    domain: String,
    metrics: Arc<Metrics>,
}

impl Mailer {
    pub fn new(store: Arc<Store>, transport: Transport, from: Mailbox, domain: String, metrics: Arc<Metrics>) -> Self {
        Mailer {
            store,
            transport,
            from,
            domain,
            metrics,
        }
    }

    /// Hands up to `limit` outbox entries to the transport. Returns how many left the outbox.
    pub fn drain(&self, limit: usize) -> Result<usize, MailerError> {
        let page = tables::outbox_page(&self.store, limit)?;
        let mut batch = WriteBatch::default();
        let now = chrono::Utc::now().timestamp_millis();
        for (id, e) in &page {
            if !tables::is_sent(&self.store, *id)? {
                let started = std::time::Instant::now();
                let result = self.deliver(*id, e);
                self.metrics
                    .transport_latency
                    .with_label_values(&[self.transport.name()])
                    .observe(started.elapsed().as_secs_f64());
                match result {
                    Ok(()) => self.metrics.sends.with_label_values(&[&e.workflow, "accepted"]).inc(),
                    Err(DeliverError::Permanent(reason)) => {
                        // Refused for good: out of the outbox, kept as a dead letter with the
                        // reason. (Bounce events and suppression come with the SMTP pool work.)
                        self.metrics.sends.with_label_values(&[&e.workflow, "rejected"]).inc();
                        let payload =
                            serde_json::json!({"id": id.to_string(), "to": e.to, "workflow": e.workflow}).to_string();
                        let reason = format!("transport refused: {reason}");
                        tables::put_dead_letter(&self.store, &mut batch, now, &reason, payload.as_bytes());
                        batch.delete_cf(self.store.cf(crate::storage::CF_OUTBOX), tables::id_key(*id));
                        continue;
                    }
                    Err(err) => {
                        self.metrics.sends.with_label_values(&[&e.workflow, "deferred"]).inc();
                        // Stays in the outbox for the next round; what went out so far is recorded.
                        self.store.write(batch, true)?;
                        return Err(err.into());
                    }
                }
            }
            tables::mark_sent(&self.store, &mut batch, *id, now);
        }
        self.store.write(batch, true)?;
        self.metrics.outbox_depth.set(tables::outbox_len(&self.store)? as i64);
        Ok(page.len())
    }

    fn deliver(&self, id: SendId, e: &OutboxEntry) -> Result<(), DeliverError> {
        let date = std::time::UNIX_EPOCH + std::time::Duration::from_millis(e.decided_at.max(0) as u64);
        let rendered = crate::workflow::Rendered {
            subject: e.subject.clone(),
            html: e.html.clone(),
            text: e.text.clone(),
        };
        let mail = eml::Mail {
            id,
            to: &e.to,
            rendered: &rendered,
            workflow: &e.workflow,
            version: e.version,
            kind: e.kind,
        };
        // A message that cannot be built (a malformed address) will never go out.
        let msg =
            eml::build(&mail, &self.from, &self.domain, date).map_err(|e| DeliverError::Permanent(e.to_string()))?;
        self.transport.deliver(id, &msg)
    }
}
