//! What a running daemon counts, for `GET /status` and `GET /metrics`: per extension the
//! sources processed, the errors (the last one with file and line), documents per second over
//! the last minute and the handler time per document; per mail account the last sync; the files
//! that failed to load.
//!
//! The pool records handler times, the pipeline the outcomes, the sync thread the syncs and
//! the daemon the load failures, each through the one [`Metrics`] they share. Counting is a
//! lock and a few additions per batch or page, nothing per byte.

use std::collections::{BTreeMap, VecDeque};
use std::fmt::Write as _;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::Serialize;

/// Upper bounds of the handler-time histogram's buckets, in seconds.
const BUCKETS: [f64; 15] = [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0];

/// The window of "documents per second".
const RATE_WINDOW: Duration = Duration::from_secs(60);

/// Everything counted, behind one lock.
#[derive(Default)]
pub struct Metrics {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    extensions: BTreeMap<String, ExtensionCounts>,
    accounts: BTreeMap<String, AccountCounts>,
    /// The files that failed to load at the last (re)load, with why.
    load_failures: Vec<LoadFailure>,
    pages: u64,
    reloads: u64,
    /// The API folder at its last (re)load: its routes, the files that failed.
    api_routes: usize,
    api_failures: Vec<LoadFailure>,
    /// API requests answered, by status class (`2xx` …).
    api_requests: BTreeMap<String, u64>,
}

#[derive(Default)]
struct ExtensionCounts {
    processed: u64,
    errors: u64,
    last_error: Option<LastError>,
    /// (when, sources processed) per page, over the last minute.
    recent: VecDeque<(Instant, u64)>,
    histogram: Histogram,
}

#[derive(Default)]
struct Histogram {
    /// Per bucket of [`BUCKETS`] (and one more, for longer), how many documents.
    counts: [u64; BUCKETS.len() + 1],
    sum: f64,
    count: u64,
}

impl Histogram {
    fn record(&mut self, seconds: f64) {
        let i = BUCKETS.iter().position(|b| seconds <= *b).unwrap_or(BUCKETS.len());
        self.counts[i] += 1;
        self.sum += seconds;
        self.count += 1;
    }

    /// The upper bound of the bucket holding the `q` quantile.
    fn quantile(&self, q: f64) -> Option<f64> {
        let rank = (self.count as f64 * q).ceil() as u64;
        let mut seen = 0;
        for (i, n) in self.counts.iter().enumerate() {
            seen += n;
            if seen >= rank.max(1) {
                return Some(BUCKETS.get(i).copied().unwrap_or(f64::INFINITY));
            }
        }
        None
    }
}

/// An extension's last failure.
#[derive(Debug, Clone, Serialize)]
pub struct LastError {
    pub message: String,
    pub file: Option<String>,
    pub line: Option<u32>,
    /// Seconds since the epoch.
    pub at: u64,
}

/// A file that did not load, and why (the message names its line where known).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct LoadFailure {
    pub file: String,
    pub error: String,
}

#[derive(Default, Clone, Serialize)]
struct AccountCounts {
    /// Seconds since the epoch of the last sync that ended, and whether it succeeded.
    last_sync: Option<u64>,
    last_ok: Option<bool>,
    last_error: Option<String>,
    syncs: u64,
    errors: u64,
}

/// One extension, as `/status` shows it.
#[derive(Debug, Serialize)]
pub struct ExtensionStatus {
    pub processed: u64,
    pub errors: u64,
    pub last_error: Option<LastError>,
    pub docs_per_second: f64,
    /// Handler time per document, in milliseconds.
    pub mean_ms: Option<f64>,
    pub p99_ms: Option<f64>,
}

fn epoch_seconds() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

impl Metrics {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A batch's handler times, in seconds per document.
    pub fn handler_times(&self, extension: &str, seconds: &[f64]) {
        if seconds.is_empty() {
            return;
        }
        let mut inner = self.lock();
        let histogram = &mut inner.extensions.entry(extension.to_string()).or_default().histogram;
        for s in seconds {
            histogram.record(*s);
        }
    }

