//! The set of workflow versions the engine runs, indexed for the hot path, with their templates
//! compiled once at load.

use super::compile::{CondUse, LoadError, LoadErrors, Scope, compile_cond_in_scope, compile_workflow};
use super::model::*;
use super::raw::{RawDirectory, RawWorkflow};
use crate::time::Ts;
use crate::value::Map;
use rustc_hash::FxHashMap;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;

/// Rules applied before any marketing send, whatever the workflow.
#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    pub frequency_cap: Option<FrequencyCap>,
    /// Local minutes of day `[start, end)` during which marketing mail waits; may wrap midnight.
    pub quiet_hours: Option<(u32, u32)>,
    pub default_timezone: chrono_tz::Tz,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FrequencyCap {
    pub max: u32,
    pub window: i64,
    /// Whether a send over the cap is skipped (the enrollment goes on) or waits for room.
    pub defer: bool,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            frequency_cap: None,
            quiet_hours: None,
            default_timezone: chrono_tz::UTC,
        }
    }
}

/// A workflow version as persisted by the runtime, so that contacts inside an old version can
/// finish on it after the file changed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredVersion {
    pub id: String,
    pub version: u32,
    pub file: String,
    pub source: String,
    /// The input time from which new entrants took this version (see
    /// [`Registry::in_force`]); absent in stores written before: in force from the start.
    #[serde(default = "from_the_start")]
    pub deployed_at: Ts,
}

fn from_the_start() -> Ts {
    Ts::MIN
}

/// What a contact-data change can affect: indexes condition triggers by their inputs.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Dep {
    Trait(String),
    Counter(u64),
    Tag(String),
    List(String),
}

pub struct CondTrigger {
    pub wf: Arc<Workflow>,
    pub cond: Cond,
}

#[derive(Default)]
pub struct Index {
    pub by_event: FxHashMap<String, Vec<(Arc<Workflow>, usize)>>,
    pub trait_changed: FxHashMap<String, Vec<Arc<Workflow>>>,
    pub inactivity: Vec<(Arc<Workflow>, i64)>,
    pub date: FxHashMap<String, Vec<(Arc<Workflow>, usize)>>,
    pub cond: Vec<CondTrigger>,
    pub cond_by_trait: FxHashMap<String, Vec<usize>>,
    pub cond_by_counter: FxHashMap<u64, Vec<usize>>,
    pub cond_by_tag: FxHashMap<String, Vec<usize>>,
    pub cond_by_list: FxHashMap<String, Vec<usize>>,
    pub counters_by_event: FxHashMap<String, Vec<u64>>,
    /// Event names any enrollment may react to (goals, wait_for): cheap skip for the rest.
    pub enrollment_events: rustc_hash::FxHashSet<String>,
    pub has_cond_goals: bool,
}

pub struct Registry {
    versions: FxHashMap<Arc<str>, BTreeMap<u32, Arc<Workflow>>>,
    latest: Vec<Arc<Workflow>>,
    /// The ids of `latest`: the workflows that have a file.
    current: rustc_hash::FxHashSet<Arc<str>>,
    pub index: Index,
    pub lists: BTreeMap<String, Cond>,
    pub traits: BTreeMap<String, TraitType>,
    pub counters: BTreeMap<u64, CounterDef>,
    templates: minijinja::Environment<'static>,
    pub policy: Policy,
    stored: Vec<StoredVersion>,
}

/// A rendered email, before transport headers are added.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rendered {
    pub subject: String,
    pub html: Option<String>,
    pub text: Option<String>,
}

/// A template's calendar invite, rendered (empty optional fields are left out).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RenderedCalendar {
    pub start: String,
    pub end: Option<String>,
    pub title: String,
    pub location: Option<String>,
    pub description: Option<String>,
    pub timezone: Option<String>,
    /// The event's identity across messages (see `calendar.key`), and whether this cancels it.
    pub key: Option<String>,
    pub cancel: bool,
}

/// The tags to try for a contact's locale, most specific first: `zh_Hant_TW` gives `zh-hant-tw`,
/// `zh-hant`, `zh`.
pub fn locale_chain(locale: &str) -> Vec<String> {
    let tag = normal_tag(locale);
    let mut chain = vec![];
    let mut cur = tag.as_str();
    while !cur.is_empty() {
        chain.push(cur.to_owned());
        cur = cur.rfind('-').map_or("", |i| &cur[..i]);
    }
    chain
}

