//! Settings, layered with the `config` crate: `config/default.toml` (compiled in), then an
//! optional `--config FILE`, then `DRIPLINE__SECTION__KEY` environment variables. Relative paths
//! a config file sets resolve against that file's directory.

use crate::workflow::{FrequencyCap, Policy, duration};
use serde::Deserialize;
use std::path::PathBuf;

pub const DEFAULT_TOML: &str = include_str!("../config/default.toml");

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    pub workflows: WorkflowSettings,
    pub policy: PolicySettings,
    pub mail: MailSettings,
    pub engine: EngineSettings,
    pub http: HttpSettings,
    pub admin: AdminSettings,
    pub dead_letters: DeadLetterSettings,
    pub kafka: KafkaSettings,
    pub webhook: WebhookSettings,
    /// Named webhook endpoints (`[webhooks.sms]`): what a step's `endpoint:` refers to, so URLs,
    /// credentials and signing secrets stay out of workflow files.
    #[serde(default)]
    pub webhooks: std::collections::BTreeMap<String, WebhookEndpoint>,
}

/// The webhook transport: how outbound calls of `webhook` steps are made.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookSettings {
    /// A request not answered within this is retried (like a 5xx).
    pub timeout: String,
    /// Requests in flight at once to one host.
    pub concurrency_per_host: usize,
    /// Requests per second to one host (0: no limit).
    pub rate_per_host: f64,
    /// PEM file of extra CA certificates to trust besides the system's roots.
    pub ca_file: PathBuf,
    /// Signing secret for steps that give a `url` instead of an endpoint (`whsec_…`; empty:
    /// such requests are not signed).
    pub secret: String,
}

/// One named endpoint.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookEndpoint {
    pub url: String,
    /// Standard Webhooks signing secret, `whsec_` and base64 (empty: `webhook.secret`).
    #[serde(default)]
    pub secret: String,
    /// Headers sent with every request to it (credentials such as `Authorization`).
    #[serde(default)]
    pub headers: std::collections::BTreeMap<String, String>,
}

/// Keys read from the environment as comma-separated lists (`DRIPLINE__HTTP__WRITE_KEYS=a,b`).
const LIST_KEYS: [&str; 4] = [
    "http.write_keys",
    "admin.tokens",
    "admin.metrics_tokens",
    "mail.previous_secrets",
];

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaSettings {
    /// Empty: the embedded log. Otherwise `host:port,…` and the engine joins a consumer group.
    pub brokers: String,
    pub group_id: String,
    pub events_topic: String,
    pub changelog_topic: String,
    pub dead_letter_topic: String,
    /// Timers fire on the wall clock only up to now minus this, while a partition is idle.
    pub idle_timer_grace: String,
    /// How a contact id maps to its home partition (see `crate::kafka::partitioner`).
    pub partitioner: Partitioner,
    /// Extra librdkafka properties for every client (`security.protocol`, `sasl.*`, …).
    #[serde(default)]
    pub client: std::collections::BTreeMap<String, String>,
}

/// A Kafka partitioner, as producers name it: a contact's records are processed on the partition
/// it gives for the contact id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Partitioner {
    /// The Java client's default (also Kafka Connect, Kafka Streams, franz-go, librdkafka's
    /// `murmur2_random`).
    Murmur2,
    /// librdkafka's default, `consistent_random` (CRC-32).
    Crc32,
}

