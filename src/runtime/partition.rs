//! A partition processor: the deterministic state machine over one partition of the log.
//!
//! Before each input at time T, every timer due at or before T fires first, in due order, with
//! its due time as input time; when the log is idle, timers fire on the wall clock. Everything an
//! input changes is staged in one `WriteBatch` with the consumed position and committed together.

use crate::machine::{ContactState, Effect, Input, Metric, handle};
use crate::metrics::Metrics;
use crate::storage::StoreError;
use crate::storage::hook::CommitHook;
use crate::storage::tables::{self, Content, OutboxEntry};
use crate::storage::timers::{TimerKey, TimerQueue};
use crate::storage::{Result, Store, erasures, log, outbox_counts, suppressed_addresses, workflow_states};
use crate::time::Ts;
use crate::workflow::{MailKind, Registry, StepIdx, StepKind};
use rocksdb::WriteBatch;
use rustc_hash::FxHashMap;
use std::collections::VecDeque;
use std::sync::Arc;

/// Counts a partition adds to the shared metrics in bulk (see `Partition::unreported`).
#[derive(Default)]
struct Unreported {
    inputs: u64,
    /// By workflow; a few workflows, so a list searched by pointer first.
    decided: Vec<(Arc<str>, u64)>,
}

impl Unreported {
    fn decided(&mut self, workflow: &Arc<str>) {
        match self
            .decided
            .iter_mut()
            .find(|(w, _)| Arc::ptr_eq(w, workflow) || w == workflow)
        {
            Some((_, n)) => *n += 1,
            None => self.decided.push((workflow.clone(), 1)),
        }
    }

    fn report(&mut self, metrics: &Metrics) {
        if self.inputs > 0 {
            metrics.inputs_processed.inc_by(std::mem::take(&mut self.inputs));
        }
        for (workflow, n) in self.decided.drain(..) {
            metrics.sends_decided.with_label_values(&[&workflow]).inc_by(n);
        }
    }
}

/// Timers a partition keeps in memory per page-in (up to twice that before it trims).
const TIMER_PAGE: usize = 4096;

pub struct Partition {
    pub id: u16,
    store: Arc<Store>,
    reg: Arc<Registry>,
    metrics: Arc<Metrics>,
    timers: TimerQueue,
    /// Active contact states (see [`Contacts`]).
    contacts: Contacts,
    /// Step-counter deltas since the last commit, added to the stored values at commit.
    counter_deltas: FxHashMap<(Arc<str>, u32, StepIdx, Metric), i64>,
    /// Stored counter values already read: each is read from RocksDB once.
    counter_values: FxHashMap<Vec<u8>, i64>,
    /// Last consumed log offset.
    position: Option<u64>,
    /// The partition's clock: the input time of the last input handled (never goes back).
    last_time: Ts,
    /// The latest wall time the runtime passed in: the commit time for the latency metric.
    wall: Ts,
    /// When each event handled since the last commit was appended to the log: its latency is
    /// observed once the commit is written (`dripline_processing_latency_seconds`).
    received: Vec<Ts>,
    batch: WriteBatch,
    fx: Vec<Effect>,
    /// Inputs handled and sends decided (by workflow) not yet added to the shared counters,
    /// which are added to per poll and per commit rather than per input: each addition is an
    /// atomic operation, on a line both workers write.
    unreported: Unreported,
    hook: Option<Arc<dyn CommitHook>>,
    /// When [`Partition::poll`] commits (see [`Checkpoint`]), and what it has handled since.
    checkpoint: Checkpoint,
    uncommitted: usize,
    last_commit: std::time::Instant,
    /// The last commit staged, and the last one written. They differ only while a commit waits
    /// between [`Partition::stage`] and [`Partition::write_staged`]: on Kafka, until the
    /// changelog has it (a broker outage leaves it staged while the partition handles more).
    epoch: u64,
    written: u64,
    /// Why a commit failed: from then on every poll fails with it.
    failure: Option<String>,
    /// The workflows paused at this partition's position in the log (no new entrants).
    paused: Vec<Arc<str>>,
    /// Outbox entries added since the last commit (less those removed by an erasure), and the
    /// partition's count of them as staged (kept here: a staged commit may not be written yet).
    outbox_added: i64,
    outbox_total: i64,
}

/// A contact's state in the cache. The id is shared by the cache key and the dirty list, so
/// handling an input allocates nothing for bookkeeping.
struct Cached {
    id: Arc<str>,
    state: ContactState,
    /// Changed since the last commit.
    dirty: bool,
    /// The commit that last staged this state (0: it came from the store).
    epoch: u64,
}

