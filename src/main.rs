//! The `dripline` command line.

use anyhow::Context;
use clap::{Parser, Subcommand};
use dripline::config::Settings;
use dripline::workflow::Registry;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(name = "dripline", version, about = "Behaviour-triggered email workflows")]
struct Cli {
    /// Configuration file layered over config/default.toml (then DRIPLINE__* variables).
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    /// The data directory (overrides `engine.data_dir`).
    #[arg(long, global = true)]
    data_dir: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Check a directory of workflow definitions; lists every error and exits non-zero.
    Validate {
        /// Defaults to `workflows.dir` from the configuration.
        dir: Option<PathBuf>,
    },
    /// Run the engine: HTTP ingest, partition processors, timers on the wall clock, the mailer.
    /// SIGTERM stops intake, drains and commits.
    Run,
    /// Append an NDJSON file of Segment events to the embedded log; while `dripline run` holds
    /// the store, the file goes to it through its /v1/batch endpoint instead.
    Ingest { file: PathBuf },
    /// Show one contact's state as JSON (works while the engine runs).
    Contact {
        #[command(subcommand)]
        action: ContactCmd,
    },
    /// Rebuild state into a fresh directory from the embedded log of a data directory (default:
    /// `engine.data_dir`) or from NDJSON files; with --workflows, a what-if run of changed
    /// workflows that sends nothing and compares each step with what actually happened.
    Replay {
        /// Data directory whose log to replay (opened read-only; the engine may be running).
        #[arg(long, conflicts_with_all = ["ndjson", "kafka_topic"])]
        from_data: Option<PathBuf>,
        /// An events topic on the brokers of `kafka.brokers` (read from its beginning, or from
        /// --from-timestamp, up to its end now), with the sent ledger from `kafka.changelog_topic`.
        #[arg(long, conflicts_with = "ndjson")]
        kafka_topic: Option<String>,
        /// With --kafka-topic: start at the first record at or after this RFC 3339 time.
        #[arg(long, requires = "kafka_topic")]
        from_timestamp: Option<String>,
        /// NDJSON files of Segment events, replayed at their `receivedAt` (else `timestamp`).
        #[arg(long, num_args = 1..)]
        ndjson: Vec<PathBuf>,
        /// The fresh state directory to build (optional for a what-if run).
        #[arg(long)]
        into: Option<PathBuf>,
        /// Changed workflow definitions to run the history through (what-if; nothing is sent).
        #[arg(long)]
        workflows: Option<PathBuf>,
        /// Keep in the new outbox the messages the source never sent (the next `run` sends
        /// them); by default every replayed send is suppressed and only reported.
        #[arg(long, conflicts_with = "workflows")]
        send_unsent: bool,
        /// Fire timers up to this RFC 3339 time at the end (default: where the source stopped).
        #[arg(long)]
        until: Option<String>,
        /// A data directory whose workflow versions (and when each was deployed) to replay with,
        /// so contacts enter the versions they entered then (default: the source store's, with
        /// --from-data).
        #[arg(long, conflicts_with = "workflows")]
        versions_from: Option<PathBuf>,
    },
    /// A workflow's numbers, step by step: entered, waiting now, exited, converted, held out,
    /// sent, skipped (suppressed, capped, no address), opened, clicked (through the running
    /// engine if one holds the store).
    Report {
        workflow: String,
        /// One version (default: all versions together).
        #[arg(long)]
        version: Option<u32>,
        /// As JSON (what `GET /admin/v1/workflows/{id}/report` answers).
        #[arg(long)]
        json: bool,
    },
    /// List, pause and resume workflows (through the running engine if one holds the store).
    Workflows {
        #[command(subcommand)]
        action: WorkflowsCmd,
    },
    /// List, retry and purge dead letters (through the running engine if one holds the store).
    DeadLetters {
        #[command(subcommand)]
        action: DeadLettersCmd,
    },
    /// Inspect a store.
    State {
        #[command(subcommand)]
        action: StateCmd,
    },
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell) to standard output,
    /// e.g. `dripline completions bash > /etc/bash_completion.d/dripline`.
    Completions { shell: clap_complete::Shell },
    /// Run a sample clickstream through the workflows on a simulated clock and write the emails.
    Demo {
        #[arg(long, default_value = "examples/clickstream.ndjson")]
        events: PathBuf,
        #[arg(long, default_value = "out")]
        out: PathBuf,
    },
}

