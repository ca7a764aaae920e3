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
    /// Run a sample clickstream through the workflows on a simulated clock and write the emails.
    Demo {
        #[arg(long, default_value = "examples/clickstream.ndjson")]
        events: PathBuf,
        #[arg(long, default_value = "out")]
        out: PathBuf,
    },
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
        Command::Demo { events, out } => {
            let reg = Registry::load_dir(&settings.workflows.dir, &[], settings.policy()?)
                .map_err(|e| anyhow::anyhow!("invalid workflows:\n{e}"))?;
            let report = dripline::demo::run(&settings, reg, &events, &out).context("demo")?;
            println!(
                "Ingested {} events from {} ({} duplicate messageIds dropped, {} malformed to {}/dead-letters.ndjson)",
                report.events,
                events.display(),
                report.duplicates,
                report.dead_letters.len(),
                out.display()
            );
            for (line, reason) in &report.dead_letters {
                println!("  dead letter: line {line}: {reason}");
            }
            println!("\n{} emails decided on a simulated clock:\n", report.mails.len());
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
