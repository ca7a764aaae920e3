//! Workflow definitions: the YAML format ([`raw`]), validation ([`compile`]), the compiled model
//! ([`model`]) and the loaded, versioned set with its templates ([`registry`]).

pub mod compile;
pub mod duration;
pub mod i18n;
pub mod model;
pub mod raw;
pub mod registry;

pub use compile::{LoadError, LoadErrors};
pub use model::*;
pub use registry::{FrequencyCap, Policy, Registry, Rendered, RenderedCalendar, StoredVersion, template_context};
