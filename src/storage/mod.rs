//! RocksDB state, one column family per table with typed keys. Everything a processed batch
//! changes — contact states, timers, outbox entries, counters and the consumed log position —
//! goes into one `WriteBatch`, so a crash never leaves half of it. WAL on.
//!
//! The embedded log is a RocksDB database of its own (`event-log/` inside the store's
//! directory), with its own WAL: an append's fsync, which the ack waits for, syncs only events,
//! and the partitions' commits never queue behind it in one write group. The state tables are
//! not fsynced by commits: after a power cut a partition resumes from an earlier commit and
//! handles the log again to the same state and the same send ids (the sent ledger, which is
//! fsynced, keeps those from going out twice).

pub mod dead_letters;
pub mod digest;
pub mod erasures;
pub mod hook;
pub mod log;
pub mod outbox_counts;
pub mod reroutes;
pub mod suppressed_addresses;
pub mod tables;
pub mod timers;
pub mod workflow_states;

use rocksdb::{ColumnFamily, ColumnFamilyDescriptor, DB, Options, WriteBatch, WriteOptions};
use std::path::Path;

pub const CF_LOG: &str = "log";
/// Contact states, keyed by the contact's partition and then its id ([`tables::get_contact`]).
pub const CF_CONTACTS: &str = "contacts_by_partition";
/// Contact states keyed by id alone, as earlier versions wrote stores: moved into
/// [`CF_CONTACTS`] at the first open, read in place by a read-only open until then.
pub const CF_CONTACTS_BY_ID: &str = "contacts";
pub const CF_TIMERS: &str = "timers";
pub const CF_OUTBOX: &str = "outbox";
pub const CF_SENT: &str = "sent";
pub const CF_POSITIONS: &str = "positions";
pub const CF_COUNTERS: &str = "counters";
pub const CF_WORKFLOWS: &str = "workflows";
pub const CF_DEAD: &str = "dead_letters";
pub const CF_SUPPRESSIONS: &str = "suppressions";
pub const CF_SUPPRESSED_ADDRESSES: &str = "suppressed_addresses";
pub const CF_WORKFLOW_STATES: &str = "workflow_states";
pub const CF_ERASURES: &str = "erasures";
pub const CF_OUTBOX_COUNTS: &str = "outbox_counts";
pub const CF_REROUTES: &str = "reroutes";

/// A state table: its column family, and whether it is part of a partition's state (what the
/// Kafka changelog mirrors and a restore brings back).
pub struct Table {
    pub name: &'static str,
    pub partition_state: bool,
}

const fn table(name: &'static str, partition_state: bool) -> Table {
    Table { name, partition_state }
}

/// Every state table, once: the store opens them all, the changelog mirrors those that are part
/// of a partition's state. The log's column family lives in its own database, [`LOG_DIR`].
pub const TABLES: [Table; 14] = [
    table(CF_CONTACTS, true),
    table(CF_TIMERS, true),
    table(CF_OUTBOX, true),
    table(CF_OUTBOX_COUNTS, true),
    table(CF_SENT, true),
    table(CF_POSITIONS, true),
    table(CF_COUNTERS, true),
    table(CF_DEAD, true),
    table(CF_SUPPRESSIONS, true),
    table(CF_SUPPRESSED_ADDRESSES, true),
    table(CF_WORKFLOW_STATES, true),
    table(CF_REROUTES, true),
    // Per instance: the workflow versions it loaded, the erasures it has still to complete.
    table(CF_WORKFLOWS, false),
    table(CF_ERASURES, false),
];

/// The names of every state table.
fn all() -> impl Iterator<Item = &'static str> {
    TABLES.iter().map(|t| t.name)
}

