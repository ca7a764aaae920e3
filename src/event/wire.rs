//! Segment JSON straight into a typed event, in one pass over the bytes.
//!
//! Going through a `serde_json::Value` tree first cost a map allocation per object and a second
//! walk to convert it; at 100K+ events/s that was a sixth of the pipeline. The fields we need are
//! read as loosely typed slots so that a wrong type still gets the precise error the Value path
//! gave (`userId` must be a string, …); everything else (`context`, `integrations`, …) is skipped
//! without being built.
//!
//! The event is first an [`EventRef`], whose strings borrow from the payload (a string with
//! escapes is the exception): ingest encodes it for the log as it is, byte for byte what the
//! owned [`Event`] would encode to, without allocating a string per field and key and freeing
//! them again (measured: 650 ns an event to parse into an `Event` and 100 more to encode it).

use super::{Event, EventError, EventKind, PAGE_VIEWED, SCREEN_VIEWED};
use crate::time::{Ts, parse_rfc3339};
use crate::value::{Map, Value};
use serde::de::{Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Serialize, Serializer};
use std::borrow::Cow;
use std::fmt;

/// Parses one event. `kind_hint` is the type implied by the endpoint, used when there is no `type`.
pub fn parse(bytes: &[u8], kind_hint: Option<EventKind>) -> Result<Event, EventError> {
    parse_ref(bytes, kind_hint).map(EventRef::into_event)
}

/// As [`parse`], borrowing from `bytes` instead of building an [`Event`].
pub fn parse_ref(bytes: &[u8], kind_hint: Option<EventKind>) -> Result<EventRef<'_>, EventError> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let wire = Wire::deserialize(&mut de).map_err(|e| EventError::Json(e.to_string()))?;
    de.end().map_err(|e| EventError::Json(e.to_string()))?;
    wire.validate(kind_hint)
}

/// A string as sent: borrowed from the payload unless it had escapes.
type Text<'a> = Cow<'a, str>;

/// A validated event borrowing from its payload. Its fields are [`Event`]'s, in the same order
/// and with the same encodings, so that it serializes (postcard) to the same bytes.
#[derive(Debug, Serialize)]
pub struct EventRef<'a> {
    pub kind: EventKind,
    pub user_id: Text<'a>,
    pub message_id: Text<'a>,
    pub timestamp: Option<Ts>,
    pub name: Text<'a>,
    properties: MapRef<'a>,
    traits: MapRef<'a>,
}

impl EventRef<'_> {
    pub fn into_event(self) -> Event {
        Event {
            kind: self.kind,
            user_id: self.user_id.into(),
            message_id: self.message_id.into(),
            timestamp: self.timestamp,
            name: self.name.into(),
            properties: self.properties.into_map(),
            traits: self.traits.into_map(),
        }
    }
}

/// [`Value`] borrowing from the payload: the same variants in the same order, so the same
/// (tagged) encoding.
#[derive(Debug, Serialize)]
enum ValueRef<'a> {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(Text<'a>),
    List(Vec<ValueRef<'a>>),
    Map(MapRef<'a>),
}

impl ValueRef<'_> {
    fn into_value(self) -> Value {
        match self {
            ValueRef::Null => Value::Null,
            ValueRef::Bool(b) => Value::Bool(b),
            ValueRef::Int(n) => Value::Int(n),
            ValueRef::Float(n) => Value::Float(n),
            ValueRef::Str(s) => Value::Str(s.into()),
            ValueRef::List(items) => Value::List(items.into_iter().map(ValueRef::into_value).collect()),
            ValueRef::Map(m) => Value::Map(m.into_map()),
        }
    }
}

/// [`Map`] borrowing from the payload: pairs sorted by key, a repeated key keeping its last
/// value, as `Map` builds them; serialized as a map, as `Map` is.
#[derive(Debug, Default)]
struct MapRef<'a>(Vec<(Text<'a>, ValueRef<'a>)>);

