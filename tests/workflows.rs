//! Every shipped workflow driven through a realistic event sequence on a simulated clock,
//! asserting exactly which emails go out, to whom and when.

use dripline::machine::Metric;
use dripline::machine::sim::Sim;
use dripline::time::{DAY, HOUR, MINUTE, Ts, parse_rfc3339};
use dripline::workflow::{Policy, Registry};
use serde_json::json;
use std::sync::Arc;

fn t(s: &str) -> Ts {
    parse_rfc3339(s).unwrap_or_else(|| panic!("bad time {s}"))
}

fn registry() -> Arc<Registry> {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/workflows");
    Arc::new(Registry::load_dir(dir.as_ref(), &[], Policy::default()).unwrap_or_else(|e| panic!("{e}")))
}

const T0: &str = "2026-03-02T10:00:00Z"; // a Monday

fn sim() -> Sim {
    Sim::new(registry(), t(T0))
}

/// Sends of one workflow as (time, to, template).
fn sends(sim: &Sim, workflow: &str) -> Vec<(Ts, String, String)> {
    sim.outbox()
        .into_iter()
        .filter(|s| s.2 == workflow)
        .map(|(at, to, _, tpl)| (at, to, tpl))
        .collect()
}

fn s(at: Ts, to: &str, tpl: &str) -> (Ts, String, String) {
    (at, to.into(), tpl.into())
}

fn person(sim: &mut Sim, at: Ts, id: &str, extra: serde_json::Value) {
    let mut traits = json!({"email": format!("{id}@example.org"), "first_name": id.to_uppercase()});
    traits
        .as_object_mut()
        .unwrap()
        .extend(extra.as_object().cloned().unwrap_or_default());
    sim.identify(at, id, traits);
}

#[test]
fn all_shipped_workflows_load() {
    let reg = registry();
    assert!(reg.latest().len() >= 22, "{} workflows", reg.latest().len());
}

#[test]
fn w01_topic_nurture_filters_on_topic_and_stops_after_a_download() {
    let mut sim = sim();
    let t0 = t(T0);
    person(&mut sim, t0, "ann", json!({}));
    person(&mut sim, t0, "bob", json!({}));
    person(&mut sim, t0, "cat", json!({}));
    sim.page(
        t0 + MINUTE,
        "ann",
        json!({"path": "/blog/automation-101", "topic": "automation"}),
    );
    sim.page(
        t0 + MINUTE,
        "bob",
        json!({"path": "/blog/automation-101", "topic": "automation"}),
    );
    sim.page(t0 + MINUTE, "cat", json!({"path": "/blog/seo", "topic": "seo"}));
    sim.track(
        t0 + DAY,
        "bob",
        "Content Downloaded",
        json!({"topic": "automation", "asset": "checklist"}),
    );
    sim.advance_to(t0 + 10 * DAY);
    assert_eq!(
        sends(&sim, "topic_nurture"),
        vec![
            s(t0 + MINUTE, "ann@example.org", "topic_intro"),
            s(t0 + MINUTE, "bob@example.org", "topic_intro"),
            s(t0 + MINUTE + 3 * DAY, "ann@example.org", "topic_deep_dive"),
        ]
    );
    let intro = sim.sent.iter().find(|m| m.cmd.template == "topic_intro").unwrap();
    assert_eq!(sim.render(intro).subject, "ANN, more on marketing automation");
}

#[test]
fn w02_blog_welcome_now_then_preferences_two_days_later() {
    let mut sim = sim();
    let t0 = t(T0);
    person(&mut sim, t0, "ann", json!({}));
    sim.track(t0 + HOUR, "ann", "Subscribed", json!({"list": "blog"}));
    sim.track(t0 + HOUR, "ann", "Subscribed", json!({"list": "product-news"}));
    sim.advance_to(t0 + 5 * DAY);
    assert_eq!(
        sends(&sim, "blog_welcome"),
        vec![
            s(t0 + HOUR, "ann@example.org", "blog_welcome"),
            s(t0 + HOUR + 2 * DAY, "ann@example.org", "blog_preferences")
        ]
    );
}

