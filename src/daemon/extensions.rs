//! The extensions folder as a running daemon sees it: loading its files into a pool (keeping
//! the last version of a file that loaded when a new one does not), and noticing when anything
//! in it changes.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use crate::js::extension::{self, ExtensionError, ExtensionSource};
use crate::js::{JsPool, PoolConfig, PoolError};
use crate::metrics::LoadFailure;

/// Why the folder could not be taken up.
#[derive(Debug, thiserror::Error)]
pub enum FolderError {
    #[error(transparent)]
    Read(#[from] ExtensionError),
    #[error(transparent)]
    Pool(#[from] PoolError),
}

/// What a change to the folder is noticed by: each `.js` file's (and library's) modification
/// time and length.
pub(super) type Snapshot = BTreeMap<PathBuf, (Option<SystemTime>, u64)>;

/// The folder's `*.js` files and `lib/*.js`, as they stand.
pub(super) fn snapshot(dir: &Path) -> Snapshot {
    snapshot_of(&[dir.to_path_buf(), dir.join("lib")])
}

/// The `*.js` files directly in each of `folders`, as they stand.
pub(super) fn snapshot_of(folders: &[PathBuf]) -> Snapshot {
    let mut out = Snapshot::new();
    for folder in folders {
        let Ok(entries) = std::fs::read_dir(folder) else { continue };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.extension().is_some_and(|e| e == "js") {
                if let Ok(meta) = entry.metadata() {
                    out.insert(path, (meta.modified().ok(), meta.len()));
                }
            }
        }
    }
    out
}

/// Loads the folder's extensions, remembering each file's last version that loaded.
#[derive(Default)]
pub(super) struct Loader {
    /// Per file, the last version of it that loaded (its source and libraries) and its id.
    last_good: HashMap<PathBuf, (ExtensionSource, String)>,
}

/// A loaded folder: the pool, and the files that failed (with the version kept, if any).
pub(super) struct Loaded {
    pub(super) pool: JsPool,
    pub(super) failures: Vec<LoadFailure>,
    /// The ids of extensions whose file is still there but failed to load with no other
    /// version to run: not running, but not gone either — their outputs stay.
    pub(super) stalled: BTreeSet<String>,
}

impl Loader {
    /// Starts a pool of the folder's extensions (with its libraries) with `config`. A file that
    /// fails to load while an earlier version of it (or of its libraries) loaded is replaced
    /// by that version, and reported all the same.
    pub(super) fn load(&mut self, dir: &Path, config: &PoolConfig) -> Result<Loaded, FolderError> {
        let mut sources = extension::read_dir(dir)?;
        let mut pool = JsPool::start(sources.clone(), config.clone())?;
        let mut failures = Vec::new();
        let mut replaced = false;
        for (i, ext) in pool.extensions().iter().enumerate() {
            let Err(error) = &ext.declaration else { continue };
            let last = self.last_good.get(&ext.source.path);
            // The same version failing again (a time limit on a busy machine, say) is not
            // tried a second time; it stalls until the file changes.
            let kept = last.filter(|(old, _)| old.source != ext.source.source || old.libs != ext.source.libs);
            let note = match (kept, last) {
                (Some(_), _) => "; the last version that loaded keeps running",
                (None, Some(_)) => "; its outputs stay until it loads again or its file is removed",
                (None, None) => "",
            };
            failures.push(LoadFailure { file: ext.source.file_name(), error: format!("{error}{note}") });
            if let Some((old, _)) = kept {
                sources[i] = old.clone();
                replaced = true;
            }
        }
        if replaced {
            drop(pool);
            pool = JsPool::start(sources, config.clone())?;
        }
        let mut stalled = BTreeSet::new();
        for ext in pool.extensions() {
            match ext.id() {
                Some(id) => {
                    self.last_good.insert(ext.source.path.clone(), (ext.source.clone(), id.to_string()));
                }
                None => stalled.extend(self.last_good.get(&ext.source.path).map(|(_, id)| id.clone())),
            }
        }
        self.last_good.retain(|path, _| path.exists());
        Ok(Loaded { pool, failures, stalled })
    }
}
