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
use http::StatusCode;
use serde::{Deserialize, Serialize};

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
    /// The leader answered something this molt's API types do not read.
    #[error(
        "the answer to {path} does not read as this molt's API ({message}); is the leader running another version of molt?"
    )]
    Unexpected {
        /// What was asked.
        path: String,
        /// What did not read.
        message: String,
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

/// A client of the leader's REST API.
#[derive(Clone)]
pub struct Api {
    /// The controller that answered last (shared by clones).
    current: Arc<std::sync::Mutex<Endpoint>>,
    /// Every controller known, the first one first.
    controllers: Arc<Vec<Endpoint>>,
    /// Only ever talk to `current` (to see what one controller answers).
    pinned: bool,
    /// reqwest over the cluster CA's rustls configuration; it keeps the
    /// connection to each controller open from request to request.
    http: reqwest::Client,
    token: String,
}

impl fmt::Debug for Api {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Api").field("controllers", &self.controllers).field("pinned", &self.pinned).finish()
    }
}

fn parse_url(url: &str) -> Result<Endpoint, ClientError> {
    let bad = || {
        ClientError::Config(format!("controller URL {url:?}: expected https://HOST[:PORT], HOST an address or a name"))
    };
    if !url.starts_with("https://") {
        return Err(ClientError::Config(format!("controller URL {url:?} must start with https://")));
    }
    let parsed = reqwest::Url::parse(url).map_err(|_| bad())?;
    let host = parsed.host_str().ok_or_else(bad)?.trim_start_matches('[').trim_end_matches(']');
    if host.parse::<std::net::IpAddr>().is_err() && !is_dns_name(host) {
        return Err(bad());
    }
    let port = parsed.port().unwrap_or(common::DEFAULT_PORT);
    Ok(Endpoint { host: host.to_owned(), port })
}