/// A locale tag as compared: lower case, `-` between its parts (`zh_Hant` is `zh-hant`).
fn normal_tag(tag: &str) -> String {
    tag.trim().replace('_', "-").to_ascii_lowercase()
}

/// The name a template's variant for `tag` is registered under.
fn localized_name(template: &str, tag: &str) -> String {
    format!("{template}@{tag}")
}

/// The fields of a calendar invite, as named in workflows and templates.
pub const CALENDAR_FIELDS: [&str; 8] = [
    "start",
    "end",
    "title",
    "location",
    "description",
    "timezone",
    "key",
    "cancel",
];

pub const DIRECTORY_FILE: &str = "dripline.yaml";

fn parse_yaml<T: serde::de::DeserializeOwned>(file: &str, src: &str) -> Result<T, LoadError> {
    let de = serde_norway::Deserializer::from_str(src);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let reason = e.into_inner().to_string();
        // The YAML library already prefixes the path; keep it once, in `path`.
        let reason = match reason.split_once(": ") {
            Some((prefix, rest)) if !prefix.contains(' ') && path.starts_with(prefix) => rest.to_owned(),
            _ => reason,
        };
        LoadError {
            file: file.into(),
            path: if path == "." { "(top)".into() } else { path },
            reason,
        }
    })
}

impl Registry {
    /// Reads every `*.yaml`/`*.yml` workflow in `dir` (and `dripline.yaml` for trait types and
    /// lists). `history` holds versions stored earlier; an unchanged file keeps its version, a
    /// changed one becomes the next version.
    pub fn load_dir(dir: &Path, history: &[StoredVersion], policy: Policy) -> Result<Registry, LoadErrors> {
        Self::load_dir_at(dir, history, policy, Ts::MIN)
    }

