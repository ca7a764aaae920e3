//! The `dripline` binary as a user runs it.

mod common;

use std::process::Command;

fn dripline() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_dripline"));
    c.current_dir(env!("CARGO_MANIFEST_DIR"));
    c
}

#[test]
fn validate_accepts_the_shipped_workflows() {
    let out = dripline().args(["validate", "workflows"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("workflows valid"));
}

#[test]
fn validate_lists_every_error_and_exits_non_zero() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("a.yaml"),
        "id: a\ntriggers: [{ event: X }]\nsteps:\n  - id: s\n    wait: 3 dayz\n",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("b.yaml"),
        "id: b\ntriggers: [{ event: X }]\nsteps:\n  - id: s\n    send: nope\n",
    )
    .unwrap();
    let out = dripline().arg("validate").arg(dir.path()).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("a.yaml: steps[0].wait: bad duration `3 dayz`"), "{err}");
    assert!(err.contains("b.yaml: steps[0].send: unknown template `nope`"), "{err}");
    assert!(err.contains("2 error(s)"), "{err}");
}

#[test]
fn bad_configuration_is_an_error_at_start() {
    // Each bad setting (an environment override) fails the start, naming the key.
    for (var, value, named) in [
        ("DRIPLINE__POLICY__QUIET_HOURS", "late", "policy.quiet_hours"),
        ("DRIPLINE__POLICY__BOGUS", "1", "bogus"),
        ("DRIPLINE__ENGINE__WORKER_NICE", "20", "engine.worker_nice"),
    ] {
        let out = dripline().args(["validate"]).env(var, value).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{var}={value} was accepted");
        assert!(stderr.contains(named), "{var}={value}: {stderr}");
    }
}

