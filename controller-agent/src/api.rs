//! The REST API under `/api/` (token auth). Thin: parse, call the leader,
//! map errors to status codes once (in [`ApiError`]).

use std::sync::Arc;

use axum::{
    Json, Router,
    body::Body,
    extract::{Query, Request, State},
    http::{HeaderMap, StatusCode},
    middleware::{self, Next},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use serde::Deserialize;

use common::errors::ErrorKind;
use molt_api::{
    ErrorBody,
    cluster::Controllers,
    config::VsView,
    error::Errors,
    requests::{AddController, NoFields, PrestageRequest, Started, Uploaded},
    status::UpgradeStatus,
};

use crate::leader::{
    LeaderState,
    cluster::ClusterDoc,
    distribute::Refused,
    images::ImageError,
    store::{ConfigError, SeGroup, VirtualService},
    upgrade::{self, GroupRequest, Plan, UpgradeRequest},
};
use coordinator::config::Rules;

/// An error answer: status plus `{"error": ..., "kind": ...}` (and pre-checks
/// when they ran).
#[derive(Debug)]
pub struct ApiError {
    kind: ErrorKind,
    body: ErrorBody,
}

impl ApiError {
    /// An error with a message; its status comes from the one table
    /// ([`common::errors`]).
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self { kind, body: ErrorBody::new(kind, message) }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.kind.http()).expect("the table holds valid statuses");
        (status, Json(self.body)).into_response()
    }
}

impl From<Refused> for ApiError {
    fn from(r: Refused) -> Self {
        Self { kind: r.kind, body: ErrorBody { prechecks: r.prechecks, ..ErrorBody::new(r.kind, r.message) } }
    }
}

impl From<ImageError> for ApiError {
    fn from(e: ImageError) -> Self {
        Refused::from(e).into()
    }
}

/// The REST routes every controller serves. Only the leader answers
/// `/api/*`; the others redirect there, or answer reads from their replica
/// (marked stale) and refuse writes while no leader is elected.
pub fn router(state: Arc<LeaderState>) -> Router {
    let token: Arc<str> = state.settings.api_token.clone().unwrap_or_default().into();
    let api = Router::new()
        .route("/api/cluster", get(cluster))
        .route("/api/upload", post(upload))
        .route("/api/cluster/upgrade/prestage", post(prestage))
        .route("/api/cluster/upgrade/status", get(status))
        .route("/api/cluster/upgrade", post(start_upgrade))
        .route("/api/cluster/upgrade/resume", post(resume))
        .route("/api/cluster/upgrade/rollback", post(rollback))
        .route("/api/cluster/upgrade/pause", post(pause))
        .route("/api/cluster/upgrade/abort", post(abort))
        .route("/api/cluster/upgrade/segroup", post(upgrade_segroup))
        .route("/api/cluster/controllers", get(controllers).post(add_controller))
        .route("/api/cluster/controllers/{id}", axum::routing::delete(remove_controller))
        .route("/api/cluster/settings", get(get_settings).put(put_settings))
        .route("/api/serviceenginegroup", get(list_groups).post(create_group))
        .route("/api/serviceenginegroup/{name}", get(get_group).put(put_group).delete(delete_group))
        .route("/api/virtualservice", get(list_vs).post(create_vs))
        .route("/api/virtualservice/{name}", get(get_vs).put(put_vs).delete(delete_vs))
        .route("/api/{*rest}", axum::routing::any(not_found))
        .route_layer(middleware::from_fn_with_state(state.clone(), follow_leader));
    let audit_state = state.clone();
    let described = Router::new().route(OPENAPI_PATH, get(openapi_json));
    Router::new()
        .merge(api)
        .route("/metrics", get(metrics))
        .route_layer(middleware::from_fn(move |req: Request, next: Next| {
            let token = token.clone();
            let state = audit_state.clone();
            async move { authorize(&token, &state, req, next).await }
        }))
        .merge(described)
        .layer(middleware::map_response(nosniff))
        .with_state(state)
}

/// Header naming the controller that leads, on every API answer.
pub const LEADER_HEADER: &str = "x-molt-leader";
/// Header set on a read answered from a replica while no leader is known.
pub const STALE_HEADER: &str = "x-molt-stale";

/// The leader answers; a controller that knows another leader forwards the
/// call there and streams the answer back; with no leader, reads come from
/// this controller's replica marked stale, and writes get 503. Every answer
/// names the leader in [`LEADER_HEADER`].
async fn follow_leader(State(state): State<Arc<LeaderState>>, req: Request, next: Next) -> Response {
    let me = state.settings.node_id.as_str();
    if let Some(why) = state.consensus.fatal()
        && req.method() != http::Method::GET
    {
        discard_briefly(&mut req.into_body().into_data_stream()).await;
        return ApiError::from(crate::raft::WriteError::Fatal(why)).into_response();
    }
    let leader = state.consensus.leader().filter(|m| m.id != me);
    let (mut r, leader_id) = match leader {
        _ if state.leading() => (next.run(req).await, Some(me.to_owned())),
        Some(m) if !req.headers().contains_key(crate::forward::FORWARDED) => {
            let tls = state.settings.tls.material();
            // A read the leader cannot answer is answered here, marked stale.
            let read = (req.method() == http::Method::GET).then(|| (req.uri().clone(), req.headers().clone()));
            let req = match bounded_for_forwarding(req).await {
                Ok(r) => r,
                Err(e) => return e.into_response(),
            };
            match crate::forward::forward(&tls, me, &m, req).await {
                Ok(r) => (r, Some(m.id)),
                Err(why) => match read {
                    Some((uri, headers)) => {
                        let mut local = Request::new(Body::empty());
                        *local.uri_mut() = uri;
                        *local.headers_mut() = headers;
                        let mut r = next.run(local).await;
                        r.headers_mut().insert(STALE_HEADER, http::HeaderValue::from_static("true"));
                        (r, None)
                    }
                    None => (crate::forward::no_leader(me, &why), None),
                },
            }
        }
        _ if req.method() == http::Method::GET => {
            let mut r = next.run(req).await;
            r.headers_mut().insert(STALE_HEADER, http::HeaderValue::from_static("true"));
            (r, None)
        }
        _ => {
            discard_briefly(&mut req.into_body().into_data_stream()).await;
            let r = ApiError::new(
                ErrorKind::Unavailable,
                format!(
                    "no quorum: {me} cannot reach a majority of the controllers and no leader is elected; \
                     writes are refused until one is (reads answer from this controller's copy, marked {STALE_HEADER})"
                ),
            );
            (r.into_response(), None)
        }
    };
    if let Some(v) = leader_id.and_then(|l| http::HeaderValue::from_str(&l).ok()) {
        r.headers_mut().entry(LEADER_HEADER).or_insert(v);
    }
    r
}