#[derive(Subcommand)]
enum StateCmd {
    /// A stable digest of all contact state and pending timers, overall and per partition
    /// (works while the engine runs).
    Digest {
        /// As JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum ContactCmd {
    /// The contact's state as JSON (read-only: works while the engine runs).
    Show {
        id: String,
        /// JSON (the only format; accepted for symmetry with the other commands).
        #[arg(long)]
        json: bool,
    },
    /// Everything held about the contact, as JSON (GDPR access).
    Export { id: String },
    /// Erases the contact (GDPR): state, history, waiting mail, its log records; then compacts.
    Erase { id: String },
}

#[derive(Subcommand)]
enum WorkflowsCmd {
    /// Every workflow: state, versions, contacts inside.
    List {
        #[arg(long)]
        json: bool,
    },
    /// No new entrants from now on (contacts inside go on).
    Pause { id: String },
    /// Take new entrants again.
    Resume { id: String },
}

#[derive(Subcommand)]
enum DeadLettersCmd {
    /// Oldest first.
    List {
        /// Start after this key.
        #[arg(long)]
        after: Option<String>,
        #[arg(long, default_value_t = 100)]
        limit: usize,
        #[arg(long)]
        json: bool,
    },
    /// Ingest a dead letter's payload again (or the corrected event in --event FILE).
    Retry {
        key: String,
        #[arg(long)]
        event: Option<PathBuf>,
    },
    /// Delete dead letters by key.
    Purge {
        #[arg(required = true)]
        keys: Vec<String>,
    },
}

fn main() -> ExitCode {
    // Output piped into `head` and closed: end quietly, as other command-line tools do, rather
    // than panic in `println!`.
    // SAFETY: restores the default disposition of one signal before any thread starts.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    tracing_subscriber::fmt()
        // Warnings by default (a transport that stops answering, an unconfigured endpoint);
        // RUST_LOG chooses otherwise.
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    match run(Cli::parse()) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    if let Command::Completions { shell } = cli.command {
        use clap::CommandFactory;
        clap_complete::generate(shell, &mut Cli::command(), "dripline", &mut std::io::stdout());
        return Ok(ExitCode::SUCCESS);
    }
    let mut settings = Settings::load(cli.config.as_deref())?;
    if let Some(dir) = cli.data_dir {
        settings.engine.data_dir = dir;
    }
    match cli.command {
        Command::Validate { dir } => {
            let dir = dir.unwrap_or_else(|| settings.workflows.dir.clone());
            match Registry::load_dir(&dir, &[], settings.policy()?) {
                Ok(reg) => {
                    println!("{}: {} workflows valid", dir.display(), reg.latest().len());
                    for wf in reg.latest() {
                        println!("  {:<24} {} steps  {}", wf.id, wf.steps.len(), wf.name);
                    }
                    Ok(ExitCode::SUCCESS)
                }
                Err(errors) => {
                    for e in &errors.0 {
                        eprintln!("{e}");
                    }
                    eprintln!("{} error(s) in {}", errors.0.len(), dir.display());
                    Ok(ExitCode::FAILURE)
                }
            }
        }
        Command::Run => {
            settings.check_for_run()?;
            let engine = std::sync::Arc::new(dripline::kafka::open_engine(&settings)?);
            let http = &settings.http;
            if settings.kafka.enabled() {
                eprintln!(
                    "dripline: {} workflows, consumer group `{}` on {} at {}",
                    engine.reg.latest().len(),
                    settings.kafka.group_id,
                    settings.kafka.events_topic,
                    settings.kafka.brokers,
                );
            } else {
                eprintln!(
                    "dripline: {} workflows, {} partitions on {} worker threads",
                    engine.reg.latest().len(),
                    engine.partitions.len(),
                    settings.engine.workers,
                );
            }
            eprintln!(
                "dripline: ingest, admin API and metrics on http://{}; recipient links on http://{}",
                http.listen, http.public_listen
            );
            for path in &engine.keys.generated {
                eprintln!("dripline: generated {} (mode 0600)", path.display());
            }
            for w in dripline::sinks::webhook::unconfigured(&engine.reg, &settings.webhooks) {
                eprintln!("dripline: warning: {w}");
            }
            if engine.keys.ingest_is_open() {
                eprintln!(
                    "dripline: WARNING: http.allow_unauthenticated is set: anyone who reaches {} can ingest",
                    http.listen
                );
            } else if http.write_keys.is_empty() {
                eprintln!(
                    "dripline: ingest needs the write key in {}",
                    settings
                        .engine
                        .data_dir
                        .join(dripline::auth::SECRETS_DIR)
                        .join(dripline::auth::WRITE_KEY_FILE)
                        .display()
                );
            }
            if settings.admin.tokens.is_empty() {
                eprintln!(
                    "dripline: the admin API and /metrics need the token in {}",
                    settings
                        .engine
                        .data_dir
                        .join(dripline::auth::SECRETS_DIR)
                        .join(dripline::auth::ADMIN_TOKEN_FILE)
                        .display()
                );
            }
            let workers = settings.engine.workers;
            let served = actix_web::rt::System::new().block_on(async move {
                let running = dripline::runtime::actors::start(engine.clone(), workers);
                let served = dripline::sources::http::serve(engine, dripline::admin::routes).await;
                // Intake has stopped: partitions finish and commit, the mailer settles.
                running.stop().await;
                served
            });
            served.context("http server")?;
            eprintln!("dripline: stopped cleanly");
            Ok(ExitCode::SUCCESS)
        }
        Command::Ingest { file } => {
            let (r, via) = match dripline::kafka::open_engine(&settings) {
                Ok(engine) => (
                    dripline::sources::ndjson::ingest_file(&engine, &file, 1000)?,
                    String::new(),
                ),
                // A running engine holds the store: hand the file to it over HTTP instead.
                Err(e) if e.downcast_ref::<dripline::runtime::StoreInUse>().is_some() => {
                    let base = format!("http://{}", settings.http.listen);
                    let configured = settings.http.write_keys.iter().find(|k| !k.trim().is_empty());
                    let key = configured.map(|k| k.trim().to_owned()).or_else(|| {
                        dripline::auth::read_stored(&settings.engine.data_dir, dripline::auth::WRITE_KEY_FILE)
                    });
                    let r = dripline::sources::ndjson::ingest_file_http(&base, key.as_deref(), &file, 1000)
                        .with_context(|| format!("{e}; sending to the running engine at {base} instead"))?;
                    (r, format!(" (through the running engine at {base})"))
                }
                Err(e) => return Err(e),
            };
            println!(
                "{}{via}: {} appended, {} duplicates dropped, {} rejected",
                file.display(),
                r.accepted,
                r.duplicates,
                r.rejected.len()
            );
            for (line, reason) in &r.rejected {
                println!("  line {line}: {reason}");
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Contact {
            action: ContactCmd::Export { id },
        } => {
            let admin = dripline::admin::client::Admin::connect(&settings)?;
            match admin.contact(&id, true)? {
                Some(v) => {
                    println!("{}", serde_json::to_string_pretty(&v)?);
                    Ok(ExitCode::SUCCESS)
                }
                None => {
                    eprintln!("no contact `{id}`");
                    Ok(ExitCode::FAILURE)
                }
            }
        }
        Command::Contact {
            action: ContactCmd::Erase { id },
        } => {
            let admin = dripline::admin::client::Admin::connect(&settings)?;
            if admin.erase(&id)? {
                println!("erased `{id}` {}", admin.via());
                Ok(ExitCode::SUCCESS)
            } else {
                eprintln!("no contact `{id}`");
                Ok(ExitCode::FAILURE)
            }
        }
        Command::Report {
            workflow,
            version,
            json,
        } => {
            let admin = dripline::admin::client::Admin::connect(&settings)?;
            let r = admin.report(&workflow, version)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&r)?);
            } else {
                let which = r.version.map_or("all versions".to_owned(), |v| format!("version {v}"));
                println!("{} ({}), {which}", r.workflow, r.name);
                let head = [
                    "entered", "waiting", "exited", "convert", "holdout", "sent", "suppr", "capped", "no_addr",
                    "opened", "clicked",
                ];
                print!("{:<22} {:<10}", "step", "kind");
                for h in head {
                    print!(" {h:>8}");
                }
                println!();
                for s in &r.steps {
                    print!("{:<22} {:<10}", s.step, s.kind);
                    let row = [
                        s.entered,
                        s.waiting,
                        s.exited,
                        s.converted,
                        s.holdout,
                        s.sent,
                        s.suppressed,
                        s.capped,
                        s.no_address,
                        s.opened,
                        s.clicked,
                    ];
                    for n in row {
                        print!(" {n:>8}");
                    }
                    println!();
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Workflows { action } => {
            let admin = dripline::admin::client::Admin::connect(&settings)?;
            match action {
                WorkflowsCmd::List { json } => {
                    let list = admin.workflows()?;
                    if json {
                        println!("{}", serde_json::to_string_pretty(&list)?);
                    } else {
                        println!(
                            "{:<24} {:<8} {:>8} {:>8} {:>8}  name",
                            "workflow", "state", "inside", "sent", "versions"
                        );
                        for w in list.as_array().into_iter().flatten() {
                            let versions = w["versions"].as_array().map_or(0, Vec::len);
                            let sum = |k: &str| -> i64 {
                                w["versions"]
                                    .as_array()
                                    .into_iter()
                                    .flatten()
                                    .filter_map(|v| v[k].as_i64())
                                    .sum()
                            };
                            println!(
                                "{:<24} {:<8} {:>8} {:>8} {:>8}  {}",
                                w["id"].as_str().unwrap_or_default(),
                                w["state"].as_str().unwrap_or_default(),
                                sum("contacts_inside"),
                                sum("sent"),
                                versions,
                                w["name"].as_str().unwrap_or_default()
                            );
                        }
                    }
                }
                WorkflowsCmd::Pause { id } => {
                    admin.set_paused(&id, true)?;
                    println!("paused `{id}` {}: no new entrants; contacts inside go on", admin.via());
                }
                WorkflowsCmd::Resume { id } => {
                    admin.set_paused(&id, false)?;
                    println!("resumed `{id}` {}", admin.via());
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::DeadLetters { action } => {
            let admin = dripline::admin::client::Admin::connect(&settings)?;
            match action {
                DeadLettersCmd::List { after, limit, json } => {
                    let page = admin.dead_letters(after.as_deref(), limit)?;
                    if json {
                        println!("{}", serde_json::to_string_pretty(&page)?);
                    } else {
                        for d in page["items"].as_array().into_iter().flatten() {
                            println!(
                                "{}  {}  {:<7} {}",
                                d["key"].as_str().unwrap_or_default(),
                                d["at"].as_str().unwrap_or_default(),
                                d["source"].as_str().unwrap_or_default(),
                                d["reason"].as_str().unwrap_or_default()
                            );
                        }
                        if let Some(next) = page["next"].as_str() {
                            println!("more: --after {next}");
                        }
                    }
                }
                DeadLettersCmd::Retry { key, event } => {
                    let corrected = match event {
                        Some(f) => Some(serde_json::from_slice(
                            &std::fs::read(&f).with_context(|| format!("reading {}", f.display()))?,
                        )?),
                        None => None,
                    };
                    let report = admin.retry(&key, corrected)?;
                    println!("retried {key} {}: {report}", admin.via());
                }
                DeadLettersCmd::Purge { keys } => {
                    let n = admin.purge(&keys)?;
                    println!("{n} of {} dead letters deleted {}", keys.len(), admin.via());
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Contact {
            action: ContactCmd::Show { id, json: _ },
        } => {
            let store = dripline::storage::Store::open_read_only(&settings.engine.data_dir)
                .with_context(|| format!("opening {}", settings.engine.data_dir.display()))?;
            match dripline::storage::tables::get_contact(&store, &id)? {
                Some(st) => {
                    println!("{}", serde_json::to_string_pretty(&st.to_json())?);
                    Ok(ExitCode::SUCCESS)
                }
                None => {
                    eprintln!("no contact `{id}`");
                    Ok(ExitCode::FAILURE)
                }
            }
        }
        Command::Replay {
            from_data,
            kafka_topic,
            from_timestamp,
            ndjson,
            into,
            workflows,
            send_unsent,
            until,
            versions_from,
        } => {
            let rfc3339 = |flag: &str, t: &str| {
                dripline::time::parse_rfc3339(t).ok_or_else(|| anyhow::anyhow!("{flag} {t}: not RFC 3339"))
            };
            let source = if let Some(topic) = kafka_topic {
                let from = from_timestamp.map(|t| rfc3339("--from-timestamp", &t)).transpose()?;
                dripline::replay::Source::Kafka { topic, from }
            } else if ndjson.is_empty() {
                dripline::replay::Source::Data(from_data.unwrap_or_else(|| settings.engine.data_dir.clone()))
            } else {
                dripline::replay::Source::Ndjson(ndjson)
            };
            let until = match until {
                Some(u) => Some(
                    dripline::time::parse_rfc3339(&u).ok_or_else(|| anyhow::anyhow!("--until {u}: not RFC 3339"))?,
                ),
                None => None,
            };
            let what_if = workflows.is_some();
            let r = dripline::replay::run(
                &settings,
                dripline::replay::Options {
                    source,
                    into,
                    workflows,
                    send_unsent,
                    versions_from,
                    until,
                    progress: true,
                },
            )?;
            print_replay(&r, what_if);
            Ok(ExitCode::SUCCESS)
        }
        Command::State {
            action: StateCmd::Digest { json },
        } => {
            let dir = settings.engine.data_dir.clone();
            let store =
                dripline::storage::Store::open_read_only(&dir).with_context(|| format!("opening {}", dir.display()))?;
            let d = dripline::storage::digest::digest(&store, settings.engine.partitions)?;
            if json {
                let parts: Vec<_> = d
                    .partitions
                    .iter()
                    .map(|p| serde_json::json!({"digest": format!("{:032x}", p.digest), "contacts": p.contacts, "timers": p.timers}))
                    .collect();
                let v = serde_json::json!({"digest": format!("{:032x}", d.total), "contacts": d.contacts(), "partitions": parts});
                println!("{}", serde_json::to_string_pretty(&v)?);
                return Ok(ExitCode::SUCCESS);
            }
            println!("{:032x}  {} contacts", d.total, d.contacts());
            for (p, pd) in d.partitions.iter().enumerate() {
                println!(
                    "  partition {p:>3}  {:032x}  {} contacts, {} timers",
                    pd.digest, pd.contacts, pd.timers
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Completions { .. } => unreachable!("answered above"),
        Command::Demo { events, out } => {
            let report = dripline::demo::run(&settings, &events, &out).context("demo")?;
            println!(
                "Ingested {} events from {} ({} duplicate messageIds dropped, {} malformed to the dead letters)",
                report.events,
                events.display(),
                report.duplicates,
                report.dead_letters.len(),
            );
            for (line, reason) in &report.dead_letters {
                println!("  dead letter: line {line}: {reason}");
            }
            println!(
                "\n{} emails decided (embedded log → RocksDB state → durable timers → outbox, on a simulated clock):\n",
                report.mails.len()
            );
            println!("{:<20}  {:<28}  {:<22}  subject", "when (UTC)", "to", "workflow");
            for m in &report.mails {
                println!(
                    "{:<20}  {:<28}  {:<22}  {}",
                    dripline::time::format_rfc3339(m.at),
                    m.to,
                    m.workflow,
                    m.subject
                );
            }
            println!("\nPer workflow:");
            for (wf, n) in &report.per_workflow {
                println!("  {wf:<24} {n}");
            }
            if let Some(first) = report.mails.first() {
                println!(
                    "\nEach email is an RFC 5322 file in {}/mail/, e.g. {}",
                    out.display(),
                    first.file.display()
                );
            }
            if !report.unconfigured_webhooks.is_empty() {
                println!("\nWebhooks:");
                for w in &report.unconfigured_webhooks {
                    println!("  {w}");
                }
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn print_replay(r: &dripline::replay::Report, what_if: bool) {
    println!(
        "replayed {} records in {:.1} s ({:.0} records/s): {} inputs handled, {} duplicates dropped, {} bad records",
        r.records,
        r.replay_seconds,
        r.records as f64 / r.replay_seconds.max(1e-9),
        r.inputs,
        r.duplicates,
        r.bad
    );
    for b in &r.bad_listed {
        println!("  bad record: {b}");
    }
    if r.bad > r.bad_listed.len() as u64 {
        println!(
            "  … and {} more (all in the dead letters)",
            r.bad - r.bad_listed.len() as u64
        );
    }
    println!(
        "would send {}, of which {} were already sent; {}",
        r.would_send,
        r.already_sent,
        if r.kept_to_send > 0 {
            format!("{} never sent are in the new outbox for the next `run`", r.kept_to_send)
        } else {
            "nothing will be sent".to_string()
        }
    );
    if let Some(d) = &r.digest {
        println!("state digest {:032x} ({} contacts)", d.total, d.contacts());
    }
    if let Some(into) = &r.into {
        println!("state written to {}", into.display());
    }
    if what_if {
        use dripline::machine::Metric;
        println!("\nwhat-if, per workflow and step (actual → with the changed workflows):");
        println!(
            "{:<24} {:<20} {:<10} {:>8} {:>8} {:>8}",
            "workflow", "step", "metric", "actual", "what-if", "change"
        );
        for ((wf, step, metric), (actual, replayed)) in &r.steps {
            if !matches!(
                metric,
                Metric::Entered | Metric::Sent | Metric::Converted | Metric::Exited
            ) {
                continue;
            }
            let a = actual.map_or("-".to_string(), |a| a.to_string());
            let change = replayed - actual.unwrap_or(0);
            let mark = if change != 0 {
                format!("{change:+}")
            } else {
                String::new()
            };
            println!(
                "{wf:<24} {step:<20} {:<10} {a:>8} {replayed:>8} {mark:>8}",
                metric.as_str()
            );
        }
    }
}
