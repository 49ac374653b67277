//! `raindrop process`, `run`, `reprocess`, `unprocess`, `retry-errors`, `status`,
//! `add-schemas`: the work queue from the command line.

use std::io::{IsTerminal, Write};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use clap::Args;

use raindrop::js::{extension, HostFunctions, JsPool, PoolConfig};
use raindrop::pipeline::{self, Pipeline, RunOptions, Stats};
use raindrop::store::{Durability, Store};

use super::Settings;

#[derive(Args, Debug, Clone)]
pub struct ProcessArgs {
    /// Keep following the feed after it is drained.
    #[arg(long)]
    pub continuous: bool,
    /// Stop at the first handler error (it is still recorded).
    #[arg(long)]
    pub stop_on_error: bool,
    /// Take only slice K of N of the source documents (e.g. 0/2), with its own checkpoint.
    #[arg(long, value_parser = parse_worker, conflicts_with = "share")]
    pub worker: Option<(u64, u64)>,
    /// Share the work with the other daemons started with --share on this database: each
    /// takes a share of the sources through leases kept in the database, and takes over the
    /// share of one that stops renewing them (with --continuous, or `raindrop run`).
    #[arg(long)]
    pub share: bool,
    /// With --share: seconds after which a lease not renewed is taken over.
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=3600), requires = "share")]
    pub lease_timeout: u64,
    /// Changes read per page.
    #[arg(long, default_value_t = 2000)]
    pub page_size: usize,
}

/// `raindrop run`'s flags: those of `process`, and where to listen.
#[derive(Args, Debug, Clone)]
pub struct RunArgs {
    #[command(flatten)]
    pub process: ProcessArgs,
    /// Where to serve /status, /metrics and /healthz over HTTP (default 127.0.0.1:5985, or
    /// `listen` in the config file); `off` for nowhere. An address that is not loopback needs
    /// a token (api_token in the config file, or RAINDROP_API_TOKEN).
    #[arg(long)]
    pub listen: Option<String>,
}

/// The default address of the daemon's listener.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:5985";

/// `--listen`, else the config file's, else the default; `None` for `off`.
pub fn listen_address(flag: Option<&str>, settings: &Settings) -> anyhow::Result<Option<std::net::SocketAddr>> {
    let spec = flag.or(settings.listen.as_deref()).unwrap_or(DEFAULT_LISTEN);
    if spec.eq_ignore_ascii_case("off") {
        return Ok(None);
    }
    let mut addrs = std::net::ToSocketAddrs::to_socket_addrs(spec)
        .with_context(|| format!("--listen {spec}: not an address to listen on (host:port, or off)"))?;
    addrs.next().map(Some).ok_or_else(|| anyhow::anyhow!("--listen {spec}: the name has no address"))
}

fn parse_worker(s: &str) -> Result<(u64, u64), String> {
    let (k, n) = s.split_once('/').ok_or("expected K/N, e.g. 0/2")?;
    let (k, n): (u64, u64) = (k.parse().map_err(|_| "K must be a number")?, n.parse().map_err(|_| "N must be a number")?);
    if n == 0 || k >= n {
        return Err("need 0 <= K < N".into());
    }
    Ok((k, n))
}

impl ProcessArgs {
    fn options(&self) -> RunOptions {
        RunOptions {
            page_size: self.page_size.max(1),
            continuous: self.continuous,
            stop_on_error: self.stop_on_error,
            worker: self.worker,
            ..RunOptions::default()
        }
    }
}

/// The store, a pool with every extension and the store-backed natives, and the pipeline.
fn start(settings: &Settings) -> anyhow::Result<(Arc<dyn Store>, Pipeline)> {
    let store = settings.open_store()?;
    let sources = extension::read_dir(&settings.extensions)?;
    let defs = settings.load_schemas()?;
    raindrop::schema::report(&raindrop::schema::install(&*store, &defs)?);
    let mut config = PoolConfig::new(settings.js_threads);
    config.schemas = defs.sources();
    drop(defs);
    let mut host = HostFunctions::new();
    raindrop::host_api::register_all(&mut host, store.clone(), settings.identities.clone());
    config.host_functions = host;
    let pool = JsPool::start(sources, config)?;
    for e in pool.extensions() {
        if let Err(err) = &e.declaration {
            eprintln!("warning: not loaded: {err}");
        }
    }
    Ok((store.clone(), Pipeline::new(store, Arc::new(pool))))
}

