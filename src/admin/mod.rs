//! The admin API, JSON under `/admin/v1/` on the private listener, each call with a bearer token
//! from `admin.tokens` (checked by the listener's guard, [`crate::sources::http`]). Its OpenAPI
//! document is generated from these handlers (utoipa) and served at `/admin/v1/openapi.json`.
//!
//! Whatever changes a contact goes through the log, so a replay reproduces it: an enrolment is
//! an engine event (`dripline.enroll`) in the contact's stream; ESP feedback comes in as the
//! engine's own feedback events.

use crate::runtime::{Engine, Origin};
use crate::sources::http::{Data, ingest};
use crate::storage::dead_letters::{self, DeadKey};
use crate::storage::{suppressed_addresses, tables};
use actix_web::{HttpRequest, HttpResponse, web};
use serde::{Deserialize, Serialize};
use utoipa::{OpenApi, ToSchema};

pub mod client;
pub mod report;

/// An error answer: a stable code and a sentence for people.
#[derive(Serialize, ToSchema)]
pub struct ApiError {
    pub code: &'static str,
    pub message: String,
}

fn error(status: actix_web::http::StatusCode, code: &'static str, message: impl Into<String>) -> HttpResponse {
    HttpResponse::build(status).json(ApiError {
        code,
        message: message.into(),
    })
}

fn not_found(message: impl Into<String>) -> HttpResponse {
    error(actix_web::http::StatusCode::NOT_FOUND, "not_found", message)
}

fn bad_request(message: impl Into<String>) -> HttpResponse {
    error(actix_web::http::StatusCode::BAD_REQUEST, "bad_request", message)
}

fn unavailable(e: impl std::fmt::Display) -> HttpResponse {
    error(
        actix_web::http::StatusCode::SERVICE_UNAVAILABLE,
        "unavailable",
        e.to_string(),
    )
}

/// Runs store work off the async threads.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> anyhow::Result<T> + Send + 'static,
) -> Result<T, HttpResponse> {
    match web::block(f).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(unavailable(format!("{e:#}"))),
        Err(e) => Err(unavailable(e)),
    }
}

// ---- workflows --------------------------------------------------------------------------------

#[derive(Serialize, ToSchema)]
pub struct WorkflowSummary {
    pub id: String,
    pub name: String,
    /// The version new contacts enter.
    pub latest_version: u32,
    pub versions: Vec<VersionSummary>,
    /// Whether contacts can be enrolled through `POST …/enroll` (`api: true` trigger).
    pub api_enrollment: bool,
    /// `active`, `paused`, or `changing` while some partitions have not reached a pause or
    /// resume yet (as far as this instance hosts them).
    pub state: &'static str,
}

#[derive(Serialize, ToSchema)]
pub struct VersionSummary {
    pub version: u32,
    /// Contacts waiting inside this version now (at a wait, a timer or a `wait_for`).
    pub contacts_inside: i64,
    pub entered: i64,
    pub sent: i64,
    pub converted: i64,
}

/// Every workflow with its versions and how many contacts are inside each.
#[utoipa::path(get, path = "/admin/v1/workflows", tag = "workflows",
    responses((status = 200, body = [WorkflowSummary]), (status = 401, body = ApiError)),
    security(("bearer" = [])))]
async fn list_workflows(e: Data) -> HttpResponse {
    let engine = e.clone();
    match blocking(move || workflows(&engine)).await {
        Ok(list) => HttpResponse::Ok().json(list),
        Err(resp) => resp,
    }
}