    /// [`Registry::load_dir`], with the versions new in it deployed at `now`: from that input
    /// time on new entrants take them, while earlier inputs (a backlog, a replay) take the
    /// version that was in force at theirs.
    pub fn load_dir_at(dir: &Path, history: &[StoredVersion], policy: Policy, now: Ts) -> Result<Registry, LoadErrors> {
        let io_err = |file: &Path, e: std::io::Error| {
            LoadErrors(vec![LoadError {
                file: file.display().to_string(),
                path: "(file)".into(),
                reason: e.to_string(),
            }])
        };
        let mut files: Vec<_> = std::fs::read_dir(dir)
            .map_err(|e| io_err(dir, e))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "yaml" || x == "yml"))
            .collect();
        files.sort();
        let mut directory = None;
        let mut sources = vec![];
        for p in files {
            let src = std::fs::read_to_string(&p).map_err(|e| io_err(&p, e))?;
            let name = p.display().to_string();
            if p.file_name().is_some_and(|n| n == DIRECTORY_FILE) {
                directory = Some((name, src));
            } else {
                sources.push((name, src));
            }
        }
        Self::build(directory, sources, history, policy, now)
    }

    /// Builds from in-memory sources (tests, benchmarks).
    pub fn from_sources(
        directory: Option<&str>,
        sources: &[(&str, &str)],
        policy: Policy,
    ) -> Result<Registry, LoadErrors> {
        Self::build(
            directory.map(|d| (DIRECTORY_FILE.to_string(), d.to_string())),
            sources.iter().map(|(f, s)| (f.to_string(), s.to_string())).collect(),
            &[],
            policy,
            Ts::MIN,
        )
    }

    pub fn build(
        directory: Option<(String, String)>,
        sources: Vec<(String, String)>,
        history: &[StoredVersion],
        policy: Policy,
        now: Ts,
    ) -> Result<Registry, LoadErrors> {
        let mut errors = vec![];
        let raw_dir: RawDirectory = match &directory {
            Some((file, src)) => parse_yaml(file, src).unwrap_or_else(|e| {
                errors.push(e);
                RawDirectory::default()
            }),
            None => RawDirectory::default(),
        };
        let dir_file = directory.as_ref().map_or(DIRECTORY_FILE.to_string(), |d| d.0.clone());
        let mut traits = BTreeMap::new();
        for (name, ty) in &raw_dir.traits {
            match TraitType::parse(ty) {
                Some(t) => {
                    traits.insert(name.clone(), t);
                }
                None => errors.push(LoadError {
                    file: dir_file.clone(),
                    path: format!("traits.{name}"),
                    reason: format!("unknown trait type `{ty}` (expected one of {})", TraitType::NAMES),
                }),
            }
        }
        let list_names: BTreeSet<String> = raw_dir.lists.keys().cloned().collect();
        let mut counters = BTreeMap::new();
        let mut scope = Scope {
            traits: &traits,
            lists: &list_names,
            counters: &mut counters,
        };
        let mut lists = BTreeMap::new();
        for (name, raw) in &raw_dir.lists {
            match compile_cond_in_scope(&dir_file, &format!("lists.{name}"), raw, &mut scope, CondUse::List) {
                Ok(c) => {
                    lists.insert(name.clone(), c);
                }
                Err(e) => errors.extend(e),
            }
        }

        // Versions: history first (oldest first), then the current files.
        let mut versions: FxHashMap<Arc<str>, BTreeMap<u32, Arc<Workflow>>> = FxHashMap::default();
        let mut stored: Vec<StoredVersion> = vec![];
        let mut latest_ids = BTreeMap::new();
        let mut raws = vec![];
        for h in history {
            match parse_yaml::<RawWorkflow>(&h.file, &h.source) {
                Ok(raw) => raws.push((h.file.clone(), h.source.clone(), raw, Some((h.version, h.deployed_at)))),
                Err(e) => errors.push(e),
            }
        }
        for (file, src) in &sources {
            match parse_yaml::<RawWorkflow>(file, src) {
                Ok(raw) => {
                    if let Some(other) = latest_ids.insert(raw.id.clone(), file.clone()) {
                        errors.push(LoadError {
                            file: file.clone(),
                            path: "id".into(),
                            reason: format!("workflow id `{}` is also defined in {other}", raw.id),
                        });
                    }
                    raws.push((file.clone(), src.clone(), raw, None));
                }
                Err(e) => errors.push(e),
            }
        }
        let mut templates = minijinja::Environment::new();
        templates.set_undefined_behavior(minijinja::UndefinedBehavior::Chainable);
        super::i18n::register(&mut templates);
        templates.set_auto_escape_callback(|name| {
            if name.ends_with(".html") {
                minijinja::AutoEscape::Html
            } else {
                minijinja::AutoEscape::None
            }
        });
        let mut latest: BTreeMap<Arc<str>, Arc<Workflow>> = BTreeMap::new();
        for (file, src, raw, stored_version) in raws {
            let per_id = versions.entry(raw.id.as_str().into()).or_default();
            let hash = xxhash_rust::xxh3::xxh3_64(src.as_bytes());
            let (version, deployed_at) = match stored_version {
                Some(v) => v,
                None => match per_id.values().next_back() {
                    Some(last) if last.source_hash == hash => {
                        latest.insert(last.id.clone(), last.clone());
                        continue;
                    }
                    // A new version of a running workflow, or a new workflow, is in force from
                    // now on; the first versions of a new store from the start.
                    Some(last) => (last.version + 1, now),
                    None => (1, if history.is_empty() { Ts::MIN } else { now }),
                },
            };
            let mut scope = Scope {
                traits: &traits,
                lists: &list_names,
                counters: &mut counters,
            };
            match compile_workflow(&file, &raw, version, src.as_str().into(), &mut scope) {
                Ok(mut wf) => {
                    wf.deployed_at = deployed_at;
                    let before = errors.len();
                    add_templates(&mut templates, &file, &raw, &wf, &mut errors);
                    if errors.len() > before {
                        continue;
                    }
                    let wf = Arc::new(wf);
                    stored.push(StoredVersion {
                        id: raw.id.clone(),
                        version,
                        file: file.clone(),
                        source: src.clone(),
                        deployed_at,
                    });
                    per_id.insert(version, wf.clone());
                    if stored_version.is_none() {
                        latest.insert(wf.id.clone(), wf);
                    }
                }
                Err(e) => errors.extend(e),
            }
        }
        if !errors.is_empty() {
            return Err(LoadErrors(errors));
        }
        let latest: Vec<Arc<Workflow>> = latest.into_values().collect();
        // Every version of the workflows that have a file: inputs enter the one in force at
        // their time, and contacts inside older ones wait for their events.
        let indexed: Vec<Arc<Workflow>> = latest
            .iter()
            .flat_map(|wf| versions.get(&wf.id).into_iter().flat_map(|v| v.values().cloned()))
            .collect();
        let index = build_index(&indexed, &lists, &counters);
        Ok(Registry {
            current: latest.iter().map(|w| w.id.clone()).collect(),
            versions,
            latest,
            index,
            lists,
            traits,
            counters,
            templates,
            policy,
            stored,
        })
    }

    /// The newest version of every workflow that currently has a file.
    pub fn latest(&self) -> &[Arc<Workflow>] {
        &self.latest
    }

    pub fn get(&self, id: &str, version: u32) -> Option<&Arc<Workflow>> {
        self.versions.get(id).and_then(|v| v.get(&version))
    }

    /// Every version of every workflow this registry holds.
    pub fn all_versions(&self) -> impl Iterator<Item = &Arc<Workflow>> {
        self.versions.values().flat_map(|v| v.values())
    }

    /// The versions of workflow `id` this registry holds.
    pub fn versions_of(&self, id: &str) -> Vec<u32> {
        self.versions
            .get(id)
            .map(|v| v.keys().copied().collect())
            .unwrap_or_default()
    }

    /// The version of workflow `id` new entrants take at input time `t`: the newest deployed at
    /// or before `t`. `None` when the workflow has no file, or none of its versions was deployed
    /// by then (it came later).
    pub fn in_force(&self, id: &str, t: Ts) -> Option<&Arc<Workflow>> {
        // Looked up on every enrolment: a hash look-up, not a scan of the workflows.
        let versions = self.versions.get(id)?;
        let newest = versions.values().next_back()?;
        if !self.current.contains(id) {
            return None;
        }
        if newest.deployed_at <= t {
            return Some(newest);
        }
        versions.values().rev().find(|w| w.deployed_at <= t)
    }

    /// Whether `wf` is the version new entrants take at `t` (index entries hold every version).
    pub fn is_in_force(&self, wf: &Workflow, t: Ts) -> bool {
        self.in_force(&wf.id, t).is_some_and(|w| w.version == wf.version)
    }

    pub fn latest_of(&self, id: &str) -> Option<&Arc<Workflow>> {
        self.latest.iter().find(|w| &*w.id == id)
    }

    /// Every version known, for the runtime to persist.
    pub fn stored_versions(&self) -> &[StoredVersion] {
        &self.stored
    }

    /// Renders `template` in the contact's `locale` (a BCP 47 tag, any case, `_` or `-`): the
    /// variant of the most specific tag the template has (`zh-Hant-TW`, then `zh-Hant`, then
    /// `zh`), else the default.
    pub fn render_localized(
        &self,
        wf: &Workflow,
        template: &str,
        locale: Option<&str>,
        ctx: &minijinja::Value,
    ) -> Result<Rendered, minijinja::Error> {
        // Dates and numbers are formatted in the language of the message chosen.
        let with = |tag: &str| minijinja::context! { __format_locale => tag, ..ctx.clone() };
        for tag in locale.map(locale_chain).unwrap_or_default() {
            let name = localized_name(template, &tag);
            if self
                .templates
                .get_template(&wf.template_name(&name, TemplatePart::Subject))
                .is_ok()
            {
                return self.render(wf, &name, &with(&tag));
            }
        }
        self.render(wf, template, &with(""))
    }

    pub fn render(&self, wf: &Workflow, template: &str, ctx: &minijinja::Value) -> Result<Rendered, minijinja::Error> {
        let part = |p: TemplatePart| -> Result<Option<String>, minijinja::Error> {
            match self.templates.get_template(&wf.template_name(template, p)) {
                Ok(t) => t.render(ctx).map(Some),
                Err(e) if e.kind() == minijinja::ErrorKind::TemplateNotFound => Ok(None),
                Err(e) => Err(e),
            }
        };
        Ok(Rendered {
            subject: part(TemplatePart::Subject)?.unwrap_or_default(),
            html: part(TemplatePart::Html)?,
            text: part(TemplatePart::Text)?,
        })
    }

    /// Whether `template` has a calendar invite.
    pub fn has_calendar(&self, wf: &Workflow, template: &str) -> bool {
        self.templates
            .get_template(&wf.template_name(template, TemplatePart::Calendar("start")))
            .is_ok()
    }

    /// Renders the calendar invite of `template`, if it has one.
    pub fn render_calendar(
        &self,
        wf: &Workflow,
        template: &str,
        ctx: &minijinja::Value,
    ) -> Result<Option<RenderedCalendar>, minijinja::Error> {
        let part = |field: &'static str| -> Result<Option<String>, minijinja::Error> {
            match self
                .templates
                .get_template(&wf.template_name(template, TemplatePart::Calendar(field)))
            {
                Ok(t) => Ok(Some(t.render(ctx)?.trim().to_owned()).filter(|s| !s.is_empty())),
                Err(e) if e.kind() == minijinja::ErrorKind::TemplateNotFound => Ok(None),
                Err(e) => Err(e),
            }
        };
        let Some(start) = part("start")? else {
            return Ok(None);
        };
        Ok(Some(RenderedCalendar {
            start,
            end: part("end")?,
            title: part("title")?.unwrap_or_default(),
            location: part("location")?,
            description: part("description")?,
            timezone: part("timezone")?,
            key: part("key")?,
            cancel: part("cancel")?.is_some(),
        }))
    }

    /// Renders one part of webhook step `step` (see [`crate::workflow::WebhookCall`]).
    pub fn render_webhook(
        &self,
        wf: &Workflow,
        step: &str,
        part: TemplatePart,
        ctx: &minijinja::Value,
    ) -> Result<String, minijinja::Error> {
        self.templates.get_template(&wf.template_name(step, part))?.render(ctx)
    }
}

