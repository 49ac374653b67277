//! Where the time goes: cumulative wall time per stage, for finding bottlenecks in benchmarks.
//!
//! Off unless `RAINDROP_TIMINGS` is set, when a recording costs one lock and a map lookup; when
//! off, one relaxed atomic load. `raindrop-bench` prints the table after each run; the labels are
//! `R:` the reader stage, `P:` parts of a page's preparation, `W:` the writer, `run:`/`filter:`/
//! `later:` JS calls per extension, `native:` host functions per name and extension.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Mutex;
use std::time::Instant;

/// Seconds, calls and items (whatever the caller counts) per label.
static TABLE: Mutex<BTreeMap<String, (f64, u64, u64)>> = Mutex::new(BTreeMap::new());
/// 0 = not yet looked at the environment, 1 = off, 2 = on.
static STATE: AtomicU8 = AtomicU8::new(0);

pub fn enabled() -> bool {
    match STATE.load(Ordering::Relaxed) {
        0 => {
            let on = std::env::var_os("RAINDROP_TIMINGS").is_some();
            STATE.store(if on { 2 } else { 1 }, Ordering::Relaxed);
            on
        }
        s => s == 2,
    }
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
    let mut table = TABLE.lock().unwrap_or_else(|p| p.into_inner());
    let entry = table.entry(label()).or_default();
    entry.0 += seconds;
    entry.1 += 1;
    entry.2 += items as u64;
}

/// The table so far, longest first, and empties it.
pub fn take_report() -> String {
    let mut table = TABLE.lock().unwrap_or_else(|p| p.into_inner());
    let mut rows: Vec<(String, (f64, u64, u64))> = std::mem::take(&mut *table).into_iter().collect();
    rows.sort_by(|a, b| b.1 .0.total_cmp(&a.1 .0));
    rows.iter().map(|(label, (s, calls, items))| format!("{label:<60} {s:>8.3} s {calls:>8} calls {items:>10} items\n")).collect()
}