/// The tables the Kafka changelog mirrors.
pub fn mirrored() -> impl Iterator<Item = &'static str> {
    TABLES.iter().filter(|t| t.partition_state).map(|t| t.name)
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("rocksdb: {0}")]
    Rocks(#[from] rocksdb::Error),
    #[error("changelog: {0}")]
    Changelog(String),
    #[error("a commit of this partition failed (restart to resume from the last one written): {0}")]
    CommitFailed(String),
    #[error("corrupt record in {table}: {reason}")]
    Corrupt { table: &'static str, reason: String },
}

pub type Result<T> = std::result::Result<T, StoreError>;

/// The log's database, inside the store's directory (a name RocksDB's own files never take).
pub const LOG_DIR: &str = "event-log";

pub struct Store {
    pub db: DB,
    log: Log,
    contacts: ContactLayout,
    /// Bulk mode (replay into a fresh directory): writes skip the WAL and [`Store::finish_bulk`]
    /// flushes the memtables at the end. A crash mid-replay loses only a directory that is
    /// rebuilt from scratch anyway.
    bulk: std::sync::atomic::AtomicBool,
}

/// How the store keys its contacts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContactLayout {
    /// In [`CF_CONTACTS`], under their partition of this many (`log::partition_of`), two bytes
    /// big-endian, then their id. A partition's commit then writes its contacts into one range
    /// of the memtable rather than between the other partitions' keys (measured +2.5 to +24.6 %,
    /// median +6 %, on the pipelined benchmark). The count is recorded when the table is made
    /// and kept: it groups keys, and any count keys every contact the same way on every read.
    Partitioned(u16),
    /// In [`CF_CONTACTS_BY_ID`], by id alone: a read-only open of a store not yet opened by a
    /// version that moves them.
    ById,
}

/// Where the count [`ContactLayout::Partitioned`] keys with is recorded (in `positions`).
const CONTACT_PARTITIONS_KEY: &[u8] = b"contact-key-partitions";

/// Where a store's log is.
enum Log {
    /// Its own database, opened with the store.
    Own(DB),
    /// Its own database, opened read-only at first use: most read-only users (`contact show`,
    /// `state digest`) never read the log, and opening it replays its WAL.
    Later {
        dir: std::path::PathBuf,
        opts: Options,
        db: std::sync::OnceLock<std::result::Result<DB, rocksdb::Error>>,
    },
    /// The main database's `log` column family: a read-only open of a store written before the
    /// log had its own database.
    Main,
}

/// Options both databases share: memtables, compression, background threads.
fn db_options(memtables: &rocksdb::WriteBufferManager) -> Options {
    let mut opts = Options::default();
    opts.create_if_missing(true);
    opts.create_missing_column_families(true);
    opts.set_compression_type(rocksdb::DBCompressionType::Lz4);
    // The background threads belong to the process's one RocksDB environment: both databases
    // share them.
    opts.increase_parallelism(2);
    // Memtable inserts by one writer at a time, with plain stores; concurrent inserts link
    // skiplist nodes with compare-and-swap. (What the benchmarks measure; not compared.)
    opts.set_allow_concurrent_memtable_write(false);
    // Memory must not grow with the data: all memtables of both databases together are capped
    // (the write buffer manager flushes the largest when the total reaches it).
    opts.set_write_buffer_manager(memtables);
    opts.set_write_buffer_size(64 << 20);
    opts.set_max_write_buffer_number(3);
    opts
}

/// The column families a store already has (none for a new one): read from its manifest once
/// per open, for the tables of earlier layouts it may still hold.
struct Existing(Vec<String>);

impl Existing {
    fn read(dir: &Path) -> Self {
        Existing(DB::list_cf(&Options::default(), dir).unwrap_or_default())
    }

    fn has(&self, name: &str) -> bool {
        self.0.iter().any(|n| n == name)
    }
}