impl KafkaSettings {
    pub fn enabled(&self) -> bool {
        !self.brokers.trim().is_empty()
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EngineSettings {
    pub data_dir: PathBuf,
    pub partitions: u16,
    pub workers: usize,
    /// Nice value of the worker threads (0–19; 0: as the rest of the process).
    pub worker_nice: i32,
    /// A worker with nothing of its own partitions left to do helps with the others' (see
    /// [`crate::runtime::Engine::pump_worker`]); false pins each partition to its worker.
    pub share_partitions: bool,
    pub cache_contacts_per_partition: usize,
    pub batch: usize,
    /// A `messageId` seen among the last this-many accepted events is dropped as a repeat.
    pub dedup_window: usize,
    /// A busy partition commits every this-many inputs or this often, whichever comes first.
    pub checkpoint_inputs: usize,
    pub checkpoint_interval: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpSettings {
    /// The private listener: ingest, the admin API and metrics.
    pub listen: String,
    /// The public listener: only the links recipients reach (unsubscribe, preference page,
    /// open pixel, click redirect). The same address as `listen` serves everything on one port,
    /// for use behind a proxy that filters paths.
    pub public_listen: String,
    /// Segment write keys accepted on ingest (several, for rotation). Empty: a key generated at
    /// the first start and stored in the data directory (see [`crate::auth`]).
    #[serde(default)]
    pub write_keys: Vec<String>,
    /// Ingest without a key. Off unless set explicitly.
    pub allow_unauthenticated: bool,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminSettings {
    /// Bearer tokens for `/admin/v1/` (and `/metrics`). Empty: one generated at the first start
    /// and stored in the data directory.
    #[serde(default)]
    pub tokens: Vec<String>,
    /// Bearer tokens accepted on `GET /metrics` only (for Prometheus).
    #[serde(default)]
    pub metrics_tokens: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeadLetterSettings {
    /// A dead letter keeps at most this many bytes of its payload.
    pub max_payload_bytes: usize,
    /// Dead letters older than this are purged (by the running engine, hourly).
    pub retention: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkflowSettings {
    pub dir: PathBuf,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicySettings {
    pub default_timezone: String,
    pub quiet_hours: String,
    pub frequency_cap: CapSettings,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CapSettings {
    pub enabled: bool,
    pub max: u32,
    pub window: String,
    pub on_exceed: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MailSettings {
    pub from: String,
    pub message_id_domain: String,
    pub outbox_dir: PathBuf,
    pub transport: String,
    /// Base URL recipients reach this engine's HTTP server at (unsubscribe and tracking links).
    pub public_url: String,
    /// Key of the link tokens (unsubscribe, preference page, tracking): at least 32 bytes.
    /// Empty: one generated at the first start and stored in the data directory (required in
    /// Kafka mode, where every instance must share it).
    pub secret: String,
    /// Secrets of before a rotation: links they made still verify; new links use `secret`.
    #[serde(default)]
    pub previous_secrets: Vec<String>,
    /// `mailto:` address of the `List-Unsubscribe` header.
    pub unsubscribe_mailto: String,
    /// A message larger than this is refused (dead letter with the reason), never sent.
    pub max_message_bytes: usize,
    /// The sender part of the `Feedback-ID` header (Gmail's feedback loop); empty: no header.
    pub feedback_id_sender: String,
    /// Delivery results become events in the contact's stream (`Email Delivered`, …).
    pub delivery_events: bool,
    pub smtp: SmtpSettings,
    pub rate: RateSettings,
    pub warmup: WarmupSettings,
    pub retry: RetrySettings,
    pub tracking: TrackingSettings,
    pub dkim: DkimSettings,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SmtpSettings {
    pub host: String,
    pub port: u16,
    /// `none`, `starttls` (upgrade after EHLO, required) or `tls` (implicit TLS, port 465).
    pub tls: String,
    pub username: String,
    pub password: String,
    /// Persistent connections (one mailer actor each).
    pub connections: usize,
    pub timeout: String,
    /// EHLO name; empty: this host's name.
    pub hello_name: String,
    /// Extra trusted root certificates (PEM) for the server's TLS certificate, e.g. a private
    /// relay's own CA; empty: the public web PKI roots only.
    pub ca_file: PathBuf,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateSettings {
    /// Messages per second across every instance (0: no limit). In Kafka mode each instance
    /// takes the share of the partitions it owns, as for every limit below.
    pub per_second: f64,
    /// Quotas per clock hour and UTC day (0: none).
    pub per_hour: u64,
    pub per_day: u64,
    /// Messages per second to one recipient domain not listed in `domains` (0: no limit).
    pub default_domain_per_second: f64,
    /// Messages per second per recipient domain, e.g. `"gmail.com" = 50`.
    #[serde(default)]
    pub domains: std::collections::BTreeMap<String, f64>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WarmupSettings {
    /// First day (YYYY-MM-DD, UTC) of sending from a new IP; empty: no warm-up.
    pub start: String,
    /// Most messages on day 1, 2, …; past the last day the warm-up is over.
    pub daily: Vec<u64>,
    /// At most this share of the day's allowance in one hour.
    pub hour_share: f64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetrySettings {
    /// First retry delay after a 4xx; doubles per attempt up to `max`, with full jitter.
    pub initial: String,
    pub max: String,
    /// Still deferred this long after the first attempt: a soft bounce.
    pub max_age: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrackingSettings {
    /// An open pixel in HTML bodies.
    pub opens: bool,
    /// Links in HTML bodies rewritten through signed click redirects.
    pub clicks: bool,
    /// The pixel goes only into HTML that has an image already or at least this many
    /// characters of text: below it a lone image is what spam filters score.
    pub pixel_min_text: usize,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DkimSettings {
    /// Empty: no DKIM signature.
    pub selector: String,
    pub domain: String,
    /// PEM private key (RSA PKCS#1 or, with `algorithm = "ed25519"`, the raw base64 key).
    pub private_key_file: PathBuf,
    pub algorithm: String,
}

/// The parsed sending limits (durations in milliseconds).
#[derive(Debug, Clone)]
pub struct MailTiming {
    pub smtp_timeout: std::time::Duration,
    pub retry_initial: i64,
    pub retry_max: i64,
    pub retry_max_age: i64,
    pub warmup_start: Option<chrono::NaiveDate>,
}

impl MailSettings {
    pub fn timing(&self) -> Result<MailTiming, ConfigError> {
        let d = |key: &'static str, v: &str| duration::parse(v).map_err(|reason| ConfigError::Invalid { key, reason });
        let warmup_start = if self.warmup.start.trim().is_empty() {
            None
        } else {
            Some(
                chrono::NaiveDate::parse_from_str(self.warmup.start.trim(), "%Y-%m-%d").map_err(|e| {
                    ConfigError::Invalid {
                        key: "mail.warmup.start",
                        reason: format!("`{}` is not YYYY-MM-DD: {e}", self.warmup.start),
                    }
                })?,
            )
        };
        Ok(MailTiming {
            smtp_timeout: std::time::Duration::from_millis(d("mail.smtp.timeout", &self.smtp.timeout)? as u64),
            retry_initial: d("mail.retry.initial", &self.retry.initial)?,
            retry_max: d("mail.retry.max", &self.retry.max)?,
            retry_max_age: d("mail.retry.max_age", &self.retry.max_age)?,
            warmup_start,
        })
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let bad = |key: &'static str, reason: String| Err(ConfigError::Invalid { key, reason });
        if !matches!(self.transport.as_str(), "file" | "smtp") {
            return bad(
                "mail.transport",
                format!("`{}` is not `file` or `smtp`", self.transport),
            );
        }
        if !matches!(self.smtp.tls.as_str(), "none" | "starttls" | "tls") {
            return bad(
                "mail.smtp.tls",
                format!("`{}` is not `none`, `starttls` or `tls`", self.smtp.tls),
            );
        }
        if self.smtp.connections == 0 {
            return bad("mail.smtp.connections", "must be at least 1".into());
        }
        if self.feedback_id_sender.contains([':', '\r', '\n', ' ']) {
            return bad(
                "mail.feedback_id_sender",
                "is the last field of Feedback-ID: no colon, space or line break".into(),
            );
        }
        for (key, secret) in std::iter::once(("mail.secret", &self.secret))
            .chain(self.previous_secrets.iter().map(|s| ("mail.previous_secrets", s)))
            .filter(|(_, s)| !s.is_empty())
        {
            if secret == RETIRED_DEVELOPMENT_SECRET {
                return bad(
                    key,
                    "is the development secret that older releases shipped, which anyone can read; \
                     set a secret of your own (e.g. `openssl rand -base64 48`) or leave it empty"
                        .into(),
                );
            }
            // A secret from before a rotation may be as short as earlier releases allowed, so
            // the links of mail already delivered keep working.
            let min = if key == "mail.secret" {
                MIN_SECRET_BYTES
            } else {
                MIN_PREVIOUS_SECRET_BYTES
            };
            if secret.len() < min {
                return bad(
                    key,
                    format!("must be at least {min} bytes (e.g. `openssl rand -base64 48`)"),
                );
            }
        }
        if !(self.public_url.starts_with("http://") || self.public_url.starts_with("https://")) {
            return bad(
                "mail.public_url",
                format!("`{}` is not an http(s) URL", self.public_url),
            );
        }
        let r = &self.rate;
        if r.per_second < 0.0 || r.default_domain_per_second < 0.0 || r.domains.values().any(|v| *v <= 0.0) {
            return bad(
                "mail.rate",
                "rates must be positive (0 turns a global or default limit off)".into(),
            );
        }
        if !(0.0..=1.0).contains(&self.warmup.hour_share) || self.warmup.hour_share == 0.0 {
            return bad("mail.warmup.hour_share", "must be in (0, 1]".into());
        }
        if !matches!(self.dkim.algorithm.as_str(), "rsa" | "ed25519") {
            return bad(
                "mail.dkim.algorithm",
                format!("`{}` is not `rsa` or `ed25519`", self.dkim.algorithm),
            );
        }
        self.timing()?;
        Ok(())
    }
}

/// The shortest link secret accepted.
pub const MIN_SECRET_BYTES: usize = 32;

/// The shortest secret accepted in `mail.previous_secrets`: what earlier releases required.
pub const MIN_PREVIOUS_SECRET_BYTES: usize = 16;

/// The secret that `config/default.toml` used to ship: refused, since links signed with it can
/// be forged by anyone.
pub const RETIRED_DEVELOPMENT_SECRET: &str = "dripline-development-secret-change-me";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("configuration: {0}")]
    Load(#[from] config::ConfigError),
    #[error("configuration: {key}: {reason}")]
    Invalid { key: &'static str, reason: String },
}

impl Settings {
    pub fn load(file: Option<&std::path::Path>) -> Result<Settings, ConfigError> {
        let mut b =
            config::Config::builder().add_source(config::File::from_str(DEFAULT_TOML, config::FileFormat::Toml));
        if let Some(f) = file {
            b = b.add_source(config::File::from(f).required(true));
        }
        let mut settings: Settings = b
            .add_source(
                LIST_KEYS.iter().fold(
                    config::Environment::with_prefix("DRIPLINE")
                        .prefix_separator("__")
                        .separator("__")
                        .list_separator(",")
                        .try_parsing(true),
                    |env, key| env.with_list_parse_key(key),
                ),
            )
            .build()?
            .try_deserialize()?;
        if let Some(f) = file {
            settings.relative_to(f)?;
        }
        settings.policy()?;
        settings.mail.validate()?;
        settings.validate_webhooks()?;
        let e = &settings.engine;
        if e.partitions == 0 || e.workers == 0 || e.batch == 0 {
            return Err(ConfigError::Invalid {
                key: "engine",
                reason: "partitions, workers and batch must be at least 1".into(),
            });
        }
        if !(0..=19).contains(&e.worker_nice) {
            return Err(ConfigError::Invalid {
                key: "engine.worker_nice",
                reason: format!("{} is not a nice value from 0 to 19", e.worker_nice),
            });
        }
        duration::parse(&e.checkpoint_interval).map_err(|reason| ConfigError::Invalid {
            key: "engine.checkpoint_interval",
            reason,
        })?;
        duration::parse(&settings.dead_letters.retention).map_err(|reason| ConfigError::Invalid {
            key: "dead_letters.retention",
            reason,
        })?;
        if settings.kafka.enabled() {
            duration::parse(&settings.kafka.idle_timer_grace).map_err(|reason| ConfigError::Invalid {
                key: "kafka.idle_timer_grace",
                reason,
            })?;
        }
        settings
            .mail
            .from
            .parse::<lettre::message::Mailbox>()
            .map_err(|e| ConfigError::Invalid {
                key: "mail.from",
                reason: e.to_string(),
            })?;
        Ok(settings)
    }

    /// Paths that a config file sets relatively resolve against the file's directory, not the
    /// working directory (a path from the defaults or the environment is left as it is).
    fn relative_to(&mut self, file: &std::path::Path) -> Result<(), ConfigError> {
        let own = config::Config::builder()
            .add_source(config::File::from(file).required(true))
            .build()?;
        let base = file.parent().unwrap_or(std::path::Path::new(""));
        let paths: [(&str, &mut PathBuf); 6] = [
            ("workflows.dir", &mut self.workflows.dir),
            ("engine.data_dir", &mut self.engine.data_dir),
            ("mail.outbox_dir", &mut self.mail.outbox_dir),
            ("mail.dkim.private_key_file", &mut self.mail.dkim.private_key_file),
            ("mail.smtp.ca_file", &mut self.mail.smtp.ca_file),
            ("webhook.ca_file", &mut self.webhook.ca_file),
        ];
        for (key, path) in paths {
            let from_file = own.get_string(key).ok().map(PathBuf::from);
            if from_file.as_ref() == Some(&*path) && path.is_relative() && !path.as_os_str().is_empty() {
                *path = base.join(&*path);
            }
        }
        Ok(())
    }

    fn validate_webhooks(&self) -> Result<(), ConfigError> {
        let w = &self.webhook;
        let bad = |key: &'static str, reason: String| Err(ConfigError::Invalid { key, reason });
        match duration::parse(&w.timeout) {
            Err(reason) => return bad("webhook.timeout", reason),
            Ok(ms) if ms <= 0 => return bad("webhook.timeout", "must be more than 0".into()),
            Ok(_) => {}
        }
        if w.concurrency_per_host == 0 {
            return bad("webhook.concurrency_per_host", "must be at least 1".into());
        }
        if !(w.rate_per_host >= 0.0 && w.rate_per_host.is_finite()) {
            return bad("webhook.rate_per_host", "must be 0 (no limit) or more".into());
        }
        if let Err(reason) = signing_key(&w.secret) {
            return bad("webhook.secret", reason);
        }
        for (name, e) in &self.webhooks {
            if !(e.url.starts_with("https://") || e.url.starts_with("http://")) {
                return bad("webhooks", format!("{name}.url: `{}` is not an http(s) URL", e.url));
            }
            if let Err(reason) = signing_key(&e.secret) {
                return bad("webhooks", format!("{name}.secret: {reason}"));
            }
        }
        Ok(())
    }

    /// What `dripline run` needs beyond [`Settings::load`]: in Kafka mode a configured link
    /// secret, since every instance must open the links the others made.
    pub fn check_for_run(&self) -> Result<(), ConfigError> {
        if self.kafka.enabled() && self.mail.secret.is_empty() {
            return Err(ConfigError::Invalid {
                key: "mail.secret",
                reason: "is required in Kafka mode: every instance must verify the links the others made, \
                         so all of them need the same secret (e.g. `openssl rand -base64 48`)"
                    .into(),
            });
        }
        Ok(())
    }

    /// The cross-workflow sending rules, validated.
    pub fn policy(&self) -> Result<Policy, ConfigError> {
        let p = &self.policy;
        let default_timezone = p.default_timezone.parse().map_err(|_| ConfigError::Invalid {
            key: "policy.default_timezone",
            reason: format!("unknown time zone `{}`", p.default_timezone),
        })?;
        let quiet_hours = if p.quiet_hours.trim().is_empty() {
            None
        } else {
            let bad = |reason: String| ConfigError::Invalid {
                key: "policy.quiet_hours",
                reason,
            };
            let (a, b) = p
                .quiet_hours
                .split_once('-')
                .ok_or_else(|| bad(format!("`{}` is not HH:MM-HH:MM", p.quiet_hours)))?;
            let (ah, am) = duration::parse_time_of_day(a).map_err(bad)?;
            let (bh, bm) = duration::parse_time_of_day(b).map_err(bad)?;
            Some((ah * 60 + am, bh * 60 + bm))
        };
        let c = &p.frequency_cap;
        let frequency_cap = if c.enabled {
            let window = duration::parse(&c.window).map_err(|reason| ConfigError::Invalid {
                key: "policy.frequency_cap.window",
                reason,
            })?;
            let defer = match c.on_exceed.as_str() {
                "skip" => false,
                "defer" => true,
                other => {
                    return Err(ConfigError::Invalid {
                        key: "policy.frequency_cap.on_exceed",
                        reason: format!("`{other}` is not `skip` or `defer`"),
                    });
                }
            };
            if c.max == 0 {
                return Err(ConfigError::Invalid {
                    key: "policy.frequency_cap.max",
                    reason: "must be at least 1".into(),
                });
            }
            Some(FrequencyCap {
                max: c.max,
                window,
                defer,
            })
        } else {
            None
        };
        Ok(Policy {
            frequency_cap,
            quiet_hours,
            default_timezone,
        })
    }
}

/// The HMAC key of a Standard Webhooks secret (`whsec_` then base64; empty: none).
pub fn signing_key(secret: &str) -> Result<Option<Vec<u8>>, String> {
    use base64::Engine;
    if secret.is_empty() {
        return Ok(None);
    }
    let b64 = secret
        .strip_prefix("whsec_")
        .ok_or("must start with `whsec_` (Standard Webhooks)")?;
    let key = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .map_err(|e| format!("the part after `whsec_` is not base64: {e}"))?;
    if key.len() < 24 {
        return Err("must hold at least 24 bytes of key (e.g. `whsec_$(openssl rand -base64 32)`)".into());
    }
    Ok(Some(key))
}
