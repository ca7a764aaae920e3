//! The admin operations for the command line (`dripline workflows|contact|dead-letters …`):
//! through the running engine's admin API when one holds the store (with the configured admin
//! token, or the one generated into the data directory), else in this process on the store
//! itself. Both answer the same JSON.

use crate::config::Settings;
use crate::runtime::{Engine, Origin, StoreInUse};
use crate::storage::dead_letters::{self, DeadKey};
use anyhow::{Context, bail};
use serde_json::{Value, json};

pub enum Admin {
    /// A running engine's admin API.
    Remote {
        base: String,
        token: String,
        agent: ureq::Agent,
    },
    /// The store, opened by this process.
    Local(Box<Engine>),
}

impl Admin {
    /// The running engine's API if one holds the store, else the store itself.
    pub fn connect(settings: &Settings) -> anyhow::Result<Admin> {
        match crate::kafka::open_engine(settings) {
            Ok(engine) => Ok(Admin::Local(Box::new(engine))),
            Err(e) if e.downcast_ref::<StoreInUse>().is_some() => {
                let token = settings
                    .admin
                    .tokens
                    .iter()
                    .find(|t| !t.trim().is_empty())
                    .cloned()
                    .or_else(|| crate::auth::read_stored(&settings.engine.data_dir, crate::auth::ADMIN_TOKEN_FILE))
                    .with_context(|| format!("{e}; and no admin token to call it with (admin.tokens)"))?;
                let agent = ureq::Agent::config_builder()
                    .http_status_as_error(false)
                    .timeout_global(Some(std::time::Duration::from_secs(60)))
                    .build()
                    .into();
                Ok(Admin::Remote {
                    base: format!("http://{}/admin/v1", settings.http.listen),
                    token,
                    agent,
                })
            }
            Err(e) => Err(e),
        }
    }

    /// Where the operation ran, for people.
    pub fn via(&self) -> String {
        match self {
            Admin::Remote { base, .. } => format!("through the running engine at {base}"),
            Admin::Local(_) => "on the store".into(),
        }
    }

