//! The validated, compiled form of a workflow version: step ids resolved to indexes, durations in
//! milliseconds, conditions typed. This is what the state machine walks.

use crate::value::Value;
use std::sync::Arc;

/// Index of a step inside one workflow version.
pub type StepIdx = u16;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    Step(StepIdx),
    Exit,
}

#[derive(Debug)]
pub struct Workflow {
    pub id: Arc<str>,
    pub version: u32,
    pub name: String,
    pub triggers: Vec<Trigger>,
    pub entry: Entry,
    pub goal: Option<Goal>,
    pub timezone: Option<chrono_tz::Tz>,
    pub steps: Vec<Step>,
    /// Hash of the source text: a changed file makes a new version.
    pub source_hash: u64,
    pub source: Arc<str>,
    /// From this input time on, new entrants take this version (until a later one's):
    /// `Ts::MIN` for versions in force from the start. See [`crate::workflow::Registry::in_force`].
    pub deployed_at: crate::time::Ts,
}

impl Workflow {
    pub fn step_index(&self, id: &str) -> Option<StepIdx> {
        self.steps.iter().position(|s| s.id == id).map(|i| i as StepIdx)
    }
    pub fn template_name(&self, template: &str, part: TemplatePart) -> String {
        template_name(&self.id, self.version, template, part)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TemplatePart {
    Subject,
    Html,
    Text,
    /// The parts of a webhook step (named by the step's id).
    WebhookUrl,
    WebhookBody,
    /// The n-th header of the step (in name order), the n-th form field.
    WebhookHeader(usize),
    WebhookForm(usize),
    /// A field of a template's calendar invite (`start`, `end`, `title`, `location`,
    /// `description`).
    Calendar(&'static str),
}

pub fn template_name(wf: &str, version: u32, template: &str, part: TemplatePart) -> String {
    let ext = match part {
        TemplatePart::Subject => "subject".to_owned(),
        TemplatePart::Html => "html".to_owned(),
        TemplatePart::Text => "txt".to_owned(),
        TemplatePart::WebhookUrl => "url".to_owned(),
        TemplatePart::WebhookBody => "json".to_owned(),
        TemplatePart::WebhookHeader(i) => format!("header{i}"),
        TemplatePart::WebhookForm(i) => format!("form{i}"),
        TemplatePart::Calendar(field) => format!("cal-{field}"),
    };
    format!("{wf}/v{version}/{template}.{ext}")
}

/// A webhook step's call. Its URL (when not an endpoint's), header values, body and form values
/// are templates in the registry, named by the step's id and [`TemplatePart`].
#[derive(Debug, Clone, PartialEq)]
pub struct WebhookCall {
    pub target: WebhookTarget,
    pub method: String,
    /// Header names, in the order of their `WebhookHeader` templates.
    pub headers: Vec<String>,
    pub body: WebhookBody,
}

#[derive(Debug, Clone, PartialEq)]
pub enum WebhookTarget {
    /// The template's source (for reports and dead letters).
    Url(String),
    /// A named endpoint of the configuration (`[webhooks.NAME]`).
    Endpoint(String),
}

impl std::fmt::Display for WebhookTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WebhookTarget::Url(u) => f.write_str(u),
            WebhookTarget::Endpoint(name) => write!(f, "endpoint:{name}"),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum WebhookBody {
    /// The contact id, workflow, step and message id as JSON.
    Default,
    Template,
    /// Field names, in the order of their `WebhookForm` templates.
    Form(Vec<String>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Entry {
    Once,
    Always,
    Cooldown(i64),
}

#[derive(Debug)]
pub enum Trigger {
    Event { name: String, filter: Vec<Cond> },
    Becomes(Cond),
    TraitChanged(String),
    Inactive(i64),
    Date(DateSpec),
    List(String),
    Api,
}

#[derive(Debug, Clone)]
pub struct DateSpec {
    pub trait_name: String,
    pub offset: i64,
    /// Local (hour, minute).
    pub at: (u32, u32),
    pub yearly: bool,
}

#[derive(Debug)]
pub struct Goal {
    pub event: Option<(String, Vec<Cond>)>,
    pub when: Option<Cond>,
}

#[derive(Debug)]
pub struct Step {
    pub id: String,
    pub kind: StepKind,
    pub next: Next,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MailKind {
    Marketing,
    Transactional,
    /// To staff (sales alerts): exempt from the contact's suppression, cap and quiet hours.
    Internal,
}

#[derive(Debug, Clone)]
pub enum Recipient {
    Contact,
    Trait { name: String, fallback: Option<String> },
    Fixed(String),
}

#[derive(Debug)]
pub enum FieldRef {
    Trait(String),
    Event(String),
}

#[derive(Debug)]
pub enum StepKind {
    Send {
        template: String,
        to: Recipient,
        kind: MailKind,
    },
    Wait(i64),
    WaitUntil {
        date: Option<FieldRef>,
        offset: i64,
        at: Option<(u32, u32)>,
        if_past: Option<Next>,
    },
    WaitFor {
        event: String,
        filter: Vec<Cond>,
        timeout: i64,
        on_event: Next,
        on_timeout: Next,
    },
    Branch {
        cases: Vec<(Cond, Next)>,
        otherwise: Next,
    },
    /// Variants with cumulative upper bounds in basis points (0..10000); holdout below `holdout`.
    Split {
        variants: Vec<(String, u32, Next)>,
        holdout: u32,
    },
    Update(Vec<Action>),
    Webhook(Box<WebhookCall>),
    Exit,
}

impl StepKind {
    pub fn is_wait(&self) -> bool {
        matches!(
            self,
            StepKind::Wait(_) | StepKind::WaitUntil { .. } | StepKind::WaitFor { .. }
        )
    }
}

#[derive(Debug, Clone)]
pub enum Action {
    Set(String, Value),
    Unset(String),
    Tag(String),
    Untag(String),
    AddToList(String),
    RemoveFromList(String),
    AddScore(i64),
}

/// The trait holding the lead score (`add_score`).
pub const SCORE_TRAIT: &str = "score";
/// The trait holding the lifecycle stage (`lifecycle_stage:` action).
pub const LIFECYCLE_TRAIT: &str = "lifecycle_stage";

#[derive(Debug, Clone, PartialEq)]
pub enum Cond {
    All(Vec<Cond>),
    Any(Vec<Cond>),
    Not(Box<Cond>),
    Trait(String, Op),
    /// A property of the event being matched (filters) or of the event that started the
    /// enrollment (branches, waits).
    Prop(String, Op),
    Count {
        counter: u64,
        within_days: u32,
        op: Op,
    },
    Tag(String),
    InList(String),
    Opened(StepIdx),
    Clicked(StepIdx),
}

#[derive(Debug, Clone, PartialEq)]
pub enum Op {
    Eq(Value),
    Ne(Value),
    In(Vec<Value>),
    Gt(f64),
    Gte(f64),
    Lt(f64),
    Lte(f64),
    Exists(bool),
    Contains(Value),
}

impl Op {
    pub fn is_numeric(&self) -> bool {
        matches!(self, Op::Gt(_) | Op::Gte(_) | Op::Lt(_) | Op::Lte(_))
    }

    pub fn test(&self, v: Option<&Value>) -> bool {
        let v = v.filter(|v| !v.is_null());
        match self {
            Op::Exists(want) => v.is_some() == *want,
            Op::Ne(x) => !v.is_some_and(|v| v.loose_eq(x)),
            _ => {
                let Some(v) = v else { return false };
                match self {
                    Op::Eq(x) => v.loose_eq(x),
                    Op::In(xs) => xs.iter().any(|x| v.loose_eq(x)),
                    Op::Contains(x) => v.contains(x),
                    Op::Gt(x) => v.as_f64().is_some_and(|n| n > *x),
                    Op::Gte(x) => v.as_f64().is_some_and(|n| n >= *x),
                    Op::Lt(x) => v.as_f64().is_some_and(|n| n < *x),
                    Op::Lte(x) => v.as_f64().is_some_and(|n| n <= *x),
                    Op::Exists(_) | Op::Ne(_) => unreachable!("handled above"),
                }
            }
        }
    }

    /// Numeric comparison against a count.
    pub fn test_count(&self, n: u32) -> bool {
        self.test(Some(&Value::Int(n as i64)))
    }
}

/// A rolling counter of events matching a filter, derived from `count:` conditions.
#[derive(Debug)]
pub struct CounterDef {
    pub key: u64,
    pub event: String,
    pub filter: Vec<Cond>,
    /// Longest window any condition asks of it: older buckets are pruned.
    pub retention_days: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TraitType {
    String,
    Number,
    Bool,
    Date,
    DateTime,
    Email,
    Timezone,
}

impl TraitType {
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "string" => TraitType::String,
            "number" => TraitType::Number,
            "bool" => TraitType::Bool,
            "date" => TraitType::Date,
            "datetime" => TraitType::DateTime,
            "email" => TraitType::Email,
            "timezone" => TraitType::Timezone,
            _ => return None,
        })
    }
    pub const NAMES: &'static str = "string, number, bool, date, datetime, email, timezone";
}
