//! JavaScript extensions: the runtime pool and everything it needs.
//!
//! - [`engine`]: the only code that touches SpiderMonkey (one runtime, its sandboxes).
//! - [`pool`]: worker threads, one runtime each, fed batches over crossbeam channels (each
//!   thread's loop in `worker`, the driver's answers read in `outcomes`).
//! - [`watchdog`]: stops handler calls that run past their time limit.
//! - [`extension`]: extension files, declarations and fingerprints.
//! - [`host`]: Rust functions registered for extensions to call.

pub mod engine;
pub mod extension;
pub mod host;
mod outcomes;
pub mod pool;
pub mod watchdog;
mod worker;

pub use extension::{Category, Declaration, ExtensionSource, LoadedExtension, RouteDecl};
pub use host::{HostCall, HostError, HostFunctions};
pub use pool::{
    Batch, BatchResult, DocOutcome, Emission, EmittedItem, FailureKind, FilterKeys, HandlerError, JsPool, PendingFilter, PendingLater,
    PoolConfig, PoolError,
};
