//! `raindrop.mail.parse` on arbitrary bytes: it must never panic, and always answer an object
//! (what it could not read goes under `problems`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let parsed = raindrop::mail::parse(data);
    assert!(parsed.is_object(), "{parsed}");
    assert!(parsed.get("problems").is_some_and(|p| p.is_array()), "{parsed}");
    // The key an import gives the message is derived from the same bytes.
    let _ = raindrop::mail::import::message_key(data);
});
