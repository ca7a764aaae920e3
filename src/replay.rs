//! `dripline replay`: rebuild state into a fresh directory from a log, and what-if runs of
//! changed workflows over historical events.
//!
//! Processing is a pure function of the log: every record carries its receive stamp, and before
//! an input at time T every timer due at or before T fires first. Replay feeds the records, in
//! stamp order, through the same partition processors as live processing; timers fire on that
//! event-time clock, up to the clock each source partition had reached (so a rebuilt node is
//! exactly where the old one stopped, mid-wait contacts included).
//!
//! Sends are suppressed by default and reported; `send_unsent` keeps in the new outbox only the
//! messages the source's sent ledger has never seen, for the next `dripline run` to deliver.

use crate::config::Settings;
use crate::event::Event;
use crate::machine::Metric;
use crate::runtime::Engine;
use crate::storage::digest::{Digest, digest};
use crate::storage::log::{self, LogRecord};
use crate::storage::{Store, tables};
use crate::time::{Ts, parse_rfc3339};
use anyhow::{Context, bail};
use rocksdb::WriteBatch;
use rustc_hash::FxHashSet;
use std::collections::BTreeMap;
use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Records per append and processing round: larger than live batches, since replay is a bulk
/// load with no one waiting for an acknowledgement.
const CHUNK: usize = 4096;
/// Bad records listed in the report (all are counted and dead-lettered).
const LISTED: usize = 20;

pub enum Source {
    /// The embedded log of a data directory (opened read-only: the engine may be running).
    Data(PathBuf),
    /// Segment events, one per line, stamped with their `receivedAt` (else `timestamp`).
    Ndjson(Vec<PathBuf>),
    /// An events topic on the brokers of `kafka.*`, from the beginning or from the first record
    /// at or after `from`, up to its end when the replay starts; stamped with the record
    /// timestamps. The sent ledger comes from the changelog topic.
    Kafka { topic: String, from: Option<Ts> },
}

pub struct Options {
    pub source: Source,
    /// A fresh state directory; `None` with `workflows` set: a throwaway one (what-if).
    pub into: Option<PathBuf>,
    /// Changed workflow definitions: a what-if run.
    pub workflows: Option<PathBuf>,
    pub send_unsent: bool,
    /// A data directory whose workflow versions to replay with (default: the source's, for
    /// `--from-data`; none for NDJSON and Kafka sources).
    pub versions_from: Option<PathBuf>,
    /// Fire timers up to this time at the end (default: the source partitions' own clocks, or
    /// the last stamp of an NDJSON source).
    pub until: Option<Ts>,
    pub progress: bool,
}

#[derive(Debug, Default)]
pub struct Report {
    pub into: Option<PathBuf>,
    pub records: u64,
    pub duplicates: u64,
    pub bad: u64,
    pub bad_listed: Vec<String>,
    pub would_send: u64,
    pub already_sent: u64,
    pub kept_to_send: u64,
    pub inputs: u64,
    /// Rebuilding the state, durably (what the records/s figure is over).
    pub replay_seconds: f64,
    /// Everything, digest and step comparison included.
    pub seconds: f64,
    pub digest: Option<Digest>,
    /// (workflow, step, metric) → (actual in the source, replayed).
    pub steps: BTreeMap<(String, String, Metric), (Option<i64>, i64)>,
}

type Items<'a> = Box<dyn Iterator<Item = anyhow::Result<Item>> + 'a>;

enum Item {
    Event(Ts, Event),
    Bad(String),
}