/// The partition's contact states: an LRU cache over RocksDB. A dirty contact pushed out before
/// the commit is kept in `spilled` (and written by it), so eviction never loses a change.
struct Contacts {
    cache: lru::LruCache<Arc<str>, Cached>,
    /// Contacts changed since the last commit (their slot's `dirty` is set), in no order and
    /// possibly repeated; sorted and deduplicated at the commit.
    dirty: Vec<Arc<str>>,
    /// Dirty contacts evicted before the commit: not in RocksDB yet, so a load looks here first.
    spilled: FxHashMap<Arc<str>, ContactState>,
    /// Contacts pushed out of the cache while the commit that staged them is not written yet
    /// (the store still holds an older state, so a load looks here before it), by commit, oldest
    /// first: dropped as soon as their commit is written.
    unwritten: VecDeque<(u64, FxHashMap<Arc<str>, ContactState>)>,
}

impl Contacts {
    /// Runs `f` on the contact's state in its cache slot (loaded on a miss), marked changed:
    /// every input handled is committed with its contact's state. One cache look-up on a hit
    /// and one insert on a miss (a function that returned the slot would have to look it up
    /// again: returning a borrow taken inside the `if` is beyond the borrow checker).
    /// `written`: the partition's last commit written.
    fn with_slot<R>(
        &mut self,
        store: &Store,
        contact: &str,
        written: u64,
        f: impl FnOnce(&mut ContactState) -> R,
    ) -> Result<R> {
        if let Some(c) = self.cache.get_mut(contact) {
            if !c.dirty {
                c.dirty = true;
                self.dirty.push(c.id.clone());
            }
            return Ok(f(&mut c.state));
        }
        let (id, mut state) = match self.spilled.remove_entry(contact) {
            Some(found) => found,
            None => match self.unwritten.iter_mut().find_map(|(_, m)| m.remove_entry(contact)) {
                Some(found) => found,
                None => (contact.into(), tables::get_contact(store, contact)?.unwrap_or_default()),
            },
        };
        let r = f(&mut state);
        self.dirty.push(id.clone());
        let slot = Cached {
            id: id.clone(),
            state,
            dirty: true,
            epoch: 0,
        };
        if let Some((evicted, old)) = self.cache.push(id, slot) {
            if old.dirty {
                self.spilled.insert(evicted, old.state);
            } else if old.epoch > written
                && let Some((_, m)) = self.unwritten.iter_mut().find(|(e, _)| *e == old.epoch)
            {
                m.insert(evicted, old.state);
            }
        }
        Ok(r)
    }

    /// Whether the contact has a state (in memory or in the store).
    fn exists(&self, store: &Store, contact: &str) -> Result<bool> {
        Ok(self.cache.contains(contact)
            || self.spilled.contains_key(contact)
            || self.unwritten.iter().any(|(_, m)| m.contains_key(contact))
            || tables::get_contact(store, contact)?.is_some())
    }

    /// Forgets a contact entirely (it was erased): nothing of it is written by the next commit.
    fn remove(&mut self, contact: &str) {
        self.cache.pop(contact);
        self.spilled.remove(contact);
        for (_, m) in &mut self.unwritten {
            m.remove(contact);
        }
    }

    /// Drops the states kept for commits written since.
    fn forget_written(&mut self, written: u64) {
        while self.unwritten.front().is_some_and(|(e, _)| *e <= written) {
            self.unwritten.pop_front();
        }
    }
}

/// A busy partition commits once per `inputs` handled or per `interval`, whichever comes first,
/// instead of once per poll: one state write per contact for many of its events, fewer and
/// larger batches. Nothing acknowledged is at risk: the log is durable before the ack, and after
/// a crash the partition resumes from its last commit and handles the tail again, reaching the
/// same state and the same send ids (which the sent ledger never lets out twice). An idle
/// partition commits at once, so at low load a decision reaches the outbox within a poll.
#[derive(Debug, Clone, Copy)]
pub struct Checkpoint {
    pub inputs: usize,
    pub interval: std::time::Duration,
}

impl Default for Checkpoint {
    /// Every poll commits.
    fn default() -> Self {
        Checkpoint {
            inputs: 0,
            interval: std::time::Duration::ZERO,
        }
    }
}

