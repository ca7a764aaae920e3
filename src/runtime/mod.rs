//! The engine on one machine: the embedded log, partition processors (driven by actix worker actors,
//! see [`actors`]), the outbox mailer, all over one RocksDB store.

pub mod actors;
pub mod partition;

use crate::config::Settings;
use crate::event::{Event, EventKind};
use crate::machine::ContactState;
use crate::metrics::Metrics;
use crate::sinks::mailer::Mailer;
use crate::storage::hook::CommitHook;
use crate::storage::log::{Appended, EmbeddedLog};
use crate::storage::{Store, dead_letters, tables};
use crate::time::Ts;
use crate::workflow::Registry;
use anyhow::Context;
use partition::Partition;
use rocksdb::WriteBatch;
use std::sync::{Arc, Mutex};

pub struct Engine {
    pub settings: Settings,
    pub store: Arc<Store>,
    pub log: EmbeddedLog,
    pub reg: Arc<Registry>,
    pub metrics: Arc<Metrics>,
    pub partitions: Vec<Mutex<Partition>>,
    pub mailer: Mailer,
    /// Kafka mode (see [`Cluster`]): the changelog's hook (partitions are then hosted by the
    /// consumer-group member, not in `partitions`) and the producer HTTP ingest writes to.
    pub changelog: Option<Arc<dyn CommitHook>>,
    pub kafka_ingest: Option<Box<dyn Producer>>,
    /// The consumer-group member, until the actors start it.
    consumer: Mutex<Option<Consumer>>,
    /// Seals unsubscribe and tracking links.
    pub links: Arc<crate::links::Links>,
    /// Write keys, admin tokens and link secrets in force.
    pub keys: Arc<crate::auth::Keys>,
    pub readiness: Readiness,
    batch: usize,
    /// Contacts whose erasure this process completed, until an erase call has seen it.
    erased: Mutex<Vec<String>>,
    /// Per partition here: the next log offset it will handle, published after each poll so
    /// that a scrape reads the lag without waiting for a busy partition's lock.
    handled: Vec<std::sync::atomic::AtomicU64>,
}

/// Where events go instead of the embedded log when the engine runs on a cluster.
pub trait Producer: Send + Sync {
    /// Appends each (event, raw JSON) durably (the broker's acknowledgement).
    fn produce(&self, events: &[(&Event, &[u8])], received: Ts) -> anyhow::Result<()>;
    /// The events topic's partition count.
    fn partitions(&self) -> usize;
}

/// The consumer-group member: runs on a thread of its own, driving the partitions it is
/// assigned, until the flag is set.
pub type Consumer = Box<dyn FnOnce(Arc<Engine>, Arc<std::sync::atomic::AtomicBool>) -> anyhow::Result<()> + Send>;

/// What a cluster (Kafka, see `crate::kafka::open_engine`) plugs into the engine, built once
/// the store and the metrics exist. The engine never imports the cluster's code.
pub struct Cluster {
    pub producer: Box<dyn Producer>,
    pub hook: Arc<dyn CommitHook>,
    pub consumer: Consumer,
}

/// Builds the [`Cluster`] over the engine's store and metrics.
pub type ClusterFactory<'a> = &'a dyn Fn(&Arc<Store>, &Arc<Metrics>) -> anyhow::Result<Cluster>;

/// What `/readyz` answers: ready once the actors run, until shutdown begins; in Kafka mode
/// also not while a rebalance is handing partitions over (restores included).
#[derive(Debug, Default)]
pub struct Readiness {
    started: std::sync::atomic::AtomicBool,
    stopping: std::sync::atomic::AtomicBool,
    rebalancing: std::sync::atomic::AtomicBool,
}

impl Readiness {
    fn new(kafka: bool) -> Self {
        let r = Readiness::default();
        // A group member owns nothing until its first assignment.
        r.rebalancing.store(kafka, std::sync::atomic::Ordering::SeqCst);
        r
    }

    pub fn set_started(&self) {
        self.started.store(true, std::sync::atomic::Ordering::SeqCst);
    }

    pub fn set_stopping(&self) {
        self.stopping.store(true, std::sync::atomic::Ordering::SeqCst);
    }

    pub fn is_stopping(&self) -> bool {
        self.stopping.load(std::sync::atomic::Ordering::SeqCst)
    }