impl<'a> MapRef<'a> {
    /// Sorted once (a stable sort keeps equal keys in the order sent), then of each run of
    /// equal keys the last kept: an insert per key would cost n² on a large object.
    fn from_pairs(mut pairs: Vec<(Text<'a>, ValueRef<'a>)>) -> Self {
        if !pairs.is_sorted_by(|a, b| a.0 < b.0) {
            pairs.sort_by(|a, b| a.0.cmp(&b.0));
            let mut kept: Vec<(Text<'a>, ValueRef<'a>)> = Vec::with_capacity(pairs.len());
            for pair in pairs {
                match kept.last_mut() {
                    Some(last) if last.0 == pair.0 => *last = pair,
                    _ => kept.push(pair),
                }
            }
            pairs = kept;
        }
        MapRef(pairs)
    }

    /// Adds `key` unless it is there.
    fn insert_missing(&mut self, key: Cow<'a, str>, value: ValueRef<'a>) {
        if let Err(at) = self.0.binary_search_by(|(k, _)| k.as_ref().cmp(&key)) {
            self.0.insert(at, (key, value));
        }
    }

    fn into_map(self) -> Map {
        self.0
            .into_iter()
            .map(|(k, v)| (k.into_owned(), v.into_value()))
            .collect()
    }
}

impl Serialize for MapRef<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_map(self.0.iter().map(|(k, v)| (k, v)))
    }
}

/// A scalar field as sent, before it is checked.
#[derive(Default)]
enum Slot<'a> {
    #[default]
    Absent,
    Null,
    Str(Text<'a>),
    /// A number, kept as its decimal text (`userId: 42` is the id `"42"`).
    Num(String),
    Other,
}

/// An object field (`properties`, `traits`) as sent.
#[derive(Default)]
enum ObjSlot<'a> {
    #[default]
    Absent,
    Map(MapRef<'a>),
    Other,
}

#[derive(Default)]
struct Wire<'a> {
    /// The JSON was valid but not an object.
    not_object: bool,
    kind: Slot<'a>,
    user_id: Slot<'a>,
    message_id: Slot<'a>,
    timestamp: Slot<'a>,
    event: Slot<'a>,
    name: Slot<'a>,
    properties: ObjSlot<'a>,
    traits: ObjSlot<'a>,
    /// `context.traits`: where RudderStack's SDKs send an identify's traits.
    context_traits: ObjSlot<'a>,
    group_id: Slot<'a>,
}

/// The `context` object, of which only `traits` is read (the rest is skipped unparsed).
struct Context<'a>(ObjSlot<'a>);

impl<'de> Deserialize<'de> for Context<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Context<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("the event's context")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<Context<'de>, A::Error> {
                let mut traits = ObjSlot::Absent;
                while let Some(Key(key)) = m.next_key::<Key<'de>>()? {
                    if key == "traits" {
                        traits = m.next_value()?;
                    } else {
                        m.next_value::<IgnoredAny>()?;
                    }
                }
                Ok(Context(traits))
            }
            // Not an object: no traits from it (the context is informational).
            fn visit_unit<E>(self) -> Result<Context<'de>, E> {
                Ok(Context(ObjSlot::Absent))
            }
            fn visit_bool<E>(self, _: bool) -> Result<Context<'de>, E> {
                Ok(Context(ObjSlot::Absent))
            }
            fn visit_i64<E>(self, _: i64) -> Result<Context<'de>, E> {
                Ok(Context(ObjSlot::Absent))
            }
            fn visit_u64<E>(self, _: u64) -> Result<Context<'de>, E> {
                Ok(Context(ObjSlot::Absent))
            }
            fn visit_f64<E>(self, _: f64) -> Result<Context<'de>, E> {
                Ok(Context(ObjSlot::Absent))
            }
            fn visit_str<E>(self, _: &str) -> Result<Context<'de>, E> {
                Ok(Context(ObjSlot::Absent))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut s: A) -> Result<Context<'de>, A::Error> {
                while s.next_element::<IgnoredAny>()?.is_some() {}
                Ok(Context(ObjSlot::Absent))
            }
        }
        d.deserialize_any(V)
    }
}

