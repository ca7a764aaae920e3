//! Invalid workflow files are rejected at load with the file, the path inside it and the reason.

use dripline::workflow::{LoadError, Policy, Registry};

fn errors(src: &str) -> Vec<LoadError> {
    errors_with(None, src)
}

fn errors_with(dir: Option<&str>, src: &str) -> Vec<LoadError> {
    match Registry::from_sources(dir, &[("bad.yaml", src)], Policy::default()) {
        Ok(_) => panic!("expected errors for:\n{src}"),
        Err(e) => e.0,
    }
}

fn has(errs: &[LoadError], path: &str, reason_part: &str) -> bool {
    errs.iter()
        .any(|e| e.file == "bad.yaml" && e.path == path && e.reason.contains(reason_part))
}

const HEAD: &str = "id: w\ntriggers: [{ event: X }]\n";

#[test]
fn a_valid_minimal_workflow_loads() {
    let src = format!("{HEAD}steps:\n  - id: a\n    send: t\ntemplates:\n  t: {{ subject: Hi, text: Hello }}\n");
    Registry::from_sources(None, &[("ok.yaml", &src)], Policy::default()).unwrap();
}

#[test]
fn unknown_and_unreachable_steps() {
    let e = errors(&format!(
        "{HEAD}steps:\n  - id: a\n    wait: 1d\n    next: nowhere\n  - id: b\n    wait: 1d\n"
    ));
    assert!(has(&e, "steps[0].next", "unknown step `nowhere`"), "{e:?}");
    assert!(has(&e, "steps[1]", "step `b` is unreachable"), "{e:?}");
}

#[test]
fn bad_duration_names_the_value() {
    let e = errors(&format!("{HEAD}steps:\n  - id: a\n    wait: 3 dayz\n"));
    assert!(has(&e, "steps[0].wait", "bad duration `3 dayz`"), "{e:?}");
}

#[test]
fn branch_without_else_has_no_way_out() {
    let e = errors(&format!(
        "{HEAD}steps:\n  - id: a\n    branch:\n      - when: {{ trait: x, eq: 1 }}\n        then: b\n  - id: b\n    wait: 1d\n"
    ));
    assert!(has(&e, "steps[0]", "needs `else`"), "{e:?}");
}

#[test]
fn loop_without_wait_is_rejected_and_with_wait_accepted() {
    let looping = format!("{HEAD}steps:\n  - id: a\n    tag: x\n  - id: b\n    untag: x\n    next: a\n");
    let e = errors(&looping);
    assert!(e.iter().any(|e| e.reason.contains("has no wait in it")), "{e:?}");
    let ok = format!("{HEAD}steps:\n  - id: a\n    tag: x\n  - id: b\n    wait: 1d\n    next: a\n");
    Registry::from_sources(None, &[("ok.yaml", &ok)], Policy::default()).unwrap();
}

#[test]
fn template_that_does_not_compile() {
    let e = errors(&format!(
        "{HEAD}steps:\n  - id: a\n    send: t\ntemplates:\n  t:\n    subject: \"Hi {{{{ name \"\n    text: ok\n"
    ));
    assert!(has(&e, "templates.t.subject", "template does not compile"), "{e:?}");
}

#[test]
fn unknown_template_and_bad_recipient() {
    let e = errors(&format!(
        "{HEAD}steps:\n  - id: a\n    send: {{ template: nope, to: someone }}\n"
    ));
    assert!(has(&e, "steps[0].send", "unknown template `nope`"), "{e:?}");
    assert!(has(&e, "steps[0].send.to", "is not `contact`"), "{e:?}");
}

#[test]
fn unknown_trait_type_and_type_mismatches() {
    let dir = "traits:\n  score: number\n  plan: strng\n  birthday: date\n  name: string\n";
    let e = match Registry::from_sources(
        Some(dir),
        &[(
            "bad.yaml",
            "id: w\ntriggers:\n  - date: { trait: name }\n  - becomes: { trait: name, gte: 3 }\nsteps:\n  - id: a\n    set: { score: lots }\n",
        )],
        Policy::default(),
    ) {
        Err(e) => e.0,
        Ok(_) => panic!("expected errors"),
    };
    assert!(
        e.iter().any(|e| e.file == "dripline.yaml"
            && e.path == "traits.plan"
            && e.reason.contains("unknown trait type `strng`")),
        "{e:?}"
    );
    assert!(has(&e, "triggers[0].date.trait", "not a date"), "{e:?}");
    assert!(
        has(&e, "triggers[1].becomes", "numeric comparison on trait `name`"),
        "{e:?}"
    );
    assert!(has(&e, "steps[0].set.score", "does not fit trait type Number"), "{e:?}");
}

