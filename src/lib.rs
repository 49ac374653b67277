//! Raindrop: a daemon that hosts JavaScript back-end extensions in embedded SpiderMonkey.
//!
//! See `docs/ARCHITECTURE.md` for the map. `unsafe` is denied everywhere but `js::engine`.

#![deny(unsafe_code)]

pub mod api;
pub mod config;
pub mod daemon;
mod digest;
pub mod host_api;
pub mod ingest;
pub mod js;
pub mod json_lines;
mod json_text;
pub mod mail;
pub mod metrics;
pub mod model;
mod par;
pub mod pipeline;
pub mod protocols;
pub mod schema;
pub mod store;
pub mod timing;
pub mod web;
