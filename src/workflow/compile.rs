//! Validation and compilation of one workflow file. Every problem is collected (not just the
//! first) with the file, the path inside it and the reason.

use super::duration::{parse, parse_signed, parse_time_of_day};
use super::model::*;
use super::raw::*;
use crate::value::Value;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}: {path}: {reason}")]
pub struct LoadError {
    pub file: String,
    pub path: String,
    pub reason: String,
}

/// Everything wrong with a workflow directory, one error per line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", .0.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("\n"))]
pub struct LoadErrors(pub Vec<LoadError>);

/// Shared, directory-wide knowledge while compiling: declared trait types, list names and the
/// rolling counters that conditions ask for.
pub struct Scope<'a> {
    pub traits: &'a BTreeMap<String, TraitType>,
    pub lists: &'a BTreeSet<String>,
    pub counters: &'a mut BTreeMap<u64, CounterDef>,
}

struct Cx<'a, 'b> {
    file: &'a str,
    errors: Vec<LoadError>,
    scope: &'a mut Scope<'b>,
    /// Step ids of the workflow being compiled (for `opened:` / `clicked:` and jumps).
    steps: HashMap<String, StepIdx>,
}

impl Cx<'_, '_> {
    fn err(&mut self, path: impl Into<String>, reason: impl Into<String>) {
        self.errors.push(LoadError {
            file: self.file.into(),
            path: path.into(),
            reason: reason.into(),
        });
    }

    /// The parsed value, or `None` with the error recorded at `path`.
    fn check<T>(&mut self, path: impl Into<String>, parsed: Result<T, String>) -> Option<T> {
        parsed.map_err(|e| self.err(path, e)).ok()
    }

    fn duration(&mut self, path: &str, s: &str) -> i64 {
        self.check(path, parse(s)).unwrap_or(0)
    }

    fn target(&mut self, path: &str, id: &str) -> Next {
        if id == "exit" {
            return Next::Exit;
        }
        match self.steps.get(id) {
            Some(i) => Next::Step(*i),
            None => {
                self.err(path, format!("unknown step `{id}`"));
                Next::Exit
            }
        }
    }
}

/// Where a condition is used decides which subjects make sense in it.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum CondUse {
    /// Filter on an incoming event: `prop` is that event's property.
    EventFilter,
    /// Inside a workflow (branch, goal, `becomes`): `prop` is the triggering event's property.
    Workflow,
    /// A named list in `dripline.yaml`: contact data only.
    List,
}

pub(crate) fn compile_cond_in_scope(
    file: &str,
    path: &str,
    raw: &RawCondition,
    scope: &mut Scope<'_>,
    usage: CondUse,
) -> Result<Cond, Vec<LoadError>> {
    let mut cx = Cx {
        file,
        errors: vec![],
        scope,
        steps: HashMap::new(),
    };
    let c = cond(&mut cx, path, raw, usage);
    if cx.errors.is_empty() { Ok(c) } else { Err(cx.errors) }
}

