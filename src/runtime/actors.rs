//! The engine's actors on actix: one worker actor per arbiter (thread), `engine.workers` of
//! them, driving the partitions (each the host of its contacts' actors, whose states live in its
//! LRU cache and RocksDB), and the mailer actor. Partition p is worker p mod `workers`'s; with
//! `engine.share_partitions` a worker also takes partitions no other worker is handling (see
//! [`Engine::pump_worker`]). Each worker polls again at once while there is work and after a
//! short pause when idle, so timers fire on the wall clock when no events come.

use super::Engine;
use actix::prelude::*;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

const IDLE: Duration = Duration::from_millis(5);

#[derive(Message)]
#[rtype(result = "()")]
struct Poll;

/// Finish the batch in hand (every poll commits before it returns) and stop.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Stop;

pub struct WorkerActor {
    engine: Arc<Engine>,
    worker: usize,
    workers: usize,
    /// Partitions whose last poll failed, and when they are tried again: shared by the workers,
    /// since with `engine.share_partitions` any of them may take a partition.
    backoff: Arc<Backoff>,
}

/// When each failed partition is tried again, by whichever worker.
struct Backoff(std::sync::Mutex<Vec<Option<Instant>>>);

impl Backoff {
    fn new(partitions: usize) -> Self {
        Backoff(std::sync::Mutex::new(vec![None; partitions]))
    }

    /// Whether partition `p` is left alone at `at`.
    fn waiting(&self, p: usize, at: Instant) -> bool {
        let until = self.0.lock().expect("backoff lock");
        until.get(p).copied().flatten().is_some_and(|until| at < until)
    }

    /// Partition `p` failed at `at`: it is left alone until `RETRY` later. False when another
    /// worker has just done so (its failure is already reported).
    fn failed(&self, p: usize, at: Instant) -> bool {
        let mut until = self.0.lock().expect("backoff lock");
        match until.get_mut(p) {
            Some(u) if u.is_some_and(|u| at < u) => false,
            Some(u) => {
                *u = Some(at + RETRY);
                true
            }
            None => true,
        }
    }
}

impl Actor for WorkerActor {
    type Context = Context<Self>;
    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.notify(Poll);
    }
}

/// How long a worker leaves a partition whose poll failed before trying it again.
const RETRY: Duration = Duration::from_millis(500);

impl Handler<Poll> for WorkerActor {
    type Result = ();
    fn handle(&mut self, _: Poll, ctx: &mut Self::Context) {
        let now = chrono::Utc::now().timestamp_millis();
        let at = Instant::now();
        let waiting = |p: usize| self.backoff.waiting(p, at);
        // An idle partition commits at once (low latency at low load); a busy one by checkpoint.
        let round = self.engine.pump_worker(now, self.worker, self.workers, true, waiting);
        for (p, e) in round.failed {
            self.engine
                .metrics
                .partition_failures
                .with_label_values(&[&p.to_string()])
                .inc();
            if self.backoff.failed(p, at) {
                tracing::error!("partition {p}: {e:#}");
            }
        }
        if round.handled > 0 {
            ctx.notify(Poll);
        } else {
            ctx.notify_later(Poll, IDLE);
        }
    }
}

impl Handler<Stop> for WorkerActor {
    type Result = ();
    /// Commits what every partition has handled: any of them may have been this worker's last.
    fn handle(&mut self, _: Stop, ctx: &mut Self::Context) {
        if let Err(e) = self.engine.flush() {
            tracing::error!("worker {}: final commit: {e:#}", self.worker);
        }
        ctx.stop();
    }
}

/// Drives mailer rounds on its own arbiter; the SMTP connection actors it starts live there
/// too. Rounds never overlap (atomic responses), and the next one comes at once while there is
/// work, or when the limits and backoffs say something can go again.
pub struct MailerActor {
    engine: Arc<Engine>,
}

impl Actor for MailerActor {
    type Context = Context<Self>;
    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.notify(Poll);
    }
}