    pub fn set_rebalancing(&self, on: bool) {
        self.rebalancing.store(on, std::sync::atomic::Ordering::SeqCst);
    }

    /// `Err(reason)` while not ready.
    pub fn check(&self) -> Result<(), &'static str> {
        use std::sync::atomic::Ordering::SeqCst;
        if self.stopping.load(SeqCst) {
            Err("shutting down")
        } else if !self.started.load(SeqCst) {
            Err("starting")
        } else if self.rebalancing.load(SeqCst) {
            Err("waiting for a partition assignment (rebalance or restore in progress)")
        } else {
            Ok(())
        }
    }
}

/// The store is held by a running `dripline run` (RocksDB allows one writer).
#[derive(Debug, thiserror::Error)]
#[error("the store {} is in use by another dripline process ({reason})", dir.display())]
pub struct StoreInUse {
    pub dir: std::path::PathBuf,
    pub reason: String,
}

/// What happened to a request's events.
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct IngestReport {
    pub accepted: usize,
    pub duplicates: usize,
    pub errors: Vec<IngestError>,
}

/// Who an ingest comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// A client with a write key: events the engine emits itself are refused.
    Client,
    /// The engine itself (delivery results, tracking links), the admin API, tests.
    Engine,
}

#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct IngestError {
    pub index: usize,
    pub reason: String,
}

/// Why a partition whose lock is poisoned fails: its state may be half-updated.
const POISONED: &str = "a worker panicked while handling it";

/// What one worker round did ([`Engine::pump_worker`]).
#[derive(Debug, Default)]
pub struct Round {
    /// Inputs handled (log records and fired timers).
    pub handled: usize,
    /// The partitions that failed, with why.
    pub failed: Vec<(usize, anyhow::Error)>,
}

impl Engine {
    /// Opens the store and the log, loads the workflows (keeping earlier versions that stored
    /// state may still be inside) and the partition processors, on the embedded log. Kafka mode
    /// opens through `crate::kafka::open_engine`.
    pub fn open(settings: &Settings) -> anyhow::Result<Engine> {
        anyhow::ensure!(
            !settings.kafka.enabled(),
            "kafka.brokers is set: the engine opens on Kafka through dripline::kafka::open_engine"
        );
        Self::open_with(settings, None)
    }

    /// [`Engine::open`] with a cluster plugged in.
    pub fn open_with(settings: &Settings, cluster: Option<ClusterFactory>) -> anyhow::Result<Engine> {
        let e = &settings.engine;
        crate::tune_allocators();
        std::fs::create_dir_all(&e.data_dir).with_context(|| format!("creating {}", e.data_dir.display()))?;
        let store = Arc::new(
            Store::open_partitioned(&e.data_dir, e.partitions).map_err(|err| match err {
                crate::storage::StoreError::Rocks(r) if r.to_string().contains("lock") => {
                    anyhow::Error::new(StoreInUse {
                        dir: e.data_dir.clone(),
                        reason: r.to_string(),
                    })
                }
                other => other.into(),
            })?,
        );
        if !crate::storage::outbox_counts::kept(&store)? {
            // A store written before the counts were kept: counted once, here.
            crate::storage::outbox_counts::recount(&store)?;
        }
        let history = tables::workflow_versions(&store)?;
        // A changed file is a new version, in force for inputs from now on (the wall clock of
        // this start, recorded with it, so a replay switches at the same point).
        let now = chrono::Utc::now().timestamp_millis();
        let reg = Registry::load_dir_at(&settings.workflows.dir, &history, settings.policy()?, now)
            .map_err(|errs| anyhow::anyhow!("invalid workflows:\n{errs}"))?;
        tables::put_workflow_versions(&store, reg.stored_versions())?;
        let reg = Arc::new(reg);
        let metrics = Arc::new(Metrics::new());
        metrics.init_workflows(reg.latest().iter().map(|w| &*w.id));
        let (changelog, kafka_ingest, consumer) = match cluster {
            Some(build) => {
                let c = build(&store, &metrics)?;
                (Some(c.hook), Some(c.producer), Some(c.consumer))
            }
            None => (None, None, None),
        };
        let keys = Arc::new(crate::auth::Keys::load(settings)?);
        dead_letters::set_payload_cap(settings.dead_letters.max_payload_bytes);
        let links = Arc::new(crate::links::Links::from_settings(&settings.mail, &keys));
        let checkpoint = partition::Checkpoint {
            inputs: e.checkpoint_inputs,
            interval: std::time::Duration::from_millis(
                crate::workflow::duration::parse(&e.checkpoint_interval).map_err(anyhow::Error::msg)? as u64,
            ),
        };
        // In Kafka mode the consumer-group member opens partitions as they are assigned.
        let local_partitions = if changelog.is_some() { 0 } else { e.partitions };
        let partitions = (0..local_partitions)
            .map(|p| {
                Partition::open(
                    p,
                    store.clone(),
                    reg.clone(),
                    metrics.clone(),
                    e.cache_contacts_per_partition,
                )
                .map(|p| Mutex::new(p.with_checkpoint(checkpoint)))
            })
            .collect::<Result<Vec<_>, _>>()?;
        // The processors of this process take fresh records from memory (none in Kafka mode).
        let tail = if partitions.is_empty() { 0 } else { 8192 };
        let log = EmbeddedLog::open(store.clone(), e.partitions, e.dedup_window)?.with_tail(tail);
        let handled = partitions
            .iter()
            .map(|p| p.lock().expect("partition lock").next_offset().into())
            .collect();
        let mailer = Mailer::new(store.clone(), settings, reg.clone(), links.clone(), metrics.clone())?;
        if let Some(c) = &changelog {
            mailer.set_hook(c.clone());
        }
        Ok(Engine {
            settings: settings.clone(),
            changelog,
            kafka_ingest,
            consumer: Mutex::new(consumer),
            store,
            log,
            reg,
            metrics,
            partitions,
            mailer,
            links,
            keys,
            readiness: Readiness::new(settings.kafka.enabled()),
            batch: e.batch,
            erased: Mutex::default(),
            handled,
        })
    }