fn cond(cx: &mut Cx, path: &str, raw: &RawCondition, usage: CondUse) -> Cond {
    let subjects = present(&[
        ("all", raw.all.is_some()),
        ("any", raw.any.is_some()),
        ("not", raw.not.is_some()),
        ("trait", raw.trait_name.is_some()),
        ("prop", raw.prop.is_some()),
        ("count", raw.count.is_some()),
        ("tag", raw.tag.is_some()),
        ("in_list", raw.in_list.is_some()),
        ("opened", raw.opened.is_some()),
        ("clicked", raw.clicked.is_some()),
    ]);
    if subjects.len() != 1 {
        cx.err(
            path,
            format!(
                "a condition needs exactly one of trait, prop, count, tag, in_list, opened, clicked, all, any, not (found {})",
                if subjects.is_empty() { "none".to_string() } else { subjects.join(", ") }
            ),
        );
        return Cond::All(vec![]);
    }
    if (raw.count_filter.is_some() || raw.within.is_some()) && raw.count.is_none() {
        cx.err(path, "`where` and `within` belong to a `count` condition");
    }
    let list = |cx: &mut Cx, key: &str, items: &Vec<RawCondition>| -> Vec<Cond> {
        if items.is_empty() {
            cx.err(format!("{path}.{key}"), "needs at least one condition");
        }
        items
            .iter()
            .enumerate()
            .map(|(i, c)| cond(cx, &format!("{path}.{key}[{i}]"), c, usage))
            .collect()
    };
    let needs_no_op = |cx: &mut Cx, what: &str| {
        if op_count(raw) > 0 {
            cx.err(path, format!("`{what}` takes no operator"));
        }
    };
    match subjects[0] {
        "all" => Cond::All(list(cx, "all", raw.all.as_ref().unwrap())),
        "any" => Cond::Any(list(cx, "any", raw.any.as_ref().unwrap())),
        "not" => Cond::Not(Box::new(cond(
            cx,
            &format!("{path}.not"),
            raw.not.as_ref().unwrap(),
            usage,
        ))),
        "trait" => {
            let name = raw.trait_name.clone().unwrap();
            let op = op(cx, path, raw);
            if let (Some(t), true) = (cx.scope.traits.get(&name), op.is_numeric()) {
                if !matches!(t, TraitType::Number) {
                    cx.err(path, format!("numeric comparison on trait `{name}` declared as {t:?}"));
                }
            }
            Cond::Trait(name, op)
        }
        "prop" => {
            if usage == CondUse::List {
                cx.err(path, "a list is defined over contact data: `prop` has no event here");
            }
            Cond::Prop(raw.prop.clone().unwrap(), op(cx, path, raw))
        }
        "count" => {
            let event = raw.count.clone().unwrap();
            let filter: Vec<Cond> = raw
                .count_filter
                .iter()
                .flatten()
                .enumerate()
                .map(|(i, c)| cond(cx, &format!("{path}.where[{i}]"), c, CondUse::EventFilter))
                .collect();
            let within = match &raw.within {
                Some(w) => cx.duration(&format!("{path}.within"), w),
                None => {
                    cx.err(path, "a `count` needs `within` (e.g. `30d`)");
                    0
                }
            };
            let within_days = ((within + crate::time::DAY - 1) / crate::time::DAY).max(1) as u32;
            let op = op(cx, path, raw);
            let key = counter_key(&event, &filter);
            let def = cx.scope.counters.entry(key).or_insert_with(|| CounterDef {
                key,
                event: event.clone(),
                filter: filter.clone(),
                retention_days: 0,
            });
            def.retention_days = def.retention_days.max(within_days);
            Cond::Count {
                counter: key,
                within_days,
                op,
            }
        }
        "tag" => {
            needs_no_op(cx, "tag");
            Cond::Tag(raw.tag.clone().unwrap())
        }
        "in_list" => {
            needs_no_op(cx, "in_list");
            let name = raw.in_list.clone().unwrap();
            if usage == CondUse::List {
                cx.err(path, "a list cannot be defined by membership of a list");
            } else if !cx.scope.lists.contains(&name) && !name.starts_with("static:") {
                // Unknown names are still valid static lists (filled by add_to_list); only
                // dynamic lists must be declared. Nothing to report.
            }
            Cond::InList(name)
        }
        which @ ("opened" | "clicked") => {
            needs_no_op(cx, which);
            let step = if which == "opened" {
                raw.opened.as_ref()
            } else {
                raw.clicked.as_ref()
            }
            .unwrap();
            if usage != CondUse::Workflow {
                cx.err(
                    path,
                    format!("`{which}` refers to this workflow's emails and only works inside a workflow"),
                );
                return Cond::All(vec![]);
            }
            match cx.steps.get(step) {
                Some(i) if which == "opened" => Cond::Opened(*i),
                Some(i) => Cond::Clicked(*i),
                None => {
                    cx.err(path, format!("unknown step `{step}`"));
                    Cond::All(vec![])
                }
            }
        }
        _ => unreachable!(),
    }
}

/// Stable identity of a counter across reloads: counters live in contact state.
fn counter_key(event: &str, filter: &[Cond]) -> u64 {
    xxhash_rust::xxh3::xxh3_64(format!("{event}\u{0}{filter:?}").as_bytes())
}

fn op_count(raw: &RawCondition) -> usize {
    present(&[
        ("eq", raw.eq.is_some()),
        ("ne", raw.ne.is_some()),
        ("in", raw.one_of.is_some()),
        ("gt", raw.gt.is_some()),
        ("gte", raw.gte.is_some()),
        ("lt", raw.lt.is_some()),
        ("lte", raw.lte.is_some()),
        ("exists", raw.exists.is_some()),
        ("contains", raw.contains.is_some()),
    ])
    .len()
}