    /// A page's outcomes for one extension: `processed` sources, of which the `errors` failed
    /// (the last failure described by `last`).
    pub fn outcomes(&self, extension: &str, processed: u64, errors: u64, last: Option<(String, Option<String>, Option<u32>)>) {
        let mut inner = self.lock();
        let e = inner.extensions.entry(extension.to_string()).or_default();
        e.processed += processed;
        e.errors += errors;
        if let Some((message, file, line)) = last {
            e.last_error = Some(LastError { message, file, line, at: epoch_seconds() });
        }
        let now = Instant::now();
        e.recent.push_back((now, processed));
        while e.recent.front().is_some_and(|(t, _)| now.duration_since(*t) > RATE_WINDOW) {
            e.recent.pop_front();
        }
    }

    /// A page was written.
    pub fn page(&self) {
        self.lock().pages += 1;
    }

    /// The extensions were (re)loaded; these files failed.
    pub fn loaded(&self, failures: Vec<LoadFailure>) {
        let mut inner = self.lock();
        inner.reloads += 1;
        inner.load_failures = failures;
    }

    /// The API folder was (re)loaded: `routes` served, these files failed.
    pub fn api_loaded(&self, routes: usize, failures: Vec<LoadFailure>) {
        let mut inner = self.lock();
        inner.api_routes = routes;
        inner.api_failures = failures;
    }

    /// An API request was answered with `status`.
    pub fn api_request(&self, status: u16) {
        *self.lock().api_requests.entry(format!("{}xx", status / 100)).or_default() += 1;
    }

    /// A sync of `account` ended: `error` is why it failed, if it did.
    pub fn synced(&self, account: &str, error: Option<String>) {
        let mut inner = self.lock();
        let a = inner.accounts.entry(account.to_string()).or_default();
        a.last_sync = Some(epoch_seconds());
        a.syncs += 1;
        a.last_ok = Some(error.is_none());
        if error.is_some() {
            a.errors += 1;
            a.last_error = error;
        }
    }

    /// Per extension, what `/status` shows.
    pub fn extensions(&self) -> BTreeMap<String, ExtensionStatus> {
        let inner = self.lock();
        let now = Instant::now();
        inner
            .extensions
            .iter()
            .map(|(id, e)| {
                let recent: u64 = e.recent.iter().filter(|(t, _)| now.duration_since(*t) <= RATE_WINDOW).map(|(_, n)| n).sum();
                let h = &e.histogram;
                let status = ExtensionStatus {
                    processed: e.processed,
                    errors: e.errors,
                    last_error: e.last_error.clone(),
                    docs_per_second: recent as f64 / RATE_WINDOW.as_secs_f64(),
                    mean_ms: (h.count > 0).then(|| h.sum / h.count as f64 * 1000.0),
                    p99_ms: h.quantile(0.99).map(|s| s * 1000.0),
                };
                (id.clone(), status)
            })
            .collect()
    }

    /// The `/status` members this records: extensions, accounts, load failures, pages.
    pub fn status(&self) -> serde_json::Value {
        let extensions = self.extensions();
        let inner = self.lock();
        serde_json::json!({
            "extensions": extensions,
            "accounts": inner.accounts,
            "failed_to_load": inner.load_failures,
            "pages_written": inner.pages,
            "reloads": inner.reloads,
            "api": { "routes": inner.api_routes, "failed_to_load": inner.api_failures, "requests": inner.api_requests },
        })
    }