/// Every API answer is data, never something a browser should sniff into HTML.
async fn nosniff(mut r: Response) -> Response {
    r.headers_mut().insert(http::header::X_CONTENT_TYPE_OPTIONS, http::HeaderValue::from_static("nosniff"));
    r.headers_mut().insert(http::header::CACHE_CONTROL, http::HeaderValue::from_static("no-store"));
    r
}

/// The token decides who calls and what it may do: a read-only token may
/// read (GET) and gets 403 on every change. Every change an authorized
/// caller asks for is recorded in the audit trail with its answer.
async fn authorize(token: &str, state: &Arc<LeaderState>, req: Request, next: Next) -> Response {
    let given = req
        .headers()
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    // A token, or else an operator's client certificate of this cluster (its role in its identity).
    let caller = if given.is_empty() {
        req.extensions()
            .get::<agent_core::auth::Peer>()
            .and_then(|p| p.identity.as_ref())
            .filter(|id| id.cluster == state.settings.cluster)
            .and_then(|id| {
                let role = common::token::ApiRole::of_certificate(id.role)?;
                Some(common::token::Caller { role, name: id.node_id.to_string() })
            })
    } else {
        common::token::check(token, given)
    };
    let Some(caller) = caller else {
        discard_briefly(&mut req.into_body().into_data_stream()).await;
        return ApiError::new(
            ErrorKind::Unauthenticated,
            "missing or wrong token: send Authorization: Bearer <the contents of admin.token, or of a token from \
             `molt pki token`>, or present that token's client certificate",
        )
        .into_response();
    };
    // A named token goes with its certificate: `molt pki revoke NAME` revokes both
    // (the admin token is rotated instead).
    if caller.name != "admin" && state.settings.tls.revocations().revokes(&caller.name, "") {
        discard_briefly(&mut req.into_body().into_data_stream()).await;
        return ApiError::new(
            ErrorKind::Unauthenticated,
            format!("the token {} is revoked (`molt pki revoke`); ask an admin for a new one", caller.name),
        )
        .into_response();
    }
    let reads = matches!(*req.method(), http::Method::GET | http::Method::HEAD);
    // The path only, bounded: a query or an overlong path says nothing the
    // trail needs, and would let any caller fill it.
    let path = req.uri().path();
    let mut cut = path.len().min(crate::raft::AUDIT_PATH_MAX);
    while !path.is_char_boundary(cut) {
        cut -= 1;
    }
    let action = format!("{} {}{}", req.method(), &path[..cut], if cut < path.len() { "…" } else { "" });
    let mut what = Asked::default();
    if !reads && caller.role == common::token::ApiRole::ReadOnly {
        discard_briefly(&mut req.into_body().into_data_stream()).await;
        let answer = ApiError::new(
            ErrorKind::Forbidden,
            format!(
                "the token {} is read-only: it may read the status, the cluster, the configuration and the metrics; {action} needs an admin token",
                caller.name
            ),
        )
        .into_response();
        record(state, &caller, action, answer.status(), what).await;
        return answer;
    }
    // A write's body (a small JSON document; an upload streams on) is read
    // here once, so that the trail holds its digest and the gates it sets.
    let req = if reads || req.uri().path() == "/api/upload" {
        req
    } else {
        let (parts, body) = req.into_parts();
        let bytes = match read_bounded(body).await {
            Ok(b) => b,
            Err(e) => {
                let answer = e.into_response();
                record(state, &caller, action, answer.status(), what).await;
                return answer;
            }
        };
        what = Asked::of(&bytes);
        Request::from_parts(parts, Body::from(bytes))
    };
    let answer = next.run(req).await;
    if !reads {
        record(state, &caller, action, answer.status(), what).await;
    }
    answer
}

/// What a write asked for, as the audit trail keeps it.
#[derive(Default)]
struct Asked {
    body_sha256: Option<String>,
    gates: Option<String>,
}

impl Asked {
    fn of(body: &[u8]) -> Self {
        if body.is_empty() {
            return Self::default();
        }
        let mut gates = Vec::new();
        if let Ok(v) = serde_json::from_slice::<serde_json::Value>(body) {
            health_gates_in(&v, &mut gates);
        }
        Self {
            body_sha256: Some(common::Sha256Digest::of(body).to_hex()),
            gates: (!gates.is_empty()).then(|| {
                let text = serde_json::Value::Array(gates).to_string();
                common::convert::one_line(&text, crate::raft::AUDIT_GATES_MAX)
            }),
        }
    }
}

