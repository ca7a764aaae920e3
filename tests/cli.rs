//! The `dripline` binary as a user runs it.

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
    assert!(stdout.contains("You left Batik Scarf in your cart"), "{stdout}");
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
