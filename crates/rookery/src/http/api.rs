//! The operations API under `/api/v1/` (REST-ish, after EMQX's `/api/v5`):
//! cluster status and membership, clients, sessions, subscriptions,
//! retained messages, this node's log filter and backups. `rookery ctl` is
//! its client; docs/operations.md lists every route.
//!
//! Reads and writes go to the store's Admin service (its operations API),
//! so any node answers for the whole cluster: a node with a store replica
//! asks its own, an edge-only node the store nodes its seeds name. What
//! only the edge holding a connection knows (messages in flight and
//! queued) is asked of that edge: in process when it is this node, else
//! over its forwarding port. The log filter and backups are this node's.
//!
//! Every answer is JSON; an error is `{"error": "..."}` with its HTTP
//! status. Lists are pages: `limit` (default 100, at most 1,000) and
//! `cursor` (the previous page's `next_cursor`, `null` on the last page).
//! The bearer-token guard in front of these routes is the HTTP server's.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock, Weak};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, RawQuery, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use rookery_broker::Inspector;
use rookery_cluster::{ForwardSettings, Peers};
use rookery_store::proto::{self, admin_client::AdminClient};
use rookery_store::{ClusterSecurity, StoreNode};
use serde::Deserialize;
use serde_json::{Value, json};
use tonic::transport::Channel;

use super::api_json as render;

/// How long a call to the store may take (a read, or an operator's write).
const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a membership change may take (adding a learner waits until it
/// has caught up with the log).
const MEMBERSHIP_TIMEOUT: Duration = Duration::from_secs(120);
/// How long the edge holding a client has to say what it knows of it.
const INSPECT_TIMEOUT: Duration = Duration::from_secs(2);

/// What the API works with: the way to the store, and this node's own
/// store replica and edge once they have started (the HTTP listener starts
/// first, so that the probes answer while the node starts).
#[derive(Clone)]
pub struct ApiState {
    inner: Arc<Inner>,
}

struct Inner {
    /// The node runs a store replica (not necessarily started yet).
    store_role: bool,
    /// The store nodes the seeds name, for a node without a replica.
    seeds: Arc<Peers>,
    security: ClusterSecurity,
    /// Where connections to other edges leave from.
    forward_local_address: Option<IpAddr>,
    /// Weak: the API must not hold a stopping node's store or edge.
    replica: OnceLock<Weak<StoreNode>>,
    edge: OnceLock<Inspector>,
}

impl std::fmt::Debug for ApiState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiState").finish_non_exhaustive()
    }
}

impl ApiState {
    /// The API of a node that runs a store replica (`store_role`) or
    /// reaches the store through `seeds`, with the cluster's `security`.
    pub fn new(
        store_role: bool,
        seeds: Vec<String>,
        security: ClusterSecurity,
        forward_local_address: Option<IpAddr>,
    ) -> ApiState {
        ApiState {
            inner: Arc::new(Inner {
                store_role,
                seeds: Arc::new(Peers::new(seeds, forward_local_address, security.clone())),
                security,
                forward_local_address,
                replica: OnceLock::new(),
                edge: OnceLock::new(),
            }),
        }
    }

    /// This node's store replica has started.
    pub fn attach_store(&self, replica: &Arc<StoreNode>) {
        let _ = self.inner.replica.set(Arc::downgrade(replica));
    }

    /// This node's edge has started.
    pub fn attach_edge(&self, edge: Inspector) {
        let _ = self.inner.edge.set(edge);
    }

    /// This node's store replica, while it runs.
    fn replica(&self) -> Result<Option<Arc<StoreNode>>, ApiError> {
        match self.inner.replica.get() {
            Some(replica) => replica
                .upgrade()
                .map(Some)
                .ok_or_else(|| ApiError::unavailable("this node's store replica has stopped")),
            None if self.inner.store_role => Err(ApiError::unavailable(
                "this node's store replica has not started yet",
            )),
            None => Ok(None),
        }
    }

    /// The store nodes to ask, in order.
    async fn store_channels(&self) -> Result<Vec<(String, Channel)>, ApiError> {
        if let Some(node) = self.replica()? {
            let address = node.address().to_owned();
            let channel = node
                .channels()
                .get(&address)
                .map_err(|error| ApiError::unavailable(format!("{address}: {error}")))?;
            return Ok(vec![(address, channel)]);
        }
        let seeds = &self.inner.seeds;
        let addresses = seeds.addresses().await;
        if addresses.is_empty() {
            return Err(ApiError::unavailable(
                "no store node: the cluster seeds resolve to no address",
            ));
        }
        Ok(addresses
            .into_iter()
            .filter_map(|address| {
                let channel = seeds.channel(&address).ok()?;
                Some((address, channel))
            })
            .collect())
    }