/// The names of the keys that are present: each part of the format takes exactly one of a set.
fn present<'a>(keys: &[(&'a str, bool)]) -> Vec<&'a str> {
    keys.iter().filter_map(|(name, here)| here.then_some(*name)).collect()
}

fn op(cx: &mut Cx, path: &str, raw: &RawCondition) -> Op {
    if op_count(raw) != 1 {
        cx.err(
            path,
            "needs exactly one operator: eq, ne, in, gt, gte, lt, lte, exists, contains",
        );
        return Op::Exists(true);
    }
    let v = |j: &serde_json::Value| Value::from(j);
    if let Some(x) = &raw.eq {
        Op::Eq(v(x))
    } else if let Some(x) = &raw.ne {
        Op::Ne(v(x))
    } else if let Some(xs) = &raw.one_of {
        Op::In(xs.iter().map(v).collect())
    } else if let Some(x) = raw.gt {
        Op::Gt(x)
    } else if let Some(x) = raw.gte {
        Op::Gte(x)
    } else if let Some(x) = raw.lt {
        Op::Lt(x)
    } else if let Some(x) = raw.lte {
        Op::Lte(x)
    } else if let Some(x) = raw.exists {
        Op::Exists(x)
    } else {
        Op::Contains(v(raw.contains.as_ref().unwrap()))
    }
}

fn filters(cx: &mut Cx, path: &str, raw: &[RawCondition]) -> Vec<Cond> {
    raw.iter()
        .enumerate()
        .map(|(i, c)| cond(cx, &format!("{path}.where[{i}]"), c, CondUse::EventFilter))
        .collect()
}

/// Compiles one parsed workflow file. `templates_ok` reports template compile errors, which
/// the registry checks with the real template engine.
pub fn compile_workflow(
    file: &str,
    raw: &RawWorkflow,
    version: u32,
    source: Arc<str>,
    scope: &mut Scope<'_>,
) -> Result<Workflow, Vec<LoadError>> {
    let mut cx = Cx {
        file,
        errors: vec![],
        scope,
        steps: HashMap::new(),
    };
    if raw.id.trim().is_empty()
        || !raw
            .id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    {
        cx.err(
            "id",
            format!("`{}` is not a valid id (letters, digits, `_` and `-`)", raw.id),
        );
    }
    for (i, s) in raw.steps.iter().enumerate() {
        if s.id.is_empty() || s.id == "exit" {
            cx.err(format!("steps[{i}].id"), format!("`{}` cannot be a step id", s.id));
        } else if cx.steps.insert(s.id.clone(), i as StepIdx).is_some() {
            cx.err(format!("steps[{i}].id"), format!("duplicate step id `{}`", s.id));
        }
    }
    if raw.steps.is_empty() {
        cx.err("steps", "a workflow needs at least one step");
    }
    if raw.triggers.is_empty() {
        cx.err("triggers", "a workflow needs at least one trigger");
    }
    let triggers = raw
        .triggers
        .iter()
        .enumerate()
        .map(|(i, t)| trigger(&mut cx, &format!("triggers[{i}]"), t))
        .collect();
    let entry = match &raw.entry {
        RawEntry::Word(w) if w == "once" => Entry::Once,
        RawEntry::Word(w) if w == "always" => Entry::Always,
        RawEntry::Word(w) => {
            cx.err(
                "entry",
                format!("unknown entry rule `{w}` (once, always or {{ cooldown: DURATION }})"),
            );
            Entry::Once
        }
        RawEntry::Cooldown(c) => Entry::Cooldown(cx.duration("entry.cooldown", &c.cooldown)),
    };
    let goal = raw.goal.as_ref().map(|g| {
        if g.event.is_none() && g.when.is_none() {
            cx.err("goal", "a goal needs `event` or `when`");
        }
        if g.event.is_none() && !g.filter.is_empty() {
            cx.err("goal.where", "`where` filters the goal's `event`, which is missing");
        }
        Goal {
            event: g.event.clone().map(|e| (e, filters(&mut cx, "goal", &g.filter))),
            when: g
                .when
                .as_ref()
                .map(|w| cond(&mut cx, "goal.when", w, CondUse::Workflow)),
        }
    });
    let timezone = raw.timezone.as_ref().and_then(|tz| match tz.parse::<chrono_tz::Tz>() {
        Ok(tz) => Some(tz),
        Err(_) => {
            cx.err("timezone", format!("unknown time zone `{tz}`"));
            None
        }
    });
    let n = raw.steps.len();
    let steps: Vec<Step> = raw
        .steps
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let path = format!("steps[{i}]");
            let default_next = if i + 1 < n {
                Next::Step((i + 1) as StepIdx)
            } else {
                Next::Exit
            };
            let next = match &s.next {
                Some(t) => cx.target(&format!("{path}.next"), t),
                None => default_next,
            };
            Step {
                id: s.id.clone(),
                kind: step_kind(&mut cx, &path, s, raw, next),
                next,
            }
        })
        .collect();
    check_graph(&mut cx, &steps);
    if cx.errors.is_empty() {
        Ok(Workflow {
            id: raw.id.as_str().into(),
            version,
            name: raw.name.clone().unwrap_or_else(|| raw.id.clone()),
            triggers,
            entry,
            goal,
            timezone,
            steps,
            source_hash: xxhash_rust::xxh3::xxh3_64(source.as_bytes()),
            source,
            deployed_at: crate::time::Ts::MIN,
        })
    } else {
        Err(cx.errors)
    }
}