#[test]
fn w03_onboarding_starts_when_lifecycle_becomes_customer_once() {
    let mut sim = sim();
    let t0 = t(T0);
    person(&mut sim, t0, "ann", json!({"lifecycle_stage": "lead"}));
    sim.identify(
        t0 + HOUR,
        "ann",
        json!({"lifecycle_stage": "customer", "company": "Acme"}),
    );
    // Later identifies that repeat the value are not a new crossing.
    sim.identify(
        t0 + 2 * HOUR,
        "ann",
        json!({"lifecycle_stage": "customer", "first_name": "Ann"}),
    );
    sim.advance_to(t0 + 10 * DAY);
    let at = t0 + HOUR;
    assert_eq!(
        sends(&sim, "customer_onboarding"),
        vec![
            s(at, "ann@example.org", "onboarding_welcome"),
            s(at + DAY, "ann@example.org", "training_1"),
            s(at + 3 * DAY, "ann@example.org", "training_2"),
            s(at + 7 * DAY, "ann@example.org", "training_3"),
        ]
    );
    assert_eq!(sim.render(&sim.sent[0]).subject, "Welcome aboard, Acme!");
}

#[test]
fn w04_entering_the_engaged_list_sends_top_content_and_tags() {
    let mut sim = sim();
    let t0 = t(T0);
    person(&mut sim, t0, "ann", json!({}));
    for d in 0..4 {
        sim.page(t0 + d * DAY, "ann", json!({"path": "/blog"}));
    }
    assert!(sends(&sim, "advocates").is_empty(), "four views are not five");
    sim.page(t0 + 4 * DAY, "ann", json!({"path": "/blog"}));
    sim.page(t0 + 4 * DAY + HOUR, "ann", json!({"path": "/blog"}));
    assert_eq!(
        sends(&sim, "advocates"),
        vec![s(t0 + 4 * DAY, "ann@example.org", "top_content")]
    );
    assert!(sim.contacts["ann"].tags.contains("advocate"));
    // Views older than 30 days fall out of the window: five views spread over 40 days never
    // make a second contact engaged.
    person(&mut sim, t0, "bob", json!({}));
    for d in 0..5 {
        sim.page(t0 + 5 * DAY + d * 10 * DAY, "bob", json!({"path": "/blog"}));
    }
    assert!(sends(&sim, "advocates").iter().all(|m| m.1 != "bob@example.org"));
}

#[test]
fn w05_lead_scoring_crosses_50_once_makes_mql_notifies_sales_and_ends_nurture() {
    let mut sim = sim();
    let t0 = t(T0);
    person(
        &mut sim,
        t0,
        "ann",
        json!({"owner_email": "rep@example.com", "company": "Acme"}),
    );
    sim.track(t0 + HOUR, "ann", "Ebook Downloaded", json!({"title": "Guide"}));
    assert_eq!(sim.contacts["ann"].traits.get("score"), Some(&10i64.into()));
    for i in 1..=4 {
        sim.track(t0 + 2 * i * DAY, "ann", "Webinar Attended", json!({}));
    }
    // Score is 50 after the fourth webinar (day 8): MQL, sales alerted, nurture converted
    // before its third email (due day 9). A sixth engagement does not alert again.
    sim.track(t0 + 10 * DAY, "ann", "Webinar Attended", json!({}));
    sim.advance_to(t0 + 30 * DAY);
    assert_eq!(sim.contacts["ann"].traits.get("score"), Some(&60i64.into()));
    assert_eq!(sim.contacts["ann"].traits.get("lifecycle_stage"), Some(&"MQL".into()));
    assert_eq!(
        sends(&sim, "lead_nurturing"),
        vec![
            s(t0 + HOUR, "ann@example.org", "nurture_case_study"),
            s(t0 + HOUR + 4 * DAY, "ann@example.org", "nurture_comparison")
        ]
    );
    assert_eq!(
        sends(&sim, "mql_handoff"),
        vec![s(t0 + 8 * DAY, "rep@example.com", "mql_alert")]
    );
    assert_eq!(sim.count("lead_nurturing", "wait_5d", Metric::Converted), 1);
    let alert = sim.sent.iter().find(|m| m.cmd.template == "mql_alert").unwrap();
    assert_eq!(sim.render(alert).subject, "New MQL: ANN Acme (score 50)");
}