impl<'a> Wire<'a> {
    fn validate(self, kind_hint: Option<EventKind>) -> Result<EventRef<'a>, EventError> {
        if self.not_object {
            return Err(EventError::NotObject);
        }
        let mut viewed = PAGE_VIEWED;
        let mut group = false;
        let kind = match self.kind {
            Slot::Absent => kind_hint.ok_or(EventError::Missing("type"))?,
            Slot::Str(t) => match t.as_ref() {
                "track" => EventKind::Track,
                "identify" => EventKind::Identify,
                "page" => EventKind::Page,
                // A mobile app's page view: read as a page, under its own name.
                "screen" => {
                    viewed = SCREEN_VIEWED;
                    EventKind::Page
                }
                // The account the contact belongs to: its `account` trait.
                "group" => {
                    group = true;
                    EventKind::Identify
                }
                _ => return Err(EventError::UnknownType(t.into_owned())),
            },
            _ => return Err(EventError::WrongType("type", "a string")),
        };
        let user_id = match self.user_id {
            Slot::Str(s) if !s.is_empty() => s,
            Slot::Num(n) => Cow::Owned(n),
            Slot::Str(_) | Slot::Absent => return Err(EventError::Missing("userId")),
            _ => return Err(EventError::WrongType("userId", "a string")),
        };
        let message_id = match self.message_id {
            Slot::Str(s) if !s.is_empty() => s,
            Slot::Str(_) | Slot::Absent => return Err(EventError::Missing("messageId")),
            _ => return Err(EventError::WrongType("messageId", "a string")),
        };
        let timestamp = match self.timestamp {
            Slot::Absent | Slot::Null => None,
            Slot::Str(s) => Some(parse_rfc3339(&s).ok_or_else(|| EventError::BadTimestamp(s.into_owned()))?),
            _ => return Err(EventError::WrongType("timestamp", "an RFC 3339 string")),
        };
        let object = |slot: ObjSlot<'a>, key: &'static str| match slot {
            ObjSlot::Absent => Ok(MapRef::default()),
            ObjSlot::Map(m) => Ok(m),
            ObjSlot::Other => Err(EventError::WrongType(key, "an object")),
        };
        let mut properties = object(self.properties, "properties")?;
        let mut traits = object(self.traits, "traits")?;
        if kind == EventKind::Identify
            && !group
            && let ObjSlot::Map(context) = self.context_traits
        {
            // RudderStack sends an identify's traits in `context.traits`; the top-level ones,
            // where the Segment spec puts them, win.
            for (k, v) in context.0 {
                traits.insert_missing(k, v);
            }
        }
        if group {
            let id = match self.group_id {
                Slot::Str(s) if !s.is_empty() => s,
                Slot::Num(n) => Cow::Owned(n),
                Slot::Str(_) | Slot::Absent => return Err(EventError::Missing("groupId")),
                _ => return Err(EventError::WrongType("groupId", "a string")),
            };
            let mut account = std::mem::take(&mut traits).0;
            account.push((Cow::Borrowed("id"), ValueRef::Str(id)));
            traits = MapRef(vec![(
                Cow::Borrowed(super::ACCOUNT_TRAIT),
                ValueRef::Map(MapRef::from_pairs(account)),
            )]);
        }
        let name = match kind {
            EventKind::Track => match self.event {
                Slot::Str(s) if !s.is_empty() => s,
                Slot::Str(_) | Slot::Absent => return Err(EventError::Missing("event")),
                _ => return Err(EventError::WrongType("event", "a string")),
            },
            EventKind::Page => {
                if let Slot::Str(n) = self.name {
                    properties.insert_missing(Cow::Borrowed("name"), ValueRef::Str(n));
                }
                Cow::Borrowed(viewed)
            }
            EventKind::Identify => Cow::Borrowed(""),
        };
        Ok(EventRef {
            kind,
            user_id,
            message_id,
            timestamp,
            name,
            properties,
            traits,
        })
    }
}

