//! RocksDB state, one column family per table with typed keys. Everything a processed batch
//! changes — contact states, timers, outbox entries, counters and the consumed log position —
//! goes into one `WriteBatch`, so a crash never leaves half of it. WAL on.

pub mod digest;
pub mod handoff;
pub mod log;
pub mod tables;
pub mod timers;

use rocksdb::{ColumnFamily, ColumnFamilyDescriptor, DB, Options, WriteBatch, WriteOptions};
use std::path::Path;

pub const CF_LOG: &str = "log";
pub const CF_CONTACTS: &str = "contacts";
pub const CF_TIMERS: &str = "timers";
pub const CF_OUTBOX: &str = "outbox";
pub const CF_SENT: &str = "sent";
pub const CF_POSITIONS: &str = "positions";
pub const CF_COUNTERS: &str = "counters";
pub const CF_WORKFLOWS: &str = "workflows";
pub const CF_DEAD: &str = "dead_letters";
pub const CF_SUPPRESSIONS: &str = "suppressions";

const ALL: [&str; 10] = [
    CF_LOG,
    CF_CONTACTS,
    CF_TIMERS,
    CF_OUTBOX,
    CF_SENT,
    CF_POSITIONS,
    CF_COUNTERS,
    CF_WORKFLOWS,
    CF_DEAD,
    CF_SUPPRESSIONS,
];

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

pub struct Store {
    pub db: DB,
    /// Bulk mode (replay into a fresh directory): writes skip the WAL and [`Store::finish_bulk`]
    /// flushes the memtables at the end. A crash mid-replay loses only a directory that is
    /// rebuilt from scratch anyway.
    bulk: std::sync::atomic::AtomicBool,
    /// Commits busy partitions left for the next writer (see [`handoff`]).
    pub handoff: handoff::Handoff,
}

/// The store's options and its column families with theirs: the same for a read-only open,
/// so that it reads the tables as they were written (filters, block cache).
fn options() -> (Options, Vec<ColumnFamilyDescriptor>) {
    let mut opts = Options::default();
    opts.create_if_missing(true);
    opts.create_missing_column_families(true);
    opts.set_compression_type(rocksdb::DBCompressionType::Lz4);
    opts.increase_parallelism(2);
    // Memtable inserts by one writer at a time, with plain stores; concurrent inserts link
    // skiplist nodes with compare-and-swap. (What the benchmarks measure; not compared.)
    opts.set_allow_concurrent_memtable_write(false);
    // Memory must not grow with the data: all memtables together are capped (the write
    // buffer manager flushes the largest when the total reaches it).
    opts.set_db_write_buffer_size(256 << 20);
    opts.set_write_buffer_size(64 << 20);
    opts.set_max_write_buffer_number(3);
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
    let cfs = ALL.iter().map(|n| match *n {
        // Contacts too, in a skiplist memtable like every table. A hashed memtable (by whole
        // key, sessions 5 to 8) made each insert touch one bucket, but its flush had to sort
        // every key into a new skiplist on the flush thread: 11 % of the pipelined engine's
        // CPU. Inserting in order as it goes costs the processing thread less than that.
        CF_CONTACTS | CF_SENT | CF_COUNTERS | CF_SUPPRESSIONS => ColumnFamilyDescriptor::new(*n, point()),
        _ => ColumnFamilyDescriptor::new(*n, Options::default()),
    });
    (opts, cfs.collect())
}

impl Store {
    fn with_db(db: DB) -> Store {
        Store {
            db,
            bulk: Default::default(),
            handoff: Default::default(),
        }
    }

    pub fn open(dir: &Path) -> Result<Store> {
        let (opts, cfs) = options();
        let store = Store::with_db(DB::open_cf_descriptors(&opts, dir, cfs)?);
        tables::upgrade_outbox_keys_once(&store)?;
        Ok(store)
    }

    /// Opens for reading while a running engine holds the store (`contact show`), with the
    /// options it was written with.
    pub fn open_read_only(dir: &Path) -> Result<Store> {
        let (opts, cfs) = options();
        Ok(Store::with_db(DB::open_cf_descriptors_read_only(
            &opts, dir, cfs, false,
        )?))
    }

    pub fn cf(&self, name: &str) -> &ColumnFamily {
        self.db.cf_handle(name).expect("column family created at open")
    }

    /// Writes a batch through the WAL. `sync` also fsyncs it: used where the caller is about
    /// to acknowledge (ingest), so an acknowledged event survives a power cut.
    pub fn write(&self, batch: WriteBatch, sync: bool) -> Result<()> {
        let mut w = WriteOptions::default();
        if self.bulk.load(std::sync::atomic::Ordering::Relaxed) {
            w.disable_wal(true);
        } else {
            w.set_sync(sync);
        }
        Ok(self.db.write_opt(batch, &w)?)
    }

    /// Writes the commits partitions have handed off (see [`handoff`]), in order.
    pub fn write_handed_off(&self) -> Result<()> {
        self.handoff.write_all(self)
    }

    pub fn start_bulk(&self) {
        self.bulk.store(true, std::sync::atomic::Ordering::Relaxed);
    }

    /// Leaves bulk mode with everything written durably (memtables flushed to SST files).
    pub fn finish_bulk(&self) -> Result<()> {
        self.bulk.store(false, std::sync::atomic::Ordering::Relaxed);
        let cfs: Vec<&ColumnFamily> = ALL.iter().map(|n| self.cf(n)).collect();
        self.db.flush_cfs_opt(&cfs, &rocksdb::FlushOptions::default())?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
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

    /// A store whose contacts table was written with the earlier hashed memtable (whole-key
    /// prefix extractor, flushed tables and a WAL) opens with today's options and reads every
    /// contact, flushed or not, and no contact it never held.
    #[test]
    fn contacts_written_with_the_hashed_memtable_still_read() {
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
            let cfs = ALL.iter().map(|n| match *n {
                CF_CONTACTS => ColumnFamilyDescriptor::new(*n, hashed()),
                _ => ColumnFamilyDescriptor::new(*n, Options::default()),
            });
            let old = Store::with_db(DB::open_cf_descriptors(&opts, dir.path(), cfs).unwrap());
            let write = |ids: std::ops::Range<i64>| {
                let mut b = WriteBatch::default();
                for i in ids {
                    tables::put_contact(&old, &mut b, &format!("c{i}"), &state(i));
                }
                old.write(b, true).unwrap();
            };
            write(0..500);
            old.db.flush_cf(old.cf(CF_CONTACTS)).unwrap();
            write(500..600); // only in the WAL
        }
        let s = Store::open(dir.path()).unwrap();
        for i in [0, 250, 499, 500, 599] {
            assert_eq!(tables::get_contact(&s, &format!("c{i}")).unwrap(), Some(state(i)));
        }
        assert_eq!(tables::get_contact(&s, "c600").unwrap(), None);
        assert_eq!(tables::contacts(&s).count(), 600);
    }
}
