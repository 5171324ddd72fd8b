//! The REST client: HTTPS to the leader with the cluster CA and the admin
//! token. Connection settings come from `--cluster-dir` (a local cluster's
//! `cluster.json`) or `--controller`/`--token-file`/`--ca`, or the
//! `MOLT_*` environment variables, resolved once in [`Connection::resolve`].

use std::{
    fmt,
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::Arc,
};

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full, StreamBody, combinators::BoxBody};
use hyper_util::rt::TokioIo;
use rustls_pki_types::ServerName;
use serde::{Deserialize, Serialize};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

/// Why a call to the leader failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Connection settings missing or wrong.
    #[error("{0}")]
    Config(String),
    /// Cannot reach the leader.
    #[error("cannot reach a leading controller (last tried {addr}): {message}")]
    Unreachable {
        /// Address.
        addr: String,
        /// What failed.
        message: String,
    },
    /// The leader answered with an error.
    #[error("{message} (HTTP {status})")]
    Api {
        /// HTTP status.
        status: StatusCode,
        /// The leader's message.
        message: String,
        /// The full answer.
        body: serde_json::Value,
    },
    /// Local I/O.
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// A local cluster's `cluster.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ClusterFile {
    /// Cluster name.
    pub cluster: String,
    /// `https://IP:PORT` of the leader.
    pub leader_url: String,
    /// Every controller's URL: the CLI moves to whichever leads.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub controller_urls: Vec<String>,
    /// CA file.
    pub ca: PathBuf,
    /// Token file.
    pub token_file: PathBuf,
    /// The nodes.
    pub nodes: Vec<ClusterNode>,
}

/// A node of a local cluster.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ClusterNode {
    /// Id.
    pub id: String,
    /// `controller` or `se`.
    pub role: String,
    /// `IP:PORT`.
    pub addr: String,
    /// Data dir.
    pub data_dir: PathBuf,
    /// SE group.
    pub se_group: Option<String>,
}

impl ClusterFile {
    /// Reads `DIR/cluster.json`.
    pub fn load(dir: &Path) -> Result<Self, ClientError> {
        let p = dir.join("cluster.json");
        let text = std::fs::read(&p).map_err(|e| {
            ClientError::Config(format!(
                "{}: {e}; is there a local cluster (molt local up --dir {})?",
                p.display(),
                dir.display()
            ))
        })?;
        serde_json::from_slice(&text).map_err(|e| ClientError::Config(format!("{}: {e}", p.display())))
    }
}

/// Where the leader is and how to authenticate.
#[derive(Debug, Clone)]
pub struct Connection {
    /// `https://HOST:PORT`: the controller tried first.
    pub url: String,
    /// The other controllers, tried when it cannot be reached or has no leader.
    pub others: Vec<String>,
    /// CA file.
    pub ca: PathBuf,
    /// Token file.
    pub token_file: PathBuf,
}

impl Connection {
    /// From explicit options, falling back to the environment; a cluster dir
    /// wins when given (a token file given with it replaces its admin token).
    pub fn resolve(
        cluster_dir: Option<&Path>,
        controller: Option<&str>,
        token_file: Option<&Path>,
        ca: Option<&Path>,
    ) -> Result<Self, ClientError> {
        if let Some(dir) = cluster_dir {
            let f = ClusterFile::load(dir)?;
            let others = f.controller_urls.iter().filter(|u| **u != f.leader_url).cloned().collect();
            // A token file given as well is used instead of the cluster's admin token.
            let token_file = token_file.map(Path::to_owned).unwrap_or(f.token_file);
            return Ok(Self { url: f.leader_url, others, ca: f.ca, token_file });
        }
        match (controller, token_file, ca) {
            // Several controllers: URL,URL,... (any of them may lead).
            (Some(urls), Some(t), Some(c)) => {
                let mut all = urls.split(',').map(str::trim).filter(|u| !u.is_empty()).map(str::to_owned);
                let url = all.next().unwrap_or_default();
                Ok(Self { url, others: all.collect(), ca: c.to_owned(), token_file: t.to_owned() })
            }
            _ => Err(ClientError::Config(
                "say which cluster: --cluster-dir DIR (a local cluster), or --controller URL --token-file FILE --ca FILE \
                 (or MOLT_CLUSTER_DIR / MOLT_CONTROLLER, MOLT_TOKEN_FILE, MOLT_CA)"
                    .into(),
            )),
        }
    }
}

/// A controller's address as a URL names it: an IP address or a DNS name,
/// and a port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// IP address or DNS name (also the name the certificate must carry).
    pub host: String,
    /// Port.
    pub port: u16,
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

impl From<SocketAddr> for Endpoint {
    fn from(a: SocketAddr) -> Self {
        Self { host: a.ip().to_string(), port: a.port() }
    }
}

