//! A compact, storable JSON-like value for traits, event properties and enrollment variables.
//!
//! `serde_json::Value` cannot be stored with postcard (it needs `deserialize_any`), so state uses
//! this enum with a derived, tagged encoding and converts at the edges (JSON in, templates out).

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Keys and string values: most are short (property names, ids, paths, stages) and are kept
/// inline, up to 24 bytes, instead of in an allocation of their own each. Decoding an event or a
/// contact's state then allocates per map, not per string; encodings are those of `String`.
pub type Str = compact_str::CompactString;

type Pairs = litemap::LiteMap<Str, Value>;

/// A map ordered by key, so that encoding and iteration are deterministic: a sorted vector of
/// pairs, because traits and properties hold a few keys each and a `BTreeMap` node is sized for
/// eleven (at 1M contacts that was ~0.8 KiB more per cached contact). Bulk builds
/// (`collect`) sort once; callers merging many keys into an existing map do the same rather
/// than inserting one by one. Always serialized as a map (`LiteMap` alone writes an empty map as
/// a JSON list); postcard's encoding is the same as a `BTreeMap`'s.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Map(Pairs);

impl Map {
    pub fn new() -> Self {
        Self::default()
    }

    /// A look-up by key. Most maps hold a few keys, and comparing for equality (lengths first)
    /// is cheaper there than the comparisons of a binary search.
    pub fn get(&self, key: &str) -> Option<&Value> {
        if self.0.len() <= 8 {
            self.0.iter().find(|(k, _)| k.as_str() == key).map(|(_, v)| v)
        } else {
            self.0.get(key)
        }
    }

    /// A look-up by key, or by a dotted path into nested maps (`account.plan`) when no key is
    /// named so.
    pub fn get_path(&self, path: &str) -> Option<&Value> {
        if let Some(v) = self.get(path) {
            return Some(v);
        }
        let (root, rest) = path.split_once('.')?;
        match self.get(root)? {
            Value::Map(m) => m.get_path(rest),
            _ => None,
        }
    }

    /// As a JSON object (`Value::to_json`, `dripline contact show`).
    pub fn to_json(&self) -> serde_json::Map<String, serde_json::Value> {
        self.iter().map(|(k, v)| (k.to_string(), v.to_json())).collect()
    }

    /// As template values by key: a map for templates, or the top of a template's context.
    pub fn to_template_entries(&self) -> BTreeMap<String, minijinja::Value> {
        self.iter().map(|(k, v)| (k.to_string(), v.to_template())).collect()
    }
}

impl std::ops::Deref for Map {
    type Target = Pairs;
    fn deref(&self) -> &Pairs {
        &self.0
    }
}

impl std::ops::DerefMut for Map {
    fn deref_mut(&mut self) -> &mut Pairs {
        &mut self.0
    }
}

impl<K: Into<Str>> FromIterator<(K, Value)> for Map {
    /// Sorted once; of two equal keys the later wins.
    fn from_iter<I: IntoIterator<Item = (K, Value)>>(iter: I) -> Self {
        Map(iter.into_iter().map(|(k, v)| (k.into(), v)).collect())
    }
}

impl IntoIterator for Map {
    type Item = (Str, Value);
    type IntoIter = <Pairs as IntoIterator>::IntoIter;
    fn into_iter(self) -> Self::IntoIter {
        self.0.into_iter()
    }
}

impl<'a> IntoIterator for &'a Map {
    type Item = (&'a Str, &'a Value);
    type IntoIter = <&'a Pairs as IntoIterator>::IntoIter;
    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}

impl Serialize for Map {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_map(self.0.iter())
    }
}

