//! The page to read the mail at `/`: plain HTML, CSS and JS from `web/`, built into the binary
//! (no build step, nothing to install beside it). It reads everything through the inflow API
//! (`api/inflow.js`) like any other client.

/// The content type and bytes of the page's file at `path`, if it is one.
pub fn asset(path: &str) -> Option<(&'static str, &'static [u8])> {
    Some(match path {
        "/" | "/index.html" => ("text/html; charset=utf-8", include_bytes!("../web/index.html")),
        "/app.js" => ("text/javascript; charset=utf-8", include_bytes!("../web/app.js")),
        "/style.css" => ("text/css; charset=utf-8", include_bytes!("../web/style.css")),
        _ => return None,
    })
}
