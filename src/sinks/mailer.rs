//! Drains the durable outbox through a transport. An entry leaves the outbox only in the same
//! batch that records its id in the sent ledger, after the transport accepted it; an id already
//! in the ledger is never handed over again.

use super::eml;
use super::transport::{DeliverError, Transport};
use crate::machine::SendId;
use crate::runtime::metrics::Metrics;
use crate::runtime::partition::CommitHook;
use crate::storage::tables::{self, OutboxEntry};
use crate::storage::{Store, StoreError};
use lettre::message::Mailbox;
use rocksdb::WriteBatch;
use std::collections::BTreeMap;
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
    /// Kafka mode: send only for partitions this instance owns, and publish each partition's
    /// sent-ledger changes to its changelog before writing them locally.
    hook: std::sync::OnceLock<Arc<dyn CommitHook>>,
    /// `mail.rate_per_second` (0: none) and the limiter for this instance's share of it.
    rate: f64,
    limiter: std::sync::Mutex<Option<(f64, governor::DefaultDirectRateLimiter)>>,
}

impl Mailer {
    pub fn new(store: Arc<Store>, transport: Transport, from: Mailbox, domain: String, metrics: Arc<Metrics>) -> Self {
        Mailer {
            store,
            transport,
            from,
            domain,
            metrics,
            hook: std::sync::OnceLock::new(),
            rate: 0.0,
            limiter: std::sync::Mutex::new(None),
        }
    }

    pub fn with_rate(mut self, per_second: f64) -> Self {
        self.rate = per_second.max(0.0);
        self
    }

    /// Waits for room under this instance's share of the global rate. The share is the
    /// fraction of partitions owned (1 without Kafka), re-read so a rebalance takes effect.
    /// This instance's share of `mail.rate_per_second` (0: no limit).
    pub fn effective_rate(&self) -> f64 {
        self.rate * self.hook.get().map_or(1.0, |h| h.share())
    }

    fn pace(&self) {
        if self.rate <= 0.0 {
            return;
        }
        let rate = self.effective_rate();
        let mut guard = self.limiter.lock().expect("limiter lock");
        if guard.as_ref().is_none_or(|(r, _)| (*r - rate).abs() > 1e-9) {
            *guard = (rate > 0.0).then(|| {
                // One cell per 1/rate seconds, bursts of at most a second's worth.
                let period = std::time::Duration::from_secs_f64(1.0 / rate);
                let burst = std::num::NonZeroU32::new((rate.ceil() as u32).max(1)).expect("non-zero");
                let quota = governor::Quota::with_period(period).expect("a positive period");
                (rate, governor::RateLimiter::direct(quota.allow_burst(burst)))
            });
        }
        if let Some((_, limiter)) = guard.as_ref() {
            let clock = governor::clock::DefaultClock::default();
            while let Err(not_until) = limiter.check() {
                std::thread::sleep(not_until.wait_time_from(governor::clock::Clock::now(&clock)));
            }
        }
    }

    pub fn set_hook(&self, hook: Arc<dyn CommitHook>) {
        let _ = self.hook.set(hook);
    }

    /// Hands up to `limit` outbox entries to the transport. Returns how many left the outbox.
    pub fn drain(&self, limit: usize) -> Result<usize, MailerError> {
        self.metrics.mail_rate_limit.set(self.effective_rate());
        let hook = self.hook.get();
        let page = tables::outbox_page_where(&self.store, limit, |e| hook.is_none_or(|h| h.owns(e.partition)))?;
        let mut batches: BTreeMap<u16, WriteBatch> = BTreeMap::new();
        let now = chrono::Utc::now().timestamp_millis();
        for (id, e) in &page {
            let batch = batches.entry(e.partition).or_default();
            if !tables::is_sent(&self.store, *id)? {
                self.pace();
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
                        tables::put_dead_letter(&self.store, batch, now, &reason, payload.as_bytes());
                        batch.delete_cf(self.store.cf(crate::storage::CF_OUTBOX), tables::id_key(*id));
                        continue;
                    }
                    Err(err) => {
                        self.metrics.sends.with_label_values(&[&e.workflow, "deferred"]).inc();
                        // Stays in the outbox for the next round; what went out so far is recorded.
                        self.write(batches)?;
                        return Err(err.into());
                    }
                }
            }
            tables::mark_sent(&self.store, batch, *id, now);
        }
        self.write(batches)?;
        self.metrics.outbox_depth.set(tables::outbox_len(&self.store)? as i64);
        Ok(page.len())
    }

    fn write(&self, batches: BTreeMap<u16, WriteBatch>) -> Result<(), StoreError> {
        for (p, mut batch) in batches {
            if let Some(h) = self.hook.get() {
                h.publish(p, &mut batch)?;
            }
            self.store.write(batch, true)?;
        }
        Ok(())
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
