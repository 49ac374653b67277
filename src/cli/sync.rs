//! `raindrop sync`, and the periodic sync of `raindrop run`.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use raindrop::protocols::imap::{self, ImapAccount, SyncReport};
use raindrop::store::Store;

use super::Settings;

/// Syncs every configured account (or the one named) once. Exit code 1 if any failed.
pub fn sync_once(settings: &Settings, only: Option<&str>) -> anyhow::Result<ExitCode> {
    let accounts: Vec<&ImapAccount> = settings.accounts.iter().filter(|a| only.is_none_or(|id| a.id == id)).collect();
    if accounts.is_empty() {
        anyhow::bail!(match only {
            Some(id) => format!("no account {id:?} in the config file"),
            None => "no [[accounts]] in the config file: nothing to sync".to_string(),
        });
    }
    let store = settings.open_store()?;
    let mut failed = false;
    for account in accounts {
        match sync_one(&*store, account) {
            Ok(_) => {}
            Err(e) => {
                failed = true;
                eprintln!("error: {e}");
            }
        }
    }
    Ok(if failed { ExitCode::from(1) } else { ExitCode::SUCCESS })
}

fn sync_one(store: &dyn Store, account: &ImapAccount) -> Result<SyncReport, imap::SyncError> {
    let report = imap::sync_account(store, account, &mut |line| eprintln!("{}: {line}", account.id))?;
    eprintln!(
        "{}: synced {} folder(s), {} message(s) on the server, {} fetched, {} already stored, {} reconnect(s)",
        account.id, report.folders, report.messages, report.fetched, report.already_stored, report.retries
    );
    Ok(report)
}

/// Syncs all accounts now and then every `interval`, on a thread of its own; a failed sync is
/// logged and tried again at the next interval.
pub fn spawn_periodic(store: Arc<dyn Store>, accounts: Vec<ImapAccount>, interval: Duration) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("imap-sync".into())
        .spawn(move || loop {
            for account in &accounts {
                if let Err(e) = sync_one(&*store, account) {
                    tracing::error!("{e}");
                    eprintln!("error: {e}");
                }
            }
            std::thread::sleep(interval);
        })
        .map(|_| ())
}
