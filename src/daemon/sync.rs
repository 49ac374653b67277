//! The daemon's mail sync: every account now and then every `sync_interval`, on a thread of
//! its own, each sync's outcome counted for `/status`. A failed sync is logged and tried again
//! at the next interval (what failed resumes: see `protocols::imap`).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::signals::Control;
use crate::metrics::Metrics;
use crate::protocols::imap::{self, ImapAccount};
use crate::store::Store;

/// The accounts and how often, changed by SIGHUP.
pub(super) struct SyncPlan {
    pub(super) accounts: Vec<ImapAccount>,
    pub(super) interval: Duration,
    /// Raised when SIGHUP changed the plan: the wait for the next sync ends then.
    pub(super) generation: u64,
}

pub(super) fn spawn(
    store: Arc<dyn Store>,
    plan: Arc<Mutex<SyncPlan>>,
    metrics: Arc<Metrics>,
    control: Arc<Control>,
) -> std::io::Result<()> {
    std::thread::Builder::new().name("imap-sync".into()).spawn(move || {
        while !control.stopping() {
            let (accounts, interval, generation) = {
                let plan = plan.lock().unwrap_or_else(|p| p.into_inner());
                (plan.accounts.clone(), plan.interval, plan.generation)
            };
            for account in accounts.iter().take_while(|_| !control.stopping()) {
                let result = imap::sync_account(&*store, account, &mut |line| tracing::info!(account = %account.id, "{line}"));
                match &result {
                    Ok(r) => tracing::info!(account = %account.id, fetched = r.fetched, messages = r.messages, "synced"),
                    Err(e) => eprintln!("raindrop: sync: {e}"),
                }
                metrics.synced(&account.id, result.err().map(|e| e.to_string()));
            }
            let until = std::time::Instant::now() + interval;
            while std::time::Instant::now() < until && !control.stopping() {
                control.sleep(Duration::from_millis(250));
                if plan.lock().unwrap_or_else(|p| p.into_inner()).generation != generation {
                    break;
                }
            }
        }
    })?;
    Ok(())
}
