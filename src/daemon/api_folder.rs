//! The API folder as a running daemon sees it: loaded into a JS pool of its own at start, and
//! loaded again when a file in it (or its `lib/`) changes or SIGHUP asks; the new pool takes
//! over from the old between requests (a request under way finishes on the old one).

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use serde_json::Value;

use super::extensions::{snapshot, Loader};
use super::signals::Control;
use crate::api::Api;
use crate::js::PoolConfig;
use crate::metrics::Metrics;
use crate::store::Store;

/// How often the folder is looked at.
const WATCH_INTERVAL: Duration = Duration::from_millis(400);

/// What the API's pool is made from (SIGHUP may change it).
#[derive(Clone)]
pub(super) struct ApiPlan {
    pub(super) dir: PathBuf,
    pub(super) threads: usize,
    pub(super) identities: Vec<Value>,
}

/// The API in use, and how to make it again.
pub(super) struct ApiFolder {
    pub(super) current: Arc<RwLock<Arc<Api>>>,
    pub(super) plan: Arc<Mutex<ApiPlan>>,
    /// Keeps each file's last version that loaded, as for extensions.
    loader: Mutex<Loader>,
    store: Arc<dyn Store>,
    metrics: Arc<Metrics>,
}

impl ApiFolder {
    /// Loads the folder of `plan` now.
    pub(super) fn start(plan: ApiPlan, store: Arc<dyn Store>, metrics: Arc<Metrics>) -> ApiFolder {
        let folder = ApiFolder { current: Arc::default(), plan: Arc::new(Mutex::new(plan)), loader: Mutex::default(), store, metrics };
        folder.reload();
        folder
    }

    /// Loads the folder again and puts it in place (the one in use stays when it cannot be read).
    fn reload(&self) {
        let plan = self.plan.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let mut config = PoolConfig::new(plan.threads);
        config.unbounded_queue = true;
        crate::host_api::register_all(&mut config.host_functions, self.store.clone(), plan.identities.clone());
        crate::host_api::register_api(&mut config.host_functions, self.store.clone());
        if !plan.dir.is_dir() {
            eprintln!("raindrop: no API folder at {}: nothing is served under /api/", plan.dir.display());
            *self.current.write().unwrap_or_else(|p| p.into_inner()) = Arc::default();
            return;
        }
        let loaded = self.loader.lock().unwrap_or_else(|p| p.into_inner()).load(&plan.dir, &config);
        match loaded.map(|l| Api::from_pool(l.pool, l.failures)) {
            Ok(api) => {
                for f in api.failures() {
                    eprintln!("raindrop: API file {} did not load: {}", f.file, f.error);
                }
                let routes = api.routes();
                self.metrics.api_loaded(routes.len(), api.failures().to_vec());
                tracing::info!(folder = %plan.dir.display(), routes = routes.len(), "API loaded");
                *self.current.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(api);
            }
            Err(e) => eprintln!("raindrop: cannot load the API folder {} ({e}); the API loaded before keeps serving", plan.dir.display()),
        }
    }

    /// Watches the folder on a thread of its own: a change (once it holds still for one more
    /// look) or `control.reload_api` (SIGHUP) loads it again.
    /// The thread ends (dropping this folder's pools) once `control` says stopping.
    pub(super) fn watch(self, control: Arc<Control>) -> std::io::Result<std::thread::JoinHandle<()>> {
        std::thread::Builder::new().name("api-watch".into()).spawn(move || {
            let folder = || self.plan.lock().unwrap_or_else(|p| p.into_inner()).dir.clone();
            let mut seen = (folder(), snapshot(&folder()));
            while !control.stopping() {
                std::thread::sleep(WATCH_INTERVAL);
                let asked = control.reload_api.swap(false, Ordering::SeqCst);
                let now = (folder(), snapshot(&folder()));
                if now == seen && !asked {
                    continue;
                }
                if !asked {
                    std::thread::sleep(WATCH_INTERVAL);
                    if (folder(), snapshot(&folder())) != now {
                        continue;
                    }
                    eprintln!("raindrop: the API folder changed: taking it up");
                }
                seen = now;
                self.reload();
            }
        })
    }
}