impl Partition {
    pub fn open(
        id: u16,
        store: Arc<Store>,
        reg: Arc<Registry>,
        metrics: Arc<Metrics>,
        cache_cap: usize,
    ) -> Result<Self> {
        let pos = tables::get_position(&store, id)?;
        let paused = workflow_states::paused(&store, id)?;
        let outbox_total = outbox_counts::get(&store, outbox_counts::ADDED, id)?;
        Ok(Partition {
            paused,
            outbox_added: 0,
            outbox_total,
            id,
            timers: TimerQueue::new(id, TIMER_PAGE),
            store,
            reg,
            metrics,
            contacts: Contacts {
                cache: lru::LruCache::new(std::num::NonZeroUsize::new(cache_cap.max(1)).expect("non-zero")),
                dirty: Vec::new(),
                spilled: FxHashMap::default(),
                unwritten: VecDeque::new(),
            },
            counter_deltas: FxHashMap::default(),
            counter_values: FxHashMap::default(),
            position: pos.offset,
            last_time: pos.clock,
            wall: Ts::MIN,
            received: Vec::new(),
            batch: WriteBatch::default(),
            fx: Vec::new(),
            unreported: Unreported::default(),
            hook: None,
            checkpoint: Checkpoint::default(),
            uncommitted: 0,
            last_commit: std::time::Instant::now(),
            epoch: 0,
            written: 0,
            failure: None,
        })
    }

    pub fn with_checkpoint(mut self, checkpoint: Checkpoint) -> Self {
        self.checkpoint = checkpoint;
        self
    }

    /// A smaller timer page, so a test pages in often.
    #[cfg(test)]
    fn with_timer_page(mut self, page: usize) -> Self {
        self.timers = TimerQueue::new(self.id, page);
        self
    }

    pub fn with_hook(mut self, hook: Arc<dyn CommitHook>) -> Self {
        self.hook = Some(hook);
        self
    }

    /// The next log offset this partition will consume.
    pub fn next_offset(&self) -> u64 {
        self.position.map_or(0, |p| p + 1)
    }

    /// The partition's clock (the input time it has reached).
    pub fn clock(&self) -> Ts {
        self.last_time
    }

    /// Processes up to `max` log records (and the timers due before each). Once the log is
    /// drained, fires the timers due by `wall`: the log is sealed at `wall` first, so no event
    /// stamped earlier can arrive after them. Commits when the [`Checkpoint`] says so, or when
    /// the log is drained and `commit_when_drained`. Returns the inputs handled.
    pub fn poll(&mut self, log: &log::EmbeddedLog, wall: Ts, max: usize, commit_when_drained: bool) -> Result<usize> {
        // Fail-stop: after a failed commit the partition's memory is ahead of its store; a
        // restart resumes from the last commit written and handles the rest again.
        if let Some(failure) = &self.failure {
            return Err(StoreError::CommitFailed(failure.clone()));
        }
        let records = log.take(self.id, self.next_offset(), max)?;
        let consumed = records.len();
        let mut n = self.handle(records, wall)?;
        // Fewer records than asked for, and nothing appended since: timers may run up to `wall`.
        let drained = consumed < max;
        if drained && log.seal(self.id, wall) == self.next_offset() {
            n += self.fire_idle(wall)?;
        }
        if n > 0 || consumed > 0 {
            self.metrics.batch_size.observe(n as f64);
            self.uncommitted += n.max(consumed);
        }
        let due = self.uncommitted >= self.checkpoint.inputs || self.last_commit.elapsed() >= self.checkpoint.interval;
        if self.uncommitted > 0 && ((drained && commit_when_drained) || due) {
            self.commit()?;
        }
        self.unreported.report(&self.metrics);
        Ok(n.max(consumed))
    }

    /// Commits whatever [`Partition::poll`] has handled and not committed yet.
    pub fn flush(&mut self) -> Result<()> {
        match self.uncommitted {
            0 => Ok(()),
            _ => self.commit(),
        }
    }

