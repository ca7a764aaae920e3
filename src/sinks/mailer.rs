//! Drains the durable outbox through a transport. An entry leaves the outbox only in the same
//! batch that records its id in the sent ledger, after the transport accepted it; an id already
//! in the ledger is never handed over again.

use super::eml;
use crate::machine::SendId;
use crate::runtime::metrics::Metrics;
use crate::storage::tables::{self, OutboxEntry};
use crate::storage::{Store, StoreError};
use lettre::message::Mailbox;
use rocksdb::WriteBatch;
use std::path::PathBuf;
use std::sync::Arc;

#[derive(Debug, thiserror::Error)]
pub enum MailerError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Eml(#[from] eml::EmlError),
}

/// The embedded transport: one `.eml` file per message in a directory.
pub struct FileTransport {
    pub dir: PathBuf,
}

pub struct Mailer {
    store: Arc<Store>,
    transport: FileTransport,
    from: Mailbox,
    domain: String,
    metrics: Arc<Metrics>,
}

impl Mailer {
    pub fn new(
        store: Arc<Store>,
        transport: FileTransport,
        from: Mailbox,
        domain: String,
        metrics: Arc<Metrics>,
    ) -> Self {
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
                    .with_label_values(&["file"])
                    .observe(started.elapsed().as_secs_f64());
                match result {
                    Ok(()) => self.metrics.sends.with_label_values(&[&e.workflow, "accepted"]).inc(),
                    Err(err) => {
                        self.metrics.sends.with_label_values(&[&e.workflow, "failed"]).inc();
                        // Stays in the outbox; written so far is committed.
                        self.store.write(batch, true)?;
                        return Err(err);
                    }
                }
            }
            tables::mark_sent(&self.store, &mut batch, *id, now);
        }
        self.store.write(batch, true)?;
        self.metrics.outbox_depth.set(tables::outbox_len(&self.store)? as i64);
        Ok(page.len())
    }

    fn deliver(&self, id: SendId, e: &OutboxEntry) -> Result<(), MailerError> {
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
        let msg = eml::build(&mail, &self.from, &self.domain, date)?;
        eml::write(&self.transport.dir, id, &msg)?;
        Ok(())
    }
}