    /// Calls the store's Admin service with `message`, on each store node
    /// in turn until one answers (only an unreachable node is passed over);
    /// writes carry this node's admin credential.
    async fn admin<T: Clone, R>(
        &self,
        message: T,
        timeout: Duration,
        call: impl AsyncFn(
            AdminClient<Channel>,
            tonic::Request<T>,
        ) -> Result<tonic::Response<R>, tonic::Status>,
    ) -> Result<R, ApiError> {
        let mut last = ApiError::unavailable("no store node answered");
        for (address, channel) in self.store_channels().await? {
            let mut request = tonic::Request::new(message.clone());
            request.set_timeout(timeout);
            self.inner.security.authorize(&mut request);
            match call(AdminClient::new(channel), request).await {
                Ok(response) => return Ok(response.into_inner()),
                Err(status) if status.code() == tonic::Code::Unavailable => {
                    tracing::debug!(%address, status = status.message(), "a store node did not answer");
                    last = ApiError::from_status(&status);
                }
                Err(status) => return Err(ApiError::from_status(&status)),
            }
        }
        Err(last)
    }

    /// What the edge holding a client knows of its connection.
    async fn inspect(
        &self,
        edge: &proto::Edge,
        client_id: &str,
    ) -> Result<rookery_cluster::proto::InspectResponse, String> {
        if let Some(local) = self.inner.edge.get()
            && local.edge_id().as_deref() == Some(edge.edge_id.as_str())
        {
            return Ok(local.inspect(client_id));
        }
        if edge.address.is_empty() {
            return Err(format!(
                "edge {} has no forwarding address to ask",
                edge.edge_id
            ));
        }
        let settings = ForwardSettings {
            local_address: self.inner.forward_local_address,
            security: self.inner.security.clone(),
            ..ForwardSettings::default()
        };
        rookery_cluster::forward::inspect(&edge.address, &settings, client_id, INSPECT_TIMEOUT)
            .await
    }
}

/// The routes, relative to `/api/v1/` where the HTTP listener nests them
/// (behind its token guard).
pub fn router<S: Clone + Send + Sync + 'static>(state: ApiState) -> Router<S> {
    Router::new()
        .route("/cluster", get(cluster_status))
        .route("/cluster/voters", post(add_voter))
        .route("/cluster/learners", post(add_learner))
        .route("/cluster/nodes/{id}", delete(remove_node))
        .route("/cluster/leader", post(transfer_leader))
        .route("/clients", get(list_clients))
        .route("/clients/{id}", get(show_client).delete(kick_client))
        .route("/sessions", get(list_sessions))
        .route("/sessions/{id}", get(show_session).delete(delete_session))
        .route("/subscriptions", get(list_subscriptions))
        .route("/retained", get(list_retained))
        .route(
            "/retained/{*topic}",
            get(get_retained).delete(delete_retained),
        )
        .route("/log-level", get(log_level).put(set_log_level))
        .route("/backup", post(backup))
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(state)
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "this route does not take that method; see docs/operations.md",
    )
}

/// A path parameter, with a JSON error when it is not valid.
fn path_param(path: Result<Path<String>, PathRejection>) -> Result<String, ApiError> {
    path.map(|Path(value)| value)
        .map_err(|rejection| ApiError::bad_request(rejection.body_text()))
}

/// An error answer: its status and `{"error": message}`.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, message: impl Into<String>) -> Self {
        ApiError {
            status,
            message: message.into(),
        }
    }

    fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }

    fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, message)
    }

    fn unavailable(message: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, message)
    }

    /// The HTTP status that says what the store's gRPC status says.
    fn from_status(status: &tonic::Status) -> Self {
        use tonic::Code;
        let http = match status.code() {
            Code::InvalidArgument | Code::OutOfRange => StatusCode::BAD_REQUEST,
            Code::NotFound => StatusCode::NOT_FOUND,
            Code::AlreadyExists | Code::FailedPrecondition | Code::Aborted => StatusCode::CONFLICT,
            // The node's own credential was refused by the store: a
            // configuration problem of the cluster, not the caller's token.
            Code::Unauthenticated | Code::PermissionDenied => StatusCode::FORBIDDEN,
            Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            Code::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
            _ => StatusCode::BAD_GATEWAY,
        };
        let message = match status.code() {
            Code::Unauthenticated | Code::PermissionDenied => format!(
                "the store refused this node's credential: {} (set the same \
                 cluster.admin_token_file on every node)",
                status.message()
            ),
            _ => status.message().to_owned(),
        };
        Self::new(http, message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        json_response(self.status, &json!({ "error": self.message }))
    }
}

