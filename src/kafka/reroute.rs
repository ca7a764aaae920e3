//! Records found away from home. A producer with another partitioner than `kafka.partitioner`
//! (or none) puts a contact's record on a partition that is not the contact's home; handled
//! there, the contact would have two states. Such a record is forwarded instead: produced again
//! to the events topic, to the home partition, with headers naming its source partition and
//! offset, before the source partition commits past it (so it is never dropped). The copy's
//! timestamp is the time of the forward, when it reached its home: its input time there, and
//! where a replay of the topic places it. Its source may
//! forward it more than once (a crash before that commit, a handover): the home partition keeps,
//! per source partition, the highest source offset it has handled (the `reroutes` table, in the
//! same commits as the state), and drops a copy at or below it (so it is never handled twice).
//!
//! That test is exact because one source partition's copies reach a home partition in source
//! order: one owner forwards at a time, in offset order, through an idempotent producer that
//! never gives up on a record (`message.timeout.ms = 0`) and stops rather than leave a gap
//! (`enable.gapless.guarantee`); a new owner starts again from the last commit, so its copies
//! repeat a prefix before they go further. A failed forward stops the member; its partitions
//! move to another member, which forwards again from the last commit.

use super::{KafkaError, producer_config};
use crate::config::KafkaSettings;
use rdkafka::Message;
use rdkafka::message::{Header, Headers, OwnedHeaders, OwnedMessage};
use rdkafka::producer::{FutureProducer, FutureRecord};
use std::collections::BTreeMap;

/// The headers of a forwarded copy: where the original is.
pub const FROM_PARTITION: &str = "dripline.rerouted.partition";
pub const FROM_OFFSET: &str = "dripline.rerouted.offset";

/// A forward failed: the member stops (see the module's notes).
#[derive(Debug, thiserror::Error)]
#[error("forwarding a record to its home partition failed: {0}")]
pub struct ForwardFailed(pub KafkaError);

/// The source partition and offset of a forwarded copy (`None`: an original).
pub fn origin(m: &OwnedMessage) -> Option<(u16, u64)> {
    let headers = m.headers()?;
    let (mut partition, mut offset) = (None, None);
    for h in headers.iter() {
        let value = || std::str::from_utf8(h.value?).ok();
        match h.key {
            FROM_PARTITION => partition = value().and_then(|v| v.parse().ok()),
            FROM_OFFSET => offset = value().and_then(|v| v.parse().ok()),
            _ => {}
        }
    }
    Some((partition?, offset?))
}

/// Per source partition, the highest source offset of a forwarded copy a home partition handled.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Marks(pub BTreeMap<u16, u64>);

impl Marks {
    /// Whether the copy of (`source`, `offset`) is new here; if so, it is now marked.
    pub fn admit(&mut self, source: u16, offset: u64) -> bool {
        match self.0.get(&source) {
            Some(seen) if *seen >= offset => false,
            _ => {
                self.0.insert(source, offset);
                true
            }
        }
    }
}

/// Forwards records to their home partitions.
pub struct Forwarder {
    producer: FutureProducer,
    topic: String,
}

impl Forwarder {
    pub fn new(k: &KafkaSettings) -> Result<Self, KafkaError> {
        let mut cfg = producer_config(k);
        cfg.set("message.timeout.ms", "0")
            .set("enable.gapless.guarantee", "true");
        Ok(Forwarder {
            producer: cfg.create()?,
            topic: k.events_topic.clone(),
        })
    }

    /// Produces each (home partition, original) and waits until the broker has them all: key
    /// and value as they were, the source headers, and a timestamp of now.
    pub fn forward(&self, records: &[(u16, OwnedMessage)]) -> Result<(), ForwardFailed> {
        let fail = |e| ForwardFailed(KafkaError::Client(e));
        let mut pending = Vec::with_capacity(records.len());
        for (home, m) in records {
            let (partition, offset) = (m.partition().to_string(), m.offset().to_string());
            let headers = OwnedHeaders::new()
                .insert(Header {
                    key: FROM_PARTITION,
                    value: Some(&partition),
                })
                .insert(Header {
                    key: FROM_OFFSET,
                    value: Some(&offset),
                });
            let mut r = FutureRecord::<[u8], [u8]>::to(&self.topic)
                .partition(i32::from(*home))
                .headers(headers);
            if let Some(key) = m.key() {
                r = r.key(key);
            }
            if let Some(v) = m.payload() {
                r = r.payload(v);
            }
            pending.push(self.producer.send_result(r).map_err(|(e, _)| fail(e))?);
        }
        for p in pending {
            futures::executor::block_on(p)
                .map_err(|_| fail(rdkafka::error::KafkaError::Canceled))?
                .map_err(|(e, _)| fail(e))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Copies of one source partition arrive in source order, a restarted source repeating a
    /// prefix: each record is admitted once.
    #[test]
    fn a_repeated_prefix_is_admitted_once() {
        let mut marks = Marks::default();
        let arrivals = [(0, 3), (0, 5), (1, 2), (0, 3), (0, 5), (0, 9), (1, 2), (1, 4)];
        let admitted: Vec<_> = arrivals.iter().filter(|(s, o)| marks.admit(*s, *o)).collect();
        assert_eq!(admitted, [&(0, 3), &(0, 5), &(1, 2), &(0, 9), &(1, 4)]);
        assert_eq!(marks.0, BTreeMap::from([(0, 9), (1, 4)]));
    }

    #[test]
    fn the_origin_is_read_from_the_headers() {
        let headers = OwnedHeaders::new()
            .insert(Header {
                key: FROM_PARTITION,
                value: Some("3"),
            })
            .insert(Header {
                key: FROM_OFFSET,
                value: Some("1234"),
            });
        let m = |h: Option<OwnedHeaders>| {
            OwnedMessage::new(None, None, "t".into(), rdkafka::Timestamp::NotAvailable, 0, 0, h)
        };
        assert_eq!(origin(&m(Some(headers))), Some((3, 1234)));
        assert_eq!(origin(&m(None)), None);
    }
}
