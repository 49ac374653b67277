//! Command definitions and their glue; each command lives in its own module.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod ext;

/// Raindrop hosts JavaScript back-end extensions in embedded SpiderMonkey.
#[derive(Parser, Debug)]
#[command(name = "raindrop", version)]
pub struct Cli {
    /// More logging (-v info, -vv debug, -vvv trace); RUST_LOG overrides.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,

    /// Folder of extension `.js` files.
    #[arg(long, global = true, env = "RAINDROP_EXTENSIONS", default_value = "js-extensions")]
    pub extensions: PathBuf,

    /// JS worker threads, each with its own SpiderMonkey runtime (default: number of cores).
    #[arg(long, global = true, env = "RAINDROP_JS_THREADS")]
    pub js_threads: Option<usize>,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Work on extensions: list them, run one on a document.
    #[command(subcommand)]
    Ext(ext::ExtCommand),
}

pub fn init_logging(verbose: u8) {
    let default = match verbose {
        0 => "warn",
        1 => "info",
        2 => "debug",
        _ => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();
}

impl Cli {
    pub fn js_threads(&self) -> usize {
        self.js_threads.unwrap_or_else(num_cpus::get).max(1)
    }
}

pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match &cli.command {
        Command::Ext(cmd) => ext::run(&cli, cmd),
    }
}