    /// One mailer round: decide, append the delivery events durably, then commit the outbox
    /// changes (so a crash between the two repeats events, dropped as duplicates, and loses
    /// none). Runs on the mailer actor's arbiter when the transport is SMTP.
    pub async fn send_mail(&self, limit: usize) -> anyhow::Result<crate::sinks::mailer::Round> {
        let durable = |events: &[serde_json::Value]| -> anyhow::Result<()> {
            let report = self.ingest_values(events, None, chrono::Utc::now().timestamp_millis())?;
            if let Some(err) = report.errors.first() {
                tracing::error!("delivery event refused: {}", err.reason);
            }
            Ok(())
        };
        let mut round = self.mailer.dispatch(limit, &durable).await?;
        let feedback = std::mem::take(&mut round.feedback);
        if !feedback.is_empty() {
            let report = self.ingest_values(&feedback, None, chrono::Utc::now().timestamp_millis())?;
            if let Some(err) = report.errors.first() {
                tracing::error!("delivery event refused: {}", err.reason);
            }
        }
        let summary = crate::sinks::mailer::Round {
            handled: round.handled,
            delivered: round.delivered,
            wait: round.wait,
            feedback,
            ..Default::default()
        };
        self.mailer.commit(round)?;
        Ok(summary)
    }

    /// [`Engine::send_mail`] on this thread, for the file transport (tests, the demo): returns
    /// how many outbox entries were handled.
    pub fn drain_mail(&self, limit: usize) -> anyhow::Result<usize> {
        Ok(futures::executor::block_on(self.send_mail(limit))?.handled)
    }

    /// Records an unsubscribe from a signed link: suppression at once (mail already in the
    /// outbox is held back) and an `Unsubscribed` event into the contact's stream.
    pub fn unsubscribe(&self, claims: &crate::links::Claims, only_workflow: bool) -> anyhow::Result<()> {
        let mut sup = tables::get_suppression(&self.store, &claims.contact)?.unwrap_or_default();
        if only_workflow {
            sup.workflows.insert(claims.workflow.clone());
        } else {
            sup.marketing = true;
        }
        let mut batch = WriteBatch::default();
        tables::put_suppression(&self.store, &mut batch, &claims.contact, &sup);
        // Local: in Kafka mode the instance that owns the contact learns it from the event (the
        // mailer also checks the contact's committed state before each send).
        self.store.write(batch, true)?;
        let id: crate::machine::SendId = claims.message.parse()?;
        let workflow = only_workflow.then_some(claims.workflow.as_str());
        let ev = crate::sinks::mailer::feedback_event(
            &claims.contact,
            id,
            crate::machine::FeedbackKind::Unsubscribed,
            workflow,
            None,
        );
        self.ingest_values(&[ev], None, chrono::Utc::now().timestamp_millis())?;
        Ok(())
    }

