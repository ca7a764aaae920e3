//! Segment-shaped events (`track`, `identify`, `page`) and their validation.
//!
//! Parsing happens at the edge (HTTP ingest, log files, Kafka records); the state machine only
//! ever sees a validated [`Event`].

pub mod wire;

use crate::time::{Ts, parse_rfc3339};
use crate::value::{Map, Str, Value, json_object_to_map};
use serde::{Deserialize, Serialize};

/// Name given to `page` calls so that workflows can filter them like any tracked event.
pub const PAGE_VIEWED: &str = "Page Viewed";
/// Name given to `screen` calls (a mobile app's page view), which are read as pages.
pub const SCREEN_VIEWED: &str = "Screen Viewed";
/// The trait a `group` call sets: the account (Segment's group) the contact belongs to, its
/// `id` and traits, for templates (`{{ account.plan }}`) and conditions (`trait: account.plan`).
pub const ACCOUNT_TRAIT: &str = "account";

/// An enrolment through the admin API, as it travels through the log: `properties.workflow`
/// names the workflow, `properties.properties` the enrolment's properties.
pub const ENROLL_EVENT: &str = "dripline.enroll";

/// A contact's erasure (GDPR), in the contact's own stream: its state, timers and waiting mail
/// go, and its records in the log are replaced (see [`crate::storage::erasures`]).
pub const ERASE_EVENT: &str = "dripline.erase";

/// A workflow's pause and resume, as control records in every partition of the log
/// (`properties.workflow` names it): each partition stops or resumes enrolling at its own
/// position, so a replay pauses at the same point.
pub const PAUSE_EVENT: &str = "dripline.workflow.pause";
pub const RESUME_EVENT: &str = "dripline.workflow.resume";

/// The user id of a control record for one partition: this prefix, then the partition number.
/// It routes the record to that partition ([`control_partition`]); no contact has such an id
/// (clients cannot send one: see [`EventError::ControlId`]).
pub const CONTROL_PREFIX: &str = "\u{1}partition:";

/// The user id that routes a control record to `partition`.
pub fn control_user(partition: u16) -> String {
    format!("{CONTROL_PREFIX}{partition}")
}

/// The partition a control record's user id names, if it is one.
pub fn control_partition(user_id: &[u8]) -> Option<u16> {
    std::str::from_utf8(user_id.strip_prefix(CONTROL_PREFIX.as_bytes())?)
        .ok()?
        .parse()
        .ok()
}

/// Events the engine emits itself (delivery results, engagement, unsubscribes, control records):
/// refused from a write key, since anyone holding one could otherwise suppress or enrol any
/// contact. Names under the `dripline.` prefix are reserved as well.
pub const ENGINE_EVENTS: [&str; 8] = [
    "Email Delivered",
    "Email Deferred",
    "Email Soft Bounced",
    "Email Bounced",
    "Email Opened",
    "Email Clicked",
    "Email Complained",
    "Unsubscribed",
];