/// An open HTTP/1.1 connection to a controller, kept for the next request.
type Kept = Arc<tokio::sync::Mutex<Option<(Endpoint, hyper::client::conn::http1::SendRequest<Body>)>>>;

/// A client of the leader's REST API.
#[derive(Clone)]
pub struct Api {
    /// The controller that answered last (shared by clones).
    current: Arc<std::sync::Mutex<Endpoint>>,
    /// Every controller known, the first one first.
    controllers: Arc<Vec<Endpoint>>,
    /// Only ever talk to `current` (to see what one controller answers).
    pinned: bool,
    tls: Arc<rustls::ClientConfig>,
    token: String,
    /// One connection reused from request to request (a request finding it
    /// busy opens its own).
    kept: Kept,
}

impl fmt::Debug for Api {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Api").field("controllers", &self.controllers).field("pinned", &self.pinned).finish()
    }
}

type Body = BoxBody<Bytes, std::io::Error>;

fn parse_url(url: &str) -> Result<Endpoint, ClientError> {
    let bad = || {
        ClientError::Config(format!("controller URL {url:?}: expected https://HOST[:PORT], HOST an address or a name"))
    };
    let rest = url
        .strip_prefix("https://")
        .ok_or_else(|| ClientError::Config(format!("controller URL {url:?} must start with https://")))?;
    let hostport = rest.split('/').next().unwrap_or_default();
    if let Ok(a) = hostport.parse::<SocketAddr>() {
        return Ok(a.into());
    }
    let (host, port) = match hostport.rsplit_once(':') {
        Some((h, p)) if !h.contains(':') || h.starts_with('[') => (h, p.parse().map_err(|_| bad())?),
        _ => (hostport, common::DEFAULT_PORT),
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let name_ok = |h: &str| {
        h.parse::<std::net::IpAddr>().is_ok()
            || (!h.is_empty()
                && h.len() <= 253
                && h.split('.').all(|l| {
                    !l.is_empty() && l.len() <= 63 && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
                }))
    };
    if !name_ok(host) {
        return Err(bad());
    }
    Ok(Endpoint { host: host.to_owned(), port })
}

/// `s` percent-encoded for a query value (everything but unreserved characters).
pub fn query_value(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// How long a request keeps looking for a leader (an election takes a few
/// heartbeats).
const FIND_LEADER: std::time::Duration = std::time::Duration::from_secs(20);

/// How long a read answered from a replica (no leader known there) waits
/// for a leading controller's answer before it is shown as it is.
const STALE_WAIT: std::time::Duration = std::time::Duration::from_secs(6);

impl Api {
    pub fn new(conn: &Connection) -> Result<Self, ClientError> {
        let first = parse_url(&conn.url)?;
        let mut controllers = vec![first.clone()];
        for u in &conn.others {
            let a = parse_url(u)?;
            if !controllers.contains(&a) {
                controllers.push(a);
            }
        }
        let ca =
            std::fs::read(&conn.ca).map_err(|e| ClientError::Config(format!("CA file {}: {e}", conn.ca.display())))?;
        let token = std::fs::read_to_string(&conn.token_file)
            .map_err(|e| ClientError::Config(format!("token file {}: {e}", conn.token_file.display())))?
            .trim()
            .to_owned();
        let tls = common::tls::anonymous_client_config(&ca, &[b"http/1.1"])
            .map_err(|e| ClientError::Config(e.to_string()))?;
        Ok(Self {
            current: Arc::new(std::sync::Mutex::new(first)),
            controllers: Arc::new(controllers),
            pinned: false,
            tls,
            token,
            kept: Kept::default(),
        })
    }

    /// A client that talks to `addr` only: no redirect followed, no other
    /// controller tried.
    pub fn pinned(&self, addr: SocketAddr) -> Self {
        Self {
            current: Arc::new(std::sync::Mutex::new(addr.into())),
            controllers: Arc::new(vec![addr.into()]),
            pinned: true,
            kept: Kept::default(),
            ..self.clone()
        }
    }

    /// The controller this client talks to now.
    pub fn controller(&self) -> Endpoint {
        self.current.lock().expect("api lock").clone()
    }

    fn move_to(&self, addr: Endpoint) {
        *self.current.lock().expect("api lock") = addr;
    }

    fn next_controller(&self) {
        let cur = self.controller();
        let i = self.controllers.iter().position(|a| *a == cur).map_or(0, |i| (i + 1) % self.controllers.len());
        self.move_to(self.controllers[i].clone());
    }

    /// The connection kept, if it is to `to` and idle.
    async fn kept_to(&self, to: &Endpoint) -> Option<hyper::client::conn::http1::SendRequest<Body>> {
        let (at, mut sender) = self.kept.lock().await.take()?;
        (at == *to && sender.ready().await.is_ok()).then_some(sender)
    }

    /// A new connection to `to` (resolving a name, trying each of its addresses).
    async fn connect(&self, to: &Endpoint) -> Result<hyper::client::conn::http1::SendRequest<Body>, ClientError> {
        let unreachable = |message: String| ClientError::Unreachable { addr: to.to_string(), message };
        let addrs: Vec<SocketAddr> = tokio::net::lookup_host((to.host.as_str(), to.port))
            .await
            .map_err(|e| unreachable(format!("cannot resolve {}: {e}", to.host)))?
            .collect();
        let mut last = unreachable(format!("{} resolves to no address", to.host));
        for addr in addrs {
            let tcp = match tokio::time::timeout(std::time::Duration::from_secs(5), TcpStream::connect(addr)).await {
                Ok(Ok(t)) => t,
                Ok(Err(e)) => {
                    last = unreachable(e.to_string());
                    continue;
                }
                Err(_) => {
                    last = unreachable("connection timed out".into());
                    continue;
                }
            };
            let name = ServerName::try_from(to.host.clone()).map_err(|e| unreachable(e.to_string()))?;
            let tls = TlsConnector::from(self.tls.clone())
                .connect(name, tcp)
                .await
                .map_err(|e| unreachable(format!("TLS: {e}")))?;
            let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
                .await
                .map_err(|e| unreachable(e.to_string()))?;
            tokio::spawn(conn);
            return Ok(sender);
        }
        Err(last)
    }

    /// Sends `make()`'s request to `to` and reads the whole answer, on the
    /// connection kept from the last request when there is one (and again
    /// on a new one if the controller had closed it meanwhile); the
    /// connection is kept for the next request.
    async fn send_to(&self, to: &Endpoint, make: impl Fn() -> Request<Body>) -> Result<Answer, ClientError> {
        let unreachable = |e: hyper::Error| ClientError::Unreachable { addr: to.to_string(), message: e.to_string() };
        let (mut sender, resp) = match self.kept_to(to).await {
            Some(mut kept) => match kept.try_send_request(make()).await {
                Ok(resp) => (kept, resp),
                // Closed before the request went out: on a new connection.
                Err(e) if e.message().is_some() => {
                    let mut fresh = self.connect(to).await?;
                    let resp = fresh.send_request(make()).await.map_err(unreachable)?;
                    (fresh, resp)
                }
                Err(e) => return Err(unreachable(e.into_error())),
            },
            None => {
                let mut fresh = self.connect(to).await?;
                let resp = fresh.send_request(make()).await.map_err(unreachable)?;
                (fresh, resp)
            }
        };
        let answer = Answer::read(to, resp).await?;
        if sender.ready().await.is_ok() {
            *self.kept.lock().await = Some((to.clone(), sender));
        }
        Ok(answer)
    }

    /// Sends `make()`'s request to the leader: follows a controller's
    /// redirect to the leader, and tries the other controllers when one
    /// cannot be reached or has no leader, for up to [`FIND_LEADER`].
    async fn send(&self, make: impl Fn() -> Request<Body>) -> Result<Answer, ClientError> {
        let started = std::time::Instant::now();
        // A read answered from a replica while no leader is known: kept,
        // and given only if no controller leads within STALE_WAIT.
        let mut stale: Option<Answer> = None;
        loop {
            let addr = self.controller();
            let last = started.elapsed() >= FIND_LEADER || self.pinned;
            match self.send_to(&addr, &make).await {
                Err(e) if last => return stale.ok_or(e),
                Err(_) => self.next_controller(),
                Ok(answer) => {
                    let moved = answer.status == StatusCode::TEMPORARY_REDIRECT;
                    let no_leader =
                        answer.status == StatusCode::SERVICE_UNAVAILABLE && answer.message().starts_with("no quorum");
                    match answer.location() {
                        Some(to) if moved && !self.pinned && !last => self.move_to(to),
                        _ if no_leader && !last => self.next_controller(),
                        _ if answer.stale && !self.pinned && started.elapsed() < STALE_WAIT => {
                            stale = Some(answer);
                            self.next_controller();
                        }
                        _ => return Ok(answer),
                    }
                }
            }
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        }
    }

    fn request(&self, method: Method, path: &str, body: Body) -> Request<Body> {
        Request::builder()
            .method(method)
            .uri(path)
            .header(http::header::HOST, self.controller().to_string())
            .header(http::header::AUTHORIZATION, format!("Bearer {}", self.token))
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(body)
            .expect("valid request")
    }

    async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<&serde_json::Value>,
    ) -> Result<serde_json::Value, ClientError> {
        let bytes = Bytes::from(body.map(|b| serde_json::to_vec(b).expect("serializes")).unwrap_or_default());
        self.send(|| self.request(method.clone(), path, Full::new(bytes.clone()).map_err(|e| match e {}).boxed()))
            .await?
            .into_result()
    }

    pub async fn get(&self, path: &str) -> Result<serde_json::Value, ClientError> {
        self.call(Method::GET, path, None).await
    }

    pub async fn post(&self, path: &str, body: &serde_json::Value) -> Result<serde_json::Value, ClientError> {
        self.call(Method::POST, path, Some(body)).await
    }

    pub async fn put(&self, path: &str, body: &serde_json::Value) -> Result<serde_json::Value, ClientError> {
        self.call(Method::PUT, path, Some(body)).await
    }

    pub async fn delete(&self, path: &str) -> Result<serde_json::Value, ClientError> {
        self.call(Method::DELETE, path, None).await
    }

    pub async fn upload(
        &self,
        file: &Path,
        name: &str,
        progress: impl Fn(u64) + Send + Sync + 'static,
    ) -> Result<serde_json::Value, ClientError> {
        use futures_util::StreamExt;
        let f = tokio::fs::File::open(file).await?;
        let len = f.metadata().await?.len();
        let mut sent = 0u64;
        let stream = tokio_util::io::ReaderStream::with_capacity(f, 1 << 20).map(move |r| {
            r.map(|b| {
                sent += b.len() as u64;
                progress(sent);
                hyper::body::Frame::data(b)
            })
        });
        let body = BodyExt::boxed(StreamBody::new(stream));
        // A stream is sent once: find the leader first, then upload to it.
        self.get("/api/cluster").await?;
        let mut req = self.request(Method::POST, &format!("/api/upload?name={}", query_value(name)), body);
        req.headers_mut().insert(http::header::CONTENT_LENGTH, len.into());
        req.headers_mut()
            .insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("application/octet-stream"));
        // A stream is sent once, on a connection of its own.
        let to = self.controller();
        let mut sender = self.connect(&to).await?;
        let resp = sender
            .send_request(req)
            .await
            .map_err(|e| ClientError::Unreachable { addr: to.to_string(), message: e.to_string() })?;
        Answer::read(&to, resp).await?.into_result()
    }
}

