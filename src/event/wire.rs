//! Segment JSON straight into a typed [`Event`], in one pass over the bytes.
//!
//! Going through a `serde_json::Value` tree first cost a map allocation per object and a second
//! walk to convert it; at 100K+ events/s that was a sixth of the pipeline. The fields we need are
//! read as loosely typed slots so that a wrong type still gets the precise error the Value path
//! gave (`userId` must be a string, …); everything else (`context`, `integrations`, …) is skipped
//! without being built.

use super::{Event, EventError, EventKind, PAGE_VIEWED};
use crate::time::parse_rfc3339;
use crate::value::{Map, Value};
use serde::Deserialize;
use serde::de::{Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use std::fmt;

/// Parses one event. `kind_hint` is the type implied by the endpoint, used when there is no `type`.
pub fn parse(bytes: &[u8], kind_hint: Option<EventKind>) -> Result<Event, EventError> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let wire = Wire::deserialize(&mut de).map_err(|e| EventError::Json(e.to_string()))?;
    de.end().map_err(|e| EventError::Json(e.to_string()))?;
    wire.into_event(kind_hint)
}

/// A scalar field as sent, before it is checked.
#[derive(Default)]
enum Slot {
    #[default]
    Absent,
    Null,
    Str(String),
    /// A number, kept as its decimal text (`userId: 42` is the id `"42"`).
    Num(String),
    Other,
}

/// An object field (`properties`, `traits`) as sent.
#[derive(Default)]
enum ObjSlot {
    #[default]
    Absent,
    Map(Map),
    Other,
}

#[derive(Default)]
struct Wire {
    /// The JSON was valid but not an object.
    not_object: bool,
    kind: Slot,
    user_id: Slot,
    message_id: Slot,
    timestamp: Slot,
    event: Slot,
    name: Slot,
    properties: ObjSlot,
    traits: ObjSlot,
}

impl Wire {
    fn into_event(self, kind_hint: Option<EventKind>) -> Result<Event, EventError> {
        if self.not_object {
            return Err(EventError::NotObject);
        }
        let kind = match self.kind {
            Slot::Absent => kind_hint.ok_or(EventError::Missing("type"))?,
            Slot::Str(t) => match t.as_str() {
                "track" => EventKind::Track,
                "identify" => EventKind::Identify,
                "page" => EventKind::Page,
                _ => return Err(EventError::UnknownType(t)),
            },
            _ => return Err(EventError::WrongType("type", "a string")),
        };
        let user_id = match self.user_id {
            Slot::Str(s) if !s.is_empty() => s,
            Slot::Num(n) => n,
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
            Slot::Str(s) => Some(parse_rfc3339(&s).ok_or(EventError::BadTimestamp(s))?),
            _ => return Err(EventError::WrongType("timestamp", "an RFC 3339 string")),
        };
        let object = |slot: ObjSlot, key: &'static str| match slot {
            ObjSlot::Absent => Ok(Map::new()),
            ObjSlot::Map(m) => Ok(m),
            ObjSlot::Other => Err(EventError::WrongType(key, "an object")),
        };
        let mut properties = object(self.properties, "properties")?;
        let traits = object(self.traits, "traits")?;
        let name = match kind {
            EventKind::Track => match self.event {
                Slot::Str(s) if !s.is_empty() => s,
                Slot::Str(_) | Slot::Absent => return Err(EventError::Missing("event")),
                _ => return Err(EventError::WrongType("event", "a string")),
            },
            EventKind::Page => {
                if let Slot::Str(n) = self.name {
                    properties.entry("name".into()).or_insert(Value::Str(n));
                }
                PAGE_VIEWED.into()
            }
            EventKind::Identify => String::new(),
        };
        Ok(Event {
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

impl<'de> Deserialize<'de> for Wire {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Wire;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an event object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<Wire, A::Error> {
                let mut w = Wire::default();
                while let Some(key) = m.next_key::<std::borrow::Cow<'de, str>>()? {
                    match key.as_ref() {
                        "type" => w.kind = m.next_value()?,
                        "userId" => w.user_id = m.next_value()?,
                        "messageId" => w.message_id = m.next_value()?,
                        "timestamp" => w.timestamp = m.next_value()?,
                        "event" => w.event = m.next_value()?,
                        "name" => w.name = m.next_value()?,
                        "properties" => w.properties = m.next_value()?,
                        "traits" => w.traits = m.next_value()?,
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
            type Value = Wire;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an event object")
            }
            fn visit_map<A: MapAccess<'de>>(self, m: A) -> Result<Wire, A::Error> {
                V.visit_map(m)
            }
            fn visit_bool<E>(self, _: bool) -> Result<Wire, E> {
                Ok(Wire::not_object())
            }
            fn visit_i64<E>(self, _: i64) -> Result<Wire, E> {
                Ok(Wire::not_object())
            }
            fn visit_u64<E>(self, _: u64) -> Result<Wire, E> {
                Ok(Wire::not_object())
            }
            fn visit_f64<E>(self, _: f64) -> Result<Wire, E> {
                Ok(Wire::not_object())
            }
            fn visit_str<E>(self, _: &str) -> Result<Wire, E> {
                Ok(Wire::not_object())
            }
            fn visit_unit<E>(self) -> Result<Wire, E> {
                Ok(Wire::not_object())
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut s: A) -> Result<Wire, A::Error> {
                while s.next_element::<IgnoredAny>()?.is_some() {}
                Ok(Wire::not_object())
            }
        }
        d.deserialize_any(Any)
    }
}

impl Wire {
    fn not_object() -> Wire {
        Wire {
            not_object: true,
            ..Wire::default()
        }
    }
}

impl<'de> Deserialize<'de> for Slot {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Slot;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("any value")
            }
            fn visit_str<E>(self, s: &str) -> Result<Slot, E> {
                Ok(Slot::Str(s.to_owned()))
            }
            fn visit_string<E>(self, s: String) -> Result<Slot, E> {
                Ok(Slot::Str(s))
            }
            fn visit_i64<E>(self, n: i64) -> Result<Slot, E> {
                Ok(Slot::Num(n.to_string()))
            }
            fn visit_u64<E>(self, n: u64) -> Result<Slot, E> {
                Ok(Slot::Num(n.to_string()))
            }
            fn visit_f64<E>(self, n: f64) -> Result<Slot, E> {
                Ok(Slot::Num(n.to_string()))
            }
            fn visit_unit<E>(self) -> Result<Slot, E> {
                Ok(Slot::Null)
            }
            fn visit_bool<E>(self, _: bool) -> Result<Slot, E> {
                Ok(Slot::Other)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut s: A) -> Result<Slot, A::Error> {
                while s.next_element::<IgnoredAny>()?.is_some() {}
                Ok(Slot::Other)
            }
            fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<Slot, A::Error> {
                while m.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(Slot::Other)
            }
        }
        d.deserialize_any(V)
    }
}

