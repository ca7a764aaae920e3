//! Where events come from: HTTP ingest in Segment shape and NDJSON files, both appending to the
//! embedded log.

pub mod http;
pub mod ndjson;
pub mod recipient;
