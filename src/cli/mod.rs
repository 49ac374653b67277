//! Command definitions and their glue; each command lives in its own module.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod db;
mod ext;
mod init;
mod process;
mod sync;

use raindrop::config::{self, FileConfig};
use raindrop::store::{self, Store, StoreSpec};

/// Raindrop hosts JavaScript back-end extensions in embedded SpiderMonkey.
#[derive(Parser, Debug, Clone)]
#[command(name = "raindrop", version)]
pub struct Cli {
    /// More logging (-v info, -vv debug, -vvv trace); RUST_LOG overrides.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,

    /// The configuration file (default: ~/.config/raindrop/config.toml, if present).
    #[arg(long, global = true, env = "RAINDROP_CONFIG")]
    pub config: Option<PathBuf>,

    /// The database: a path for the embedded store, or an http(s):// CouchDB URL
    /// (default: the embedded store in ~/.local/share/raindrop/raindrop-data).
    // The value is hidden from --help: a URL may hold a password.
    #[arg(long, global = true, env = "RAINDROP_DB", hide_env_values = true)]
    pub db: Option<String>,

    /// Folder of extension `.js` files (default: js-extensions).
    #[arg(long, global = true, env = "RAINDROP_EXTENSIONS")]
    pub extensions: Option<PathBuf>,

    /// Folder of your own schema definitions, one `schema({...})` file each (besides the
    /// bundled ones and a `schemas/` folder in the extensions folder).
    #[arg(long, global = true, env = "RAINDROP_SCHEMAS")]
    pub schemas: Option<PathBuf>,

    /// An item of a schema that has no definition is an error document instead of being
    /// written (and counted as undefined in `raindrop status`).
    #[arg(long, global = true)]
    pub strict_schemas: bool,

    /// Folder of API `.js` files, served under /api/ by `raindrop run` (default: api).
    #[arg(long, global = true, env = "RAINDROP_API")]
    pub api: Option<PathBuf>,

    /// JS worker threads, each with its own SpiderMonkey runtime (default: number of cores;
    /// at most 64).
    #[arg(long, global = true, env = "RAINDROP_JS_THREADS", value_parser = parse_js_threads)]
    pub js_threads: Option<usize>,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug, Clone)]
pub enum Command {
    /// Work on extensions: list them, run one on a document.
    #[command(subcommand)]
    Ext(ext::ExtCommand),
    /// Inspect and edit the database directly.
    #[command(subcommand)]
    Db(db::DbCommand),
    /// Run the extensions over every new document until nothing is left to do.
    Process(process::ProcessArgs),
    /// The headless daemon: sync the accounts on an interval, follow the feed and process
    /// continuously, take up changes to the extensions folder, serve status and metrics over
    /// HTTP. SIGTERM/SIGINT stop it cleanly, SIGHUP reads the config file again.
    Run(process::RunArgs),
    /// Write a commented configuration file (default ~/.config/raindrop/config.toml).
    Init {
        /// Replace a file that exists.
        #[arg(long)]
        force: bool,
    },
    /// Re-run an extension (or all) over all its sources.
    Reprocess {
        #[arg(long)]
        ext: Option<String>,
    },
    /// Withdraw everything an extension (or all) produced, without re-running.
    Unprocess {
        #[arg(long)]
        ext: Option<String>,
    },
    /// Re-run the sources whose handlers failed (their rd.core.error documents go).
    RetryErrors,
    /// Backlog and per-extension counts of processed sources and errors.
    Status,
    /// Import mail: .eml files, mbox files and Maildir folders (folders are walked).
    Import {
        /// Process while importing: the extensions run on the messages as they are written, and
        /// the command returns once everything is derived.
        #[arg(long)]
        process: bool,
        #[arg(required = true)]
        paths: Vec<PathBuf>,
    },
    /// Sync the mail accounts of the config file once (or one, with --account).
    Sync {
        #[arg(long)]
        account: Option<String>,
    },
    /// Write raw schema items from JSON-lines files ({rd_key, rd_schema_id, …fields}).
    AddSchemas {
        #[arg(required = true)]
        files: Vec<String>,
    },
}

/// The most JS threads a process runs. Each is a SpiderMonkey runtime with every extension
/// loaded and a memory cap of its own; a thousand exhausted the machine's memory while they
/// started.
const MAX_JS_THREADS: usize = 64;

fn parse_js_threads(s: &str) -> Result<usize, String> {
    let n: usize = s.parse().map_err(|_| format!("{s:?} is not a number of threads"))?;
    check_js_threads(n)
}

fn check_js_threads(n: usize) -> Result<usize, String> {
    if (1..=MAX_JS_THREADS).contains(&n) {
        Ok(n)
    } else {
        Err(format!("JS threads must be from 1 to {MAX_JS_THREADS}, not {n}"))
    }
}

/// Flags, environment and config file, resolved (flags and environment win).
pub struct Settings {
    pub store: StoreSpec,
    pub extensions: PathBuf,
    /// `--schemas DIR`, and whether an item of a schema without a definition is an error.
    pub schemas: Option<PathBuf>,
    pub strict_schemas: bool,
    /// The API folder.
    pub api: PathBuf,
    /// Origins allowed to call the API from a browser.
    pub cors_origins: Vec<String>,
    pub js_threads: usize,
    /// The user's own identity ids (`[type, value]`), for `get_my_identities()`.
    pub identities: Vec<serde_json::Value>,
    /// Mail accounts, for `sync` and `run`.
    pub accounts: Vec<raindrop::protocols::imap::ImapAccount>,
    pub sync_interval: std::time::Duration,
    /// `listen` from the config file (`--listen` wins).
    pub listen: Option<String>,
    /// The HTTP token: `RAINDROP_API_TOKEN`, else `api_token` from the config file.
    pub api_token: Option<String>,
}

