//! Prometheus metrics, named by convention: `dripline_` prefix, base units, `_total` counters.
//! Labels never carry contact ids or addresses.

use prometheus::{
    GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
};

pub struct Metrics {
    pub registry: Registry,
    pub events_ingested: IntCounter,
    pub events_rejected: IntCounterVec,
    pub http_unauthorized: IntCounterVec,
    pub feedback_events: IntCounterVec,
    pub contacts_erased: IntCounter,
    pub ledger_commit: Histogram,
    pub ready: IntGauge,
    pub partition_failures: IntCounterVec,
    pub inputs_processed: IntCounter,
    pub processing_latency: Histogram,
    pub batch_size: Histogram,
    pub contacts_cached: IntGaugeVec,
    pub log_lag_records: IntGaugeVec,
    pub timers_fired: IntCounter,
    pub timer_lateness: Histogram,
    pub timers_pending: IntGauge,
    pub outbox_depth: IntGauge,
    pub sends_decided: IntCounterVec,
    pub sends: IntCounterVec,
    pub webhooks_decided: IntCounterVec,
    pub webhook_calls: IntCounterVec,
    pub render_errors: IntCounter,
    pub rocksdb_write: Histogram,
    pub log_append: Histogram,
    pub transport_latency: HistogramVec,
    pub mail_rate_limit: prometheus::Gauge,
    pub mail_deliveries: IntCounterVec,
    pub mail_rate_wait: Histogram,
    pub mail_retries: IntCounter,
    pub mail_outbox_oldest: prometheus::Gauge,
    pub smtp_connections: IntGauge,
    pub mail_feedback: IntCounterVec,
    pub kafka_assigned_partitions: IntGauge,
    pub kafka_rebalances: IntCounter,
    pub kafka_rejoins: IntCounter,
    pub kafka_changelog_records: IntCounter,
    pub kafka_lag_records: IntGaugeVec,
    pub kafka_lag_seconds: GaugeVec,
    pub kafka_restore_records: IntCounter,
    pub kafka_restore_seconds: Histogram,
    pub kafka_changelog_produce: Histogram,
    pub kafka_dead_letters: IntCounterVec,
    pub kafka_rerouted: IntCounter,
    pub workflow_steps: IntCounterVec,
    pub kafka_changelog_foreign: IntCounter,
}

fn latency_buckets() -> Vec<f64> {
    prometheus::exponential_buckets(0.0005, 2.0, 16).expect("valid buckets")
}

