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
    /// Append an NDJSON file of Segment events to the embedded log (engine stopped; while it
    /// runs, POST to /v1/batch instead). The next `run` processes them.
    Ingest { file: PathBuf },
    /// Show one contact's state as JSON (works while the engine runs).
    Contact {
        #[command(subcommand)]
        action: ContactCmd,
    },
    /// Run a sample clickstream through the workflows on a simulated clock and write the emails.
    Demo {
        #[arg(long, default_value = "examples/clickstream.ndjson")]
        events: PathBuf,
        #[arg(long, default_value = "out")]
        out: PathBuf,
    },
}

#[derive(Subcommand)]
enum ContactCmd {
    Show { id: String },
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
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
    let settings = Settings::load(cli.config.as_deref())?;
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
            let engine = std::sync::Arc::new(dripline::runtime::Engine::open(&settings)?);
            eprintln!(
                "dripline: {} workflows, {} partitions on {} worker threads, listening on http://{}",
                engine.reg.latest().len(),
                engine.partitions.len(),
                settings.engine.workers,
                settings.http.listen
            );
            let listen = settings.http.listen.clone();
            let workers = settings.engine.workers;
            let served = actix_web::rt::System::new().block_on(async move {
                let running = dripline::runtime::actors::start(engine.clone(), workers);
                let served = dripline::sources::http::serve(engine, &listen).await;
                // Intake has stopped: partitions finish and commit, then the mailer drains.
                running.stop().await;
                served
            });
            served.context("http server")?;
            eprintln!("dripline: stopped cleanly");
            Ok(ExitCode::SUCCESS)
        }
        Command::Ingest { file } => {
            let engine = dripline::runtime::Engine::open(&settings)?;
            let r = dripline::sources::ndjson::ingest_file(&engine, &file, 1000)?;
            println!(
                "{}: {} appended, {} duplicates dropped, {} rejected",
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
            action: ContactCmd::Show { id },
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
            Ok(ExitCode::SUCCESS)
        }
    }
}