/// Prints progress: a line rewritten in place on a terminal, plain lines otherwise.
fn progress_printer() -> impl FnMut(&Stats) + Send {
    let started = Instant::now();
    let tty = std::io::stderr().is_terminal();
    let mut last_line = Instant::now();
    move |s: &Stats| {
        let secs = started.elapsed().as_secs_f64().max(1e-9);
        let line = format!(
            "{} changes read, {} handler runs ({:.0}/s), {} skipped up to date, {} written, {} removed, {} errors",
            s.changes_read,
            s.handler_calls,
            s.handler_calls as f64 / secs,
            s.skipped_up_to_date,
            s.docs_written,
            s.docs_removed,
            s.errors
        );
        let mut err = std::io::stderr().lock();
        if tty {
            let _ = write!(err, "\r\x1b[2K{line}");
            let _ = err.flush();
        } else if last_line.elapsed().as_secs() >= 2 {
            let _ = writeln!(err, "{line}");
            last_line = Instant::now();
        }
    }
}

fn finish(stats: &Stats, started: Instant) {
    if std::io::stderr().is_terminal() {
        eprintln!();
    }
    eprintln!(
        "done in {:.2}s: {} changes read, {} handler runs, {} skipped up to date, {} documents written, {} removed, {} errors",
        started.elapsed().as_secs_f64(),
        stats.changes_read,
        stats.handler_calls,
        stats.skipped_up_to_date,
        stats.docs_written,
        stats.docs_removed,
        stats.errors
    );
}

pub fn process(cli: &super::Cli, settings: &Settings, args: &ProcessArgs) -> anyhow::Result<ExitCode> {
    if args.continuous {
        // Continuous: the daemon, without the mail sync or the listener.
        return daemon(cli, settings, args, None, false);
    }
    if args.share {
        anyhow::bail!("--share needs --continuous (or `raindrop run`): a shared worker keeps running to take over for the others");
    }
    let started = Instant::now();
    let (_store, pipeline) = start(settings)?;
    let stats = pipeline.run(&args.options(), progress_printer())?;
    finish(&stats, started);
    Ok(ExitCode::SUCCESS)
}

/// `raindrop run`: the daemon (see `raindrop::daemon`), with the mail sync and the listener.
pub fn run_daemon(cli: &super::Cli, settings: &Settings, args: &RunArgs) -> anyhow::Result<ExitCode> {
    let listen = listen_address(args.listen.as_deref(), settings)?;
    daemon(cli, settings, &args.process, listen, true)
}

fn daemon(
    cli: &super::Cli,
    settings: &Settings,
    args: &ProcessArgs,
    listen: Option<std::net::SocketAddr>,
    sync: bool,
) -> anyhow::Result<ExitCode> {
    let started = Instant::now();
    let options = raindrop::daemon::DaemonOptions {
        store: settings.store.clone(),
        listen,
        token: settings.api_token.clone(),
        cors_origins: settings.cors_origins.clone(),
        run: RunOptions { continuous: true, ..args.options() },
        sync,
        share: args.share.then(|| std::time::Duration::from_secs(args.lease_timeout)),
    };
    let cli = cli.clone();
    let reread = move || super::Settings::resolve(&cli).map(|s| s.daemon_settings()).map_err(|e| format!("{e:#}"));
    let mut progress = progress_printer();
    let stats = raindrop::daemon::run(options, settings.daemon_settings(), reread, &mut progress)?;
    finish(&stats, started);
    Ok(ExitCode::SUCCESS)
}

/// `reprocess` / `unprocess` / `retry-errors`: forget some processing state, then (except for
/// unprocess) process again.
pub fn forget(settings: &Settings, ext: Option<&str>, remove: bool, only_errors: bool, rerun: bool) -> anyhow::Result<ExitCode> {
    let started = Instant::now();
    let (store, pipeline) = start(settings)?;
    let changed = pipeline::forget(&*store, ext, remove, only_errors)?;
    eprintln!("{changed} source(s) to run again");
    let options = RunOptions::default();
    pipeline.reset_checkpoint(&options)?;
    if rerun {
        let stats = pipeline.run(&options, progress_printer())?;
        finish(&stats, started);
    }
    Ok(ExitCode::SUCCESS)
}