impl<'de> Deserialize<'de> for Wire<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Wire<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an event object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<Wire<'de>, A::Error> {
                let mut w = Wire::default();
                while let Some(Key(key)) = m.next_key::<Key<'de>>()? {
                    match key.as_ref() {
                        "type" => w.kind = m.next_value()?,
                        "userId" => w.user_id = m.next_value()?,
                        "messageId" => w.message_id = m.next_value()?,
                        "timestamp" => w.timestamp = m.next_value()?,
                        "event" => w.event = m.next_value()?,
                        "name" => w.name = m.next_value()?,
                        "properties" => w.properties = m.next_value()?,
                        "traits" => w.traits = m.next_value()?,
                        "context" => w.context_traits = m.next_value::<Context>()?.0,
                        "groupId" => w.group_id = m.next_value()?,
                        _ => {
                            m.next_value::<IgnoredAny>()?;
                        }
                    }
                }
                Ok(w)
            }
        }
        // Anything but an object is read through as a `Slot` and reported as NotObject.
        struct Any;
        impl<'de> Visitor<'de> for Any {
            type Value = Wire<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an event object")
            }
            fn visit_map<A: MapAccess<'de>>(self, m: A) -> Result<Wire<'de>, A::Error> {
                V.visit_map(m)
            }
            fn visit_bool<E>(self, _: bool) -> Result<Wire<'de>, E> {
                Ok(Wire::not_object())
            }
            fn visit_i64<E>(self, _: i64) -> Result<Wire<'de>, E> {
                Ok(Wire::not_object())
            }
            fn visit_u64<E>(self, _: u64) -> Result<Wire<'de>, E> {
                Ok(Wire::not_object())
            }
            fn visit_f64<E>(self, _: f64) -> Result<Wire<'de>, E> {
                Ok(Wire::not_object())
            }
            fn visit_str<E>(self, _: &str) -> Result<Wire<'de>, E> {
                Ok(Wire::not_object())
            }
            fn visit_unit<E>(self) -> Result<Wire<'de>, E> {
                Ok(Wire::not_object())
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut s: A) -> Result<Wire<'de>, A::Error> {
                while s.next_element::<IgnoredAny>()?.is_some() {}
                Ok(Wire::not_object())
            }
        }
        d.deserialize_any(Any)
    }
}

impl Wire<'_> {
    fn not_object() -> Self {
        Wire {
            not_object: true,
            ..Wire::default()
        }
    }
}

impl<'de> Deserialize<'de> for Slot<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Slot<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("any value")
            }
            fn visit_borrowed_str<E>(self, s: &'de str) -> Result<Slot<'de>, E> {
                Ok(Slot::Str(Cow::Borrowed(s)))
            }
            fn visit_str<E>(self, s: &str) -> Result<Slot<'de>, E> {
                Ok(Slot::Str(Cow::Owned(s.to_owned())))
            }
            fn visit_string<E>(self, s: String) -> Result<Slot<'de>, E> {
                Ok(Slot::Str(Cow::Owned(s)))
            }
            fn visit_i64<E>(self, n: i64) -> Result<Slot<'de>, E> {
                Ok(Slot::Num(n.to_string()))
            }
            fn visit_u64<E>(self, n: u64) -> Result<Slot<'de>, E> {
                Ok(Slot::Num(n.to_string()))
            }
            fn visit_f64<E>(self, n: f64) -> Result<Slot<'de>, E> {
                Ok(Slot::Num(n.to_string()))
            }
            fn visit_unit<E>(self) -> Result<Slot<'de>, E> {
                Ok(Slot::Null)
            }
            fn visit_bool<E>(self, _: bool) -> Result<Slot<'de>, E> {
                Ok(Slot::Other)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut s: A) -> Result<Slot<'de>, A::Error> {
                while s.next_element::<IgnoredAny>()?.is_some() {}
                Ok(Slot::Other)
            }
            fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<Slot<'de>, A::Error> {
                while m.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(Slot::Other)
            }
        }
        d.deserialize_any(V)
    }
}

impl<'de> Deserialize<'de> for ObjSlot<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match ValueRef::deserialize(d)? {
            ValueRef::Map(m) => Ok(ObjSlot::Map(m)),
            ValueRef::Null => Ok(ObjSlot::Absent),
            _ => Ok(ObjSlot::Other),
        }
    }
}

