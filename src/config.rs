//! The configuration file (`~/.config/raindrop/config.toml`, or `--config`), validated into a
//! [`FileConfig`]. Command-line flags and environment variables take precedence over it.

use std::path::{Path, PathBuf};

use serde::Deserialize;

/// What the configuration file may say. Unknown keys are an error, so typos are caught.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// Store spec: a path (embedded) or a CouchDB URL. Prefer `RAINDROP_DB_PASSWORD` to a
    /// password in the URL.
    pub db: Option<String>,
    /// Folder of extension files.
    pub extensions: Option<PathBuf>,
    /// Folder of the user's schema definitions (besides `<extensions>/schemas/`).
    pub schemas: Option<PathBuf>,
    /// An item of a schema without a definition is an error (default: written, and counted).
    #[serde(default)]
    pub strict_schemas: bool,
    /// JS worker threads.
    pub js_threads: Option<usize>,
    /// The user's own identities, e.g. `identities = [["email", "me@example.com"]]`.
    #[serde(default)]
    pub identities: Vec<(String, String)>,
    /// Mail accounts to sync (`[[accounts]]` tables; see `protocols::imap::ImapAccount`).
    #[serde(default)]
    pub accounts: Vec<crate::protocols::imap::ImapAccount>,
    /// How often `raindrop run` syncs the accounts (default 300 s).
    pub sync_interval_secs: Option<u64>,
    /// Where `raindrop run` listens for HTTP (default `127.0.0.1:5985`; `off`: nowhere).
    pub listen: Option<String>,
    /// The token HTTP requests must carry (`Authorization: Bearer …`); required when listening
    /// on an address that is not loopback. `RAINDROP_API_TOKEN` wins over it.
    pub api_token: Option<String>,
    /// Folder of API files, served under `/api/` (default `api`).
    pub api: Option<PathBuf>,
    /// Origins whose pages may call `/api/` from a browser (CORS); none by default.
    #[serde(default)]
    pub cors_origins: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read the config file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("the config file {path} is not valid: {message}")]
    Invalid { path: PathBuf, message: String },
}

/// `<config dir>/raindrop/config.toml`.
pub fn default_path() -> Option<PathBuf> {
    dirs::config_dir().map(|d| d.join("raindrop").join("config.toml"))
}

/// Reads the file at `path`; a missing default file is an empty config, a missing explicit
/// one is an error.
pub fn load(path: Option<&Path>) -> Result<FileConfig, ConfigError> {
    let (path, explicit) = match path {
        Some(p) => (p.to_path_buf(), true),
        None => match default_path() {
            Some(p) => (p, false),
            None => return Ok(FileConfig::default()),
        },
    };
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && !explicit => return Ok(FileConfig::default()),
        Err(source) => return Err(ConfigError::Read { path, source }),
    };
    toml::from_str(&text).map_err(|e| ConfigError::Invalid { path, message: e.message().to_string() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_config_file_is_read_and_typos_are_rejected() {
        let dir = std::env::temp_dir().join(format!("rd-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let good = dir.join("good.toml");
        std::fs::write(&good, "db = \"/tmp/x\"\njs_threads = 3\nidentities = [[\"email\", \"me@example.com\"]]\n").unwrap();
        let c = load(Some(&good)).unwrap();
        assert_eq!(c.db.as_deref(), Some("/tmp/x"));
        assert_eq!(c.js_threads, Some(3));
        assert_eq!(c.identities, vec![("email".to_string(), "me@example.com".to_string())]);
        let bad = dir.join("bad.toml");
        std::fs::write(&bad, "dbb = 1\n").unwrap();
        assert!(matches!(load(Some(&bad)), Err(ConfigError::Invalid { .. })));
        assert!(matches!(load(Some(&dir.join("missing.toml"))), Err(ConfigError::Read { .. })));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
