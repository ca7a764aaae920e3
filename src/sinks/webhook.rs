//! The webhook transport: the calls of `webhook` steps (SMS gateways, WeChat, CRMs), made by the
//! mailer from the same durable outbox as mail, with the same ledger.
//!
//! A request is rendered from the step's templates and the snapshots of the decision, carries
//! the send id as `Idempotency-Key` and `webhook-id`, and is signed per Standard Webhooks
//! (`webhook-signature: v1,<base64 HMAC-SHA256 of "id.timestamp.body">`) when its endpoint has a
//! secret. What the receiver answers decides the entry's fate ([`Answer`]); per host, at most
//! `webhook.concurrency_per_host` requests are in flight and at most `webhook.rate_per_host`
//! start per second, and a host that does not answer, or asks to be left alone (`Retry-After`),
//! is paused as a whole.

use super::mailer::limits::quota;
use crate::config::{WebhookEndpoint, WebhookSettings, signing_key};
use crate::machine::SendId;
use crate::storage::tables::{Content, OutboxEntry};
use crate::time::Ts;
use crate::workflow::{Registry, StepKind, TemplatePart, WebhookBody, WebhookTarget, template_context};
use base64::Engine;
use futures::future::BoxFuture;
use governor::{DefaultDirectRateLimiter, RateLimiter};
use hmac::{Hmac, Mac};
use reqwest::header::{CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue, RETRY_AFTER};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Bytes of a receiver's answer kept in a dead letter or event.
const ANSWER_BYTES: usize = 512;

/// What became of one call.
#[derive(Debug, Clone, PartialEq)]
pub enum Answer {
    /// A 2xx: the receiver has it.
    Delivered(u16),
    /// A 5xx, 408, 429, a timeout or no answer (`status` none): try again, not before `after`
    /// when the receiver said (`Retry-After`).
    Retry {
        status: Option<u16>,
        reason: String,
        after: Option<Duration>,
    },
    /// Any other answer (a 4xx, a redirect not followed): never deliverable as decided.
    Failed { status: u16, reason: String },
}

/// A rendered request, ready to go.
pub struct Request {
    pub host: String,
    method: reqwest::Method,
    url: reqwest::Url,
    headers: HeaderMap,
    body: Vec<u8>,
    key: Option<Arc<[u8]>>,
}

struct Endpoint {
    url: reqwest::Url,
    key: Option<Arc<[u8]>>,
    headers: HeaderMap,
}

struct Host {
    slots: Arc<tokio::sync::Semaphore>,
    rate: Option<DefaultDirectRateLimiter>,
    paused_until: Ts,
    pause: i64,
}

pub struct Webhooks {
    client: reqwest::Client,
    endpoints: BTreeMap<String, Endpoint>,
    default_key: Option<Arc<[u8]>>,
    concurrency_per_host: usize,
    rate_per_host: f64,
    hosts: Mutex<HashMap<String, Host>>,
    /// Where the calls run: a runtime of their own (one thread, started at the first call), so
    /// they work whatever drives the mailer (the actix system of `dripline run`, or a plain
    /// executor in `dripline demo`).
    runtime: std::sync::OnceLock<tokio::runtime::Runtime>,
}

impl Drop for Webhooks {
    fn drop(&mut self) {
        // Dropping a runtime blocks, which an async context forbids.
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

impl Webhooks {
    pub fn new(settings: &WebhookSettings, endpoints: &BTreeMap<String, WebhookEndpoint>) -> Result<Self, String> {
        let timeout =
            crate::workflow::duration::parse(&settings.timeout).map_err(|e| format!("webhook.timeout: {e}"))?;
        let mut builder = reqwest::Client::builder()
            .timeout(Duration::from_millis(timeout as u64))
            .connect_timeout(Duration::from_millis(timeout as u64))
            // A redirect is an answer to report, not a hop to make with the signed body.
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("dripline/", env!("CARGO_PKG_VERSION")));
        if !settings.ca_file.as_os_str().is_empty() {
            let pem = std::fs::read(&settings.ca_file)
                .map_err(|e| format!("webhook.ca_file {}: {e}", settings.ca_file.display()))?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem)
                .map_err(|e| format!("webhook.ca_file {}: {e}", settings.ca_file.display()))?;
            if certs.is_empty() {
                return Err(format!(
                    "webhook.ca_file {}: no certificate in it",
                    settings.ca_file.display()
                ));
            }
            for c in certs {
                builder = builder.add_root_certificate(c);
            }
        }
        let client = builder.build().map_err(|e| format!("webhook client: {e}"))?;
        let key = |s: &str, what: &str| -> Result<Option<Arc<[u8]>>, String> {
            Ok(signing_key(s).map_err(|e| format!("{what}: {e}"))?.map(Into::into))
        };
        let default_key = key(&settings.secret, "webhook.secret")?;
        let mut named = BTreeMap::new();
        for (name, e) in endpoints {
            let url = reqwest::Url::parse(&e.url).map_err(|err| format!("webhooks.{name}.url: {err}"))?;
            let mut headers = HeaderMap::new();
            for (k, v) in &e.headers {
                let (k, v) = header(k, v).map_err(|err| format!("webhooks.{name}.headers: {err}"))?;
                headers.insert(k, v);
            }
            let key = key(&e.secret, &format!("webhooks.{name}.secret"))?.or_else(|| default_key.clone());
            named.insert(name.clone(), Endpoint { url, key, headers });
        }
        Ok(Webhooks {
            client,
            endpoints: named,
            default_key,
            concurrency_per_host: settings.concurrency_per_host.max(1),
            rate_per_host: settings.rate_per_host,
            hosts: Mutex::new(HashMap::new()),
            runtime: std::sync::OnceLock::new(),
        })
    }
}

