//! Scale-out on Kafka. Kafka is the distributed engine; dripline adds no coordination service.
//! As in Kafka Streams, each partition of the events topic is owned by one instance of the
//! consumer group, with that partition's state in the instance's RocksDB and every change
//! mirrored to a changelog topic (same partition count), from which a new owner restores it.
//!
//! - [`consumer`]: the group member that feeds each assigned partition to its processor, moves
//!   partitions on rebalance and sends unreadable records to the dead-letter topic;
//! - [`changelog`]: the commit hook that publishes each batch before it is written locally, and
//!   the restore of a partition whose local state is behind;
//! - [`dedup`]: the messageId window of a partition, rebuilt from the topic on take-over;
//! - [`history`]: an events topic and the changelog's sent ledger read back for replay;
//! - [`ingest`]: HTTP ingest producing to the events topic;
//! - [`partitioner`]: a contact's home partition, as the producers' partitioner gives it;
//! - [`reroute`]: records found away from their contact's home partition, forwarded there.

pub mod changelog;
pub mod consumer;
pub mod dedup;
pub mod history;
pub mod ingest;
pub mod partitioner;
pub mod reroute;

use crate::config::KafkaSettings;
use rdkafka::ClientConfig;

#[derive(Debug, thiserror::Error)]
pub enum KafkaError {
    #[error("kafka: {0}")]
    Client(#[from] rdkafka::error::KafkaError),
    #[error("topic `{topic}`: {reason}")]
    Topic { topic: String, reason: String },
}

/// The base client configuration: brokers plus the user's extra properties.
pub fn client_config(k: &KafkaSettings) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &k.brokers);
    user_properties(k, &mut c);
    c
}

/// The user's properties, applied last so they override ours. Keys may be written with
/// underscores (environment variables cannot carry dots): librdkafka's names never contain one.
fn user_properties(k: &KafkaSettings, c: &mut ClientConfig) {
    for (key, value) in &k.client {
        c.set(key.replace('_', "."), value);
    }
}

/// Idempotent, acks=all: an acknowledged record is on every in-sync replica exactly once.
pub fn producer_config(k: &KafkaSettings) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &k.brokers)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "2")
        .set("message.timeout.ms", "30000");
    user_properties(k, &mut c);
    c
}

/// The partition count of a topic, from the cluster's metadata.
pub fn partition_count<C: rdkafka::client::ClientContext>(
    client: &rdkafka::client::Client<C>,
    topic: &str,
) -> Result<usize, KafkaError> {
    let md = client.fetch_metadata(Some(topic), std::time::Duration::from_secs(10))?;
    let t = md
        .topics()
        .iter()
        .find(|t| t.name() == topic)
        .ok_or_else(|| KafkaError::Topic {
            topic: topic.into(),
            reason: "not in the cluster's metadata".into(),
        })?;
    if let Some(e) = t.error() {
        return Err(KafkaError::Topic {
            topic: topic.into(),
            reason: format!("{e:?} (create it first; see the README)"),
        });
    }
    Ok(t.partitions().len())
}

/// Opens the engine for these settings: on Kafka when `kafka.brokers` is set (the events topic's
/// producer, the changelog as the commit hook, and the consumer-group member plugged in; the
/// topics checked first), else on the embedded log.
pub fn open_engine(settings: &crate::config::Settings) -> anyhow::Result<crate::runtime::Engine> {
    use crate::runtime::{Cluster, Engine};
    if !settings.kafka.enabled() {
        return Engine::open(settings);
    }
    let build = |store: &std::sync::Arc<crate::storage::Store>,
                 metrics: &std::sync::Arc<crate::metrics::Metrics>|
     -> anyhow::Result<Cluster> {
        let k = &settings.kafka;
        let producer = ingest::KafkaIngest::new(k)?;
        let n = producer.partitions();
        let changelog = changelog::Changelog::new(k, store.clone(), metrics.clone(), n)?;
        changelog.check_topics(n)?;
        let changelog = std::sync::Arc::new(changelog);
        let (hook, theirs) = (changelog.clone(), settings.clone());
        Ok(Cluster {
            producer: Box::new(producer),
            hook,
            consumer: Box::new(move |engine, stop| consumer::run(engine, &theirs, changelog, stop)),
        })
    };
    Engine::open_with(settings, Some(&build))
}