/// `raindrop status`: from the running daemon of this database when there is one (what it
/// counts since it started, beside the backlog), else from the database.
pub fn status(settings: &Settings) -> anyhow::Result<ExitCode> {
    if let Some(status) = daemon_status(settings) {
        print_daemon_status(&status)?;
        return Ok(ExitCode::SUCCESS);
    }
    let store = settings.open_store()?;
    let info = store.info()?;
    let counts = pipeline::extension_counts(&*store)?;
    let mut out = std::io::stdout().lock();
    writeln!(out, "database: {} ({}), {} documents, update seq {}", info.location, info.backend, info.doc_count, info.update_seq)?;
    let backlog = pipeline::backlog(&*store, &Pipeline::checkpoint_id(&RunOptions::default()))?;
    writeln!(out, "backlog: {backlog} change(s) not yet processed")?;
    writeln!(out, "{:<48} {:>10} {:>8}", "extension", "processed", "errors")?;
    for (ext, (processed, errors)) in &counts.extensions {
        writeln!(out, "{ext:<48} {processed:>10} {errors:>8}")?;
    }
    print_undefined(&mut out, settings, &counts.schemas)?;
    Ok(ExitCode::SUCCESS)
}

/// The schemas extensions wrote that have no definition, with how many documents of each.
fn print_undefined(
    out: &mut impl std::io::Write,
    settings: &Settings,
    written: &std::collections::BTreeMap<String, u64>,
) -> anyhow::Result<()> {
    let defs = settings.load_schemas()?;
    let undefined: Vec<(&String, &u64)> = written.iter().filter(|(s, _)| defs.get(s).is_none()).collect();
    if undefined.is_empty() {
        writeln!(out, "every schema extensions wrote has a definition ({} definitions)", defs.len())?;
        return Ok(());
    }
    writeln!(out, "undefined: {} schema(s) written with no definition (--strict-schemas makes them errors)", undefined.len())?;
    for (schema, n) in undefined {
        writeln!(out, "  {schema:<46} {n:>10} document(s)")?;
    }
    Ok(())
}

/// The `/status` of a daemon listening where the settings say, if it runs on this database.
fn daemon_status(settings: &Settings) -> Option<serde_json::Value> {
    let mut addr = listen_address(None, settings).ok()??;
    if addr.ip().is_unspecified() {
        addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
    }
    let client = reqwest::blocking::Client::builder().timeout(std::time::Duration::from_secs(3)).build().ok()?;
    let mut request = client.get(format!("http://{addr}/status"));
    if let Some(token) = &settings.api_token {
        request = request.bearer_auth(token);
    }
    let status: serde_json::Value = request.send().ok()?.error_for_status().ok()?.json().ok()?;
    (status["daemon"]["db_identity"].as_str() == Some(settings.store.identity().as_str())).then_some(status)
}

fn print_daemon_status(status: &serde_json::Value) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    let d = &status["daemon"];
    writeln!(out, "daemon: pid {}, up {} s, database {}", d["pid"], d["uptime_seconds"], d["db"].as_str().unwrap_or_default())?;
    match status.get("backlog") {
        Some(n) => writeln!(out, "backlog: {n} change(s) not yet processed")?,
        None => writeln!(out, "backlog: unknown ({})", status["backlog_error"].as_str().unwrap_or_default())?,
    }
    writeln!(
        out,
        "{:<44} {:>10} {:>7} {:>8} {:>9} {:>9}",
        "extension (since the daemon started)", "processed", "errors", "docs/s", "mean ms", "p99 ms"
    )?;
    let ms = |v: &serde_json::Value| v.as_f64().map_or("-".to_string(), |x| format!("{x:.2}"));
    for (id, e) in status["extensions"].as_object().into_iter().flatten() {
        writeln!(
            out,
            "{id:<44} {:>10} {:>7} {:>8.1} {:>9} {:>9}",
            e["processed"],
            e["errors"],
            e["docs_per_second"].as_f64().unwrap_or(0.0),
            ms(&e["mean_ms"]),
            ms(&e["p99_ms"])
        )?;
        if let Some(last) = e.get("last_error").filter(|l| !l.is_null()) {
            let place = match (last["file"].as_str(), last["line"].as_u64()) {
                (Some(f), Some(l)) => format!("{f}:{l}: "),
                _ => String::new(),
            };
            writeln!(out, "    last error: {place}{}", last["message"].as_str().unwrap_or_default())?;
        }
    }
    for (id, a) in status["accounts"].as_object().into_iter().flatten() {
        writeln!(
            out,
            "account {id}: {} sync(s), {} failed, last {}{}",
            a["syncs"],
            a["errors"],
            a["last_sync"],
            a["last_error"].as_str().map(|e| format!(" (last error: {e})")).unwrap_or_default()
        )?;
    }
    for f in status["failed_to_load"].as_array().into_iter().flatten() {
        writeln!(out, "not loaded: {}", f["error"].as_str().unwrap_or_default())?;
    }
    Ok(())
}