/// The context a template sees: the contact's traits at the top level (`{{ first_name }}`),
/// `contact` (traits plus `id`), `event` (the properties of the event that started the
/// enrollment) and `extra` (transport additions such as the unsubscribe URL).
pub fn template_context(
    contact_id: &str,
    traits: &Map,
    event: &Map,
    extra: &[(&str, minijinja::Value)],
) -> minijinja::Value {
    let mut top = traits.to_template_entries();
    let mut contact = top.clone();
    contact.insert("id".into(), contact_id.into());
    top.insert("contact".into(), contact.into());
    top.insert("event".into(), crate::value::map_to_template(event));
    for (k, v) in extra {
        top.insert((*k).to_string(), v.clone());
    }
    top.into()
}

fn add_templates(
    env: &mut minijinja::Environment<'static>,
    file: &str,
    raw: &RawWorkflow,
    wf: &Workflow,
    errors: &mut Vec<LoadError>,
) {
    let mut found = vec![];
    let mut add = |name: String, src: &str, path: String| {
        if let Err(e) = env.add_template_owned(name, src.to_owned()) {
            found.push(LoadError {
                file: file.into(),
                path,
                reason: format!("template does not compile: {e}"),
            });
        }
    };
    for (tname, t) in &raw.templates {
        add(
            wf.template_name(tname, TemplatePart::Subject),
            &t.subject,
            format!("templates.{tname}.subject"),
        );
        if let Some(h) = &t.html {
            add(
                wf.template_name(tname, TemplatePart::Html),
                h,
                format!("templates.{tname}.html"),
            );
        }
        if let Some(x) = &t.text {
            add(
                wf.template_name(tname, TemplatePart::Text),
                x,
                format!("templates.{tname}.text"),
            );
        }
        if let Some(c) = &t.calendar {
            let cancel_flag = "cancel".to_owned();
            let fields = [
                Some(&c.start),
                c.end.as_ref(),
                Some(&c.title),
                c.location.as_ref(),
                c.description.as_ref(),
                c.timezone.as_ref(),
                c.key.as_ref(),
                // Registered only when set: its presence is the flag.
                c.cancel.then_some(&cancel_flag),
            ];
            for (field, src) in CALENDAR_FIELDS.into_iter().zip(fields) {
                if let Some(src) = src {
                    add(
                        wf.template_name(tname, TemplatePart::Calendar(field)),
                        src,
                        format!("templates.{tname}.calendar.{field}"),
                    );
                }
            }
        }
    }
    for (i, s) in raw.steps.iter().enumerate() {
        let Some(w) = &s.webhook else { continue };
        let path = format!("steps[{i}].webhook");
        if let Some(url) = &w.url {
            add(
                wf.template_name(&s.id, TemplatePart::WebhookUrl),
                url,
                format!("{path}.url"),
            );
        }
        if let Some(body) = &w.body {
            add(
                wf.template_name(&s.id, TemplatePart::WebhookBody),
                body,
                format!("{path}.body"),
            );
        }
        for (n, (name, v)) in w.headers.iter().enumerate() {
            add(
                wf.template_name(&s.id, TemplatePart::WebhookHeader(n)),
                v,
                format!("{path}.headers.{name}"),
            );
        }
        for (n, (name, v)) in w.form.iter().flatten().enumerate() {
            add(
                wf.template_name(&s.id, TemplatePart::WebhookForm(n)),
                v,
                format!("{path}.form.{name}"),
            );
        }
    }
    for (tname, t) in &raw.templates {
        let mut tags = BTreeSet::new();
        for (tag, v) in &t.locales {
            let path = format!("templates.{tname}.locales.{tag}");
            if !tags.insert(normal_tag(tag)) {
                found.push(LoadError {
                    file: file.into(),
                    path: path.clone(),
                    reason: "the same locale as another tag of this template (tags ignore case, `-` and `_`)".into(),
                });
                continue;
            }
            let valid = !tag.is_empty()
                && tag
                    .split(['-', '_'])
                    .all(|p| !p.is_empty() && p.chars().all(|c| c.is_ascii_alphanumeric()));
            if !valid {
                found.push(LoadError {
                    file: file.into(),
                    path: path.clone(),
                    reason: format!("`{tag}` is not a locale tag (such as zh, zh-Hant, pt-BR)"),
                });
                continue;
            }
            let name = localized_name(tname, &normal_tag(tag));
            let parts = [
                (TemplatePart::Subject, Some(&v.subject), "subject"),
                (TemplatePart::Html, v.html.as_ref(), "html"),
                (TemplatePart::Text, v.text.as_ref(), "text"),
            ];
            for (part, src, key) in parts {
                if let Some(src) = src {
                    if let Err(e) = env.add_template_owned(wf.template_name(&name, part), src.clone()) {
                        found.push(LoadError {
                            file: file.into(),
                            path: format!("{path}.{key}"),
                            reason: format!("template does not compile: {e}"),
                        });
                    }
                }
            }
            if v.html.is_none() && v.text.is_none() {
                found.push(LoadError {
                    file: file.into(),
                    path,
                    reason: "needs `html` or `text`".into(),
                });
            }
        }
    }
    // Every language uses the variables the default does: a name misspelt in one translation
    // would render empty for the contacts who read it.
    if found.is_empty() {
        for (tname, t) in &raw.templates {
            let vars = |name: &str| -> BTreeSet<String> {
                [TemplatePart::Subject, TemplatePart::Html, TemplatePart::Text]
                    .into_iter()
                    .filter_map(|p| env.get_template(&wf.template_name(name, p)).ok())
                    .flat_map(|t| t.undeclared_variables(true))
                    .collect()
            };
            let default = vars(tname);
            for tag in t.locales.keys() {
                let own = vars(&localized_name(tname, &normal_tag(tag)));
                let extra: Vec<_> = own.difference(&default).cloned().collect();
                let missing: Vec<_> = default.difference(&own).cloned().collect();
                if !extra.is_empty() || !missing.is_empty() {
                    found.push(LoadError {
                        file: file.into(),
                        path: format!("templates.{tname}.locales.{tag}"),
                        reason: format!(
                            "uses other variables than the default template: {}{}",
                            if extra.is_empty() {
                                String::new()
                            } else {
                                format!("not in the default: {}", extra.join(", "))
                            },
                            if missing.is_empty() {
                                String::new()
                            } else {
                                format!(
                                    "{}missing: {}",
                                    if extra.is_empty() { "" } else { "; " },
                                    missing.join(", ")
                                )
                            }
                        ),
                    });
                }
            }
        }
    }
    errors.extend(found);
    for (tname, t) in &raw.templates {
        let err = |reason: &str| LoadError {
            file: file.into(),
            path: format!("templates.{tname}"),
            reason: reason.into(),
        };
        if t.subject.contains(['\r', '\n']) {
            errors.push(err("a subject must be one line"));
        }
        if t.html.is_none() && t.text.is_none() {
            errors.push(err("needs `html` or `text`"));
        }
    }
}