fn trigger(cx: &mut Cx, path: &str, t: &RawTrigger) -> Trigger {
    let kinds = present(&[
        ("event", t.event.is_some()),
        ("becomes", t.becomes.is_some()),
        ("trait_changed", t.trait_changed.is_some()),
        ("inactive_for", t.inactive_for.is_some()),
        ("date", t.date.is_some()),
        ("list", t.list.is_some()),
        ("api", t.api),
    ])
    .len();
    if kinds != 1 {
        cx.err(
            path,
            "a trigger needs exactly one of event, becomes, trait_changed, inactive_for, date, list, api",
        );
        return Trigger::Api;
    }
    if t.event.is_none() && !t.filter.is_empty() {
        cx.err(format!("{path}.where"), "`where` filters an `event` trigger");
    }
    if let Some(name) = &t.event {
        return Trigger::Event {
            name: name.clone(),
            filter: filters(cx, path, &t.filter),
        };
    }
    if let Some(c) = &t.becomes {
        return Trigger::Becomes(cond(cx, &format!("{path}.becomes"), c, CondUse::Workflow));
    }
    if let Some(name) = &t.trait_changed {
        return Trigger::TraitChanged(name.clone());
    }
    if let Some(d) = &t.inactive_for {
        let ms = cx.duration(&format!("{path}.inactive_for"), d);
        return Trigger::Inactive(ms);
    }
    if let Some(d) = &t.date {
        if let Some(ty) = cx.scope.traits.get(&d.trait_name) {
            if !matches!(ty, TraitType::Date | TraitType::DateTime) {
                cx.err(
                    format!("{path}.date.trait"),
                    format!("trait `{}` is declared {ty:?}, not a date", d.trait_name),
                );
            }
        }
        let offset = d
            .offset
            .as_ref()
            .and_then(|o| cx.check(format!("{path}.date.offset"), parse_signed(o)));
        let at =
            d.at.as_ref()
                .and_then(|a| cx.check(format!("{path}.date.at"), parse_time_of_day(a)));
        return Trigger::Date(DateSpec {
            trait_name: d.trait_name.clone(),
            offset: offset.unwrap_or(0),
            at: at.unwrap_or((0, 0)),
            yearly: d.yearly,
        });
    }
    if let Some(l) = &t.list {
        return Trigger::List(l.clone());
    }
    Trigger::Api
}