impl<'de> Deserialize<'de> for Map {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Pairs::deserialize(d).map(Map)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub enum Value {
    #[default]
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(Str),
    List(Vec<Value>),
    Map(Map),
}

impl Value {
    pub fn as_f64(&self) -> Option<f64> {
        match self {
            Value::Int(i) => Some(*i as f64),
            Value::Float(f) => Some(*f),
            Value::Str(s) => s.trim().parse().ok(),
            Value::Bool(_) | Value::Null | Value::List(_) | Value::Map(_) => None,
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }

    pub fn is_null(&self) -> bool {
        matches!(self, Value::Null)
    }

    /// Loose equality used by filters: numbers compare numerically, everything else structurally,
    /// and a number compares equal to its decimal string (`"5"` = `5`) because event producers
    /// are inconsistent about quoting.
    pub fn loose_eq(&self, other: &Value) -> bool {
        match (self, other) {
            (Value::Str(a), Value::Str(b)) => a == b,
            (Value::Int(a), Value::Int(b)) => a == b,
            (a, b) => match (a.as_f64(), b.as_f64()) {
                (Some(x), Some(y)) => x == y,
                _ => a == b,
            },
        }
    }

    /// `contains`: substring for strings, element for lists, key for maps.
    pub fn contains(&self, needle: &Value) -> bool {
        match self {
            Value::Str(s) => needle.as_str().is_some_and(|n| s.contains(n)),
            Value::List(items) => items.iter().any(|i| i.loose_eq(needle)),
            Value::Map(m) => needle.as_str().is_some_and(|k| m.contains_key(k)),
            _ => false,
        }
    }

    pub fn to_json(&self) -> serde_json::Value {
        match self {
            Value::Null => serde_json::Value::Null,
            Value::Bool(b) => (*b).into(),
            Value::Int(i) => (*i).into(),
            Value::Float(f) => serde_json::Number::from_f64(*f)
                .map(serde_json::Value::Number)
                .unwrap_or(serde_json::Value::Null),
            Value::Str(s) => s.as_str().into(),
            Value::List(l) => l.iter().map(Value::to_json).collect(),
            Value::Map(m) => m.to_json().into(),
        }
    }

    pub fn to_template(&self) -> minijinja::Value {
        match self {
            Value::Null => minijinja::Value::from(()),
            Value::Bool(b) => (*b).into(),
            Value::Int(i) => (*i).into(),
            Value::Float(f) => (*f).into(),
            Value::Str(s) => s.as_str().into(),
            Value::List(l) => l.iter().map(Value::to_template).collect(),
            Value::Map(m) => map_to_template(m),
        }
    }
}

pub fn map_to_template(m: &Map) -> minijinja::Value {
    m.to_template_entries().into()
}

impl From<&serde_json::Value> for Value {
    fn from(v: &serde_json::Value) -> Self {
        match v {
            serde_json::Value::Null => Value::Null,
            serde_json::Value::Bool(b) => Value::Bool(*b),
            serde_json::Value::Number(n) => match n.as_i64() {
                Some(i) => Value::Int(i),
                None => Value::Float(n.as_f64().unwrap_or(0.0)),
            },
            serde_json::Value::String(s) => Value::Str(s.as_str().into()),
            serde_json::Value::Array(a) => Value::List(a.iter().map(Value::from).collect()),
            serde_json::Value::Object(o) => Value::Map(json_object_to_map(o)),
        }
    }
}

pub fn json_object_to_map(o: &serde_json::Map<String, serde_json::Value>) -> Map {
    o.iter().map(|(k, v)| (k.as_str(), Value::from(v))).collect()
}

impl From<&str> for Value {
    fn from(s: &str) -> Self {
        Value::Str(s.into())
    }
}
impl From<String> for Value {
    fn from(s: String) -> Self {
        Value::Str(s.into())
    }
}
impl From<Str> for Value {
    fn from(s: Str) -> Self {
        Value::Str(s)
    }
}
impl From<i64> for Value {
    fn from(i: i64) -> Self {
        Value::Int(i)
    }
}
impl From<f64> for Value {
    fn from(f: f64) -> Self {
        Value::Float(f)
    }
}
impl From<bool> for Value {
    fn from(b: bool) -> Self {
        Value::Bool(b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_compare_across_representations() {
        assert!(Value::Int(5).loose_eq(&Value::Float(5.0)));
        assert!(Value::Str("5".into()).loose_eq(&Value::Int(5)));
        assert!(!Value::Str("five".into()).loose_eq(&Value::Int(5)));
        assert!(Value::List(vec!["a".into(), "b".into()]).contains(&"b".into()));
        assert!(Value::Str("/pricing/team".into()).contains(&"pricing".into()));
    }

    /// States stored before maps were sorted vectors decode unchanged: the encoding is a
    /// `BTreeMap`'s, byte for byte. An empty map is still a JSON object.
    #[test]
    fn maps_encode_as_btreemaps_did() {
        let pairs = [("b", Value::Int(2)), ("a", Value::Str("x".into())), ("c", Value::Null)];
        let map: Map = pairs.iter().map(|(k, v)| (k.to_string(), v.clone())).collect();
        let tree: BTreeMap<String, Value> = pairs.iter().map(|(k, v)| (k.to_string(), v.clone())).collect();
        let bytes = postcard::to_allocvec(&map).unwrap();
        assert_eq!(bytes, postcard::to_allocvec(&tree).unwrap());
        assert_eq!(postcard::from_bytes::<Map>(&bytes).unwrap(), map);
        assert_eq!(
            map.keys().map(crate::value::Str::as_str).collect::<Vec<_>>(),
            ["a", "b", "c"]
        );
        assert_eq!(serde_json::to_string(&Map::new()).unwrap(), "{}");
        assert_eq!(
            serde_json::to_string(&map).unwrap(),
            r#"{"a":{"Str":"x"},"b":{"Int":2},"c":"Null"}"#
        );
    }

    /// Small maps are scanned, larger ones searched: the same answers either way.
    #[test]
    fn look_ups_agree_with_a_btreemap() {
        for n in [0, 1, 3, 8, 9, 40] {
            let pairs: Vec<(String, Value)> = (0..n).map(|i| (format!("k{}", i * 7 % 41), Value::Int(i))).collect();
            let map: Map = pairs.iter().cloned().collect();
            let tree: BTreeMap<String, Value> = pairs.into_iter().collect();
            for i in 0..45 {
                let key = format!("k{i}");
                assert_eq!(map.get(&key), tree.get(&key), "{n} keys, {key}");
            }
            assert_eq!(map.get(""), None);
        }
    }

    #[test]
    fn json_round_trip_keeps_integers() {
        let j = serde_json::json!({"a": 1, "b": [1.5, "x", null], "c": {"d": true}});
        assert_eq!(Value::from(&j).to_json(), j);
    }

    /// Strings kept inline (up to 24 bytes) or not encode exactly as `String`s did: stored
    /// states, outbox entries and log records written before still read, and digests are the
    /// same.
    #[test]
    fn strs_encode_as_strings_did() {
        let long = "a string longer than twenty-four bytes, kept on the heap";
        for s in ["", "u1", "exactly twenty-four byte", long] {
            assert_eq!(
                postcard::to_allocvec(&Str::from(s)).unwrap(),
                postcard::to_allocvec(&s.to_string()).unwrap()
            );
            let v = Value::Str(s.into());
            assert_eq!(
                postcard::from_bytes::<Value>(&postcard::to_allocvec(&v).unwrap()).unwrap(),
                v
            );
        }
        let map: Map = [(long, Value::Int(1)), ("k", long.into())].into_iter().collect();
        let tree: BTreeMap<String, Value> = [(long.to_string(), Value::Int(1)), ("k".into(), long.into())].into();
        assert_eq!(
            postcard::to_allocvec(&map).unwrap(),
            postcard::to_allocvec(&tree).unwrap()
        );
    }
}