/// A JSON answer with its status.
fn json_response(status: StatusCode, value: &Value) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        format!("{value}\n"),
    )
        .into_response()
}

/// A successful answer.
#[derive(Debug)]
pub struct Json(Value);

impl IntoResponse for Json {
    fn into_response(self) -> Response {
        json_response(StatusCode::OK, &self.0)
    }
}

type Answer = Result<Json, ApiError>;

/// A JSON body of type `T`.
fn body<T: serde::de::DeserializeOwned>(bytes: &Bytes) -> Result<T, ApiError> {
    serde_json::from_slice(bytes)
        .map_err(|error| ApiError::bad_request(format!("the request's JSON body: {error}")))
}

/// The query string's parameters (`application/x-www-form-urlencoded`),
/// refusing any not in `known` and any given twice.
fn params(raw: Option<String>, known: &[&str]) -> Result<BTreeMap<String, String>, ApiError> {
    let mut params = BTreeMap::new();
    for pair in raw.as_deref().unwrap_or_default().split('&') {
        if pair.is_empty() {
            continue;
        }
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        let (key, value) = (form_decode(key)?, form_decode(value)?);
        if !known.contains(&key.as_str()) {
            return Err(ApiError::bad_request(format!(
                "unknown query parameter {key:?}; this route takes {known:?}"
            )));
        }
        if params.insert(key.clone(), value).is_some() {
            return Err(ApiError::bad_request(format!("{key:?} is given twice")));
        }
    }
    Ok(params)
}

/// A form-encoded string decoded: `+` is a space, `%XX` a byte; the bytes
/// must be UTF-8.
fn form_decode(text: &str) -> Result<String, ApiError> {
    let bad = || ApiError::bad_request(format!("{text:?} is not a valid query string part"));
    let mut bytes = Vec::with_capacity(text.len());
    let mut rest = text.as_bytes();
    while let Some((&byte, after)) = rest.split_first() {
        match byte {
            b'+' => bytes.push(b' '),
            b'%' => {
                let hex = after.get(..2).ok_or_else(bad)?;
                let hex = std::str::from_utf8(hex).map_err(|_| bad())?;
                bytes.push(u8::from_str_radix(hex, 16).map_err(|_| bad())?);
                rest = &after[2..];
                continue;
            }
            other => bytes.push(other),
        }
        rest = after;
    }
    String::from_utf8(bytes).map_err(|_| bad())
}

/// A parameter's text, empty when absent.
fn text_param(params: &BTreeMap<String, String>, key: &str) -> String {
    params.get(key).cloned().unwrap_or_default()
}

/// `limit`: 0 (the default page) when absent.
fn limit_param(params: &BTreeMap<String, String>) -> Result<u32, ApiError> {
    match params.get("limit") {
        None => Ok(0),
        Some(text) => text
            .parse()
            .map_err(|_| ApiError::bad_request(format!("limit {text:?} is not a whole number"))),
    }
}

// ---- Cluster ----------------------------------------------------------------

async fn cluster_status(State(state): State<ApiState>) -> Answer {
    let status = state
        .admin(
            proto::ClusterStatusRequest {},
            CALL_TIMEOUT,
            async |mut admin, request| admin.cluster_status(request).await,
        )
        .await?;
    Ok(Json(render::cluster(&status)))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct MemberBody {
    node_id: u64,
    /// The node's store address; needed unless it is a member already.
    #[serde(default)]
    address: Option<String>,
}

async fn add_voter(State(state): State<ApiState>, request: Bytes) -> Answer {
    let MemberBody { node_id, address } = body(&request)?;
    let status = state
        .admin(
            proto::StatusRequest {},
            CALL_TIMEOUT,
            async |mut admin, request| admin.status(request).await,
        )
        .await?;
    let member = status
        .voters
        .iter()
        .chain(&status.learners)
        .any(|member| member.node_id == node_id);
    if status.voters.iter().any(|member| member.node_id == node_id) {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            format!("node {node_id} is a voter already"),
        ));
    }
    if !member {
        let Some(address) = address else {
            return Err(ApiError::bad_request(format!(
                "node {node_id} is not in the group: give its store address (\"address\") to add it"
            )));
        };
        add_learner_at(&state, node_id, address).await?;
    }
    let change = proto::ChangeMembershipRequest {
        voters: vec![node_id],
        remove_others: false,
        add: true,
    };
    let done = state
        .admin(change, MEMBERSHIP_TIMEOUT, async |mut admin, request| {
            admin.change_membership(request).await
        })
        .await?;
    Ok(Json(
        json!({ "node_id": node_id, "role": "voter", "log_index": done.log_index }),
    ))
}

