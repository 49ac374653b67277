//! The JSON-lines reader (`add-schemas`, `db load`) on arbitrary bytes: an error naming a
//! line, or objects — never a panic.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    match raindrop::json_lines::read_objects(data, "fuzz") {
        Ok(objects) => assert!(objects.len() <= data.len()),
        Err(e) => assert!(e.to_string().starts_with("fuzz:") || e.to_string().starts_with("cannot read fuzz")),
    }
});