    /// Handles records in order, each after the timers due by its time; an unreadable one goes
    /// to the dead letters (it must not stall the partition). Does not commit.
    pub fn handle(&mut self, records: Vec<log::Scanned>, wall: Ts) -> Result<usize> {
        self.wall = self.wall.max(wall);
        let mut n = 0;
        for r in records {
            let r = match r {
                Ok(r) => r,
                Err(bad) => {
                    let reason = format!("log partition {} offset {}: {}", self.id, bad.offset, bad.reason);
                    crate::storage::dead_letters::put(
                        &self.store,
                        &mut self.batch,
                        self.last_time,
                        "log",
                        &reason,
                        &bad.bytes,
                    );
                    self.metrics
                        .events_rejected
                        .with_label_values(&["unreadable_record"])
                        .inc();
                    self.position = Some(bad.offset);
                    continue;
                }
            };
            let t = r.received.max(self.last_time);
            n += self.fire_until(t, None)?;
            self.last_time = t;
            self.received.push(r.received);
            if r.event.user_id.starts_with('\u{1}') {
                self.control(&r.event);
                self.position = Some(r.offset);
                n += 1;
                continue;
            }
            if r.event.kind == crate::event::EventKind::Track && r.event.name == crate::event::ERASE_EVENT {
                self.erase(&r.event.user_id, r.offset, t)?;
                self.position = Some(r.offset);
                n += 1;
                continue;
            }
            // News about mail to a contact that has no state (erased since it was sent) would
            // bring the contact back: it is dropped.
            if r.event.kind == crate::event::EventKind::Track
                && crate::event::ENGINE_EVENTS.contains(&r.event.name.as_str())
                && !self.contacts.exists(&self.store, &r.event.user_id)?
            {
                self.position = Some(r.offset);
                n += 1;
                continue;
            }
            // The contact id is borrowed from the input, not copied out of the event.
            let input = Input::Event(r.event);
            let Input::Event(event) = &input else {
                unreachable!("an event")
            };
            self.apply(&event.user_id, &input, t)?;
            self.position = Some(r.offset);
            n += 1;
        }
        Ok(n)
    }

    /// Erases a contact at log offset `offset`: the state machine ends its enrollments and
    /// cancels its timers (so the counters stay exact), then its state, its suppression record
    /// and the mail waiting for it go. A contact that had opted out or bounced leaves only the
    /// SHA-256 of its addresses in the suppression list, so the person is not mailed again if
    /// re-imported. The log and the dead letters are scrubbed by the engine afterwards (an
    /// [`erasures`] entry, committed with the rest).
    fn erase(&mut self, contact: &str, offset: u64, at: Ts) -> Result<()> {
        // What is staged is written first, so the outbox holds every mail decided for the
        // contact; then the erasure is one batch of its own (state, waiting mail, the erasure
        // entry and the position past the erase record), so the mailer never sees half of it
        // and a restart never handles the record again.
        self.commit()?;
        let st = self
            .contacts
            .with_slot(&self.store, contact, self.written, |st| st.clone())?;
        self.apply(contact, &Input::Erase, at)?;
        self.contacts.remove(contact);
        tables::delete_contact(&self.store, &mut self.batch, contact);
        let sup = tables::get_suppression(&self.store, contact)?;
        tables::delete_suppression(&self.store, &mut self.batch, contact);
        let addresses: Vec<String> = ["email"]
            .iter()
            .filter_map(|k| st.traits.get(k).and_then(|v| v.as_str()))
            .map(str::to_owned)
            .collect();
        let opted_out = st.unsubscribed || st.suppressed || sup.is_some_and(|s| s.marketing || s.all);
        if opted_out {
            for a in &addresses {
                suppressed_addresses::put(&self.store, &mut self.batch, a, "erased contact had opted out", at);
            }
        }
        for (id, entry) in tables::outbox_of_contact(&self.store, contact)? {
            tables::delete_outbox(&self.store, &mut self.batch, tables::OutboxKey::of(id, &entry));
            self.outbox_added -= 1;
        }
        erasures::put(
            &self.store,
            &mut self.batch,
            &erasures::Pending {
                partition: self.id,
                contact: contact.to_owned(),
                offset,
                addresses,
            },
        );
        self.position = Some(offset);
        self.commit()?;
        self.metrics.contacts_erased.inc();
        Ok(())
    }

    /// A control record for the whole partition: a workflow paused or resumed from here on.
    /// Anything else under a control id is ignored (it could only come from a newer engine).
    fn control(&mut self, ev: &crate::event::Event) {
        let Some(workflow) = ev.properties.get("workflow").and_then(|v| v.as_str()) else {
            return;
        };
        let known = self.paused.iter().position(|w| &**w == workflow);
        match (ev.name.as_str(), known) {
            (crate::event::PAUSE_EVENT, None) => {
                self.paused.push(workflow.into());
                workflow_states::put_paused(&self.store, &mut self.batch, self.id, workflow);
            }
            (crate::event::RESUME_EVENT, Some(i)) => {
                self.paused.swap_remove(i);
                workflow_states::delete_paused(&self.store, &mut self.batch, self.id, workflow);
            }
            _ => {}
        }
    }

    /// When the next timer may be due (`None`: no timer pending).
    pub fn next_due(&self) -> Option<Ts> {
        self.timers.earliest()
    }

