//! `raindrop init`: a commented configuration file to start from.

use std::path::Path;
use std::process::ExitCode;

use anyhow::Context;

/// The file `init` writes: every key, commented, with its default.
const TEMPLATE: &str = r#"# Raindrop's configuration. Flags and environment variables win over what is here.
# Every key is optional; the values shown commented out are the defaults.

# The database: a path for the embedded store, or a CouchDB URL (put the password in
# RAINDROP_DB_PASSWORD rather than here).
# db = "~/.local/share/raindrop/raindrop-data"
# db = "http://raindrop@127.0.0.1:5984/raindrop"

# The folder of extension .js files (lib/ inside it holds libraries for load_lib).
# extensions = "js-extensions"
# Your own schema definitions (one schema({...}) file each; a schemas/ folder inside the
# extensions folder is read too). strict_schemas makes an item of a schema with no definition an error.
# schemas = "my-schemas"
# strict_schemas = false

# JS worker threads, each with its own SpiderMonkey runtime (1 to 64; default: cores).
# js_threads = 2

# Your own identities: messages from them are "sent", to them "received".
# identities = [["email", "me@example.com"]]

# How often `raindrop run` syncs the mail accounts, in seconds.
# sync_interval_secs = 300

# Where `raindrop run` serves /status, /metrics, /healthz, the JS API under /api/ and the
# mail page at / ("off" for nowhere).
# listen = "127.0.0.1:5985"

# The token HTTP requests must carry (Authorization: Bearer <token>); required when listening
# on an address that is not loopback. RAINDROP_API_TOKEN wins over it.
# api_token = "a long random string"

# The folder of API files (JS declaring route({...})), served under /api/.
# api = "api"

# Pages of other origins that may call /api/ from a browser (CORS); none by default.
# cors_origins = ["https://mail.example.com"]

# Mail accounts, one [[accounts]] table each.
# [[accounts]]
# id = "work"                          # names the account in documents
# host = "imap.example.com"
# port = 993                           # default: 993 for tls, 143 otherwise
# security = "tls"                     # "tls", "starttls", or "plain" (loopback only)
# username = "me@example.com"
# password_env = "WORK_IMAP_PASSWORD"  # or password_file = "/path/to/file"; never stored or logged
# exclude_folders = ["Archive/2009"]   # Trash, Junk/Spam and All Mail are skipped anyway
# connections = 6                      # 1 to 6
# timeout_secs = 60                    # connect, and each read or write, may take this long
"#;

/// Writes the template to `path` (or the default place), unless a file is there already.
pub fn write(path: Option<&Path>, force: bool) -> anyhow::Result<ExitCode> {
    let path = match path {
        Some(p) => p.to_path_buf(),
        None => raindrop::config::default_path().context("no configuration folder is known for this user")?,
    };
    if path.exists() && !force {
        eprintln!("{} exists already: nothing written (--force replaces it)", path.display());
        return Ok(ExitCode::from(1));
    }
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot make {}", dir.display()))?;
    }
    // Readable by its owner only: the token and account settings go in it.
    let mut file = std::fs::OpenOptions::new();
    file.write(true).create(true).truncate(true);
    std::os::unix::fs::OpenOptionsExt::mode(&mut file, 0o600);
    std::io::Write::write_all(&mut file.open(&path).with_context(|| format!("cannot write {}", path.display()))?, TEMPLATE.as_bytes())
        .with_context(|| format!("cannot write {}", path.display()))?;
    // The template must stay a valid configuration.
    raindrop::config::load(Some(&path))?;
    eprintln!("wrote {}", path.display());
    Ok(ExitCode::SUCCESS)
}
