//! IMAP sync: an account's folders into `rd.msg.rfc822`, `rd.msg.imap-locations`,
//! `rd.msg.seen` and `rd.imap.mailbox-cache` documents.
//!
//! One sync of one account:
//! 1. log in once to list the folders (special-use Trash / Junk / All skipped, then the
//!    configured exclusions; INBOX first, then Sent and Drafts, then the rest);
//! 2. a queue of jobs served by up to `connections` (≤ 6) threads, each with its own connection:
//!    *scan* a folder (EXAMINE, read-only; UIDs, flags and sizes of everything; the headers of
//!    UIDs the folder's cache does not know, for their Message-ID), then *fetch* the bodies that
//!    are in no folder's store yet with `BODY.PEEK[]` in chunks of ≤ 30 messages or ≤ 500 KB,
//!    each chunk written as soon as it arrives;
//! 3. the locations, `\Seen` flags and — last — the folder caches are written.
//!
//! Why this shape resumes: a body is written before anything records that it was fetched, and
//! a folder's cache (UIDVALIDITY, the UIDs it knows) only after all its bodies are in. A
//! connection lost mid-fetch is reconnected and the job retried; a folder that still fails
//! keeps its old cache, so the next sync scans it again and fetches only what is still missing
//! from the store. Nothing is lost, nothing is stored twice (a message's document id is its
//! Message-ID), and a re-sync of an unchanged account writes nothing.
//!
//! The password is read from an environment variable or a file at sync time; it is never
//! stored, logged or put in an error message.
//!
//! The code: `session` opens and logs in a connection, `folders` lists and scans folders,
//! `jobs` is the connections' work (a scan or a fetch, retried), `sync` coordinates one sync
//! and `documents` writes what it learnt.

mod documents;
mod folders;
mod jobs;
mod session;
mod sync;

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use crate::store::StoreError;

pub use sync::sync_account;

/// The extension id the documents an IMAP sync writes are recorded under.
const EXT_ID: &str = "proto.imap";
const MAX_CONNECTIONS: usize = 6;
/// How long a connection may take to open, and a read or a write to make progress, when the
/// account does not say (`timeout_secs`): a server that accepts and then says nothing fails
/// the job after this long instead of holding the sync for ever.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);
/// The longest `timeout_secs` an account may set.
const MAX_TIMEOUT_SECS: u64 = 600;

/// How the connection is protected. `plain` is allowed only to a loopback address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Security {
    Tls,
    Starttls,
    Plain,
}

/// One `[[accounts]]` table of the config file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImapAccount {
    /// Names the account in documents (`locations[].account`) and on the command line.
    pub id: String,
    pub host: String,
    /// Default: 993 for `tls`, 143 otherwise.
    pub port: Option<u16>,
    #[serde(default = "default_security")]
    pub security: Security,
    pub username: String,
    /// The environment variable holding the password (default `RAINDROP_IMAP_PASSWORD`).
    pub password_env: Option<String>,
    /// A file holding the password (its first line); takes precedence over `password_env`.
    pub password_file: Option<PathBuf>,
    /// Folder names not to sync, besides the special-use Trash, Junk and All Mail.
    #[serde(default)]
    pub exclude_folders: Vec<String>,
    /// Connections to open at most (1–6, default 6).
    pub connections: Option<usize>,
    /// Seconds a connection may take to open, and a read or a write to make progress
    /// (1–600, default 60).
    pub timeout_secs: Option<u64>,
}

fn default_security() -> Security {
    Security::Tls
}

/// A password, redacted from every `Debug` print.
pub struct Password(String);

impl Password {
    /// `text` with the password (as sent, and as IMAP quotes it) blotted out: a hostile or
    /// broken server may echo the LOGIN line into an error that Raindrop reports.
    pub(super) fn redact(&self, text: &str) -> String {
        if self.0.is_empty() {
            return text.to_string();
        }
        let quoted = self.0.replace('\\', "\\\\").replace('"', "\\\"");
        text.replace(&quoted, "<password>").replace(&self.0, "<password>")
    }
}