/// Background upkeep on its own arbiter, since a compaction may take a while: completes the
/// erasures the partitions recorded (scrub, then compact) every second, and purges the dead
/// letters past their retention at start and hourly.
pub struct Housekeeper {
    engine: Arc<Engine>,
}

impl Actor for Housekeeper {
    type Context = Context<Self>;
    fn started(&mut self, ctx: &mut Self::Context) {
        self.engine.purge_dead_letters();
        ctx.run_interval(Duration::from_secs(3600), |a, _| a.engine.purge_dead_letters());
        ctx.run_interval(Duration::from_secs(1), |a, _| {
            if let Err(e) = a.engine.complete_erasures() {
                tracing::error!("completing erasures: {e:#}; retrying");
            }
        });
    }
}

const MAIL_ROUND: usize = 1024;

impl Handler<Poll> for MailerActor {
    type Result = AtomicResponse<Self, ()>;
    fn handle(&mut self, _: Poll, _: &mut Self::Context) -> Self::Result {
        let engine = self.engine.clone();
        let round = async move {
            let r = engine.send_mail(MAIL_ROUND).await;
            if let Ok(t) = crate::storage::timers::count(&engine.store) {
                engine.metrics.timers_pending.set(t as i64);
            }
            r
        };
        AtomicResponse::new(Box::pin(round.into_actor(self).map(|r, _, ctx| match r {
            Ok(round) if round.handled > 0 => {
                ctx.notify(Poll);
            }
            Ok(round) => {
                let pause = round.wait.unwrap_or(Duration::from_millis(20));
                ctx.notify_later(Poll, pause.clamp(Duration::from_millis(1), Duration::from_millis(250)));
            }
            Err(e) => {
                tracing::warn!("mailer: {e:#}; retrying");
                ctx.notify_later(Poll, Duration::from_millis(500));
            }
        })))
    }
}

impl Handler<Stop> for MailerActor {
    type Result = ();
    /// Hands out no new mail: a round in progress has finished before this message is handled
    /// (rounds are atomic responses), so what was in flight is settled and in the ledger. What
    /// is left waits in the outbox for the next start, so a stop never waits for the transport.
    fn handle(&mut self, _: Stop, ctx: &mut Self::Context) {
        ctx.stop();
    }
}

/// The running actors, to stop them in order: workers first, then the mailer.
pub struct Running {
    engine: Arc<Engine>,
    workers: Vec<Addr<WorkerActor>>,
    /// Kafka mode: the consumer-group member's thread and its stop flag.
    kafka: Option<(Arc<AtomicBool>, std::thread::JoinHandle<()>)>,
    mailer: Addr<MailerActor>,
    housekeeper: Addr<Housekeeper>,
    arbiters: Vec<Arbiter>,
}

/// Lowers the calling thread's priority to `nice` (Linux schedules threads as tasks, so this
/// concerns this thread only).
pub fn lower_priority(nice: i32) -> std::io::Result<()> {
    // SAFETY: plain syscalls on this thread's own id.
    let r = unsafe { libc::setpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t, nice) };
    match r {
        0 => Ok(()),
        _ => Err(std::io::Error::last_os_error()),
    }
}

