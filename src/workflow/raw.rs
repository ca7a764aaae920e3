//! The workflow file format exactly as written on disk (YAML). Every struct denies unknown
//! fields so that a typo is an error at load, never a silently ignored setting.
//! [`super::compile`] turns these into the validated, indexed form the engine runs.

use serde::Deserialize;
use std::collections::BTreeMap;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawWorkflow {
    pub id: String,
    pub name: Option<String>,
    pub description: Option<String>,
    pub triggers: Vec<RawTrigger>,
    #[serde(default)]
    pub entry: RawEntry,
    pub goal: Option<RawGoal>,
    /// Time zone used when the contact has no valid `timezone` trait.
    pub timezone: Option<String>,
    pub steps: Vec<RawStep>,
    #[serde(default)]
    pub templates: BTreeMap<String, RawTemplate>,
}

/// `once` (default: a contact enters at most once, ever), `always` (again whenever the previous
/// enrollment has ended) or `{ cooldown: 7d }` (again this long after the previous entry).
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum RawEntry {
    Word(String),
    Cooldown(RawCooldown),
}

impl Default for RawEntry {
    fn default() -> Self {
        RawEntry::Word("once".into())
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCooldown {
    pub cooldown: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTrigger {
    /// A tracked event (or `Page Viewed`) by name.
    pub event: Option<String>,
    /// Property filters on that event, all of which must hold.
    #[serde(rename = "where", default)]
    pub filter: Vec<RawCondition>,
    /// A condition over traits, tags, lists and counters; fires when it turns from false to true
    /// (a threshold crossing, a trait becoming a value), not on every update.
    pub becomes: Option<RawCondition>,
    /// Fires whenever an identify changes this trait.
    pub trait_changed: Option<String>,
    /// Fires when the contact has had no activity for this long.
    pub inactive_for: Option<String>,
    /// A yearly or one-off date taken from a trait.
    pub date: Option<RawDateTrigger>,
    /// Fires when the contact enters this list (a dynamic list's condition turns true, or an
    /// `add_to_list` action).
    pub list: Option<String>,
    /// Enrollment through the API only.
    #[serde(default)]
    pub api: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDateTrigger {
    #[serde(rename = "trait")]
    pub trait_name: String,
    /// Signed duration added to the date, e.g. `-7d`.
    pub offset: Option<String>,
    /// Local time of day `HH:MM` in the contact's time zone; default 00:00.
    pub at: Option<String>,
    /// Recur every year on the anniversary (birthdays); otherwise fire once.
    #[serde(default)]
    pub yearly: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawGoal {
    pub event: Option<String>,
    #[serde(rename = "where", default)]
    pub filter: Vec<RawCondition>,
    pub when: Option<RawCondition>,
}

/// One condition. Exactly one subject (`trait`, `prop`, `count`, `tag`, `in_list`, `opened`,
/// `clicked`, `all`, `any`, `not`) and, for value subjects, exactly one operator.
#[derive(Debug, Deserialize, Default, Clone)]
#[serde(deny_unknown_fields)]
pub struct RawCondition {
    pub all: Option<Vec<RawCondition>>,
    pub any: Option<Vec<RawCondition>>,
    pub not: Option<Box<RawCondition>>,
    #[serde(rename = "trait")]
    pub trait_name: Option<String>,
    pub prop: Option<String>,
    pub count: Option<String>,
    #[serde(rename = "where")]
    pub count_filter: Option<Vec<RawCondition>>,
    pub within: Option<String>,
    pub tag: Option<String>,
    pub in_list: Option<String>,
    pub opened: Option<String>,
    pub clicked: Option<String>,
    pub eq: Option<serde_json::Value>,
    pub ne: Option<serde_json::Value>,
    #[serde(rename = "in")]
    pub one_of: Option<Vec<serde_json::Value>>,
    pub gt: Option<f64>,
    pub gte: Option<f64>,
    pub lt: Option<f64>,
    pub lte: Option<f64>,
    pub exists: Option<bool>,
    pub contains: Option<serde_json::Value>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawStep {
    pub id: String,
    /// Where to go after this step; default the next step in the list, or exit after the last.
    pub next: Option<String>,

    pub send: Option<RawSend>,
    pub wait: Option<String>,
    pub wait_until: Option<RawWaitUntil>,
    pub wait_for: Option<RawWaitFor>,
    pub on_event: Option<String>,
    pub on_timeout: Option<String>,
    pub branch: Option<Vec<RawCase>>,
    #[serde(rename = "else")]
    pub otherwise: Option<String>,
    pub split: Option<RawSplit>,
    pub webhook: Option<RawWebhook>,
    pub exit: Option<RawExit>,

    // Contact updates; any number of these may share one step.
    pub set: Option<BTreeMap<String, serde_json::Value>>,
    pub unset: Option<Vec<String>>,
    pub tag: Option<String>,
    pub untag: Option<String>,
    pub add_to_list: Option<String>,
    pub remove_from_list: Option<String>,
    pub lifecycle_stage: Option<String>,
    pub add_score: Option<i64>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum RawSend {
    Template(String),
    Full(RawSendFull),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSendFull {
    pub template: String,
    /// `contact` (default), `trait:NAME` (e.g. `trait:owner_email`), or a fixed address.
    pub to: Option<String>,
    /// Fallback address when `to: trait:NAME` is empty.
    pub fallback: Option<String>,
    /// `marketing` (default), `transactional` or `internal`.
    pub kind: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawWaitUntil {
    /// `trait.NAME` or `event.NAME` (the triggering event's property); default: now.
    pub date: Option<String>,
    pub offset: Option<String>,
    pub at: Option<String>,
    /// Step to take when the computed moment has already passed; default: go on at once.
    pub if_past: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawWaitFor {
    pub event: String,
    #[serde(rename = "where", default)]
    pub filter: Vec<RawCondition>,
    pub timeout: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCase {
    pub when: RawCondition,
    pub then: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSplit {
    pub variants: Vec<RawVariant>,
    /// Percentage (0–100) of entrants held out: they get nothing and exit as `holdout`.
    #[serde(default)]
    pub holdout: f64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawVariant {
    pub name: String,
    pub weight: f64,
    pub then: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawWebhook {
    /// Where to call: a URL (a template) or the name of an endpoint in the configuration.
    pub url: Option<String>,
    pub endpoint: Option<String>,
    /// `POST` (default), `PUT`, `PATCH`, `GET` or `DELETE`.
    pub method: Option<String>,
    /// Header values are templates.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// The body as a template (JSON unless a `Content-Type` header says otherwise); default: the
    /// contact id, workflow, step and message id as JSON.
    pub body: Option<String>,
    /// A form body instead (`application/x-www-form-urlencoded`): each value a template, the
    /// encoding done by the transport.
    pub form: Option<BTreeMap<String, String>>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum RawExit {
    Plain(bool),
    Reason(String),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTemplate {
    pub subject: String,
    pub html: Option<String>,
    pub text: Option<String>,
    /// A calendar invite sent with the message.
    pub calendar: Option<RawCalendar>,
    /// The message in other languages, by locale tag (`zh`, `zh-Hant`, `ru`, `id`): chosen by
    /// the contact's `locale` trait, most specific first; the template above is the default.
    #[serde(default)]
    pub locales: BTreeMap<String, RawLocalized>,
}

/// A template in one language: a whole message (nothing is taken from the default).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLocalized {
    pub subject: String,
    pub html: Option<String>,
    pub text: Option<String>,
}

/// Every field a template. `start` and `end` render to an RFC 3339 time, a local
/// `YYYY-MM-DDTHH:MM[:SS]` (in the contact's time zone) or a date (an all-day event).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCalendar {
    pub start: String,
    pub end: Option<String>,
    pub title: String,
    pub location: Option<String>,
    pub description: Option<String>,
    /// The zone local times are in (the venue's); default: the contact's.
    pub timezone: Option<String>,
    /// What identifies the event across messages (a template, e.g. `{{ event.event_id }}`):
    /// invites with the same key update one another (or cancel, below). Default: each message's
    /// invite is an event of its own.
    pub key: Option<String>,
    /// This message cancels the event of its `key` (iTIP `METHOD:CANCEL`).
    #[serde(default)]
    pub cancel: bool,
}

/// `dripline.yaml` beside the workflows: trait types and named lists shared by all workflows.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawDirectory {
    #[serde(default)]
    pub traits: BTreeMap<String, String>,
    #[serde(default)]
    pub lists: BTreeMap<String, RawCondition>,
}
