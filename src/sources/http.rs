//! `POST /v1/track|identify|page|batch` (Segment shape), `GET /metrics`, `/healthz`, `/readyz`.
//! A request is acknowledged only after its valid events are durably in the log; invalid events
//! get HTTP 400 with the reason per event and go to the dead letters; nothing valid is lost.

use crate::event::EventKind;
use crate::runtime::Engine;
use actix_web::{App, HttpResponse, HttpServer, web};
use serde_json::value::RawValue;
use std::sync::Arc;

type Data = web::Data<Arc<Engine>>;

/// `/v1/batch` body: the events stay raw JSON slices until each is parsed into its typed form.
#[derive(serde::Deserialize)]
struct Batch<'a> {
    #[serde(borrow)]
    batch: Vec<&'a RawValue>,
}

async fn ingest(engine: Data, body: web::Bytes, kind: Option<EventKind>, batch: bool) -> HttpResponse {
    let body_for_block = body.clone();
    let now = chrono::Utc::now().timestamp_millis();
    let e = engine.clone();
    let result = web::block(move || {
        let body = &body_for_block;
        let payloads: Vec<&[u8]> = if batch {
            match serde_json::from_slice::<Batch>(body) {
                Ok(b) => b.batch.iter().map(|r| r.get().as_bytes()).collect(),
                Err(err) => {
                    let reason = format!("not a batch (an object with a `batch` array of events): {err}");
                    e.dead_letter(&reason, body);
                    return Ok(Err(reason));
                }
            }
        } else {
            vec![&body[..]]
        };
        e.ingest_raw(&payloads, kind, now).map(Ok)
    })
    .await;
    match result {
        Ok(Ok(Ok(report))) if report.errors.is_empty() => HttpResponse::Ok().json(report),
        Ok(Ok(Ok(report))) => HttpResponse::BadRequest().json(report),
        Ok(Ok(Err(reason))) => bad_request(&reason),
        Ok(Err(e)) => HttpResponse::ServiceUnavailable().json(serde_json::json!({"error": format!("{e:#}")})),
        Err(e) => HttpResponse::InternalServerError().json(serde_json::json!({"error": e.to_string()})),
    }
}

fn bad_request(reason: &str) -> HttpResponse {
    HttpResponse::BadRequest()
        .json(serde_json::json!({"accepted": 0, "duplicates": 0, "errors": [{"index": 0, "reason": reason}]}))
}

async fn track(e: Data, b: web::Bytes) -> HttpResponse {
    ingest(e, b, Some(EventKind::Track), false).await
}
async fn identify(e: Data, b: web::Bytes) -> HttpResponse {
    ingest(e, b, Some(EventKind::Identify), false).await
}
async fn page(e: Data, b: web::Bytes) -> HttpResponse {
    ingest(e, b, Some(EventKind::Page), false).await
}
async fn batch(e: Data, b: web::Bytes) -> HttpResponse {
    ingest(e, b, None, true).await
}

async fn metrics(e: Data) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4")
        .body(e.metrics.render())
}

async fn healthz() -> HttpResponse {
    HttpResponse::Ok().body("ok")
}

/// Ready once the engine is open (workflows loaded, store and log open): it is constructed
/// before the server starts, so reaching this handler means ready.
async fn readyz() -> HttpResponse {
    HttpResponse::Ok().body("ready")
}

/// Serves until SIGINT/SIGTERM (actix-web stops accepting, finishes in-flight requests).
pub async fn serve(engine: Arc<Engine>, listen: &str) -> std::io::Result<()> {
    let data = web::Data::new(engine);
    HttpServer::new(move || {
        App::new()
            .app_data(data.clone())
            .app_data(web::PayloadConfig::new(8 * 1024 * 1024))
            .route("/v1/track", web::post().to(track))
            .route("/v1/identify", web::post().to(identify))
            .route("/v1/page", web::post().to(page))
            .route("/v1/batch", web::post().to(batch))
            .route("/metrics", web::get().to(metrics))
            .route("/healthz", web::get().to(healthz))
            .route("/readyz", web::get().to(readyz))
    })
    .workers(2)
    .shutdown_timeout(10)
    .bind(listen)?
    .run()
    .await
}