/// The store's options and its column families with theirs, and the log database's options:
/// the same for a read-only open, so that it reads the tables as they were written (filters,
/// block cache).
fn options(existing: &Existing) -> (Options, Vec<ColumnFamilyDescriptor>, Options) {
    let memtables = rocksdb::WriteBufferManager::new_write_buffer_manager(256 << 20, false);
    let opts = db_options(&memtables);
    let log_opts = db_options(&memtables);
    // Point lookups (contacts, sent ledger, counters) mostly miss or hit one key:
    // bloom filters keep misses off the SST files.
    // Filters and indexes stay pinned in the table readers (not in the block cache, where
    // they thrash once tables outgrow it); data blocks share one 256 MiB cache.
    // A clock cache (its size per entry estimated as it fills: the 0): a look-up takes no lock
    // and moves no list, where the LRU cache's took a shard mutex on every found contact.
    let cache = rocksdb::Cache::new_hyper_clock_cache(256 << 20, 0);
    let point = || {
        let mut o = Options::default();
        let mut t = rocksdb::BlockBasedOptions::default();
        t.set_bloom_filter(10.0, false);
        t.set_block_cache(&cache);
        o.set_block_based_table_factory(&t);
        o.set_compression_type(rocksdb::DBCompressionType::Lz4);
        // The same for the memtable: a lookup of a new id or contact (most of them) answers
        // from a bloom filter instead of a skiplist search.
        o.set_memtable_prefix_bloom_ratio(0.05);
        o.set_memtable_whole_key_filtering(true);
        o
    };
    let mut opts = opts;
    // Every change to the set of files starts a new MANIFEST holding only the live files: the
    // old one can name a deleted key (an erased contact's) as a file boundary, and it is
    // deleted once replaced. A MANIFEST is a few KiB here, written once per flush or
    // compaction.
    opts.set_max_manifest_file_size(1);
    let cfs = all().map(|n| match n {
        // Contacts too, in a skiplist memtable like every table. A hashed memtable (by whole
        // key, in earlier versions) made each insert touch one bucket, but its flush had to sort
        // every key into a new skiplist on the flush thread: 11 % of the pipelined engine's
        // CPU. Inserting in order as it goes costs the processing thread less than that.
        CF_CONTACTS | CF_SENT | CF_COUNTERS | CF_SUPPRESSIONS => ColumnFamilyDescriptor::new(n, point()),
        _ => ColumnFamilyDescriptor::new(n, Options::default()),
    });
    let mut cfs: Vec<_> = cfs.collect();
    // The contacts of an earlier layout, with the options they were written with, if present.
    if existing.has(CF_CONTACTS_BY_ID) {
        cfs.push(ColumnFamilyDescriptor::new(CF_CONTACTS_BY_ID, point()));
    }
    (opts, cfs, log_opts)
}

fn log_cfs() -> Vec<ColumnFamilyDescriptor> {
    vec![ColumnFamilyDescriptor::new(CF_LOG, Options::default())]
}

/// Whether the main database still holds the log (a store written before the log had its own
/// database, or one whose move was cut short); if so, its column family joins `cfs`, to be
/// opened with the rest.
fn with_old_log(existing: &Existing, cfs: &mut Vec<ColumnFamilyDescriptor>) -> bool {
    let old = existing.has(CF_LOG);
    if old {
        cfs.extend(log_cfs());
    }
    old
}

impl Store {
    /// Opens (or creates) a store whose contacts a new contacts table keys by their partition
    /// of one: in no particular grouping. The engine opens with its partition count instead
    /// ([`Store::open_partitioned`]).
    pub fn open(dir: &Path) -> Result<Store> {
        Store::open_partitioned(dir, 1)
    }

    /// Opens (or creates) a store; a contacts table made now keys contacts by their partition
    /// of `partitions` (one already made keeps the count it was made with).
    pub fn open_partitioned(dir: &Path, partitions: u16) -> Result<Store> {
        let existing = Existing::read(dir);
        let (opts, mut cfs, log_opts) = options(&existing);
        let old_log = with_old_log(&existing, &mut cfs);
        let mut db = DB::open_cf_descriptors(&opts, dir, cfs)?;
        let log = DB::open_cf_descriptors(&log_opts, dir.join(LOG_DIR), log_cfs())?;
        if old_log {
            move_old_log(&mut db, &log)?;
        }
        let partitions = contact_partitions(&db, partitions.max(1))?;
        if db.cf_handle(CF_CONTACTS_BY_ID).is_some() {
            move_contacts_by_id(&mut db, partitions)?;
        }
        let store = Store {
            db,
            log: Log::Own(log),
            contacts: ContactLayout::Partitioned(partitions),
            bulk: Default::default(),
        };
        tables::upgrade_outbox_keys_once(&store)?;
        Ok(store)
    }