/// Letters, digits and hyphens in dot-separated labels: what a certificate
/// can name (the URL parser lets more through).
fn is_dns_name(h: &str) -> bool {
    h.len() <= 253
        && h.split('.')
            .all(|l| !l.is_empty() && l.len() <= 63 && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'))
}

/// The admin certificate and key kept next to the CA file (`admin.pem` and
/// `admin.key` in a cluster's PKI dir), when both are there and readable.
fn admin_certificate(ca: &Path) -> Option<(PathBuf, PathBuf)> {
    let dir = ca.parent()?;
    let (cert, key) = (dir.join("admin.pem"), dir.join("admin.key"));
    (std::fs::File::open(&cert).is_ok() && std::fs::File::open(&key).is_ok()).then_some((cert, key))
}

/// How long a request keeps looking for a leader (an election takes a few
/// heartbeats).
const FIND_LEADER: std::time::Duration = std::time::Duration::from_secs(20);

/// How long a read answered from a replica (no leader known there) waits
/// for a leading controller's answer before it is shown as it is.
const STALE_WAIT: std::time::Duration = std::time::Duration::from_secs(6);

/// An error of reqwest's, with its causes (reqwest's own text names only
/// the step: "error sending request").
fn unreachable(to: &Endpoint, e: reqwest::Error) -> ClientError {
    let e = e.without_url();
    let mut message = e.to_string();
    let mut source = std::error::Error::source(&e);
    while let Some(s) = source {
        message = format!("{message}: {s}");
        source = s.source();
    }
    ClientError::Unreachable { addr: to.to_string(), message }
}

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
        let tls = match admin_certificate(&conn.ca) {
            // The admin certificate counts against the certificate holders'
            // connection budget, which callers without one cannot fill.
            Some((cert, key)) => {
                common::tls::TlsMaterial::load(&conn.ca, &cert, &key).and_then(|c| c.client_config(&[b"http/1.1"]))
            }
            None => common::tls::anonymous_client_config(&ca, &[b"http/1.1"]),
        }
        .map_err(|e| ClientError::Config(e.to_string()))?;
        let http = reqwest::Client::builder()
            .use_preconfigured_tls(Arc::unwrap_or_clone(tls))
            // Redirects to the leader are followed by `send`, which knows
            // the controllers; a stream cannot be sent twice anyway.
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(std::time::Duration::from_secs(5))
            .no_proxy()
            .build()
            .map_err(|e| ClientError::Config(format!("HTTP client: {e}")))?;
        Ok(Self {
            current: Arc::new(std::sync::Mutex::new(first)),
            controllers: Arc::new(controllers),
            pinned: false,
            http,
            token,
        })
    }

    /// A client that talks to `addr` only: no redirect followed, no other
    /// controller tried.
    pub fn pinned(&self, addr: SocketAddr) -> Self {
        Self {
            current: Arc::new(std::sync::Mutex::new(addr.into())),
            controllers: Arc::new(vec![addr.into()]),
            pinned: true,
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

    /// `https://TO/PATH`, the query `(name, value)` pairs encoded.
    fn url(to: &Endpoint, path: &str, query: &[(&str, &str)]) -> Result<reqwest::Url, ClientError> {
        let mut url = reqwest::Url::parse(&format!("https://{to}{path}"))
            .map_err(|e| ClientError::Config(format!("https://{to}{path}: {e}")))?;
        if !query.is_empty() {
            url.query_pairs_mut().extend_pairs(query);
        }
        Ok(url)
    }

    fn request(&self, method: reqwest::Method, url: reqwest::Url) -> reqwest::RequestBuilder {
        self.http.request(method, url).bearer_auth(&self.token).header(http::header::CONTENT_TYPE, "application/json")
    }

    /// Sends the request to `to` and reads the whole answer.
    async fn send_to(&self, to: &Endpoint, req: reqwest::RequestBuilder) -> Result<Answer, ClientError> {
        let resp = req.send().await.map_err(|e| unreachable(to, e))?;
        Answer::read(to, resp).await
    }

    /// Sends `make(controller)`'s request to the leader: follows a
    /// controller's redirect to the leader, and tries the other controllers
    /// when one cannot be reached or has no leader, for up to [`FIND_LEADER`].
    async fn send(
        &self,
        make: impl Fn(&Endpoint) -> Result<reqwest::RequestBuilder, ClientError>,
    ) -> Result<Answer, ClientError> {
        let started = std::time::Instant::now();
        // A read answered from a replica while no leader is known: kept,
        // and given only if no controller leads within STALE_WAIT.
        let mut stale: Option<Answer> = None;
        loop {
            let addr = self.controller();
            let last = started.elapsed() >= FIND_LEADER || self.pinned;
            match self.send_to(&addr, make(&addr)?).await {
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

    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&serde_json::Value>,
    ) -> Result<serde_json::Value, ClientError> {
        let bytes = Bytes::from(body.map(|b| serde_json::to_vec(b).expect("serializes")).unwrap_or_default());
        self.send(|to| Ok(self.request(method.clone(), Self::url(to, path, &[])?).body(bytes.clone())))
            .await?
            .into_result()
    }

    pub async fn get(&self, path: &str) -> Result<serde_json::Value, ClientError> {
        self.call(reqwest::Method::GET, path, None).await
    }

    /// GET of an answer read as one of the API's types ([`molt_api`]).
    pub async fn get_as<T: serde::de::DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        typed(path, self.get(path).await?)
    }

    /// POST of one of the API's requests, its answer read as one of the API's types.
    pub async fn post_as<T: serde::de::DeserializeOwned>(
        &self,
        path: &str,
        body: &impl Serialize,
    ) -> Result<T, ClientError> {
        let body = serde_json::to_value(body).expect("API requests serialize");
        typed(path, self.post(path, &body).await?)
    }

    /// GET of an answer that is text (`/metrics`).
    pub async fn get_text(&self, path: &str) -> Result<String, ClientError> {
        let answer = self.send(|to| Ok(self.request(reqwest::Method::GET, Self::url(to, path, &[])?))).await?;
        if answer.status.is_success() {
            Ok(answer.text)
        } else {
            Err(ClientError::Api { status: answer.status, message: answer.message().to_owned(), body: answer.body })
        }
    }

    pub async fn post(&self, path: &str, body: &serde_json::Value) -> Result<serde_json::Value, ClientError> {
        self.call(reqwest::Method::POST, path, Some(body)).await
    }

    pub async fn put(&self, path: &str, body: &serde_json::Value) -> Result<serde_json::Value, ClientError> {
        self.call(reqwest::Method::PUT, path, Some(body)).await
    }

    pub async fn delete(&self, path: &str) -> Result<serde_json::Value, ClientError> {
        self.call(reqwest::Method::DELETE, path, None).await
    }

    /// Streams `file` to the leader's `/api/upload?name=NAME`, calling
    /// `progress` with the bytes sent so far.
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
            r.inspect(|b| {
                sent += b.len() as u64;
                progress(sent);
            })
        });
        // A stream is sent once: find the leader first, then upload to it.
        self.get("/api/cluster").await?;
        let to = self.controller();
        let req = self
            .request(reqwest::Method::POST, Self::url(&to, "/api/upload", &[("name", name)])?)
            .header(http::header::CONTENT_TYPE, "application/octet-stream")
            .header(http::header::CONTENT_LENGTH, len)
            .body(reqwest::Body::wrap_stream(stream));
        self.send_to(&to, req).await?.into_result()
    }
}

/// An answer read as one of the API's types.
pub fn typed<T: serde::de::DeserializeOwned>(path: &str, v: serde_json::Value) -> Result<T, ClientError> {
    serde_json::from_value(v).map_err(|e| ClientError::Unexpected { path: path.to_owned(), message: e.to_string() })
}

