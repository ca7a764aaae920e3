//! Drains the durable outbox through a transport, no faster than the limits allow, and turns
//! what the receiver answered into outbox changes and events for the contact's stream.
//!
//! A round walks a page of the outbox (round-robin, so mail that must wait does not starve the
//! rest), holds back what is suppressed, in backoff or over a limit, hands the rest to the
//! transport with bounded concurrency and settles each answer:
//! - accepted: the id goes into the sent ledger and the entry leaves the outbox, together;
//! - 4xx: retried with exponential backoff and jitter, a soft bounce past `mail.retry.max_age`;
//! - 5xx: a bounce: out of the outbox, the contact suppressed at once, an `Email Bounced` event;
//! - no answer (server down): untouched, the pool backs off and tries again later.
//!
//! A message the transport accepted is made durable before another message is handed over:
//! once half the delivery slots have freed, every answer in by then is settled, their `Email Delivered`
//! events are appended through the caller's [`Durable`] and their ledger entries and outbox
//! deletes are written with one fsync (a group commit over the connections). So after a crash at
//! any moment at most the messages in flight then, `2 × mail.smtp.connections`, can be handed
//! over again; with SMTP it cannot be zero, since the server may accept a message the instant
//! before the crash and the ledger cannot be written first (it would then record mail never
//! sent). A send id already in the ledger is never handed to a transport.
//!
//! The other outcomes' changes are written at the end of the round by [`Mailer::commit`], after
//! the caller appended the round's remaining events, so a crash in between repeats events
//! (dropped as duplicates by their messageId), never loses them.
//!
//! Webhook calls share the walk, the ledger and the group commits, and take their own path
//! through the webhook transport ([`super::webhook`]): a 2xx is accepted (`Webhook Delivered`),
//! a 5xx, 408, 429 or no answer is retried with the same backoff (never sooner than the
//! receiver's `Retry-After`) until `mail.retry.max_age`, anything else is a dead letter with the
//! answer (`Webhook Failed`). Mail suppression does not hold a call back: an unsubscribe or a
//! bounce is about the email address, and a call may be the fallback for exactly that.

pub mod limits;
pub mod retry;

use super::eml;
use super::tracking;
use super::transport::{Outcome, Transport};
use super::webhook::{self, Webhooks};
use crate::config::{MailSettings, MailTiming, Settings};
use crate::links::Links;
use crate::machine::{FeedbackKind, SendId};
use crate::metrics::Metrics;
use crate::storage::hook::CommitHook;
use crate::storage::tables::{self, OutboxEntry, OutboxKey, Suppression};
use crate::storage::{Store, StoreError, outbox_counts};
use crate::time::{SECOND, Ts};
use crate::workflow::{MailKind, Registry, Rendered};
use futures::StreamExt;
use futures::future::BoxFuture;
use futures::stream::FuturesUnordered;
use lettre::message::Mailbox;
use limits::{Hold, Limits};
use rocksdb::WriteBatch;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

#[derive(Debug, thiserror::Error)]
pub enum MailerError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("mail configuration: {0}")]
    Config(String),
    #[error("delivery events: {0}")]
    Durable(String),
}

/// Longest pause after the transport stopped answering.
const MAX_PAUSE: i64 = 30 * SECOND;

pub struct Mailer {
    store: Arc<Store>,
    transport: Transport,
    from: Mailbox,
    settings: MailSettings,
    timing: MailTiming,
    /// Renders each entry's template as it is sent.
    reg: Arc<Registry>,
    links: Arc<Links>,
    dkim: Option<lettre::message::dkim::DkimConfig>,
    metrics: Arc<Metrics>,
    /// Kafka mode: send only for partitions this instance owns, and publish each partition's
    /// outbox and ledger changes to its changelog before writing them locally.
    hook: OnceLock<Arc<dyn CommitHook>>,
    limits: tokio::sync::Mutex<Limits>,
    walk: Mutex<Walk>,
    webhooks: Webhooks,
    /// Reads local times in calendar invites of contacts without a valid `timezone` trait.
    default_tz: chrono_tz::Tz,
}

/// What a transport answered for one entry.
enum Answer {
    Mail(Outcome),
    Webhook(webhook::Answer),
}

impl Answer {
    /// Which slots it held: 0 mail, 1 calls.
    fn kind(&self) -> usize {
        match self {
            Answer::Mail(_) => 0,
            Answer::Webhook(_) => 1,
        }
    }
}