#[test]
fn w06_pricing_twice_in_a_week_alerts_the_owner_or_the_default() {
    let mut sim = sim();
    let t0 = t(T0);
    person(&mut sim, t0, "ann", json!({"owner_email": "rep@example.com"}));
    person(&mut sim, t0, "bob", json!({}));
    sim.page(t0, "ann", json!({"path": "/pricing"}));
    sim.page(t0 + HOUR, "ann", json!({"path": "/features"}));
    sim.page(t0 + 2 * DAY, "ann", json!({"path": "/pricing"}));
    sim.page(t0 + 3 * DAY, "ann", json!({"path": "/pricing"}));
    sim.page(t0, "bob", json!({"path": "/pricing"}));
    sim.page(t0 + 8 * DAY, "bob", json!({"path": "/pricing"}));
    sim.page(t0 + 9 * DAY, "bob", json!({"path": "/pricing"}));
    assert_eq!(
        sends(&sim, "sales_pricing_alert"),
        vec![
            s(t0 + 2 * DAY, "rep@example.com", "pricing_alert"),
            s(t0 + 9 * DAY, "sales@example.com", "pricing_alert")
        ]
    );
}

#[test]
fn w07_win_back_after_60_quiet_days_falls_back_to_sms_unless_engaged() {
    let mut sim = sim();
    let t0 = t(T0);
    for id in ["ann", "bob", "cat"] {
        person(&mut sim, t0, id, json!({"phone": "+100"}));
        sim.track(t0, id, "Product Viewed", json!({}));
    }
    // cat stays active: every 30 days.
    sim.track(t0 + 30 * DAY, "cat", "Product Viewed", json!({}));
    sim.track(t0 + 59 * DAY, "cat", "Product Viewed", json!({}));
    sim.advance_to(t0 + 60 * DAY);
    let miss = sends(&sim, "win_back");
    assert_eq!(
        miss,
        vec![
            s(t0 + 60 * DAY, "ann@example.org", "we_miss_you"),
            s(t0 + 60 * DAY, "bob@example.org", "we_miss_you")
        ]
    );
    assert!(sim.contacts["ann"].tags.contains("sleeper"));
    // ann clicks two days later; bob never reacts.
    let ann_mail = sim.sent.iter().find(|m| m.contact == "ann").unwrap().cmd.id.to_string();
    sim.track(t0 + 62 * DAY, "ann", "Email Clicked", json!({"message_id": ann_mail}));
    sim.advance_to(t0 + 80 * DAY);
    assert!(!sim.contacts["ann"].tags.contains("sleeper"));
    assert!(sim.contacts["bob"].tags.contains("sleeper"));
    let hooks: Vec<_> = sim.webhooks.iter().map(|(at, c, w)| (*at, c.clone(), w.step)).collect();
    let sms = sim
        .reg
        .latest_of("win_back")
        .unwrap()
        .step_index("sms_fallback")
        .unwrap();
    assert_eq!(hooks, vec![(t0 + 67 * DAY, "bob".to_string(), sms)]);
    assert_eq!(sim.count("win_back", "we_miss_you", Metric::Clicked), 1);
    // cat was never inactive for 60 days.
    assert!(sim.sent.iter().all(|m| m.contact != "cat"));
}

#[test]
fn w08_event_reminder_day_before_at_nine_local_and_follow_up() {
    let mut sim = sim();
    let t0 = t(T0);
    person(&mut sim, t0, "ann", json!({"timezone": "Asia/Shanghai"}));
    person(&mut sim, t0, "bob", json!({}));
    sim.track(
        t0,
        "ann",
        "Event Registered",
        json!({"event_name": "Growth Summit", "event_date": "2026-03-20"}),
    );
    sim.track(
        t0,
        "bob",
        "Event Registered",
        json!({"event_name": "Growth Summit", "event_date": "2026-03-20"}),
    );
    // Registering the day of the event: no reminder (if_past), straight to follow-up.
    person(&mut sim, t0, "cat", json!({}));
    sim.track(
        t("2026-03-20T08:00:00Z"),
        "cat",
        "Event Registered",
        json!({"event_name": "Growth Summit", "event_date": "2026-03-20"}),
    );
    sim.advance_to(t("2026-04-01T00:00:00Z"));
    assert_eq!(
        sends(&sim, "event_registration"),
        vec![
            s(t0, "ann@example.org", "registration_confirmed"),
            s(t0, "bob@example.org", "registration_confirmed"),
            s(t("2026-03-19T01:00:00Z"), "ann@example.org", "event_reminder"),
            s(t("2026-03-19T09:00:00Z"), "bob@example.org", "event_reminder"),
            s(t("2026-03-20T08:00:00Z"), "cat@example.org", "registration_confirmed"),
            s(t("2026-03-21T02:00:00Z"), "ann@example.org", "event_follow_up"),
            s(t("2026-03-21T10:00:00Z"), "bob@example.org", "event_follow_up"),
            s(t("2026-03-21T10:00:00Z"), "cat@example.org", "event_follow_up"),
        ]
    );
    assert_eq!(sim.render(&sim.sent[0]).subject, "You're registered: Growth Summit");
}