/// Starts the worker actors on `workers` arbiters, at `engine.worker_nice`, and the mailer on
/// its own. Must be called inside an actix System.
pub fn start(engine: Arc<Engine>, workers: usize) -> Running {
    let workers = workers.max(1);
    // The workers', the mailer's and the housekeeper's.
    let arbiters: Vec<Arbiter> = (0..workers + 2).map(|_| Arbiter::new()).collect();
    let nice = engine.settings.engine.worker_nice;
    let backoff = Arc::new(Backoff::new(engine.partitions.len()));
    let worker_actors = arbiters[..workers]
        .iter()
        .enumerate()
        .map(|(worker, a)| {
            a.spawn_fn(move || {
                if let Err(e) = lower_priority(nice) {
                    tracing::warn!("worker thread at nice {nice}: {e}");
                }
            });
            let (engine, backoff) = (engine.clone(), backoff.clone());
            WorkerActor::start_in_arbiter(&a.handle(), move |_| WorkerActor {
                engine,
                worker,
                workers,
                backoff,
            })
        })
        .collect();
    let kafka = engine.take_consumer().map(|consumer| {
        let stop = Arc::new(AtomicBool::new(false));
        let (e, s) = (engine.clone(), stop.clone());
        let handle = std::thread::Builder::new()
            .name("kafka-consumer".into())
            .spawn(move || {
                if let Err(err) = consumer(e, s) {
                    tracing::error!("kafka consumer stopped: {err:#}");
                    // Without its consumer this instance can only do harm: stop the process and
                    // let the group hand its partitions to the others.
                    std::process::exit(1);
                }
            })
            .expect("spawn the consumer thread");
        (stop, handle)
    });
    let mailer = {
        let engine = engine.clone();
        MailerActor::start_in_arbiter(&arbiters[workers].handle(), move |_| MailerActor { engine })
    };
    let housekeeper = {
        let engine = engine.clone();
        Housekeeper::start_in_arbiter(&arbiters[workers + 1].handle(), move |_| Housekeeper { engine })
    };
    engine.readiness.set_started();
    Running {
        housekeeper,
        engine,
        workers: worker_actors,
        kafka,
        mailer,
        arbiters,
    }
}

impl Running {
    pub async fn stop(self) {
        self.engine.readiness.set_stopping();
        for w in &self.workers {
            let _ = w.send(Stop).await;
        }
        if let Some((stop, handle)) = self.kafka {
            stop.store(true, Ordering::SeqCst);
            let _ = actix_web::rt::task::spawn_blocking(move || handle.join()).await;
        }
        let _ = self.mailer.send(Stop).await;
        // An erasure in progress finishes with its interval's run; a pending one completes at
        // the next start.
        drop(self.housekeeper);
        for a in self.arbiters {
            a.stop();
            let _ = a.join();
        }
    }
}

#[cfg(test)]
mod tests {
    /// A partition one worker found failed is left alone by every worker for `RETRY`, and a
    /// second failure inside that time (another worker's, in the moment before the first was
    /// noted) is not reported again; after it, the partition is tried and reported anew.
    #[test]
    fn a_failed_partition_waits_for_every_worker_and_is_reported_once() {
        use std::time::Instant;
        let b = super::Backoff::new(3);
        let t = Instant::now();
        assert!(!b.waiting(1, t));
        assert!(b.failed(1, t), "the first failure is reported");
        assert!(b.waiting(1, t + super::RETRY / 2), "for any worker");
        assert!(!b.waiting(0, t) && !b.waiting(2, t), "the others go on");
        assert!(!b.failed(1, t + super::RETRY / 2), "not twice");
        assert!(!b.waiting(1, t + super::RETRY));
        assert!(b.failed(1, t + super::RETRY), "failing again after the pause is");
    }

    /// The nice value of thread `tid`.
    fn nice_of(tid: i32) -> i32 {
        // SAFETY: reads a scheduling attribute; the nice values here are never -1, the error value.
        unsafe { libc::getpriority(libc::PRIO_PROCESS, tid as libc::id_t) }
    }

    #[test]
    fn lowering_the_priority_concerns_the_calling_thread_only() {
        // SAFETY: gettid has no preconditions.
        let me = unsafe { libc::gettid() };
        let before = nice_of(me);
        let (tid, nice) = std::thread::spawn(|| {
            super::lower_priority(7).unwrap();
            let tid = unsafe { libc::gettid() };
            (tid, nice_of(tid))
        })
        .join()
        .unwrap();
        assert_ne!(tid, me);
        assert_eq!(nice, 7);
        assert_eq!(nice_of(me), before, "the calling thread is unchanged");
    }
}