async fn add_learner_at(state: &ApiState, node_id: u64, address: String) -> Result<u64, ApiError> {
    let request = proto::AddLearnerRequest {
        member: Some(proto::Member { node_id, address }),
    };
    let done = state
        .admin(request, MEMBERSHIP_TIMEOUT, async |mut admin, request| {
            admin.add_learner(request).await
        })
        .await?;
    Ok(done.log_index)
}

async fn add_learner(State(state): State<ApiState>, request: Bytes) -> Answer {
    let MemberBody { node_id, address } = body(&request)?;
    let address = address
        .ok_or_else(|| ApiError::bad_request("a learner needs its store address (\"address\")"))?;
    let log_index = add_learner_at(&state, node_id, address).await?;
    Ok(Json(
        json!({ "node_id": node_id, "role": "learner", "log_index": log_index }),
    ))
}

async fn remove_node(
    State(state): State<ApiState>,
    id: Result<Path<String>, PathRejection>,
) -> Answer {
    let id = path_param(id)?;
    let node_id: u64 = id
        .parse()
        .map_err(|_| ApiError::bad_request(format!("{id:?} is not a node id")))?;
    let done = state
        .admin(
            proto::RemoveNodeRequest { node_id },
            MEMBERSHIP_TIMEOUT,
            async |mut admin, request| admin.remove_node(request).await,
        )
        .await?;
    Ok(Json(
        json!({ "node_id": node_id, "removed": true, "log_index": done.log_index }),
    ))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct LeaderBody {
    /// The voter to hand over to; absent or 0: the one furthest along.
    #[serde(default)]
    node_id: u64,
}

async fn transfer_leader(State(state): State<ApiState>, request: Bytes) -> Answer {
    let LeaderBody { node_id } = body(&request)?;
    let done = state
        .admin(
            proto::TransferLeaderRequest { node_id },
            MEMBERSHIP_TIMEOUT,
            async |mut admin, request| admin.transfer_leader(request).await,
        )
        .await?;
    Ok(Json(json!({
        "leader_id": done.leader_id,
        "leader_address": render::non_empty(&done.leader_address),
        "term": done.term,
    })))
}

// ---- Clients and sessions ---------------------------------------------------

async fn list_clients(State(state): State<ApiState>, RawQuery(raw): RawQuery) -> Answer {
    let params = params(raw, &["edge", "match", "limit", "cursor"])?;
    sessions_page(&state, &params, true).await
}

async fn list_sessions(State(state): State<ApiState>, RawQuery(raw): RawQuery) -> Answer {
    let params = params(raw, &["match", "limit", "cursor"])?;
    sessions_page(&state, &params, false).await
}

async fn sessions_page(
    state: &ApiState,
    params: &BTreeMap<String, String>,
    online: bool,
) -> Answer {
    let request = proto::ListSessionsRequest {
        online,
        edge: text_param(params, "edge"),
        pattern: text_param(params, "match"),
        limit: limit_param(params)?,
        cursor: text_param(params, "cursor"),
    };
    let page = state
        .admin(request, CALL_TIMEOUT, async |mut admin, request| {
            admin.list_sessions(request).await
        })
        .await?;
    let items: Vec<Value> = page.sessions.iter().map(render::session).collect();
    Ok(Json(render::page(items, &page.next_cursor)))
}

async fn session_details(
    state: &ApiState,
    client_id: &str,
) -> Result<proto::GetSessionInfoResponse, ApiError> {
    let request = proto::GetSessionInfoRequest {
        client_id: client_id.to_owned(),
    };
    state
        .admin(request, CALL_TIMEOUT, async |mut admin, request| {
            admin.get_session_info(request).await
        })
        .await
}

async fn show_client(
    State(state): State<ApiState>,
    client_id: Result<Path<String>, PathRejection>,
) -> Answer {
    let client_id = path_param(client_id)?;
    let details = session_details(&state, &client_id).await?;
    let online = details
        .info
        .as_ref()
        .and_then(|info| info.session.as_ref())
        .is_some_and(|session| !session.edge_id.is_empty());
    if !online {
        return Err(ApiError::not_found(if details.info.is_some() {
            format!("client {client_id:?} is not connected (its session is: /api/v1/sessions/...)")
        } else {
            format!("no client {client_id:?} is connected")
        }));
    }
    let mut answer = render::details(&details);
    // In flight and queued are the edge's: asked, never guessed.
    let live = match &details.edge {
        Some(edge) => state.inspect(edge, &client_id).await,
        None => Err("its edge is not registered (its lease lapsed)".to_owned()),
    };
    render::add_live(&mut answer, live);
    Ok(Json(answer))
}

async fn kick_client(
    State(state): State<ApiState>,
    client_id: Result<Path<String>, PathRejection>,
) -> Answer {
    let client_id = path_param(client_id)?;
    let request = proto::KickClientRequest {
        client_id: client_id.clone(),
    };
    let done = state
        .admin(request, CALL_TIMEOUT, async |mut admin, request| {
            admin.kick_client(request).await
        })
        .await?;
    Ok(Json(json!({
        "client_id": client_id,
        "kicked": true,
        "edge_id": done.edge_id,
        "log_index": done.log_index,
    })))
}

async fn show_session(
    State(state): State<ApiState>,
    client_id: Result<Path<String>, PathRejection>,
) -> Answer {
    let client_id = path_param(client_id)?;
    let details = session_details(&state, &client_id).await?;
    if details.info.is_none() {
        return Err(ApiError::not_found(format!("no session {client_id:?}")));
    }
    Ok(Json(render::details(&details)))
}

async fn delete_session(
    State(state): State<ApiState>,
    client_id: Result<Path<String>, PathRejection>,
) -> Answer {
    let client_id = path_param(client_id)?;
    let request = proto::DeleteSessionRequest {
        client_id: client_id.clone(),
    };
    let done = state
        .admin(request, CALL_TIMEOUT, async |mut admin, request| {
            admin.delete_session(request).await
        })
        .await?;
    Ok(Json(json!({
        "client_id": client_id,
        "deleted": true,
        "kicked_edge_id": render::non_empty(&done.kicked_edge_id),
        "log_index": done.log_index,
    })))
}

// ---- Subscriptions and retained messages ------------------------------------

/// `topic`: only subscriptions with exactly this filter; `client`: only
/// this client's.
async fn list_subscriptions(State(state): State<ApiState>, RawQuery(raw): RawQuery) -> Answer {
    let params = params(raw, &["topic", "client", "limit", "cursor"])?;
    let request = proto::ListSubscriptionsRequest {
        client_id: text_param(&params, "client"),
        filter: text_param(&params, "topic"),
        limit: limit_param(&params)?,
        cursor: text_param(&params, "cursor"),
    };
    let page = state
        .admin(request, CALL_TIMEOUT, async |mut admin, request| {
            admin.list_subscriptions(request).await
        })
        .await?;
    let items: Vec<Value> = page
        .subscriptions
        .iter()
        .map(render::subscription_info)
        .collect();
    Ok(Json(render::page(items, &page.next_cursor)))
}

async fn list_retained(State(state): State<ApiState>, RawQuery(raw): RawQuery) -> Answer {
    let params = params(raw, &["filter", "limit", "cursor"])?;
    let request = proto::ListRetainedRequest {
        filter: text_param(&params, "filter"),
        limit: limit_param(&params)?,
        cursor: text_param(&params, "cursor"),
    };
    let page = state
        .admin(request, CALL_TIMEOUT, async |mut admin, request| {
            admin.list_retained(request).await
        })
        .await?;
    let items: Vec<Value> = page.messages.iter().map(render::retained_info).collect();
    Ok(Json(render::page(items, &page.next_cursor)))
}

async fn get_retained(
    State(state): State<ApiState>,
    topic: Result<Path<String>, PathRejection>,
) -> Answer {
    let topic = path_param(topic)?;
    let request = proto::GetRetainedMessageRequest {
        topic: topic.clone(),
    };
    let found = state
        .admin(request, CALL_TIMEOUT, async |mut admin, request| {
            admin.get_retained_message(request).await
        })
        .await?;
    match found.message {
        Some(message) => Ok(Json(render::message(&message, message.payload.len()))),
        None => Err(ApiError::not_found(format!(
            "no message is retained on {topic:?}"
        ))),
    }
}

async fn delete_retained(
    State(state): State<ApiState>,
    topic: Result<Path<String>, PathRejection>,
) -> Answer {
    let topic = path_param(topic)?;
    let request = proto::DeleteRetainedRequest {
        topic: topic.clone(),
    };
    let done = state
        .admin(request, CALL_TIMEOUT, async |mut admin, request| {
            admin.delete_retained(request).await
        })
        .await?;
    Ok(Json(
        json!({ "topic": topic, "deleted": true, "log_index": done.log_index }),
    ))
}

// ---- This node: log filter and backups --------------------------------------

async fn log_level() -> Answer {
    match crate::logging::current_filter() {
        Some(filter) => Ok(Json(json!({ "filter": filter }))),
        None => Err(ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "logging is not set up in this process",
        )),
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FilterBody {
    filter: String,
}

async fn set_log_level(request: Bytes) -> Answer {
    let FilterBody { filter } = body(&request)?;
    match crate::logging::set_filter(&filter) {
        Ok(previous) => {
            tracing::info!(filter, previous, "log filter changed through the API");
            Ok(Json(json!({ "filter": filter, "previous": previous })))
        }
        Err(error @ crate::logging::FilterError::Invalid { .. }) => {
            Err(ApiError::bad_request(error.to_string()))
        }
        Err(error) => Err(ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            error.to_string(),
        )),
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct BackupBody {
    /// A new directory on this node's file system.
    dir: PathBuf,
}

async fn backup(State(state): State<ApiState>, request: Bytes) -> Answer {
    let BackupBody { dir } = body(&request)?;
    let Some(node) = state.replica()? else {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "this node has no store replica to back up; ask a store node",
        ));
    };
    // Relative to the node's working directory, reported absolute.
    let dir = std::path::absolute(&dir)
        .map_err(|error| ApiError::bad_request(format!("{}: {error}", dir.display())))?;
    let target = dir.clone();
    let node_id = node.node_id();
    let written = tokio::task::spawn_blocking(move || {
        rookery_store::backup::backup(
            node.local_db(),
            node_id,
            &target,
            rookery_store::writer::now_ms(),
        )
    })
    .await
    .map_err(|error| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, error.to_string()))?;
    match written {
        Ok(info) => {
            tracing::info!(dir = %dir.display(), applied_index = info.applied_index, "store backup written");
            Ok(Json(render::backup(&info)))
        }
        Err(error @ rookery_store::backup::BackupError::Exists(_)) => {
            Err(ApiError::new(StatusCode::CONFLICT, error.to_string()))
        }
        Err(error) => {
            tracing::warn!(%error, dir = %dir.display(), "store backup failed");
            Err(ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                error.to_string(),
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_strings_are_form_decoded() {
        assert_eq!(form_decode("a+b%2F%23").unwrap(), "a b/#");
        assert_eq!(form_decode("%C3%BC").unwrap(), "ü");
        assert!(form_decode("%G1").is_err());
        assert!(form_decode("%4").is_err());
        assert!(form_decode("%FF").is_err(), "not UTF-8");
        let parsed = params(Some("match=s%2A&limit=5&".into()), &["match", "limit"]).unwrap();
        assert_eq!(text_param(&parsed, "match"), "s*");
        assert_eq!(limit_param(&parsed).unwrap(), 5);
        assert!(params(Some("colour=blue".into()), &["match"]).is_err());
        assert!(params(Some("limit=1&limit=2".into()), &["limit"]).is_err());
        assert!(limit_param(&params(Some("limit=-1".into()), &["limit"]).unwrap()).is_err());
        assert_eq!(limit_param(&BTreeMap::new()).unwrap(), 0);
    }

    #[test]
    fn store_errors_keep_their_meaning_in_http() {
        let status = |code| ApiError::from_status(&tonic::Status::new(code, "why")).status;
        assert_eq!(status(tonic::Code::NotFound), StatusCode::NOT_FOUND);
        assert_eq!(
            status(tonic::Code::InvalidArgument),
            StatusCode::BAD_REQUEST
        );
        assert_eq!(
            status(tonic::Code::FailedPrecondition),
            StatusCode::CONFLICT
        );
        assert_eq!(
            status(tonic::Code::Unavailable),
            StatusCode::SERVICE_UNAVAILABLE
        );
        assert_eq!(status(tonic::Code::PermissionDenied), StatusCode::FORBIDDEN);
        assert_eq!(status(tonic::Code::Internal), StatusCode::BAD_GATEWAY);
    }
}
