//! `raindrop sync` (the daemon's periodic sync is `raindrop::daemon`'s).

use std::process::ExitCode;

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