#[test]
fn typos_in_keys_are_errors_with_a_line() {
    let e = errors(&format!("{HEAD}steps:\n  - id: a\n    wiat: 1d\n"));
    assert!(
        e[0].path.starts_with("steps[0]") && e[0].reason.contains("unknown field `wiat`"),
        "{e:?}"
    );
    assert!(
        e[0].reason.starts_with("unknown field") && e[0].reason.contains("line 5"),
        "{e:?}"
    );
}

#[test]
fn conditions_need_one_subject_and_one_operator() {
    let e = errors(
        "id: w\ntriggers: [{ event: X, where: [{ prop: a, eq: 1, gt: 2 }, { eq: 1 }] }]\nsteps:\n  - id: a\n    wait: 1d\n",
    );
    assert!(has(&e, "triggers[0].where[0]", "exactly one operator"), "{e:?}");
    assert!(has(&e, "triggers[0].where[1]", "exactly one of trait, prop"), "{e:?}");
}

#[test]
fn every_error_is_listed_not_just_the_first() {
    let e = errors(&format!(
        "{HEAD}entry: sometimes\ntimezone: Mars/Olympus\nsteps:\n  - id: a\n    wait: soon\n  - id: a\n    wait: 1d\n"
    ));
    assert!(has(&e, "entry", "unknown entry rule `sometimes`"), "{e:?}");
    assert!(has(&e, "timezone", "unknown time zone"), "{e:?}");
    assert!(has(&e, "steps[0].wait", "bad duration"), "{e:?}");
    assert!(has(&e, "steps[1].id", "duplicate step id"), "{e:?}");
}

#[test]
fn duplicate_workflow_ids_across_files() {
    let src = format!("{HEAD}steps:\n  - id: a\n    wait: 1d\n");
    let e = Registry::from_sources(None, &[("one.yaml", &src), ("two.yaml", &src)], Policy::default())
        .err()
        .unwrap()
        .0;
    assert!(
        e.iter()
            .any(|e| e.file == "two.yaml" && e.reason.contains("also defined in one.yaml")),
        "{e:?}"
    );
}

/// Translations load only if they compile, have a body, carry a locale tag, and use the same
/// variables as the default template (a misspelt name would render empty for their readers).
#[test]
fn translations_must_use_the_defaults_variables() {
    let t = |locales: &str| {
        format!(
            "{HEAD}steps:\n  - id: a\n    send: t\ntemplates:\n  t:\n    subject: \"Hi {{{{ first_name }}}}\"\n    text: \"Code {{{{ event.code }}}}\"\n    locales:\n{locales}"
        )
    };
    let e = errors(&t(
        "      ru:\n        subject: \"Привет, {{ frist_name }}\"\n        text: \"Код {{ event.code }}\"\n",
    ));
    assert!(
        has(
            &e,
            "templates.t.locales.ru",
            "not in the default: frist_name; missing: first_name"
        ),
        "{e:?}"
    );
    let e = errors(&t("      zh:\n        subject: \"你好 {{ first_name }}\"\n"));
    assert!(has(&e, "templates.t.locales.zh", "needs `html` or `text`"), "{e:?}");
    let e = errors(&t("      \"zh hant\":\n        subject: x\n        text: y\n"));
    assert!(has(&e, "templates.t.locales.zh hant", "is not a locale tag"), "{e:?}");
    let e = errors(&t("      id:\n        subject: \"{{ first_name\"\n        text: y\n"));
    assert!(has(&e, "templates.t.locales.id.subject", "does not compile"), "{e:?}");
    let ok = t(
        "      zh-Hant:\n        subject: \"嗨 {{ first_name | default('朋友') }}\"\n        text: \"代碼 {{ event.code }}\"\n",
    );
    Registry::from_sources(None, &[("ok.yaml", &ok)], Policy::default()).unwrap();
}

/// The variant of the most specific tag wins (`zh-Hant-TW` → `zh-Hant` → `zh`), any case and
/// `_` or `-`; a locale the template lacks reads the default.
#[test]
fn the_locale_falls_back_from_specific_to_general_to_the_default() {
    let src = format!(
        "{HEAD}steps:\n  - id: a\n    send: t\ntemplates:\n  t:\n    subject: Hello\n    text: x\n    locales:\n      zh:\n        subject: 你好\n        text: x\n      zh-Hant:\n        subject: 妳好\n        text: x\n"
    );
    let reg = Registry::from_sources(None, &[("ok.yaml", &src)], Policy::default()).unwrap();
    let wf = reg.latest_of("w").unwrap();
    let ctx = minijinja::Value::from(());
    let subject = |locale: Option<&str>| reg.render_localized(wf, "t", locale, &ctx).unwrap().subject;
    assert_eq!(subject(Some("zh_Hant_TW")), "妳好");
    assert_eq!(subject(Some("ZH-hant")), "妳好");
    assert_eq!(subject(Some("zh-CN")), "你好");
    assert_eq!(subject(Some("ru")), "Hello");
    assert_eq!(subject(None), "Hello");
}