    /// Fires the timers due by `upto` (the log is idle up to there). Does not commit.
    pub fn fire_idle(&mut self, upto: Ts) -> Result<usize> {
        self.fire_until(upto.max(self.last_time), Some(upto))
    }

    /// Marks everything up to `offset` consumed (records that never became inputs: dead
    /// letters, duplicates).
    pub fn consumed_up_to(&mut self, offset: u64) {
        self.position = Some(self.position.map_or(offset, |p| p.max(offset)));
    }

    fn fire_until(&mut self, t: Ts, wall: Option<Ts>) -> Result<usize> {
        let mut n = 0;
        loop {
            if self.timers.needs_page() {
                // The page-in reads the store, which must hold every batch staged before (the
                // timer operations not staged yet it lays over what it reads). A commit staged
                // and not written yet (on Kafka: the changelog did not take it) is written first;
                // what is handled since stays for the next checkpoint.
                if self.written < self.epoch {
                    self.commit()?;
                }
                self.timers.page_in(&self.store)?;
            }
            let Some(k) = self.timers.pop_due(t) else {
                break;
            };
            let at = k.due.max(self.last_time);
            self.last_time = at;
            if let Some(w) = wall {
                self.metrics
                    .timer_lateness
                    .observe(((w - k.due).max(0)) as f64 / 1000.0);
            }
            self.metrics.timers_fired.inc();
            self.apply(&k.contact, &Input::Timer { id: k.id }, at)?;
            n += 1;
        }
        Ok(n)
    }

    fn apply(&mut self, contact: &str, input: &Input, at: Ts) -> Result<()> {
        let mut fx = std::mem::take(&mut self.fx);
        let (reg, paused) = (&self.reg, &self.paused);
        self.contacts.with_slot(&self.store, contact, self.written, |st| {
            handle(contact, st, input, at, reg, paused, &mut fx)
        })?;
        for e in fx.drain(..) {
            match e {
                Effect::ScheduleTimer { id, due } => self.timers.schedule(TimerKey {
                    due,
                    contact: contact.into(),
                    id,
                }),
                Effect::CancelTimer { id, due } => self.timers.cancel(&TimerKey {
                    due,
                    contact: contact.into(),
                    id,
                }),
                Effect::Send(cmd) => {
                    let Some(wf) = self.reg.get(&cmd.workflow, cmd.version) else {
                        continue;
                    };
                    // Rendered by the mailer when it sends (see `Content`).
                    let entry = OutboxEntry {
                        partition: self.id,
                        contact: contact.into(),
                        workflow: cmd.workflow.as_ref().into(),
                        version: cmd.version,
                        step: wf.steps[cmd.step as usize].id.as_str().into(),
                        kind: cmd.kind,
                        to: cmd.to,
                        content: Content::Template {
                            template: cmd.template,
                            traits: cmd.traits,
                            event: cmd.event,
                        },
                        decided_at: at,
                        attempts: 0,
                        first_attempt: 0,
                        not_before: 0,
                    };
                    tables::put_outbox(&self.store, &mut self.batch, cmd.id, &entry);
                    self.outbox_added += 1;
                    self.unreported.decided(&cmd.workflow);
                }
                Effect::Webhook(w) => {
                    let Some(wf) = self.reg.get(&w.workflow, w.version) else {
                        continue;
                    };
                    let step = &wf.steps[w.step as usize];
                    let StepKind::Webhook(call) = &step.kind else {
                        continue;
                    };
                    // Made by the mailer from the same outbox, with the same guarantees.
                    let entry = OutboxEntry {
                        partition: self.id,
                        contact: contact.into(),
                        workflow: w.workflow.as_ref().into(),
                        version: w.version,
                        step: step.id.as_str().into(),
                        kind: MailKind::Internal,
                        to: call.target.to_string().into(),
                        content: Content::Webhook {
                            traits: w.traits,
                            event: w.event,
                        },
                        decided_at: at,
                        attempts: 0,
                        first_attempt: 0,
                        not_before: 0,
                    };
                    tables::put_outbox(&self.store, &mut self.batch, w.id, &entry);
                    self.outbox_added += 1;
                    self.metrics.webhooks_decided.with_label_values(&[&w.workflow]).inc();
                }
                Effect::Count(c) => {
                    *self
                        .counter_deltas
                        .entry((c.workflow, c.version, c.step, c.metric))
                        .or_insert(0) += c.delta;
                }
            }
        }
        self.fx = fx;
        self.unreported.inputs += 1;
        Ok(())
    }