/// A controller's answer, read whole.
struct Answer {
    status: StatusCode,
    location: Option<String>,
    /// Answered from a controller's replica while it knew no leader.
    stale: bool,
    body: serde_json::Value,
}

impl Answer {
    async fn read(addr: &Endpoint, resp: http::Response<hyper::body::Incoming>) -> Result<Self, ClientError> {
        let status = resp.status();
        let location = resp.headers().get(http::header::LOCATION).and_then(|v| v.to_str().ok()).map(str::to_owned);
        let stale = resp.headers().contains_key("x-molt-stale");
        let bytes = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| ClientError::Unreachable { addr: addr.to_string(), message: e.to_string() })?
            .to_bytes();
        let body: serde_json::Value = serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| serde_json::json!({ "error": String::from_utf8_lossy(&bytes) }));
        Ok(Self { status, location, stale, body })
    }

    fn message(&self) -> &str {
        self.body.get("error").and_then(|e| e.as_str()).unwrap_or("request failed")
    }

    fn location(&self) -> Option<Endpoint> {
        parse_url(self.location.as_deref()?).ok()
    }

    fn into_result(self) -> Result<serde_json::Value, ClientError> {
        if self.status.is_success() {
            Ok(self.body)
        } else {
            Err(ClientError::Api { status: self.status, message: self.message().to_owned(), body: self.body })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_name_addresses_or_hosts_and_names_are_encoded() {
        let e = |u: &str| parse_url(u).map(|e| e.to_string()).map_err(|e| e.to_string());
        assert_eq!(e("https://127.0.0.1:8443").unwrap(), "127.0.0.1:8443");
        assert_eq!(e("https://[::1]:9000/x").unwrap(), "[::1]:9000");
        assert_eq!(e("https://ctl-1.example.net:8443").unwrap(), "ctl-1.example.net:8443");
        assert_eq!(e("https://ctl-1.example.net").unwrap(), format!("ctl-1.example.net:{}", common::DEFAULT_PORT));
        assert!(e("http://ctl-1:8443").unwrap_err().contains("must start with https://"));
        assert!(e("https://bad_name!:8443").unwrap_err().contains("expected https://HOST[:PORT]"));
        assert!(e("https://ctl:port").is_err());
        assert_eq!(query_value("controller 2.0 (rc1)&x=ü.pkg"), "controller%202.0%20%28rc1%29%26x%3D%C3%BC.pkg");
    }
}
