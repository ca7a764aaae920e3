//! A workflow's report: per step, the counts the state machine keeps (`counters` table), summed
//! over partitions, for one version or all. Read from the counters the partitions commit, never
//! by scanning contacts, so it answers in the time of a counters scan whatever the contacts.

use super::{Data, blocking, not_found};
use crate::machine::Metric;
use crate::runtime::Engine;
use crate::storage::tables;
use crate::workflow::model::StepKind;
use actix_web::{HttpResponse, web};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use utoipa::ToSchema;

#[derive(Serialize, Deserialize, ToSchema, Debug, PartialEq)]
pub struct Report {
    pub workflow: String,
    pub name: String,
    /// The version reported, or none for all versions together.
    pub version: Option<u32>,
    /// In the order of the version's definition (the latest's for all versions); steps only an
    /// older version has come last.
    pub steps: Vec<StepReport>,
}

#[derive(Serialize, Deserialize, ToSchema, Debug, PartialEq, Default)]
pub struct StepReport {
    pub step: String,
    /// `send`, `wait`, `wait_until`, `wait_for`, `branch`, `split`, `update`, `webhook`,
    /// `exit`; empty for a step the reported version does not define.
    pub kind: String,
    /// Contacts that reached the step.
    pub entered: i64,
    /// Contacts waiting at it now.
    pub waiting: i64,
    /// Contacts whose enrollment ended here: the workflow's end or an exit condition.
    pub exited: i64,
    /// Contacts that reached the workflow's goal while at this step.
    pub converted: i64,
    /// Contacts an A/B split held out (sent nothing).
    pub holdout: i64,
    pub sent: i64,
    /// Sends skipped: the contact unsubscribed, bounced or complained.
    pub suppressed: i64,
    /// Sends skipped by the frequency cap.
    pub capped: i64,
    /// Sends skipped: the contact has no e-mail address.
    pub no_address: i64,
    /// Unique opens and clicks of this step's mail.
    pub opened: i64,
    pub clicked: i64,
}

impl StepReport {
    fn add(&mut self, metric: Metric, n: i64) {
        let slot = match metric {
            Metric::Entered => &mut self.entered,
            Metric::Waiting => &mut self.waiting,
            Metric::Exited => &mut self.exited,
            Metric::Converted => &mut self.converted,
            Metric::Holdout => &mut self.holdout,
            Metric::Sent => &mut self.sent,
            Metric::Suppressed => &mut self.suppressed,
            Metric::Capped => &mut self.capped,
            Metric::NoAddress => &mut self.no_address,
            Metric::Opened => &mut self.opened,
            Metric::Clicked => &mut self.clicked,
        };
        *slot += n;
    }
}

fn kind_name(k: &StepKind) -> &'static str {
    match k {
        StepKind::Send { .. } => "send",
        StepKind::Wait(_) => "wait",
        StepKind::WaitUntil { .. } => "wait_until",
        StepKind::WaitFor { .. } => "wait_for",
        StepKind::Branch { .. } => "branch",
        StepKind::Split { .. } => "split",
        StepKind::Update(_) => "update",
        StepKind::Webhook { .. } => "webhook",
        StepKind::Exit => "exit",
    }
}

/// The report of `workflow` (`None` when there is no such workflow or version).
pub fn report(engine: &Engine, workflow: &str, version: Option<u32>) -> anyhow::Result<Option<Report>> {
    let defined = match version {
        Some(v) => engine.reg.get(workflow, v),
        None => engine.reg.latest_of(workflow),
    };
    let Some(wf) = defined else {
        return Ok(None);
    };
    let mut steps: Vec<StepReport> = wf
        .steps
        .iter()
        .map(|s| StepReport {
            step: s.id.clone(),
            kind: kind_name(&s.kind).into(),
            ..Default::default()
        })
        .collect();
    let mut extra: BTreeMap<String, StepReport> = BTreeMap::new();
    for ((w, v, step, metric), n) in tables::counters(&engine.store)? {
        if w != workflow || version.is_some_and(|want| want != v) {
            continue;
        }
        match steps.iter_mut().find(|s| s.step == step) {
            Some(s) => s.add(metric, n),
            None => extra
                .entry(step.clone())
                .or_insert_with(|| StepReport {
                    step,
                    ..Default::default()
                })
                .add(metric, n),
        }
    }
    steps.extend(extra.into_values());
    Ok(Some(Report {
        workflow: wf.id.to_string(),
        name: wf.name.clone(),
        version,
        steps,
    }))
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ReportQuery {
    /// One version (default: all versions together).
    pub version: Option<u32>,
}

/// A workflow's per-step numbers: entered, waiting now, exited, converted, held out, sent,
/// skipped (suppressed, capped, no address), opened, clicked.
#[utoipa::path(get, path = "/admin/v1/workflows/{id}/report", tag = "workflows",
    params(("id" = String, Path, description = "Workflow id"), ReportQuery),
    responses((status = 200, body = Report), (status = 404, body = super::ApiError), (status = 401, body = super::ApiError)),
    security(("bearer" = [])))]
pub async fn get_report(e: Data, id: web::Path<String>, q: web::Query<ReportQuery>) -> HttpResponse {
    let (engine, id, version) = (e.clone(), id.into_inner(), q.version);
    let missing = match version {
        Some(v) => format!("no version {v} of workflow `{id}`"),
        None => format!("no workflow `{id}`"),
    };
    match blocking(move || report(&engine, &id, version)).await {
        Ok(Some(r)) => HttpResponse::Ok().json(r),
        Ok(None) => not_found(missing),
        Err(resp) => resp,
    }
}