    /// An open or a click from a signed link, as an event in the contact's stream.
    pub fn engagement(&self, claims: &crate::links::Claims, kind: crate::machine::FeedbackKind) -> anyhow::Result<()> {
        let id: crate::machine::SendId = claims.message.parse()?;
        let mut ev = crate::sinks::mailer::feedback_event(&claims.contact, id, kind, Some(&claims.workflow), None);
        if let Some(url) = &claims.url {
            ev["properties"]["url"] = url.clone().into();
            // Each distinct link clicked counts; repeats of the same one are dropped.
            let mid = format!(
                "{}:{:x}",
                ev["messageId"].as_str().unwrap_or_default(),
                xxhash_rust::xxh3::xxh3_64(url.as_bytes())
            );
            ev["messageId"] = mid.into();
        }
        self.ingest_values(&[ev], None, chrono::Utc::now().timestamp_millis())?;
        Ok(())
    }

    /// Validates and durably appends events given as JSON bytes (one event each); invalid ones
    /// go to the dead letters with their reason, and nothing valid in the same request is lost.
    pub fn ingest_raw(
        &self,
        payloads: &[&[u8]],
        kind_hint: Option<EventKind>,
        received: Ts,
        origin: Origin,
    ) -> anyhow::Result<IngestReport> {
        let mut report = IngestReport::default();
        let mut valid = Vec::with_capacity(payloads.len());
        let mut dead = WriteBatch::default();
        for (i, bytes) in payloads.iter().enumerate() {
            // Borrowed from the payload: the log encodes it as it is.
            let parsed = crate::event::wire::parse_ref(bytes, kind_hint).and_then(|ev| match origin {
                Origin::Client if ev.kind == EventKind::Track && crate::event::is_engine_event(&ev.name) => {
                    Err(crate::event::EventError::Reserved(ev.name.to_string()))
                }
                Origin::Client if ev.user_id.starts_with('\u{1}') => Err(crate::event::EventError::ControlId),
                _ => Ok(ev),
            });
            match parsed {
                Ok(ev) => {
                    if ev.kind == EventKind::Track && crate::event::ENGINE_EVENTS.contains(&&*ev.name) {
                        self.metrics.feedback_events.with_label_values(&[&ev.name]).inc();
                    }
                    valid.push(ev)
                }
                Err(e) => {
                    self.metrics
                        .events_rejected
                        .with_label_values(&[reject_label(&e)])
                        .inc();
                    dead_letters::put(&self.store, &mut dead, received, "ingest", &e.to_string(), bytes);
                    report.errors.push(IngestError {
                        index: i,
                        reason: e.to_string(),
                    });
                }
            }
        }
        if !dead.is_empty() {
            self.store.write(dead, true)?;
        }
        if let Some(k) = &self.kafka_ingest {
            // The broker's acknowledgement is the durability point; repeats are dropped by the
            // consuming partition's messageId window.
            let raw: Vec<std::borrow::Cow<[u8]>> = payloads
                .iter()
                .enumerate()
                .filter(|(i, _)| !report.errors.iter().any(|e| e.index == *i))
                .map(|(_, b)| with_type(b, kind_hint))
                .collect();
            let valid: Vec<Event> = valid.into_iter().map(|e| e.into_event()).collect();
            let pairs: Vec<(&Event, &[u8])> = valid.iter().zip(raw.iter().map(|r| r.as_ref())).collect();
            k.produce(&pairs, received)?;
            report.accepted = valid.len();
            self.metrics.events_ingested.inc_by(report.accepted as u64);
            return Ok(report);
        }
        let started = std::time::Instant::now();
        let appended = self.log.append(valid, received)?;
        self.metrics.log_append.observe(started.elapsed().as_secs_f64());
        for a in appended {
            match a {
                Appended::At(..) => report.accepted += 1,
                Appended::Duplicate => {
                    report.duplicates += 1;
                    self.metrics.events_rejected.with_label_values(&["duplicate"]).inc();
                }
            }
        }
        self.metrics.events_ingested.inc_by(report.accepted as u64);
        Ok(report)
    }