impl<'de> Deserialize<'de> for ObjSlot {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match JsonValue::deserialize(d)?.0 {
            Value::Map(m) => Ok(ObjSlot::Map(m)),
            Value::Null => Ok(ObjSlot::Absent),
            _ => Ok(ObjSlot::Other),
        }
    }
}

/// A JSON value read straight into the storable [`Value`] (whose own serde form is the tagged
/// encoding used by postcard, so it cannot be the JSON one).
pub struct JsonValue(pub Value);

impl<'de> Deserialize<'de> for JsonValue {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = JsonValue;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_bool<E>(self, b: bool) -> Result<JsonValue, E> {
                Ok(JsonValue(Value::Bool(b)))
            }
            fn visit_i64<E>(self, n: i64) -> Result<JsonValue, E> {
                Ok(JsonValue(Value::Int(n)))
            }
            fn visit_u64<E>(self, n: u64) -> Result<JsonValue, E> {
                Ok(JsonValue(i64::try_from(n).map_or(Value::Float(n as f64), Value::Int)))
            }
            fn visit_f64<E>(self, n: f64) -> Result<JsonValue, E> {
                Ok(JsonValue(Value::Float(n)))
            }
            fn visit_str<E>(self, s: &str) -> Result<JsonValue, E> {
                Ok(JsonValue(Value::Str(s.to_owned())))
            }
            fn visit_string<E>(self, s: String) -> Result<JsonValue, E> {
                Ok(JsonValue(Value::Str(s)))
            }
            fn visit_unit<E>(self) -> Result<JsonValue, E> {
                Ok(JsonValue(Value::Null))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut s: A) -> Result<JsonValue, A::Error> {
                let mut items = Vec::with_capacity(s.size_hint().unwrap_or(0));
                while let Some(JsonValue(v)) = s.next_element()? {
                    items.push(v);
                }
                Ok(JsonValue(Value::List(items)))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<JsonValue, A::Error> {
                let mut entries = Vec::with_capacity(m.size_hint().unwrap_or(0));
                while let Some((k, JsonValue(v))) = m.next_entry::<String, JsonValue>()? {
                    entries.push((k, v));
                }
                // Sorted once (a repeated key keeps its last value, as JSON readers do): an
                // insert per key into the sorted vector would cost n² on a large object.
                Ok(JsonValue(Value::Map(entries.into_iter().collect())))
            }
        }
        d.deserialize_any(V)
    }
}
