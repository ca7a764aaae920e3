//! Settings, layered with the `config` crate: `config/default.toml` (compiled in), then an
//! optional `--config FILE`, then `DRIPLINE__SECTION__KEY` environment variables.

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
    pub kafka: KafkaSettings,
}

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
    /// Extra librdkafka properties for every client (`security.protocol`, `sasl.*`, …).
    #[serde(default)]
    pub client: std::collections::BTreeMap<String, String>,
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
    pub cache_contacts_per_partition: usize,
    pub batch: usize,
    /// A `messageId` seen among the last this-many accepted events is dropped as a repeat.
    pub dedup_window: usize,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpSettings {
    pub listen: String,
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
    pub smtp_host: String,
    pub smtp_port: u16,
    /// Messages per second at most, across every instance (0: no limit). In Kafka mode each
    /// instance sends its share: this times the fraction of partitions it owns.
    pub rate_per_second: f64,
}

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
        let settings: Settings = b
            .add_source(
                config::Environment::with_prefix("DRIPLINE")
                    .prefix_separator("__")
                    .separator("__")
                    .try_parsing(true),
            )
            .build()?
            .try_deserialize()?;
        settings.policy()?;
        if !matches!(settings.mail.transport.as_str(), "file" | "smtp") {
            return Err(ConfigError::Invalid {
                key: "mail.transport",
                reason: format!("`{}` is not `file` or `smtp`", settings.mail.transport),
            });
        }
        let e = &settings.engine;
        if e.partitions == 0 || e.workers == 0 || e.batch == 0 {
            return Err(ConfigError::Invalid {
                key: "engine",
                reason: "partitions, workers and batch must be at least 1".into(),
            });
        }
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
