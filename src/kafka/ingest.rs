//! HTTP ingest with Kafka configured: valid events are produced to the events topic (key = the
//! contact id; value = the event as received) by an idempotent acks=all producer, each to its
//! contact's home partition set explicitly (see [`super::partitioner`]), so a contact's events
//! stay in order in one partition whatever librdkafka's own partitioner is; acknowledged once the
//! broker has them. Everything the engine emits (delivery results, engagement, enrolments,
//! control records) comes this way too.

use super::{KafkaError, producer_config};
use crate::config::{KafkaSettings, Partitioner};
use crate::event::Event;
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};

pub struct KafkaIngest {
    producer: FutureProducer,
    topic: String,
    partitions: usize,
    partitioner: Partitioner,
}

impl KafkaIngest {
    pub fn new(settings: &KafkaSettings) -> Result<Self, KafkaError> {
        let producer: FutureProducer = producer_config(settings).create()?;
        // Fail at start, not at the first request, when the topic is missing.
        let partitions = super::partition_count(producer.client(), &settings.events_topic)?;
        Ok(KafkaIngest {
            producer,
            topic: settings.events_topic.clone(),
            partitions,
            partitioner: settings.partitioner,
        })
    }

    /// The events topic's partition count.
    pub fn partitions(&self) -> usize {
        self.partitions
    }

    /// Produces each (event, raw JSON) and waits for every acknowledgement.
    pub fn produce_all(&self, events: &[(&Event, &[u8])], received: i64) -> Result<(), KafkaError> {
        let pending: Vec<_> = events
            .iter()
            .map(|(ev, raw)| {
                let home = super::partitioner::home(self.partitioner, ev.user_id.as_bytes(), self.partitions);
                let r = FutureRecord::to(&self.topic)
                    .key(ev.user_id.as_bytes())
                    .payload(*raw)
                    .timestamp(received)
                    .partition(i32::from(home));
                self.producer.send_result(r).map_err(|(e, _)| e)
            })
            .collect();
        for p in pending {
            let delivery = futures::executor::block_on(p?)
                .map_err(|_| KafkaError::Client(rdkafka::error::KafkaError::Canceled))?;
            delivery.map_err(|(e, _)| e)?;
        }
        Ok(())
    }
}

impl crate::runtime::Producer for KafkaIngest {
    fn produce(&self, events: &[(&Event, &[u8])], received: i64) -> anyhow::Result<()> {
        Ok(self.produce_all(events, received)?)
    }

    fn partitions(&self) -> usize {
        self.partitions
    }
}
