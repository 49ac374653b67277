//! The mail host functions: `raindrop.mail.parse`, `.addresses`, `.date` (the driver's names
//! for `mail_parse`, `mail_addresses`, `mail_date`), and `raindrop.mail.parse_attachment`
//! (`mail_parse_attachment`), which reads a stored message and parses it in Rust.

use std::sync::Arc;

use base64::Engine as _;
use serde_json::{json, Value};

use crate::js::HostFunctions;
use crate::mail::{addresses, parse};
use crate::store::Store;

use super::store::read_attachment;

/// Registers the functions that need no store: `mail_parse(base64 bytes)`, `mail_addresses`,
/// `mail_date`.
pub fn register(host: &mut HostFunctions) {
    host.register("mail_parse", |_, args| {
        let data = match args.first() {
            Some(Value::String(b64)) => base64::engine::general_purpose::STANDARD
                .decode(b64.trim())
                .map_err(|e| format!("raindrop.mail.parse takes the message as base64: {e}"))?,
            _ => return Err("raindrop.mail.parse takes the message as a base64 string".into()),
        };
        Ok(parse(&data))
    });
    host.register("mail_addresses", |_, args| match args.first() {
        Some(Value::String(text)) => Ok(addresses(text)),
        Some(Value::Null) | None => Ok(json!([])),
        _ => Err("raindrop.mail.addresses takes a header value (a string)".into()),
    });
    host.register("mail_date", |_, args| match args.first() {
        Some(Value::String(text)) => Ok(crate::mail::date(text).map(Value::from).unwrap_or(Value::Null)),
        _ => Ok(Value::Null),
    });
}

/// Registers `mail_parse_attachment(doc or id, name)`, which needs the store.
pub fn register_attachment_parser(host: &mut HostFunctions, store: Arc<dyn Store>) {
    let s = store;
    // mail_parse_attachment(doc or id, name) → raindrop.mail.parse of the attachment, or null:
    // the message goes from the store to the parser without crossing into JS twice as base64.
    host.register("mail_parse_attachment", move |_, args| {
        Ok(read_attachment(&*s, &args)?.map(|data| crate::mail::parse(&data)).unwrap_or(Value::Null))
    });
}
