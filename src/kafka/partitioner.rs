//! A contact's home partition: the one partition of the events topic where its records are
//! processed and its state lives. It is what a producer's partitioner gives for the contact id
//! as the record key, so events produced by the users' own pipelines land there directly:
//! murmur2 as Kafka's Java client computes it (the default of the Java producer, Kafka Connect,
//! Kafka Streams and franz-go), or librdkafka's CRC-32 (`consistent_random`). A control record
//! names its partition in its id. Everything dripline produces is sent to the home partition
//! explicitly; a record found elsewhere is forwarded there by the consumer.

use crate::config::Partitioner;

/// The partition `key` goes to under `partitioner`, among `partitions`.
pub fn partition(partitioner: Partitioner, key: &[u8], partitions: usize) -> u16 {
    let n = partitions.max(1) as u32;
    let p = match partitioner {
        // `Utils.toPositive(Utils.murmur2(key)) % numPartitions` (Java's BuiltInPartitioner).
        Partitioner::Murmur2 => (murmur2::murmur2(key, murmur2::KAFKA_SEED) & 0x7fff_ffff) % n,
        // `rd_crc32(key) % partition_cnt` (librdkafka's rd_kafka_msg_partitioner_consistent).
        Partitioner::Crc32 => crc32fast::hash(key) % n,
    };
    p as u16
}

/// The home partition of the contact (or control record) with this id.
pub fn home(partitioner: Partitioner, user_id: &[u8], partitions: usize) -> u16 {
    match crate::event::control_partition(user_id) {
        Some(p) => p % partitions.max(1) as u16,
        None => partition(partitioner, user_id, partitions),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rdkafka::ClientConfig;
    use rdkafka::mocking::MockCluster;
    use rdkafka::producer::{FutureProducer, FutureRecord};
    use std::time::Duration;

    /// The hashes Kafka's own `UtilsTest.testMurmur2` asserts for the Java client.
    #[test]
    fn murmur2_matches_the_java_clients_test_vectors() {
        let cases: [(&[u8], i32); 6] = [
            (b"21", -973932308),
            (b"foobar", -790332482),
            (b"a-little-bit-long-string", -985981536),
            (b"a-little-bit-longer-string", -1486304829),
            (b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8", -58897971),
            (b"abc", 479470107),
        ];
        for (key, java) in cases {
            assert_eq!(
                murmur2::murmur2(key, murmur2::KAFKA_SEED) as i32,
                java,
                "{}",
                String::from_utf8_lossy(key)
            );
            let expected = ((java & 0x7fff_ffff) % 12) as u16;
            assert_eq!(partition(Partitioner::Murmur2, key, 12), expected);
        }
    }

    /// librdkafka itself (against its mock cluster) puts each key on the partition computed here,
    /// with its `murmur2_random` and `consistent_random` partitioners.
    #[test]
    fn librdkafka_puts_each_key_where_we_compute_it() {
        let cluster = MockCluster::new(1).unwrap();
        cluster.create_topic("t", 7, 1).unwrap();
        for (name, ours) in [
            ("murmur2_random", Partitioner::Murmur2),
            ("consistent_random", Partitioner::Crc32),
        ] {
            let producer: FutureProducer = ClientConfig::new()
                .set("bootstrap.servers", cluster.bootstrap_servers())
                .set("partitioner", name)
                .create()
                .unwrap();
            for i in 0..200 {
                let key = format!("user-{i}-{}", "é".repeat(i % 5));
                let sent = futures::executor::block_on(
                    producer.send(FutureRecord::to("t").key(&key).payload("x"), Duration::from_secs(10)),
                )
                .unwrap();
                assert_eq!(
                    sent.partition as u16,
                    partition(ours, key.as_bytes(), 7),
                    "{name} {key}"
                );
            }
        }
    }

    #[test]
    fn a_control_record_goes_to_the_partition_it_names() {
        let id = crate::event::control_user(5);
        assert_eq!(home(Partitioner::Murmur2, id.as_bytes(), 8), 5);
        assert_eq!(home(Partitioner::Crc32, id.as_bytes(), 8), 5);
    }
}