pub fn run(settings: &Settings, opts: Options) -> anyhow::Result<Report> {
    let started = Instant::now();
    let what_if = opts.workflows.is_some();
    let scratch;
    let into = match (&opts.into, what_if) {
        (Some(dir), _) => dir.clone(),
        (None, true) => {
            scratch = tempfile::tempdir().context("creating a scratch directory")?;
            scratch.path().join("data")
        }
        (None, false) => bail!("replay needs --into DIR (a fresh state directory)"),
    };
    if into.exists() && std::fs::read_dir(&into)?.next().is_some() {
        bail!("{} is not empty: replay builds a fresh state directory", into.display());
    }
    let mut target = settings.clone();
    target.engine.data_dir = into.clone();
    // The rebuilt store is a single machine's, whatever the source was.
    target.kafka.brokers = String::new();
    if let Some(w) = &opts.workflows {
        target.workflows.dir = w.clone();
    }
    // A rebuild has no reader waiting on its commits: larger checkpoints, fewer batches.
    target.engine.checkpoint_inputs = target.engine.checkpoint_inputs.max(1 << 17);
    target.engine.checkpoint_interval = "10s".into();
    // The workflow versions the source ran, with when each was deployed: the rebuilt store
    // enters each contact into the version it entered then, with the same send ids. (A what-if
    // run puts the changed files in force from the start instead.)
    if !what_if {
        let history = match (&opts.source, &opts.versions_from) {
            (_, Some(dir)) | (Source::Data(dir), None) => {
                let src = Store::open_read_only(dir)
                    .with_context(|| format!("reading the workflow versions of {}", dir.display()))?;
                tables::workflow_versions(&src)?
            }
            _ => Vec::new(),
        };
        if !history.is_empty() {
            std::fs::create_dir_all(&into)?;
            let fresh = Store::open_partitioned(&into, target.engine.partitions)?;
            tables::put_workflow_versions(&fresh, &history)?;
        }
    }
    let engine = Engine::open(&target)?;
    engine.store.start_bulk();
    let parts = engine.partitions.len();

    let src_store = match &opts.source {
        Source::Data(dir) => {
            Some(Store::open_read_only(dir).with_context(|| format!("opening the source store {}", dir.display()))?)
        }
        Source::Ndjson(_) | Source::Kafka { .. } => None,
    };
    let (items, total, src_clocks): (Items, u64, Option<Vec<Ts>>) = match (&opts.source, &src_store) {
        (Source::Data(_), Some(s)) => {
            let ends = log_ends(s)?;
            let partitions = ends.len() as u16;
            let clocks = (0..partitions)
                .map(|p| tables::get_position(s, p).map(|pos| pos.clock))
                .collect::<Result<Vec<_>, _>>()?;
            (Box::new(merged(s, partitions)), ends.iter().sum(), Some(clocks))
        }
        (Source::Ndjson(files), _) => {
            let total = files.iter().map(|f| count_lines(f)).sum::<anyhow::Result<u64>>()?;
            (Box::new(ndjson_items(files.clone())), total, None)
        }
        (Source::Kafka { topic, from }, _) => {
            if !settings.kafka.enabled() {
                bail!("replay from a Kafka topic needs kafka.brokers");
            }
            let history = crate::kafka::history::TopicHistory::open(&settings.kafka, topic, *from)?;
            let total = history.total();
            let items = history.map(|r| {
                Ok(match r? {
                    crate::kafka::history::Record::Event(t, ev) => Item::Event(t, ev),
                    crate::kafka::history::Record::Bad(reason) => Item::Bad(reason),
                })
            });
            (Box::new(items), total, None)
        }
        _ => unreachable!("a data source has a store"),
    };

    // Each target partition's horizon: timers never fire beyond where the source had been.
    let horizon = |p: usize, last_stamp: Ts| -> Ts {
        match (&opts.until, &src_clocks) {
            (Some(u), _) => *u,
            (None, Some(c)) if c.len() == parts => c[p],
            (None, Some(c)) => c.iter().copied().max().unwrap_or(Ts::MIN),
            (None, None) => last_stamp,
        }
    };
    let bar = progress_bar(opts.progress, total);
    let mut report = Report::default();
    let (mut events, mut stamps) = (Vec::with_capacity(CHUNK), Vec::with_capacity(CHUNK));
    let mut dead = WriteBatch::default();
    let mut last_stamp = Ts::MIN;
    let flush = |events: &mut Vec<Event>, stamps: &mut Vec<Ts>, report: &mut Report| -> anyhow::Result<()> {
        let Some(&upto) = stamps.last() else {
            return Ok(());
        };
        for a in engine.log.append_at(std::mem::take(events), stamps, false)? {
            if a == log::Appended::Duplicate {
                report.duplicates += 1;
            }
        }
        for (p, part) in engine.partitions.iter().enumerate() {
            report.inputs += engine.pump_partition(part, upto.min(horizon(p, upto)), false)? as u64;
        }
        events.clear();
        stamps.clear();
        Ok(())
    };
    for item in items {
        report.records += 1;
        bar.inc(1);
        match item? {
            Item::Event(t, ev) => {
                // Stamps never go backwards (the log raises them to its floor the same way).
                last_stamp = last_stamp.max(t);
                events.push(ev);
                stamps.push(last_stamp);
                if events.len() >= CHUNK {
                    flush(&mut events, &mut stamps, &mut report)?;
                }
            }
            Item::Bad(reason) => {
                report.bad += 1;
                crate::storage::dead_letters::put(&engine.store, &mut dead, last_stamp, "replay", &reason, &[]);
                if report.bad_listed.len() < LISTED {
                    report.bad_listed.push(reason);
                }
            }
        }
    }
    flush(&mut events, &mut stamps, &mut report)?;
    for (p, part) in engine.partitions.iter().enumerate() {
        report.inputs += engine.pump_partition(part, horizon(p, last_stamp), true)? as u64;
    }
    engine.flush()?;
    bar.finish_and_clear();
    if !dead.is_empty() {
        engine.store.write(dead, false)?;
    }

    // Sends: report, then drop those suppressed (or already sent by the source).
    let sent: FxHashSet<u128> = match (&src_store, &opts.source) {
        (Some(s), _) => tables::sent_ids(s)?.into_iter().map(|id| id.0).collect(),
        (None, Source::Kafka { .. }) => crate::kafka::history::sent_ledger(&settings.kafka)?
            .into_iter()
            .collect(),
        (None, _) => FxHashSet::default(),
    };
    let mut b = WriteBatch::default();
    for key in tables::outbox_keys(&engine.store)? {
        report.would_send += 1;
        let already = sent.contains(&key.id.0);
        report.already_sent += already as u64;
        if opts.send_unsent && !already && !what_if {
            report.kept_to_send += 1;
        } else {
            tables::delete_outbox(&engine.store, &mut b, key);
        }
    }
    // The source's ledger comes along, so nothing it sent can ever go out again from here.
    for id in &sent {
        tables::mark_sent(&engine.store, &mut b, crate::machine::SendId(*id), 0);
    }
    engine.store.write(b, false)?;
    engine.store.finish_bulk()?;
    // The outbox was trimmed to what the source never sent: counted again as it is.
    crate::storage::outbox_counts::recount(&engine.store)?;
    // Erase records in the log erased their contacts again: complete those erasures here, so
    // the rebuilt store holds nothing of them either.
    engine.complete_erasures()?;
    report.replay_seconds = started.elapsed().as_secs_f64();

    report.digest = Some(digest(&engine.store, parts as u16)?);
    let replayed = tables::counters(&engine.store)?;
    let actual = match &src_store {
        Some(s) => Some(tables::counters(s)?),
        None => None,
    };
    for ((wf, _, step, metric), v) in replayed {
        report.steps.entry((wf, step, metric)).or_insert((None, 0)).1 += v;
    }
    if let Some(actual) = actual {
        for ((wf, _, step, metric), v) in actual {
            let e = report.steps.entry((wf, step, metric)).or_insert((None, 0));
            e.0 = Some(e.0.unwrap_or(0) + v);
        }
    }
    report.seconds = started.elapsed().as_secs_f64();
    report.into = opts.into.clone();
    Ok(report)
}

