//! What a running daemon is told: stop (SIGTERM or SIGINT; a second one exits at once), read
//! the config file and the extensions folder again (SIGHUP), or — from the folder's watcher —
//! take up changed extensions.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

/// How long a stop may take before the process exits anyway: the run resumes from its last
/// checkpoint all the same (the design is crash-only), but a stop that hangs is no stop.
const STOP_DEADLINE: Duration = Duration::from_secs(10);

/// The flags the daemon's threads raise and the main loop reads.
#[derive(Default)]
pub(super) struct Control {
    /// Stop for good.
    pub(super) stop: AtomicBool,
    /// Take the extensions up again (a change in the folder, or SIGHUP).
    pub(super) reload: AtomicBool,
    /// Read the config file again too (SIGHUP).
    pub(super) reread_config: AtomicBool,
    /// Load the API folder again (SIGHUP).
    pub(super) reload_api: AtomicBool,
    /// Given to the pipeline's run as its stop: raised by any of the above.
    pub(super) run_stop: Arc<AtomicBool>,
}

impl Control {
    pub(super) fn stopping(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }

    /// Ends the current run (at a page's end) so the main loop can look at the flags.
    pub(super) fn end_run(&self) {
        self.run_stop.store(true, Ordering::SeqCst);
    }

    /// Asks for the extensions to be taken up again.
    pub(super) fn reload(&self, reread_config: bool) {
        if reread_config {
            self.reread_config.store(true, Ordering::SeqCst);
            self.reload_api.store(true, Ordering::SeqCst);
        }
        self.reload.store(true, Ordering::SeqCst);
        self.end_run();
    }

    /// Sleeps up to `time`, waking early when told to stop.
    pub(super) fn sleep(&self, time: Duration) {
        let until = std::time::Instant::now() + time;
        while !self.stopping() && std::time::Instant::now() < until {
            std::thread::sleep(Duration::from_millis(50).min(until.saturating_duration_since(std::time::Instant::now())));
        }
    }
}

/// Exits at once with `code` while JS runtimes may still run on other threads: SpiderMonkey's
/// destructors would crash under them, so the engine's exit is used.
fn exit_now(code: i32) -> ! {
    crate::js::engine::exit_after_runtimes(code, Duration::ZERO);
    std::process::exit(code)
}

/// Handles SIGTERM, SIGINT and SIGHUP on a thread of their own from now on.
pub(super) fn install(control: Arc<Control>) -> std::io::Result<()> {
    let mut signals = Signals::new([SIGTERM, SIGINT, SIGHUP])?;
    std::thread::Builder::new().name("signals".into()).spawn(move || {
        for signal in signals.forever() {
            if signal == SIGHUP {
                eprintln!("raindrop: SIGHUP: reading the config file and the extensions folder again");
                control.reload(true);
                continue;
            }
            if control.stop.swap(true, Ordering::SeqCst) {
                eprintln!("raindrop: second signal: exiting now (the next run resumes from the last checkpoint)");
                exit_now(130);
            }
            eprintln!("raindrop: stopping: finishing the page in flight and writing the checkpoint");
            control.end_run();
            std::thread::spawn(|| {
                std::thread::sleep(STOP_DEADLINE);
                eprintln!(
                    "raindrop: did not stop within {} s: exiting (the next run resumes from the last checkpoint)",
                    STOP_DEADLINE.as_secs()
                );
                exit_now(1);
            });
        }
    })?;
    Ok(())
}