/// The workflow summaries, from the registry and the per-step counters.
pub fn workflows(engine: &Engine) -> anyhow::Result<Vec<WorkflowSummary>> {
    use crate::machine::Metric;
    let counters = tables::counters(&engine.store)?;
    let total = |wf: &str, version: u32, metric: Metric| -> i64 {
        counters
            .iter()
            .filter(|((w, v, _, m), _)| w == wf && *v == version && *m == metric)
            .map(|(_, n)| n)
            .sum()
    };
    let mut out = Vec::new();
    for wf in engine.reg.latest() {
        let (paused, hosted) = engine.paused_in(&wf.id)?;
        let state = match paused {
            0 => "active",
            p if p == hosted => "paused",
            _ => "changing",
        };
        let mut versions: Vec<u32> = engine.reg.versions_of(&wf.id);
        versions.sort_unstable();
        let first_step = wf.steps.first().map(|s| s.id.as_str()).unwrap_or_default();
        out.push(WorkflowSummary {
            id: wf.id.to_string(),
            name: wf.name.clone(),
            latest_version: wf.version,
            api_enrollment: wf.triggers.iter().any(|t| matches!(t, crate::workflow::Trigger::Api)),
            state,
            versions: versions
                .into_iter()
                .map(|v| VersionSummary {
                    version: v,
                    contacts_inside: total(&wf.id, v, Metric::Waiting),
                    entered: counters
                        .get(&(wf.id.to_string(), v, first_step.to_owned(), Metric::Entered))
                        .copied()
                        .unwrap_or(0),
                    sent: total(&wf.id, v, Metric::Sent),
                    converted: total(&wf.id, v, Metric::Converted),
                })
                .collect(),
        });
    }
    Ok(out)
}

#[derive(Serialize, ToSchema)]
pub struct PauseAnswer {
    pub workflow: String,
    /// `paused` or `active`: what every partition does once it reaches the control record.
    pub state: &'static str,
}

async fn set_paused(e: Data, id: String, pause: bool) -> HttpResponse {
    if e.reg.latest_of(&id).is_none() {
        return not_found(format!("no workflow `{id}`"));
    }
    let engine = e.clone();
    let workflow = id.clone();
    match blocking(move || engine.set_paused(&workflow, pause)).await {
        Ok(()) => HttpResponse::Accepted().json(PauseAnswer {
            workflow: id,
            state: if pause { "paused" } else { "active" },
        }),
        Err(resp) => resp,
    }
}

/// Pauses a workflow: no new entrants from here on; contacts already inside go on (their
/// waits, sends and goals as before). Goes through the log, so a replay pauses at the same
/// point. Pausing a paused workflow changes nothing.
#[utoipa::path(post, path = "/admin/v1/workflows/{id}/pause", tag = "workflows",
    params(("id" = String, Path, description = "Workflow id")),
    responses((status = 202, body = PauseAnswer), (status = 404, body = ApiError), (status = 401, body = ApiError)),
    security(("bearer" = [])))]
async fn pause(e: Data, id: web::Path<String>) -> HttpResponse {
    set_paused(e, id.into_inner(), true).await
}

/// Resumes a paused workflow: contacts enter again from here on (those who met a trigger while
/// it was paused are not enrolled after the fact).
#[utoipa::path(post, path = "/admin/v1/workflows/{id}/resume", tag = "workflows",
    params(("id" = String, Path, description = "Workflow id")),
    responses((status = 202, body = PauseAnswer), (status = 404, body = ApiError), (status = 401, body = ApiError)),
    security(("bearer" = [])))]
async fn resume(e: Data, id: web::Path<String>) -> HttpResponse {
    set_paused(e, id.into_inner(), false).await
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EnrollRequest {
    #[serde(rename = "userId")]
    pub user_id: String,
    /// Available to the workflow's templates and conditions as the enrolling event's.
    #[serde(default)]
    #[schema(value_type = Object)]
    pub properties: serde_json::Map<String, serde_json::Value>,
    /// The caller's key: a repeat with the same key enrols once (the `Idempotency-Key` header
    /// may carry it instead).
    #[serde(default)]
    pub key: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct EnrollAnswer {
    /// False when the same key was seen before (the first call's enrolment stands).
    pub accepted: bool,
    /// The log record's message id.
    #[serde(rename = "messageId")]
    pub message_id: String,
}

/// Enrols a contact into an `api: true` workflow, through the log; idempotent on the caller's
/// key. The entry rules apply as for any trigger (one enrolment at a time; `once`, `always`,
/// cooldown).
#[utoipa::path(post, path = "/admin/v1/workflows/{id}/enroll", tag = "workflows",
    params(("id" = String, Path, description = "Workflow id"),
           ("Idempotency-Key" = Option<String>, Header, description = "The caller's key, if not in the body")),
    request_body = EnrollRequest,
    responses((status = 202, body = EnrollAnswer), (status = 400, body = ApiError), (status = 404, body = ApiError),
              (status = 401, body = ApiError)),
    security(("bearer" = [])))]
