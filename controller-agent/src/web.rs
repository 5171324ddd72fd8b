//! The web page (`GET /`): Administration > System Upgrade. Three static
//! files compiled into the binary; the page itself calls the REST API with
//! the admin token the operator pastes in, so serving it needs no token.
//!
//! The script and the style sheet are served under names that carry their
//! digest (`/ui/app.3f2a….js`), so a browser may keep them for a year: a new
//! version of molt has new names, which the page (never cached) points to.
//! Every file is compressed once, at first use, and sent gzip-encoded to
//! clients that accept it.

use std::sync::LazyLock;

use axum::{
    Router,
    extract::Path,
    http::{HeaderMap, HeaderValue, header},
    response::{IntoResponse, Response},
    routing::get,
};
use common::errors::ErrorKind;

const INDEX: &str = include_str!("../web/index.html");
const APP_JS: &str = include_str!("../web/app.js");
const APP_CSS: &str = include_str!("../web/app.css");

/// One file of the page, as served.
struct Asset {
    content_type: &'static str,
    body: Vec<u8>,
    gzip: Vec<u8>,
    /// The name it is served under (`app.HASH.js`); empty for the page.
    name: String,
}

impl Asset {
    fn new(content_type: &'static str, body: Vec<u8>, stem: &str, ext: &str) -> Self {
        use std::io::Write;
        let mut z = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        z.write_all(&body).expect("compressing into memory");
        let gzip = z.finish().expect("compressing into memory");
        let digest = common::Sha256Digest::of(&body).to_hex();
        let name = if stem.is_empty() { String::new() } else { format!("{stem}.{}.{ext}", &digest[..16]) };
        Self { content_type, body, gzip, name }
    }

    /// The answer to a request with `headers`: gzip-encoded when accepted.
    fn serve(&self, headers: &HeaderMap, cache: &'static str) -> Response {
        let gzip = headers
            .get(header::ACCEPT_ENCODING)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.split(',').any(|e| e.split(';').next().is_some_and(|e| e.trim() == "gzip")));
        let mut r = if gzip { self.gzip.clone() } else { self.body.clone() }.into_response();
        let h = r.headers_mut();
        if gzip {
            h.insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
        }
        h.insert(header::VARY, HeaderValue::from_static("accept-encoding"));
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static(self.content_type));
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static(cache));
        h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
        h.insert(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static("default-src 'self'; style-src 'self' 'unsafe-inline'; frame-ancestors 'none'"),
        );
        r
    }
}

/// The page and its two files.
struct Page {
    index: Asset,
    js: Asset,
    css: Asset,
}

static PAGE: LazyLock<Page> = LazyLock::new(|| {
    let js = Asset::new("text/javascript; charset=utf-8", APP_JS.into(), "app", "js");
    let css = Asset::new("text/css; charset=utf-8", APP_CSS.into(), "app", "css");
    let html =
        INDEX.replace("/ui/app.js", &format!("/ui/{}", js.name)).replace("/ui/app.css", &format!("/ui/{}", css.name));
    let index = Asset::new("text/html; charset=utf-8", html.into_bytes(), "", "");
    Page { index, js, css }
});

/// The page: never cached (after an upgrade it names the new files).
const NO_STORE: &str = "no-store";
/// A file named by its digest: the same name is the same bytes.
const IMMUTABLE: &str = "public, max-age=31536000, immutable";

/// `GET /ui/NAME`: a file by its digest name; the plain names (`app.js`)
/// answer too, never cached, for a page of an older version still open.
async fn file(Path(name): Path<String>, headers: HeaderMap) -> Response {
    let p = &*PAGE;
    match name.as_str() {
        n if n == p.js.name => p.js.serve(&headers, IMMUTABLE),
        n if n == p.css.name => p.css.serve(&headers, IMMUTABLE),
        "app.js" => p.js.serve(&headers, NO_STORE),
        "app.css" => p.css.serve(&headers, NO_STORE),
        _ => agent_core::http::error(ErrorKind::NotFound, format!("no such file of the page: /ui/{name}")),
    }
}

/// The System Upgrade page (every controller serves it).
pub fn router<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route("/", get(|headers: HeaderMap| async move { PAGE.index.serve(&headers, NO_STORE) }))
        .route("/ui/{name}", get(file))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_names_its_files_by_digest_and_they_decompress_to_the_sources() {
        use std::io::Read;
        let p = &*PAGE;
        let html = String::from_utf8(p.index.body.clone()).unwrap();
        assert!(html.contains(&format!("/ui/{}", p.js.name)) && html.contains(&format!("/ui/{}", p.css.name)));
        assert!(p.js.name.starts_with("app.") && p.js.name.ends_with(".js") && p.js.name.len() == "app..js".len() + 16);
        for (a, src) in [(&p.js, APP_JS), (&p.css, APP_CSS)] {
            let mut out = String::new();
            flate2::read::GzDecoder::new(a.gzip.as_slice()).read_to_string(&mut out).unwrap();
            assert_eq!(out, src);
            assert!(a.gzip.len() * 2 < a.body.len(), "{}: {} of {} bytes", a.name, a.gzip.len(), a.body.len());
        }
    }
}