#[test]
fn w09_abandoned_cart_reminder_after_an_hour_coupon_a_day_later_purchase_converts() {
    let mut sim = sim();
    let t0 = t(T0);
    person(&mut sim, t0, "ann", json!({}));
    person(&mut sim, t0, "bob", json!({}));
    sim.track(t0, "ann", "Product Added", json!({"name": "Blue Kettle", "price": 39}));
    sim.track(t0, "bob", "Product Added", json!({"name": "Red Mug", "price": 9}));
    sim.track(
        t0 + 30 * MINUTE,
        "bob",
        "Order Completed",
        json!({"order_id": "o-1", "total": 9}),
    );
    sim.advance_to(t0 + 3 * DAY);
    assert_eq!(
        sends(&sim, "abandoned_cart"),
        vec![
            s(t0 + HOUR, "ann@example.org", "cart_reminder"),
            s(t0 + 25 * HOUR, "ann@example.org", "cart_coupon")
        ]
    );
    assert_eq!(sim.count("abandoned_cart", "wait_1h", Metric::Converted), 1);
    assert_eq!(
        sim.render(
            &sim.sent
                .iter()
                .find(|m| m.cmd.template == "cart_reminder")
                .unwrap()
                .clone()
        )
        .subject,
        "You left Blue Kettle in your cart"
    );
    // Cooldown: adding again within 7 days does not restart.
    sim.track(t0 + 4 * DAY, "ann", "Product Added", json!({"name": "Blue Kettle"}));
    sim.advance_to(t0 + 6 * DAY);
    assert_eq!(sends(&sim, "abandoned_cart").len(), 2);
    assert!(
        sim.contacts.values().all(|c| c.enrollments.is_empty()),
        "nobody is left inside"
    );
}

#[test]
fn w10_upsell_14_days_after_purchase_uses_the_category() {
    let mut sim = sim();
    let t0 = t(T0);
    person(&mut sim, t0, "ann", json!({}));
    sim.track(
        t0,
        "ann",
        "Order Completed",
        json!({"order_id": "o1", "category": "espresso machines", "complements": ["grinder", "tamper"]}),
    );
    sim.advance_to(t0 + 20 * DAY);
    assert_eq!(
        sends(&sim, "upsell"),
        vec![s(t0 + 14 * DAY, "ann@example.org", "complements")]
    );
    let mail = sim.sent.iter().find(|m| m.cmd.workflow.as_ref() == "upsell").unwrap();
    let r = sim.render(mail);
    assert_eq!(r.subject, "Goes well with your espresso machines");
    assert!(r.html.unwrap().contains("<li>grinder</li><li>tamper</li>"));
}

#[test]
fn w11_nps_promoters_detractors_and_passives() {
    let mut sim = sim();
    let t0 = t(T0);
    for (id, score) in [("ann", 10), ("bob", 3), ("cat", 7)] {
        person(&mut sim, t0, id, json!({}));
        sim.identify(t0 + HOUR, id, json!({"nps_score": score}));
    }
    assert_eq!(
        sends(&sim, "nps_followup"),
        vec![
            s(t0 + HOUR, "ann@example.org", "nps_referral"),
            s(t0 + HOUR, "bob@example.org", "nps_apology"),
            s(t0 + HOUR, "support@example.com", "nps_detractor_alert"),
        ]
    );
    // A new survey answer runs it again.
    sim.identify(t0 + 90 * DAY, "cat", json!({"nps_score": 9}));
    assert_eq!(
        sends(&sim, "nps_followup").last().unwrap(),
        &s(t0 + 90 * DAY, "cat@example.org", "nps_referral")
    );
}