async fn enroll(e: Data, req: HttpRequest, id: web::Path<String>, body: web::Bytes) -> HttpResponse {
    let r: EnrollRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(err) => {
            return bad_request(format!(
                "not an enrolment ({{\"userId\", \"properties\", \"key\"}}): {err}"
            ));
        }
    };
    let Some(wf) = e.reg.latest_of(&id) else {
        return not_found(format!("no workflow `{id}`"));
    };
    if !wf.triggers.iter().any(|t| matches!(t, crate::workflow::Trigger::Api)) {
        return bad_request(format!("workflow `{id}` has no `api: true` trigger"));
    }
    if r.user_id.is_empty() {
        return bad_request("`userId` is empty");
    }
    let header_key = req
        .headers()
        .get("Idempotency-Key")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let Some(key) = header_key.or(r.key).filter(|k| !k.is_empty()) else {
        return bad_request("an idempotency key is required (`key` in the body or the `Idempotency-Key` header)");
    };
    let message_id = format!("enroll:{id}:{key}");
    let event = serde_json::json!({
        "type": "track",
        "userId": r.user_id,
        "messageId": message_id,
        "event": crate::event::ENROLL_EVENT,
        "properties": {"workflow": id.as_str(), "properties": r.properties},
    });
    let engine = e.clone();
    let now = chrono::Utc::now().timestamp_millis();
    match blocking(move || engine.ingest_values(&[event], None, now)).await {
        Ok(report) if report.errors.is_empty() => HttpResponse::Accepted().json(EnrollAnswer {
            accepted: report.accepted == 1,
            message_id,
        }),
        Ok(report) => bad_request(report.errors[0].reason.clone()),
        Err(resp) => resp,
    }
}

// ---- contacts ---------------------------------------------------------------------------------

/// A contact's state: traits, tags, lists, enrolments (workflow, version, step id, since when,
/// waiting until), timers, entry history and suppression.
#[utoipa::path(get, path = "/admin/v1/contacts/{id}", tag = "contacts",
    params(("id" = String, Path, description = "Contact (user) id")),
    responses((status = 200, body = Object), (status = 404, body = ApiError), (status = 401, body = ApiError)),
    security(("bearer" = [])))]
async fn get_contact(e: Data, id: web::Path<String>) -> HttpResponse {
    let engine = e.clone();
    let id = id.into_inner();
    let who = id.clone();
    match blocking(move || contact_json(&engine, &who)).await {
        Ok(Some(v)) => HttpResponse::Ok().json(v),
        Ok(None) => not_found(format!("no contact `{id}`")),
        Err(resp) => resp,
    }
}

/// Everything held about a contact (GDPR access): its state, its suppression, and the mail
/// waiting for it in the outbox.
#[utoipa::path(get, path = "/admin/v1/contacts/{id}/export", tag = "contacts",
    params(("id" = String, Path, description = "Contact (user) id")),
    responses((status = 200, body = Object), (status = 404, body = ApiError), (status = 401, body = ApiError)),
    security(("bearer" = [])))]
async fn export_contact(e: Data, id: web::Path<String>) -> HttpResponse {
    let engine = e.clone();
    let id = id.into_inner();
    let who = id.clone();
    let exported = blocking(move || {
        let Some(mut v) = contact_json(&engine, &who)? else {
            return Ok(None);
        };
        let waiting = outbox_of(&engine, &who)?;
        v["outbox"] = waiting.into();
        Ok(Some(v))
    })
    .await;
    match exported {
        Ok(Some(v)) => HttpResponse::Ok().json(v),
        Ok(None) => not_found(format!("no contact `{id}`")),
        Err(resp) => resp,
    }
}