/// A JSON value read straight into the storable form (whose own serde form is the tagged
/// encoding used by postcard, so this reading is not derived).
impl<'de> Deserialize<'de> for ValueRef<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = ValueRef<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_bool<E>(self, b: bool) -> Result<ValueRef<'de>, E> {
                Ok(ValueRef::Bool(b))
            }
            fn visit_i64<E>(self, n: i64) -> Result<ValueRef<'de>, E> {
                Ok(ValueRef::Int(n))
            }
            fn visit_u64<E>(self, n: u64) -> Result<ValueRef<'de>, E> {
                Ok(i64::try_from(n).map_or(ValueRef::Float(n as f64), ValueRef::Int))
            }
            fn visit_f64<E>(self, n: f64) -> Result<ValueRef<'de>, E> {
                Ok(ValueRef::Float(n))
            }
            fn visit_borrowed_str<E>(self, s: &'de str) -> Result<ValueRef<'de>, E> {
                Ok(ValueRef::Str(Cow::Borrowed(s)))
            }
            fn visit_str<E>(self, s: &str) -> Result<ValueRef<'de>, E> {
                Ok(ValueRef::Str(Cow::Owned(s.to_owned())))
            }
            fn visit_string<E>(self, s: String) -> Result<ValueRef<'de>, E> {
                Ok(ValueRef::Str(Cow::Owned(s)))
            }
            fn visit_unit<E>(self) -> Result<ValueRef<'de>, E> {
                Ok(ValueRef::Null)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut s: A) -> Result<ValueRef<'de>, A::Error> {
                let mut items = Vec::with_capacity(s.size_hint().unwrap_or(0));
                while let Some(v) = s.next_element()? {
                    items.push(v);
                }
                Ok(ValueRef::List(items))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<ValueRef<'de>, A::Error> {
                let mut entries = Vec::with_capacity(m.size_hint().unwrap_or(0));
                while let Some((Key(k), v)) = m.next_entry::<Key<'de>, ValueRef<'de>>()? {
                    entries.push((k, v));
                }
                Ok(ValueRef::Map(MapRef::from_pairs(entries)))
            }
        }
        d.deserialize_any(V)
    }
}

/// An object key, borrowed from the payload unless it had escapes (serde's own `Cow<str>`
/// always copies).
struct Key<'a>(Text<'a>);