/// A trait sent again in another JSON form is no change: `nps_score` is declared a number, so
/// 3, 3.0 and "3" are one value and the apology goes once; a real change runs it again.
#[test]
fn w11_the_same_score_in_another_json_form_is_no_change() {
    let mut sim = sim();
    let t0 = t(T0);
    person(&mut sim, t0, "bob", json!({}));
    sim.identify(t0 + HOUR, "bob", json!({"nps_score": 3}));
    sim.identify(t0 + 2 * HOUR, "bob", json!({"nps_score": 3.0}));
    sim.identify(t0 + 3 * HOUR, "bob", json!({"nps_score": "3"}));
    sim.identify(t0 + 4 * HOUR, "bob", json!({"nps_score": " 3 "}));
    let apologies = |sim: &Sim| {
        sends(sim, "nps_followup")
            .into_iter()
            .filter(|m| m.1 == "bob@example.org")
            .count()
    };
    assert_eq!(apologies(&sim), 1);
    sim.identify(t0 + 90 * DAY, "bob", json!({"nps_score": 2}));
    assert_eq!(apologies(&sim), 2, "a new score is a change");
    // An undeclared trait compares as conditions do: a number and its string are equal.
    sim.identify(t0 + 91 * DAY, "bob", json!({"plan_level": 2}));
    sim.identify(t0 + 92 * DAY, "bob", json!({"plan_level": "2"}));
    let plan = sim.contacts["bob"].traits.get("plan_level").cloned();
    assert_eq!(plan, Some(dripline::value::Value::Int(2)), "kept as first set");
}

#[test]
fn w12_adoption_check_after_14_days_on_counters_and_success_metric() {
    let mut sim = sim();
    let t0 = t(T0);
    for id in ["low", "busy", "star"] {
        person(&mut sim, t0, id, json!({}));
        sim.track(t0, id, "Account Activated", json!({}));
    }
    for d in 0..10 {
        sim.track(t0 + d * DAY, "busy", "Feature Used", json!({"feature": "reports"}));
    }
    sim.track(t0 + DAY, "low", "Feature Used", json!({}));
    sim.identify(t0 + 5 * DAY, "star", json!({"success_metric_reached": true}));
    sim.advance_to(t0 + 20 * DAY);
    assert_eq!(
        sends(&sim, "customer_success"),
        vec![
            s(t0 + 14 * DAY, "low@example.org", "training_resources"),
            s(t0 + 14 * DAY, "star@example.org", "case_study_request")
        ]
    );
}

#[test]
fn w13_repurchase_reminder_25_days_after_the_latest_order() {
    let mut sim = sim();
    let t0 = t(T0);
    person(&mut sim, t0, "ann", json!({"timezone": "Europe/Moscow"}));
    sim.track(
        t0,
        "ann",
        "Order Completed",
        json!({"order_id": "1", "category": "consumables", "product": "coffee filters"}),
    );
    // A second order on day 10 restarts the cycle.
    sim.track(
        t0 + 10 * DAY,
        "ann",
        "Order Completed",
        json!({"order_id": "2", "category": "consumables", "product": "coffee filters"}),
    );
    sim.advance_to(t0 + 60 * DAY);
    // 25 days after day 10 = 2026-04-06, 10:00 Moscow = 07:00 UTC.
    assert_eq!(
        sends(&sim, "repurchase_reminder"),
        vec![s(t("2026-04-06T07:00:00Z"), "ann@example.org", "reorder_reminder")]
    );
    assert_eq!(
        sim.count("repurchase_reminder", "until_reorder_window", Metric::Converted),
        1
    );
}

#[test]
fn w14_support_requests_route_by_category_and_acknowledge() {
    let mut sim = sim();
    let t0 = t(T0);
    person(&mut sim, t0, "ann", json!({}));
    sim.track(
        t0,
        "ann",
        "Support Request",
        json!({"category": "billing", "subject": "Double charge"}),
    );
    sim.track(
        t0 + HOUR,
        "ann",
        "Support Request",
        json!({"category": "outage", "subject": "Down"}),
    );
    sim.track(t0 + 2 * HOUR, "ann", "Support Request", json!({"subject": "Question"}));
    assert_eq!(
        sends(&sim, "support_triage"),
        vec![
            s(t0, "billing@example.com", "triage_alert"),
            s(t0, "ann@example.org", "triage_ack"),
            s(t0 + HOUR, "engineering@example.com", "triage_alert"),
            s(t0 + HOUR, "ann@example.org", "triage_ack"),
            s(t0 + 2 * HOUR, "help@example.com", "triage_alert"),
            s(t0 + 2 * HOUR, "ann@example.org", "triage_ack"),
        ]
    );
    assert_eq!(sim.render(&sim.sent[0]).subject, "[billing] Double charge");
}