impl ClientError {
    /// The error the leader answered, as the API's one error body, if it did.
    pub fn body(&self) -> Option<molt_api::ErrorBody> {
        match self {
            ClientError::Api { body, .. } => serde_json::from_value(body.clone()).ok(),
            _ => None,
        }
    }

    /// The pre-checks' verdicts a refusal carries, if it carries any (read
    /// on their own: an answer without its `kind` still shows them).
    pub fn prechecks(&self) -> Option<Vec<molt_api::status::Precheck>> {
        match self {
            ClientError::Api { body, .. } => serde_json::from_value(body.get("prechecks")?.clone()).ok(),
            _ => None,
        }
    }

    /// The kind of error the leader answered (its body's `kind`), if it did.
    pub fn kind(&self) -> Option<common::errors::ErrorKind> {
        self.body().map(|b| b.kind)
    }
}

/// A controller's answer, read whole.
struct Answer {
    status: StatusCode,
    location: Option<String>,
    /// Answered from a controller's replica while it knew no leader.
    stale: bool,
    body: serde_json::Value,
    /// The body as text (for the answers that are not JSON: `/metrics`).
    text: String,
}

impl Answer {
    async fn read(addr: &Endpoint, resp: reqwest::Response) -> Result<Self, ClientError> {
        let status = resp.status();
        let location = resp.headers().get(http::header::LOCATION).and_then(|v| v.to_str().ok()).map(str::to_owned);
        let stale = resp.headers().contains_key("x-molt-stale");
        let bytes = resp.bytes().await.map_err(|e| unreachable(addr, e))?;
        let body: serde_json::Value = serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| serde_json::json!({ "error": String::from_utf8_lossy(&bytes) }));
        let text = String::from_utf8_lossy(&bytes).into_owned();
        Ok(Self { status, location, stale, body, text })
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
        let to = parse_url("https://ctl-1.example.net:8443").unwrap();
        let url = Api::url(&to, "/api/upload", &[("name", "controller 2.0 (rc1)&x=ü.pkg")]).unwrap();
        assert_eq!(
            url.as_str(),
            "https://ctl-1.example.net:8443/api/upload?name=controller+2.0+%28rc1%29%26x%3D%C3%BC.pkg"
        );
    }

    /// A controller with a certificate for a DNS name, answering HTTP/1.1
    /// by hand: it records each request's head and how many connections
    /// were opened.
    async fn named_controller(dir: &Path) -> (String, Arc<std::sync::Mutex<(usize, Vec<String>)>>) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca = ca_params.self_signed(&ca_key).unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["localhost".to_owned()])
            .unwrap()
            .signed_by(&key, &rcgen::Issuer::from_params(&ca_params, &ca_key))
            .unwrap();
        std::fs::write(dir.join("ca.pem"), ca.pem()).unwrap();
        std::fs::write(dir.join("token"), "secret\n").unwrap();
        let server = rustls::ServerConfig::builder_with_provider(common::tls::provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                vec![cert.der().clone()],
                rustls_pki_types::PrivateKeyDer::try_from(key.serialize_der()).unwrap(),
            )
            .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let seen = Arc::new(std::sync::Mutex::new((0, vec![])));
        let log = seen.clone();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                log.lock().unwrap().0 += 1;
                let (acceptor, log) = (acceptor.clone(), log.clone());
                tokio::spawn(async move {
                    let mut tls = acceptor.accept(tcp).await.unwrap();
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 4096];
                    loop {
                        let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
                            match tls.read(&mut chunk).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                            }
                            continue;
                        };
                        let head = String::from_utf8_lossy(&buf[..end]).into_owned();
                        buf.drain(..end + 4);
                        log.lock().unwrap().1.push(head);
                        let answer = "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 11\r\n\r\n{\"ok\":true}";
                        tls.write_all(answer.as_bytes()).await.unwrap();
                    }
                });
            }
        });
        (format!("https://localhost:{port}"), seen)
    }

    #[tokio::test]
    async fn a_controller_named_by_dns_is_reached_over_one_kept_connection() {
        let dir = tempfile::tempdir().unwrap();
        let (url, seen) = named_controller(dir.path()).await;
        let conn =
            Connection { url, others: vec![], ca: dir.path().join("ca.pem"), token_file: dir.path().join("token") };
        let api = Api::new(&conn).unwrap();
        for _ in 0..3 {
            assert_eq!(api.get("/api/cluster").await.unwrap(), serde_json::json!({ "ok": true }));
        }
        let (connections, heads) = seen.lock().unwrap().clone();
        assert_eq!(connections, 1, "three requests, one connection: {heads:?}");
        assert_eq!(heads.len(), 3);
        assert!(heads[0].starts_with("GET /api/cluster HTTP/1.1"), "{}", heads[0]);
        assert!(heads[0].to_ascii_lowercase().contains("authorization: bearer secret"), "{}", heads[0]);
    }
}