/// The mail waiting in the outbox for a contact.
pub fn outbox_of(engine: &Engine, id: &str) -> anyhow::Result<Vec<serde_json::Value>> {
    Ok(tables::outbox_of_contact(&engine.store, id)?
        .into_iter()
        .map(|(sid, entry)| {
            serde_json::json!({
                "send_id": sid.to_string(),
                "workflow": entry.workflow,
                "step": entry.step,
                "to": entry.to,
                "decided_at": crate::time::format_rfc3339(entry.decided_at),
            })
        })
        .collect())
}

/// The contact's state as JSON, with step ids beside the indices and its suppression.
pub fn contact_json(engine: &Engine, id: &str) -> anyhow::Result<Option<serde_json::Value>> {
    let Some(st) = tables::get_contact(&engine.store, id)? else {
        return Ok(None);
    };
    let mut v = st.to_json();
    if let Some(list) = v["enrollments"].as_array_mut() {
        for e in list {
            let wf = e["workflow"].as_str().unwrap_or_default().to_owned();
            let version = e["version"].as_u64().unwrap_or_default() as u32;
            let step = e["step"].as_u64().unwrap_or_default() as usize;
            if let Some(s) = engine.reg.get(&wf, version).and_then(|w| w.steps.get(step)) {
                e["step_id"] = s.id.as_str().into();
            }
        }
    }
    v["id"] = id.into();
    v["suppression"] = serde_json::to_value(tables::get_suppression(&engine.store, id)?)?;
    Ok(Some(v))
}

#[derive(Serialize, ToSchema)]
pub struct EraseAnswer {
    pub contact: String,
    /// True once everything is gone from the data directory; false when the call stopped
    /// waiting (the erasure completes in the background, or on the instance that owns the
    /// contact's partition).
    pub erased: bool,
}

/// Erases a contact (GDPR): its state, timers, waiting mail and history, its records in the
/// log and the dead letters that mention it; then the store is compacted so no byte of its id
/// or address is left in a file. An address that had opted out stays on the suppression list as
/// a one-way hash. Waits up to 30 s for completion.
#[utoipa::path(delete, path = "/admin/v1/contacts/{id}", tag = "contacts",
    params(("id" = String, Path, description = "Contact (user) id")),
    responses((status = 200, body = EraseAnswer), (status = 202, body = EraseAnswer), (status = 404, body = ApiError),
              (status = 401, body = ApiError)),
    security(("bearer" = [])))]
async fn erase_contact(e: Data, id: web::Path<String>) -> HttpResponse {
    let id = id.into_inner();
    let (engine, who) = (e.clone(), id.clone());
    let found = blocking(move || {
        if tables::get_contact(&engine.store, &who)?.is_none() {
            return Ok(false);
        }
        engine.erase(&who)?;
        Ok(true)
    })
    .await;
    match found {
        Ok(true) => {}
        Ok(false) => return not_found(format!("no contact `{id}`")),
        Err(resp) => return resp,
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while std::time::Instant::now() < deadline {
        if e.take_erased(&id) {
            return HttpResponse::Ok().json(EraseAnswer {
                contact: id,
                erased: true,
            });
        }
        actix_web::rt::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    HttpResponse::Accepted().json(EraseAnswer {
        contact: id,
        erased: false,
    })
}

// ---- dead letters -----------------------------------------------------------------------------

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct Page {
    /// The key of the last dead letter of the previous page.
    pub after: Option<String>,
    /// At most this many (default 100, at most 1000).
    pub limit: Option<usize>,
}

#[derive(Serialize, ToSchema)]
pub struct DeadLetterView {
    pub key: String,
    pub at: String,
    pub source: String,
    pub reason: String,
    /// The first 512 bytes of the payload.
    pub excerpt: String,
    pub payload_bytes: usize,
    pub truncated: bool,
}

#[derive(Serialize, ToSchema)]
pub struct DeadLetterPage {
    pub items: Vec<DeadLetterView>,
    /// Pass as `after` for the next page; absent on the last.
    pub next: Option<String>,
}

const EXCERPT: usize = 512;

/// A dead letter as the API shows it.
fn view(k: DeadKey, d: dead_letters::DeadLetter) -> DeadLetterView {
    DeadLetterView {
        key: k.to_string(),
        excerpt: d.payload[..dead_letters::char_boundary_at_or_below(&d.payload, EXCERPT)].to_owned(),
        payload_bytes: d.payload.len(),
        at: d.at,
        source: d.source,
        reason: d.reason,
        truncated: d.truncated,
    }
}

/// Dead letters, oldest first, a page at a time.
#[utoipa::path(get, path = "/admin/v1/dead-letters", tag = "dead letters", params(Page),
    responses((status = 200, body = DeadLetterPage), (status = 400, body = ApiError), (status = 401, body = ApiError)),
    security(("bearer" = [])))]