    /// [`Engine::ingest_raw`] for events already held as JSON values (tests, the demo).
    pub fn ingest_values(
        &self,
        values: &[serde_json::Value],
        kind_hint: Option<EventKind>,
        received: Ts,
    ) -> anyhow::Result<IngestReport> {
        let bytes: Vec<Vec<u8>> = values
            .iter()
            .map(|v| serde_json::to_vec(v).expect("a JSON value"))
            .collect();
        let slices: Vec<&[u8]> = bytes.iter().map(Vec::as_slice).collect();
        self.ingest_raw(&slices, kind_hint, received, Origin::Engine)
    }

    /// The consumer-group member to start (once), in Kafka mode.
    pub fn take_consumer(&self) -> Option<Consumer> {
        self.consumer.lock().expect("consumer lock").take()
    }

    /// The number of log partitions (embedded log or the events topic).
    pub fn log_partitions(&self) -> u16 {
        match &self.kafka_ingest {
            Some(k) => k.partitions() as u16,
            None => self.log.partitions(),
        }
    }

    /// Pauses (`pause`) or resumes a workflow: a control record appended to every partition of
    /// the log, so each stops or resumes enrolling at its own position in it, and a replay does
    /// the same at the same points. Contacts already inside go on.
    pub fn set_paused(&self, workflow: &str, pause: bool) -> anyhow::Result<()> {
        let now = chrono::Utc::now().timestamp_millis();
        let name = if pause {
            crate::event::PAUSE_EVENT
        } else {
            crate::event::RESUME_EVENT
        };
        let records: Vec<serde_json::Value> = (0..self.log_partitions())
            .map(|p| {
                serde_json::json!({
                    "type": "track",
                    "userId": crate::event::control_user(p),
                    "messageId": format!("control:{now}:{name}:{workflow}:{p}"),
                    "event": name,
                    "properties": {"workflow": workflow},
                })
            })
            .collect();
        let report = self.ingest_values(&records, None, now)?;
        if let Some(e) = report.errors.first() {
            anyhow::bail!("control record refused: {}", e.reason);
        }
        Ok(())
    }

    /// Partitions (hosted here) that have `workflow` paused, and how many are hosted here.
    pub fn paused_in(&self, workflow: &str) -> anyhow::Result<(usize, usize)> {
        let pausing = crate::storage::workflow_states::partitions_pausing(&self.store, workflow)?;
        let hosted = match &self.changelog {
            Some(c) => (0..self.log_partitions()).filter(|p| c.owns(*p)).collect::<Vec<_>>(),
            None => (0..self.log_partitions()).collect(),
        };
        Ok((pausing.iter().filter(|p| hosted.contains(p)).count(), hosted.len()))
    }

    /// Erases a contact (GDPR): an erase record in the contact's stream, handled by its
    /// partition in log order (see `Partition::erase`); then [`Engine::complete_erasures`]
    /// scrubs the log and the dead letters and compacts.
    pub fn erase(&self, contact: &str) -> anyhow::Result<()> {
        let now = chrono::Utc::now().timestamp_millis();
        let record = serde_json::json!({
            "type": "track",
            "userId": contact,
            "messageId": format!("erase:{now}:{contact}"),
            "event": crate::event::ERASE_EVENT,
        });
        let report = self.ingest_values(&[record], None, now)?;
        if let Some(e) = report.errors.first() {
            anyhow::bail!("erase record refused: {}", e.reason);
        }
        Ok(())
    }