/// What became of a mail entry at its turn in the walk.
enum Handover {
    /// On its way: its answer to come.
    Handed(BoxFuture<'static, Done>),
    /// Dealt with, or waiting: on to the next entry.
    Next,
    /// Nothing more may go this round (a quota).
    Stop,
}

/// One handed-over entry, once answered: its id and entry, the recipient's domain (mail) or
/// host (webhook), the answer and how long it took.
type Done = (SendId, OutboxEntry, String, Answer, Duration);

/// Where the round-robin walk stands and whether the transport is resting.
#[derive(Default)]
struct Walk {
    cursor: Option<OutboxKey>,
    /// The oldest decision seen in the current pass over the outbox: the pass that ends
    /// publishes it (exact as of that pass, and free: no scan of its own).
    oldest: Option<Ts>,
    paused_until: Ts,
    pause: i64,
}

/// One round's decisions, written by [`Mailer::commit`] after its events are durable.
#[derive(Default)]
pub struct Round {
    /// Entries that left the outbox (delivered, bounced, suppressed, refused) or were
    /// rescheduled.
    pub handled: usize,
    pub delivered: usize,
    /// Nothing more can go before this long (quota, domain rate, backoff, transport down).
    pub wait: Option<Duration>,
    /// Delivery results for the contacts' streams, as Segment track events.
    pub feedback: Vec<serde_json::Value>,
    pub(crate) batches: BTreeMap<u16, WriteBatch>,
    pub(crate) quota: Option<tables::QuotaCount>,
    /// Accepted since the last group commit: their ledger entries and outbox deletes, and their
    /// `Email Delivered` events.
    pub(crate) accepted: BTreeMap<u16, WriteBatch>,
    pub(crate) accepted_events: Vec<serde_json::Value>,
    /// Outbox entries removed, by partition: in `batches`, and in `accepted` (until its next
    /// group commit).
    pub(crate) removed: BTreeMap<u16, i64>,
    pub(crate) accepted_removed: BTreeMap<u16, i64>,
}

/// Deletes an outbox entry in `batch` and counts it in `removed` under its partition, unless
/// an erasure took the entry meanwhile (its partition counted it out then).
fn delete_counted(
    store: &Store,
    batch: &mut WriteBatch,
    key: OutboxKey,
    partition: u16,
    removed: &mut BTreeMap<u16, i64>,
) {
    tables::delete_outbox(store, batch, key);
    if tables::outbox_has(store, key).unwrap_or(true) {
        *removed.entry(partition).or_default() += 1;
    }
}

/// Appends events durably (the engine's log): what the mailer calls before it writes a group
/// of ledger entries, so an event is never lost to a crash in between.
pub type Durable<'a> = &'a (dyn Fn(&[serde_json::Value]) -> anyhow::Result<()> + Sync);

impl Round {
    fn batch(&mut self, partition: u16) -> &mut WriteBatch {
        self.batches.entry(partition).or_default()
    }

    /// Deletes an outbox entry in `partition`'s batch, counted.
    fn remove(&mut self, store: &Store, partition: u16, key: OutboxKey) {
        let batch = self.batches.entry(partition).or_default();
        delete_counted(store, batch, key, partition, &mut self.removed);
    }

    fn wait_at_most(&mut self, d: Duration) {
        self.wait = Some(self.wait.map_or(d, |w| w.min(d)));
    }
}

/// The Segment event a delivery result becomes in the contact's stream; its messageId is
/// derived from the send id, so a repeat is dropped as a duplicate.
pub fn feedback_event(
    contact: &str,
    id: SendId,
    kind: FeedbackKind,
    workflow: Option<&str>,
    reason: Option<&str>,
) -> serde_json::Value {
    let name = kind.event_name();
    let mut props = serde_json::json!({ "message_id": id.to_string() });
    if let Some(w) = workflow {
        props["workflow"] = w.into();
    }
    match kind {
        FeedbackKind::Bounced => props["type"] = "hard".into(),
        FeedbackKind::SoftBounced => props["type"] = "soft".into(),
        _ => {}
    }
    if let Some(r) = reason {
        props["reason"] = r.into();
    }
    result_event(contact, id, name, props)
}

/// A delivery result (of mail or of a webhook call) as the Segment track event `name` with
/// `properties`; its messageId comes from the send id, so a repeat is dropped as a duplicate.
pub fn result_event(contact: &str, id: SendId, name: &str, properties: serde_json::Value) -> serde_json::Value {
    serde_json::json!({
        "type": "track",
        "userId": contact,
        "messageId": format!("feedback:{id}:{name}"),
        "event": name,
        "properties": properties,
    })
}

fn wall() -> Ts {
    chrono::Utc::now().timestamp_millis()
}

impl Mailer {
    pub fn new(
        store: Arc<Store>,
        all: &Settings,
        reg: Arc<Registry>,
        links: Arc<Links>,
        metrics: Arc<Metrics>,
    ) -> Result<Self, MailerError> {
        let settings = &all.mail;
        let webhooks = Webhooks::new(&all.webhook, &all.webhooks).map_err(MailerError::Config)?;
        let timing = settings.timing().map_err(|e| MailerError::Config(e.to_string()))?;
        let from = settings
            .from
            .parse()
            .map_err(|e| MailerError::Config(format!("mail.from: {e}")))?;
        let dkim = dkim_config(settings)?;
        if settings.transport == "smtp" {
            // A CA file that cannot be read is a configuration error now, not a stuck outbox later.
            super::smtp::extra_roots(&settings.smtp.ca_file).map_err(MailerError::Config)?;
        }
        let quota = tables::get_quota(&store)?;
        let limits = Limits::new(
            settings.rate.clone(),
            settings.warmup.clone(),
            timing.warmup_start,
            quota,
        );
        Ok(Mailer {
            transport: Transport::from_settings(settings, metrics.smtp_connections.clone()),
            store,
            from,
            settings: settings.clone(),
            timing,
            reg,
            links,
            dkim,
            metrics,
            hook: OnceLock::new(),
            limits: tokio::sync::Mutex::new(limits),
            walk: Mutex::new(Walk::default()),
            webhooks,
            default_tz: all.policy.default_timezone.parse().unwrap_or(chrono_tz::Tz::UTC),
        })
    }