    /// Opens for reading while a running engine holds the store (`contact show`), with the
    /// options it was written with.
    pub fn open_read_only(dir: &Path) -> Result<Store> {
        let existing = Existing::read(dir);
        let (opts, mut cfs, log_opts) = options(&existing);
        let old_log = with_old_log(&existing, &mut cfs);
        // A store the open that moves contacts by id has not run on, or not to the end:
        // everything is still in the old table, which goes only after the move. (A store with
        // neither table fails to open, naming the new one.)
        let by_id = existing.has(CF_CONTACTS_BY_ID);
        if by_id && !existing.has(CF_CONTACTS) {
            cfs.retain(|c| c.name() != CF_CONTACTS);
        }
        // Tables newer than the store (a version that adds them has not opened it for writing
        // yet) cannot be opened read-only: they are left out, and their reads are not needed.
        cfs.retain(|c| c.name() == CF_CONTACTS || existing.has(c.name()));
        let db = DB::open_cf_descriptors_read_only(&opts, dir, cfs, false)?;
        let contacts = match by_id {
            true => ContactLayout::ById,
            false => ContactLayout::Partitioned(recorded_partitions(&db)?.unwrap_or(1)),
        };
        let log = match old_log {
            true => Log::Main,
            false => Log::Later {
                dir: dir.join(LOG_DIR),
                opts: log_opts,
                db: Default::default(),
            },
        };
        Ok(Store {
            db,
            log,
            contacts,
            bulk: Default::default(),
        })
    }

    pub fn cf(&self, name: &str) -> &ColumnFamily {
        self.db.cf_handle(name).expect("column family created at open")
    }

    /// How this store keys its contacts.
    pub fn contact_layout(&self) -> ContactLayout {
        self.contacts
    }

    /// The contacts' column family.
    pub fn contacts_cf(&self) -> &ColumnFamily {
        self.cf(match self.contacts {
            ContactLayout::Partitioned(_) => CF_CONTACTS,
            ContactLayout::ById => CF_CONTACTS_BY_ID,
        })
    }

    /// The log's database and column family.
    pub fn log_db(&self) -> Result<(&DB, &ColumnFamily)> {
        let db = match &self.log {
            Log::Own(db) => db,
            Log::Main => &self.db,
            Log::Later { dir, opts, db } => db
                .get_or_init(|| DB::open_cf_descriptors_read_only(opts, dir, log_cfs(), false))
                .as_ref()
                .map_err(|e| StoreError::Rocks(e.clone()))?,
        };
        Ok((
            db,
            db.cf_handle(CF_LOG).expect("the log's column family, created at open"),
        ))
    }

    fn write_options(&self, sync: bool) -> WriteOptions {
        let mut w = WriteOptions::default();
        if self.bulk.load(std::sync::atomic::Ordering::Relaxed) {
            w.disable_wal(true);
        } else {
            w.set_sync(sync);
        }
        w
    }

    /// Writes a batch of the state tables through their WAL. `sync` also fsyncs it: used where
    /// a caller must not repeat what it did (the mailer's sent ledger) or about to acknowledge.
    pub fn write(&self, batch: WriteBatch, sync: bool) -> Result<()> {
        Ok(self.db.write_opt(batch, &self.write_options(sync))?)
    }

    /// Writes a batch of log records through the log's own WAL; `sync` as for [`Store::write`]
    /// (ingest syncs before its ack, so an acknowledged event survives a power cut).
    pub fn write_log(&self, batch: WriteBatch, sync: bool) -> Result<()> {
        let (db, _) = self.log_db()?;
        Ok(db.write_opt(batch, &self.write_options(sync))?)
    }

    /// Flushes every table of both databases and rewrites all their files (bottommost level
    /// too): afterwards no value that was overwritten or deleted is left in a file, and the
    /// write-ahead logs that held them are obsolete and deleted. What erasures rely on.
    pub fn compact_everything(&self) -> Result<()> {
        let mut opts = rocksdb::CompactOptions::default();
        opts.set_bottommost_level_compaction(rocksdb::BottommostLevelCompaction::Force);
        opts.set_exclusive_manual_compaction(false);
        let mut main: Vec<&ColumnFamily> = all().map(|n| self.cf(n)).collect();
        if let Some(old) = self.db.cf_handle(CF_CONTACTS_BY_ID) {
            main.push(old);
        }
        self.db.flush_cfs_opt(&main, &rocksdb::FlushOptions::default())?;
        for cf in &main {
            self.db.compact_range_cf_opt(*cf, None::<&[u8]>, None::<&[u8]>, &opts);
        }
        let (log, log_cf) = self.log_db()?;
        log.flush_cf(log_cf)?;
        log.compact_range_cf_opt(log_cf, None::<&[u8]>, None::<&[u8]>, &opts);
        // One more change to the set of files, after the compaction: it starts a new MANIFEST
        // (see `options`) that names only the files left, so no old boundary key survives.
        let at = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        self.db.put_cf(self.cf(CF_ERASURES), b"m", at.to_be_bytes())?;
        self.db.flush_cf(self.cf(CF_ERASURES))?;
        Ok(())
    }