    /// Completes the erasures the partitions have recorded: each contact's records in the log
    /// are replaced and the dead letters that mention it deleted, then both databases are
    /// compacted, so nothing of it is left in a file. Returns how many were completed.
    pub fn complete_erasures(&self) -> anyhow::Result<usize> {
        let pending = crate::storage::erasures::pending(&self.store)?;
        for p in &pending {
            // Later news about its mail goes too, unless the id is someone's again already.
            let reused = tables::get_contact(&self.store, &p.contact)?.is_some();
            let replaced = crate::storage::log::scrub(&self.store, p.partition, &p.contact, p.offset, !reused)?;
            let mut needles: Vec<&str> = vec![&p.contact];
            needles.extend(p.addresses.iter().map(String::as_str));
            let dead = dead_letters::scrub(&self.store, &needles)?;
            let mut b = WriteBatch::default();
            crate::storage::erasures::complete(&self.store, &mut b, p);
            self.store.write(b, true)?;
            tracing::info!("erasure: {replaced} log records replaced, {dead} dead letters deleted");
        }
        let mut done: Vec<String> = pending.iter().map(|p| p.contact.clone()).collect();
        if crate::storage::erasures::compaction_owed(&self.store)? {
            let started = std::time::Instant::now();
            self.store.compact_everything()?;
            let mut b = WriteBatch::default();
            crate::storage::erasures::compacted(&self.store, &mut b);
            self.store.write(b, true)?;
            tracing::info!("erasure: store compacted in {:.1} s", started.elapsed().as_secs_f64());
        }
        let n = done.len();
        // Only now, compacted, are they complete (what an erase call waits for).
        let mut erased = self.erased.lock().expect("erased lock");
        erased.append(&mut done);
        // Only a waiting erase call takes its entry; keep the list bounded without one.
        let excess = erased.len().saturating_sub(1024);
        erased.drain(..excess);
        Ok(n)
    }

    /// Whether this process completed the erasure of `contact` (scrubbed and compacted); taken
    /// once.
    pub fn take_erased(&self, contact: &str) -> bool {
        let mut erased = self.erased.lock().expect("erased lock");
        match erased.iter().position(|c| c == contact) {
            Some(i) => {
                erased.swap_remove(i);
                true
            }
            None => false,
        }
    }

    /// Deletes the dead letters older than `dead_letters.retention` (logged, never fatal).
    pub fn purge_dead_letters(&self) {
        let retention = crate::workflow::duration::parse(&self.settings.dead_letters.retention).unwrap_or(i64::MAX);
        let before = chrono::Utc::now().timestamp_millis().saturating_sub(retention);
        match dead_letters::purge_before(&self.store, before) {
            Ok(0) => {}
            Ok(n) => tracing::info!("purged {n} dead letters past dead_letters.retention"),
            Err(e) => tracing::warn!("purging dead letters: {e}"),
        }
    }

    /// Records a malformed input that never became an event.
    pub fn dead_letter(&self, reason: &str, payload: &[u8]) {
        let mut b = WriteBatch::default();
        dead_letters::put(
            &self.store,
            &mut b,
            chrono::Utc::now().timestamp_millis(),
            "ingest",
            reason,
            payload,
        );
        self.metrics.events_rejected.with_label_values(&["invalid_json"]).inc();
        if let Err(e) = self.store.write(b, true) {
            tracing::error!("cannot write dead letter: {e}");
        }
    }

    /// Processes everything appended so far (and timers due by `wall`) on this thread, and
    /// commits it.
    pub fn pump(&self, wall: Ts) -> anyhow::Result<usize> {
        let mut total = 0;
        for p in &self.partitions {
            total += self.pump_partition(p, wall, true)?;
        }
        Ok(total)
    }

    /// As [`Engine::pump`], but commits only as the checkpoint settings say, as a saturated
    /// worker does (the benchmark's path); [`Engine::flush`] commits the rest.
    pub fn pump_lazy(&self, wall: Ts) -> anyhow::Result<usize> {
        self.pump_lazy_worker(wall, 0, 1)
    }

    /// As [`Engine::pump_lazy`], as worker `worker` of `workers` does in `dripline run` (see
    /// [`Engine::pump_worker`]); the first partition that failed, if any, is the error.
    pub fn pump_lazy_worker(&self, wall: Ts, worker: usize, workers: usize) -> anyhow::Result<usize> {
        let round = self.pump_worker(wall, worker, workers, false, |_| false);
        match round.failed.into_iter().next() {
            Some((p, e)) => Err(e.context(format!("partition {p}"))),
            None => Ok(round.handled),
        }
    }