/// `raindrop import PATH…`: .eml files, mbox files and Maildir folders become `rd.msg.rfc822`
/// documents (the raw bytes as attachment `rfc822`); importing again adds nothing. With
/// `--process`, the pipeline follows the feed while the import writes.
pub fn import(settings: &Settings, paths: &[std::path::PathBuf], and_process: bool) -> anyhow::Result<ExitCode> {
    let mut found = Vec::new();
    let mut skipped = Vec::new();
    for path in paths {
        raindrop::mail::import::read_messages(path, &mut found, &mut skipped);
    }
    for s in &skipped {
        eprintln!("warning: skipped {}: {}", s.path.display(), s.error);
    }
    let refused = if and_process {
        let started = Instant::now();
        let (store, pipeline) = start(settings)?;
        let (stats, imported) = pipeline.run_beside(&RunOptions::default(), progress_printer(), || write_messages(&*store, &found, false));
        let stats = stats?;
        finish(&stats, started);
        imported?
    } else {
        write_messages(&*settings.open_store()?, &found, std::io::stderr().is_terminal())?
    };
    eprintln!("{} message(s) read, {refused} refused, {} path(s) skipped", found.len(), skipped.len());
    Ok(if refused > 0 || !skipped.is_empty() { ExitCode::from(1) } else { ExitCode::SUCCESS })
}

/// Writes the messages 200 at a time; returns how many the store refused. The chunks do not
/// wait for the disk one by one: the messages are durable together when this returns (an
/// import cut short is run again, and adds only what is missing).
fn write_messages(store: &dyn Store, found: &[raindrop::mail::import::FoundMessage], progress: bool) -> anyhow::Result<u64> {
    let (mut done, mut refused) = (0usize, 0u64);
    for chunk in found.chunks(200) {
        let items = chunk.iter().map(|m| raindrop::mail::import::rfc822_item(&m.bytes, "proto.import")).collect();
        refused += super::tally(raindrop::ingest::add_schemas(store, items, Durability::Deferred)?, "not imported").1;
        done += chunk.len();
        if progress {
            eprint!("\r\x1b[2K{done}/{} messages", found.len());
        }
    }
    // Folders and read flags of Maildir messages, once every copy of each has been seen.
    let places = raindrop::mail::import::place_items(found, "proto.import");
    for chunk in places.chunks(1000) {
        refused += super::tally(raindrop::ingest::add_schemas(store, chunk.to_vec(), Durability::Deferred)?, "not imported").1;
    }
    store.sync()?;
    if progress {
        eprintln!();
    }
    Ok(refused)
}

pub fn add_schemas(settings: &Settings, files: &[String]) -> anyhow::Result<ExitCode> {
    let store = settings.open_store()?;
    let (mut ok, mut refused) = (0u64, 0u64);
    for file in files {
        let batch = super::read_json_lines(file)?;
        for chunk in batch.chunks(1000) {
            let (written, failed) = super::tally(raindrop::ingest::add_schemas(&*store, chunk.to_vec(), Durability::Deferred)?, file);
            ok += written;
            refused += failed;
        }
    }
    store.sync()?;
    eprintln!("{ok} schema document(s) written, {refused} refused");
    Ok(if refused > 0 { ExitCode::from(1) } else { ExitCode::SUCCESS })
}
