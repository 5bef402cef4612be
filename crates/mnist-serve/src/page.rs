//! The draw-a-digit page: HTML, CSS and JavaScript embedded in the binary, loading
//! nothing from other hosts.

use axum::http::header;
use axum::response::{IntoResponse, Response};

/// Only this server's own files, and the canvas's own images.
const POLICY: &str = "default-src 'self'; img-src 'self' data: blob:; style-src 'self'; script-src 'self'; connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "no-cache"),
            (header::CONTENT_SECURITY_POLICY, POLICY),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        body,
    )
        .into_response()
}

/// `GET /`.
pub(crate) async fn index() -> Response {
    asset("text/html; charset=utf-8", include_str!("assets/index.html"))
}

/// `GET /app.js`.
pub(crate) async fn script() -> Response {
    asset("text/javascript; charset=utf-8", include_str!("assets/app.js"))
}

/// `GET /style.css`.
pub(crate) async fn style() -> Response {
    asset("text/css; charset=utf-8", include_str!("assets/style.css"))
}