fn step_kind(cx: &mut Cx, path: &str, s: &RawStep, wf: &RawWorkflow, next: Next) -> StepKind {
    let is_update = s.set.is_some()
        || s.unset.is_some()
        || s.tag.is_some()
        || s.untag.is_some()
        || s.add_to_list.is_some()
        || s.remove_from_list.is_some()
        || s.lifecycle_stage.is_some()
        || s.add_score.is_some();
    let kinds = present(&[
        ("send", s.send.is_some()),
        ("wait", s.wait.is_some()),
        ("wait_until", s.wait_until.is_some()),
        ("wait_for", s.wait_for.is_some()),
        ("branch", s.branch.is_some()),
        ("split", s.split.is_some()),
        ("webhook", s.webhook.is_some()),
        ("exit", s.exit.is_some()),
        (
            "an update (set, unset, tag, untag, add_to_list, remove_from_list, lifecycle_stage, add_score)",
            is_update,
        ),
    ]);
    if kinds.len() != 1 {
        cx.err(
            path,
            format!(
                "a step is exactly one of send, wait, wait_until, wait_for, branch, split, webhook, exit or an update (found {})",
                if kinds.is_empty() { "none".into() } else { kinds.join(" and ") }
            ),
        );
        return StepKind::Exit;
    }
    let only_with = |cx: &mut Cx, key: &str, present: bool, owner: &str| {
        if present {
            cx.err(format!("{path}.{key}"), format!("`{key}` belongs to a `{owner}` step"));
        }
    };
    only_with(cx, "on_event", s.on_event.is_some() && s.wait_for.is_none(), "wait_for");
    only_with(
        cx,
        "on_timeout",
        s.on_timeout.is_some() && s.wait_for.is_none(),
        "wait_for",
    );
    only_with(cx, "else", s.otherwise.is_some() && s.branch.is_none(), "branch");
    if let Some(send) = &s.send {
        let (template, to, fallback, kind) = match send {
            RawSend::Template(t) => (t.clone(), None, None, None),
            RawSend::Full(f) => (f.template.clone(), f.to.clone(), f.fallback.clone(), f.kind.clone()),
        };
        if !wf.templates.contains_key(&template) {
            cx.err(format!("{path}.send"), format!("unknown template `{template}`"));
        }
        let to = match to.as_deref() {
            None | Some("contact") => Recipient::Contact,
            Some(t) if t.starts_with("trait:") => Recipient::Trait {
                name: t["trait:".len()..].into(),
                fallback,
            },
            Some(addr) if addr.contains('@') && !addr.contains(['\r', '\n']) => Recipient::Fixed(addr.into()),
            Some(other) => {
                cx.err(
                    format!("{path}.send.to"),
                    format!("`{other}` is not `contact`, `trait:NAME` or an email address"),
                );
                Recipient::Contact
            }
        };
        let kind = match kind.as_deref() {
            None if matches!(to, Recipient::Contact) => MailKind::Marketing,
            None => MailKind::Internal,
            Some("marketing") => MailKind::Marketing,
            Some("transactional") => MailKind::Transactional,
            Some("internal") => MailKind::Internal,
            Some(k) => {
                cx.err(
                    format!("{path}.send.kind"),
                    format!("unknown kind `{k}` (marketing, transactional, internal)"),
                );
                MailKind::Marketing
            }
        };
        return StepKind::Send { template, to, kind };
    }
    if let Some(w) = &s.wait {
        return StepKind::Wait(cx.duration(&format!("{path}.wait"), w));
    }
    if let Some(w) = &s.wait_until {
        let date = w.date.as_ref().and_then(|d| {
            if let Some(t) = d.strip_prefix("trait.") {
                Some(FieldRef::Trait(t.into()))
            } else if let Some(p) = d.strip_prefix("event.") {
                Some(FieldRef::Event(p.into()))
            } else {
                cx.err(
                    format!("{path}.wait_until.date"),
                    format!("`{d}` is not `trait.NAME` or `event.NAME`"),
                );
                None
            }
        });
        let offset = w
            .offset
            .as_ref()
            .and_then(|o| cx.check(format!("{path}.wait_until.offset"), parse_signed(o)))
            .unwrap_or(0);
        let at =
            w.at.as_ref()
                .and_then(|a| cx.check(format!("{path}.wait_until.at"), parse_time_of_day(a)));
        if date.is_none() && at.is_none() && w.offset.is_none() {
            cx.err(format!("{path}.wait_until"), "needs `date`, `offset` or `at`");
        }
        let if_past = w
            .if_past
            .as_ref()
            .map(|t| cx.target(&format!("{path}.wait_until.if_past"), t));
        return StepKind::WaitUntil {
            date,
            offset,
            at,
            if_past,
        };
    }
    if let Some(w) = &s.wait_for {
        let filter = filters(cx, &format!("{path}.wait_for"), &w.filter);
        let timeout = cx.duration(&format!("{path}.wait_for.timeout"), &w.timeout);
        let on_event = s
            .on_event
            .as_ref()
            .map_or(next, |t| cx.target(&format!("{path}.on_event"), t));
        let on_timeout = s
            .on_timeout
            .as_ref()
            .map_or(next, |t| cx.target(&format!("{path}.on_timeout"), t));
        return StepKind::WaitFor {
            event: w.event.clone(),
            filter,
            timeout,
            on_event,
            on_timeout,
        };
    }
    if let Some(cases) = &s.branch {
        if cases.is_empty() {
            cx.err(format!("{path}.branch"), "a branch needs at least one case");
        }
        let cases = cases
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let p = format!("{path}.branch[{i}]");
                (
                    cond(cx, &format!("{p}.when"), &c.when, CondUse::Workflow),
                    cx.target(&format!("{p}.then"), &c.then),
                )
            })
            .collect();
        let otherwise = match &s.otherwise {
            Some(t) => cx.target(&format!("{path}.else"), t),
            None => {
                cx.err(
                    path,
                    "a branch needs `else`: a contact matching no case would have no way out",
                );
                Next::Exit
            }
        };
        return StepKind::Branch { cases, otherwise };
    }
    if let Some(split) = &s.split {
        if !(0.0..100.0).contains(&split.holdout) {
            cx.err(
                format!("{path}.split.holdout"),
                "holdout is a percentage from 0 to under 100",
            );
        }
        let total: f64 = split.variants.iter().map(|v| v.weight).sum();
        if split.variants.is_empty() || total <= 0.0 || split.variants.iter().any(|v| v.weight < 0.0) {
            cx.err(
                format!("{path}.split.variants"),
                "needs variants with non-negative weights summing above 0",
            );
            return StepKind::Exit;
        }
        let holdout = (split.holdout.clamp(0.0, 100.0) * 100.0).round() as u32;
        let mut acc = 0.0;
        let variants = split
            .variants
            .iter()
            .enumerate()
            .map(|(i, v)| {
                acc += v.weight;
                let upper = holdout + (((10_000 - holdout) as f64) * acc / total).round() as u32;
                (
                    v.name.clone(),
                    upper,
                    cx.target(&format!("{path}.split.variants[{i}].then"), &v.then),
                )
            })
            .collect();
        return StepKind::Split { variants, holdout };
    }
    if let Some(w) = &s.webhook {
        return StepKind::Webhook(Box::new(webhook_call(cx, &format!("{path}.webhook"), w)));
    }
    if let Some(e) = &s.exit {
        if matches!(e, RawExit::Plain(false)) {
            cx.err(format!("{path}.exit"), "`exit: false` means nothing; remove the step");
        }
        return StepKind::Exit;
    }
    let mut actions = vec![];
    for (k, v) in s.set.iter().flatten() {
        let value = Value::from(v);
        if let Some(ty) = cx.scope.traits.get(k) {
            if !value_fits(*ty, &value) {
                cx.err(
                    format!("{path}.set.{k}"),
                    format!("value does not fit trait type {ty:?}"),
                );
            }
        }
        actions.push(Action::Set(k.clone(), value));
    }
    for k in s.unset.iter().flatten() {
        actions.push(Action::Unset(k.clone()));
    }
    if let Some(stage) = &s.lifecycle_stage {
        actions.push(Action::Set(LIFECYCLE_TRAIT.into(), Value::Str(stage.as_str().into())));
    }
    if let Some(t) = &s.tag {
        actions.push(Action::Tag(t.clone()));
    }
    if let Some(t) = &s.untag {
        actions.push(Action::Untag(t.clone()));
    }
    if let Some(l) = &s.add_to_list {
        actions.push(Action::AddToList(l.clone()));
    }
    if let Some(l) = &s.remove_from_list {
        actions.push(Action::RemoveFromList(l.clone()));
    }
    if let Some(n) = s.add_score {
        actions.push(Action::AddScore(n));
    }
    StepKind::Update(actions)
}

