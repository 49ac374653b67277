//! The host functions: the Rust functions extensions call as plain synchronous JS globals
//! (`open_schemas`, `find_schemas`, `raindrop.mail.parse`, …), registered into the pool's
//! [`HostFunctions`].
//!
//! They sit between layers that must not know each other: `mail` parses messages and knows
//! neither JS nor stores, the stores know nothing of extensions, and the pool knows only a
//! registry of named functions taking and returning JSON. Here those meet.

mod mail;
mod read_ahead;
mod store;

use std::sync::Arc;

use serde_json::Value;

use crate::js::{HostError, HostFunctions};
use crate::store::Store;

/// Every host function an extension has in the daemon: the store-backed ones (with
/// `get_my_identities` answering `identities`) and the mail helpers.
pub fn register_all(host: &mut HostFunctions, store: Arc<dyn Store>, identities: Vec<Value>) {
    store::register(host, store.clone(), identities);
    mail::register(host);
    mail::register_attachment_parser(host, store);
}

/// What the API's handlers have beyond the extensions' functions: `add_schemas(items)`, to
/// contribute to documents as an outside source (the user marking a message read), items
/// `{rd_key, rd_schema_id, …fields}` with an optional `rd_ext_id` (default `rd.api`) and
/// `rd_confidence` (default 10: over what the extensions and IMAP derive);
/// `changes_since(seq[, limit])`, the changes feed, so a handler can keep what it computed
/// and bring it up to date; `open_documents(ids[, fields])`, documents by id. Extensions do
/// not get them: what they emit must depend on their source, not on when they ran.
pub fn register_api(host: &mut HostFunctions, store: Arc<dyn Store>) {
    store::register_add_schemas(host, store.clone());
    store::register_changes_since(host, store.clone());
    store::register_open_documents(host, store);
}

/// The host functions that need no database (`raindrop.mail.parse` and friends).
pub fn register_without_store(host: &mut HostFunctions) {
    mail::register(host);
}

// The errors of the layers below, as the message a host function throws into JS.

impl From<crate::store::StoreError> for HostError {
    fn from(e: crate::store::StoreError) -> HostError {
        HostError(e.to_string())
    }
}

impl From<crate::model::ModelError> for HostError {
    fn from(e: crate::model::ModelError) -> HostError {
        HostError(e.to_string())
    }
}
