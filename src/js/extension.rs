//! Extensions as files: finding them in a folder, their declarations, and their fingerprints.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

/// The libraries extensions may load with `load_lib(name)`: name → source.
pub type Libs = BTreeMap<String, String>;

/// One extension's source, as read from its `.js` file, with the libraries it may load.
#[derive(Debug, Clone)]
pub struct ExtensionSource {
    /// Where it was read from; also the file name JS errors and stacks report.
    pub path: PathBuf,
    pub source: String,
    /// The `lib/` of its folder when it was read. They travel with the source, so that a
    /// version kept because a newer one fails to load keeps the libraries it loaded with.
    pub libs: Arc<Libs>,
}

impl ExtensionSource {
    /// The file alone, with no libraries (see [`read_dir`] for a folder's).
    /// A file that is not UTF-8 is read with its bad bytes as U+FFFD: it then fails to load
    /// on its own (at the line of the bad bytes) instead of keeping the whole folder from
    /// being read.
    pub fn read(path: &Path) -> Result<ExtensionSource, ExtensionError> {
        let bytes = std::fs::read(path).map_err(|e| ExtensionError::Read { path: path.to_path_buf(), source: e })?;
        let source = match String::from_utf8(bytes) {
            Ok(text) => text,
            Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
        };
        Ok(ExtensionSource { path: path.to_path_buf(), source, libs: Arc::default() })
    }

    /// The file with the libraries of the folder it is in.
    pub fn read_with_libs(path: &Path) -> Result<ExtensionSource, ExtensionError> {
        let libs = Arc::new(read_libs(path.parent().unwrap_or(Path::new(".")))?);
        Ok(ExtensionSource { libs, ..ExtensionSource::read(path)? })
    }

    pub fn from_string(name: &str, source: &str) -> ExtensionSource {
        ExtensionSource { path: PathBuf::from(name), source: source.to_string(), libs: Arc::default() }
    }

    /// The name shown in errors: the path as given.
    pub fn file_name(&self) -> String {
        self.path.display().to_string()
    }

    /// A fingerprint of the code that runs for this extension: its source and the driver's.
    /// Outputs record it, so editing an extension (or upgrading the driver) reprocesses.
    pub fn fingerprint(&self) -> String {
        self.fingerprint_with(&[])
    }

    /// [`ExtensionSource::fingerprint`] taking in libraries it loaded: (name, source) pairs.
    pub fn fingerprint_with(&self, libs: &[(&str, &str)]) -> String {
        let mut parts: Vec<&[u8]> = vec![super::engine::DRIVER_SOURCE.as_bytes(), self.source.as_bytes()];
        for (name, source) in libs {
            parts.push(name.as_bytes());
            parts.push(source.as_bytes());
        }
        crate::digest::digest(&parts)
    }
}

/// The libraries extensions may load (`load_lib(name)`): every `lib/<name>.js` in `dir`, by
/// name. No `lib/` folder is no library.
fn read_libs(dir: &Path) -> Result<Libs, ExtensionError> {
    let lib = dir.join("lib");
    if !lib.is_dir() {
        return Ok(Default::default());
    }
    Ok(js_files(&lib)?.into_iter().filter_map(|s| Some((s.path.file_stem()?.to_string_lossy().into_owned(), s.source))).collect())
}

/// Every `*.js` file directly in `dir` (sorted by name, so every runtime loads them alike),
/// each with the libraries of `dir/lib/`.
pub fn read_dir(dir: &Path) -> Result<Vec<ExtensionSource>, ExtensionError> {
    let libs = Arc::new(read_libs(dir)?);
    Ok(js_files(dir)?.into_iter().map(|s| ExtensionSource { libs: libs.clone(), ..s }).collect())
}

fn js_files(dir: &Path) -> Result<Vec<ExtensionSource>, ExtensionError> {
    let entries = std::fs::read_dir(dir).map_err(|e| ExtensionError::Read { path: dir.to_path_buf(), source: e })?;
    let mut paths = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| ExtensionError::Read { path: dir.to_path_buf(), source: e })?;
        let path = entry.path();
        if path.extension().is_some_and(|e| e == "js") && path.is_file() {
            paths.push(path);
        }
    }
    paths.sort();
    paths.iter().map(|p| ExtensionSource::read(p)).collect()
}

/// The schema definitions emitted items are checked against, by schema id: the driver
/// evaluates one in an extension's sandbox the first time that extension emits the schema.
#[derive(Debug, Clone, Default)]
pub struct SchemaSources {
    pub by_id: std::collections::HashMap<String, ExtensionSource>,
    /// An item of a schema without a definition is an error (by default it is written).
    pub strict: bool,
}

impl SchemaSources {
    /// What the driver evaluates for schema `id`: the definition file wrapped in a function of
    /// `schema` (so its `schema({...})` call hands the definition to the driver, whatever the
    /// extension calls `schema`), or `null` for no definition — `false` in strict mode.
    pub(super) fn definition_source(&self, id: &str) -> (String, String) {
        match self.by_id.get(id) {
            // On the first line, so the file's line numbers stay its own.
            Some(file) => (file.file_name(), format!("(function (schema) {{ {}\n}})", file.source)),
            None => (format!("schemas/{id}.js"), if self.strict { "false" } else { "null" }.to_string()),
        }
    }
}

