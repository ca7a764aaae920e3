//! The HTTP listeners.
//!
//! - `http.listen`, private: `POST /v1/track|identify|page|batch` (Segment shape, a write key
//!   required), the admin API under `/admin/v1/` (an admin token), `GET /metrics` (an admin or
//!   metrics token), `/healthz` and `/readyz` (open: probes).
//! - `http.public_listen`, public: only what recipients reach, the signed links of
//!   [`super::recipient`]. Ingest is never exposed where the links are.
//!
//! A request is acknowledged only after its valid events are durably in the log; invalid events
//! get HTTP 400 with the reason per event and go to the dead letters; nothing valid is lost.
//! Events the engine emits itself (`Email Bounced`, `Unsubscribed`, …) are refused from a write
//! key: an ESP's feedback comes in through `POST /admin/v1/feedback`.
//!
//! On SIGTERM or SIGINT intake stops at once: every later request, on a new or a kept-alive
//! connection, gets 503 and the connection is closed; the listeners stop, then the caller stops
//! the processors and the mailer.

use crate::auth::Access;
use crate::event::EventKind;
use crate::runtime::{Engine, IngestReport, Origin};
use actix_web::body::{BoxBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::middleware::{Next, from_fn};
use actix_web::{App, HttpResponse, HttpServer, web};
use serde_json::value::RawValue;
use std::sync::Arc;

pub type Data = web::Data<Arc<Engine>>;

/// Largest request body (a batch).
pub const MAX_BODY: usize = 8 * 1024 * 1024;

/// `/v1/batch` body: the events stay raw JSON slices until each is parsed into its typed form.
#[derive(serde::Deserialize)]
struct Batch<'a> {
    #[serde(borrow)]
    batch: Vec<&'a RawValue>,
}

/// Parses a body of one event or a batch and appends it; the answer as ingest gives it.
pub async fn ingest(
    engine: Data,
    body: web::Bytes,
    kind: Option<EventKind>,
    batch: bool,
    origin: Origin,
) -> HttpResponse {
    let now = chrono::Utc::now().timestamp_millis();
    let e = engine.clone();
    let result = web::block(move || {
        let payloads: Vec<&[u8]> = if batch {
            match serde_json::from_slice::<Batch>(&body) {
                Ok(b) => b.batch.iter().map(|r| r.get().as_bytes()).collect(),
                Err(err) => {
                    let reason = format!("not a batch (an object with a `batch` array of events): {err}");
                    e.dead_letter(&reason, &body);
                    return Ok(Err(reason));
                }
            }
        } else {
            vec![&body[..]]
        };
        e.ingest_raw(&payloads, kind, now, origin).map(Ok)
    })
    .await;
    match result {
        Ok(Ok(Ok(report))) if report.errors.is_empty() => HttpResponse::Ok().json(report),
        Ok(Ok(Ok(report))) => {
            let message = format!(
                "{} of {} events refused (see errors); the others were accepted",
                report.errors.len(),
                report.errors.len() + report.accepted + report.duplicates
            );
            with_code(HttpResponse::BadRequest(), "invalid_events", &message, &report)
        }
        Ok(Ok(Err(reason))) => bad_request(&reason),
        Ok(Err(e)) => error(HttpResponse::ServiceUnavailable(), "unavailable", &format!("{e:#}")),
        Err(e) => error(HttpResponse::InternalServerError(), "internal", &e.to_string()),
    }
}

/// An answer in the Segment API's error shape, `{code, message}` (which the Segment and
/// RudderStack SDKs read), with the report beside it. A 400 is not retried by the SDKs: the
/// events it refused are in the dead letters, the others were kept.
fn with_code(
    mut answer: actix_web::HttpResponseBuilder,
    code: &str,
    message: &str,
    report: &IngestReport,
) -> HttpResponse {
    let mut body = serde_json::to_value(report).expect("a report serializes");
    body["code"] = code.into();
    body["message"] = message.into();
    answer.json(body)
}

fn error(mut answer: actix_web::HttpResponseBuilder, code: &str, message: &str) -> HttpResponse {
    answer.json(serde_json::json!({"code": code, "message": message, "error": message}))
}

fn bad_request(reason: &str) -> HttpResponse {
    let report = IngestReport {
        errors: vec![crate::runtime::IngestError {
            index: 0,
            reason: reason.into(),
        }],
        ..Default::default()
    };
    with_code(HttpResponse::BadRequest(), "invalid_request", reason, &report)
}

async fn track(e: Data, b: web::Bytes) -> HttpResponse {
    ingest(e, b, Some(EventKind::Track), false, Origin::Client).await
}
async fn identify(e: Data, b: web::Bytes) -> HttpResponse {
    ingest(e, b, Some(EventKind::Identify), false, Origin::Client).await
}
async fn page(e: Data, b: web::Bytes) -> HttpResponse {
    ingest(e, b, Some(EventKind::Page), false, Origin::Client).await
}
/// `screen` and `group` have no event kind of their own to hint with: a body without `type`
/// gets it (a body that is no object is left to be refused as usual).
fn typed(body: web::Bytes, kind: &str) -> web::Bytes {
    match serde_json::from_slice::<serde_json::Map<String, serde_json::Value>>(&body) {
        Ok(mut m) if !m.contains_key("type") => {
            m.insert("type".into(), kind.into());
            serde_json::to_vec(&m).map_or(body, Into::into)
        }
        _ => body,
    }
}
async fn screen(e: Data, b: web::Bytes) -> HttpResponse {
    ingest(e, typed(b, "screen"), None, false, Origin::Client).await
}
async fn group(e: Data, b: web::Bytes) -> HttpResponse {
    ingest(e, typed(b, "group"), None, false, Origin::Client).await
}
async fn batch(e: Data, b: web::Bytes) -> HttpResponse {
    ingest(e, b, None, true, Origin::Client).await
}