fn value_fits(ty: TraitType, v: &Value) -> bool {
    match ty {
        TraitType::Number => v.as_f64().is_some(),
        TraitType::Bool => matches!(v, Value::Bool(_)),
        TraitType::Timezone => v.as_str().is_some_and(|s| s.parse::<chrono_tz::Tz>().is_ok()),
        TraitType::Email => v.as_str().is_some_and(|s| s.contains('@')),
        TraitType::Date | TraitType::DateTime => v
            .as_str()
            .is_some_and(|s| crate::calendar::parse_date_value(s).is_some()),
        TraitType::String => matches!(v, Value::Str(_)),
    }
}

pub(crate) fn edges(step: &Step) -> Vec<Next> {
    let mut out = vec![];
    match &step.kind {
        StepKind::WaitFor {
            on_event, on_timeout, ..
        } => out.extend([*on_event, *on_timeout]),
        StepKind::Branch { cases, otherwise } => {
            out.extend(cases.iter().map(|c| c.1));
            out.push(*otherwise);
        }
        StepKind::Split { variants, .. } => out.extend(variants.iter().map(|v| v.2)),
        StepKind::WaitUntil { if_past, .. } => {
            out.push(step.next);
            out.extend(*if_past);
        }
        StepKind::Exit => {}
        _ => out.push(step.next),
    }
    out
}