    pub fn set_hook(&self, hook: Arc<dyn CommitHook>) {
        let _ = self.hook.set(hook);
    }

    /// This instance's share of `mail.rate.per_second` (0: no limit).
    pub fn effective_rate(&self) -> f64 {
        self.settings.rate.per_second * self.hook.get().map_or(1.0, |h| h.share())
    }

    /// Makes the messages accepted since the last call durable: their events through
    /// `durable`, then their ledger entries and outbox deletes with one fsync (per partition's
    /// changelog in Kafka mode).
    fn group_commit(&self, round: &mut Round, durable: Durable) -> Result<(), MailerError> {
        if round.accepted.is_empty() {
            return Ok(());
        }
        let events = std::mem::take(&mut round.accepted_events);
        if !events.is_empty() {
            durable(&events).map_err(|e| MailerError::Durable(format!("{e:#}")))?;
        }
        let started = Instant::now();
        let mut accepted = std::mem::take(&mut round.accepted);
        for (p, n) in std::mem::take(&mut round.accepted_removed) {
            let group = if self.hook.get().is_some() { p } else { 0 };
            let batch = accepted.entry(group).or_default();
            outbox_counts::add(&self.store, batch, outbox_counts::REMOVED, p, n)?;
        }
        for (p, mut batch) in accepted {
            if let Some(h) = self.hook.get() {
                h.publish(p, &mut batch)?;
            }
            self.store.write(batch, true)?;
        }
        self.metrics.ledger_commit.observe(started.elapsed().as_secs_f64());
        Ok(())
    }

