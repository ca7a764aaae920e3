//! The messageId window of an events-topic partition, rebuilt from the topic when an instance
//! takes the partition over: the ids of the records just before the stored position, so a
//! client's retry of an event that was processed before a restart or a handover is still
//! dropped (the embedded log does the same from its own tail).

use super::{KafkaError, client_config};
use crate::config::KafkaSettings;
use crate::storage::log::{Window, id_hash};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Message, Offset, TopicPartitionList};
use std::borrow::Cow;
use std::time::{Duration, Instant};

/// Just the id of a Segment event (the rest is not decoded).
#[derive(serde::Deserialize)]
struct Id<'a> {
    #[serde(rename = "messageId", borrow)]
    message_id: Option<Cow<'a, str>>,
}

/// A window of `capacity` ids holding those of the (up to) `read` records before `next`.
pub fn rebuild(
    k: &KafkaSettings,
    partition: u16,
    next: u64,
    capacity: usize,
    read: usize,
) -> Result<Window, KafkaError> {
    let mut window = Window::new(capacity);
    if next == 0 || read == 0 {
        return Ok(window);
    }
    let topic = &k.events_topic;
    let mut cfg = client_config(k);
    cfg.set("group.id", format!("{}.dedup", k.group_id))
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "true");
    let consumer: BaseConsumer = cfg.create()?;
    let (low, _) = consumer.fetch_watermarks(topic, partition as i32, Duration::from_secs(10))?;
    let from = (next as i64 - read as i64).max(low);
    if from >= next as i64 {
        return Ok(window);
    }
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, partition as i32, Offset::Offset(from))?;
    consumer.assign(&tpl)?;
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut last = from - 1;
    while last + 1 < next as i64 {
        if Instant::now() > deadline {
            return Err(KafkaError::Topic {
                topic: topic.clone(),
                reason: format!("reading messageIds of partition {partition} stalled at offset {last}"),
            });
        }
        match consumer.poll(Duration::from_millis(500)) {
            None | Some(Err(rdkafka::error::KafkaError::PartitionEOF(_))) => {}
            Some(Err(e)) => return Err(e.into()),
            Some(Ok(m)) => {
                last = m.offset();
                if last >= next as i64 {
                    break;
                }
                let id = m.payload().and_then(|p| serde_json::from_slice::<Id>(p).ok());
                if let Some(id) = id.and_then(|i| i.message_id) {
                    window.insert(id_hash(&id));
                }
            }
        }
    }
    Ok(window)
}