/// The steps of loaded workflow versions that name an endpoint `endpoints` lacks: said at start,
/// since their calls fail (`Webhook Failed`) until it is configured.
pub fn unconfigured(reg: &Registry, endpoints: &BTreeMap<String, WebhookEndpoint>) -> Vec<String> {
    let mut found = vec![];
    for wf in reg.all_versions() {
        for s in &wf.steps {
            if let StepKind::Webhook(call) = &s.kind
                && let WebhookTarget::Endpoint(name) = &call.target
                && !endpoints.contains_key(name)
            {
                found.push(format!(
                    "workflow {} version {} step {} calls webhook endpoint `{name}`, which is not \
                     configured ([webhooks.{name}] url = ...): its calls fail until it is",
                    wf.id, wf.version, s.id
                ));
            }
        }
    }
    found
}

impl Webhooks {
    /// Requests worth having in flight at once across all hosts.
    pub fn concurrency(&self) -> usize {
        self.concurrency_per_host * 2
    }

    /// Renders entry `e` (sent as `id`) into a request. An error is permanent for this entry.
    pub fn prepare(&self, reg: &Registry, id: SendId, e: &OutboxEntry) -> Result<Request, String> {
        let Content::Webhook { traits, event } = &e.content else {
            return Err("not a webhook entry".into());
        };
        let wf = reg
            .get(&e.workflow, e.version)
            .ok_or_else(|| format!("workflow {} version {} is not loaded", e.workflow, e.version))?;
        let step = wf
            .steps
            .iter()
            .find(|s| *s.id == *e.step)
            .ok_or_else(|| format!("workflow {} version {} has no step {}", e.workflow, e.version, e.step))?;
        let StepKind::Webhook(call) = &step.kind else {
            return Err(format!("step {} of {} is not a webhook", e.step, e.workflow));
        };
        let msg_id = id.to_string();
        let extra = [
            ("message_id", minijinja::Value::from(msg_id.as_str())),
            ("workflow", minijinja::Value::from(&*e.workflow)),
            ("step", minijinja::Value::from(&*e.step)),
        ];
        let ctx = template_context(&e.contact, traits, event, &extra);
        let render = |part: TemplatePart, what: &str| {
            reg.render_webhook(wf, &e.step, part, &ctx).map_err(|err| {
                format!(
                    "the {what} of webhook step {} of {} failed to render: {err}",
                    e.step, e.workflow
                )
            })
        };
        let (url, mut headers, key) = match &call.target {
            WebhookTarget::Endpoint(name) => {
                let ep = self
                    .endpoints
                    .get(name)
                    .ok_or_else(|| format!("no webhook endpoint `{name}` is configured"))?;
                (ep.url.clone(), ep.headers.clone(), ep.key.clone())
            }
            WebhookTarget::Url(_) => {
                let raw = render(TemplatePart::WebhookUrl, "url")?;
                let url = reqwest::Url::parse(raw.trim()).map_err(|err| format!("`{raw}` is not a URL: {err}"))?;
                if !matches!(url.scheme(), "http" | "https") {
                    return Err(format!("`{raw}` is not an http(s) URL"));
                }
                (url, HeaderMap::new(), self.default_key.clone())
            }
        };
        let host = url.host_str().unwrap_or_default().to_ascii_lowercase();
        let (content_type, body) = match &call.body {
            WebhookBody::Default => (
                "application/json",
                serde_json::json!({
                    "contact": &*e.contact,
                    "workflow": &*e.workflow,
                    "version": e.version,
                    "step": &*e.step,
                    "message_id": msg_id,
                })
                .to_string()
                .into_bytes(),
            ),
            WebhookBody::Template => (
                "application/json",
                render(TemplatePart::WebhookBody, "body")?.into_bytes(),
            ),
            WebhookBody::Form(fields) => {
                let values = fields
                    .iter()
                    .enumerate()
                    .map(|(n, f)| {
                        Ok((
                            f.as_str(),
                            render(TemplatePart::WebhookForm(n), &format!("form field {f}"))?,
                        ))
                    })
                    .collect::<Result<Vec<_>, String>>()?;
                let body = serde_urlencoded::to_string(values).map_err(|err| format!("form body: {err}"))?;
                ("application/x-www-form-urlencoded", body.into_bytes())
            }
        };
        // The endpoint's or the step's own Content-Type wins.
        headers
            .entry(CONTENT_TYPE)
            .or_insert(HeaderValue::from_static(content_type));
        for (n, name) in call.headers.iter().enumerate() {
            let v = render(TemplatePart::WebhookHeader(n), &format!("header {name}"))?;
            let (k, v) = header(name, v.trim())?;
            headers.insert(k, v);
        }
        headers.insert(
            "idempotency-key",
            HeaderValue::from_str(&msg_id).expect("a send id is ASCII"),
        );
        let method = reqwest::Method::from_bytes(call.method.as_bytes()).map_err(|err| err.to_string())?;
        Ok(Request {
            host,
            method,
            url,
            headers,
            body,
            key,
        })
    }