    /// Writes everything staged, with the consumed position, as one batch.
    pub fn commit(&mut self) -> Result<()> {
        self.begin_commit()?;
        if !self.batch.is_empty() {
            if let Some(hook) = &self.hook {
                // Published (and acknowledged) before it is visible locally: whatever the mailer
                // can see is already in the changelog.
                hook.publish(self.id, &mut self.batch)?;
            }
        }
        self.write_staged()
    }

    /// What every commit starts with: the checkpoint counts from here, and everything pending
    /// is staged.
    fn begin_commit(&mut self) -> Result<()> {
        self.uncommitted = 0;
        self.last_commit = std::time::Instant::now();
        self.stage()
    }

    /// The first half of a commit: everything pending (dirty contacts, counters, the position)
    /// staged into the batch, for a caller that publishes several partitions' batches at once;
    /// the cached-contacts gauge is set here, once for every kind of commit.
    pub fn stage(&mut self) -> Result<()> {
        self.epoch += 1;
        let epoch = self.epoch;
        self.contacts.unwritten.push_back((epoch, FxHashMap::default()));
        self.timers.stage(&self.store, &mut self.batch);
        // In key order, as the memtable inserts them fastest.
        let mut dirty = std::mem::take(&mut self.contacts.dirty);
        dirty.sort_unstable();
        dirty.dedup();
        for id in &dirty {
            // Not in the cache (or no longer dirty there): evicted since, and in `spilled`.
            if let Some(c) = self.contacts.cache.peek_mut(id)
                && c.dirty
            {
                c.dirty = false;
                c.epoch = epoch;
                tables::put_contact(&self.store, &mut self.batch, id, &c.state);
            }
        }
        dirty.clear();
        self.contacts.dirty = dirty;
        let mut spilled: Vec<(Arc<str>, ContactState)> = self.contacts.spilled.drain().collect();
        spilled.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        for (id, st) in spilled {
            tables::put_contact(&self.store, &mut self.batch, &id, &st);
            self.contacts
                .unwritten
                .back_mut()
                .expect("pushed above")
                .1
                .insert(id, st);
        }
        for ((workflow, version, step, metric), delta) in self.counter_deltas.drain() {
            let Some(wf) = self.reg.get(&workflow, version) else {
                continue;
            };
            let step_id = &wf.steps[step as usize].id;
            // Prometheus's view of the same counts, per workflow and step (all versions): added
            // once per commit, not per input. `waiting` goes up and down and is left out.
            if metric != Metric::Waiting && delta > 0 {
                self.metrics
                    .workflow_steps
                    .with_label_values(&[&*workflow, step_id.as_str(), metric.as_str()])
                    .inc_by(delta as u64);
                // A send skipped for want of an address is a result of its own among the sends.
                if metric == Metric::NoAddress {
                    self.metrics
                        .sends
                        .with_label_values(&[&*workflow, "no_address"])
                        .inc_by(delta as u64);
                }
            }
            let key = tables::counter_key(self.id, &workflow, version, step_id, metric);
            let stored = match self.counter_values.get(&key) {
                Some(v) => *v,
                None => tables::get_counter(&self.store, &key)?,
            };
            tables::put_counter(&self.store, &mut self.batch, &key, stored + delta);
            self.counter_values.insert(key, stored + delta);
        }
        if self.outbox_added != 0 {
            self.outbox_total += std::mem::take(&mut self.outbox_added);
            outbox_counts::put(
                &self.store,
                &mut self.batch,
                outbox_counts::ADDED,
                self.id,
                self.outbox_total,
            );
        }
        if self.position.is_some() || self.last_time != Ts::MIN {
            let pos = tables::Position {
                offset: self.position,
                clock: self.last_time,
            };
            tables::put_position(&self.store, &mut self.batch, self.id, pos);
        }
        self.metrics
            .contacts_cached
            .with_label_values(&[&self.id.to_string()])
            .set(self.contacts.cache.len() as i64);
        self.unreported.report(&self.metrics);
        Ok(())
    }

    pub fn staged(&mut self) -> &mut WriteBatch {
        &mut self.batch
    }

