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
    let mut reader = std::io::BufReader::new(std::fs::File::open(path)?);
    let mut report = FileReport::default();
    let mut lines: Vec<Vec<u8>> = Vec::with_capacity(chunk);
    let mut numbers: Vec<usize> = Vec::with_capacity(chunk);
    let mut flush = |lines: &mut Vec<Vec<u8>>, numbers: &mut Vec<usize>| -> anyhow::Result<()> {
        let slices: Vec<&[u8]> = lines.iter().map(Vec::as_slice).collect();
        let r = engine.ingest_raw(&slices, None, chrono::Utc::now().timestamp_millis())?;
        report.accepted += r.accepted;
        report.duplicates += r.duplicates;
        report
            .rejected
            .extend(r.errors.into_iter().map(|e| (numbers[e.index], e.reason)));
        lines.clear();
        numbers.clear();
        Ok(())
    };
    let mut line_no = 0;
    loop {
        let mut line = Vec::new();
        if reader.read_until(b'\n', &mut line)? == 0 {
            break;
        }
        line_no += 1;
        if line.trim_ascii().is_empty() {
            continue;
        }
        lines.push(line);
        numbers.push(line_no);
        if lines.len() >= chunk {
            flush(&mut lines, &mut numbers)?;
        }
    }
    if !lines.is_empty() {
        flush(&mut lines, &mut numbers)?;
    }
    Ok(report)
}