    /// Decides a round of up to `limit` outbox entries: what goes, what waits, what is refused.
    pub async fn dispatch(&self, limit: usize, durable: Durable<'_>) -> Result<Round, MailerError> {
        let mut round = Round::default();
        let now = wall();
        // Mail waits while its transport rests or a quota is used up; webhook calls go on.
        let mut mail_held = {
            let walk = self.walk.lock().expect("walk lock");
            if now < walk.paused_until {
                round.wait = Some(Duration::from_millis((walk.paused_until - now) as u64));
            }
            now < walk.paused_until
        };
        let hook = self.hook.get().cloned();
        let mut limits = self.limits.lock().await;
        limits.rescale(hook.as_ref().map_or(1.0, |h| h.share()));
        self.metrics.mail_rate_limit.set(limits.global_rate());
        let cursor = self.walk.lock().expect("walk lock").cursor;
        let (page, unreadable, next) = tables::outbox_walk(&self.store, cursor, limit, |e| {
            hook.as_ref().is_none_or(|h| h.owns(e.partition))
        })?;
        {
            let mut walk = self.walk.lock().expect("walk lock");
            // While mail rests, the walk stays where the transport stopped answering.
            if !mail_held {
                walk.cursor = next;
            }
            if let Some(seen) = page.iter().map(|(_, e)| e.decided_at).min() {
                walk.oldest = Some(walk.oldest.map_or(seen, |o| o.min(seen)));
            }
            if next.is_none() {
                let age = walk.oldest.take().map_or(0.0, |t| (now - t).max(0) as f64 / 1e3);
                self.metrics.mail_outbox_oldest.set(age);
            }
        }

        for (key, bytes, reason) in unreadable {
            // Moved to the dead letters with its bytes, never retried: it would stop every
            // walk. Its partition is unknown, so the change goes with partition 0's batch.
            let reason = format!("unreadable outbox entry {}: {reason}", key.id);
            self.metrics.sends.with_label_values(&["unknown", "unreadable"]).inc();
            self.dead_letter(&mut round, 0, key, &reason, &bytes, now);
        }
        let mut in_flight: FuturesUnordered<BoxFuture<'static, Done>> = FuturesUnordered::new();
        // Mail and calls have their own slots, so calls never widen the bound on mail repeated
        // after a crash: [mail, calls] in flight and allowed. (When the calls' slots are full,
        // the round waits for half of them, up to `webhook.timeout` with a slow receiver.)
        let mut busy = [0usize; 2];
        let slots = [self.transport.concurrency(), self.webhooks.concurrency()];
        for (id, e) in page {
            if tables::is_sent(&self.store, id)? {
                // Accepted before a crash that came between the ledger and the delete.
                round.remove(&self.store, e.partition, OutboxKey::of(id, &e));
                round.handled += 1;
                continue;
            }
            if e.not_before > now {
                round.wait_at_most(Duration::from_millis((e.not_before - now) as u64));
                continue;
            }
            if e.content.is_webhook() {
                let req = match self.webhooks.prepare(&self.reg, id, &e) {
                    Ok(req) => req,
                    Err(reason) => {
                        self.metrics.render_errors.inc();
                        self.webhook_failed(&mut round, id, &e, None, &format!("refused: {reason}"), now);
                        continue;
                    }
                };
                if let Err(wait) = self.webhooks.admit(&req.host, now) {
                    round.wait_at_most(wait);
                    continue;
                }
                let started = Instant::now();
                let host = req.host.clone();
                let answer = self.webhooks.call(id, req);
                in_flight.push(Box::pin(async move {
                    let a = Answer::Webhook(answer.await);
                    (id, e, host, a, started.elapsed())
                }));
                busy[1] += 1;
            } else if mail_held {
                continue;
            } else {
                match self.hand_over(&mut round, &mut limits, id, e, now).await? {
                    Handover::Handed(done) => {
                        in_flight.push(done);
                        busy[0] += 1;
                    }
                    Handover::Next => continue,
                    Handover::Stop => {
                        mail_held = true;
                        continue;
                    }
                }
            }
            if busy[0] >= slots[0] || busy[1] >= slots[1] {
                // Full: wait for half of the full kind's slots to free (the other half keep
                // their connections busy meanwhile), settle every answer in by then and make the
                // accepted ones durable, in one group commit, before any slot takes another.
                let target = [0, 1].map(|k| if busy[k] >= slots[k] { slots[k] / 2 } else { usize::MAX });
                while busy[0] > target[0] || busy[1] > target[1] {
                    let Some(done) = in_flight.next().await else {
                        break;
                    };
                    busy[done.3.kind()] -= 1;
                    self.settle(&mut round, &mut limits, done, wall());
                }
                while let Some(Some(done)) = futures::FutureExt::now_or_never(in_flight.next()) {
                    busy[done.3.kind()] -= 1;
                    self.settle(&mut round, &mut limits, done, wall());
                }
                self.group_commit(&mut round, durable)?;
            }
            if self.walk.lock().expect("walk lock").paused_until > now {
                mail_held = true;
            }
        }
        while let Some(done) = in_flight.next().await {
            self.settle(&mut round, &mut limits, done, wall());
        }
        self.group_commit(&mut round, durable)?;
        limits.tidy();
        round.quota = Some(limits.count);
        Ok(round)
    }

    /// Hands mail entry `e` to the mail transport, unless it is suppressed, undeliverable or
    /// must wait for a limit: the answer to come, or none (the entry was dealt with, or waits).
    async fn hand_over(
        &self,
        round: &mut Round,
        limits: &mut Limits,
        id: SendId,
        e: OutboxEntry,
        now: Ts,
    ) -> Result<Handover, MailerError> {
        if self.suppressed(&e)? {
            round.remove(&self.store, e.partition, OutboxKey::of(id, &e));
            self.metrics.sends.with_label_values(&[&e.workflow, "suppressed"]).inc();
            round.handled += 1;
            return Ok(Handover::Next);
        }
        // The recipient's domain comes first: mail that its domain's rate holds back costs
        // a look at the limits, not a render, on every pass until it may go.
        let to = match e.to.parse::<Mailbox>() {
            Ok(to) => to,
            Err(err) => {
                let reason = format!("refused: {}", eml::EmlError::Address(e.to.to_string(), err));
                self.retire(round, id, &e, "refused", &reason, now);
                return Ok(Handover::Next);
            }
        };
        let domain = to.email.domain().to_ascii_lowercase();
        let waited = Instant::now();
        match limits.admit(&domain, now).await {
            Ok(()) => {}
            Err(Hold::Quota(at)) => {
                round.wait_at_most(Duration::from_millis((at - now).max(0) as u64));
                return Ok(Handover::Stop);
            }
            Err(Hold::Domain(d)) => {
                round.wait_at_most(d);
                return Ok(Handover::Next);
            }
        }
        let (envelope, message) = match self.build(id, &e, to) {
            Ok(built) => built,
            Err(reason) => {
                // Never deliverable as decided (a template that fails on this contact's
                // data, too large): a dead letter with the reason, not a retry.
                limits.refund();
                self.retire(round, id, &e, "refused", &format!("refused: {reason}"), now);
                return Ok(Handover::Next);
            }
        };
        self.metrics.mail_rate_wait.observe(waited.elapsed().as_secs_f64());
        let started = Instant::now();
        let answer = self.transport.deliver(id, envelope, message);
        Ok(Handover::Handed(Box::pin(async move {
            let a = Answer::Mail(answer.await);
            (id, e, domain, a, started.elapsed())
        })))
    }