    /// The second half: the staged batch written locally, as one WriteBatch.
    pub fn write_staged(&mut self) -> Result<()> {
        if !self.batch.is_empty() {
            let started = std::time::Instant::now();
            if let Err(e) = self.store.write(std::mem::take(&mut self.batch), false) {
                self.failure = Some(e.to_string());
                return Err(e);
            }
            self.metrics.rocksdb_write.observe(started.elapsed().as_secs_f64());
        }
        self.written = self.epoch;
        self.contacts.forget_written(self.written);
        // Received → committed: the decisions these events led to are durable (and visible to
        // the mailer) only now. Observed locally and flushed once: a shared histogram's
        // observation is several atomic operations.
        let latency = self.metrics.processing_latency.local();
        for r in self.received.drain(..) {
            latency.observe((self.wall - r).max(0) as f64 / 1000.0);
        }
        latency.flush();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::Event;
    use std::collections::BTreeMap;

    /// The shipped workflows under the default policy.
    fn shipped_registry() -> Arc<Registry> {
        let policy = crate::config::Settings::load(None).unwrap().policy().unwrap();
        let workflows = std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/workflows"));
        Arc::new(Registry::load_dir(workflows, &[], policy).unwrap())
    }

    /// A commit that cannot be written (here: the store is open read-only) fails its poll, and
    /// every poll after it, instead of going on with a memory that is ahead of the store.
    #[test]
    fn a_failed_commit_fails_every_later_poll() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = Arc::new(Store::open(dir.path()).unwrap());
            let log = log::EmbeddedLog::open(store, 1, 16).unwrap();
            let ev = Event::track("ann", "m1", "Signed Up", crate::value::Map::new());
            log.append(vec![ev], 1_000).unwrap();
        }
        let store = Arc::new(Store::open_read_only(dir.path()).unwrap());
        let log = log::EmbeddedLog::open(store.clone(), 1, 16).unwrap();
        let reg = shipped_registry();
        let mut p = Partition::open(0, store, reg, Arc::new(Metrics::new()), 4).unwrap();
        let first = p.poll(&log, 2_000, 16, true).unwrap_err();
        assert!(matches!(first, StoreError::Rocks(_)), "{first}");
        for wall in [3_000, 4_000] {
            let again = p.poll(&log, wall, 16, true).unwrap_err();
            assert!(matches!(again, StoreError::CommitFailed(_)), "{again}");
        }
    }

    /// Inputs and decided sends are counted locally and added to the shared metrics per poll:
    /// after each poll the counters hold every input handled and, by workflow, every send the
    /// outbox received, even with no commit in between.
    #[test]
    fn metrics_count_every_input_and_send_by_the_end_of_each_poll() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(dir.path()).unwrap());
        let log = log::EmbeddedLog::open(store.clone(), 1, 1 << 10).unwrap();
        let metrics = Arc::new(Metrics::new());
        let mut p = Partition::open(0, store.clone(), shipped_registry(), metrics.clone(), 64)
            .unwrap()
            .with_checkpoint(Checkpoint {
                inputs: usize::MAX,
                interval: std::time::Duration::from_secs(3600),
            });
        let mut events = Vec::new();
        for c in 0..5 {
            let (user, n) = (format!("u{c}"), events.len());
            let traits = serde_json::json!({"email": format!("u{c}@example.org")});
            let traits = crate::value::json_object_to_map(traits.as_object().unwrap());
            events.push(Event::identify(&user, &format!("m{n}"), traits));
            for name in ["Newsletter Subscribed", "Order Completed", "Subscription Cancelled"] {
                let n = events.len();
                events.push(Event::track(&user, &format!("m{n}"), name, crate::value::Map::new()));
            }
        }
        let total = events.len() as u64;
        log.append(events, 1_000).unwrap();
        let decided = |m: &Metrics| -> BTreeMap<String, u64> {
            use prometheus::core::Collector;
            m.sends_decided
                .collect()
                .iter()
                .flat_map(|f| f.get_metric().to_vec())
                .map(|m| (m.get_label()[0].value().to_string(), m.get_counter().get_value() as u64))
                .collect()
        };
        // Two polls that do not commit (no checkpoint is due, and drained polls do not commit).
        assert_eq!(p.poll(&log, 1_000, 7, false).unwrap(), 7);
        assert_eq!(metrics.inputs_processed.get(), 7);
        assert!(!decided(&metrics).is_empty(), "the first contacts' sends were counted");
        assert_eq!(p.poll(&log, 1_000, 64, false).unwrap() as u64, total - 7);
        assert_eq!(metrics.inputs_processed.get(), total);
        p.flush().unwrap();
        let mut outbox: BTreeMap<String, u64> = BTreeMap::new();
        for (_, e) in tables::outbox_page(&store, 1000).unwrap() {
            *outbox.entry(e.workflow.to_string()).or_default() += 1;
        }
        assert!(outbox.len() >= 2, "sends from more than one workflow: {outbox:?}");
        assert_eq!(decided(&metrics), outbox);
        assert_eq!(metrics.inputs_processed.get(), total, "the commit adds nothing more");
    }

    /// A timer page-in with nothing staged and unwritten commits nothing: it lays the timer
    /// operations not staged yet (timers scheduled past the horizon, stored ones cancelled)
    /// over what it reads. With pages of 2 timers the partition pages in many times and still
    /// ends equal to the pure simulation, each timer fired once: with no checkpoint before the
    /// end (nothing stored, so the scheduled timers come from the operations alone), with one
    /// every 7 inputs (stored timers cancelled since must not fire), and with commits left
    /// staged and unwritten, as on Kafka while the changelog is down.
    #[test]
    fn timer_page_ins_commit_nothing_and_miss_no_pending_timer() {
        page_ins_match_the_simulation(usize::MAX, false);
        page_ins_match_the_simulation(7, false);
        page_ins_match_the_simulation(usize::MAX, true);
    }

    /// `leave_staged`: every round is staged and only every third one written, as the Kafka
    /// consumer does when the changelog does not take a commit: the partition handles on, its
    /// 8-contact cache pushes out contacts whose newest state is only in the staged batch (they
    /// must reload from memory, not from the store's older state), and a page-in writes the
    /// staged commit first.
    fn page_ins_match_the_simulation(checkpoint_inputs: usize, leave_staged: bool) {
        use crate::time::{DAY, HOUR};
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(dir.path()).unwrap());
        let log = log::EmbeddedLog::open(store.clone(), 1, 1 << 16).unwrap();
        let reg = shipped_registry();
        let checkpoint = Checkpoint {
            inputs: checkpoint_inputs,
            interval: std::time::Duration::from_secs(3600),
        };
        let metrics = Arc::new(Metrics::new());
        let mut p = Partition::open(0, store.clone(), reg.clone(), metrics.clone(), 8)
            .unwrap()
            .with_checkpoint(checkpoint)
            .with_timer_page(2);
        let t0 = crate::time::parse_rfc3339("2026-03-02T10:00:00Z").unwrap();
        let mut sim = crate::machine::sim::Sim::new(reg, t0);
        let names = ["Product Added", "Order Completed", "Signed Up", "Webinar Attended"];
        let mut n = 0;
        for round in 0..30i64 {
            let at = t0 + round * 5 * HOUR;
            let events: Vec<Event> = (0..12)
                .map(|c| {
                    n += 1;
                    let (user, id) = (format!("u{c}"), format!("m{n}"));
                    match round {
                        0 => {
                            let traits = serde_json::json!({"email": format!("u{c}@example.org")});
                            let traits = crate::value::json_object_to_map(traits.as_object().unwrap());
                            Event::identify(&user, &id, traits)
                        }
                        _ => {
                            let props = serde_json::json!({"order_id": "o"});
                            let props = crate::value::json_object_to_map(props.as_object().unwrap());
                            Event::track(&user, &id, names[(c + round as usize) % names.len()], props)
                        }
                    }
                })
                .collect();
            for ev in &events {
                sim.input(at, &ev.user_id, crate::machine::Input::Event(ev.clone()));
            }
            log.append(events, at).unwrap();
            // One poll takes the round; a second, hours later with nothing new, fires the timers
            // due by then.
            p.poll(&log, at, 1 << 10, false).unwrap();
            if leave_staged {
                p.stage().unwrap();
                if round % 3 == 0 {
                    p.write_staged().unwrap();
                }
            }
            p.poll(&log, at + 4 * HOUR, 1 << 10, false).unwrap();
            sim.advance_to(at + 4 * HOUR);
        }
        let end = t0 + 60 * DAY;
        sim.advance_to(end);
        while p.poll(&log, end, 5, false).unwrap() > 0 {}
        assert!(sim.errors.is_empty(), "{:?}", sim.errors);
        assert!(!sim.sent.is_empty());
        if checkpoint_inputs == usize::MAX && !leave_staged {
            assert_eq!(
                tables::get_position(&store, 0).unwrap().offset,
                None,
                "no page-in committed"
            );
        }
        p.flush().unwrap();
        for c in 0..12 {
            let id = format!("u{c}");
            let stored = tables::get_contact(&store, &id).unwrap().unwrap();
            assert_eq!(stored.encode(), sim.contacts[&id].encode(), "{id} differs");
        }
        let stored_timers = store
            .db
            .iterator_cf(store.cf(crate::storage::CF_TIMERS), rocksdb::IteratorMode::Start)
            .count();
        assert_eq!(stored_timers, sim.timers.len());
        assert_eq!(
            metrics.timers_fired.get(),
            sim.fired,
            "each timer fired once, none cancelled"
        );
    }
}
