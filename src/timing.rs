//! Where the time goes: cumulative wall time per stage, for finding bottlenecks in benchmarks.
//!
//! Off unless `RAINDROP_TIMINGS` is set, when a recording costs one lock and a map lookup; when
//! off, one relaxed atomic load. `raindrop-bench` prints the table after each run; the labels are
//! `R:` the reader stage, `P:` parts of a page's preparation, `W:` the writer, `run:`/`filter:`/
//! `later:` JS calls per extension, `native:` host functions per name and extension.
//! With `RAINDROP_TIMINGS=trace`, each recording is also printed to stderr as it ends (start
//! and end in seconds since the first recording, the thread's name, the label): a timeline
//! shows which stages overlap and when the threads wait.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Mutex;
use std::time::Instant;

/// Seconds, calls and items (whatever the caller counts) per label.
static TABLE: Mutex<BTreeMap<String, (f64, u64, u64)>> = Mutex::new(BTreeMap::new());
/// 0 = not yet looked at the environment, 1 = off, 2 = on, 3 = on and tracing.
static STATE: AtomicU8 = AtomicU8::new(0);
/// The first moment anything was recorded: the origin of the trace's times.
static ORIGIN: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();

fn state() -> u8 {
    match STATE.load(Ordering::Relaxed) {
        0 => {
            let s = match std::env::var("RAINDROP_TIMINGS") {
                Err(_) => 1,
                Ok(v) if v == "trace" => 3,
                Ok(_) => 2,
            };
            STATE.store(s, Ordering::Relaxed);
            s
        }
        s => s,
    }
}

pub fn enabled() -> bool {
    state() >= 2
}

/// Adds the time since `start` (and `items`) to `label`.
pub fn record(label: &str, start: Instant, items: usize) {
    record_as(|| label.to_string(), start, items);
}

/// [`record`] with a label made only when timings are on.
pub fn record_as(label: impl FnOnce() -> String, start: Instant, items: usize) {
    if !enabled() {
        return;
    }
    let seconds = start.elapsed().as_secs_f64();
    let label = label();
    if state() == 3 {
        let origin = *ORIGIN.get_or_init(|| start);
        let from = start.saturating_duration_since(origin).as_secs_f64();
        let thread = std::thread::current();
        eprintln!("trace {from:>9.3} {:>9.3} {:<16} {label} {items}", from + seconds, thread.name().unwrap_or("?"));
    }
    let mut table = TABLE.lock().unwrap_or_else(|p| p.into_inner());
    let entry = table.entry(label).or_default();
    entry.0 += seconds;
    entry.1 += 1;
    entry.2 += items as u64;
}

/// A stage being timed: recorded under its label when it is dropped (see [`span`]).
#[must_use = "a span records when dropped: bind it to a name for the stage it times"]
pub struct Span {
    label: &'static str,
    start: Instant,
    items: usize,
}

/// Starts timing a stage, recorded when the returned [`Span`] is dropped.
pub fn span(label: &'static str) -> Span {
    Span { label, start: Instant::now(), items: 0 }
}

impl Span {
    /// The number of items the stage handles, for the table.
    pub fn items(mut self, items: usize) -> Span {
        self.items = items;
        self
    }
}

impl Drop for Span {
    fn drop(&mut self) {
        record(self.label, self.start, self.items);
    }
}

/// The table so far, longest first, and empties it.
pub fn take_report() -> String {
    let mut table = TABLE.lock().unwrap_or_else(|p| p.into_inner());
    let mut rows: Vec<(String, (f64, u64, u64))> = std::mem::take(&mut *table).into_iter().collect();
    rows.sort_by(|a, b| b.1 .0.total_cmp(&a.1 .0));
    rows.iter().map(|(label, (s, calls, items))| format!("{label:<60} {s:>8.3} s {calls:>8} calls {items:>10} items\n")).collect()
}
