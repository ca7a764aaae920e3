//! `dripline ingest FILE.ndjson`: appends a file of Segment events to the embedded log in
//! chunks; malformed lines go to the dead letters with their line number and reason.

use crate::runtime::Engine;
use std::io::BufRead;
use std::path::Path;

#[derive(Debug, Default)]
pub struct FileReport {
    pub accepted: usize,
    pub duplicates: usize,
    pub rejected: Vec<(usize, String)>,
}

pub fn ingest_file(engine: &Engine, path: &Path, chunk: usize) -> anyhow::Result<FileReport> {
    let file = std::fs::File::open(path)?;
    let mut report = FileReport::default();
    let mut values = vec![];
    let mut lines = vec![];
    let flush =
        |values: &mut Vec<serde_json::Value>, lines: &mut Vec<usize>, report: &mut FileReport| -> anyhow::Result<()> {
            let now = chrono::Utc::now().timestamp_millis();
            let r = engine.ingest_values(values, None, now)?;
            report.accepted += r.accepted;
            report.duplicates += r.duplicates;
            report
                .rejected
                .extend(r.errors.into_iter().map(|e| (lines[e.index], e.reason)));
            values.clear();
            lines.clear();
            Ok(())
        };
    for (i, line) in std::io::BufReader::new(file).lines().enumerate() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        match serde_json::from_str(&line) {
            Ok(v) => {
                values.push(v);
                lines.push(i + 1);
            }
            Err(e) => {
                let reason = format!("not valid JSON: {e}");
                engine.dead_letter(&reason, line.as_bytes());
                report.rejected.push((i + 1, reason));
            }
        }
        if values.len() >= chunk {
            flush(&mut values, &mut lines, &mut report)?;
        }
    }
    if !values.is_empty() {
        flush(&mut values, &mut lines, &mut report)?;
    }
    Ok(report)
}