    pub fn start_bulk(&self) {
        self.bulk.store(true, std::sync::atomic::Ordering::Relaxed);
    }

    /// Leaves bulk mode with everything written durably (memtables flushed to SST files).
    pub fn finish_bulk(&self) -> Result<()> {
        self.bulk.store(false, std::sync::atomic::Ordering::Relaxed);
        let cfs: Vec<&ColumnFamily> = all().map(|n| self.cf(n)).collect();
        self.db.flush_cfs_opt(&cfs, &rocksdb::FlushOptions::default())?;
        let (db, cf) = self.log_db()?;
        db.flush_cf(cf)?;
        Ok(())
    }
}

fn recorded_partitions(db: &DB) -> Result<Option<u16>> {
    let cf = db.cf_handle(CF_POSITIONS).expect("opened");
    Ok(db
        .get_pinned_cf(cf, CONTACT_PARTITIONS_KEY)?
        .and_then(|v| <[u8; 2]>::try_from(&v[..]).ok())
        .map(u16::from_be_bytes))
}

/// The count contacts are keyed by: the one recorded, or `wanted`, recorded now (before any
/// contact is written under it).
fn contact_partitions(db: &DB, wanted: u16) -> Result<u16> {
    if let Some(p) = recorded_partitions(db)? {
        return Ok(p);
    }
    let mut w = WriteOptions::default();
    w.set_sync(true);
    let cf = db.cf_handle(CF_POSITIONS).expect("opened");
    db.put_cf_opt(cf, CONTACT_PARTITIONS_KEY, wanted.to_be_bytes(), &w)?;
    Ok(wanted)
}

/// Moves the contacts of a store that keyed them by id alone into [`CF_CONTACTS`], under their
/// partition, then drops the old table. Cut short, it runs again at the next open: the puts are
/// idempotent (nothing else writes contacts before the open returns), and the old table goes
/// only once every contact is durable in the new one.
fn move_contacts_by_id(db: &mut DB, partitions: u16) -> Result<()> {
    let moved = copy_table(
        db,
        db.cf_handle(CF_CONTACTS_BY_ID).expect("opened"),
        db,
        db.cf_handle(CF_CONTACTS).expect("opened"),
        |id, key| tables::contact_key_into(key, partitions, id),
    )?;
    tracing::info!("keyed {moved} contacts by partition ({CF_CONTACTS})");
    Ok(db.drop_cf(CF_CONTACTS_BY_ID)?)
}

/// Moves the log of a store written before the log had its own database into it, in batches,
/// then drops the old column family. Cut short, it runs again at the next open: the puts are
/// idempotent, and the old column family goes only once every record is durable in the new one.
fn move_old_log(db: &mut DB, log: &DB) -> Result<()> {
    copy_table(
        db,
        db.cf_handle(CF_LOG).expect("opened"),
        log,
        log.cf_handle(CF_LOG).expect("opened"),
        |k, key| key.extend_from_slice(k),
    )?;
    tracing::info!("moved the log into its own database ({LOG_DIR}/)");
    Ok(db.drop_cf(CF_LOG)?)
}

/// Copies every record of `from` into `to`, under the key `rekey` writes for each, in batches
/// of ~4 MiB; the last is fsynced, and with it every one before. Returns the records copied.
fn copy_table(
    src: &DB,
    from: &ColumnFamily,
    dst: &DB,
    to: &ColumnFamily,
    rekey: impl Fn(&[u8], &mut Vec<u8>),
) -> Result<u64> {
    let mut it = src.raw_iterator_cf(from);
    it.seek_to_first();
    let (mut batch, mut key, mut copied) = (WriteBatch::default(), Vec::new(), 0);
    while let (Some(k), Some(v)) = (it.key(), it.value()) {
        key.clear();
        rekey(k, &mut key);
        batch.put_cf(to, &key, v);
        copied += 1;
        if batch.size_in_bytes() >= 4 << 20 {
            dst.write(std::mem::take(&mut batch))?;
        }
        it.next();
    }
    it.status()?;
    let mut w = WriteOptions::default();
    w.set_sync(true);
    dst.write_opt(batch, &w)?;
    Ok(copied)
}

