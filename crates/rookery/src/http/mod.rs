//! The node's HTTP listener: Prometheus metrics at `/metrics`, the probes
//! `/healthz` and `/readyz`, and the admin API under `/api/v1/`. Any other
//! path is 404.
//!
//! Probes and metrics are open: Kubernetes and Prometheus call them without
//! credentials. The admin API is open on a loopback listener only; on any
//! other address every request needs `Authorization: Bearer <token>` with
//! the token of `http.admin_token_file` (or `cluster.admin_token_file`), and
//! without a token configured the API refuses everything there.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use rookery_store::AdminToken;
use tokio::task::JoinHandle;

use crate::health::{Health, Report};

pub mod api;
mod api_json;

/// The Prometheus text format's content type.
const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// What every handler may read.
#[derive(Debug)]
pub struct HttpState {
    pub health: Arc<Health>,
    pub metrics: crate::exporter::MetricsHandle,
    /// The admin API's bearer token, when one is configured.
    pub admin_token: Option<AdminToken>,
    /// The listener is on loopback: the admin API needs no token.
    pub loopback: bool,
    /// What the admin API's handlers work with.
    pub api: api::ApiState,
}

/// A bound, serving HTTP listener.
#[derive(Debug)]
pub struct HttpServer {
    pub address: SocketAddr,
    task: JoinHandle<()>,
}

impl HttpServer {
    /// Binds `address` and serves on the current runtime.
    pub async fn start(address: SocketAddr, state: HttpState) -> std::io::Result<HttpServer> {
        let listener = tokio::net::TcpListener::bind(address).await?;
        let address = listener.local_addr()?;
        let app = router(Arc::new(state));
        let task = tokio::spawn(async move {
            if let Err(error) = axum::serve(listener, app).await {
                tracing::error!(%error, "the HTTP listener stopped");
            }
        });
        Ok(HttpServer { address, task })
    }

    /// Stops serving (the last thing a node does, so that probes answer
    /// through a drain).
    pub fn stop(self) {
        self.task.abort();
    }
}

fn router(state: Arc<HttpState>) -> Router {
    let api = api::router(state.api.clone())
        .fallback(no_such_endpoint)
        .layer(middleware::from_fn_with_state(state.clone(), require_token));
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .nest("/api/v1", api)
        .fallback(no_such_endpoint)
        .with_state(state)
}

async fn metrics(State(state): State<Arc<HttpState>>) -> Response {
    (
        [(header::CONTENT_TYPE, PROMETHEUS_TEXT)],
        state.metrics.render(),
    )
        .into_response()
}

async fn healthz(State(state): State<Arc<HttpState>>) -> Response {
    probe_answer(&state.health.liveness())
}

async fn readyz(State(state): State<Arc<HttpState>>) -> Response {
    probe_answer(&state.health.readiness().await)
}

/// 200 when every check passed, else 503; the body names each check.
fn probe_answer(report: &Report) -> Response {
    let status = if report.is_ok() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, axum::Json(report)).into_response()
}

async fn no_such_endpoint() -> Response {
    error(StatusCode::NOT_FOUND, "no such endpoint")
}

/// An error answer: `{"error": "..."}` with its status.
pub fn error(status: StatusCode, message: &str) -> Response {
    (status, axum::Json(serde_json::json!({ "error": message }))).into_response()
}

/// The admin API's guard (see the module's comment).
async fn require_token(
    State(state): State<Arc<HttpState>>,
    request: Request,
    next: Next,
) -> Response {
    if state.loopback {
        return next.run(request).await;
    }
    let Some(token) = &state.admin_token else {
        return error(
            StatusCode::FORBIDDEN,
            "the admin API is off on a listener off loopback without a token: set http.admin_token_file",
        );
    };
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok());
    if presented.is_some_and(|value| token.admits_header(value)) {
        return next.run(request).await;
    }
    metrics::counter!("rookery_admin_api_refused_total").increment(1);
    tracing::warn!("admin API request without a valid bearer token refused");
    let mut answer = error(StatusCode::UNAUTHORIZED, "a valid bearer token is required");
    answer
        .headers_mut()
        .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    answer
}