/// Every health gate a JSON document sets, wherever its `health_gates` are
/// (an SE group's body, or the groups of a whole configuration).
fn health_gates_in(v: &serde_json::Value, out: &mut Vec<serde_json::Value>) {
    match v {
        serde_json::Value::Object(m) => {
            for (k, v) in m {
                match (k.as_str(), v) {
                    ("health_gates", serde_json::Value::Array(gates)) => out.extend(gates.iter().cloned()),
                    _ => health_gates_in(v, out),
                }
            }
        }
        serde_json::Value::Array(a) => a.iter().for_each(|v| health_gates_in(v, out)),
        _ => {}
    }
}

/// Appends an operator action to the audit trail (the leader's write; a
/// follower that forwarded the call does not record it twice).
async fn record(
    state: &Arc<LeaderState>,
    caller: &common::token::Caller,
    action: String,
    status: StatusCode,
    what: Asked,
) {
    let entry = crate::raft::AuditEntry {
        at: crate::leader::status::now(),
        who: caller.name.clone(),
        role: caller.role.name().into(),
        action,
        status: status.as_u16(),
        count: 1,
        body_sha256: what.body_sha256,
        gates: what.gates,
    };
    tracing::info!(
        who = %entry.who,
        role = %entry.role,
        action = %entry.action,
        status = entry.status,
        body_sha256 = entry.body_sha256.as_deref().unwrap_or(""),
        gates = entry.gates.as_deref().unwrap_or(""),
        "operator action"
    );
    state.audit(entry).await;
}

/// Where the API's OpenAPI document is served (without a token: it
/// describes the API, it holds nothing of the cluster).
pub const OPENAPI_PATH: &str = "/api/openapi.json";

/// The API described: OpenAPI 3.1, generated from the handlers below and
/// the types of [`molt_api`]. `api/openapi.json` in the repository is this
/// document (a test fails when it is stale).
pub fn openapi() -> utoipa::openapi::OpenApi {
    use utoipa::OpenApi;
    #[derive(OpenApi)]
    #[openapi(
        info(
            title = "molt",
            description = "Upgrade a controller/Service Engine cluster in one operator action. Every call but this \
                           document's needs `Authorization: Bearer <token>` (admin.token, or a token from `molt pki \
                           token`), or an operator's client certificate of the cluster. Controllers that do not lead \
                           forward the call to the leader and name it in `x-molt-leader`.",
            license(name = "Apache-2.0", identifier = "Apache-2.0")
        ),
        paths(
            cluster, upload, prestage, status, start_upgrade, resume, rollback, pause, abort, upgrade_segroup,
            controllers, add_controller, remove_controller, get_settings, put_settings, list_groups, create_group,
            get_group, put_group, delete_group, list_vs, create_vs, get_vs, put_vs, delete_vs, metrics, openapi_json
        ),
        components(schemas(
            coordinator::journal::Operation,
            coordinator::journal::ActionOnError,
            coordinator::view::ShownPhase,
            ErrorBody
        )),
        modifiers(&BearerToken),
        security(("token" = []))
    )]
    struct Doc;
    Doc::openapi()
}

/// The token every call but the document's carries.
struct BearerToken;

impl utoipa::Modify for BearerToken {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let scheme = HttpBuilder::new()
            .scheme(HttpAuthScheme::Bearer)
            .description(Some("admin.token, or a token from `molt pki token`"))
            .build();
        doc.components.get_or_insert_default().add_security_scheme("token", SecurityScheme::Http(scheme));
    }
}

/// The OpenAPI document.
#[utoipa::path(get, path = "/api/openapi.json", tag = "api", security(()),
    responses((status = 200, description = "This API, described (OpenAPI 3.1)", content_type = "application/json")))]
async fn openapi_json() -> Response {
    static DOC: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    let text = DOC.get_or_init(|| openapi().to_pretty_json().expect("the document serializes"));
    ([(http::header::CONTENT_TYPE, "application/json")], text.as_str()).into_response()
}

async fn not_found() -> ApiError {
    ApiError::new(ErrorKind::NotFound, "no such API path")
}

/// The cluster's and this controller's metrics, in Prometheus text (or
/// OpenMetrics when `Accept` asks for it).
#[utoipa::path(get, path = "/metrics", tag = "metrics",
    responses((status = 200, description = "Prometheus text exposition 0.0.4, or OpenMetrics 1.0.0", body = String, content_type = "text/plain"), Errors))]
async fn metrics(State(state): State<Arc<LeaderState>>, headers: http::HeaderMap) -> Response {
    let snapshot = crate::metrics::Snapshot {
        cluster: state.settings.cluster.clone(),
        generation: state.generation(),
        nodes: state.cluster.snapshot(),
        status: state.status(),
        bytes_served: state.bytes_served.load(std::sync::atomic::Ordering::Relaxed),
        driver_steps: state.driver_steps.load(std::sync::atomic::Ordering::Relaxed),
        now: crate::leader::status::now(),
    };
    let mut page = agent_core::metrics::Page::new();
    crate::metrics::cluster(&mut page, &snapshot);
    if let Some(node) = state.node.get().and_then(std::sync::Weak::upgrade) {
        agent_core::metrics::node(&mut page, &node);
    }
    let (content_type, text) = page.render(&headers);
    ([(http::header::CONTENT_TYPE, content_type)], text).into_response()
}

/// The cluster as the leader sees it: every node, its version and state.
#[utoipa::path(get, path = "/api/cluster", tag = "cluster",
    responses((status = 200, description = "The cluster", body = ClusterDoc), Errors))]
async fn cluster(State(state): State<Arc<LeaderState>>) -> Json<ClusterDoc> {
    Json(ClusterDoc {
        cluster: state.settings.cluster.clone(),
        leader: state.consensus.leader().map(|m| m.id),
        generation: state.generation(),
        controllers: state.consensus.member_views(),
        nodes: state.cluster.snapshot(),
    })
}

