//! Tidy: the invariants `docs/ARCHITECTURE.md` states, checked on the source text, so that the
//! codemap stays true — which layer may name which, `unsafe` only in the engine and always with
//! its reasons, a header on every module, files and functions a newcomer can read in one
//! sitting.

use std::path::{Path, PathBuf};

/// What a layer (a folder or file under `src/`) must not name, and why.
const LAYERS: &[(&str, &[&str], &str)] = &[
    (
        "js/",
        &["crate::store", "crate::model", "crate::pipeline", "crate::host_api", "crate::protocols", "crate::mail", "crate::ingest"],
        "the JS pool knows neither stores nor documents' meaning",
    ),
    (
        "store/",
        &["crate::js", "crate::model", "crate::pipeline", "crate::host_api", "crate::protocols", "crate::mail", "crate::ingest"],
        "a store knows JSON documents, nothing of what runs on them",
    ),
    (
        "model/",
        &["crate::js", "crate::pipeline", "crate::host_api", "crate::protocols", "crate::mail", "crate::ingest"],
        "the document model knows no engine, pipeline or protocol",
    ),
    (
        "mail/",
        &["crate::js", "crate::store", "crate::model", "crate::pipeline", "crate::host_api", "crate::protocols", "crate::ingest"],
        "mail parsing knows neither JS nor stores",
    ),
    (
        "protocols/",
        &["crate::js", "crate::pipeline", "crate::host_api"],
        "protocols write raw documents through the model and ingest, never through the pipeline",
    ),
    ("ingest.rs", &["crate::js", "crate::pipeline", "crate::host_api"], "raw ingest knows the model and the store only"),
    (
        "api/",
        &["crate::store", "crate::pipeline", "crate::protocols", "crate::mail", "crate::ingest", "crate::model", "crate::daemon"],
        "the API matches routes and runs their JS; the host functions reach the store, the listener owns HTTP",
    ),
    (
        "schema/",
        &["crate::pipeline", "crate::host_api", "crate::protocols", "crate::mail", "store::embedded", "store::couch"],
        "definitions are read, run and installed through the pool, the model and the Store trait",
    ),
    (
        "pipeline/",
        &["crate::host_api", "crate::protocols", "crate::mail", "store::embedded", "store::couch"],
        "the pipeline sees the store only through the Store trait and JS only through the pool",
    ),
];

/// Where the JS pool may be named: the layers that run extensions.
const POOL_USERS: &[&str] = &["js/", "pipeline/", "api/", "daemon/", "cli/", "bin/", "schema/"];

/// A source file: its path under `src/` and its lines.
struct Source {
    rel: String,
    lines: Vec<String>,
}

fn sources() -> Vec<Source> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut paths = Vec::new();
    walk(&src, &mut paths);
    paths.sort();
    paths
        .into_iter()
        .map(|p| Source {
            rel: p.strip_prefix(&src).unwrap().to_string_lossy().into_owned(),
            lines: std::fs::read_to_string(&p).unwrap().lines().map(str::to_string).collect(),
        })
        .collect()
}

/// The line's code, without a trailing `//` comment (good enough for this source: no `//`
/// inside the string literals these checks look at).
fn code(line: &str) -> &str {
    let trimmed = line.trim_start();
    if trimmed.starts_with("//") {
        return "";
    }
    match line.find(" //") {
        Some(i) => &line[..i],
        None => line,
    }
}

/// Whether `line` names `name` as a path (not as the start of a longer identifier:
/// `crate::js` is not `crate::json_text`).
fn names(line: &str, name: &str) -> bool {
    line.match_indices(name).any(|(i, _)| !line[i + name.len()..].starts_with(|c: char| c.is_alphanumeric() || c == '_'))
}

/// The lines before the file's unit tests (which may use a concrete store, say).
fn before_tests(lines: &[String]) -> &[String] {
    let end = lines.iter().position(|l| l.trim() == "#[cfg(test)]").unwrap_or(lines.len());
    &lines[..end]
}

fn fail(problems: Vec<String>, what: &str) {
    assert!(problems.is_empty(), "{what}:\n  {}", problems.join("\n  "));
}

#[test]
fn every_module_opens_with_a_header() {
    let problems = sources()
        .into_iter()
        .filter(|s| !s.lines.first().is_some_and(|l| l.starts_with("//!")))
        .map(|s| format!("src/{}: no `//!` header saying what the module owns", s.rel))
        .collect();
    fail(problems, "modules without a header");
}

#[test]
fn only_the_engine_touches_spidermonkey() {
    let mut problems = Vec::new();
    for s in sources().iter().filter(|s| !s.rel.starts_with("js/engine/")) {
        for (n, line) in s.lines.iter().enumerate() {
            if code(line).contains("mozjs") {
                problems.push(format!("src/{}:{}: names mozjs", s.rel, n + 1));
            }
        }
    }
    fail(problems, "mozjs outside src/js/engine");
}