    /// One round of worker `worker` of `workers`: its own partitions first (partition p is
    /// worker p mod `workers`'s), then, with `engine.share_partitions`, every other partition
    /// that no worker is handling at that moment. A partition another worker holds is skipped,
    /// never waited for, and so is one `skip` names (a worker backing off a failed one). Sharing
    /// keeps both cores busy when one worker shares its core with the intake: its partitions
    /// would otherwise fall behind while the other worker idles (in the pipelined benchmark, one
    /// worker finished up to 0.8 s before the other). A partition that fails does not stop the
    /// round: the others are still handled.
    pub fn pump_worker(
        &self,
        wall: Ts,
        worker: usize,
        workers: usize,
        commit_when_drained: bool,
        skip: impl Fn(usize) -> bool,
    ) -> Round {
        let workers = workers.max(1);
        let own = |p: &usize| p % workers == worker;
        let share = self.settings.engine.share_partitions;
        let others = (0..self.partitions.len()).filter(|p| share && !own(p));
        let mut round = Round::default();
        for i in (0..self.partitions.len())
            .filter(own)
            .chain(others)
            .filter(|&i| !skip(i))
        {
            let pumped = match self.partitions[i].try_lock() {
                Ok(mut p) => self.pump_locked(&mut p, wall, commit_when_drained),
                Err(std::sync::TryLockError::WouldBlock) => continue,
                Err(std::sync::TryLockError::Poisoned(_)) => Err(anyhow::anyhow!(POISONED)),
            };
            match pumped {
                Ok(n) => round.handled += n,
                Err(e) => round.failed.push((i, e)),
            }
        }
        round
    }

    /// Commits what every partition has handled and not committed yet; one that fails does not
    /// keep the others from committing (the first error is returned).
    pub fn flush(&self) -> anyhow::Result<()> {
        let mut first = None;
        for (i, p) in self.partitions.iter().enumerate() {
            let flushed = match p.lock() {
                Ok(mut p) => p.flush().map_err(anyhow::Error::from),
                Err(_) => Err(anyhow::anyhow!(POISONED)),
            };
            if let Err(e) = flushed {
                first.get_or_insert(e.context(format!("partition {i}")));
            }
        }
        first.map_or(Ok(()), Err)
    }

    pub(crate) fn pump_partition(
        &self,
        p: &Mutex<Partition>,
        wall: Ts,
        commit_when_drained: bool,
    ) -> anyhow::Result<usize> {
        self.pump_locked(&mut p.lock().expect("partition lock"), wall, commit_when_drained)
    }

    /// Polls a partition until it has less than a batch left.
    fn pump_locked(&self, p: &mut Partition, wall: Ts, commit_when_drained: bool) -> anyhow::Result<usize> {
        let mut total = 0;
        loop {
            let n = p.poll(&self.log, wall, self.batch, commit_when_drained)?;
            total += n;
            if let Some(h) = self.handled.get(p.id as usize) {
                h.store(p.next_offset(), std::sync::atomic::Ordering::Relaxed);
            }
            if n < self.batch {
                return Ok(total);
            }
        }
    }

    /// Sets `dripline_log_lag_records` for every partition this process hosts: records
    /// appended to the embedded log and not yet handled. Called by each `/metrics` scrape.
    pub fn refresh_log_lag(&self) {
        let ends = self.log.next_offsets();
        for (p, (handled, end)) in self.handled.iter().zip(ends).enumerate() {
            let lag = end.saturating_sub(handled.load(std::sync::atomic::Ordering::Relaxed));
            self.metrics
                .log_lag_records
                .with_label_values(&[&p.to_string()])
                .set(lag as i64);
        }
    }

    pub fn contact(&self, id: &str) -> anyhow::Result<Option<ContactState>> {
        Ok(tables::get_contact(&self.store, id)?)
    }
}

/// The event as sent, with the `type` its endpoint implied written in when it has none, so the
/// record stands on its own in the events topic.
fn with_type(raw: &[u8], kind_hint: Option<EventKind>) -> std::borrow::Cow<'_, [u8]> {
    let Some(kind) = kind_hint else {
        return raw.into();
    };
    match serde_json::from_slice::<serde_json::Map<String, serde_json::Value>>(raw) {
        Ok(mut o) if !o.contains_key("type") => {
            let t = match kind {
                EventKind::Track => "track",
                EventKind::Identify => "identify",
                EventKind::Page => "page",
            };
            o.insert("type".into(), t.into());
            serde_json::to_vec(&o).expect("a JSON object").into()
        }
        _ => raw.into(),
    }
}

pub(crate) fn reject_label(e: &crate::event::EventError) -> &'static str {
    use crate::event::EventError::*;
    match e {
        Json(_) => "invalid_json",
        NotObject => "not_an_object",
        Missing(_) => "missing_field",
        WrongType(..) => "wrong_type",
        UnknownType(_) => "unknown_type",
        BadTimestamp(_) => "bad_timestamp",
        Reserved(_) | ControlId => "reserved_event",
    }
}