    /// Writes a round's outbox, ledger and suppression changes (per partition, through the
    /// changelog in Kafka mode) and the quota counts.
    pub fn commit(&self, mut round: Round) -> Result<(), MailerError> {
        for (p, n) in std::mem::take(&mut round.removed) {
            outbox_counts::add(&self.store, round.batch(p), outbox_counts::REMOVED, p, n)?;
        }
        for (p, mut batch) in round.batches {
            if let Some(h) = self.hook.get() {
                h.publish(p, &mut batch)?;
            }
            self.store.write(batch, true)?;
        }
        if let Some(q) = round.quota {
            // Local to this instance (its share), so outside the mirrored partition batches.
            let mut b = WriteBatch::default();
            tables::put_quota(&self.store, &mut b, &q);
            self.store.write(b, false)?;
        }
        let hook = self.hook.get();
        let depth = outbox_counts::depth(&self.store, |p| hook.is_none_or(|h| h.owns(p)))?;
        self.metrics.outbox_depth.set(depth);
        Ok(())
    }

    fn domain_label<'a>(&self, domain: &'a str) -> &'a str {
        if self.settings.rate.domains.contains_key(domain) {
            domain
        } else {
            "other"
        }
    }

    fn settle(&self, round: &mut Round, limits: &mut Limits, (id, e, to, answer, took): Done, now: Ts) {
        let transport = match answer {
            Answer::Mail(_) => self.transport.name(),
            Answer::Webhook(_) => "webhook",
        };
        self.metrics
            .transport_latency
            .with_label_values(&[transport])
            .observe(took.as_secs_f64());
        match answer {
            Answer::Mail(outcome) => self.settle_mail(round, limits, id, e, &to, outcome, now),
            Answer::Webhook(answer) => self.settle_webhook(round, id, e, &to, answer, now),
        }
    }

    /// Into the sent ledger and out of the outbox, durable at the next group commit.
    fn accept(&self, round: &mut Round, id: SendId, e: &OutboxEntry, now: Ts) {
        // Per partition for the changelog; without one, one batch (one fsync) for all.
        let group = if self.hook.get().is_some() { e.partition } else { 0 };
        let batch = round.accepted.entry(group).or_default();
        tables::mark_sent(&self.store, batch, id, now);
        delete_counted(
            &self.store,
            batch,
            OutboxKey::of(id, e),
            e.partition,
            &mut round.accepted_removed,
        );
        round.handled += 1;
        round.delivered += 1;
    }

    /// Backs `e` off for another attempt, or retires it once it has been retrying for
    /// `mail.retry.max_age`; `Err` with the attempts made when it is retired.
    fn defer(&self, round: &mut Round, id: SendId, e: &mut OutboxEntry, at_least: i64, now: Ts) -> Result<(), u32> {
        e.attempts += 1;
        if e.first_attempt == 0 {
            e.first_attempt = now;
        }
        // Past the age, or asked to wait beyond it (a far `Retry-After`): no more attempts.
        if now - e.first_attempt >= self.timing.retry_max_age
            || now + at_least - e.first_attempt > self.timing.retry_max_age
        {
            return Err(e.attempts);
        }
        let delay = retry::backoff(e.attempts, self.timing.retry_initial, self.timing.retry_max).max(at_least);
        e.not_before = now + delay;
        round.wait_at_most(Duration::from_millis(delay as u64));
        tables::put_outbox(&self.store, round.batch(e.partition), id, e);
        round.handled += 1;
        Ok(())
    }

    fn settle_webhook(
        &self,
        round: &mut Round,
        id: SendId,
        mut e: OutboxEntry,
        host: &str,
        answer: webhook::Answer,
        now: Ts,
    ) {
        use webhook::Answer as A;
        let result = match &answer {
            A::Delivered(_) => "delivered",
            A::Retry { .. } => "retried",
            A::Failed { .. } => "failed",
        };
        self.metrics.webhook_calls.with_label_values(&[result]).inc();
        match answer {
            A::Delivered(status) => {
                self.webhooks.answered(host);
                self.metrics.sends.with_label_values(&[&e.workflow, "accepted"]).inc();
                self.accept(round, id, &e, now);
                let ev = webhook::event(&e, id, "Webhook Delivered", Some(status), None);
                round.accepted_events.push(ev);
            }
            A::Retry { status, reason, after } => {
                match (status, after) {
                    (None, _) => {
                        self.webhooks.unreachable(host, now);
                    }
                    (Some(_), Some(after)) => {
                        self.webhooks.answered(host);
                        self.webhooks.pause(host, now + after.as_millis() as i64);
                    }
                    (Some(_), None) => self.webhooks.answered(host),
                }
                let at_least = after.map_or(0, |d| d.as_millis() as i64);
                match self.defer(round, id, &mut e, at_least, now) {
                    Ok(()) => {
                        self.metrics.sends.with_label_values(&[&e.workflow, "deferred"]).inc();
                        tracing::debug!("webhook {id} to {host} will be retried: {reason}");
                    }
                    Err(attempts) => {
                        let why = format!("still failing after {attempts} attempts: {reason}");
                        self.webhook_failed(round, id, &e, status, &why, now);
                    }
                }
            }
            A::Failed { status, reason } => {
                self.webhooks.answered(host);
                self.webhook_failed(round, id, &e, Some(status), &reason, now);
            }
        }
    }

    /// A call that will never be made as decided: a dead letter with the reason (the
    /// receiver's answer) and a `Webhook Failed` event for the contact's workflows.
    fn webhook_failed(
        &self,
        round: &mut Round,
        id: SendId,
        e: &OutboxEntry,
        status: Option<u16>,
        reason: &str,
        now: Ts,
    ) {
        self.retire(round, id, e, "failed", &format!("webhook: {reason}"), now);
        round
            .feedback
            .push(webhook::event(e, id, "Webhook Failed", status, Some(reason)));
    }

    #[allow(clippy::too_many_arguments)]
    fn settle_mail(
        &self,
        round: &mut Round,
        limits: &mut Limits,
        id: SendId,
        mut e: OutboxEntry,
        domain: &str,
        outcome: Outcome,
        now: Ts,
    ) {
        let result = match &outcome {
            Outcome::Accepted => "delivered",
            Outcome::Deferred(_) => "deferred",
            Outcome::Rejected(_) => "bounced",
            Outcome::Unavailable(_) => "unavailable",
        };
        self.metrics
            .mail_deliveries
            .with_label_values(&[result, self.domain_label(domain)])
            .inc();
        let events = self.settings.delivery_events;
        match outcome {
            Outcome::Accepted => {
                self.metrics.sends.with_label_values(&[&e.workflow, "accepted"]).inc();
                self.accept(round, id, &e, now);
                if events {
                    let ev = feedback_event(&e.contact, id, FeedbackKind::Delivered, Some(&e.workflow), None);
                    round.accepted_events.push(ev);
                }
                let mut walk = self.walk.lock().expect("walk lock");
                walk.pause = 0;
            }
            Outcome::Deferred(reason) => match self.defer(round, id, &mut e, 0, now) {
                Ok(()) => {
                    self.metrics.sends.with_label_values(&[&e.workflow, "deferred"]).inc();
                    self.metrics.mail_retries.inc();
                    if events && e.attempts == 1 {
                        let ev =
                            feedback_event(&e.contact, id, FeedbackKind::Deferred, Some(&e.workflow), Some(&reason));
                        round.feedback.push(ev);
                    }
                }
                Err(attempts) => {
                    let why = format!("soft bounce: still deferred after {attempts} attempts: {reason}");
                    self.retire(round, id, &e, "soft_bounced", &why, now);
                    if events {
                        let ev = feedback_event(
                            &e.contact,
                            id,
                            FeedbackKind::SoftBounced,
                            Some(&e.workflow),
                            Some(&reason),
                        );
                        round.feedback.push(ev);
                    }
                }
            },
            Outcome::Rejected(reason) => {
                self.retire(round, id, &e, "bounced", &format!("bounced: {reason}"), now);
                // The address is bad: nothing more goes to this contact from now on, including
                // mail already waiting; the contact's state learns it from the event.
                let mut sup = tables::get_suppression(&self.store, &e.contact)
                    .ok()
                    .flatten()
                    .unwrap_or_default();
                sup.all = true;
                tables::put_suppression(&self.store, round.batch(e.partition), &e.contact, &sup);
                // A bounce is always reported: suppression must reach the contact's state.
                round.feedback.push(feedback_event(
                    &e.contact,
                    id,
                    FeedbackKind::Bounced,
                    Some(&e.workflow),
                    Some(&reason),
                ));
            }
            Outcome::Unavailable(reason) => {
                limits.refund();
                let mut walk = self.walk.lock().expect("walk lock");
                walk.pause = (walk.pause * 2).clamp(SECOND / 2, MAX_PAUSE);
                walk.paused_until = now + walk.pause;
                // Come back to this entry first once the transport answers again.
                walk.cursor = walk.cursor.min(OutboxKey::of(id, &e).before());
                round.wait_at_most(Duration::from_millis(walk.pause as u64));
                tracing::warn!("mail transport unavailable ({reason}); retrying in {} ms", walk.pause);
            }
        }
    }

    /// Takes an entry out of the outbox for good, as a dead letter with the reason.
    fn retire(&self, round: &mut Round, id: SendId, e: &OutboxEntry, result: &str, reason: &str, now: Ts) {
        self.metrics.sends.with_label_values(&[&e.workflow, result]).inc();
        let payload = serde_json::json!({"id": id.to_string(), "to": e.to, "workflow": e.workflow});
        let key = OutboxKey::of(id, e);
        self.dead_letter(round, e.partition, key, reason, payload.to_string().as_bytes(), now);
    }

    /// Moves the outbox entry under `key` to the dead letters (with `payload`), in
    /// `partition`'s batch.
    fn dead_letter(&self, round: &mut Round, partition: u16, key: OutboxKey, reason: &str, payload: &[u8], now: Ts) {
        crate::storage::dead_letters::put(&self.store, round.batch(partition), now, "mailer", reason, payload);
        round.remove(&self.store, partition, key);
        round.handled += 1;
    }

    /// Held back by an unsubscribe or bounce recorded since the send was decided: the
    /// suppression table (written the moment it happened) or the contact's committed state.
    fn suppressed(&self, e: &OutboxEntry) -> Result<bool, StoreError> {
        if e.kind == MailKind::Internal {
            return Ok(false);
        }
        if tables::get_suppression(&self.store, &e.contact)?.is_some_and(|s| s.blocks(e.kind, &e.workflow)) {
            return Ok(true);
        }
        if crate::storage::suppressed_addresses::get(&self.store, &e.to)?.is_some() {
            return Ok(true);
        }
        Ok(tables::get_contact(&self.store, &e.contact)?.is_some_and(|st| {
            Suppression {
                marketing: st.unsubscribed,
                all: st.suppressed,
                workflows: st.unsubscribed_from.clone(),
            }
            .blocks(e.kind, &e.workflow)
        }))
    }

    /// The recipient with the contact's name, when the mail goes to the contact's own address
    /// and its traits have one (`name`, else `first_name` and `last_name`).
    fn addressed(&self, e: &OutboxEntry, to: Mailbox) -> Mailbox {
        let tables::Content::Template { traits, .. } = &e.content else {
            return to;
        };
        let get = |k: &str| {
            traits
                .get(k)
                .and_then(|v| v.as_str())
                .map(str::trim)
                .filter(|s| !s.is_empty())
        };
        if get("email").is_none_or(|a| !a.eq_ignore_ascii_case(to.email.as_ref())) {
            return to;
        }
        let name = match get("name") {
            Some(n) => n.to_owned(),
            None => [get("first_name"), get("last_name")]
                .into_iter()
                .flatten()
                .collect::<Vec<_>>()
                .join(" "),
        };
        if name.is_empty() {
            return to;
        }
        // CR/LF never reach a header: lettre encodes the name, and line breaks go first.
        Mailbox::new(Some(name.replace(['\r', '\n'], " ")), to.email)
    }

    /// The calendar invite of the entry's template, if it has one. One that cannot be made (a
    /// start that is not a time) is left out of a message that still goes, and counted as a
    /// render error with the reason in the log.
    fn invite(&self, id: SendId, e: &OutboxEntry, to: &Mailbox) -> Option<String> {
        let made = super::compose::render_calendar(&self.reg, &self.links, id, e).and_then(|cal| {
            let Some(cal) = cal else { return Ok(None) };
            let tz = match &e.content {
                tables::Content::Template { traits, .. } => traits
                    .get("timezone")
                    .and_then(|v| v.as_str())
                    .and_then(|s| s.parse().ok())
                    .unwrap_or(self.default_tz),
                _ => self.default_tz,
            };
            let domain = &self.settings.message_id_domain;
            let send = super::invite::Send {
                id,
                contact: &e.contact,
                decided_at: e.decided_at,
            };
            super::invite::ics(&cal, &send, domain, &self.from, to, tz).map(Some)
        });
        made.unwrap_or_else(|reason| {
            self.metrics.render_errors.inc();
            tracing::warn!(
                "message {id} of {} goes without its calendar invite: {reason}",
                e.workflow
            );
            None
        })
    }

    /// The message as it goes out: tracked links and pixel, unsubscribe headers on marketing
    /// mail, DKIM signature; refused if it is over the size limit.
    fn build(
        &self,
        id: SendId,
        e: &OutboxEntry,
        to: Mailbox,
    ) -> Result<(lettre::address::Envelope, Arc<[u8]>), String> {
        let msg_id = id.to_string();
        let links = &self.links;
        let Rendered {
            subject,
            mut html,
            mut text,
        } = super::compose::render(&self.reg, links, id, e).inspect_err(|_| self.metrics.render_errors.inc())?;
        let track = &self.settings.tracking;
        let click = |url: &str| links.click_url(&e.contact, &e.workflow, &msg_id, url);
        let tracked = e.kind != MailKind::Internal;
        if tracked
            && (track.opens || track.clicks)
            && let Some(h) = &html
        {
            let open_url = track.opens.then(|| links.open_url(&e.contact, &e.workflow, &msg_id));
            let pixel = open_url.as_deref().map(|url| tracking::Pixel {
                url,
                min_text: track.pixel_min_text,
            });
            let click_fn: Option<&dyn Fn(&str) -> String> = if track.clicks { Some(&click) } else { None };
            html = Some(
                tracking::rewrite_html(h, &self.settings.public_url, click_fn, pixel)
                    .map_err(|err| format!("cannot rewrite the HTML body: {err}"))?,
            );
        }
        // A text body of its own gets the tracked links too (one made from the HTML has them).
        if tracked
            && track.clicks
            && let Some(t) = &text
        {
            text = Some(tracking::rewrite_text(t, &self.settings.public_url, &click));
        }
        let to = self.addressed(e, to);
        let mut headers = vec![];
        if !self.settings.feedback_id_sender.is_empty() {
            let kind = format!("{:?}", e.kind).to_lowercase();
            let sender = &self.settings.feedback_id_sender;
            headers.push(("Feedback-ID", format!("{}:v{}:{kind}:{sender}", e.workflow, e.version)));
        }
        if e.kind == MailKind::Marketing {
            headers.push((
                "List-Unsubscribe",
                links.list_unsubscribe(&e.contact, &e.workflow, &msg_id),
            ));
            headers.push(("List-Unsubscribe-Post", "List-Unsubscribe=One-Click".to_owned()));
            // RFC 2919: each workflow is a list of its own.
            headers.push((
                "List-Id",
                format!("{0} <{0}.{1}>", e.workflow, self.settings.message_id_domain),
            ));
        }
        let calendar = self.invite(id, e, &to);
        let rendered = Rendered { subject, html, text };
        let mail = eml::Mail {
            id,
            to,
            rendered: &rendered,
            workflow: &e.workflow,
            version: e.version,
            kind: e.kind,
            headers,
            calendar,
        };
        let date = std::time::UNIX_EPOCH + Duration::from_millis(e.decided_at.max(0) as u64);
        let mut msg =
            eml::build(mail, &self.from, &self.settings.message_id_domain, date).map_err(|err| err.to_string())?;
        if let Some(dkim) = &self.dkim {
            msg.sign(dkim);
        }
        let bytes = msg.formatted();
        if bytes.len() > self.settings.max_message_bytes {
            return Err(format!(
                "message is {} bytes, over mail.max_message_bytes = {}",
                bytes.len(),
                self.settings.max_message_bytes
            ));
        }
        Ok((msg.envelope().clone(), bytes.into()))
    }
}