pub fn cond_deps(c: &Cond, lists: &BTreeMap<String, Cond>, out: &mut Vec<Dep>) {
    match c {
        Cond::All(cs) | Cond::Any(cs) => cs.iter().for_each(|c| cond_deps(c, lists, out)),
        Cond::Not(c) => cond_deps(c, lists, out),
        // A path into a trait's map (`account.plan`) changes with the trait at its root.
        Cond::Trait(t, _) => {
            out.push(Dep::Trait(t.clone()));
            if let Some((root, _)) = t.split_once('.') {
                out.push(Dep::Trait(root.to_owned()));
            }
        }
        Cond::Count { counter, .. } => out.push(Dep::Counter(*counter)),
        Cond::Tag(t) => out.push(Dep::Tag(t.clone())),
        Cond::InList(l) => {
            out.push(Dep::List(l.clone()));
            if let Some(def) = lists.get(l) {
                cond_deps(def, lists, out);
            }
        }
        Cond::Prop(..) | Cond::Opened(_) | Cond::Clicked(_) => {}
    }
}

fn build_index(
    latest: &[Arc<Workflow>],
    lists: &BTreeMap<String, Cond>,
    counters: &BTreeMap<u64, CounterDef>,
) -> Index {
    let mut ix = Index::default();
    for wf in latest {
        for (ti, t) in wf.triggers.iter().enumerate() {
            let cond = match t {
                Trigger::Event { name, .. } => {
                    ix.by_event.entry(name.clone()).or_default().push((wf.clone(), ti));
                    None
                }
                Trigger::TraitChanged(name) => {
                    ix.trait_changed.entry(name.clone()).or_default().push(wf.clone());
                    None
                }
                Trigger::Inactive(ms) => {
                    ix.inactivity.push((wf.clone(), *ms));
                    None
                }
                Trigger::Date(d) => {
                    ix.date.entry(d.trait_name.clone()).or_default().push((wf.clone(), ti));
                    None
                }
                Trigger::Becomes(c) => Some(c.clone()),
                Trigger::List(l) => Some(Cond::InList(l.clone())),
                Trigger::Api => None,
            };
            if let Some(cond) = cond {
                let mut deps = vec![];
                cond_deps(&cond, lists, &mut deps);
                let i = ix.cond.len();
                for d in deps {
                    let v = match d {
                        Dep::Trait(t) => ix.cond_by_trait.entry(t).or_default(),
                        Dep::Counter(c) => ix.cond_by_counter.entry(c).or_default(),
                        Dep::Tag(t) => ix.cond_by_tag.entry(t).or_default(),
                        Dep::List(l) => ix.cond_by_list.entry(l).or_default(),
                    };
                    if v.last() != Some(&i) {
                        v.push(i);
                    }
                }
                ix.cond.push(CondTrigger { wf: wf.clone(), cond });
            }
        }
        if let Some(g) = &wf.goal {
            if let Some((e, _)) = &g.event {
                ix.enrollment_events.insert(e.clone());
            }
            ix.has_cond_goals |= g.when.is_some();
        }
        for s in &wf.steps {
            if let StepKind::WaitFor { event, .. } = &s.kind {
                ix.enrollment_events.insert(event.clone());
            }
        }
    }
    for c in counters.values() {
        ix.counters_by_event.entry(c.event.clone()).or_default().push(c.key);
    }
    ix
}
