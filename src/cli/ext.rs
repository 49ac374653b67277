//! `raindrop ext …`: the extension author's inner loop.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::Subcommand;

use raindrop::js::{extension, DocOutcome, ExtensionSource, HostFunctions, JsPool, PoolConfig};

use super::Settings;

#[derive(Subcommand, Debug, Clone)]
pub enum ExtCommand {
    /// List the extensions in the extensions folder, with their declarations or load errors.
    List {
        /// One JSON object per line instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Run one extension's handler on a document — given, or read from the database — with
    /// every host function it has in the daemon; print each emitted item as a JSON line.
    /// Nothing is written.
    #[command(group(clap::ArgGroup::new("input").required(true).args(["doc", "id", "schema"])))]
    Run {
        /// The extension's `.js` file.
        file: PathBuf,
        /// The document: JSON text, or @path to a file holding it.
        #[arg(long)]
        doc: Option<String>,
        /// The id of a document in the database (--db) to run on.
        #[arg(long)]
        id: Option<String>,
        /// Run on documents of this schema from the database (--db), up to --limit.
        #[arg(long)]
        schema: Option<String>,
        /// How many documents of --schema.
        #[arg(long, default_value_t = 10)]
        limit: usize,
    },
}

pub fn run(settings: &Settings, cmd: &ExtCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        ExtCommand::List { json } => list(settings, *json),
        ExtCommand::Run { file, doc: Some(doc), .. } => run_one(settings, file, doc),
        ExtCommand::Run { file, id, schema, limit, .. } => run_on_db(settings, file, id.as_deref(), schema.as_deref(), *limit),
    }
}

fn list(settings: &Settings, json: bool) -> anyhow::Result<ExitCode> {
    let sources = extension::read_dir(&settings.extensions)?;
    let pool = JsPool::start(sources, PoolConfig::new(1))?;
    let mut out = std::io::stdout().lock();
    let mut failed = false;
    for ext in pool.extensions() {
        let file = ext.source.file_name();
        match &ext.declaration {
            Ok(d) if json => {
                // The whole declaration as the driver validated it, and the file it came from.
                let mut line = serde_json::to_value(d)?;
                if let Some(fields) = line.as_object_mut() {
                    fields.insert("file".into(), serde_json::json!(file));
                }
                writeln!(out, "{line}")?
            }
            Ok(d) => {
                let schemas = d.source_schemas.as_ref().map_or("(filter)".to_string(), |s| s.join(","));
                writeln!(out, "{:<40} {:<9} {:>4}  {:<30} {}", d.id, d.category.to_string(), d.confidence, schemas, file)?
            }
            Err(e) if json => {
                failed = true;
                writeln!(out, "{}", serde_json::json!({ "file": file, "error": e }))?
            }
            Err(e) => {
                failed = true;
                writeln!(out, "{:<40} {e}", "(load error)")?
            }
        }
    }
    Ok(if failed { ExitCode::from(1) } else { ExitCode::SUCCESS })
}