    /// Whether a request to `host` may start now; if not, about how long until it may.
    pub fn admit(&self, host: &str, now: Ts) -> Result<(), Duration> {
        let mut hosts = self.hosts.lock().expect("hosts lock");
        let h = self.host(&mut hosts, host);
        if now < h.paused_until {
            return Err(Duration::from_millis((h.paused_until - now) as u64));
        }
        match &h.rate {
            Some(r) => r.check().map_err(|not_until| {
                not_until.wait_time_from(governor::clock::Clock::now(&governor::clock::DefaultClock::default()))
            }),
            None => Ok(()),
        }
    }

    /// Leaves `host` alone until `until` (it asked, or stopped answering).
    pub fn pause(&self, host: &str, until: Ts) {
        let mut hosts = self.hosts.lock().expect("hosts lock");
        let h = self.host(&mut hosts, host);
        h.paused_until = h.paused_until.max(until);
    }

    /// After a call to `host` got no answer: a pause doubling from half a second to 30 s, reset
    /// by the next answer.
    pub fn unreachable(&self, host: &str, now: Ts) -> i64 {
        let mut hosts = self.hosts.lock().expect("hosts lock");
        let h = self.host(&mut hosts, host);
        // Calls in flight together fail together: one doubling per pause, not per call.
        if now >= h.paused_until {
            h.pause = (h.pause * 2).clamp(500, 30_000);
            h.paused_until = now + h.pause;
        }
        h.pause
    }

    pub fn answered(&self, host: &str) {
        if let Some(h) = self.hosts.lock().expect("hosts lock").get_mut(host) {
            h.pause = 0;
        }
    }

    fn host<'a>(&self, hosts: &'a mut HashMap<String, Host>, host: &str) -> &'a mut Host {
        hosts.entry(host.to_owned()).or_insert_with(|| Host {
            slots: Arc::new(tokio::sync::Semaphore::new(self.concurrency_per_host)),
            rate: quota(self.rate_per_host).map(RateLimiter::direct),
            paused_until: 0,
            pause: 0,
        })
    }

    /// Makes the call (signed at the moment it leaves) once a slot of its host is free.
    pub fn call(&self, id: SendId, req: Request) -> BoxFuture<'static, Answer> {
        let slots = {
            let mut hosts = self.hosts.lock().expect("hosts lock");
            self.host(&mut hosts, &req.host).slots.clone()
        };
        let client = self.client.clone();
        let rt = self.runtime.get_or_init(|| {
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .thread_name("webhooks")
                .enable_all()
                .build()
                .expect("a thread for the webhook calls")
        });
        let call = rt.spawn(async move {
            let _slot = slots.acquire_owned().await.expect("never closed");
            let Request {
                method,
                url,
                mut headers,
                body,
                key,
                ..
            } = req;
            let msg_id = id.to_string();
            if let Some(key) = key {
                let ts = chrono::Utc::now().timestamp().to_string();
                for (k, v) in [
                    ("webhook-id", msg_id.clone()),
                    ("webhook-signature", sign(&key, &msg_id, &ts, &body)),
                    ("webhook-timestamp", ts),
                ] {
                    headers.insert(k, HeaderValue::from_str(&v).expect("ASCII"));
                }
            }
            match client.request(method, url).headers(headers).body(body).send().await {
                Ok(resp) => answer(resp).await,
                Err(e) => Answer::Retry {
                    status: None,
                    reason: error_chain(&e),
                    after: None,
                },
            }
        });
        Box::pin(async move {
            call.await.unwrap_or_else(|e| Answer::Retry {
                status: None,
                reason: format!("the call stopped: {e}"),
                after: None,
            })
        })
    }
}

