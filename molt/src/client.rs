//! The REST client: HTTPS to the leader with the cluster CA and the admin
//! token. Connection settings come from `--cluster-dir` (a local cluster's
//! `cluster.json`) or `--controller`/`--token-file`/`--ca`, or the
//! `MOLT_*` environment variables, resolved once in [`Connection::resolve`].

use std::{
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
    #[error("cannot reach the leader at {addr}: {message}")]
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
    /// `https://HOST:PORT`.
    pub url: String,
    /// CA file.
    pub ca: PathBuf,
    /// Token file.
    pub token_file: PathBuf,
}

impl Connection {
    /// From explicit options, falling back to the environment; a cluster dir
    /// wins when given.
    pub fn resolve(
        cluster_dir: Option<&Path>,
        controller: Option<&str>,
        token_file: Option<&Path>,
        ca: Option<&Path>,
    ) -> Result<Self, ClientError> {
        if let Some(dir) = cluster_dir {
            let f = ClusterFile::load(dir)?;
            return Ok(Self { url: f.leader_url, ca: f.ca, token_file: f.token_file });
        }
        match (controller, token_file, ca) {
            (Some(url), Some(t), Some(c)) => Ok(Self { url: url.to_owned(), ca: c.to_owned(), token_file: t.to_owned() }),
            _ => Err(ClientError::Config(
                "say which cluster: --cluster-dir DIR (a local cluster), or --controller URL --token-file FILE --ca FILE \
                 (or MOLT_CLUSTER_DIR / MOLT_CONTROLLER, MOLT_TOKEN_FILE, MOLT_CA)"
                    .into(),
            )),
        }
    }
}

/// A client of the leader's REST API.
#[derive(Clone, Debug)]
pub struct Api {
    addr: SocketAddr,
    host: String,
    tls: Arc<rustls::ClientConfig>,
    token: String,
}

type Body = BoxBody<Bytes, std::io::Error>;

impl Api {
    /// A client for `conn`.
    pub fn new(conn: &Connection) -> Result<Self, ClientError> {
        let rest = conn
            .url
            .strip_prefix("https://")
            .ok_or_else(|| ClientError::Config(format!("controller URL {:?} must start with https://", conn.url)))?;
        let hostport = rest.trim_end_matches('/');
        let addr: SocketAddr = hostport
            .parse()
            .or_else(|_| format!("{hostport}:{}", common::DEFAULT_PORT).parse())
            .map_err(|_| ClientError::Config(format!("controller URL {:?}: expected https://IP:PORT", conn.url)))?;
        let ca =
            std::fs::read(&conn.ca).map_err(|e| ClientError::Config(format!("CA file {}: {e}", conn.ca.display())))?;
        let token = std::fs::read_to_string(&conn.token_file)
            .map_err(|e| ClientError::Config(format!("token file {}: {e}", conn.token_file.display())))?
            .trim()
            .to_owned();
        let tls = common::tls::anonymous_client_config(&ca, &[b"http/1.1"])
            .map_err(|e| ClientError::Config(e.to_string()))?;
        Ok(Self { addr, host: addr.ip().to_string(), tls, token })
    }

    async fn send(&self, req: Request<Body>) -> Result<http::Response<hyper::body::Incoming>, ClientError> {
        let unreachable = |message: String| ClientError::Unreachable { addr: self.addr.to_string(), message };
        let tcp = tokio::time::timeout(std::time::Duration::from_secs(5), TcpStream::connect(self.addr))
            .await
            .map_err(|_| unreachable("connection timed out".into()))?
            .map_err(|e| unreachable(e.to_string()))?;
        let name = ServerName::try_from(self.host.clone()).map_err(|e| unreachable(e.to_string()))?;
        let tls = TlsConnector::from(self.tls.clone())
            .connect(name, tcp)
            .await
            .map_err(|e| unreachable(format!("TLS: {e}")))?;
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(TokioIo::new(tls)).await.map_err(|e| unreachable(e.to_string()))?;
        tokio::spawn(conn);
        sender.send_request(req).await.map_err(|e| unreachable(e.to_string()))
    }

    fn request(&self, method: Method, path: &str, body: Body) -> Request<Body> {
        Request::builder()
            .method(method)
            .uri(path)
            .header(http::header::HOST, self.addr.to_string())
            .header(http::header::AUTHORIZATION, format!("Bearer {}", self.token))
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(body)
            .expect("valid request")
    }

    async fn json(&self, req: Request<Body>) -> Result<serde_json::Value, ClientError> {
        let resp = self.send(req).await?;
        let status = resp.status();
        let bytes = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| ClientError::Unreachable { addr: self.addr.to_string(), message: e.to_string() })?
            .to_bytes();
        let body: serde_json::Value = serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| serde_json::json!({ "error": String::from_utf8_lossy(&bytes) }));
        if status.is_success() {
            Ok(body)
        } else {
            let message = body.get("error").and_then(|e| e.as_str()).unwrap_or("request failed").to_owned();
            Err(ClientError::Api { status, message, body })
        }
    }

    /// `GET path`.
    pub async fn get(&self, path: &str) -> Result<serde_json::Value, ClientError> {
        self.json(self.request(Method::GET, path, empty())).await
    }

    /// `POST path` with a JSON body.
    pub async fn post(&self, path: &str, body: &serde_json::Value) -> Result<serde_json::Value, ClientError> {
        let b = Full::new(Bytes::from(serde_json::to_vec(body).expect("serializes"))).map_err(|e| match e {}).boxed();
        self.json(self.request(Method::POST, path, b)).await
    }

    /// `PUT path` with a JSON body.
    pub async fn put(&self, path: &str, body: &serde_json::Value) -> Result<serde_json::Value, ClientError> {
        let b = Full::new(Bytes::from(serde_json::to_vec(body).expect("serializes"))).map_err(|e| match e {}).boxed();
        self.json(self.request(Method::PUT, path, b)).await
    }

    /// `DELETE path`.
    pub async fn delete(&self, path: &str) -> Result<serde_json::Value, ClientError> {
        self.json(self.request(Method::DELETE, path, empty())).await
    }

    /// Uploads a file to `POST /api/upload?name=NAME`, streaming it;
    /// `progress` is called with the bytes sent so far.
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
        let mut req = self.request(Method::POST, &format!("/api/upload?name={name}"), body);
        req.headers_mut().insert(http::header::CONTENT_LENGTH, len.into());
        req.headers_mut()
            .insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("application/octet-stream"));
        self.json(req).await
    }
}

fn empty() -> Body {
    Full::new(Bytes::new()).map_err(|e| match e {}).boxed()
}