impl<'de> Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E>(self, s: &'de str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Borrowed(s)))
            }
            fn visit_str<E>(self, s: &str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(s.to_owned())))
            }
            fn visit_string<E>(self, s: String) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(s)))
            }
        }
        d.deserialize_str(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The borrowed event of `json` encodes to the bytes of the owned one, built independently
    /// through `serde_json::Value`, and converts to it.
    fn agrees_with_the_value_path(json: &str) -> Result<(), TestCaseError> {
        let via_value = Event::from_json(&serde_json::from_str(json).unwrap(), Some(EventKind::Track)).unwrap();
        let borrowed = parse_ref(json.as_bytes(), Some(EventKind::Track)).unwrap();
        prop_assert_eq!(
            postcard::to_allocvec(&borrowed).unwrap(),
            postcard::to_allocvec(&via_value).unwrap(),
            "{}",
            json
        );
        prop_assert_eq!(borrowed.into_event(), via_value);
        Ok(())
    }

    #[test]
    fn a_screen_call_is_a_page_named_screen_viewed() {
        let json = r#"{"type":"screen","userId":"u","messageId":"m","name":"Settings"}"#;
        let ev = parse_ref(json.as_bytes(), None).unwrap().into_event();
        assert_eq!((ev.kind, &*ev.name), (EventKind::Page, SCREEN_VIEWED));
        assert_eq!(ev.properties.get("name").and_then(|v| v.as_str()), Some("Settings"));
    }

    #[test]
    fn an_identifys_context_traits_fill_in_the_top_level_ones() {
        let json = r#"{"type":"identify","userId":"u","messageId":"m","context":{"traits":{"email":"c@d.e","plan":"free"}},"traits":{"plan":"pro"}}"#;
        let ev = parse_ref(json.as_bytes(), None).unwrap().into_event();
        assert_eq!(ev.traits.get("email").and_then(|v| v.as_str()), Some("c@d.e"));
        assert_eq!(ev.traits.get("plan").and_then(|v| v.as_str()), Some("pro"));
        let track =
            r#"{"type":"track","userId":"u","messageId":"m","event":"x","context":{"traits":{"email":"c@d.e"}}}"#;
        assert!(
            parse_ref(track.as_bytes(), None)
                .unwrap()
                .into_event()
                .traits
                .is_empty()
        );
    }

    #[test]
    fn a_borrowed_event_encodes_as_the_owned_one() {
        let cases = [
            r#"{"type":"track","userId":42,"messageId":"m","event":"x","properties":{"a":[1,2.5,"s",null,{"b":true}],"big":18446744073709551615,"neg":-7},"context":{"ip":"1.2.3.4"}}"#,
            r#"{"type":"page","userId":"u","messageId":"m","name":"Home","properties":null,"timestamp":null}"#,
            r#"{"type":"page","userId":"u","messageId":"m","name":"Home","properties":{"name":"kept","a":1,"z":2}}"#,
            r#"{"type":"page","userId":"u","messageId":"m","name":"Ho\"me","properties":{"path":"/"}}"#,
            r#"{"type":"identify","userId":"u","messageId":"m","traits":{"email":"a@b.c","plan":"pro"},"timestamp":"2026-01-01T10:00:00Z"}"#,
            r#"{"userId":"u","messageId":"m","event":"x"}"#,
            // Escapes (copied, not borrowed) in ids, names, keys and values; raw UTF-8.
            r#"{"type":"track","userId":"u\u00e9\n","messageId":"m\"1","event":"Caf\u00e9","properties":{"k\\ey":"v\tal","ключ":"значение","\u00e9":"é"}}"#,
            // Keys out of order and repeated (the later value wins), also nested.
            r#"{"type":"track","userId":"u","messageId":"m","event":"x","properties":{"z":1,"a":{"y":1,"b":2,"y":3},"z":2,"m":null}}"#,
            r#"{"type":"track","userId":"u","messageId":"m","event":"x","properties":{"b":1,"a":2,"a":3},"traits":{}}"#,
            // An identify's traits in `context.traits` (RudderStack), the top-level ones winning;
            // a track's context traits are not the contact's.
            r#"{"type":"identify","userId":"u","messageId":"m","context":{"ip":"1.2.3.4","traits":{"email":"c@d.e","plan":"free","z":{"a":1}}},"traits":{"plan":"pro"}}"#,
            r#"{"type":"identify","userId":"u","messageId":"m","anonymousId":null,"context":{"traits":{"email":"c@d.e"}}}"#,
            r#"{"type":"identify","userId":"u","messageId":"m","context":null}"#,
            // A screen call: a page under its own name.
            r#"{"type":"screen","userId":"u","messageId":"m","name":"Settings","properties":{"variant":"dark"}}"#,
            // A group call: the account trait, its id winning over a trait named so; the
            // context's traits (the user's) left out.
            r#"{"type":"group","userId":"u","messageId":"m","groupId":"g1","traits":{"name":"Acme","id":"x","plan":"pro"},"context":{"traits":{"email":"c@d.e"}}}"#,
            r#"{"type":"group","userId":"u","messageId":"m","groupId":42}"#,
            r#"{"type":"track","userId":"u","messageId":"m","event":"x","context":{"traits":{"email":"c@d.e"}}}"#,
        ];
        for c in cases {
            agrees_with_the_value_path(c).unwrap();
        }
    }

    /// Any JSON value: strings of any characters (escaped as serde_json writes them), any
    /// numbers, nested lists and objects.
    fn json() -> impl Strategy<Value = serde_json::Value> {
        let leaf = prop_oneof![
            Just(serde_json::Value::Null),
            any::<bool>().prop_map(serde_json::Value::Bool),
            any::<i64>().prop_map(Into::into),
            any::<u64>().prop_map(Into::into),
            any::<f64>()
                .prop_filter("finite", |f| f.is_finite())
                .prop_map(Into::into),
            ".{0,12}".prop_map(serde_json::Value::String),
        ];
        leaf.prop_recursive(3, 24, 6, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..6).prop_map(serde_json::Value::Array),
                prop::collection::btree_map(".{0,8}", inner, 0..6)
                    .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest! {
        /// Properties in any order, keys repeated (from a small alphabet) or of any characters.
        #[test]
        fn any_properties_encode_as_the_owned_event(
            props in prop::collection::vec(("[abc]|.{0,8}", json()), 0..10),
            user in ".{1,10}",
            name in ".{1,10}",
        ) {
            let object: Vec<String> = props
                .iter()
                .map(|(k, v)| format!("{}:{v}", serde_json::Value::from(k.as_str())))
                .collect();
            let ev = format!(
                r#"{{"type":"track","userId":{},"messageId":"m","event":{},"properties":{{{}}},"traits":{{"t":{}}}}}"#,
                serde_json::Value::from(user),
                serde_json::Value::from(name),
                object.join(","),
                props.len()
            );
            agrees_with_the_value_path(&ev)?;
        }
    }
}
