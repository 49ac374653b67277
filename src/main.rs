//! The `raindrop` command line: parses arguments, sets up logging, runs one command, and maps
//! its error to an exit code.

/// Rust-side allocations are many and small (JSON values); mimalloc handles them faster than
/// the system allocator. SpiderMonkey keeps its own allocation path.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::process::ExitCode;

use clap::Parser;

mod cli;

fn main() -> ExitCode {
    let args = cli::Cli::parse();
    cli::init_logging(args.verbose);
    let (code, raw) = match cli::run(args) {
        Ok(code) => (code, if code == ExitCode::SUCCESS { 0 } else { 1 }),
        // A closed pipe (`raindrop db dump | head`) is the reader's choice, not a failure.
        Err(e) if e.downcast_ref::<std::io::Error>().is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe) => {
            (ExitCode::SUCCESS, 0)
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            (ExitCode::from(2), 2)
        }
    };
    // Pools dropped on other threads (the API's, a listener's last request) get a moment to
    // go; SpiderMonkey must be shut down before the process's static destructors run.
    raindrop::js::engine::exit_after_runtimes(raw, std::time::Duration::from_secs(5));
    code
}