#[test]
fn async_stays_in_the_http_listener() {
    // Extensions and the pipeline are threads; tokio and hyper serve HTTP and nothing else.
    let mut problems = Vec::new();
    for s in sources().iter().filter(|s| !s.rel.starts_with("daemon/http/")) {
        for (n, line) in s.lines.iter().enumerate() {
            let c = code(line);
            if names(c, "tokio") || names(c, "hyper") || c.contains("async fn") || c.contains(".await") {
                problems.push(format!("src/{}:{}: async outside src/daemon/http/", s.rel, n + 1));
            }
        }
    }
    fail(problems, "async outside the listener");
}

#[test]
fn each_layer_names_only_what_it_may() {
    let mut problems = Vec::new();
    for s in sources() {
        for (prefix, forbidden, why) in LAYERS {
            if !s.rel.starts_with(prefix) {
                continue;
            }
            for (n, line) in before_tests(&s.lines).iter().enumerate() {
                let line = code(line);
                for name in forbidden.iter().filter(|name| names(line, name)) {
                    problems.push(format!("src/{}:{}: names {name} ({why})", s.rel, n + 1));
                }
            }
        }
        if !POOL_USERS.iter().any(|p| s.rel.starts_with(p)) {
            for (n, line) in before_tests(&s.lines).iter().enumerate() {
                if names(code(line), "JsPool") {
                    problems.push(format!("src/{}:{}: names the JS pool (only {POOL_USERS:?} may)", s.rel, n + 1));
                }
            }
        }
    }
    fail(problems, "layering");
}

#[test]
fn unsafe_lives_in_the_engine_with_its_reasons() {
    let mut problems = Vec::new();
    for s in sources() {
        let in_engine = s.rel.starts_with("js/engine/");
        for (n, line) in s.lines.iter().enumerate() {
            let c = code(line);
            let block = c.contains("unsafe {");
            let function = c.contains("unsafe fn ") || c.contains("unsafe extern \"C\" fn ");
            if !block && !function {
                continue;
            }
            if !in_engine {
                problems.push(format!("src/{}:{}: unsafe outside src/js/engine", s.rel, n + 1));
                continue;
            }
            let before = &s.lines[n.saturating_sub(4)..n];
            if block && !(line.contains("SAFETY:") || before.iter().any(|l| l.contains("SAFETY:"))) {
                problems.push(format!("src/{}:{}: an unsafe block without a `// SAFETY:` note just above", s.rel, n + 1));
            }
            if function {
                // Its doc comment: the `///` lines right above (attributes between are fine).
                let docs: Vec<&String> = s.lines[..n]
                    .iter()
                    .rev()
                    .skip_while(|l| l.trim_start().starts_with("#["))
                    .take_while(|l| l.trim_start().starts_with("///"))
                    .collect();
                if !docs.iter().any(|l| l.contains("# Safety")) {
                    problems.push(format!("src/{}:{}: an unsafe fn without a `# Safety` section", s.rel, n + 1));
                }
            }
        }
    }
    fail(problems, "unsafe");
}

/// Benchmarks are one program of scenarios side by side; the rule is for the daemon's code.
fn exempt(rel: &str) -> bool {
    rel.starts_with("bin/")
}

#[test]
fn files_fit_a_sitting() {
    let problems = sources()
        .into_iter()
        .filter(|s| !exempt(&s.rel) && s.lines.len() > 600)
        .map(|s| format!("src/{}: {} lines (split it along its jobs)", s.rel, s.lines.len()))
        .collect();
    fail(problems, "files over 600 lines");
}

#[test]
fn functions_fit_a_screen_or_say_why() {
    let mut problems = Vec::new();
    for s in sources().iter().filter(|s| !exempt(&s.rel)) {
        let mut n = 0;
        while n < s.lines.len() {
            let line = code(&s.lines[n]);
            let is_fn = line
                .split_whitespace()
                .take_while(|w| *w != "fn")
                .all(|w| matches!(w, "pub" | "const" | "unsafe" | "extern" | "\"C\"" | "async") || w.starts_with("pub("))
                && line.split_whitespace().any(|w| w == "fn");
            if !is_fn {
                n += 1;
                continue;
            }
            let (mut depth, mut opened, mut end) = (0i32, false, n);
            for (m, l) in s.lines.iter().enumerate().skip(n) {
                for ch in code(l).chars() {
                    match ch {
                        '{' => {
                            depth += 1;
                            opened = true;
                        }
                        '}' => depth -= 1,
                        _ => {}
                    }
                }
                end = m;
                if (opened && depth <= 0) || (!opened && code(l).trim_end().ends_with(';')) {
                    break;
                }
            }
            let length = end - n + 1;
            let said = s.lines[..n]
                .iter()
                .rev()
                .take_while(|l| l.trim_start().starts_with("///") || l.trim_start().starts_with("#["))
                .any(|l| l.contains("Long on purpose"));
            if length > 80 && !said {
                problems.push(format!(
                    "src/{}:{}: a function of {length} lines (split it, or say `Long on purpose: …` in its doc)",
                    s.rel,
                    n + 1
                ));
            }
            n = if opened { end + 1 } else { n + 1 };
        }
    }
    fail(problems, "long functions");
}