fn progress_bar(show: bool, total: u64) -> indicatif::ProgressBar {
    if !show {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(total);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{bar:40} {human_pos}/{human_len} records  {per_sec}  ETA {eta}  {elapsed_precise}",
        )
        .expect("a valid template"),
    );
    bar
}

/// The records of every partition of a store's log, merged by stamp (ties: lower partition
/// first), each partition read a page at a time. An unreadable record (or a page that fails to
/// read) sorts first: it is reported in its partition's place.
fn merged(store: &Store, partitions: u16) -> impl Iterator<Item = anyhow::Result<Item>> + '_ {
    let order = |h: &Head| match &h.1 {
        Ok(Ok(r)) => (r.received, h.0),
        _ => (Ts::MIN, h.0),
    };
    let parts = (0..partitions).map(|p| pages(store, p));
    itertools::kmerge_by(parts, move |a: &Head, b: &Head| order(a) < order(b)).map(|(p, rec)| {
        Ok(match rec? {
            Ok(LogRecord { received, event, .. }) => Item::Event(received, event),
            Err(bad) => Item::Bad(format!("log partition {p} offset {}: {}", bad.offset, bad.reason)),
        })
    })
}

/// A partition's next record, or why the page holding it did not read.
type Head = (u16, anyhow::Result<log::Scanned>);