/// The controllers' consensus group.
#[utoipa::path(get, path = "/api/cluster/controllers", tag = "cluster",
    responses((status = 200, description = "The controllers", body = Controllers), Errors))]
async fn controllers(State(state): State<Arc<LeaderState>>) -> Json<Controllers> {
    Json(Controllers { controllers: state.consensus.member_views() })
}

/// Membership changes run under the operation gate and are refused while
/// an operation runs: the controllers phase counts on a fixed group.
async fn membership_gate(state: &LeaderState) -> Result<tokio::sync::MutexGuard<'_, ()>, ApiError> {
    let gate = state.operation_gate.lock().await;
    if coordinator::request::config_writable(state.journal().as_ref()).is_err() {
        return Err(ApiError::new(
            ErrorKind::ReadOnly,
            "upgrade in progress: controllers are added or removed only between upgrades",
        ));
    }
    Ok(gate)
}

/// Adds a controller to the group (between upgrades only).
#[utoipa::path(post, path = "/api/cluster/controllers", tag = "cluster", request_body = AddController,
    responses((status = 200, description = "The controllers, with the new one", body = Controllers), Errors))]
async fn add_controller(State(state): State<Arc<LeaderState>>, body: Body) -> Result<Json<Controllers>, ApiError> {
    let req: AddController = serde_json::from_slice(&read_bounded(body).await?).map_err(|e| {
        ApiError::new(
            ErrorKind::BadRequest,
            format!("invalid request body: {e}; expected {{\"id\": \"c4\", \"addr\": \"IP:PORT\"}}"),
        )
    })?;
    let id: common::NodeId = req.id.parse().map_err(|e| ApiError::new(ErrorKind::BadRequest, format!("id: {e}")))?;
    let addr: std::net::SocketAddr = req
        .addr
        .parse()
        .map_err(|e| ApiError::new(ErrorKind::BadRequest, format!("addr {:?}: {e}; expected IP:PORT", req.addr)))?;
    let _gate = membership_gate(&state).await?;
    let members = state.consensus.member_views();
    if members.iter().any(|m| m.id == id.as_str() && m.raft == crate::raft::RaftPart::Voter) {
        return Err(ApiError::new(ErrorKind::Conflict, format!("{id} is already a controller of this cluster")));
    }
    check_newcomer(&state, &id, addr, &members).await?;
    state.consensus.add_controller(&id, addr).await?;
    Ok(Json(Controllers { controllers: state.consensus.member_views() }))
}

/// Before a controller joins the group, at the point where the group would
/// count on it: its id names no other node of the cluster, its address is
/// no other node's, and what answers there is that controller of this
/// cluster (its certificate says so). A member that cannot answer as
/// itself would take a vote and never cast it: a 2-controller group with
/// one such member has no quorum.
async fn check_newcomer(
    state: &LeaderState,
    id: &common::NodeId,
    addr: std::net::SocketAddr,
    members: &[crate::raft::MemberView],
) -> Result<(), ApiError> {
    let conflict = |why: String| Err(ApiError::new(ErrorKind::Conflict, why));
    let nodes = state.cluster.snapshot();
    if let Some(n) = nodes.iter().find(|n| &n.id == id && n.role != common::Role::Controller) {
        return conflict(format!(
            "{id} is the id of an SE of this cluster (group {}); a controller needs its own",
            n.se_group.as_deref().unwrap_or("-")
        ));
    }
    let at = addr.to_string();
    if let Some(m) = members.iter().find(|m| m.addr == at && m.id != id.as_str()) {
        return conflict(format!("{at} is the address of controller {}; give {id}'s own address", m.id));
    }
    if let Some(n) = nodes.iter().find(|n| n.addr == at && &n.id != id) {
        return conflict(format!("{at} is the address of {} {}; give {id}'s own address", n.role, n.id));
    }
    let wanted = common::identity::PeerIdentity {
        cluster: state.settings.cluster.clone(),
        role: common::Role::Controller,
        node_id: id.clone(),
    };
    match crate::forward::identity_at(&state.settings.tls.material(), addr).await {
        Ok(found) if found == wanted => Ok(()),
        Ok(found) => Err(ApiError::new(
            ErrorKind::PreconditionFailed,
            format!("at {at} answers {}, not {}: give the address of {id} itself", found.uri(), wanted.uri()),
        )),
        Err(why) => Err(ApiError::new(
            ErrorKind::PreconditionFailed,
            format!(
                "no controller answers at {at} ({why}): start {id} there first (`controller-agent --config` with its \
                 node.toml), then add it"
            ),
        )),
    }
}

/// Removes a controller from the group (between upgrades only).
#[utoipa::path(delete, path = "/api/cluster/controllers/{id}", tag = "cluster",
    params(("id" = String, Path, description = "The controller's node id")),
    responses((status = 200, description = "The controllers left", body = Controllers), Errors))]
async fn remove_controller(
    State(state): State<Arc<LeaderState>>,
    axum::extract::Path(id): axum::extract::Path<String>,
) -> Result<Json<Controllers>, ApiError> {
    let id: common::NodeId = id.parse().map_err(|e| ApiError::new(ErrorKind::BadRequest, format!("id: {e}")))?;
    let _gate = membership_gate(&state).await?;
    if !state.consensus.member_views().iter().any(|m| m.id == id.as_str()) {
        return Err(ApiError::new(ErrorKind::NotFound, format!("{id} is not a controller of this cluster")));
    }
    if state.consensus.member_views().len() == 1 {
        return Err(ApiError::new(ErrorKind::Conflict, "the last controller cannot be removed"));
    }
    state.consensus.remove_controller(&id).await?;
    Ok(Json(Controllers { controllers: state.consensus.member_views() }))
}

