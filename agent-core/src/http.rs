//! HTTP by the book on the one port, for what is not gRPC: an unknown path
//! is 404 and a known path with another method 405 (with `Allow`), both with
//! the one error body of [`common::errors`], on every node whether or not
//! the caller has a certificate. A Service Engine serves no REST API and no
//! page: it answers them 404, naming the controllers that do.

use axum::{
    Json, Router,
    body::Body,
    http::{Request, StatusCode},
    response::{IntoResponse, Response},
};
use common::errors::ErrorKind;

/// A JSON error answer of `kind`.
pub fn error(kind: ErrorKind, message: impl Into<String>) -> Response {
    let status = StatusCode::from_u16(kind.http()).expect("the table holds valid statuses");
    (status, Json(kind.body(message))).into_response()
}

/// `router` with the 404 fallback and JSON 405 answers (axum adds `Allow`).
/// Call it once every route is in.
pub fn by_the_book(router: Router) -> Router {
    router
        .method_not_allowed_fallback(|req: Request<Body>| async move {
            let (method, path) = (req.method(), req.uri().path());
            error(
                ErrorKind::MethodNotAllowed,
                format!("{method} is not allowed on {path}; the Allow header lists what is"),
            )
        })
        .fallback(|req: Request<Body>| async move {
            error(ErrorKind::NotFound, format!("no such path: {} {}", req.method(), req.uri().path()))
        })
}

/// What a Service Engine answers every request that is not gRPC: its own
/// metrics at `/metrics` (to a caller with a cluster certificate); it
/// serves neither the REST API nor the page, and says where they are.
pub fn service_engine(ctx: std::sync::Arc<crate::node::NodeCtx>) -> Router {
    let at: Vec<String> = ctx.settings.controllers.iter().map(|c| format!("https://{}", c.addr)).collect();
    let message = format!(
        "this node is a Service Engine: the REST API and the page are served by the controllers ({})",
        at.join(", ")
    );
    let metrics = axum::routing::get(move |req: Request<Body>| crate::metrics::service_engine(ctx.clone(), req));
    by_the_book(Router::new().route("/metrics", metrics)).fallback(move || {
        let message = message.clone();
        async move { error(ErrorKind::NotFound, message) }
    })
}

#[cfg(test)]
mod tests {
    use axum::{
        body::Body,
        http::{Request, StatusCode, header},
        middleware::{self, Next},
        routing::get,
    };
    use tower::ServiceExt;

    use super::*;

    async fn call(app: Router, method: &str, path: &str) -> (StatusCode, axum::http::HeaderMap, serde_json::Value) {
        let req = Request::builder().method(method).uri(path).body(Body::empty()).unwrap();
        let r = app.oneshot(req).await.unwrap();
        let (parts, body) = r.into_parts();
        let bytes = axum::body::to_bytes(body, 1 << 20).await.unwrap();
        (parts.status, parts.headers, serde_json::from_slice(&bytes).unwrap_or_default())
    }

    #[tokio::test]
    async fn unknown_paths_are_json_404_and_other_methods_json_405_with_allow() {
        let app = || {
            let inner = Router::new()
                .route("/api/cluster", get(|| async { "ok" }))
                .route_layer(middleware::from_fn(|req: Request<Body>, next: Next| async move { next.run(req).await }));
            by_the_book(inner.merge(Router::new().route("/", get(|| async { "page" }))))
        };
        let (code, _, body) = call(app(), "GET", "/nope").await;
        assert_eq!((code, body["kind"].as_str()), (StatusCode::NOT_FOUND, Some("not_found")));
        for path in ["/api/cluster", "/"] {
            let (code, headers, body) = call(app(), "DELETE", path).await;
            assert_eq!((code, body["kind"].as_str()), (StatusCode::METHOD_NOT_ALLOWED, Some("method_not_allowed")));
            assert_eq!(headers[header::ALLOW], "GET,HEAD", "{path}");
            assert_eq!(headers[header::CONTENT_TYPE], "application/json");
        }
    }
}