/// Runs the extension on documents of the database, with every host function (reads only:
/// `update_documents` refuses), printing each item with the source it came from.
fn run_on_db(
    settings: &Settings,
    file: &std::path::Path,
    id: Option<&str>,
    schema: Option<&str>,
    limit: usize,
) -> anyhow::Result<ExitCode> {
    // Only read: a database that is not there is not made.
    if let raindrop::store::StoreSpec::Embedded(path) = &settings.store {
        anyhow::ensure!(path.exists(), "there is no database at {} (--db)", path.display());
    }
    let store = settings.open_store()?;
    let docs: Vec<String> = match (id, schema) {
        (Some(id), _) => match store.get_many(&[id.to_string()], None)?.pop().flatten() {
            Some(doc) => vec![doc],
            None => anyhow::bail!("no document {id} in {}", settings.store.describe()),
        },
        (None, Some(schema)) => {
            store.find(&raindrop::store::Find { schema, by: None, limit: limit.max(1), fields: None })?.into_iter().flatten().collect()
        }
        (None, None) => unreachable!("clap requires --doc, --id or --schema"),
    };
    if docs.is_empty() {
        anyhow::bail!("no document of schema {} in {}", schema.unwrap_or_default(), settings.store.describe());
    }
    let mut host = HostFunctions::new();
    raindrop::host_api::register_all(&mut host, store.clone(), settings.identities.clone());
    host.register("update_documents", |_, _| Err("update_documents: `raindrop ext run` writes nothing".into()));
    let pool = start_one(settings, file, host)?;
    let Some(declaration) = pool.extensions()[0].declaration.as_ref().ok().cloned() else {
        eprintln!("error: {}", pool.extensions()[0].declaration.as_ref().err().cloned().unwrap_or_default());
        return Ok(ExitCode::from(1));
    };
    let mut failed = false;
    let mut later = Vec::new();
    let mut out = std::io::stdout().lock();
    for text in docs {
        let source = raindrop::store::parse_doc(&text)?.get("_id").and_then(serde_json::Value::as_str).unwrap_or_default().to_string();
        let text = match &declaration.source_fields {
            Some(fields) => raindrop::pipeline::project(&text, fields).unwrap_or(text),
            None => text,
        };
        match pool.run(0, vec![Arc::from(text)]).outcomes.into_iter().next() {
            Some(DocOutcome::Emitted(emission)) => {
                for item in emission.items {
                    let mut line = serde_json::to_value(&item)?;
                    line["source"] = serde_json::json!(source);
                    writeln!(out, "{line}")?;
                }
                if !emission.later.is_empty() {
                    writeln!(out, "{}", serde_json::json!({ "source": source, "process_later": emission.later }))?;
                    later.extend(emission.later);
                }
            }
            Some(DocOutcome::Failed(e)) => {
                failed = true;
                eprintln!("error: {source}: {e}");
            }
            None => anyhow::bail!("the pool returned no outcome"),
        }
    }
    // The values given to process_later go to the later_handler, as the daemon's would.
    if declaration.has_later_handler && !later.is_empty() {
        match pool.run_later(0, later) {
            DocOutcome::Emitted(emission) => {
                for item in emission.items {
                    let mut line = serde_json::to_value(&item)?;
                    line["source"] = serde_json::json!("later_handler");
                    writeln!(out, "{line}")?;
                }
            }
            DocOutcome::Failed(e) => {
                failed = true;
                eprintln!("error: later_handler: {e}");
            }
        }
    }
    Ok(if failed { ExitCode::from(1) } else { ExitCode::SUCCESS })
}

/// A one-thread pool of the extension in `file`, with `host` and the libraries of its folder;
/// its items are checked against the schema definitions, as in the daemon.
fn start_one(settings: &Settings, file: &std::path::Path, host: HostFunctions) -> anyhow::Result<JsPool> {
    let source = ExtensionSource::read_with_libs(file)?;
    let mut config = PoolConfig::new(1);
    config.host_functions = host;
    config.schemas = settings.load_schemas()?.sources();
    Ok(JsPool::start(vec![source], config)?)
}

fn run_one(settings: &Settings, file: &std::path::Path, doc: &str) -> anyhow::Result<ExitCode> {
    let text = match doc.strip_prefix('@') {
        Some(path) => std::fs::read_to_string(path).with_context(|| format!("cannot read {path}"))?,
        None => doc.to_string(),
    };
    // Checked (and normalised) in Rust first: a lone surrogate or bad JSON is a clear error here.
    let value: serde_json::Value = serde_json::from_str(&text).context("the document is not valid JSON")?;
    // The helpers that need no database (raindrop.mail.parse) work here too.
    let mut host = HostFunctions::new();
    raindrop::host_api::register_without_store(&mut host);
    let pool = start_one(settings, file, host)?;
    let declaration = match &pool.extensions()[0].declaration {
        Ok(d) => d,
        Err(e) => {
            eprintln!("error: {e}");
            return Ok(ExitCode::from(1));
        }
    };
    // The handler sees the document as the pipeline would give it.
    let mut text = value.to_string();
    if let Some(fields) = &declaration.source_fields {
        text = raindrop::pipeline::project(&text, fields).unwrap_or(text);
    }
    let result = pool.run(0, vec![Arc::from(text)]);
    let mut out = std::io::stdout().lock();
    match result.outcomes.into_iter().next() {
        Some(DocOutcome::Emitted(emission)) => {
            for item in emission.items {
                writeln!(out, "{}", serde_json::to_string(&item)?)?;
            }
            Ok(ExitCode::SUCCESS)
        }
        Some(DocOutcome::Failed(e)) => {
            eprintln!("error: {e}");
            if let Some(stack) = e.stack.filter(|s| !s.is_empty()) {
                eprintln!("stack:\n{}", stack.trim_end());
            }
            Ok(ExitCode::from(1))
        }
        None => anyhow::bail!("the pool returned no outcome"),
    }
}