#[derive(Deserialize)]
struct UploadQuery {
    name: Option<String>,
}

/// Uploads a package: stored, its signature and digests verified, and
/// registered with the other controllers.
#[utoipa::path(post, path = "/api/upload", tag = "images",
    params(("name" = String, Query, description = "The file's name: the image is then `controller://NAME`")),
    request_body(content = Vec<u8>, content_type = "application/octet-stream", description = "The package file"),
    responses((status = 200, description = "The image, verified", body = Uploaded), Errors))]
async fn upload(
    State(state): State<Arc<LeaderState>>,
    Query(q): Query<UploadQuery>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<Uploaded>, ApiError> {
    let len = headers.get(http::header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse().ok());
    let early = match q.name {
        None => Err(ApiError::new(ErrorKind::BadRequest, "name the file: POST /api/upload?name=controller.pkg")),
        Some(name) => state.images.precheck_upload(&name, len).map(|()| name).map_err(ApiError::from),
    };
    let mut data = body.into_data_stream();
    let name = match early {
        Ok(name) => name,
        Err(e) => {
            discard_briefly(&mut data).await;
            return Err(e);
        }
    };
    let image = match state.images.upload(&name, len, &mut data).await {
        Ok(image) => image,
        // A package refused for what it is (its signature, checked after
        // its header, or an entry) may be refused long before the client
        // has sent it. A client that declared its length (molt, curl
        // --data-binary) has committed to sending it all and reads the
        // answer only then: the rest, no more than it declared, is read
        // and dropped, unhashed and unwritten (nginx's lingering close). A
        // client streaming without a length watches for an early answer
        // (RFC 9112 §9.5) and is stopped at once.
        Err(e @ ImageError::Package(_)) if len.is_some() => {
            discard_to_end(&mut data).await;
            return Err(e.into());
        }
        Err(e) => {
            discard_briefly(&mut data).await;
            return Err(e.into());
        }
    };
    let change = crate::raft::Change::Image { path: image.image_path.clone(), sha256: image.info.sha256 };
    if let Err(e) = state.consensus.write(change).await {
        tracing::warn!(error = %e, image = %image.image_path, "cannot register the upload with the other controllers");
    }
    Ok(Json(Uploaded {
        image_path: image.image_path,
        sha256: image.info.sha256,
        size: image.info.size,
        manifest: image.info.manifest,
    }))
}

/// Reads what the client still sends of a refused upload to its end (the
/// server checks the body against its declared length), or until it stalls
/// for 10 s, dropping it.
async fn discard_to_end(data: &mut axum::body::BodyDataStream) {
    use futures_util::StreamExt;
    while let Ok(Some(Ok(_))) = tokio::time::timeout(std::time::Duration::from_secs(10), data.next()).await {}
}

/// Reads and drops what a refused client is still sending, for at most 2 s
/// and 8 MiB, so that it reads the JSON refusal: over HTTP/2 an answer sent
/// while the request body still flows ends in a stream reset the client may
/// report instead of the answer. Nothing of it is written anywhere.
async fn discard_briefly(data: &mut axum::body::BodyDataStream) {
    use futures_util::StreamExt;
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(2);
    let mut seen = 0usize;
    while seen < 8 << 20 {
        match tokio::time::timeout_at(deadline, data.next()).await {
            Ok(Some(Ok(b))) => seen += b.len(),
            _ => break,
        }
    }
}

/// Largest JSON request body: molt's requests are small documents.
pub const MAX_JSON_BODY: usize = 64 * 1024;

/// Reads a JSON request body of at most [`MAX_JSON_BODY`] bytes and parses
/// it. A larger body is answered 413 with the JSON error (after letting the
/// client finish sending for a moment, so it reads the answer).
async fn json_body<T: serde::de::DeserializeOwned>(body: Body) -> Result<T, ApiError> {
    parse_json(&read_bounded(body).await?)
}

/// Reads a whole request body of at most [`MAX_JSON_BODY`] bytes; 413 (after
/// letting the client finish sending for a moment) when it is larger.
async fn read_bounded(body: Body) -> Result<Vec<u8>, ApiError> {
    use futures_util::StreamExt;
    let mut data = body.into_data_stream();
    let mut buf = Vec::new();
    while let Some(chunk) = data.next().await {
        let chunk =
            chunk.map_err(|e| ApiError::new(ErrorKind::BadRequest, format!("the request body broke off: {e}")))?;
        if buf.len() + chunk.len() > MAX_JSON_BODY {
            discard_briefly(&mut data).await;
            return Err(ApiError::new(
                ErrorKind::TooLarge,
                format!("the request body is over {MAX_JSON_BODY} bytes; molt's requests are small JSON documents"),
            ));
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(buf)
}

/// Reads a body that is forwarded to the leader: whole, when it is at most
/// [`MAX_JSON_BODY`] (every call but an upload), so that a leader answering
/// before it read everything cannot cut the forwarded call short; 413 here
/// when it is larger. An upload's body streams through as it comes.
async fn bounded_for_forwarding(req: Request) -> Result<Request, ApiError> {
    if req.uri().path() == "/api/upload" {
        return Ok(req);
    }
    let (parts, body) = req.into_parts();
    Ok(Request::from_parts(parts, Body::from(read_bounded(body).await?)))
}

/// Parses a JSON body, answering 400 with the parser's words.
pub fn parse_json<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    let bad = |why: String| ApiError::new(ErrorKind::BadRequest, format!("invalid request body: {why}"));
    // An object, and only an object: serde would take an array for a struct,
    // field by position.
    let value: serde_json::Value = serde_json::from_slice(body).map_err(|e| bad(e.to_string()))?;
    if !value.is_object() {
        return Err(bad(format!("expected a JSON object, got {}", json_kind(&value))));
    }
    serde_json::from_value(value).map_err(|e| bad(e.to_string()))
}

/// What kind of JSON value `v` is, as an error names it.
fn json_kind(v: &serde_json::Value) -> &'static str {
    match v {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
}

/// Stages an image on every node ahead of the upgrade.
#[utoipa::path(post, path = "/api/cluster/upgrade/prestage", tag = "upgrade", request_body = PrestageRequest,
    responses((status = 202, description = "Prestaging started", body = UpgradeStatus), Errors))]