#[test]
fn w15_deal_signed_confirms_and_makes_a_customer_which_starts_onboarding() {
    let mut sim = sim();
    let t0 = t(T0);
    person(
        &mut sim,
        t0,
        "ann",
        json!({"lifecycle_stage": "opportunity", "company": "Acme"}),
    );
    sim.track(t0, "ann", "Contract Signed", json!({"contract_id": "C-7"}));
    assert_eq!(
        sim.contacts["ann"].traits.get("lifecycle_stage"),
        Some(&"customer".into())
    );
    assert_eq!(
        sim.outbox().into_iter().map(|x| (x.2, x.3)).collect::<Vec<_>>(),
        vec![
            ("deal_signed".to_string(), "contract_confirmation".to_string()),
            ("customer_onboarding".to_string(), "onboarding_welcome".to_string())
        ]
    );
}

#[test]
fn w16_welcome_series_day_0_3_30() {
    let mut sim = sim();
    let t0 = t(T0);
    person(&mut sim, t0, "ann", json!({}));
    sim.track(t0, "ann", "Newsletter Subscribed", json!({}));
    sim.track(t0 + DAY, "ann", "Newsletter Subscribed", json!({}));
    sim.advance_to(t0 + 40 * DAY);
    assert_eq!(
        sends(&sim, "welcome_series"),
        vec![
            s(t0, "ann@example.org", "welcome"),
            s(t0 + 3 * DAY, "ann@example.org", "welcome_offer"),
            s(t0 + 30 * DAY, "ann@example.org", "feedback_ask"),
        ]
    );
}

#[test]
fn w17_segment_content_by_role_once_company_and_role_are_known() {
    let mut sim = sim();
    let t0 = t(T0);
    person(&mut sim, t0, "ceo", json!({"role": "CEO"}));
    person(
        &mut sim,
        t0,
        "mkt",
        json!({"company": "Beta", "role": "Head of Marketing"}),
    );
    person(&mut sim, t0, "dev", json!({"company": "Gamma", "role": "Engineer"}));
    assert!(sends(&sim, "segment_nurture").iter().all(|m| m.1 != "ceo@example.org"));
    sim.identify(t0 + HOUR, "ceo", json!({"company": "Acme"}));
    assert_eq!(
        sends(&sim, "segment_nurture"),
        vec![
            s(t0, "mkt@example.org", "marketer_playbook"),
            s(t0, "dev@example.org", "generic_intro"),
            s(t0 + HOUR, "ceo@example.org", "exec_roi"),
        ]
    );
}

#[test]
fn w18_free_trial_pricing_three_days_before_end_unless_subscribed() {
    let mut sim = sim();
    let t0 = t(T0);
    person(&mut sim, t0, "ann", json!({}));
    person(&mut sim, t0, "bob", json!({}));
    let ends = "2026-03-16T10:00:00Z";
    sim.track(t0, "ann", "Trial Started", json!({"trial_ends_at": ends}));
    sim.track(t0, "bob", "Trial Started", json!({"trial_ends_at": ends}));
    sim.track(t0 + 5 * DAY, "bob", "Subscription Started", json!({"plan": "pro"}));
    sim.advance_to(t0 + 20 * DAY);
    assert_eq!(
        sends(&sim, "free_trial"),
        vec![
            s(t0, "ann@example.org", "trial_how_to_1"),
            s(t0, "bob@example.org", "trial_how_to_1"),
            s(t0 + 2 * DAY, "ann@example.org", "trial_how_to_2"),
            s(t0 + 2 * DAY, "bob@example.org", "trial_how_to_2"),
            s(t("2026-03-13T10:00:00Z"), "ann@example.org", "trial_pricing"),
        ]
    );
    assert_eq!(sim.count("free_trial", "until_3_days_left", Metric::Converted), 1);
}