async fn list_dead_letters(e: Data, q: web::Query<Page>) -> HttpResponse {
    let after = match q.after.as_deref().map(str::parse::<DeadKey>).transpose() {
        Ok(a) => a,
        Err(err) => return bad_request(err),
    };
    let limit = q.limit.unwrap_or(100).clamp(1, 1000);
    let engine = e.clone();
    match blocking(move || Ok(dead_letters::page(&engine.store, after, limit)?)).await {
        Ok(items) => {
            let next = (items.len() == limit)
                .then(|| items.last().map(|(k, _)| k.to_string()))
                .flatten();
            let items = items.into_iter().map(|(k, d)| view(k, d)).collect();
            HttpResponse::Ok().json(DeadLetterPage { items, next })
        }
        Err(resp) => resp,
    }
}

/// Ingests a refused event again: its stored payload, or the corrected event in the body. On
/// success the dead letter is deleted; otherwise it stays and the answer says why.
#[utoipa::path(post, path = "/admin/v1/dead-letters/{key}/retry", tag = "dead letters",
    params(("key" = String, Path, description = "The dead letter's key")),
    request_body(content = Object, description = "Optional: a corrected event to ingest instead of the stored payload"),
    responses((status = 200, body = Object), (status = 400, body = ApiError), (status = 404, body = ApiError),
              (status = 409, body = ApiError), (status = 401, body = ApiError)),
    security(("bearer" = [])))]
async fn retry_dead_letter(e: Data, key: web::Path<String>, body: web::Bytes) -> HttpResponse {
    let key: DeadKey = match key.parse() {
        Ok(k) => k,
        Err(err) => return bad_request(err),
    };
    let engine = e.clone();
    let found = blocking(move || Ok(dead_letters::get(&engine.store, key)?)).await;
    let letter = match found {
        Ok(Some(d)) => d,
        Ok(None) => return not_found(format!("no dead letter {key}")),
        Err(resp) => return resp,
    };
    let payload = if body.iter().any(|b| !b.is_ascii_whitespace()) {
        body.to_vec()
    } else if letter.source != "ingest" {
        return error(
            actix_web::http::StatusCode::CONFLICT,
            "not_retryable",
            format!(
                "a `{}` dead letter is not an event; send a corrected event in the body",
                letter.source
            ),
        );
    } else if letter.truncated {
        return error(
            actix_web::http::StatusCode::CONFLICT,
            "truncated",
            "the stored payload was cut at dead_letters.max_payload_bytes; send the event in the body",
        );
    } else {
        letter.payload.into_bytes()
    };
    let engine = e.clone();
    let now = chrono::Utc::now().timestamp_millis();
    let retried = blocking(move || {
        let parsed = crate::event::wire::parse_ref(&payload, None);
        if let Err(err) = parsed {
            return Ok(Err(err.to_string()));
        }
        let report = engine.ingest_raw(&[&payload], None, now, Origin::Client)?;
        if report.errors.is_empty() {
            let mut b = rocksdb::WriteBatch::default();
            dead_letters::delete(&engine.store, &mut b, key);
            engine.store.write(b, true)?;
        }
        Ok(Ok(report))
    })
    .await;
    match retried {
        Ok(Ok(report)) if report.errors.is_empty() => HttpResponse::Ok().json(report),
        Ok(Ok(report)) => bad_request(report.errors[0].reason.clone()),
        Ok(Err(reason)) => bad_request(reason),
        Err(resp) => resp,
    }
}

