//! What recipients reach, on the public listener: `/u/{token}` (RFC 8058 one-click unsubscribe
//! and the preference page), `/o/{token}` (open pixel), `/c/{token}` (click redirect). A link
//! whose token does not open under the link secrets gets 404, so none of them can be forged or
//! turned into an open redirect. Nothing else is served here.

use super::http::Data;
use crate::links::{Claims, Purpose};
use crate::machine::FeedbackKind;
use actix_web::{HttpResponse, web};

/// A 1×1 transparent GIF.
const PIXEL: &[u8] = &[
    0x47, 0x49, 0x46, 0x38, 0x39, 0x61, 0x01, 0x00, 0x01, 0x00, 0x80, 0x00, 0x00, 0x00, 0x00, 0x00, 0xff, 0xff, 0xff,
    0x21, 0xf9, 0x04, 0x01, 0x00, 0x00, 0x00, 0x00, 0x2c, 0x00, 0x00, 0x00, 0x00, 0x01, 0x00, 0x01, 0x00, 0x00, 0x02,
    0x02, 0x44, 0x01, 0x00, 0x3b,
];

fn verified(e: &Data, token: &str, purpose: Purpose) -> Option<Claims> {
    e.links.verify(token).filter(|c| c.purpose == purpose)
}

fn not_found() -> HttpResponse {
    HttpResponse::NotFound().content_type("text/plain").body("not found")
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn page_html(title: &str, body: &str) -> HttpResponse {
    HttpResponse::Ok().content_type("text/html; charset=utf-8").body(format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><meta name=\"viewport\" content=\"width=device-width\">\
         <title>{title}</title></head><body style=\"font-family:sans-serif;max-width:32em;margin:2em auto\">{body}</body></html>"
    ))
}

/// `GET /u/{token}`: the preference page (never unsubscribes by itself: link scanners GET).
async fn preferences(e: Data, token: web::Path<String>) -> HttpResponse {
    let Some(c) = verified(&e, &token, Purpose::Unsubscribe) else {
        return not_found();
    };
    page_html(
        "Email preferences",
        &format!(
            "<h1>Email preferences</h1><form method=\"post\">\
             <p><label><input type=\"radio\" name=\"scope\" value=\"workflow\" id=\"scope-workflow\"> \
             Stop emails from <b>{}</b> only</label></p>\
             <p><label><input type=\"radio\" name=\"scope\" value=\"all\" id=\"scope-all\" checked> \
             Stop all marketing email</label></p>\
             <p><button type=\"submit\" id=\"unsubscribe\">Unsubscribe</button></p></form>",
            escape(&c.workflow)
        ),
    )
}

#[derive(serde::Deserialize, Default)]
struct UnsubscribeForm {
    scope: Option<String>,
    #[serde(rename = "List-Unsubscribe")]
    one_click: Option<String>,
}

/// `POST /u/{token}`: RFC 8058 one-click (`List-Unsubscribe=One-Click`: all marketing) or the
/// preference form (`scope=workflow|all`). Suppression takes effect before the answer.
async fn unsubscribe(e: Data, token: web::Path<String>, body: web::Bytes) -> HttpResponse {
    let Some(c) = verified(&e, &token, Purpose::Unsubscribe) else {
        return not_found();
    };
    let form: UnsubscribeForm = serde_urlencoded::from_bytes(&body).unwrap_or_default();
    let only_workflow = form.one_click.is_none() && form.scope.as_deref() == Some("workflow");
    let engine = e.clone();
    let claims = c.clone();
    match web::block(move || engine.unsubscribe(&claims, only_workflow)).await {
        Ok(Ok(())) => {
            e.metrics.mail_feedback.with_label_values(&["unsubscribed"]).inc();
            let what = if only_workflow {
                format!("emails from <b>{}</b>", escape(&c.workflow))
            } else {
                "all marketing email".to_owned()
            };
            page_html(
                "Unsubscribed",
                &format!("<h1 id=\"done\">Unsubscribed</h1><p>You will no longer receive {what}.</p>"),
            )
        }
        Ok(Err(err)) => HttpResponse::ServiceUnavailable().body(format!("{err:#}")),
        Err(err) => HttpResponse::InternalServerError().body(err.to_string()),
    }
}

async fn engagement(e: &Data, c: &Claims, kind: FeedbackKind, label: &str) {
    let (engine, claims) = (e.clone(), c.clone());
    match web::block(move || engine.engagement(&claims, kind)).await {
        Ok(Ok(())) => e.metrics.mail_feedback.with_label_values(&[label]).inc(),
        Ok(Err(err)) => tracing::warn!("{label} not recorded: {err:#}"),
        Err(err) => tracing::warn!("{label} not recorded: {err}"),
    }
}

/// `GET /o/{token}`: the open pixel.
async fn open_pixel(e: Data, token: web::Path<String>) -> HttpResponse {
    let Some(c) = verified(&e, &token, Purpose::Open) else {
        return not_found();
    };
    engagement(&e, &c, FeedbackKind::Opened, "opened").await;
    HttpResponse::Ok()
        .content_type("image/gif")
        .insert_header(("Cache-Control", "no-store"))
        .body(PIXEL)
}

/// `GET /c/{token}`: records the click and redirects to the signed destination only.
async fn click(e: Data, token: web::Path<String>) -> HttpResponse {
    let Some(c) = verified(&e, &token, Purpose::Click) else {
        return not_found();
    };
    let Some(url) = c.url.clone() else {
        return not_found();
    };
    engagement(&e, &c, FeedbackKind::Clicked, "clicked").await;
    HttpResponse::Found().insert_header(("Location", url)).finish()
}

/// The public routes.
pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/u/{token}", web::get().to(preferences))
        .route("/u/{token}", web::post().to(unsubscribe))
        .route("/o/{token}", web::get().to(open_pixel))
        .route("/c/{token}", web::get().to(click));
}
