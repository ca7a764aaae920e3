//! An outbox entry's message, rendered as the mailer sends it: the workflow version's template,
//! in the contact's `locale` where it has a variant, with the traits and event recorded at the
//! decision, plus the signed unsubscribe link.

use crate::links::Links;
use crate::machine::SendId;
use crate::storage::tables::{Content, OutboxEntry};
use crate::workflow::{Registry, Rendered, RenderedCalendar, template_context};

/// Renders `e` (sent as `id`). An error is permanent for this entry (a template that fails on
/// this contact's data, a version no longer loaded) and says which template and why.
pub fn render(reg: &Registry, links: &Links, id: SendId, e: &OutboxEntry) -> Result<Rendered, String> {
    match &e.content {
        Content::Rendered(r) => Ok(r.clone()),
        Content::Webhook { .. } => Err("a webhook call is not a message".into()),
        Content::Template { template, traits, .. } => {
            let (wf, ctx) = context(reg, links, id, e)?;
            let locale = traits.get("locale").and_then(|v| v.as_str());
            reg.render_localized(wf, template, locale, &ctx)
                .map_err(|err| format!("template {template} of {} failed to render: {err}", e.workflow))
        }
    }
}

/// The calendar invite of `e`'s template, rendered with the same context, if it has one.
pub fn render_calendar(
    reg: &Registry,
    links: &Links,
    id: SendId,
    e: &OutboxEntry,
) -> Result<Option<RenderedCalendar>, String> {
    let Content::Template { template, .. } = &e.content else {
        return Ok(None);
    };
    // Most templates have none: no context (and no signed link) is made for them.
    if !reg
        .get(&e.workflow, e.version)
        .is_some_and(|wf| reg.has_calendar(wf, template))
    {
        return Ok(None);
    }
    let (wf, ctx) = context(reg, links, id, e)?;
    reg.render_calendar(wf, template, &ctx).map_err(|err| {
        format!(
            "the calendar of template {template} of {} failed to render: {err}",
            e.workflow
        )
    })
}

/// The workflow version of a template entry and what its templates see: the recorded traits and
/// event, and the signed unsubscribe link.
fn context<'r>(
    reg: &'r Registry,
    links: &Links,
    id: SendId,
    e: &OutboxEntry,
) -> Result<(&'r std::sync::Arc<crate::workflow::Workflow>, minijinja::Value), String> {
    let Content::Template { traits, event, .. } = &e.content else {
        return Err("not a template entry".into());
    };
    let wf = reg
        .get(&e.workflow, e.version)
        .ok_or_else(|| format!("workflow {} version {} is not loaded", e.workflow, e.version))?;
    let unsubscribe = links.unsubscribe_url(&e.contact, &e.workflow, &id.to_string());
    let extra = [("unsubscribe_url", minijinja::Value::from(unsubscribe))];
    Ok((wf, template_context(&e.contact, traits, event, &extra)))
}