/// A time zone that arrives after the date: the pending birthday timer and a pending
/// `wait_until … at` move to the same local time in the new zone; relative waits do not.
#[test]
fn a_late_time_zone_moves_date_triggers_and_wait_until_waits_to_local_time() {
    let mut sim = sim();
    let t0 = t(T0);
    person(&mut sim, t0, "ann", json!({"birthday": "1990-05-14"}));
    sim.track(
        t0,
        "ann",
        "Event Registered",
        json!({"event_name": "Growth Summit", "event_date": "2026-03-20"}),
    );
    // The zone comes a day later, in another identify.
    sim.identify(t0 + DAY, "ann", json!({"timezone": "Asia/Tokyo"}));
    assert!(sim.check_timers().is_ok());
    sim.advance_to(t("2026-06-01T00:00:00Z"));
    // 10:00 in Tokyo (UTC+9) = 01:00 UTC; the reminder the day before at 09:00 = 00:00 UTC.
    assert_eq!(
        sends(&sim, "birthday"),
        vec![s(t("2026-05-07T01:00:00Z"), "ann@example.org", "birthday_offer")]
    );
    let reminder = sends(&sim, "event_registration")
        .into_iter()
        .find(|m| m.2 == "event_reminder")
        .unwrap();
    assert_eq!(reminder.0, t("2026-03-19T00:00:00Z"));
    // Moving again, to a zone behind UTC: the next birthday follows.
    sim.identify(
        t("2026-06-02T00:00:00Z"),
        "ann",
        json!({"timezone": "America/New_York"}),
    );
    sim.advance_to(t("2027-06-01T00:00:00Z"));
    // 10:00 in New York (UTC-4 in May) = 14:00 UTC.
    assert_eq!(sends(&sim, "birthday").last().unwrap().0, t("2027-05-07T14:00:00Z"));
    assert_eq!(
        sim.contacts["ann"].timers.len(),
        1,
        "one birthday timer, moved, never two"
    );
}

#[test]
fn w19_birthday_seven_days_before_at_ten_local_every_year() {
    let mut sim = sim();
    let t0 = t(T0);
    person(
        &mut sim,
        t0,
        "ann",
        json!({"birthday": "1990-05-14", "timezone": "Asia/Jakarta"}),
    );
    sim.advance_to(t("2028-12-31T00:00:00Z"));
    // 10:00 in Jakarta (UTC+7) = 03:00 UTC.
    assert_eq!(
        sends(&sim, "birthday"),
        vec![
            s(t("2026-05-07T03:00:00Z"), "ann@example.org", "birthday_offer"),
            s(t("2027-05-07T03:00:00Z"), "ann@example.org", "birthday_offer"),
            s(t("2028-05-07T03:00:00Z"), "ann@example.org", "birthday_offer"),
        ]
    );
    // Changing the birthday moves the timer rather than adding one.
    sim.identify(t("2029-01-01T00:00:00Z"), "ann", json!({"birthday": "1990-02-01"}));
    assert_eq!(sim.contacts["ann"].timers.len(), 1);
    sim.advance_to(t("2029-12-31T00:00:00Z"));
    assert_eq!(sends(&sim, "birthday").last().unwrap().0, t("2029-01-25T03:00:00Z"));
}

#[test]
fn w20_transactional_confirmation_and_payment_reminder_even_when_unsubscribed() {
    let mut sim = sim();
    let t0 = t(T0);
    person(&mut sim, t0, "ann", json!({}));
    person(&mut sim, t0, "bob", json!({}));
    sim.track(t0, "ann", "Unsubscribed", json!({}));
    sim.track(
        t0 + HOUR,
        "ann",
        "Order Completed",
        json!({"order_id": "A1", "total": 20}),
    );
    sim.track(t0 + HOUR, "ann", "Payment Failed", json!({"order_id": "A1"}));
    sim.track(t0 + HOUR, "bob", "Payment Failed", json!({"order_id": "B1"}));
    sim.track(t0 + 5 * HOUR, "bob", "Payment Succeeded", json!({"order_id": "B1"}));
    sim.advance_to(t0 + 3 * DAY);
    assert_eq!(
        sends(&sim, "order_confirmation"),
        vec![s(t0 + HOUR, "ann@example.org", "order_confirmation")]
    );
    assert_eq!(
        sends(&sim, "payment_reminder"),
        vec![s(t0 + 25 * HOUR, "ann@example.org", "payment_reminder")]
    );
    assert_eq!(sim.render(&sim.sent[0]).subject, "Order A1 confirmed");
}

