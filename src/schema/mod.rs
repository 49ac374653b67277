//! Formal schema definitions: one JS file per schema (`schema({id, version, fields, …})`),
//! read from the bundled `schemas/` folder, a `schemas/` folder inside the extensions folder and
//! `--schemas DIR` (a later folder's definition of an id replaces an earlier one's).
//!
//! Checking an emitted item is the driver's job, in the extension's own sandbox at the
//! `emit_schema` call (so the error names the line); this module reads the files, has the
//! driver describe them (a definition that does not load is reported and left out, like an
//! extension), and hands the pool their sources ([`Definitions::sources`]). `install.rs`
//! writes them into the database as `rd.schema.definition` documents and upgrades the
//! documents of a schema whose version went up.

mod bundled;
mod install;
mod view;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::js::extension::{read_dir, ExtensionError, ExtensionSource, SchemaDecl, SchemaSources};
use crate::js::{JsPool, PoolConfig, PoolError};

pub use install::{install, report, InstallError, Installed, DEFINITION_SCHEMA};
pub use view::ViewAsk;

/// One loaded definition.
#[derive(Debug, Clone)]
pub struct Definition {
    pub decl: SchemaDecl,
    pub source: ExtensionSource,
}

/// Every definition that loaded, those that did not, and the pools that ran them (kept for
/// upgrades: each definition file is an "extension" of its pool whose handler is its
/// `upgrade`). The bundled definitions and each of the user's folders load in pools of their
/// own, so a later folder's definition of an id replaces an earlier one's instead of clashing
/// with it (two files of one folder defining one id do clash, and the second is reported).
pub struct Definitions {
    /// Id → the definition, its pool (index in `pools`) and its file's index in that pool.
    by_id: HashMap<String, (Definition, usize, usize)>,
    /// `(file, why)` of each definition file that did not load.
    pub failed: Vec<(String, String)>,
    /// Items of a schema without a definition are errors.
    pub strict: bool,
    pools: Vec<JsPool>,
}

#[derive(Debug, thiserror::Error)]
pub enum SchemaError {
    #[error("cannot read the schema definitions: {0}")]
    Read(#[from] ExtensionError),
    #[error("cannot load the schema definitions: {0}")]
    Pool(#[from] PoolError),
}

/// The folders a user's definitions are read from, in order: `<extensions>/schemas/`, then
/// `extra` (`--schemas DIR`); those that do not exist are skipped. The bundled definitions
/// (the repository's `schemas/`) are built into the binary and come first ([`bundled`]).
pub fn folders(extensions: &Path, extra: Option<&Path>) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = Some(extensions.join("schemas")).filter(|p| p.is_dir()).into_iter().collect();
    // Given on purpose: one that is not there is an error when read, not silently nothing.
    out.extend(extra.map(Path::to_path_buf));
    out.dedup_by_key(|p| p.canonicalize().unwrap_or_else(|_| p.clone()));
    out
}

impl Definitions {
    /// No definitions: nothing is checked.
    pub fn none() -> Definitions {
        Definitions { by_id: HashMap::new(), failed: Vec::new(), strict: false, pools: Vec::new() }
    }

    /// Loads the bundled definitions, then every definition file of each of `dirs` in turn
    /// (see [`folders`]): a later folder's definition of an id replaces an earlier one's.
    pub fn load(dirs: &[PathBuf], strict: bool, threads: usize) -> Result<Definitions, SchemaError> {
        let mut defs = Definitions { strict, ..Definitions::none() };
        defs.load_group(bundled::sources(), threads)?;
        for dir in dirs {
            defs.load_group(read_dir(dir)?, threads)?;
        }
        Ok(defs)
    }

    /// Loads `files` in a pool of their own; their definitions replace earlier ones of an id.
    fn load_group(&mut self, files: Vec<ExtensionSource>, threads: usize) -> Result<(), SchemaError> {
        if files.is_empty() {
            return Ok(());
        }
        let pool = JsPool::start(files, PoolConfig::new(threads))?;
        let p = self.pools.len();
        for (i, loaded) in pool.extensions().iter().enumerate() {
            let file = loaded.source.file_name();
            match &loaded.declaration {
                Ok(d) => match &d.schema {
                    Some(decl) => {
                        self.by_id.insert(decl.id.clone(), (Definition { decl: decl.clone(), source: loaded.source.clone() }, p, i));
                    }
                    None => self.failed.push((file, "not a schema definition: the file declares an extension or routes".into())),
                },
                // The pool names a definition file's "extension" `schema:<id>`: said plainly.
                Err(e) => self.failed.push((file, e.replace("extension id schema:", "schema "))),
            }
        }
        self.pools.push(pool);
        Ok(())
    }

    /// What the extensions' pool checks emitted items against.
    pub fn sources(&self) -> Arc<SchemaSources> {
        let by_id = self.by_id.iter().map(|(id, (d, _, _))| (id.clone(), d.source.clone())).collect();
        Arc::new(SchemaSources { by_id, strict: self.strict })
    }

    pub fn get(&self, id: &str) -> Option<&Definition> {
        self.by_id.get(id).map(|(d, _, _)| d)
    }

    /// Every definition, by id.
    pub fn iter(&self) -> impl Iterator<Item = &Definition> {
        let mut all: Vec<&Definition> = self.by_id.values().map(|(d, _, _)| d).collect();
        all.sort_by(|a, b| a.decl.id.cmp(&b.decl.id));
        all.into_iter()
    }

    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }

    /// The pool and the index of `id`'s file in it, to run its upgrade.
    fn upgrader(&self, id: &str) -> Option<(&JsPool, usize)> {
        let (_, p, i) = self.by_id.get(id)?;
        Some((self.pools.get(*p)?, *i))
    }
}