impl std::fmt::Debug for Password {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Password(<redacted>)")
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error("account {account}: {message}")]
    Config { account: String, message: String },
    #[error("account {account}: cannot reach {server}: {reason}")]
    Connect { account: String, server: String, reason: String },
    #[error("account {account}: {server} refused the login of user {user}: {reason}")]
    Login { account: String, server: String, user: String, reason: String },
    #[error("account {account}: {failed} folder(s) not synced, they resume on the next sync (first: {first})")]
    Folders { account: String, failed: usize, first: String },
    #[error("account {account}: {source}")]
    Store { account: String, source: StoreError },
}

/// What one sync did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct SyncReport {
    pub folders: usize,
    /// Messages in the synced folders (not flagged `\Deleted`).
    pub messages: usize,
    /// Bodies fetched and written in this sync.
    pub fetched: usize,
    /// Messages not fetched because they were already stored: known from the folder's cache,
    /// stored by an earlier sync, or fetched from another folder in this one.
    pub already_stored: usize,
    /// Jobs that lost their connection and were retried.
    pub retries: usize,
}

impl ImapAccount {
    pub(super) fn port(&self) -> u16 {
        self.port.unwrap_or(if self.security == Security::Tls { 993 } else { 143 })
    }

    pub(super) fn server(&self) -> String {
        format!("{}:{}", self.host, self.port())
    }

    pub(super) fn connections(&self) -> usize {
        self.connections.unwrap_or(MAX_CONNECTIONS).clamp(1, MAX_CONNECTIONS)
    }

    pub(super) fn timeout(&self) -> Duration {
        self.timeout_secs.map_or(DEFAULT_TIMEOUT, Duration::from_secs)
    }

    fn config_error(&self, message: impl Into<String>) -> SyncError {
        SyncError::Config { account: self.id.clone(), message: message.into() }
    }

    /// Checks what can be checked without the network.
    pub fn validate(&self) -> Result<(), SyncError> {
        if self.id.is_empty() || self.host.is_empty() || self.username.is_empty() {
            return Err(self.config_error("id, host and username are required"));
        }
        if self.timeout_secs.is_some_and(|t| !(1..=MAX_TIMEOUT_SECS).contains(&t)) {
            return Err(self.config_error(format!("timeout_secs must be from 1 to {MAX_TIMEOUT_SECS}")));
        }
        if self.security == Security::Plain && !is_loopback(&self.host) {
            return Err(self.config_error(format!(
                "security = \"plain\" is allowed only on loopback, not {}; use \"tls\" or \"starttls\"",
                self.host
            )));
        }
        Ok(())
    }

    /// The password, from `password_file` or the environment variable.
    pub fn password(&self) -> Result<Password, SyncError> {
        if let Some(path) = &self.password_file {
            let text = std::fs::read_to_string(path)
                .map_err(|e| self.config_error(format!("cannot read password_file {}: {e}", path.display())))?;
            return Ok(Password(text.lines().next().unwrap_or_default().to_string()));
        }
        let var = self.password_env.as_deref().unwrap_or("RAINDROP_IMAP_PASSWORD");
        std::env::var(var)
            .map(Password)
            .map_err(|_| self.config_error(format!("no password: set the environment variable {var} (or password_file)")))
    }
}

pub(super) fn is_loopback(host: &str) -> bool {
    host == "localhost" || host.parse::<std::net::IpAddr>().map(|ip| ip.is_loopback()).unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_is_only_for_loopback_and_passwords_never_print() {
        let mut a: ImapAccount = toml::from_str(
            "id = \"a\"\nhost = \"mail.example.com\"\nusername = \"me\"\nsecurity = \"plain\"\npassword_env = \"RD_TEST_NO_SUCH_VAR\"",
        )
        .unwrap();
        assert!(a.validate().unwrap_err().to_string().contains("loopback"));
        a.host = "127.0.0.1".into();
        assert!(a.validate().is_ok());
        assert!(a.password().unwrap_err().to_string().contains("RD_TEST_NO_SUCH_VAR"));
        assert_eq!(format!("{:?}", Password("hunter2".into())), "Password(<redacted>)");
    }
}