/// One partition of the log, read a page at a time; a page that fails to read ends it.
fn pages(store: &Store, p: u16) -> impl Iterator<Item = Head> + '_ {
    let mut next = Some(0);
    std::iter::from_fn(move || {
        let from = next?;
        let page = log::scan(store, p, from, CHUNK);
        next = match &page {
            Ok(recs) if !recs.is_empty() => Some(from + recs.len() as u64),
            _ => None,
        };
        Some(match page {
            Ok(recs) => recs.into_iter().map(Ok).collect(),
            Err(e) => vec![Err(e.into())],
        })
    })
    .flatten()
    .map(move |r| (p, r))
}

/// The end offset of each partition of a store's log. The partition count is the source's own
/// (it may differ from the target's): the highest partition with a record or a position.
fn log_ends(s: &Store) -> anyhow::Result<Vec<u64>> {
    let mut ends: Vec<u64> = vec![];
    for r in
        s.db.iterator_cf(s.cf(crate::storage::CF_POSITIONS), rocksdb::IteratorMode::Start)
    {
        let (k, _) = r?;
        if let Ok(p) = <[u8; 2]>::try_from(k.as_ref()) {
            ends.resize(ends.len().max(u16::from_be_bytes(p) as usize + 1), 0);
        }
    }
    let (db, cf) = s.log_db()?;
    let mut it = db.raw_iterator_cf(cf);
    it.seek_to_first();
    while let Some(k) = it.key() {
        let p = u16::from_be_bytes([k[0], k[1]]);
        ends.resize(ends.len().max(p as usize + 1), 0);
        ends[p as usize] = log::end(s, p)?.0;
        if p == u16::MAX {
            break;
        }
        it.seek((p + 1).to_be_bytes());
    }
    it.status()?;
    Ok(ends)
}

fn count_lines(path: &Path) -> anyhow::Result<u64> {
    let f = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut n = 0;
    for line in std::io::BufReader::new(f).split(b'\n') {
        n += !line?.trim_ascii().is_empty() as u64;
    }
    Ok(n)
}

#[derive(serde::Deserialize)]
struct Stamp<'a> {
    #[serde(rename = "receivedAt", borrow)]
    received_at: Option<std::borrow::Cow<'a, str>>,
    #[serde(borrow)]
    timestamp: Option<std::borrow::Cow<'a, str>>,
}

fn ndjson_items(files: Vec<PathBuf>) -> impl Iterator<Item = anyhow::Result<Item>> {
    files.into_iter().flat_map(|path| {
        let name = path.display().to_string();
        let lines: Box<dyn Iterator<Item = anyhow::Result<Item>>> = match std::fs::File::open(&path) {
            Err(e) => Box::new(std::iter::once(Err(anyhow::anyhow!("opening {name}: {e}")))),
            Ok(f) => Box::new(
                std::io::BufReader::new(f)
                    .split(b'\n')
                    .enumerate()
                    .filter(|(_, l)| l.as_ref().map_or(true, |l| !l.trim_ascii().is_empty()))
                    .map(move |(i, line)| {
                        let line = line.with_context(|| format!("reading {name}"))?;
                        let at = format!("{name}:{}", i + 1);
                        Ok(match (Event::parse(&line), serde_json::from_slice::<Stamp>(&line)) {
                            (Err(e), _) => Item::Bad(format!("{at}: {e}")),
                            (Ok(_), Err(e)) => Item::Bad(format!("{at}: {e}")),
                            (Ok(ev), Ok(s)) => match s.received_at.or(s.timestamp).map(|t| parse_rfc3339(&t)) {
                                Some(Some(t)) => Item::Event(t, ev),
                                Some(None) => Item::Bad(format!("{at}: receivedAt/timestamp is not RFC 3339")),
                                None => Item::Bad(format!("{at}: no receivedAt or timestamp to replay it at")),
                            },
                        })
                    }),
            ),
        };
        lines
    })
}
