//! The watchdog: one thread that stops handler calls running past their time limit.
//!
//! Each worker owns a [`WatchSlot`]. The driver calls `begin` before every handler call, which
//! stamps the slot with the start time; the watchdog sleeps until the earliest deadline among
//! armed slots and, for a call still running past it, marks the slot and asks the runtime to
//! interrupt. The runtime's interrupt callback then asks [`WatchSlot::should_stop`], which is
//! true only for the very call that was judged late: a late firing cannot kill the next call.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant};

use super::engine::Interrupter;

/// Nanoseconds since the first use of the clock (never 0, so 0 can mean "idle").
fn now_ns() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    EPOCH.get_or_init(Instant::now).elapsed().as_nanos() as u64 + 1
}

/// One worker's clock, shared between the worker and the watchdog.
pub struct WatchSlot {
    /// Start of the running handler call in [`now_ns`] units, or 0 when no call runs.
    started: AtomicU64,
    limit_ns: AtomicU64,
    /// The `started` stamp of the call the watchdog decided to stop.
    fired_for: AtomicU64,
    interrupter: Mutex<Option<Interrupter>>,
    watchdog: Arc<Shared>,
}

impl WatchSlot {
    /// Sets the runtime this slot interrupts (again after the worker recycles its runtime).
    pub fn set_interrupter(&self, interrupter: Option<Interrupter>) {
        *self.interrupter.lock().unwrap_or_else(|e| e.into_inner()) = interrupter;
    }

    /// Arms the slot for a run of handler calls, each limited to `limit`.
    pub fn arm(&self, limit: Duration) {
        self.limit_ns.store(limit.as_nanos().min(u64::MAX as u128) as u64, Ordering::Release);
        self.begin_call();
        self.watchdog.wake();
    }

    /// A handler call starts now.
    pub fn begin_call(&self) {
        let now = now_ns();
        let prev = self.started.load(Ordering::Relaxed);
        // Strictly increasing, so every call has its own stamp.
        self.started.store(now.max(prev + 1), Ordering::Release);
    }

    /// `spent` went in a host function (a store's answer, most often): it does not count
    /// against the running call's limit, whose start moves that much later. A firing during
    /// it is thereby forgotten (the stamp is new), and the watchdog judges the call again by
    /// the time it spent in JavaScript.
    pub fn credit(&self, spent: Duration) {
        let started = self.started.load(Ordering::Acquire);
        if started == 0 {
            return;
        }
        let moved = self.started.compare_exchange(started, started + (spent.as_nanos() as u64).max(1), Ordering::AcqRel, Ordering::Acquire);
        // A call the watchdog already fired for is off its list: have it look again.
        if moved.is_ok() && self.fired_for.load(Ordering::Acquire) == started {
            self.watchdog.wake();
        }
    }

    /// Stops the running call, and every call until the next `arm` (the pool is going away).
    pub fn stop_now(&self) {
        self.limit_ns.store(0, Ordering::Release);
        self.watchdog.wake();
    }

    /// No call runs until the next `arm`.
    pub fn disarm(&self) {
        self.started.store(0, Ordering::Release);
    }

    /// Whether the running call is the one the watchdog decided to stop.
    pub fn should_stop(&self) -> bool {
        let started = self.started.load(Ordering::Acquire);
        started != 0 && self.fired_for.load(Ordering::Acquire) == started
    }
}

struct Shared {
    slots: Mutex<Vec<Weak<WatchSlot>>>,
    wake: Condvar,
    stop: AtomicBool,
}

impl Shared {
    fn wake(&self) {
        // Taking the lock orders this wake-up after the watchdog's check of the slots.
        let _guard = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        self.wake.notify_one();
    }
}

/// The watchdog thread; it stops when dropped.
pub struct Watchdog {
    shared: Arc<Shared>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Watchdog {
    pub fn start() -> std::io::Result<Watchdog> {
        let shared = Arc::new(Shared { slots: Mutex::new(Vec::new()), wake: Condvar::new(), stop: AtomicBool::new(false) });
        let thread_shared = shared.clone();
        let thread = std::thread::Builder::new().name("js-watchdog".into()).spawn(move || watch(&thread_shared))?;
        Ok(Watchdog { shared, thread: Some(thread) })
    }

    /// A new slot for one worker.
    pub fn slot(&self) -> Arc<WatchSlot> {
        let slot = Arc::new(WatchSlot {
            started: AtomicU64::new(0),
            limit_ns: AtomicU64::new(u64::MAX),
            fired_for: AtomicU64::new(0),
            interrupter: Mutex::new(None),
            watchdog: self.shared.clone(),
        });
        self.shared.slots.lock().unwrap_or_else(|e| e.into_inner()).push(Arc::downgrade(&slot));
        slot
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Release);
        self.shared.wake();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn watch(shared: &Shared) {
    let mut slots = shared.slots.lock().unwrap_or_else(|e| e.into_inner());
    while !shared.stop.load(Ordering::Acquire) {
        slots.retain(|s| s.strong_count() > 0);
        let now = now_ns();
        let mut next_wake: Option<u64> = None;
        for slot in slots.iter().filter_map(Weak::upgrade) {
            let started = slot.started.load(Ordering::Acquire);
            if started == 0 || slot.fired_for.load(Ordering::Acquire) == started {
                continue;
            }
            let deadline = started.saturating_add(slot.limit_ns.load(Ordering::Acquire));
            if now >= deadline {
                slot.fired_for.store(started, Ordering::Release);
                if let Some(i) = slot.interrupter.lock().unwrap_or_else(|e| e.into_inner()).as_ref() {
                    i.interrupt();
                }
            } else {
                next_wake = Some(next_wake.map_or(deadline, |w: u64| w.min(deadline)));
            }
        }
        // Sleep until the earliest deadline; a call that began later than we saw is
        // rechecked then. Idle: sleep until a slot is armed.
        let wait = match next_wake {
            Some(deadline) => Duration::from_nanos(deadline.saturating_sub(now_ns()).max(200_000)),
            None => Duration::from_secs(3600),
        };
        slots = shared.wake.wait_timeout(slots, wait).unwrap_or_else(|e| e.into_inner()).0;
    }
}