/// Unreachable steps and loops that never wait are errors: the first is dead text a reviewer
/// would trust, the second would spin a contact forever inside one input.
fn check_graph(cx: &mut Cx, steps: &[Step]) {
    if steps.is_empty() {
        return;
    }
    let mut seen = vec![false; steps.len()];
    let mut stack = vec![0usize];
    while let Some(i) = stack.pop() {
        if std::mem::replace(&mut seen[i], true) {
            continue;
        }
        for e in edges(&steps[i]) {
            if let Next::Step(j) = e {
                stack.push(j as usize);
            }
        }
    }
    for (i, s) in steps.iter().enumerate() {
        if !seen[i] {
            cx.err(format!("steps[{i}]"), format!("step `{}` is unreachable", s.id));
        }
    }
    // Depth-first search over edges that leave non-wait steps: any back edge is a loop that
    // can run without waiting.
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        New,
        Active,
        Done,
    }
    fn visit(i: usize, steps: &[Step], marks: &mut [Mark], cycle: &mut Option<usize>) {
        marks[i] = Mark::Active;
        if !steps[i].kind.is_wait() {
            for e in edges(&steps[i]) {
                if let Next::Step(j) = e {
                    match marks[j as usize] {
                        Mark::Active => *cycle = cycle.or(Some(j as usize)),
                        Mark::New => visit(j as usize, steps, marks, cycle),
                        Mark::Done => {}
                    }
                }
            }
        }
        marks[i] = Mark::Done;
    }
    let mut marks = vec![Mark::New; steps.len()];
    for i in 0..steps.len() {
        if marks[i] == Mark::New {
            let mut cycle = None;
            visit(i, steps, &mut marks, &mut cycle);
            if let Some(j) = cycle {
                cx.err(
                    format!("steps[{j}]"),
                    format!("loop through step `{}` has no wait in it", steps[j].id),
                );
            }
        }
    }
}

fn webhook_call(cx: &mut Cx, path: &str, w: &RawWebhook) -> WebhookCall {
    let target = match (&w.url, &w.endpoint) {
        (Some(url), None) => {
            if !(url.starts_with("https://") || url.starts_with("http://")) {
                cx.err(format!("{path}.url"), format!("`{url}` is not an http(s) URL"));
            }
            WebhookTarget::Url(url.clone())
        }
        (None, Some(name)) => WebhookTarget::Endpoint(name.clone()),
        _ => {
            cx.err(path, "needs exactly one of `url` and `endpoint`");
            WebhookTarget::Url(String::new())
        }
    };
    let method = w.method.as_deref().unwrap_or("POST").to_ascii_uppercase();
    if !matches!(method.as_str(), "POST" | "PUT" | "PATCH" | "GET" | "DELETE") {
        cx.err(
            format!("{path}.method"),
            format!("`{method}` is not POST, PUT, PATCH, GET or DELETE"),
        );
    }
    for name in w.headers.keys() {
        if reqwest::header::HeaderName::from_bytes(name.as_bytes()).is_err() {
            cx.err(format!("{path}.headers"), format!("`{name}` is not a header name"));
        }
    }
    let body = match (&w.body, &w.form) {
        (Some(_), Some(_)) => {
            cx.err(path, "a webhook has a `body` or a `form`, not both");
            WebhookBody::Template
        }
        (Some(_), None) => WebhookBody::Template,
        (None, Some(form)) => WebhookBody::Form(form.keys().cloned().collect()),
        (None, None) => WebhookBody::Default,
    };
    WebhookCall {
        target,
        method,
        headers: w.headers.keys().cloned().collect(),
        body,
    }
}
