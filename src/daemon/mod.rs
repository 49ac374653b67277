//! The living daemon (`raindrop run`, `raindrop process --continuous`): the pipeline followed
//! continuously over a pool of the extensions folder, taken up again whenever the folder
//! changes; the mail accounts synced on an interval; an HTTP listener for status and metrics;
//! signals for a clean stop and for reading the configuration again.
//!
//! One loop owns the pool: it runs the pipeline until something asks it to stop (a signal, a
//! change in the folder), which ends the run at a page's end with everything in flight written;
//! it then starts a pool of the new set of extensions — keeping the last version of a file that
//! no longer loads — withdraws the outputs of extensions that are gone, and runs again. A run
//! after a change re-reads the feed from its start (the extensions' fingerprints changed):
//! unchanged extensions skip what they have done by their state, a new one runs over the
//! existing documents, an edited one re-derives its own outputs. A database that goes away is
//! waited for, with backoff, rather than ending the daemon.
//!
//! `extensions` loads and watches the folder, `signals` is what the daemon is told, `sync`
//! the mail thread, `http` the listener.

mod api_folder;
mod extensions;
mod http;
mod signals;
mod sync;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::js::{JsPool, PoolConfig};
use crate::metrics::Metrics;
use crate::pipeline::share::Share;
use crate::pipeline::{Pipeline, PipelineError, RunOptions, Stats};
use crate::protocols::imap::ImapAccount;
use crate::store::{Store, StoreError, StoreSpec};
use extensions::{snapshot_of, Loader};
use signals::Control;

pub use extensions::FolderError;

/// How often the extensions folder is looked at.
const WATCH_INTERVAL: Duration = Duration::from_millis(400);
/// The longest wait between attempts to reach a database that went away.
const MAX_BACKOFF: Duration = Duration::from_secs(60);

/// What the configuration decides, read again on SIGHUP.
#[derive(Clone)]
pub struct DaemonSettings {
    pub extensions: PathBuf,
    /// The folder of API files (served under `/api/` when the daemon listens).
    pub api: PathBuf,
    pub js_threads: usize,
    /// The user's own identity ids, for `get_my_identities()`.
    pub identities: Vec<Value>,
    pub accounts: Vec<ImapAccount>,
    pub sync_interval: Duration,
    /// `--schemas DIR`: the user's schema definitions (besides `<extensions>/schemas/`).
    pub schemas: Option<PathBuf>,
    /// An item of a schema without a definition is an error.
    pub strict_schemas: bool,
}

impl DaemonSettings {
    /// Every folder whose `.js` files the daemon takes up when they change: the extensions,
    /// their libraries, and the schema definitions.
    fn watched_folders(&self) -> Vec<PathBuf> {
        let ext = &self.extensions;
        let mut out = vec![ext.clone(), ext.join("lib")];
        // `<extensions>/schemas/` whether it exists yet or not: one made later is seen.
        out.push(ext.join("schemas"));
        out.extend(self.schemas.clone());
        out
    }
}