    /// Everything, in the Prometheus text exposition format; `gauges` are more (name, help,
    /// value) the caller knows (the backlog, say).
    pub fn exposition(&self, gauges: &[(&str, &str, f64)]) -> String {
        let extensions = self.extensions();
        let inner = self.lock();
        let mut out = String::new();
        let family = |out: &mut String, name: &str, kind: &str, help: &str| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        };
        for (name, help, value) in gauges {
            family(&mut out, name, "gauge", help);
            let _ = writeln!(out, "{name} {value}");
        }
        family(&mut out, "raindrop_extensions_failed_to_load", "gauge", "Extension files that failed to load at the last (re)load.");
        let _ = writeln!(out, "raindrop_extensions_failed_to_load {}", inner.load_failures.len());
        family(&mut out, "raindrop_pages_written_total", "counter", "Pages of the changes feed written.");
        let _ = writeln!(out, "raindrop_pages_written_total {}", inner.pages);
        family(&mut out, "raindrop_documents_processed_total", "counter", "Sources each extension processed.");
        for (id, e) in &extensions {
            let _ = writeln!(out, "raindrop_documents_processed_total{{extension=\"{}\"}} {}", label(id), e.processed);
        }
        family(&mut out, "raindrop_handler_errors_total", "counter", "Sources whose handler failed, per extension.");
        for (id, e) in &extensions {
            let _ = writeln!(out, "raindrop_handler_errors_total{{extension=\"{}\"}} {}", label(id), e.errors);
        }
        family(&mut out, "raindrop_documents_per_second", "gauge", "Sources processed per second over the last minute, per extension.");
        for (id, e) in &extensions {
            let _ = writeln!(out, "raindrop_documents_per_second{{extension=\"{}\"}} {}", label(id), e.docs_per_second);
        }
        family(&mut out, "raindrop_handler_seconds", "histogram", "Handler time per document, per extension.");
        for (id, e) in &inner.extensions {
            let h = &e.histogram;
            let mut cumulative = 0;
            for (i, bound) in BUCKETS.iter().enumerate() {
                cumulative += h.counts[i];
                let _ = writeln!(out, "raindrop_handler_seconds_bucket{{extension=\"{}\",le=\"{bound}\"}} {cumulative}", label(id));
            }
            let _ = writeln!(out, "raindrop_handler_seconds_bucket{{extension=\"{}\",le=\"+Inf\"}} {}", label(id), h.count);
            let _ = writeln!(out, "raindrop_handler_seconds_sum{{extension=\"{}\"}} {}", label(id), h.sum);
            let _ = writeln!(out, "raindrop_handler_seconds_count{{extension=\"{}\"}} {}", label(id), h.count);
        }
        family(&mut out, "raindrop_api_requests_total", "counter", "API requests answered, by status class.");
        for (class, n) in &inner.api_requests {
            let _ = writeln!(out, "raindrop_api_requests_total{{status=\"{class}\"}} {n}");
        }
        family(&mut out, "raindrop_api_files_failed_to_load", "gauge", "API files that failed to load at the last (re)load.");
        let _ = writeln!(out, "raindrop_api_files_failed_to_load {}", inner.api_failures.len());
        family(&mut out, "raindrop_sync_total", "counter", "Mail syncs that ended, per account.");
        for (id, a) in &inner.accounts {
            let _ = writeln!(out, "raindrop_sync_total{{account=\"{}\"}} {}", label(id), a.syncs);
        }
        family(&mut out, "raindrop_sync_errors_total", "counter", "Mail syncs that failed, per account.");
        for (id, a) in &inner.accounts {
            let _ = writeln!(out, "raindrop_sync_errors_total{{account=\"{}\"}} {}", label(id), a.errors);
        }
        family(&mut out, "raindrop_sync_last_timestamp_seconds", "gauge", "When the last sync of each account ended.");
        for (id, a) in &inner.accounts {
            let _ = writeln!(out, "raindrop_sync_last_timestamp_seconds{{account=\"{}\"}} {}", label(id), a.last_sync.unwrap_or(0));
        }
        out
    }
}

/// A label value with `\`, `"` and newlines escaped, as the format asks.
fn label(value: &str) -> String {
    value.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_add_up_and_quantiles_come_from_the_buckets() {
        let m = Metrics::default();
        m.handler_times("a", &[0.0003; 98]);
        m.handler_times("a", &[0.02, 3.0]);
        m.outcomes("a", 100, 2, Some(("boom".into(), Some("a.js".into()), Some(3))));
        let status = m.extensions();
        let a = &status["a"];
        assert_eq!((a.processed, a.errors), (100, 2));
        assert_eq!(a.last_error.as_ref().unwrap().line, Some(3));
        assert_eq!(a.p99_ms, Some(25.0), "the 99th of 100 documents is in the 25 ms bucket");
        assert!((a.docs_per_second - 100.0 / 60.0).abs() < 1e-9);
        let text = m.exposition(&[("raindrop_backlog_changes", "Changes not yet processed.", 7.0)]);
        assert!(text.contains("raindrop_backlog_changes 7"), "{text}");
        assert!(text.contains("raindrop_handler_seconds_bucket{extension=\"a\",le=\"+Inf\"} 100"), "{text}");
        assert_eq!(label("a\"b\\c"), "a\\\"b\\\\c");
    }
}
