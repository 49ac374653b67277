//! End-to-end tests: the real SpiderMonkey, real servers on loopback, the real binary.
//! One test binary; one module per topic.

mod api;
mod browser;
mod cli;
mod daemon;
mod extension_api;
mod hardening;
mod imap;
mod js_pool;
mod mail;
mod pipeline;
mod schemas;
mod share;
mod store_conformance;
mod store_faults;
mod summaries;
mod support;