async fn prestage(State(state): State<Arc<LeaderState>>, body: Body) -> Result<Response, ApiError> {
    let req: PrestageRequest = json_body(body).await?;
    let status = upgrade::prestage(&state, &req.image_path, req.docker_image_path.as_deref()).await?;
    Ok((StatusCode::ACCEPTED, Json(status)).into_response())
}

/// The current or last operation: every node's steps, every SE group's
/// and virtual service's part, the history and the audit trail.
#[utoipa::path(get, path = "/api/cluster/upgrade/status", tag = "upgrade",
    responses((status = 200, description = "The status", body = UpgradeStatus), Errors))]
async fn status(State(state): State<Arc<LeaderState>>) -> Json<UpgradeStatus> {
    Json(state.status())
}

/// Upgrades the system, or (`prechecks_only`) says what the upgrade would do.
#[utoipa::path(post, path = "/api/cluster/upgrade", tag = "upgrade", request_body = UpgradeRequest,
    responses(
        (status = 200, description = "`prechecks_only`: the plan; nothing started", body = Plan),
        (status = 202, description = "The upgrade started", body = UpgradeStatus),
        Errors
    ))]
async fn start_upgrade(State(state): State<Arc<LeaderState>>, body: Body) -> Result<Response, ApiError> {
    let req: UpgradeRequest = json_body(body).await?;
    Ok(match upgrade::start(&state, req).await? {
        Started::Plan(plan) => (StatusCode::OK, Json(plan)).into_response(),
        Started::Status(status) => (StatusCode::ACCEPTED, Json(status)).into_response(),
    })
}

/// A body that may be empty (the same as `{}`).
async fn optional_json_body<T: serde::de::DeserializeOwned>(body: Body) -> Result<T, ApiError> {
    let bytes = read_bounded(body).await?;
    if bytes.iter().all(u8::is_ascii_whitespace) { parse_json(b"{}") } else { parse_json(&bytes) }
}

/// Holds the running upgrade: what is in flight finishes, nothing new starts.
#[utoipa::path(post, path = "/api/cluster/upgrade/pause", tag = "upgrade", request_body(content = Option<NoFields>),
    responses((status = 200, description = "The status, paused", body = UpgradeStatus), Errors))]
async fn pause(State(state): State<Arc<LeaderState>>, body: Body) -> Result<Response, ApiError> {
    let NoFields {} = optional_json_body(body).await?;
    Ok(Json(upgrade::pause(&state).await?).into_response())
}

/// Aborts the running upgrade.
#[utoipa::path(post, path = "/api/cluster/upgrade/abort", tag = "upgrade", request_body(content = Option<NoFields>),
    responses((status = 200, description = "The status, aborting", body = UpgradeStatus), Errors))]
async fn abort(State(state): State<Arc<LeaderState>>, body: Body) -> Result<Response, ApiError> {
    let NoFields {} = optional_json_body(body).await?;
    Ok(Json(upgrade::abort(&state).await?).into_response())
}

/// Moves SE groups left on the old version to the controllers' version.
#[utoipa::path(post, path = "/api/cluster/upgrade/segroup", tag = "upgrade", request_body = GroupRequest,
    responses((status = 202, description = "The SE groups' upgrade started", body = UpgradeStatus), Errors))]
async fn upgrade_segroup(State(state): State<Arc<LeaderState>>, body: Body) -> Result<Response, ApiError> {
    let req: GroupRequest = json_body(body).await?;
    Ok((StatusCode::ACCEPTED, Json(upgrade::upgrade_groups(&state, req).await?)).into_response())
}

/// Resumes a paused upgrade, or suspended SE groups.
#[utoipa::path(post, path = "/api/cluster/upgrade/resume", tag = "upgrade", request_body(content = Option<GroupRequest>),
    responses((status = 202, description = "Resumed", body = UpgradeStatus), Errors))]
async fn resume(State(state): State<Arc<LeaderState>>, body: Body) -> Result<Response, ApiError> {
    let req: GroupRequest = optional_json_body(body).await?;
    Ok((StatusCode::ACCEPTED, Json(upgrade::resume_groups(&state, req).await?)).into_response())
}

/// Returns SE groups, or the whole system, to the previous version.
#[utoipa::path(post, path = "/api/cluster/upgrade/rollback", tag = "upgrade", request_body = GroupRequest,
    responses((status = 202, description = "The rollback started", body = UpgradeStatus), Errors))]
async fn rollback(State(state): State<Arc<LeaderState>>, body: Body) -> Result<Response, ApiError> {
    let req: GroupRequest = json_body(body).await?;
    Ok((StatusCode::ACCEPTED, Json(upgrade::rollback_groups(&state, req).await?)).into_response())
}

impl From<ConfigError> for ApiError {
    fn from(e: ConfigError) -> Self {
        let status = match e {
            ConfigError::Invalid(_) => ErrorKind::BadRequest,
            ConfigError::NotFound(_) => ErrorKind::NotFound,
            ConfigError::Conflict(_) => ErrorKind::Conflict,
            ConfigError::Io(_) => ErrorKind::Internal,
        };
        ApiError::new(status, e.to_string())
    }
}