/// How the daemon is set up for its whole life.
pub struct DaemonOptions {
    pub store: StoreSpec,
    /// The HTTP listener's address (`None`: no listener).
    pub listen: Option<SocketAddr>,
    /// The token requests must carry (required on an address that is not loopback).
    pub token: Option<String>,
    /// Origins whose pages may call `/api/` (CORS); none by default.
    pub cors_origins: Vec<String>,
    /// Page size and worker slice of the runs (continuous, and the stop flag, are the daemon's).
    pub run: RunOptions,
    /// Sync the accounts (`raindrop run`; not `process --continuous`).
    pub sync: bool,
    /// Share the work with the other daemons of the database (`--share`), with leases that
    /// time out after this long.
    pub share: Option<Duration>,
}

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("listening on {addr} needs a token: set api_token in the config file or RAINDROP_API_TOKEN")]
    TokenNeeded { addr: SocketAddr },
    #[error("cannot listen on {addr}: {source}")]
    Listen { addr: SocketAddr, source: std::io::Error },
    #[error("cannot start the daemon's {0} thread: {1}")]
    Thread(&'static str, std::io::Error),
    #[error(transparent)]
    Folder(#[from] FolderError),
    #[error(transparent)]
    Pipeline(#[from] PipelineError),
    #[error("cannot read the configuration again: {0}")]
    Config(String),
}

/// Runs the daemon until it is told to stop. `reread` gives the settings anew (SIGHUP);
/// `progress` is told after every page written.
pub fn run(
    options: DaemonOptions,
    settings: DaemonSettings,
    reread: impl Fn() -> Result<DaemonSettings, String>,
    progress: &mut (dyn FnMut(&Stats) + Send),
) -> Result<Stats, DaemonError> {
    if let (Some(addr), None) = (options.listen, &options.token) {
        if !addr.ip().is_loopback() {
            return Err(DaemonError::TokenNeeded { addr });
        }
    }
    let control = Arc::new(Control::default());
    signals::install(control.clone()).map_err(|e| DaemonError::Thread("signal", e))?;
    let metrics = Arc::new(Metrics::default());
    let Some(store) = open_store(&options.store, &control) else { return Ok(Stats::default()) };
    let mut run = RunOptions { continuous: true, stop: Some(control.run_stop.clone()), ..options.run.clone() };
    let share = match options.share {
        None => None,
        Some(timeout) => Some(join_the_share(&store, timeout, &control, &mut run)?),
    };
    let mut api_plan = None;
    let mut threads = Stopping { control: control.clone(), listener: None, api_watch: None };
    threads.listener = match options.listen {
        None => None,
        Some(addr) => {
            let plan =
                api_folder::ApiPlan { dir: settings.api.clone(), threads: settings.js_threads, identities: settings.identities.clone() };
            let api = api_folder::ApiFolder::start(plan, store.clone(), metrics.clone());
            let current = api.current.clone();
            api_plan = Some(api.plan.clone());
            threads.api_watch = Some(api.watch(control.clone()).map_err(|e| DaemonError::Thread("api-watch", e))?);
            let state = http::HttpState {
                metrics: metrics.clone(),
                store: store.clone(),
                checkpoint_id: Pipeline::checkpoint_id(&run),
                token: options.token.clone(),
                db: options.store.describe(),
                db_identity: options.store.identity(),
                started: Instant::now(),
                backlog: Default::default(),
                api: current,
                cors_origins: options.cors_origins.clone(),
            };
            let listener = http::start(addr, state).map_err(|source| DaemonError::Listen { addr, source })?;
            eprintln!("raindrop: listening on http://{} (/status, /metrics, /healthz)", listener.addr);
            Some(listener)
        }
    };
    let plan =
        Arc::new(Mutex::new(sync::SyncPlan { accounts: settings.accounts.clone(), interval: settings.sync_interval, generation: 0 }));
    // Started with no accounts too: SIGHUP may bring some.
    if options.sync {
        sync::spawn(store.clone(), plan.clone(), metrics.clone(), control.clone()).map_err(|e| DaemonError::Thread("sync", e))?;
    }
    let mut daemon = Daemon {
        store,
        metrics,
        control,
        settings,
        loader: Loader::default(),
        loaded_ids: None,
        watched: Arc::default(),
        to_withdraw: BTreeSet::new(),
        checkpoint_id: Pipeline::checkpoint_id(&run),
        api_plan,
        share: share.clone(),
    };
    daemon.watch().map_err(|e| DaemonError::Thread("watch", e))?;
    let stats = daemon.main_loop(&run, &reread, &plan, progress);
    if let Some(share) = share {
        share.leave();
    }
    drop(threads);
    eprintln!("raindrop: stopped");
    stats
}

/// Starts this daemon's part in sharing the work (`--share`): the leases, and the runs' slices
/// and checkpoint. A claim ends the main run at a page boundary, for the catch-up.
fn join_the_share(
    store: &Arc<dyn Store>,
    timeout: Duration,
    control: &Arc<Control>,
    run: &mut RunOptions,
) -> Result<Arc<Share>, DaemonError> {
    let share = Share::start(store.clone(), timeout, control.run_stop.clone()).map_err(|e| DaemonError::Thread("leases", e))?;
    eprintln!("raindrop: sharing the work as worker {} (leases time out after {} s)", share.id(), timeout.as_secs());
    run.share = Some(share.held());
    run.checkpoint = Some(crate::pipeline::share::checkpoint_of(share.id()));
    // A new worker holds nothing yet: its main run starts at the feed's end, and each slice it
    // claims is caught up from its lease's position.
    run.start = store.info().ok().map(|i| crate::store::Seq::from_raw(i.update_seq));
    Ok(share)
}

/// The threads that hold JS pools besides the main loop's: on any way out of [`run`] they
/// are told to stop and joined, so no runtime outlives the daemon (SpiderMonkey must shut
/// down before the process exits).
struct Stopping {
    control: Arc<Control>,
    listener: Option<http::Listener>,
    api_watch: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Stopping {
    fn drop(&mut self) {
        self.control.stop.store(true, Ordering::SeqCst);
        self.listener.take();
        if let Some(t) = self.api_watch.take() {
            let _ = t.join();
        }
    }
}

/// The main loop's state.
struct Daemon {
    store: Arc<dyn Store>,
    metrics: Arc<Metrics>,
    control: Arc<Control>,
    settings: DaemonSettings,
    loader: Loader,
    /// The extension ids of the last pool (none before the first).
    loaded_ids: Option<BTreeSet<String>>,
    /// The folders the watcher looks at (SIGHUP may change them).
    watched: Arc<Mutex<Vec<PathBuf>>>,
    /// Extensions gone from the folder whose outputs are still to be withdrawn.
    to_withdraw: BTreeSet<String>,
    /// The pipeline's checkpoint (it names the extensions of the last run).
    checkpoint_id: String,
    /// What the API's pool is made from, when the daemon listens.
    api_plan: Option<Arc<Mutex<api_folder::ApiPlan>>>,
    /// The leases of a shared worker.
    share: Option<Arc<Share>>,
}

impl Daemon {
    fn main_loop(
        &mut self,
        run: &RunOptions,
        reread: &dyn Fn() -> Result<DaemonSettings, String>,
        plan: &Mutex<sync::SyncPlan>,
        progress: &mut (dyn FnMut(&Stats) + Send),
    ) -> Result<Stats, DaemonError> {
        let mut total = Stats::default();
        let mut pool = self.load()?;
        let mut backoff = Duration::from_secs(1);
        let mut run = run.clone();
        loop {
            // Cleared first, then raised again for a stop or reload asked for while the last
            // pool started: neither is lost (both raise `run_stop` after their own flag).
            self.control.run_stop.store(false, Ordering::SeqCst);
            if self.control.stopping() || self.control.reload.load(Ordering::SeqCst) {
                self.control.end_run();
            }
            let pipeline = Pipeline::new(self.store.clone(), pool.clone()).with_metrics(self.metrics.clone());
            let caught_up = match &self.share {
                Some(share) if !self.control.stopping() => pipeline.catch_up(share, &run, &mut *progress),
                _ => Ok(Stats::default()),
            };
            match caught_up.and_then(|caught_up| {
                total.add(&caught_up);
                pipeline.run(&run, &mut *progress)
            }) {
                Ok(stats) => {
                    total.add(&stats);
                    backoff = Duration::from_secs(1);
                    // Only the first run starts at a given place; the next ones at the checkpoint,
                    // once there is one (a run that read no page wrote none).
                    if run.start.is_some() && self.store.get_local(&Pipeline::checkpoint_id(&run)).ok().flatten().is_some() {
                        run.start = None;
                    }
                }
                Err(PipelineError::Store(e @ (StoreError::Unavailable { .. } | StoreError::Embedded { .. }))) => {
                    eprintln!("raindrop: the database is unreachable ({e}); trying again in {} s", backoff.as_secs());
                    self.control.sleep(backoff);
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
                Err(e) => return Err(e.into()),
            }
            drop(pipeline);
            if self.control.stopping() {
                return Ok(total);
            }
            self.withdraw_gone();
            if self.control.reload.swap(false, Ordering::SeqCst) {
                if self.control.reread_config.swap(false, Ordering::SeqCst) {
                    self.reread(reread, plan);
                }
                // The pool in use keeps running until its successor has started.
                match self.load() {
                    Ok(new) => pool = new,
                    Err(e) => eprintln!(
                        "raindrop: cannot take up the extensions folder ({e}); the extensions loaded before keep running until it changes again"
                    ),
                }
            }
        }
    }

    /// SIGHUP: the settings read again, or — when the file is now wrong — kept as they were.
    fn reread(&mut self, reread: &dyn Fn() -> Result<DaemonSettings, String>, plan: &Mutex<sync::SyncPlan>) {
        match reread() {
            Ok(settings) => self.settings = settings,
            Err(e) => {
                eprintln!("raindrop: {}; the settings in use are kept", DaemonError::Config(e));
                return;
            }
        }
        *self.watched.lock().unwrap_or_else(|p| p.into_inner()) = self.settings.watched_folders();
        let mut plan = plan.lock().unwrap_or_else(|p| p.into_inner());
        plan.accounts = self.settings.accounts.clone();
        plan.interval = self.settings.sync_interval;
        plan.generation += 1;
        if let Some(api) = &self.api_plan {
            let s = &self.settings;
            *api.lock().unwrap_or_else(|p| p.into_inner()) =
                api_folder::ApiPlan { dir: s.api.clone(), threads: s.js_threads, identities: s.identities.clone() };
        }
    }

    /// A pool of the folder's extensions, the failures reported and the outputs of
    /// extensions gone since the last pool withdrawn.
    fn load(&mut self) -> Result<Arc<JsPool>, DaemonError> {
        let mut config = PoolConfig::new(self.settings.js_threads);
        config.metrics = Some(self.metrics.clone());
        crate::host_api::register_all(&mut config.host_functions, self.store.clone(), self.settings.identities.clone());
        let (schemas, schema_failures) = self.install_schemas();
        config.schemas = schemas;
        let mut loaded = self.loader.load(&self.settings.extensions, &config)?;
        loaded.failures.extend(schema_failures);
        for failure in &loaded.failures {
            eprintln!("raindrop: {} did not load: {}", failure.file, failure.error);
        }
        self.metrics.loaded(loaded.failures);
        let ids: BTreeSet<String> = loaded.pool.extensions().iter().filter_map(|e| e.id().map(str::to_string)).collect();
        if let Some(before) = &self.loaded_ids {
            // Gone: its file was removed (or now declares another id) — not one that only
            // failed to load.
            let gone: Vec<String> = before.difference(&ids).filter(|id| !loaded.stalled.contains(*id)).cloned().collect();
            self.to_withdraw.extend(gone);
            for new in ids.difference(before) {
                eprintln!("raindrop: extension {new} loaded: it runs over the existing documents of its schemas");
            }
        } else {
            self.note_missing(&ids);
        }
        self.to_withdraw.retain(|id| !ids.contains(id));
        self.withdraw_gone();
        self.loaded_ids = Some(ids.union(&loaded.stalled).cloned().collect());
        Ok(Arc::new(loaded.pool))
    }

    /// The schema definitions, read and installed into the database (documents upgraded to a
    /// new version first): what the new pool checks items against. A definition that does not
    /// load is reported and left out; a database that refuses the install is reported and the
    /// install is tried again at the next reload, the definitions being checked all the same.
    fn install_schemas(&mut self) -> (Arc<crate::js::extension::SchemaSources>, Vec<crate::metrics::LoadFailure>) {
        let folders = crate::schema::folders(&self.settings.extensions, self.settings.schemas.as_deref());
        let strict = self.settings.strict_schemas;
        let defs = match crate::schema::Definitions::load(&folders, strict, 1) {
            Ok(defs) => defs,
            Err(e) => match crate::schema::Definitions::load(&[], strict, 1) {
                Ok(bundled) => {
                    eprintln!("raindrop: {e}; the bundled definitions are used until the folder can be read");
                    bundled
                }
                Err(e) => {
                    eprintln!("raindrop: {e}; no item is checked against a definition until they load");
                    return (Arc::default(), Vec::new());
                }
            },
        };
        match crate::schema::install(&*self.store, &defs) {
            Ok(done) => crate::schema::report(&done),
            Err(e) => eprintln!("raindrop: {e}; trying again at the next reload"),
        }
        let failures =
            defs.failed.iter().map(|(file, error)| crate::metrics::LoadFailure { file: file.clone(), error: error.clone() }).collect();
        (defs.sources(), failures)
    }

    /// Withdraws the outputs of extensions gone from the folder; what the store does not let
    /// through now is tried again after the next run.
    fn withdraw_gone(&mut self) {
        let mut left = BTreeSet::new();
        for gone in std::mem::take(&mut self.to_withdraw) {
            match crate::pipeline::forget(&*self.store, Some(&gone), true, false) {
                Ok(n) => eprintln!("raindrop: extension {gone} is gone from the folder: its outputs of {n} source(s) are withdrawn"),
                Err(e) => {
                    eprintln!("raindrop: extension {gone} is gone, but its outputs could not be withdrawn yet ({e}); trying again later");
                    left.insert(gone);
                }
            }
        }
        self.to_withdraw = left;
    }

    /// At start: extensions the last run had that are not in the folder now (removed while no
    /// daemon ran) are named, not withdrawn — the folder may be another on purpose.
    fn note_missing(&self, ids: &BTreeSet<String>) {
        let checkpoint = self.store.get_local(&self.checkpoint_id).ok().flatten();
        let before = checkpoint.as_ref().and_then(|c| c.get("fingerprints")).and_then(Value::as_object);
        for id in before.into_iter().flat_map(|m| m.keys()).filter(|id| !ids.contains(*id)) {
            eprintln!("raindrop: extension {id} ran here before but is not in the folder now; `raindrop unprocess --ext {id}` withdraws its outputs");
        }
    }

    /// Looks at the extensions folder every [`WATCH_INTERVAL`] and asks for a reload when it
    /// changed (and then held still for one more look, so a file being written is taken whole).
    fn watch(&self) -> std::io::Result<()> {
        let (control, watched) = (self.control.clone(), self.watched.clone());
        *watched.lock().unwrap_or_else(|p| p.into_inner()) = self.settings.watched_folders();
        std::thread::Builder::new().name("watch".into()).spawn(move || {
            let folders = || watched.lock().unwrap_or_else(|p| p.into_inner()).clone();
            let mut seen = snapshot_of(&folders());
            while !control.stopping() {
                std::thread::sleep(WATCH_INTERVAL);
                let now = snapshot_of(&folders());
                if now == seen {
                    continue;
                }
                std::thread::sleep(WATCH_INTERVAL);
                let settled = snapshot_of(&folders());
                if settled == now {
                    eprintln!("raindrop: the extensions folder (or a schema definition) changed: taking it up");
                    seen = settled;
                    control.reload(false);
                }
            }
        })?;
        Ok(())
    }
}

/// Opens the store, waiting with backoff while it is unreachable; `None` when told to stop
/// meanwhile.
fn open_store(spec: &StoreSpec, control: &Control) -> Option<Arc<dyn Store>> {
    let mut backoff = Duration::from_secs(1);
    loop {
        match crate::store::open(spec) {
            Ok(store) => return Some(store),
            Err(e) => {
                eprintln!("raindrop: cannot open the database ({e}); trying again in {} s", backoff.as_secs());
                control.sleep(backoff);
                if control.stopping() {
                    return None;
                }
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
}