impl Metrics {
    pub fn new() -> Metrics {
        let registry = Registry::new();
        // The process's own resident memory, CPU time, threads and file descriptors, under the
        // Prometheus conventional `process_*` names (read from /proc at each scrape).
        #[cfg(target_os = "linux")]
        registry
            .register(Box::new(prometheus::process_collector::ProcessCollector::for_self()))
            .expect("the process collector registers once");
        macro_rules! reg {
            ($m:expr) => {{
                let m = $m;
                registry
                    .register(Box::new(m.clone()))
                    .expect("metric names are unique");
                m
            }};
        }
        let m = Metrics {
            events_ingested: reg!(
                IntCounter::new("dripline_events_ingested_total", "Events appended to the log").unwrap()
            ),
            events_rejected: reg!(
                IntCounterVec::new(
                    Opts::new("dripline_events_rejected_total", "Events refused at ingest, by reason"),
                    &["reason"]
                )
                .unwrap()
            ),
            http_unauthorized: reg!(
                IntCounterVec::new(
                    Opts::new(
                        "dripline_http_unauthorized_total",
                        "Requests refused for a missing or wrong key, by what they needed"
                    ),
                    &["access"]
                )
                .unwrap()
            ),
            feedback_events: reg!(
                IntCounterVec::new(
                    Opts::new(
                        "dripline_feedback_events_total",
                        "Delivery, engagement and unsubscribe events received for the log (before the messageId \
                         dedup), by event name: from the mailer, tracking links and the admin feedback endpoint"
                    ),
                    &["event"]
                )
                .unwrap()
            ),
            contacts_erased: reg!(
                IntCounter::new("dripline_contacts_erased_total", "Contacts erased (GDPR) by their partition").unwrap()
            ),
            ledger_commit: reg!(
                Histogram::with_opts(
                    HistogramOpts::new(
                        "dripline_mail_ledger_commit_seconds",
                        "Group commits of accepted messages to the sent ledger (fsynced)"
                    )
                    .buckets(latency_buckets())
                )
                .unwrap()
            ),
            ready: reg!(IntGauge::new("dripline_ready", "1 while /readyz answers ready, else 0").unwrap()),
            partition_failures: reg!(
                IntCounterVec::new(
                    Opts::new(
                        "dripline_partition_failures_total",
                        "Polls of a partition that failed (it is left for 500 ms and tried again)"
                    ),
                    &["partition"]
                )
                .unwrap()
            ),
            inputs_processed: reg!(
                IntCounter::new(
                    "dripline_inputs_processed_total",
                    "Inputs (events and timers) run through the state machine"
                )
                .unwrap()
            ),
            processing_latency: reg!(
                Histogram::with_opts(
                    HistogramOpts::new("dripline_processing_latency_seconds", "From log append to the commit of the event's effects")
                        .buckets(latency_buckets())
                )
                .unwrap()
            ),
            batch_size: reg!(
                Histogram::with_opts(
                    HistogramOpts::new("dripline_batch_inputs", "Inputs per committed batch")
                        .buckets(prometheus::exponential_buckets(1.0, 4.0, 8).unwrap())
                )
                .unwrap()
            ),
            contacts_cached: reg!(
                IntGaugeVec::new(
                    Opts::new("dripline_contacts_cached", "Contact states held in memory"),
                    &["partition"]
                )
                .unwrap()
            ),
            log_lag_records: reg!(
                IntGaugeVec::new(
                    Opts::new(
                        "dripline_log_lag_records",
                        "Records in the embedded log not yet handled by their partition (as of the scrape)"
                    ),
                    &["partition"]
                )
                .unwrap()
            ),
            timers_fired: reg!(IntCounter::new("dripline_timers_fired_total", "Durable timers fired").unwrap()),
            timer_lateness: reg!(
                Histogram::with_opts(
                    HistogramOpts::new(
                        "dripline_timer_lateness_seconds",
                        "Wall-clock delay past a timer's due time"
                    )
                    .buckets(latency_buckets())
                )
                .unwrap()
            ),
            timers_pending: reg!(IntGauge::new("dripline_timers_pending", "Durable timers stored (estimate)").unwrap()),
            outbox_depth: reg!(
                IntGauge::new("dripline_outbox_depth", "Messages waiting for a transport (exact)").unwrap()
            ),
            sends_decided: reg!(
                IntCounterVec::new(
                    Opts::new("dripline_sends_decided_total", "Emails decided by workflows"),
                    &["workflow"]
                )
                .unwrap()
            ),
            sends: reg!(
                IntCounterVec::new(
                    Opts::new("dripline_sends_total", "Emails handed to a transport, by result"),
                    &["workflow", "result"]
                )
                .unwrap()
            ),
            webhooks_decided: reg!(
                IntCounterVec::new(
                    Opts::new("dripline_webhooks_decided_total", "Webhook steps reached"),
                    &["workflow"]
                )
                .unwrap()
            ),
            webhook_calls: reg!(
                IntCounterVec::new(
                    Opts::new(
                        "dripline_webhook_calls_total",
                        "Webhook calls answered, by result: delivered (2xx), retried (5xx, 408, 429, no answer), failed"
                    ),
                    &["result"]
                )
                .unwrap()
            ),
            render_errors: reg!(
                IntCounter::new("dripline_render_errors_total", "Templates that failed to render").unwrap()
            ),
            rocksdb_write: reg!(
                Histogram::with_opts(
                    HistogramOpts::new(
                        "dripline_rocksdb_write_seconds",
                        "Write latency of a partition's commit (one RocksDB batch into the state tables)"
                    )
                    .buckets(latency_buckets())
                )
                .unwrap()
            ),
            log_append: reg!(
                Histogram::with_opts(
                    HistogramOpts::new(
                        "dripline_log_append_seconds",
                        "Latency of an append to the embedded log, fsync included: what an ingest request waits for after parsing"
                    )
                    .buckets(latency_buckets())
                )
                .unwrap()
            ),
            transport_latency: reg!(
                HistogramVec::new(
                    HistogramOpts::new(
                        "dripline_transport_latency_seconds",
                        "Time to hand one message to the transport"
                    )
                    .buckets(latency_buckets()),
                    &["transport"]
                )
                .unwrap()
            ),
            mail_rate_limit: reg!(
                prometheus::Gauge::new(
                    "dripline_mail_rate_limit_messages_per_second",
                    "This instance's share of mail.rate.per_second (0: no limit)"
                )
                .unwrap()
            ),
            mail_deliveries: reg!(
                IntCounterVec::new(
                    Opts::new(
                        "dripline_mail_deliveries_total",
                        "Delivery attempts by result and recipient domain (a domain of mail.rate.domains, else `other`)"
                    ),
                    &["result", "domain"]
                )
                .unwrap()
            ),
            mail_rate_wait: reg!(
                Histogram::with_opts(
                    HistogramOpts::new(
                        "dripline_mail_rate_limit_wait_seconds",
                        "Time a message waited for the send rate limiter"
                    )
                    .buckets(latency_buckets())
                )
                .unwrap()
            ),
            mail_retries: reg!(
                IntCounter::new(
                    "dripline_mail_retries_total",
                    "Deferred (4xx) messages scheduled for another attempt"
                )
                .unwrap()
            ),
            mail_outbox_oldest: reg!(
                prometheus::Gauge::new(
                    "dripline_mail_outbox_oldest_age_seconds",
                    "Age of the oldest message waiting in the outbox (0: empty)"
                )
                .unwrap()
            ),
            smtp_connections: reg!(
                IntGauge::new(
                    "dripline_smtp_connections_open",
                    "Open SMTP connections of the mailer pool"
                )
                .unwrap()
            ),
            mail_feedback: reg!(
                IntCounterVec::new(
                    Opts::new(
                        "dripline_mail_feedback_events_total",
                        "Unsubscribes, opens and clicks received through signed links"
                    ),
                    &["kind"]
                )
                .unwrap()
            ),
            kafka_assigned_partitions: reg!(
                IntGauge::new(
                    "dripline_kafka_assigned_partitions",
                    "Events-topic partitions this instance owns"
                )
                .unwrap()
            ),
            kafka_rebalances: reg!(
                IntCounter::new("dripline_kafka_rebalances_total", "Consumer-group rebalances seen").unwrap()
            ),
            kafka_changelog_records: reg!(
                IntCounter::new(
                    "dripline_kafka_changelog_records_total",
                    "Records published to the changelog (the last change of each key per batch)"
                )
                .unwrap()
            ),
            kafka_rejoins: reg!(
                IntCounter::new(
                    "dripline_kafka_rejoins_total",
                    "Times this member left and joined its group again, being its only member but not owning every partition"
                )
                .unwrap()
            ),
            kafka_lag_records: reg!(
                IntGaugeVec::new(
                    Opts::new(
                        "dripline_kafka_consumer_lag_records",
                        "Records behind the partition's end"
                    ),
                    &["partition"]
                )
                .unwrap()
            ),
            kafka_lag_seconds: reg!(
                GaugeVec::new(
                    Opts::new(
                        "dripline_kafka_consumer_lag_seconds",
                        "Age of the last record handled while behind (0 when caught up)"
                    ),
                    &["partition"]
                )
                .unwrap()
            ),
            kafka_restore_records: reg!(
                IntCounter::new(
                    "dripline_kafka_restore_records_total",
                    "Changelog records applied while restoring partitions"
                )
                .unwrap()
            ),
            kafka_restore_seconds: reg!(
                Histogram::with_opts(
                    HistogramOpts::new("dripline_kafka_restore_seconds", "Time to restore one partition")
                        .buckets(prometheus::exponential_buckets(0.01, 4.0, 10).unwrap())
                )
                .unwrap()
            ),
            kafka_changelog_produce: reg!(
                Histogram::with_opts(
                    HistogramOpts::new(
                        "dripline_kafka_changelog_produce_seconds",
                        "Publishing one committed batch to the changelog, until acknowledged"
                    )
                    .buckets(latency_buckets())
                )
                .unwrap()
            ),
            kafka_dead_letters: reg!(
                IntCounterVec::new(
                    Opts::new(
                        "dripline_kafka_dead_letters_total",
                        "Records sent to the dead-letter topic"
                    ),
                    &["reason"]
                )
                .unwrap()
            ),
            workflow_steps: reg!(
                IntCounterVec::new(
                    Opts::new(
                        "dripline_workflow_step_total",
                        "Contacts through each workflow step, by outcome (entered, exited, converted, holdout, sent, suppressed, capped, no_address, opened, clicked)"
                    ),
                    &["workflow", "step", "outcome"]
                )
                .unwrap()
            ),
            kafka_rerouted: reg!(
                IntCounter::new(
                    "dripline_kafka_rerouted_total",
                    "Records found on another partition than their contact's home, forwarded there"
                )
                .unwrap()
            ),
            kafka_changelog_foreign: reg!(
                IntCounter::new(
                    "dripline_kafka_changelog_foreign_contacts_total",
                    "Contact records a restore met on another partition than the contact's home"
                )
                .unwrap()
            ),
            registry,
        };
        // Series whose label values are known up front start at 0, so a scrape shows them
        // before their first event and `rate()` sees that first increment.
        for reason in [
            "invalid_json",
            "not_an_object",
            "missing_field",
            "wrong_type",
            "unknown_type",
            "bad_timestamp",
            "reserved_event",
            "duplicate",
            "unreadable_record",
        ] {
            m.events_rejected.with_label_values(&[reason]);
        }
        for access in ["ingest", "admin", "metrics"] {
            m.http_unauthorized.with_label_values(&[access]);
        }
        for result in ["delivered", "retried", "failed"] {
            m.webhook_calls.with_label_values(&[result]);
        }
        for kind in ["unsubscribed", "opened", "clicked"] {
            m.mail_feedback.with_label_values(&[kind]);
        }
        m
    }

    /// Starts the per-workflow series at 0 (their label values are the workflow ids).
    pub fn init_workflows<'a>(&self, ids: impl IntoIterator<Item = &'a str>) {
        for id in ids {
            self.sends_decided.with_label_values(&[id]);
            self.webhooks_decided.with_label_values(&[id]);
        }
    }

    /// The text exposition format for `GET /metrics`.
    pub fn render(&self) -> String {
        use prometheus::Encoder;
        let mut buf = vec![];
        prometheus::TextEncoder::new()
            .encode(&self.registry.gather(), &mut buf)
            .expect("text encoding");
        String::from_utf8(buf).expect("utf-8")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