impl From<crate::raft::WriteError> for ApiError {
    fn from(e: crate::raft::WriteError) -> Self {
        ApiError::new(e.kind(), e.to_string())
    }
}

impl From<crate::leader::ChangeError> for ApiError {
    fn from(e: crate::leader::ChangeError) -> Self {
        match e {
            crate::leader::ChangeError::Refused(e) => e.into(),
            crate::leader::ChangeError::Write(e) => e.into(),
        }
    }
}

/// Changes the configuration unless an operation runs (503): the check and
/// the change under the operation gate, so an upgrade starting at the same
/// moment snapshots the configuration before or after the change, never
/// between.
async fn config_write<T>(
    state: &LeaderState,
    f: impl FnOnce(&mut crate::leader::store::Config) -> Result<T, ConfigError>,
) -> Result<T, ApiError> {
    let _gate = state.operation_gate.lock().await;
    if coordinator::request::config_writable(state.journal().as_ref()).is_err() {
        return Err(ApiError::new(ErrorKind::ReadOnly, "upgrade in progress: configuration is read-only"));
    }
    Ok(state.change_config(f).await?)
}

fn vs_view(v: &VirtualService, placements: Option<&Vec<String>>) -> VsView {
    VsView::new(v, placements.cloned().unwrap_or_default())
}

/// The cluster-wide rules.
#[utoipa::path(get, path = "/api/cluster/settings", tag = "configuration",
    responses((status = 200, description = "The rules", body = Rules), Errors))]
async fn get_settings(State(state): State<Arc<LeaderState>>) -> Json<Rules> {
    Json(state.config().rules)
}

/// Replaces the cluster-wide rules: a configuration change (503 while an
/// operation runs; a running operation keeps the rules it started with).
#[utoipa::path(put, path = "/api/cluster/settings", tag = "configuration", request_body = Rules,
    responses((status = 200, description = "The rules, changed", body = Rules), Errors))]
async fn put_settings(State(state): State<Arc<LeaderState>>, body: Body) -> Result<Json<Rules>, ApiError> {
    let rules: Rules = json_body(body).await?;
    rules.validate()?;
    config_write(&state, |c| {
        c.rules = rules;
        Ok(())
    })
    .await?;
    Ok(Json(rules))
}

/// The SE groups.
#[utoipa::path(get, path = "/api/serviceenginegroup", tag = "configuration",
    responses((status = 200, description = "Every SE group", body = Vec<SeGroup>), Errors))]
async fn list_groups(State(state): State<Arc<LeaderState>>) -> Json<Vec<SeGroup>> {
    Json(state.config().se_groups.values().cloned().collect())
}

/// One SE group.
#[utoipa::path(get, path = "/api/serviceenginegroup/{name}", tag = "configuration",
    params(("name" = String, Path, description = "The SE group's name")),
    responses((status = 200, description = "The SE group", body = SeGroup), Errors))]
async fn get_group(
    State(state): State<Arc<LeaderState>>,
    axum::extract::Path(name): axum::extract::Path<String>,
) -> Result<Json<SeGroup>, ApiError> {
    let cfg = state.config();
    cfg.se_groups
        .get(&name)
        .cloned()
        .map(Json)
        .ok_or_else(|| ConfigError::NotFound(format!("no SE group {name}")).into())
}

/// Creates an SE group.
#[utoipa::path(post, path = "/api/serviceenginegroup", tag = "configuration", request_body = SeGroup,
    responses((status = 201, description = "Created", body = SeGroup), Errors))]
async fn create_group(State(state): State<Arc<LeaderState>>, body: Body) -> Result<Response, ApiError> {
    let g: SeGroup = json_body(body).await?;
    config_write(&state, |c| c.put_group(g.clone(), false)).await?;
    Ok((StatusCode::CREATED, Json(g)).into_response())
}

/// Changes an SE group.
#[utoipa::path(put, path = "/api/serviceenginegroup/{name}", tag = "configuration", request_body = SeGroup,
    params(("name" = String, Path, description = "The SE group's name")),
    responses((status = 200, description = "Changed", body = SeGroup), Errors))]
async fn put_group(
    State(state): State<Arc<LeaderState>>,
    axum::extract::Path(name): axum::extract::Path<String>,
    body: Body,
) -> Result<Json<SeGroup>, ApiError> {
    let g: SeGroup = json_body(body).await?;
    if g.name != name {
        return Err(ApiError::new(ErrorKind::BadRequest, format!("the body names {}, the path {name}", g.name)));
    }
    config_write(&state, |c| c.put_group(g.clone(), true)).await?;
    Ok(Json(g))
}

/// Deletes an SE group.
#[utoipa::path(delete, path = "/api/serviceenginegroup/{name}", tag = "configuration",
    params(("name" = String, Path, description = "The SE group's name")),
    responses((status = 204, description = "Deleted"), Errors))]
async fn delete_group(
    State(state): State<Arc<LeaderState>>,
    axum::extract::Path(name): axum::extract::Path<String>,
) -> Result<StatusCode, ApiError> {
    config_write(&state, |c| c.delete_group(&name)).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// The virtual services, with the SEs that carry each.
#[utoipa::path(get, path = "/api/virtualservice", tag = "configuration",
    responses((status = 200, description = "Every virtual service", body = Vec<VsView>), Errors))]
async fn list_vs(State(state): State<Arc<LeaderState>>) -> Json<Vec<VsView>> {
    let cfg = state.config();
    Json(cfg.virtual_services.values().map(|v| vs_view(v, cfg.placements.get(&v.name))).collect())
}