/// Deletes a dead letter.
#[utoipa::path(delete, path = "/admin/v1/dead-letters/{key}", tag = "dead letters",
    params(("key" = String, Path, description = "The dead letter's key")),
    responses((status = 204), (status = 404, body = ApiError), (status = 401, body = ApiError)),
    security(("bearer" = [])))]
async fn delete_dead_letter(e: Data, key: web::Path<String>) -> HttpResponse {
    let key: DeadKey = match key.parse() {
        Ok(k) => k,
        Err(err) => return bad_request(err),
    };
    let engine = e.clone();
    let deleted = blocking(move || {
        if dead_letters::get(&engine.store, key)?.is_none() {
            return Ok(false);
        }
        let mut b = rocksdb::WriteBatch::default();
        dead_letters::delete(&engine.store, &mut b, key);
        engine.store.write(b, true)?;
        Ok(true)
    })
    .await;
    match deleted {
        Ok(true) => HttpResponse::NoContent().finish(),
        Ok(false) => not_found(format!("no dead letter {key}")),
        Err(resp) => resp,
    }
}

// ---- suppressions -----------------------------------------------------------------------------

#[derive(Serialize, Deserialize, ToSchema)]
pub struct AddressSuppression {
    /// Why, for people (`complaint`, `manual`, …).
    #[serde(default)]
    pub reason: String,
    /// When it was added (RFC 3339; set by the engine).
    #[serde(default)]
    pub since: String,
}

/// Whether an address is suppressed. Addresses are stored as a one-way hash, so the list never
/// holds an address in the clear.
#[utoipa::path(get, path = "/admin/v1/suppressions/{email}", tag = "suppressions",
    params(("email" = String, Path, description = "E-mail address (case-insensitive)")),
    responses((status = 200, body = AddressSuppression), (status = 404, body = ApiError), (status = 401, body = ApiError)),
    security(("bearer" = [])))]
async fn get_suppression(e: Data, email: web::Path<String>) -> HttpResponse {
    let engine = e.clone();
    let address = email.into_inner();
    match blocking(move || Ok(suppressed_addresses::get(&engine.store, &address)?)).await {
        Ok(Some(s)) => HttpResponse::Ok().json(AddressSuppression {
            reason: s.reason,
            since: crate::time::format_rfc3339(s.since),
        }),
        Ok(None) => not_found("not suppressed"),
        Err(resp) => resp,
    }
}

/// Suppresses an address: no mail of any kind goes to it from now on, whichever contact it
/// belongs to.
#[utoipa::path(put, path = "/admin/v1/suppressions/{email}", tag = "suppressions",
    params(("email" = String, Path, description = "E-mail address (case-insensitive)")),
    request_body(content = AddressSuppression, description = "Optional reason"),
    responses((status = 204), (status = 400, body = ApiError), (status = 401, body = ApiError)),
    security(("bearer" = [])))]
async fn put_suppression(e: Data, email: web::Path<String>, body: web::Bytes) -> HttpResponse {
    let reason = if body.iter().all(u8::is_ascii_whitespace) {
        "manual".to_owned()
    } else {
        match serde_json::from_slice::<AddressSuppression>(&body) {
            Ok(s) if !s.reason.is_empty() => s.reason,
            Ok(_) => "manual".to_owned(),
            Err(err) => return bad_request(format!("not a suppression ({{\"reason\"}}): {err}")),
        }
    };
    if !email.contains('@') {
        return bad_request(format!("`{email}` is not an e-mail address"));
    }
    let engine = e.clone();
    let address = email.into_inner();
    let now = chrono::Utc::now().timestamp_millis();
    let put = blocking(move || {
        let mut b = rocksdb::WriteBatch::default();
        suppressed_addresses::put(&engine.store, &mut b, &address, &reason, now);
        engine.store.write(b, true)?;
        Ok(())
    })
    .await;
    match put {
        Ok(()) => HttpResponse::NoContent().finish(),
        Err(resp) => resp,
    }
}