/// Whether a tracked event of this name may only come from the engine (or the admin API).
pub fn is_engine_event(name: &str) -> bool {
    name.starts_with("dripline.") || ENGINE_EVENTS.contains(&name)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum EventKind {
    Track,
    Identify,
    Page,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    pub kind: EventKind,
    pub user_id: Str,
    pub message_id: Str,
    /// The sender's own timestamp, kept for templates and reports. Processing uses the input
    /// time (receive time) instead, so a client with a wrong clock cannot reorder a contact.
    pub timestamp: Option<Ts>,
    /// Track: the event name; page: [`PAGE_VIEWED`] (or [`SCREEN_VIEWED`]); identify: empty.
    pub name: Str,
    pub properties: Map,
    pub traits: Map,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EventError {
    #[error("not valid JSON: {0}")]
    Json(String),
    #[error("an event must be a JSON object")]
    NotObject,
    #[error("missing or empty `{0}`")]
    Missing(&'static str),
    #[error("`{0}` must be {1}")]
    WrongType(&'static str, &'static str),
    #[error("unknown event type `{0}` (expected track, identify, page, screen or group)")]
    UnknownType(String),
    #[error("`timestamp` is not RFC 3339: {0}")]
    BadTimestamp(String),
    #[error("`{0}` is an event dripline emits itself; an ESP's feedback goes to POST /admin/v1/feedback")]
    Reserved(String),
    #[error("a `userId` starting with U+0001 is reserved for the engine's control records")]
    ControlId,
}

impl Event {
    pub fn track(user_id: &str, message_id: &str, name: &str, properties: Map) -> Self {
        Event {
            kind: EventKind::Track,
            user_id: user_id.into(),
            message_id: message_id.into(),
            timestamp: None,
            name: name.into(),
            properties,
            traits: Map::new(),
        }
    }

    pub fn identify(user_id: &str, message_id: &str, traits: Map) -> Self {
        Event {
            kind: EventKind::Identify,
            user_id: user_id.into(),
            message_id: message_id.into(),
            timestamp: None,
            name: Str::default(),
            properties: Map::new(),
            traits,
        }
    }

    pub fn page(user_id: &str, message_id: &str, properties: Map) -> Self {
        Event {
            kind: EventKind::Page,
            name: PAGE_VIEWED.into(),
            ..Event::track(user_id, message_id, PAGE_VIEWED, properties)
        }
    }

    /// Parses and validates one Segment JSON event (see [`wire`]).
    pub fn parse(bytes: &[u8]) -> Result<Self, EventError> {
        wire::parse(bytes, None)
    }

    /// Validates one Segment-shaped JSON object. `kind_hint` is the type implied by the
    /// endpoint (`/v1/track`), used when the body has no `type`.
    pub fn from_json(v: &serde_json::Value, kind_hint: Option<EventKind>) -> Result<Self, EventError> {
        let o = v.as_object().ok_or(EventError::NotObject)?;
        let kind = match o.get("type") {
            None => kind_hint.ok_or(EventError::Missing("type"))?,
            Some(serde_json::Value::String(t)) => match t.as_str() {
                "track" => EventKind::Track,
                "identify" => EventKind::Identify,
                "page" | "screen" => EventKind::Page,
                "group" => EventKind::Identify,
                other => return Err(EventError::UnknownType(other.into())),
            },
            Some(_) => return Err(EventError::WrongType("type", "a string")),
        };
        let user_id = match o.get("userId") {
            Some(serde_json::Value::String(s)) if !s.is_empty() => s.clone(),
            Some(serde_json::Value::Number(n)) => n.to_string(),
            Some(serde_json::Value::String(_)) | None => return Err(EventError::Missing("userId")),
            Some(_) => return Err(EventError::WrongType("userId", "a string")),
        };
        let message_id = match o.get("messageId") {
            Some(serde_json::Value::String(s)) if !s.is_empty() => s.clone(),
            Some(serde_json::Value::String(_)) | None => {
                return Err(EventError::Missing("messageId"));
            }
            Some(_) => return Err(EventError::WrongType("messageId", "a string")),
        };
        let timestamp = match o.get("timestamp") {
            None | Some(serde_json::Value::Null) => None,
            Some(serde_json::Value::String(s)) => {
                Some(parse_rfc3339(s).ok_or_else(|| EventError::BadTimestamp(s.clone()))?)
            }
            Some(_) => return Err(EventError::WrongType("timestamp", "an RFC 3339 string")),
        };
        let object = |key: &'static str| match o.get(key) {
            None | Some(serde_json::Value::Null) => Ok(Map::new()),
            Some(serde_json::Value::Object(m)) => Ok(json_object_to_map(m)),
            Some(_) => Err(EventError::WrongType(key, "an object")),
        };
        let properties = object("properties")?;
        let mut traits = object("traits")?;
        let group = o.get("type").and_then(|t| t.as_str()) == Some("group");
        // RudderStack sends an identify's traits in `context.traits`; the top-level ones win.
        // (A group's context traits are the user's, not the account's.)
        if kind == EventKind::Identify
            && !group
            && let Some(serde_json::Value::Object(c)) = o.get("context")
            && let Some(serde_json::Value::Object(t)) = c.get("traits")
        {
            for (k, v) in json_object_to_map(t) {
                traits.entry(k).or_insert(v);
            }
        }
        if group {
            // A group call: the account the contact belongs to, as its `account` trait.
            let id = match o.get("groupId") {
                Some(serde_json::Value::String(s)) if !s.is_empty() => s.clone(),
                Some(serde_json::Value::Number(n)) => n.to_string(),
                Some(serde_json::Value::String(_)) | None => return Err(EventError::Missing("groupId")),
                Some(_) => return Err(EventError::WrongType("groupId", "a string")),
            };
            let mut account = std::mem::take(&mut traits);
            account.insert("id".into(), id.into());
            traits.insert(ACCOUNT_TRAIT.into(), Value::Map(account));
        }
        let name = match kind {
            EventKind::Track => match o.get("event") {
                Some(serde_json::Value::String(s)) if !s.is_empty() => s.clone(),
                Some(serde_json::Value::String(_)) | None => {
                    return Err(EventError::Missing("event"));
                }
                Some(_) => return Err(EventError::WrongType("event", "a string")),
            },
            EventKind::Page if o.get("type").and_then(|t| t.as_str()) == Some("screen") => SCREEN_VIEWED.into(),
            EventKind::Page => PAGE_VIEWED.into(),
            EventKind::Identify => String::new(),
        };
        let mut properties = properties;
        if kind == EventKind::Page {
            if let Some(serde_json::Value::String(n)) = o.get("name") {
                properties.entry("name".into()).or_insert_with(|| n.clone().into());
            }
        }
        Ok(Event {
            kind,
            user_id: user_id.into(),
            message_id: message_id.into(),
            timestamp,
            name: name.into(),
            properties,
            traits,
        })
    }

    /// Whether this event shows the contact doing something (for inactivity triggers): not an
    /// identify from a CRM sync, and not delivery news about an email or webhook we sent.
    pub fn is_activity(&self) -> bool {
        self.kind != EventKind::Identify
            && !matches!(
                self.name.as_str(),
                "Email Delivered"
                    | "Email Deferred"
                    | "Email Bounced"
                    | "Email Soft Bounced"
                    | "Email Complained"
                    | "Unsubscribed"
                    | "Webhook Delivered"
                    | "Webhook Failed"
            )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_track_page_identify() {
        let t = Event::parse(br#"{"type":"track","userId":"u1","messageId":"m1","event":"Product Added","properties":{"sku":"A","price":9.5},"timestamp":"2026-01-01T10:00:00Z"}"#).unwrap();
        assert_eq!(t.name, "Product Added");
        assert_eq!(t.timestamp, parse_rfc3339("2026-01-01T10:00:00Z"));
        let p = Event::parse(
            br#"{"type":"page","userId":"u1","messageId":"m2","name":"Pricing","properties":{"path":"/pricing"}}"#,
        )
        .unwrap();
        assert_eq!(p.name, PAGE_VIEWED);
        assert_eq!(p.properties.get("name"), Some(&"Pricing".into()));
        let i =
            Event::parse(br#"{"type":"identify","userId":"u1","messageId":"m3","traits":{"email":"a@b.c"}}"#).unwrap();
        assert_eq!(i.traits.get("email"), Some(&"a@b.c".into()));
    }

    #[test]
    fn the_typed_parser_agrees_with_the_value_path() {
        let cases = [
            r#"{"type":"track","userId":42,"messageId":"m","event":"x","properties":{"a":[1,2.5,"s",null,{"b":true}],"big":18446744073709551615},"context":{"ip":"1.2.3.4"}}"#,
            r#"{"type":"page","userId":"u","messageId":"m","name":"Home","properties":null,"timestamp":null}"#,
            r#"{"type":"identify","userId":"u","messageId":"m","traits":{"email":"a@b.c","plan":"pro"},"integrations":{"All":true}}"#,
            r#"{"userId":"u","messageId":"m","event":"x"}"#,
            r#"[1,2]"#,
            r#""track""#,
            r#"{"type":3,"userId":"u","messageId":"m"}"#,
            r#"{"type":"track","userId":true,"messageId":"m","event":"x"}"#,
            r#"{"type":"track","userId":"u","messageId":["m"],"event":"x"}"#,
            r#"{"type":"track","userId":"u","messageId":"m","event":"x","traits":"no"}"#,
            r#"{"type":"track","userId":"u","messageId":"m","event":"","timestamp":5}"#,
            r#"{"type":"track","userId":"","messageId":"m","event":"x"}"#,
            // Keys out of order and repeated (the later value wins), also nested.
            r#"{"type":"track","userId":"u","messageId":"m","event":"x","properties":{"z":1,"a":{"y":1,"b":2,"y":3},"z":2,"m":null}}"#,
        ];
        for c in cases {
            let via_value = Event::from_json(&serde_json::from_str(c).unwrap(), Some(EventKind::Track));
            assert_eq!(wire::parse(c.as_bytes(), Some(EventKind::Track)), via_value, "{c}");
        }
    }

    #[test]
    fn rejects_with_a_reason() {
        let e = |s: &str| Event::parse(s.as_bytes()).unwrap_err().to_string();
        assert!(e("{").starts_with("not valid JSON"));
        assert!(e(r#"{"type":"track"} trailing"#).starts_with("not valid JSON"));
        assert_eq!(e("[1]"), "an event must be a JSON object");
        assert_eq!(
            e(r#"{"type":"track","messageId":"m","event":"x"}"#),
            "missing or empty `userId`"
        );
        assert_eq!(
            e(r#"{"type":"track","userId":"u","event":"x"}"#),
            "missing or empty `messageId`"
        );
        assert_eq!(
            e(r#"{"type":"track","userId":"u","messageId":"m"}"#),
            "missing or empty `event`"
        );
        assert_eq!(
            e(r#"{"type":"alias","userId":"u","messageId":"m"}"#),
            "unknown event type `alias` (expected track, identify, page, screen or group)"
        );
        assert_eq!(
            e(r#"{"type":"track","userId":"u","messageId":"m","event":"x","properties":[1]}"#),
            "`properties` must be an object"
        );
        assert!(
            e(r#"{"type":"track","userId":"u","messageId":"m","event":"x","timestamp":"yesterday"}"#)
                .contains("RFC 3339")
        );
    }
}