/// One virtual service.
#[utoipa::path(get, path = "/api/virtualservice/{name}", tag = "configuration",
    params(("name" = String, Path, description = "The virtual service's name")),
    responses((status = 200, description = "The virtual service", body = VsView), Errors))]
async fn get_vs(
    State(state): State<Arc<LeaderState>>,
    axum::extract::Path(name): axum::extract::Path<String>,
) -> Result<Json<VsView>, ApiError> {
    let cfg = state.config();
    cfg.virtual_services
        .get(&name)
        .map(|v| Json(vs_view(v, cfg.placements.get(&v.name))))
        .ok_or_else(|| ConfigError::NotFound(format!("no virtual service {name}")).into())
}

/// Creates a virtual service; the answer says where it was placed.
#[utoipa::path(post, path = "/api/virtualservice", tag = "configuration", request_body = VirtualService,
    responses((status = 201, description = "Created", body = VsView), Errors))]
async fn create_vs(State(state): State<Arc<LeaderState>>, body: Body) -> Result<Response, ApiError> {
    let v: VirtualService = json_body(body).await?;
    let ports = agent_ports(&state);
    let ses = state.cluster.ses_by_group();
    config_write(&state, |c| c.put_vs(v.clone(), false, &ports).map(|()| place(c, &ses))).await?;
    let placed = state.config().placements.get(&v.name).cloned();
    Ok((StatusCode::CREATED, Json(vs_view(&v, placed.as_ref()))).into_response())
}

/// Changes a virtual service.
#[utoipa::path(put, path = "/api/virtualservice/{name}", tag = "configuration", request_body = VirtualService,
    params(("name" = String, Path, description = "The virtual service's name")),
    responses((status = 200, description = "Changed", body = VsView), Errors))]
async fn put_vs(
    State(state): State<Arc<LeaderState>>,
    axum::extract::Path(name): axum::extract::Path<String>,
    body: Body,
) -> Result<Json<VsView>, ApiError> {
    let v: VirtualService = json_body(body).await?;
    if v.name != name {
        return Err(ApiError::new(ErrorKind::BadRequest, format!("the body names {}, the path {name}", v.name)));
    }
    let ports = agent_ports(&state);
    let ses = state.cluster.ses_by_group();
    config_write(&state, |c| c.put_vs(v.clone(), true, &ports).map(|()| place(c, &ses))).await?;
    let placed = state.config().placements.get(&v.name).cloned();
    Ok(Json(vs_view(&v, placed.as_ref())))
}

/// Deletes a virtual service.
#[utoipa::path(delete, path = "/api/virtualservice/{name}", tag = "configuration",
    params(("name" = String, Path, description = "The virtual service's name")),
    responses((status = 204, description = "Deleted"), Errors))]
async fn delete_vs(
    State(state): State<Arc<LeaderState>>,
    axum::extract::Path(name): axum::extract::Path<String>,
) -> Result<StatusCode, ApiError> {
    config_write(&state, |c| c.delete_vs(&name)).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// The ports agents listen on: this leader's and every node's it knows of.
fn agent_ports(state: &LeaderState) -> Vec<u16> {
    let mut ports = vec![state.settings.listen.port()];
    ports.extend(
        state.cluster.snapshot().iter().filter_map(|n| n.addr.parse::<std::net::SocketAddr>().ok()).map(|a| a.port()),
    );
    ports.sort_unstable();
    ports.dedup();
    ports
}

/// Places the virtual services in the same write as the change, so the
/// answer says where a new service went (the driver's placer would within
/// a step).
fn place(c: &mut crate::leader::store::Config, ses: &std::collections::BTreeMap<String, Vec<String>>) {
    c.placements = crate::leader::placement::place(c, ses);
}

#[cfg(test)]
mod tests {
    /// `api/openapi.json` is the document the server serves: a change to
    /// the API's types or routes that is not in the file fails here.
    /// `MOLT_BLESS=1 cargo test -p controller-agent openapi` rewrites it.
    #[test]
    fn the_openapi_document_in_the_repository_is_the_one_served() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../api/openapi.json");
        let served = super::openapi().to_pretty_json().expect("serializes") + "\n";
        if std::env::var_os("MOLT_BLESS").is_some() {
            std::fs::write(&path, &served).expect("write api/openapi.json");
        }
        let kept = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            kept == served,
            "api/openapi.json is stale: the API's types or routes changed. Run \
             `MOLT_BLESS=1 cargo test -p controller-agent openapi` and commit the file"
        );
    }

    /// Every route the router serves is in the document, and nothing else.
    #[test]
    fn the_document_describes_every_route() {
        let doc = super::openapi();
        let mut described: Vec<String> = doc
            .paths
            .paths
            .iter()
            .flat_map(|(path, item)| {
                let item = serde_json::to_value(item).expect("serializes");
                ["get", "put", "post", "delete"]
                    .into_iter()
                    .filter(move |m| item.get(m).is_some())
                    .map(move |m| format!("{} {path}", m.to_uppercase()))
            })
            .collect();
        described.sort();
        let src = include_str!("api.rs");
        let mut routed = Vec::new();
        for line in src.lines().map(str::trim).filter(|l| l.starts_with(".route(\"/")) {
            let path = line.split('"').nth(1).expect("a quoted path");
            if path.contains('*') {
                continue;
            }
            for (call, method) in [("get(", "GET"), ("post(", "POST"), ("put(", "PUT"), ("delete(", "DELETE")] {
                if line.contains(&format!(" {call}"))
                    || line.contains(&format!(".{call}"))
                    || line.contains(&format!("::{call}"))
                {
                    routed.push(format!("{method} {path}"));
                }
            }
        }
        routed.push(format!("GET {}", super::OPENAPI_PATH));
        routed.sort();
        assert_eq!(described, routed);
    }
}