#[cfg(test)]
mod tests {
    /// A store written before the newest tables existed opens read-only (those tables left
    /// out), and a read-write open adds them.
    #[test]
    fn a_store_without_the_newest_tables_opens_read_only_and_gains_them_read_write() {
        let tmp = tempfile::tempdir().unwrap();
        let newest = [
            CF_SUPPRESSED_ADDRESSES,
            CF_WORKFLOW_STATES,
            CF_ERASURES,
            CF_OUTBOX_COUNTS,
        ];
        {
            let mut opts = Options::default();
            opts.create_if_missing(true);
            opts.create_missing_column_families(true);
            let older: Vec<&str> = all().filter(|n| !newest.contains(n)).collect();
            let db = DB::open_cf(&opts, tmp.path(), older).unwrap();
            db.put_cf(
                db.cf_handle(CF_POSITIONS).unwrap(),
                CONTACT_PARTITIONS_KEY,
                8u16.to_be_bytes(),
            )
            .unwrap();
        }
        let ro = Store::open_read_only(tmp.path()).unwrap();
        assert!(tables::get_contact(&ro, "ann").unwrap().is_none());
        assert!(ro.db.cf_handle(CF_OUTBOX_COUNTS).is_none());
        drop(ro);
        let rw = Store::open(tmp.path()).unwrap();
        for n in newest {
            assert!(rw.db.cf_handle(n).is_some(), "{n}");
        }
    }

    use super::*;

    /// `contact show`'s read-only open reads the tables with the options they were written
    /// with: the contacts' shared 256 MiB block cache, not a default one.
    #[test]
    fn a_read_only_open_has_the_writers_options() {
        let dir = tempfile::tempdir().unwrap();
        drop(Store::open(dir.path()).unwrap());
        let s = Store::open_read_only(dir.path()).unwrap();
        let capacity =
            s.db.property_int_value_cf(s.cf(CF_CONTACTS), "rocksdb.block-cache-capacity")
                .unwrap();
        assert_eq!(capacity, Some(256 << 20));
    }

    /// A read-only open leaves the log closed until something reads it: `contact show` reads a
    /// contact even with the log's database gone, and a log read then fails with the reason.
    #[test]
    fn a_read_only_open_opens_the_log_at_first_use() {
        use crate::event::Event;
        use std::sync::Arc;
        let dir = tempfile::tempdir().unwrap();
        {
            let s = Arc::new(Store::open(dir.path()).unwrap());
            let mut b = WriteBatch::default();
            tables::put_contact(&s, &mut b, "ann", &crate::machine::ContactState::default());
            s.write(b, true).unwrap();
            let log = log::EmbeddedLog::open(s, 1, 16).unwrap();
            log.append(vec![Event::track("ann", "m1", "Signed Up", Default::default())], 1_000)
                .unwrap();
        }
        let s = Store::open_read_only(dir.path()).unwrap();
        assert_eq!(log::read(&s, 0, 0, 10).unwrap().len(), 1);
        let moved = dir.path().join("moved");
        std::fs::rename(dir.path().join(LOG_DIR), &moved).unwrap();
        let s = Store::open_read_only(dir.path()).unwrap();
        assert!(tables::get_contact(&s, "ann").unwrap().is_some());
        let err = log::read(&s, 0, 0, 10).unwrap_err();
        assert!(err.to_string().contains(LOG_DIR), "{err}");
    }