async fn metrics(e: Data) -> HttpResponse {
    e.refresh_log_lag();
    e.metrics.ready.set(i64::from(e.readiness.check().is_ok()));
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4")
        .body(e.metrics.render())
}

async fn healthz() -> HttpResponse {
    HttpResponse::Ok().body("ok")
}

/// Ready while the processors run (workflows loaded, store open, actors started), not once
/// shutdown has begun, and in Kafka mode not while a rebalance or restore is in progress.
async fn readyz(e: Data) -> HttpResponse {
    match e.readiness.check() {
        Ok(()) => HttpResponse::Ok().body("ready"),
        Err(reason) => HttpResponse::ServiceUnavailable().body(format!("not ready: {reason}")),
    }
}

/// What a path of the private listener needs.
fn access_for(path: &str) -> Option<Access> {
    if path.starts_with("/v1/") {
        Some(Access::Ingest)
    } else if path.starts_with("/admin/") {
        Some(Access::Admin)
    } else if path == "/metrics" {
        Some(Access::Metrics)
    } else {
        None
    }
}

/// Refuses everything once shutdown has begun (503, connection closed), and any request whose
/// credential does not grant what its path needs (401, nothing done).
async fn guard(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<BoxBody>, actix_web::Error> {
    let engine = req.app_data::<Data>().expect("engine data").clone();
    if engine.readiness.is_stopping() {
        let resp = HttpResponse::ServiceUnavailable()
            .force_close()
            .insert_header(("Retry-After", "1"))
            .json(serde_json::json!({"code": "unavailable", "message": "shutting down"}));
        return Ok(req.into_response(resp));
    }
    if let Some(access) = access_for(req.path()) {
        let auth = req
            .headers()
            .get(actix_web::http::header::AUTHORIZATION)
            .map(|h| h.as_bytes());
        if !engine.keys.allows(access, auth) {
            engine
                .metrics
                .http_unauthorized
                .with_label_values(&[access.as_str()])
                .inc();
            let mut resp = HttpResponse::Unauthorized();
            if access == Access::Ingest {
                resp.insert_header(("WWW-Authenticate", "Basic realm=\"dripline ingest\""));
            } else {
                resp.insert_header(("WWW-Authenticate", "Bearer realm=\"dripline admin\""));
            }
            let what = match access {
                Access::Ingest => "a write key (HTTP Basic user name, or Bearer)",
                Access::Admin => "an admin token (Bearer)",
                Access::Metrics => "an admin or metrics token (Bearer)",
            };
            return Ok(req.into_response(resp.json(serde_json::json!({
                "code": "unauthorized",
                "message": format!("this endpoint needs {what}"),
            }))));
        }
    }
    Ok(next.call(req).await?.map_into_boxed_body())
}

/// The private routes: ingest, metrics and probes (the admin API is added by the caller).
fn private_routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/v1/track", web::post().to(track))
        .route("/v1/identify", web::post().to(identify))
        .route("/v1/page", web::post().to(page))
        .route("/v1/screen", web::post().to(screen))
        .route("/v1/group", web::post().to(group))
        .route("/v1/batch", web::post().to(batch))
        .route("/metrics", web::get().to(metrics))
        .route("/healthz", web::get().to(healthz))
        .route("/readyz", web::get().to(readyz));
}

/// Serves both listeners until SIGTERM or SIGINT, then stops intake at once (see the module
/// doc) and returns when the listeners have stopped. `admin` adds the admin API's routes to the
/// private listener (`crate::admin::routes`; a parameter, so the sources never import it).
pub async fn serve(engine: Arc<Engine>, admin: fn(&mut web::ServiceConfig)) -> std::io::Result<()> {
    let http = engine.settings.http.clone();
    let data = web::Data::new(engine.clone());
    let same = http.listen == http.public_listen;
    let d = data.clone();
    let private = HttpServer::new(move || {
        App::new()
            .app_data(d.clone())
            .app_data(web::PayloadConfig::new(MAX_BODY))
            .app_data(web::JsonConfig::default().limit(MAX_BODY))
            .wrap(from_fn(guard))
            .configure(private_routes)
            .configure(admin)
            .configure(|c| {
                if same {
                    super::recipient::routes(c)
                }
            })
    })
    .workers(2)
    .disable_signals()
    .shutdown_timeout(2)
    .bind(&http.listen)?
    .run();
    let public = if same {
        None
    } else {
        let d = data.clone();
        Some(
            HttpServer::new(move || {
                App::new()
                    .app_data(d.clone())
                    .app_data(web::PayloadConfig::new(64 * 1024))
                    .wrap(from_fn(guard))
                    .configure(super::recipient::routes)
            })
            .workers(1)
            .disable_signals()
            .shutdown_timeout(2)
            .bind(&http.public_listen)?
            .run(),
        )
    };
    let handles: Vec<_> = std::iter::once(private.handle())
        .chain(public.as_ref().map(|p| p.handle()))
        .collect();
    let readiness_engine = engine.clone();
    actix_web::rt::spawn(async move {
        use actix_web::rt::signal::unix::{SignalKind, signal};
        let (mut term, mut int) = match (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) {
            (Ok(t), Ok(i)) => (t, i),
            (Err(e), _) | (_, Err(e)) => {
                tracing::error!("cannot listen for signals: {e}");
                return;
            }
        };
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        tracing::info!("signal received: intake stops");
        readiness_engine.readiness.set_stopping();
        for h in handles {
            h.stop(true).await;
        }
    });
    let public = async move {
        match public {
            Some(p) => p.await,
            None => Ok(()),
        }
    };
    let (a, b) = tokio::join!(private, public);
    a.and(b)
}
