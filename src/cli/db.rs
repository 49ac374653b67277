//! `raindrop db …`: debug commands that work the same on both stores.

use std::io::Write;
use std::process::ExitCode;

use anyhow::Context;
use clap::Subcommand;
use serde_json::Value;

use raindrop::store::{Doc, Seq, WriteResult};

use super::Settings;

#[derive(Subcommand, Debug, Clone)]
pub enum DbCommand {
    /// Database summary: document counts, update sequence, backend.
    Info,
    /// Print one document.
    Get {
        id: String,
        /// Inline attachment bodies (base64).
        #[arg(long)]
        attachments: bool,
    },
    /// Write one document from JSON text or @file; a conflict exits non-zero.
    Put { doc: String },
    /// Print the changes feed, one JSON line per change, then the last sequence.
    Changes {
        #[arg(long)]
        since: Option<String>,
        #[arg(long, default_value_t = 100)]
        limit: usize,
        /// Include each document.
        #[arg(long)]
        docs: bool,
    },
    /// Bulk-write a file of JSON lines (one document per line; `-` for stdin).
    Load { file: String },
    /// Print every live document as one JSON line, optionally only those of one schema.
    Dump {
        #[arg(long)]
        schema: Option<String>,
    },
    /// Print the megaview's rows for one question, one JSON line each ({id, key, value}):
    /// --key (with --schema: that document), --schema (with --field and --value: by a field's
    /// value, an expandable field by element; with --field and --prefix: the values that are
    /// arrays starting so, in order), --ext and/or --source, or --dep. --count prints how many.
    Megaview(MegaviewArgs),
}

#[derive(clap::Args, Debug, Clone)]
pub struct MegaviewArgs {
    /// An rd_key, as JSON: `["email", "a@example.com"]`.
    #[arg(long)]
    key: Option<String>,
    #[arg(long)]
    schema: Option<String>,
    #[arg(long)]
    field: Option<String>,
    /// The field's value, as JSON (`'"text"'`, `42`, `["email", "a@b"]`).
    #[arg(long, requires = "field")]
    value: Option<String>,
    /// Instead of --value: the first elements of the array values asked, as a JSON array
    /// (`'["tag"]'`); rows come in the values' order.
    #[arg(long, requires = "field", conflicts_with = "value")]
    prefix: Option<String>,
    /// Print the number of rows instead of the rows.
    #[arg(long)]
    count: bool,
    /// A source document's id (`null`: raw data, with no source).
    #[arg(long)]
    source: Option<String>,
    /// An extension's id.
    #[arg(long)]
    ext: Option<String>,
    /// A dependency, as JSON: `[rd_key, schema id]`.
    #[arg(long)]
    dep: Option<String>,
    #[arg(long, default_value_t = 1000)]
    limit: usize,
    #[arg(long, default_value_t = 0)]
    skip: usize,
    #[arg(long)]
    descending: bool,
}

impl MegaviewArgs {
    fn ask(&self) -> anyhow::Result<raindrop::schema::ViewAsk> {
        let json = |name: &str, text: &Option<String>| -> anyhow::Result<Option<Value>> {
            text.as_deref().map(|t| serde_json::from_str(t).with_context(|| format!("--{name} must be JSON: {t}"))).transpose()
        };
        Ok(raindrop::schema::ViewAsk {
            key: json("key", &self.key)?,
            schema: self.schema.clone(),
            field: self.field.clone(),
            value: json("value", &self.value)?,
            prefix: match json("prefix", &self.prefix)? {
                None => None,
                Some(Value::Array(items)) => Some(items),
                Some(other) => anyhow::bail!("--prefix must be a JSON array, not {other}"),
            },
            source: self.source.as_deref().map(|s| (s != "null").then(|| s.to_string())),
            ext: self.ext.clone(),
            dep: json("dep", &self.dep)?,
        })
    }
}