    /// A store written before the log had its own database (the log a column family of the
    /// main one) reads the same log: read-only as it is, and after the first open has moved it
    /// into `event-log/` and dropped the old column family. Appends go on from the old end, and
    /// the dedup window still holds the moved ids.
    #[test]
    fn a_log_in_the_main_database_moves_to_its_own() {
        use crate::event::Event;
        use std::sync::Arc;
        let dir = tempfile::tempdir().unwrap();
        let events = |ids: std::ops::Range<usize>| -> Vec<Event> {
            ids.map(|i| {
                Event::track(
                    &format!("u{}", i % 7),
                    &format!("m{i}"),
                    "Page Viewed",
                    Default::default(),
                )
            })
            .collect()
        };
        {
            let (opts, mut cfs, _) = options(&Existing::read(dir.path()));
            cfs.extend(log_cfs());
            let old = Store {
                db: DB::open_cf_descriptors(&opts, dir.path(), cfs).unwrap(),
                log: Log::Main,
                contacts: ContactLayout::Partitioned(1),
                bulk: Default::default(),
            };
            let log = log::EmbeddedLog::open(Arc::new(old), 4, 1000).unwrap();
            log.append(events(0..300), 1_000).unwrap();
        }
        assert!(!dir.path().join(LOG_DIR).exists());
        let read = |s: &Store| (0..4).map(|p| log::read(s, p, 0, 1000).unwrap()).collect::<Vec<_>>();
        let before = read(&Store::open_read_only(dir.path()).unwrap());
        assert_eq!(before.iter().map(Vec::len).sum::<usize>(), 300);

        let s = Arc::new(Store::open(dir.path()).unwrap());
        assert!(s.db.cf_handle(CF_LOG).is_none(), "the old column family is dropped");
        assert_eq!(read(&s), before);
        let log = log::EmbeddedLog::open(s.clone(), 4, 1000).unwrap();
        let appended = log.append(events(290..310), 2_000).unwrap();
        let repeats = appended.iter().filter(|a| **a == log::Appended::Duplicate).count();
        assert_eq!(repeats, 10, "the moved ids are still in the dedup window");
        drop(log);
        drop(s);
        assert!(
            !DB::list_cf(&Options::default(), dir.path())
                .unwrap()
                .iter()
                .any(|n| n == CF_LOG)
        );
        let after = read(&Store::open_read_only(dir.path()).unwrap());
        assert_eq!(after.iter().map(Vec::len).sum::<usize>(), 310);
        for (old, new) in before.iter().zip(&after) {
            assert_eq!(old[..], new[..old.len()], "old records keep their offsets");
        }
    }