impl Settings {
    fn resolve(cli: &Cli) -> anyhow::Result<Settings> {
        let file: FileConfig = config::load(cli.config.as_deref())?;
        Ok(Settings {
            store: StoreSpec::parse(cli.db.as_deref().or(file.db.as_deref())),
            extensions: cli.extensions.clone().or(file.extensions.clone()).unwrap_or_else(|| PathBuf::from("js-extensions")),
            schemas: cli.schemas.clone().or(file.schemas.clone()),
            strict_schemas: cli.strict_schemas || file.strict_schemas,
            api: cli.api.clone().or(file.api.clone()).unwrap_or_else(|| PathBuf::from("api")),
            cors_origins: file.cors_origins.clone(),
            js_threads: match cli.js_threads.or(file.js_threads) {
                Some(n) => check_js_threads(n).map_err(anyhow::Error::msg)?,
                None => num_cpus::get().clamp(1, MAX_JS_THREADS),
            },
            identities: my_identities(&file),
            sync_interval: std::time::Duration::from_secs(file.sync_interval_secs.unwrap_or(300).max(1)),
            accounts: file.accounts,
            listen: file.listen,
            api_token: std::env::var("RAINDROP_API_TOKEN").ok().filter(|t| !t.is_empty()).or(file.api_token),
        })
    }

    /// What the daemon takes from the settings (again on SIGHUP).
    pub fn daemon_settings(&self) -> raindrop::daemon::DaemonSettings {
        raindrop::daemon::DaemonSettings {
            extensions: self.extensions.clone(),
            api: self.api.clone(),
            js_threads: self.js_threads,
            identities: self.identities.clone(),
            accounts: self.accounts.clone(),
            sync_interval: self.sync_interval,
            schemas: self.schemas.clone(),
            strict_schemas: self.strict_schemas,
        }
    }

    /// The schema definitions (bundled, beside the extensions, `--schemas`), read and loaded;
    /// files that do not load are named on stderr.
    pub fn load_schemas(&self) -> anyhow::Result<raindrop::schema::Definitions> {
        let folders = raindrop::schema::folders(&self.extensions, self.schemas.as_deref());
        let defs = raindrop::schema::Definitions::load(&folders, self.strict_schemas, 1)?;
        for (file, why) in &defs.failed {
            eprintln!("warning: schema definition {file} did not load: {why}");
        }
        Ok(defs)
    }

    pub fn open_store(&self) -> anyhow::Result<std::sync::Arc<dyn Store>> {
        tracing::info!(db = %self.store.describe(), "opening the store");
        Ok(store::open(&self.store)?)
    }
}

/// The configured identities, plus each account's user name that is an email address.
fn my_identities(file: &FileConfig) -> Vec<serde_json::Value> {
    let mut ids: Vec<serde_json::Value> = file.identities.iter().map(|(kind, value)| serde_json::json!([kind, value])).collect();
    for account in &file.accounts {
        let id = serde_json::json!(["email", account.username.to_lowercase()]);
        if account.username.contains('@') && !ids.contains(&id) {
            ids.push(id);
        }
    }
    ids
}

/// Counts a bulk write's results — (written, refused) — naming each refused document on
/// stderr, prefixed with `label` (the file or command it came from).
pub fn tally(results: Vec<raindrop::store::WriteResult>, label: &str) -> (u64, u64) {
    use raindrop::store::WriteResult;
    let (mut ok, mut refused) = (0u64, 0u64);
    for r in results {
        match r {
            WriteResult::Ok { .. } => ok += 1,
            WriteResult::Conflict { id } => {
                refused += 1;
                eprintln!("{label}: conflict on {id}");
            }
            WriteResult::Error { id, reason } => {
                refused += 1;
                eprintln!("{label}: {id}: {reason}");
            }
        }
    }
    (ok, refused)
}

/// The JSON objects of a JSON-lines file (`-` for standard input), blank lines skipped; a bad
/// line is an error naming the file and line.
pub fn read_json_lines(file: &str) -> anyhow::Result<Vec<serde_json::Map<String, serde_json::Value>>> {
    use anyhow::Context;
    if file == "-" {
        return Ok(raindrop::json_lines::read_objects(std::io::stdin().lock(), "standard input")?);
    }
    let reader = std::io::BufReader::new(std::fs::File::open(file).with_context(|| format!("cannot open {file}"))?);
    Ok(raindrop::json_lines::read_objects(reader, file)?)
}

pub fn init_logging(verbose: u8) {
    let default = match verbose {
        0 => "warn",
        1 => "info",
        2 => "debug",
        _ => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();
}

pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    // `init` makes the config file, so it must not need one.
    let settings = match &cli.command {
        Command::Init { force } => return init::write(cli.config.as_deref(), *force),
        _ => Settings::resolve(&cli)?,
    };
    match &cli.command {
        Command::Ext(cmd) => ext::run(&settings, cmd),
        Command::Db(cmd) => db::run(&settings, cmd),
        Command::Process(args) => process::process(&cli, &settings, args),
        Command::Run(args) => process::run_daemon(&cli, &settings, args),
        Command::Init { force } => init::write(cli.config.as_deref(), *force),
        Command::Reprocess { ext } => process::forget(&settings, ext.as_deref(), false, false, true),
        Command::Unprocess { ext } => process::forget(&settings, ext.as_deref(), true, false, false),
        Command::RetryErrors => process::forget(&settings, None, false, true, true),
        Command::Status => process::status(&settings),
        Command::AddSchemas { files } => process::add_schemas(&settings, files),
        Command::Import { paths, process: and_process } => process::import(&settings, paths, *and_process),
        Command::Sync { account } => sync::sync_once(&settings, account.as_deref()),
    }
}