    fn call(&self, method: &str, path: &str, body: Option<&Value>) -> anyhow::Result<(u16, Value)> {
        let Admin::Remote { base, token, agent } = self else {
            unreachable!("remote calls only")
        };
        let url = format!("{base}{path}");
        let auth = format!("Bearer {token}");
        let mut response = match (method, body) {
            ("GET", _) => agent.get(&url).header("authorization", &auth).call(),
            ("DELETE", _) => agent.delete(&url).header("authorization", &auth).call(),
            (_, Some(b)) => agent
                .post(&url)
                .header("authorization", &auth)
                .header("content-type", "application/json")
                .send(&serde_json::to_vec(b)?[..]),
            (_, None) => agent.post(&url).header("authorization", &auth).send_empty(),
        }
        .map_err(|e| anyhow::anyhow!("{url}: {e}"))?;
        let status = response.status().as_u16();
        let text = response.body_mut().read_to_string()?;
        let value = if text.trim().is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).map_err(|e| anyhow::anyhow!("{url}: HTTP {status} ({e}): {text}"))?
        };
        Ok((status, value))
    }

    /// A remote answer: its JSON on 2xx, else an error with the API's message.
    fn expect(&self, method: &str, path: &str, body: Option<&Value>) -> anyhow::Result<Value> {
        let (status, v) = self.call(method, path, body)?;
        if (200..300).contains(&status) {
            Ok(v)
        } else {
            bail!("HTTP {status}: {}", v["message"].as_str().unwrap_or(&v.to_string()))
        }
    }

    pub fn workflows(&self) -> anyhow::Result<Value> {
        match self {
            Admin::Local(e) => Ok(serde_json::to_value(super::workflows(e)?)?),
            Admin::Remote { .. } => self.expect("GET", "/workflows", None),
        }
    }

    /// A workflow's per-step report (all versions, or one).
    pub fn report(&self, workflow: &str, version: Option<u32>) -> anyhow::Result<super::report::Report> {
        match self {
            Admin::Local(e) => super::report::report(e, workflow, version)?.ok_or_else(|| match version {
                Some(v) => anyhow::anyhow!("no version {v} of workflow `{workflow}`"),
                None => anyhow::anyhow!("no workflow `{workflow}`"),
            }),
            Admin::Remote { .. } => {
                let query = version.map(|v| format!("?version={v}")).unwrap_or_default();
                let v = self.expect("GET", &format!("/workflows/{}/report{query}", encode(workflow)), None)?;
                Ok(serde_json::from_value(v)?)
            }
        }
    }

    pub fn set_paused(&self, workflow: &str, pause: bool) -> anyhow::Result<Value> {
        let state = if pause { "paused" } else { "active" };
        match self {
            Admin::Local(e) => {
                if e.reg.latest_of(workflow).is_none() {
                    bail!("no workflow `{workflow}`");
                }
                e.set_paused(workflow, pause)?;
                // Applied by each partition as it reaches the record.
                e.pump(chrono::Utc::now().timestamp_millis())?;
                Ok(json!({"workflow": workflow, "state": state}))
            }
            Admin::Remote { .. } => {
                let verb = if pause { "pause" } else { "resume" };
                self.expect("POST", &format!("/workflows/{}/{verb}", encode(workflow)), None)
            }
        }
    }

    /// A contact's state; `None` when there is none.
    pub fn contact(&self, id: &str, export: bool) -> anyhow::Result<Option<Value>> {
        match self {
            Admin::Local(e) => {
                let Some(mut v) = super::contact_json(e, id)? else {
                    return Ok(None);
                };
                if export {
                    v["outbox"] = super::outbox_of(e, id)?.into();
                }
                Ok(Some(v))
            }
            Admin::Remote { .. } => {
                let path = format!("/contacts/{}{}", encode(id), if export { "/export" } else { "" });
                match self.call("GET", &path, None)? {
                    (404, _) => Ok(None),
                    (200, v) => Ok(Some(v)),
                    (status, v) => bail!("HTTP {status}: {v}"),
                }
            }
        }
    }

    /// Erases a contact (GDPR) and waits until nothing of it is left; `false` when there was
    /// no such contact.
    pub fn erase(&self, id: &str) -> anyhow::Result<bool> {
        match self {
            Admin::Local(e) => {
                if e.changelog.is_some() {
                    bail!(
                        "in Kafka mode a contact is erased by the instance that owns its partition: \
                         run this while the instances run (it goes through the admin API)"
                    );
                }
                if crate::storage::tables::get_contact(&e.store, id)?.is_none() {
                    return Ok(false);
                }
                e.erase(id)?;
                e.pump(chrono::Utc::now().timestamp_millis())?;
                e.complete_erasures()?;
                Ok(true)
            }
            Admin::Remote { .. } => match self.call("DELETE", &format!("/contacts/{}", encode(id)), None)? {
                (404, _) => Ok(false),
                (200, _) => Ok(true),
                (202, _) => bail!("the erasure is recorded and still completing (check again shortly)"),
                (status, v) => bail!("HTTP {status}: {v}"),
            },
        }
    }

    pub fn dead_letters(&self, after: Option<&str>, limit: usize) -> anyhow::Result<Value> {
        match self {
            Admin::Local(e) => {
                let after = after
                    .map(str::parse::<DeadKey>)
                    .transpose()
                    .map_err(anyhow::Error::msg)?;
                let limit = limit.clamp(1, 1000);
                let items = dead_letters::page(&e.store, after, limit)?;
                let next = (items.len() == limit)
                    .then(|| items.last().map(|(k, _)| k.to_string()))
                    .flatten();
                let items: Vec<Value> = items
                    .into_iter()
                    .map(|(k, d)| serde_json::to_value(super::view(k, d)).expect("a view encodes"))
                    .collect();
                Ok(json!({"items": items, "next": next}))
            }
            Admin::Remote { .. } => {
                let mut path = format!("/dead-letters?limit={limit}");
                if let Some(a) = after {
                    path.push_str(&format!("&after={a}"));
                }
                self.expect("GET", &path, None)
            }
        }
    }

    /// Ingests a dead letter's payload again (or `corrected`); deleted when it goes in.
    pub fn retry(&self, key: &str, corrected: Option<Value>) -> anyhow::Result<Value> {
        match self {
            Admin::Local(e) => {
                let k: DeadKey = key.parse().map_err(anyhow::Error::msg)?;
                let Some(letter) = dead_letters::get(&e.store, k)? else {
                    bail!("no dead letter {key}");
                };
                let payload = match corrected {
                    Some(v) => serde_json::to_vec(&v)?,
                    None if letter.source != "ingest" || letter.truncated => {
                        bail!("this dead letter cannot be retried as it is; pass a corrected event")
                    }
                    None => letter.payload.into_bytes(),
                };
                let report = e.ingest_raw(&[&payload], None, chrono::Utc::now().timestamp_millis(), Origin::Client)?;
                if let Some(err) = report.errors.first() {
                    bail!("{}", err.reason);
                }
                let mut b = rocksdb::WriteBatch::default();
                dead_letters::delete(&e.store, &mut b, k);
                e.store.write(b, true)?;
                Ok(serde_json::to_value(report)?)
            }
            Admin::Remote { .. } => {
                let path = format!("/dead-letters/{key}/retry");
                self.expect("POST", &path, corrected.as_ref())
            }
        }
    }

    /// Deletes dead letters by key; how many there were.
    pub fn purge(&self, keys: &[String]) -> anyhow::Result<usize> {
        let mut n = 0;
        for key in keys {
            let found = match self {
                Admin::Local(e) => {
                    let k: DeadKey = key.parse().map_err(anyhow::Error::msg)?;
                    let found = dead_letters::get(&e.store, k)?.is_some();
                    let mut b = rocksdb::WriteBatch::default();
                    dead_letters::delete(&e.store, &mut b, k);
                    e.store.write(b, true)?;
                    found
                }
                Admin::Remote { .. } => match self.call("DELETE", &format!("/dead-letters/{key}"), None)? {
                    (204, _) => true,
                    (404, _) => false,
                    (status, v) => bail!("HTTP {status}: {v}"),
                },
            };
            n += usize::from(found);
        }
        Ok(n)
    }
}

/// A path segment, percent-encoded.
fn encode(segment: &str) -> String {
    serde_urlencoded::to_string([("", segment)])
        .map(|s| s.trim_start_matches('=').replace('+', "%20"))
        .unwrap_or_else(|_| segment.to_owned())
}