/// Lifts an address's suppression.
#[utoipa::path(delete, path = "/admin/v1/suppressions/{email}", tag = "suppressions",
    params(("email" = String, Path, description = "E-mail address (case-insensitive)")),
    responses((status = 204), (status = 404, body = ApiError), (status = 401, body = ApiError)),
    security(("bearer" = [])))]
async fn delete_suppression(e: Data, email: web::Path<String>) -> HttpResponse {
    let engine = e.clone();
    let address = email.into_inner();
    let deleted = blocking(move || {
        if suppressed_addresses::get(&engine.store, &address)?.is_none() {
            return Ok(false);
        }
        let mut b = rocksdb::WriteBatch::default();
        suppressed_addresses::delete(&engine.store, &mut b, &address);
        engine.store.write(b, true)?;
        Ok(true)
    })
    .await;
    match deleted {
        Ok(true) => HttpResponse::NoContent().finish(),
        Ok(false) => not_found("not suppressed"),
        Err(resp) => resp,
    }
}

// ---- feedback ---------------------------------------------------------------------------------

/// An ESP's delivery feedback (bounces, complaints, …) as the engine's own events, in a batch:
/// `{"batch": [{"type": "track", "userId", "messageId", "event": "Email Bounced",
/// "properties": {"message_id": "<send id>"}}]}`. Only here may these names come in.
#[utoipa::path(post, path = "/admin/v1/feedback", tag = "feedback",
    request_body(content = Object, description = "A Segment batch of feedback events"),
    responses((status = 200, body = Object), (status = 400, body = Object), (status = 401, body = ApiError)),
    security(("bearer" = [])))]
async fn feedback(e: Data, body: web::Bytes) -> HttpResponse {
    ingest(e, body, None, true, Origin::Engine).await
}

// ---- the document -----------------------------------------------------------------------------

struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        doc.components.get_or_insert_with(Default::default).add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

#[derive(OpenApi)]
#[openapi(
    info(title = "dripline admin API", description = "Workflows, contacts, dead letters, suppressions and ESP feedback. \
        Every call needs `Authorization: Bearer <admin token>`."),
    paths(list_workflows, report::get_report, pause, resume, enroll, get_contact, export_contact, erase_contact, list_dead_letters, retry_dead_letter,
          delete_dead_letter, get_suppression, put_suppression, delete_suppression, feedback),
    components(schemas(ApiError, PauseAnswer, WorkflowSummary, VersionSummary, report::Report, report::StepReport, EnrollRequest, EnrollAnswer, EraseAnswer, DeadLetterView,
                       DeadLetterPage, AddressSuppression)),
    modifiers(&BearerAuth)
)]
pub struct ApiDoc;

async fn openapi() -> HttpResponse {
    HttpResponse::Ok().json(ApiDoc::openapi())
}

/// The admin routes (mounted on the private listener).
pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::scope("/admin/v1")
            .route("/openapi.json", web::get().to(openapi))
            .route("/workflows", web::get().to(list_workflows))
            .route("/workflows/{id}/report", web::get().to(report::get_report))
            .route("/workflows/{id}/pause", web::post().to(pause))
            .route("/workflows/{id}/resume", web::post().to(resume))
            .route("/workflows/{id}/enroll", web::post().to(enroll))
            .route("/contacts/{id}", web::get().to(get_contact))
            .route("/contacts/{id}", web::delete().to(erase_contact))
            .route("/contacts/{id}/export", web::get().to(export_contact))
            .route("/dead-letters", web::get().to(list_dead_letters))
            .route("/dead-letters/{key}/retry", web::post().to(retry_dead_letter))
            .route("/dead-letters/{key}", web::delete().to(delete_dead_letter))
            .route("/suppressions/{email}", web::get().to(get_suppression))
            .route("/suppressions/{email}", web::put().to(put_suppression))
            .route("/suppressions/{email}", web::delete().to(delete_suppression))
            .route("/feedback", web::post().to(feedback)),
    );
}