/// What `extension({...})` declared, as validated by the driver.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Declaration {
    pub id: String,
    /// `None`: the extension chooses with its `filter` function.
    pub source_schemas: Option<Vec<String>>,
    /// `None`: the handler gets whole documents; else only these top-level fields (and the
    /// document's `_id`, `_rev`, `rd_key` and `rd_schema_id`).
    #[serde(default)]
    pub source_fields: Option<Vec<String>>,
    pub category: Category,
    pub confidence: f64,
    /// Overrides the pool's per-call time limit.
    pub time_limit_ms: Option<f64>,
    #[serde(default)]
    pub uses_dependencies: bool,
    /// `[schema id, field]` pairs it finds documents by: indexed before the pipeline starts.
    #[serde(default)]
    pub indexes: Vec<(String, String)>,
    /// Its later_handler's values are independent of one another: they may be handled in
    /// parts, side by side (a document emitted by two parts comes out the same from each).
    #[serde(default)]
    pub later_in_parts: bool,
    /// Its later_handler is called once per thread with every value and its share
    /// (`{index, count}`): it handles what falls in its share (`later_in_parts: "shared"`, for
    /// values that belong together in ways only the handler can tell — a conversation's).
    #[serde(default)]
    pub later_shared: bool,
    /// Its later_handler is also given `{"deleted": [rd_key, schema_id]}` for each deleted
    /// document its `source_schemas` or `filter` takes: what it keeps from documents that go
    /// must go too (a summary of a message whose grouping tag was withdrawn).
    #[serde(default)]
    pub later_deletions: bool,
    #[serde(default)]
    pub has_filter: bool,
    #[serde(default)]
    pub has_later_handler: bool,
    /// `file:line` of the `extension(` call.
    #[serde(default)]
    pub site: String,
    /// The `lib/` files it loaded with `load_lib`, in order.
    #[serde(default)]
    pub libs: Vec<String>,
    /// For a file of the API folder: the routes it declared (and no extension).
    #[serde(default)]
    pub routes: Vec<RouteDecl>,
    /// For a schema definition file: what its `schema({...})` declared (and no extension).
    #[serde(default)]
    pub schema: Option<SchemaDecl>,
}

/// What a definition file's `schema({...})` declared, as the driver validated it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SchemaDecl {
    pub id: String,
    pub version: u32,
    /// Field name → type (`string`, `[identity]?`, …; the driver owns the grammar).
    pub fields: BTreeMap<String, String>,
    /// Array fields whose elements each get a row of their own in the megaview.
    pub expandable: Vec<String>,
    /// Fields not listed are allowed.
    pub open: bool,
    pub has_validate: bool,
    pub has_upgrade: bool,
}

/// One `route({method, path, handler})` of an API file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RouteDecl {
    pub method: String,
    /// `/things/:id`: segments, a `:name` one matching any segment.
    pub path: String,
    /// `file:line:column` of the `route(` call.
    pub site: String,
    pub time_limit_ms: Option<f64>,
}

impl RouteDecl {
    /// The declared time limit per request, if any (see [`Declaration::time_limit`]).
    pub fn time_limit(&self) -> Option<std::time::Duration> {
        let ms = self.time_limit_ms?;
        (1.0..=MAX_TIME_LIMIT_MS).contains(&ms).then(|| std::time::Duration::from_secs_f64(ms / 1000.0))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Category {
    Provider,
    Extender,
    Smart,
}

/// The longest time limit an extension may declare (the driver refuses more): an hour.
pub const MAX_TIME_LIMIT_MS: f64 = 3_600_000.0;

impl Declaration {
    /// The declared time limit per call, if any. The driver checks the range; a value out of it
    /// (a declaration not made by the driver) counts as none rather than as no limit at all.
    pub fn time_limit(&self) -> Option<std::time::Duration> {
        let ms = self.time_limit_ms?;
        (1.0..=MAX_TIME_LIMIT_MS).contains(&ms).then(|| std::time::Duration::from_secs_f64(ms / 1000.0))
    }
}

impl std::fmt::Display for Category {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Category::Provider => "provider",
            Category::Extender => "extender",
            Category::Smart => "smart",
        })
    }
}

/// An extension as the pool loaded it: its declaration, or why it has none.
#[derive(Debug, Clone)]
pub struct LoadedExtension {
    pub source: ExtensionSource,
    pub declaration: Result<Declaration, String>,
    /// The fingerprint of the code that runs for it: the driver, its source and the libraries it
    /// loaded (see [`ExtensionSource::fingerprint`]).
    pub fingerprint: String,
}

impl LoadedExtension {
    /// An extension as loaded, its fingerprint taking in the sources of the libraries its
    /// declaration says it loaded.
    pub fn new(source: ExtensionSource, declaration: Result<Declaration, String>) -> LoadedExtension {
        let used: Vec<(&str, &str)> = match &declaration {
            Ok(d) => d.libs.iter().map(|name| (name.as_str(), source.libs.get(name).map(String::as_str).unwrap_or_default())).collect(),
            Err(_) => Vec::new(),
        };
        let fingerprint = source.fingerprint_with(&used);
        LoadedExtension { source, declaration, fingerprint }
    }

    pub fn id(&self) -> Option<&str> {
        self.declaration.as_ref().ok().map(|d| d.id.as_str())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ExtensionError {
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read_dir_takes_only_js_files_in_name_order() {
        let dir = std::env::temp_dir().join(format!("rd-ext-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("b.js"), "b").unwrap();
        std::fs::write(dir.join("a.js"), "a").unwrap();
        std::fs::write(dir.join("notes.txt"), "x").unwrap();
        let got: Vec<_> = read_dir(&dir).unwrap().into_iter().map(|s| s.source).collect();
        assert_eq!(got, vec!["a", "b"]);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