pub fn run(settings: &Settings, cmd: &DbCommand) -> anyhow::Result<ExitCode> {
    let store = settings.open_store()?;
    let mut out = std::io::stdout().lock();
    match cmd {
        DbCommand::Info => {
            writeln!(out, "{}", serde_json::to_string_pretty(&store.info()?)?)?;
        }
        DbCommand::Get { id, attachments } => match store.get(id, *attachments)? {
            Some(doc) => writeln!(out, "{}", serde_json::to_string_pretty(&doc)?)?,
            None => {
                eprintln!("error: no document {id}");
                return Ok(ExitCode::from(1));
            }
        },
        DbCommand::Put { doc } => {
            let text = match doc.strip_prefix('@') {
                Some(path) => std::fs::read_to_string(path).with_context(|| format!("cannot read {path}"))?,
                None => doc.clone(),
            };
            let doc: Doc = serde_json::from_str(&text).context("the document is not a JSON object")?;
            match store.bulk_write(vec![doc])?.pop() {
                Some(WriteResult::Ok { id, rev }) => writeln!(out, "{}", serde_json::json!({"ok": true, "id": id, "rev": rev}))?,
                Some(WriteResult::Conflict { id }) => {
                    eprintln!("error: conflict: {id} has changed (give its current _rev to update it)");
                    return Ok(ExitCode::from(1));
                }
                Some(WriteResult::Error { id, reason }) => {
                    eprintln!("error: {id}: {reason}");
                    return Ok(ExitCode::from(1));
                }
                None => anyhow::bail!("the store returned no result"),
            }
        }
        DbCommand::Changes { since, limit, docs } => {
            let since = since.as_deref().map(Seq::from_raw).unwrap_or_else(Seq::zero);
            let page = store.changes(&since, *limit, *docs)?;
            for c in &page.changes {
                let mut line = serde_json::json!({"seq": c.seq.as_str(), "id": c.id, "rev": c.rev});
                if c.deleted {
                    line["deleted"] = Value::Bool(true);
                }
                if let Some(doc) = &c.doc {
                    line["doc"] = Value::Object(raindrop::store::parse_doc(doc)?);
                }
                writeln!(out, "{line}")?;
            }
            writeln!(out, "{}", serde_json::json!({"last_seq": page.last_seq.as_str()}))?;
        }
        DbCommand::Load { file } => return load(&*store, file),
        DbCommand::Dump { schema } => {
            let mut since = Seq::zero();
            loop {
                let page = store.changes(&since, 1000, true)?;
                if page.changes.is_empty() {
                    break;
                }
                for c in page.changes {
                    let Some(text) = c.doc.filter(|_| !c.deleted) else { continue };
                    // Printed again, members in name order, as every version has.
                    let doc = raindrop::store::parse_doc(&text)?;
                    if let Some(s) = schema {
                        if doc.get("rd_schema_id").and_then(Value::as_str) != Some(s) {
                            continue;
                        }
                    }
                    writeln!(out, "{}", serde_json::to_string(&doc)?)?;
                }
                since = page.last_seq;
            }
        }
        DbCommand::Megaview(args) => megaview(&*store, args, &mut out)?,
    }
    Ok(ExitCode::SUCCESS)
}

/// `db megaview`: the question's rows, one JSON line each, or with `--count` their number.
fn megaview(store: &dyn raindrop::store::Store, args: &MegaviewArgs, out: &mut impl Write) -> anyhow::Result<()> {
    let key = args.ask()?.key(store).map_err(anyhow::Error::msg)?;
    if args.count {
        writeln!(out, "{}", store.megaview_count(&key)?)?;
        return Ok(());
    }
    let query = raindrop::store::ViewQuery { key, limit: args.limit, skip: args.skip, descending: args.descending };
    for row in store.megaview(&query)? {
        writeln!(out, "{}", serde_json::to_string(&row)?)?;
    }
    Ok(())
}

fn load(store: &dyn raindrop::store::Store, file: &str) -> anyhow::Result<ExitCode> {
    let docs = super::read_json_lines(file)?;
    let (mut written, mut failed) = (0u64, 0u64);
    for chunk in docs.chunks(1000) {
        let (ok, refused) = super::tally(store.bulk_write(chunk.to_vec())?, file);
        written += ok;
        failed += refused;
    }
    eprintln!("{written} written, {failed} refused");
    Ok(if failed > 0 { ExitCode::from(1) } else { ExitCode::SUCCESS })
}