#[test]
fn demo_writes_one_eml_per_email_with_deterministic_message_ids() {
    let out_dir = tempfile::tempdir().unwrap();
    let out = dripline().args(["demo", "--out"]).arg(out_dir.path()).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("1 duplicate messageIds dropped, 1 malformed"),
        "{stdout}"
    );
    // Each contact reads the mail in their `locale`: Indonesian, Chinese, Russian; English by
    // default.
    for subject in [
        "Batik Scarf masih di keranjang",
        "欢迎你，Mei！",
        "Сборник кампаний для Volga Tools",
        "Order T-1001 confirmed",
    ] {
        assert!(stdout.contains(subject), "{subject}: {stdout}");
    }
    let files: Vec<_> = std::fs::read_dir(out_dir.path().join("mail"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    let decided: usize = stdout
        .split(" emails decided")
        .next()
        .unwrap()
        .rsplit('\n')
        .next()
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert_eq!(files.len(), decided);
    for f in &files {
        let eml = std::fs::read_to_string(f).unwrap();
        let stem = f.file_stem().unwrap().to_str().unwrap();
        assert!(
            eml.contains(&format!("Message-ID: <{stem}@dripline.example.com>")),
            "{eml}"
        );
    }
    // Running again gives the same message ids: replays never produce a second copy.
    let again = tempfile::tempdir().unwrap();
    assert!(
        dripline()
            .args(["demo", "--out"])
            .arg(again.path())
            .output()
            .unwrap()
            .status
            .success()
    );
    let names = |d: &std::path::Path| {
        let mut v: Vec<_> = std::fs::read_dir(d.join("mail"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        v.sort();
        v
    };
    assert_eq!(names(out_dir.path()), names(again.path()));
    let store = dripline::storage::Store::open_read_only(&out_dir.path().join("data")).unwrap();
    let dead = dripline::storage::dead_letters::all(&store).unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].reason, "missing or empty `messageId`");
}

/// Shell completions come from the command definitions; `bash -n` accepts the script, and it
/// names the subcommands.
#[test]
fn completions_for_bash_are_a_valid_script_naming_the_commands() {
    let out = dripline().args(["completions", "bash"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let script = String::from_utf8(out.stdout).unwrap();
    for word in ["dead-letters", "workflows", "replay", "--data-dir"] {
        assert!(script.contains(word), "{word}");
    }
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("dripline.bash");
    std::fs::write(&file, &script).unwrap();
    let check = Command::new("bash").arg("-n").arg(&file).output().unwrap();
    assert!(check.status.success(), "{}", String::from_utf8_lossy(&check.stderr));
}

/// `state digest --json` gives the same digest as the text form.
#[test]
fn the_state_digest_as_json_matches_the_text() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let out = dripline()
        .args(["demo", "--out"])
        .arg(dir.path())
        .env("DRIPLINE__ENGINE__DATA_DIR", &data)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let data = dir.path().join("data");
    let text = dripline()
        .args(["state", "digest", "--data-dir"])
        .arg(&data)
        .output()
        .unwrap();
    assert!(text.status.success(), "{}", String::from_utf8_lossy(&text.stderr));
    let text = String::from_utf8(text.stdout).unwrap();
    let json = dripline()
        .args(["state", "digest", "--json", "--data-dir"])
        .arg(&data)
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    let total = v["digest"].as_str().unwrap();
    assert!(text.starts_with(total), "{text} vs {total}");
    assert!(v["contacts"].as_u64().unwrap() > 0);
}

/// Relative paths in a `--config` file resolve against the file's directory, whatever the
/// working directory; the environment still wins.
#[test]
fn paths_in_a_config_file_are_relative_to_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("conf");
    std::fs::create_dir_all(&conf).unwrap();
    std::fs::write(
        conf.join("dripline.toml"),
        "[workflows]\ndir = \"flows\"\n[engine]\ndata_dir = \"state\"\n",
    )
    .unwrap();
    std::fs::create_dir_all(conf.join("flows")).unwrap();
    std::fs::copy(
        concat!(env!("CARGO_MANIFEST_DIR"), "/workflows/16_welcome_series.yaml"),
        conf.join("flows/welcome.yaml"),
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_dripline"))
        .current_dir(dir.path())
        .args(["validate", "--config", "conf/dripline.toml"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("conf/flows: 1 workflows valid"), "{stdout}");
    let out = Command::new(env!("CARGO_BIN_EXE_dripline"))
        .current_dir(dir.path())
        .args(["ingest", "--config", "conf/dripline.toml"])
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/examples/clickstream.ndjson"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        conf.join("state").join("event-log").exists(),
        "the data directory beside the file"
    );
}

/// The demo's mail, scored by SpamAssassin (Debian's package, local rules only, `-L`): none
/// trips a rule the engine would cause (HTML without a text alternative or an `<html>` tag,
/// list headers without `List-Id`), and none scores above 2 of the 5 points that make spam.
/// What is left is the demo's links (a port in the URL); `tests/deliverability.rs` scores every
/// template as production sends it.
#[test]
fn the_demo_mail_passes_spamassassin() {
    let out_dir = tempfile::tempdir().unwrap();
    let out = dripline().args(["demo", "--out"]).arg(out_dir.path()).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let files: Vec<std::path::PathBuf> = std::fs::read_dir(out_dir.path().join("mail"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert!(files.len() > 20);
    // (score, rules) of each message, two spamassassin processes at a time.
    let score = |f: &std::path::Path| common::spamassassin(f);
    let half = files.len() / 2;
    let (a, b) = std::thread::scope(|s| {
        let a = s.spawn(|| files[..half].iter().map(|f| score(f)).collect::<Vec<_>>());
        let b = s.spawn(|| files[half..].iter().map(|f| score(f)).collect::<Vec<_>>());
        (a.join().unwrap(), b.join().unwrap())
    });
    let scored: Vec<(f64, String)> = a.into_iter().chain(b).collect();
    for (points, status) in &scored {
        for rule in [
            "MIME_HTML_ONLY",
            "TO_NO_BRKTS_HTML_ONLY",
            "LIST_PARTIAL_SHORT_MSG",
            "HTML_MIME_NO_HTML_TAG",
        ] {
            assert!(!status.contains(rule), "{rule}: {status}");
        }
        assert!(*points <= 2.0, "{status}");
    }
    let mean = scored.iter().map(|s| s.0).sum::<f64>() / scored.len() as f64;
    println!(
        "spamassassin: {} messages, mean {mean:.2}, max {:.1}",
        scored.len(),
        scored.iter().map(|s| s.0).fold(0.0, f64::max)
    );
    // Each HTML mail has its text alternative; marketing mail names its list.
    for f in &files {
        let eml = std::fs::read_to_string(f).unwrap();
        if eml.contains("text/html") {
            assert!(
                eml.contains("multipart/alternative") && eml.contains("text/plain"),
                "{eml}"
            );
        }
        if eml.contains("List-Unsubscribe:") {
            assert!(eml.contains("List-Id: "), "{eml}");
        }
    }
}
