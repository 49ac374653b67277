//! Choosing a store from a `--db` spec: a URL means CouchDB, anything else is a path to an
//! embedded database file.

use std::path::PathBuf;
use std::sync::Arc;

use super::couch::{redact, CouchStore, RetryPolicy};
use super::embedded::EmbeddedStore;
use super::{Store, StoreError};

/// Where the data lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreSpec {
    Embedded(PathBuf),
    /// The full URL, possibly with credentials: never print it, use [`StoreSpec::describe`].
    Couch(String),
}

impl StoreSpec {
    /// `http://…` or `https://…` is CouchDB; anything else is a file path. `None` gives the
    /// default embedded store in the user's data directory.
    pub fn parse(spec: Option<&str>) -> StoreSpec {
        match spec.map(str::trim).filter(|s| !s.is_empty()) {
            Some(s) if s.starts_with("http://") || s.starts_with("https://") => StoreSpec::Couch(s.to_string()),
            Some(s) => StoreSpec::Embedded(PathBuf::from(s)),
            None => StoreSpec::Embedded(default_path()),
        }
    }

    /// A description safe for logs and messages.
    pub fn describe(&self) -> String {
        match self {
            StoreSpec::Embedded(p) => p.display().to_string(),
            StoreSpec::Couch(url) => redact(url),
        }
    }

    /// What tells two specs of one database apart from specs of two: the file's canonical
    /// path (`data` in two folders is two databases), or the URL without its credentials
    /// and trailing slash. Safe to show.
    pub fn identity(&self) -> String {
        match self {
            StoreSpec::Embedded(p) => {
                std::fs::canonicalize(p).or_else(|_| std::path::absolute(p)).unwrap_or_else(|_| p.clone()).display().to_string()
            }
            StoreSpec::Couch(url) => redact(url).trim_end_matches('/').to_string(),
        }
    }
}

/// `<data dir>/raindrop/raindrop-data`, e.g. `~/.local/share/raindrop/raindrop-data`.
pub fn default_path() -> PathBuf {
    dirs::data_dir().unwrap_or_else(|| PathBuf::from(".")).join("raindrop").join("raindrop-data")
}

/// Opens (creating if needed) the store a spec names.
pub fn open(spec: &StoreSpec) -> Result<Arc<dyn Store>, StoreError> {
    Ok(match spec {
        StoreSpec::Embedded(path) => Arc::new(EmbeddedStore::open(path)?),
        StoreSpec::Couch(url) => Arc::new(CouchStore::open(url, RetryPolicy::default())?),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_couch_and_the_rest_are_paths() {
        assert_eq!(StoreSpec::parse(Some("http://h:5984/db")), StoreSpec::Couch("http://h:5984/db".into()));
        assert_eq!(StoreSpec::parse(Some("./x.db")), StoreSpec::Embedded("./x.db".into()));
        assert!(matches!(StoreSpec::parse(None), StoreSpec::Embedded(p) if p.ends_with("raindrop/raindrop-data")));
        assert_eq!(StoreSpec::parse(Some("http://u:pw@h/db")).describe(), "http://h/db");
    }
}