/// The event a call's result becomes in the contact's stream (`Webhook Delivered`, `Webhook
/// Failed`), so a workflow can wait for it or branch on it.
pub fn event(e: &OutboxEntry, id: SendId, name: &str, status: Option<u16>, reason: Option<&str>) -> serde_json::Value {
    let mut props = serde_json::json!({
        "message_id": id.to_string(),
        "workflow": &*e.workflow,
        "step": &*e.step,
    });
    if let Some(s) = status {
        props["status"] = s.into();
    }
    if let Some(r) = reason {
        props["reason"] = r.into();
    }
    super::mailer::result_event(&e.contact, id, name, props)
}

/// The `webhook-signature` value: `v1,` and the base64 HMAC-SHA256 of `id.timestamp.body`.
pub fn sign(key: &[u8], id: &str, timestamp: &str, body: &[u8]) -> String {
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(key).expect("HMAC takes any key length");
    mac.update(id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.as_bytes());
    mac.update(b".");
    mac.update(body);
    format!(
        "v1,{}",
        base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
    )
}

async fn answer(resp: reqwest::Response) -> Answer {
    let status = resp.status();
    let code = status.as_u16();
    if status.is_success() {
        return Answer::Delivered(code);
    }
    let after = resp
        .headers()
        .get(RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(retry_after);
    // Only the first bytes of the answer are kept: never read a large body whole.
    let mut resp = resp;
    let mut kept = Vec::new();
    while kept.len() < ANSWER_BYTES {
        match resp.chunk().await {
            Ok(Some(c)) => kept.extend_from_slice(&c[..c.len().min(ANSWER_BYTES - kept.len())]),
            _ => break,
        }
    }
    let text = String::from_utf8_lossy(&kept).into_owned();
    let reason = format!("{code} {}", text.trim()).trim_end().to_owned();
    if status.is_server_error() || code == 429 || code == 408 {
        Answer::Retry {
            status: Some(code),
            reason,
            after,
        }
    } else {
        Answer::Failed { status: code, reason }
    }
}

/// `Retry-After` as seconds or an HTTP date, as a delay from now.
fn retry_after(v: &str) -> Option<Duration> {
    let v = v.trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some(Duration::from_secs(secs.min(86_400)));
    }
    let at = httpdate::parse_http_date(v).ok()?;
    let d = at.duration_since(std::time::SystemTime::now()).unwrap_or_default();
    Some(d.min(Duration::from_secs(86_400)))
}

fn header(name: &str, value: &str) -> Result<(HeaderName, HeaderValue), String> {
    let k = HeaderName::from_bytes(name.as_bytes()).map_err(|_| format!("`{name}` is not a header name"))?;
    let v = HeaderValue::from_str(value).map_err(|_| format!("the value of header {name} is not a header value"))?;
    Ok((k, v))
}

/// The error and its causes on one line ("error sending request: connection refused").
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_reads_seconds_and_dates() {
        assert_eq!(retry_after("3"), Some(Duration::from_secs(3)));
        assert_eq!(retry_after("Wed, 21 Oct 2015 07:28:00 GMT"), Some(Duration::ZERO));
        let later = httpdate::fmt_http_date(std::time::SystemTime::now() + Duration::from_secs(120));
        let d = retry_after(&later).unwrap();
        assert!(
            (Duration::from_secs(118)..=Duration::from_secs(120)).contains(&d),
            "{d:?}"
        );
        assert_eq!(retry_after("soon"), None);
    }

    #[test]
    fn signature_matches_the_specification_example() {
        // The example of the Standard Webhooks specification (and of its reference libraries'
        // tests): secret, id, timestamp and payload give this signature.
        let key = signing_key("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap().unwrap();
        let sig = sign(
            &key,
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            "1614265330",
            br#"{"test": 2432232314}"#,
        );
        assert_eq!(sig, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
    }
}
