//! `dripline ingest FILE.ndjson`: appends a file of Segment events in chunks, straight to the
//! embedded log when the engine is stopped, or through a running engine's `/v1/batch` when it
//! holds the store. Malformed lines go to the dead letters with their line number and reason.

use crate::runtime::{Engine, IngestReport, Origin};
use serde_json::value::RawValue;
use std::io::BufRead;
use std::path::Path;

#[derive(Debug, Default)]
pub struct FileReport {
    pub accepted: usize,
    pub duplicates: usize,
    pub rejected: Vec<(usize, String)>,
}

/// Into the embedded log of an engine this process opened.
pub fn ingest_file(engine: &Engine, path: &Path, chunk: usize) -> anyhow::Result<FileReport> {
    ingest_lines(path, chunk, |lines| {
        engine.ingest_raw(lines, None, chrono::Utc::now().timestamp_millis(), Origin::Client)
    })
}

/// Through a running engine's HTTP ingest (`base` as in `http://127.0.0.1:8080`): each chunk is
/// one `/v1/batch` request, acknowledged once durable. A line that is not JSON travels as a
/// JSON string, so the engine dead-letters it with its reason like any invalid event.
/// `write_key`: sent as HTTP Basic user name, as the Segment SDKs do.
pub fn ingest_file_http(base: &str, write_key: Option<&str>, path: &Path, chunk: usize) -> anyhow::Result<FileReport> {
    use base64::Engine as _;
    let authorization = write_key.map(|k| {
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("{k}:"))
        )
    });
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(std::time::Duration::from_secs(60)))
        .build()
        .into();
    let url = format!("{}/v1/batch", base.trim_end_matches('/'));
    ingest_lines(path, chunk, |lines| {
        let mut body = Vec::with_capacity(lines.iter().map(|l| l.len() + 1).sum::<usize>() + 16);
        body.extend_from_slice(b"{\"batch\":[");
        for (i, line) in lines.iter().enumerate() {
            if i > 0 {
                body.push(b',');
            }
            let text = std::str::from_utf8(line).ok().map(str::trim);
            match text.filter(|t| serde_json::from_str::<&RawValue>(t).is_ok()) {
                Some(json) => body.extend_from_slice(json.as_bytes()),
                None => serde_json::to_writer(&mut body, &String::from_utf8_lossy(line))?,
            }
        }
        body.extend_from_slice(b"]}");
        let mut request = agent.post(&url).header("content-type", "application/json");
        if let Some(a) = &authorization {
            request = request.header("authorization", a);
        }
        let mut response = request.send(&body[..]).map_err(|e| anyhow::anyhow!("{url}: {e}"))?;
        let status = response.status();
        let text = response.body_mut().read_to_string()?;
        match status.as_u16() {
            200 | 400 => serde_json::from_str::<IngestReport>(&text)
                .map_err(|e| anyhow::anyhow!("{url}: unexpected answer ({e}): {text}")),
            _ => anyhow::bail!("{url}: HTTP {status}: {text}"),
        }
    })
}

fn ingest_lines(
    path: &Path,
    chunk: usize,
    mut send: impl FnMut(&[&[u8]]) -> anyhow::Result<IngestReport>,
) -> anyhow::Result<FileReport> {
    let mut reader = std::io::BufReader::new(std::fs::File::open(path)?);
    let mut report = FileReport::default();
    let mut lines: Vec<Vec<u8>> = Vec::with_capacity(chunk);
    let mut numbers: Vec<usize> = Vec::with_capacity(chunk);
    let mut flush = |lines: &mut Vec<Vec<u8>>, numbers: &mut Vec<usize>| -> anyhow::Result<()> {
        let slices: Vec<&[u8]> = lines.iter().map(Vec::as_slice).collect();
        let r = send(&slices)?;
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