fn dkim_config(mail: &MailSettings) -> Result<Option<lettre::message::dkim::DkimConfig>, MailerError> {
    use lettre::message::dkim::{DkimCanonicalization, DkimCanonicalizationType, DkimConfig, DkimSigningAlgorithm};
    use lettre::message::header::HeaderName;
    let d = &mail.dkim;
    if d.selector.is_empty() {
        return Ok(None);
    }
    let pem = std::fs::read_to_string(&d.private_key_file).map_err(|e| {
        MailerError::Config(format!(
            "mail.dkim.private_key_file {}: {e}",
            d.private_key_file.display()
        ))
    })?;
    let algorithm = if d.algorithm == "ed25519" {
        DkimSigningAlgorithm::Ed25519
    } else {
        DkimSigningAlgorithm::Rsa
    };
    let key = lettre::message::dkim::DkimSigningKey::new(pem.trim(), algorithm)
        .map_err(|e| MailerError::Config(format!("mail.dkim.private_key_file: {e}")))?;
    let headers = [
        "From",
        "To",
        "Subject",
        "Date",
        "Message-ID",
        "List-Unsubscribe",
        "List-Unsubscribe-Post",
        "List-Id",
        "Feedback-ID",
    ]
    .into_iter()
    .map(HeaderName::new_from_ascii_str)
    .collect();
    Ok(Some(DkimConfig::new(
        d.selector.clone(),
        d.domain.clone(),
        key,
        headers,
        DkimCanonicalization {
            header: DkimCanonicalizationType::Relaxed,
            body: DkimCanonicalizationType::Relaxed,
        },
    )))
}
