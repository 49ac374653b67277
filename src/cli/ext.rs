//! `raindrop ext …`: the extension author's inner loop.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::Subcommand;

use raindrop::js::{extension, DocOutcome, ExtensionSource, HostFunctions, JsPool, PoolConfig};

use super::Settings;

#[derive(Subcommand, Debug)]
pub enum ExtCommand {
    /// List the extensions in the extensions folder, with their declarations or load errors.
    List {
        /// One JSON object per line instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Run one extension's handler on one document; print each emitted item as a JSON line.
    Run {
        /// The extension's `.js` file.
        file: PathBuf,
        /// The document: JSON text, or @path to a file holding it.
        #[arg(long)]
        doc: String,
    },
}

pub fn run(settings: &Settings, cmd: &ExtCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        ExtCommand::List { json } => list(settings, *json),
        ExtCommand::Run { file, doc } => run_one(file, doc),
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

fn run_one(file: &std::path::Path, doc: &str) -> anyhow::Result<ExitCode> {
    let text = match doc.strip_prefix('@') {
        Some(path) => std::fs::read_to_string(path).with_context(|| format!("cannot read {path}"))?,
        None => doc.to_string(),
    };
    // Checked (and normalised) in Rust first: a lone surrogate or bad JSON is a clear error here.
    let value: serde_json::Value = serde_json::from_str(&text).context("the document is not valid JSON")?;
    let source = ExtensionSource::read(file)?;
    // The helpers that need no database (raindrop.mail.parse) work here too.
    let mut config = PoolConfig::new(1);
    let mut host = HostFunctions::new();
    raindrop::host_api::register_without_store(&mut host);
    config.host_functions = host;
    let pool = JsPool::start(vec![source], config)?;
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