#[test]
fn w21_cancellation_confirmation_with_end_date_and_resubscribe_link() {
    let mut sim = sim();
    let t0 = t(T0);
    person(&mut sim, t0, "ann", json!({}));
    sim.track(
        t0,
        "ann",
        "Subscription Cancelled",
        json!({"plan": "Pro Annual", "access_ends_at": "2026-12-31"}),
    );
    assert_eq!(
        sends(&sim, "subscription_cancelled"),
        vec![s(t0, "ann@example.org", "cancellation")]
    );
    let r = sim.render(&sim.sent[0]);
    assert_eq!(r.subject, "Your Pro Annual is cancelled");
    let html = r.html.unwrap();
    assert!(html.contains("until 2026-12-31"), "{html}");
    assert!(html.contains("plan=Pro%20Annual"), "{html}");
}

#[test]
fn w22_ab_split_is_deterministic_with_a_ten_percent_holdout() {
    let run = || {
        let mut sim = sim();
        let t0 = t(T0);
        for i in 0..2000 {
            let id = format!("user{i}");
            sim.identify(t0, &id, json!({"email": format!("{id}@example.org")}));
            sim.track(t0, &id, "Signed Up", json!({}));
        }
        sim
    };
    let sim = run();
    let a = sim.count("ab_welcome", "welcome_a", Metric::Sent);
    let b = sim.count("ab_welcome", "welcome_b", Metric::Sent);
    let held = sim.count("ab_welcome", "split", Metric::Holdout);
    assert_eq!(a + b + held, 2000);
    assert!((150..=250).contains(&held), "holdout {held}");
    assert!((800..=1000).contains(&a) && (800..=1000).contains(&b), "a {a} b {b}");
    assert_eq!(
        run().outbox(),
        sim.outbox(),
        "the split is a pure function of contact and workflow"
    );
}

/// A Segment `group` call sets the contact's `account` trait (the group's id and traits): a
/// condition reads into it (`trait: account.plan`) and becomes true when a later group call
/// changes it; templates read it as `{{ account.name }}`.
#[test]
fn a_group_call_gives_the_contact_account_traits_for_conditions_and_templates() {
    let src = r#"id: enterprise
triggers:
  - becomes: { trait: account.plan, eq: enterprise }
steps:
  - id: hello
    send: { template: hello, kind: transactional }
templates:
  hello:
    subject: "Welcome to Enterprise, {{ account.name }} ({{ account.id }})"
    text: "Hi {{ first_name }}"
"#;
    let reg = Registry::from_sources(None, &[("enterprise.yaml", src)], Policy::default()).unwrap();
    let t0 = t(T0);
    let mut sim = Sim::new(Arc::new(reg), t0);
    sim.identify(t0, "ann", json!({"email": "ann@example.org", "first_name": "Ann"}));
    let group = |plan: &str, id: &str| {
        dripline::event::Event::parse(
            format!(
                r#"{{"type":"group","userId":"ann","messageId":"{id}","groupId":"acme-1","traits":{{"name":"Acme","plan":"{plan}"}},"context":{{"traits":{{"email":"other@example.org"}}}}}}"#
            )
            .as_bytes(),
        )
        .unwrap()
    };
    sim.input(
        t0 + HOUR,
        "ann",
        dripline::machine::Input::Event(group("starter", "g1")),
    );
    assert!(sim.sent.is_empty(), "not enterprise yet");
    let account = sim.contacts["ann"].traits.get("account").unwrap().to_json();
    assert_eq!(account, json!({"id": "acme-1", "name": "Acme", "plan": "starter"}));
    // The group's context traits are the user's, not the account's: nothing of them is kept.
    assert_eq!(
        sim.contacts["ann"].traits.get("email").unwrap().to_json(),
        json!("ann@example.org")
    );
    sim.input(
        t0 + 2 * HOUR,
        "ann",
        dripline::machine::Input::Event(group("enterprise", "g2")),
    );
    assert_eq!(sim.sent.len(), 1);
    assert_eq!(sim.render(&sim.sent[0]).subject, "Welcome to Enterprise, Acme (acme-1)");
}