    /// A store of the earlier layout (contacts keyed by id alone, in a table written with the
    /// hashed memtable of earlier versions: whole-key prefix extractor, flushed tables and a WAL)
    /// reads every contact read-only as it is; the first open moves them, keyed by partition,
    /// into the new table and drops the old one; both read the same contacts, in the same
    /// order, and no contact the store never held. A move cut short runs again.
    #[test]
    fn contacts_keyed_by_id_move_to_the_partitioned_table() {
        let dir = tempfile::tempdir().unwrap();
        let state = |n: i64| {
            let mut st = crate::machine::ContactState::default();
            std::sync::Arc::make_mut(&mut st.traits).insert("n".into(), crate::value::Value::Int(n));
            st
        };
        {
            let mut opts = Options::default();
            opts.create_if_missing(true);
            opts.create_missing_column_families(true);
            opts.set_allow_concurrent_memtable_write(false);
            let hashed = || {
                let mut o = Options::default();
                let mut t = rocksdb::BlockBasedOptions::default();
                t.set_bloom_filter(10.0, false);
                o.set_block_based_table_factory(&t);
                o.set_prefix_extractor(rocksdb::SliceTransform::create_noop());
                o.set_memtable_factory(rocksdb::MemtableFactory::HashSkipList {
                    bucket_count: 1 << 10,
                    height: 4,
                    branching_factor: 4,
                });
                o
            };
            // The tables of that time: `contacts`, and no partitioned one.
            let names: Vec<&str> = all()
                .map(|n| if n == CF_CONTACTS { CF_CONTACTS_BY_ID } else { n })
                .collect();
            let cfs = names.iter().map(|n| match *n {
                CF_CONTACTS_BY_ID => ColumnFamilyDescriptor::new(*n, hashed()),
                _ => ColumnFamilyDescriptor::new(*n, Options::default()),
            });
            let db = DB::open_cf_descriptors(&opts, dir.path(), cfs).unwrap();
            let old = db.cf_handle(CF_CONTACTS_BY_ID).unwrap();
            let write = |ids: std::ops::Range<i64>| {
                let mut b = WriteBatch::default();
                for i in ids {
                    b.put_cf(old, format!("c{i}"), state(i).encode());
                }
                db.write(b).unwrap();
            };
            write(0..500);
            db.flush_cf(old).unwrap();
            write(500..600); // only in the WAL
        }
        let listed = || DB::list_cf(&Options::default(), dir.path()).unwrap();
        let check = |s: &Store| {
            for i in [0, 250, 499, 500, 599] {
                assert_eq!(tables::get_contact(s, &format!("c{i}")).unwrap(), Some(state(i)));
            }
            assert_eq!(tables::get_contact(s, "c600").unwrap(), None);
            tables::contacts(s).map(Result::unwrap).collect::<Vec<_>>()
        };
        let read_only = Store::open_read_only(dir.path()).unwrap();
        assert_eq!(read_only.contact_layout(), ContactLayout::ById);
        let before = check(&read_only);
        assert_eq!(before.len(), 600);
        assert!(before.windows(2).all(|w| w[0].0 < w[1].0), "in id order");
        drop(read_only);

        let s = Store::open_partitioned(dir.path(), 8).unwrap();
        assert_eq!(s.contact_layout(), ContactLayout::Partitioned(8));
        assert_eq!(check(&s), before);
        drop(s);
        assert!(
            !listed().iter().any(|n| n == CF_CONTACTS_BY_ID),
            "the old table is dropped"
        );
        let read_only = Store::open_read_only(dir.path()).unwrap();
        assert_eq!(read_only.contact_layout(), ContactLayout::Partitioned(8));
        assert_eq!(check(&read_only), before);
        drop(read_only);

        // A later open with another count keeps the recorded one.
        let s = Store::open_partitioned(dir.path(), 3).unwrap();
        assert_eq!(s.contact_layout(), ContactLayout::Partitioned(8));
        // A move cut short (the old table back, holding one contact changed since): the next
        // open moves it again, and the old table is the one that counts.
        drop(s);
        {
            let (opts, cfs, _) = options(&Existing::read(dir.path()));
            let mut db = DB::open_cf_descriptors(&opts, dir.path(), cfs).unwrap();
            db.create_cf(CF_CONTACTS_BY_ID, &Options::default()).unwrap();
            db.put_cf(db.cf_handle(CF_CONTACTS_BY_ID).unwrap(), "c7", state(-7).encode())
                .unwrap();
        }
        let s = Store::open_partitioned(dir.path(), 8).unwrap();
        assert_eq!(tables::get_contact(&s, "c7").unwrap(), Some(state(-7)));
        assert_eq!(tables::contacts(&s).count(), 600);
        assert!(s.db.cf_handle(CF_CONTACTS_BY_ID).is_none());
    }

    /// Contacts are keyed by partition: each partition's contacts lie in one range of the
    /// table, under its two-byte number, and the iterator reads them back in id order.
    #[test]
    fn contacts_lie_in_their_partitions_range() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open_partitioned(dir.path(), 4).unwrap();
        let mut b = WriteBatch::default();
        let ids: Vec<String> = (0..200).map(|i| format!("u{i}")).collect();
        for id in &ids {
            tables::put_contact(&s, &mut b, id, &crate::machine::ContactState::default());
        }
        s.write(b, true).unwrap();
        let raw: Vec<Box<[u8]>> =
            s.db.iterator_cf(s.cf(CF_CONTACTS), rocksdb::IteratorMode::Start)
                .map(|r| r.unwrap().0)
                .collect();
        assert_eq!(raw.len(), 200);
        for k in &raw {
            let id = std::str::from_utf8(&k[2..]).unwrap();
            assert_eq!(u16::from_be_bytes([k[0], k[1]]), log::partition_of(id, 4), "{id}");
        }
        let mut sorted = ids.clone();
        sorted.sort();
        let read: Vec<String> = tables::contacts(&s).map(|r| r.unwrap().0).collect();
        assert_eq!(read, sorted);
        let mut b = WriteBatch::default();
        tables::delete_contact(&s, &mut b, "u7");
        s.write(b, true).unwrap();
        assert_eq!(tables::get_contact(&s, "u7").unwrap(), None);
        assert!(tables::get_contact(&s, "u8").unwrap().is_some());
    }
}
