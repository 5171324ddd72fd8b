//! The security review's findings (issue 10), each as the attack it
//! reproduced: the package that climbs out of its slot, the certificate gate
//! routed around by a content-type, trusted heartbeat fields, uploads that
//! are refused but still written, virtual services on the agent's port.

use crate::support::*;
use integration_tests::TestCluster;

use crate::security::{addr_of, raw_https};

/// A gRPC frame holding `ServerReflectionRequest { list_services: "" }`.
const LIST_SERVICES: &[u8] = &[0, 0, 0, 0, 2, 0x3a, 0x00];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_content_type_routes_around_the_certificate_gate() {
    let c = TestCluster::builder().group("g1", "active-active", 1).start().await;
    for node in ["c1", "g1-se1"] {
        for (ct, version) in ["text/plain", "Application/gRPC", "application/grpc"]
            .into_iter()
            .flat_map(|ct| [(ct, "v1"), (ct, "v1alpha")])
        {
            let mut req = format!(
                "POST /grpc.reflection.{version}.ServerReflection/ServerReflectionInfo HTTP/1.1\r\nHost: x\r\n\
                 Content-Type: {ct}\r\nTE: trailers\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                LIST_SERVICES.len()
            )
            .into_bytes();
            req.extend_from_slice(LIST_SERVICES);
            let answer = raw_https(&c, &addr_of(&c, node), &req, false).await;
            assert!(!answer.contains("molt.v1"), "{node}, {ct}: reflection answered without a certificate: {answer}");
            // gRPC (by its content type, in any case) is refused without a
            // certificate; anything else never reaches a gRPC service.
            let lower = answer.to_ascii_lowercase();
            if ct.eq_ignore_ascii_case("application/grpc") {
                assert!(lower.contains("grpc-status: 16"), "{node}, {ct}: {answer}");
            } else {
                assert!(
                    answer.starts_with("HTTP/1.1 404") && lower.contains("application/json"),
                    "{node}, {ct}: {answer}"
                );
            }
        }
        // Health too: no gRPC path is open without a certificate.
        for ct in ["application/grpc", "text/plain"] {
            let req = format!(
                "POST /grpc.health.v1.Health/Check HTTP/1.1\r\nHost: x\r\nContent-Type: {ct}\r\n\
                 Content-Length: 5\r\nConnection: close\r\n\r\n\0\0\0\0\0"
            );
            let answer = raw_https(&c, &addr_of(&c, node), req.as_bytes(), false).await;
            assert!(!answer.to_ascii_lowercase().contains("grpc-status: 0"), "{node} health, {ct}: {answer}");
            assert!(
                answer.to_ascii_lowercase().contains(if ct == "text/plain" { "404" } else { "grpc-status: 16" }),
                "{node} health, {ct}: {answer}"
            );
        }
    }
    // The REST API and the page stay reachable (the token still applies).
    let page =
        raw_https(&c, &addr_of(&c, "c1"), b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", false).await;
    assert!(page.starts_with("HTTP/1.1 200"), "{page}");
}

/// POSTs `chunks` chunks of 1 MiB (the first starting with `head`) to
/// `path` on the leader with the admin token and no Content-Length
/// (chunked over HTTP/1.1), over HTTP/2 if `h2`. Returns the status, the
/// JSON answer, and how many chunks the client got to send.
async fn stream_upload(
    c: &TestCluster,
    path: &str,
    head: &'static [u8],
    chunks: u64,
    h2: bool,
) -> (u16, serde_json::Value, u64) {
    stream_upload_to(c, "c1", path, head, chunks, h2).await
}

/// [`stream_upload`] to the controller `node`.
async fn stream_upload_to(
    c: &TestCluster,
    node: &str,
    path: &str,
    head: &'static [u8],
    chunks: u64,
    h2: bool,
) -> (u16, serde_json::Value, u64) {
    use std::sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    };

    use futures_util::StreamExt;
    use http_body_util::{BodyExt, StreamBody};
    use hyper_util::rt::{TokioExecutor, TokioIo};

    let ca = std::fs::read(c.cluster_dir().join("pki/ca.pem")).unwrap();
    let token = std::fs::read_to_string(c.cluster_dir().join("pki/admin.token")).unwrap().trim().to_owned();
    let alpn: &[&[u8]] = if h2 { &[b"h2"] } else { &[b"http/1.1"] };
    let cfg = common::tls::anonymous_client_config(&ca, alpn).unwrap();
    let addr: std::net::SocketAddr = addr_of(c, node).parse().unwrap();
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let tls = tokio_rustls::TlsConnector::from(cfg)
        .connect(rustls::pki_types::ServerName::from(addr.ip()), tcp)
        .await
        .unwrap();
    let sent = Arc::new(AtomicU64::new(0));
    let counter = sent.clone();
    let data = futures_util::stream::iter(0..chunks).map(move |i| {
        counter.fetch_add(1, Ordering::Relaxed);
        let mut b = vec![0u8; 1 << 20];
        if i == 0 {
            b[..head.len()].copy_from_slice(head);
        }
        bytes::Bytes::from(b)
    });
    let (status, body) = if h2 {
        let frames = data.map(|b| Ok::<_, std::convert::Infallible>(hyper::body::Frame::data(b)));
        let req = http::Request::post(path)
            .header(http::header::HOST, addr.to_string())
            .header(http::header::AUTHORIZATION, format!("Bearer {token}"))
            .body(StreamBody::new(frames))
            .unwrap();
        let (mut s, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls)).await.unwrap();
        tokio::spawn(conn);
        let resp = s.send_request(req).await.unwrap();
        let status = resp.status().as_u16();
        (status, resp.into_body().collect().await.unwrap().to_bytes().to_vec())
    } else {
        raw_h1_upload(tls, path, &token, addr, data).await
    };
    let json =
        serde_json::from_slice(&body).unwrap_or_else(|_| serde_json::json!({ "raw": String::from_utf8_lossy(&body) }));
    (status, json, sent.load(Ordering::Relaxed))
}

/// HTTP/1.1 by hand, reading while writing as curl does: a server that
/// answers early and closes must still be heard, whatever the write says.
async fn raw_h1_upload(
    tls: tokio_rustls::client::TlsStream<tokio::net::TcpStream>,
    path: &str,
    token: &str,
    addr: std::net::SocketAddr,
    data: impl futures_util::Stream<Item = bytes::Bytes> + Send + 'static,
) -> (u16, Vec<u8>) {
    use futures_util::StreamExt;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (mut rd, mut wr) = tokio::io::split(tls);
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    );
    let writer = tokio::spawn(async move {
        let mut data = Box::pin(data);
        wr.write_all(head.as_bytes()).await?;
        while let Some(b) = data.next().await {
            wr.write_all(format!("{:x}\r\n", b.len()).as_bytes()).await?;
            wr.write_all(&b).await?;
            wr.write_all(b"\r\n").await?;
        }
        wr.write_all(b"0\r\n\r\n").await
    });
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(std::time::Duration::from_secs(20), rd.read_to_end(&mut answer)).await;
    writer.abort();
    let text = String::from_utf8_lossy(&answer).into_owned();
    let status = text.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0);
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.as_bytes().to_vec()).unwrap_or_default();
    (status, body)
}

fn upgrade_pkgs(c: &TestCluster) -> Vec<String> {
    std::fs::read_dir(c.data_dir("c1").join("upgrade_pkgs"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect()
}

/// A manifest header announcing a 200 MB payload: accepted as far as it
/// goes, so the upload is written until the disk runs out.
fn big_package_head() -> &'static [u8] {
    let manifest = serde_json::json!({
        "format": 1, "version": "2.0.0", "min_compatible": "1.0.0", "kind": "vm",
        "payload_sha256": "ab".repeat(32), "payload_size": 200u64 << 20, "built_at": 0
    })
    .to_string();
    let mut head = common::package::MAGIC.to_vec();
    head.extend_from_slice(&(manifest.len() as u32).to_be_bytes());
    head.extend_from_slice(manifest.as_bytes());
    Box::leak(head.into_boxed_slice())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chunked_upload_into_a_full_disk_is_507_and_leaves_nothing() {
    let c = TestCluster::builder().small_disk("c1", 64 << 20).start().await;
    for h2 in [false, true] {
        let (status, json, _) = stream_upload(&c, "/api/upload?name=big.pkg", big_package_head(), 100, h2).await;
        assert_eq!(status, 507, "h2 {h2}: {json}");
        assert!(json["error"].as_str().unwrap().contains("not enough disk space"), "{json}");
        assert!(upgrade_pkgs(&c).is_empty(), "{:?}", upgrade_pkgs(&c));
    }
    // The leader still works, and its disk has its space back.
    assert_eq!(c.api().get("/api/cluster").await.unwrap()["leader"], "c1");
    assert!(common::fsutil::disk_free(&c.data_dir("c1")).unwrap() > 40 << 20);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_uploads_answer_json_early_over_both_protocols() {
    let c = TestCluster::builder().start().await;
    for h2 in [false, true] {
        // Not a package: refused after 8 bytes, long before the 100 MiB are sent.
        let (status, json, sent) = stream_upload(&c, "/api/upload?name=x.pkg", b"NOTAPKG!", 100, h2).await;
        assert_eq!(status, 400, "h2 {h2}: {json}");
        assert!(json["error"].as_str().unwrap().contains("not a molt package"), "{json}");
        assert!(sent < 100, "h2 {h2}: the client got to send all {sent} MiB; the leader kept reading");
        // A bad name: the JSON error, not a stream reset.
        let (status, json, _) = stream_upload(&c, "/api/upload?name=../x", b"MOLTPKG1", 4, h2).await;
        assert_eq!(status, 400, "h2 {h2}: {json}");
        assert!(json["error"].as_str().unwrap().contains("plain file name"), "{json}");
        assert!(upgrade_pkgs(&c).is_empty(), "{:?}", upgrade_pkgs(&c));
        // A JSON body far over the limit: 413 with the JSON error.
        let (status, json, _) = stream_upload(&c, "/api/cluster/upgrade", b"{\"image_path\": \"", 3, h2).await;
        assert_eq!(status, 413, "h2 {h2}: {json}");
        assert!(json["error"].as_str().unwrap().contains("small JSON documents"), "{json}");
    }
}

/// An oversize JSON body is answered 413 with the JSON error on every route,
/// by the leader and by a follower forwarding to it, over both protocols (a
/// follower used to stream it on and answer "no quorum", or reset the HTTP/2
/// stream, when the leader answered before reading it all; the add-controller
/// route answered 413 in plain text).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversize_json_bodies_get_the_json_413_from_any_controller() {
    let c = TestCluster::builder().controllers(3).start().await;
    let leader = c.leader().settings.node_id.to_string();
    let follower = if leader == "c1" { "c2" } else { "c1" };
    for node in [leader.as_str(), follower] {
        for path in ["/api/cluster/controllers", "/api/serviceenginegroup", "/api/virtualservice"] {
            for h2 in [false, true] {
                let (status, json, _) = stream_upload_to(&c, node, path, b"{\"name\": \"", 3, h2).await;
                assert_eq!(status, 413, "{node} {path} h2 {h2}: {json}");
                assert!(json["error"].as_str().unwrap().contains("small JSON documents"), "{node} {path}: {json}");
            }
        }
    }
    // A small body still goes through the follower to the leader.
    let api = c.api().pinned(addr_of(&c, follower).parse().unwrap());
    api.post("/api/serviceenginegroup", &serde_json::json!({"name": "g7", "ha_mode": "active-active"})).await.unwrap();
    // An HA mode that is not one of the three is refused when the body is
    // read (the mode is a type, not a string checked later), saying which are.
    let e =
        api.post("/api/serviceenginegroup", &serde_json::json!({"name": "g8", "ha_mode": "mesh"})).await.unwrap_err();
    let molt::client::ClientError::Api { status, message, .. } = &e else { panic!("{e}") };
    assert_eq!(status.as_u16(), 400, "{e}");
    assert!(
        message.contains("unknown variant `mesh`, expected one of `active-active`, `n-plus-m`, `active-standby`"),
        "{message}"
    );
    assert!(c.api().get("/api/serviceenginegroup/g8").await.is_err(), "nothing was created");
    // A cluster-wide rule out of its bounds is refused, naming them; one
    // set through a follower is in the replicated configuration.
    let e = api.put("/api/cluster/settings", &serde_json::json!({"reform_timeout_secs": 5})).await.unwrap_err();
    let molt::client::ClientError::Api { status, message, .. } = &e else { panic!("{e}") };
    assert_eq!((status.as_u16(), message.as_str()), (400, "reform_timeout_secs 5: must be 10 to 3600 seconds"));
    api.put("/api/cluster/settings", &serde_json::json!({"reform_timeout_secs": 42})).await.unwrap();
    assert_eq!(c.api().get("/api/cluster/settings").await.unwrap(), serde_json::json!({"reform_timeout_secs": 42}));
    assert_eq!(c.leader().config().rules.reform_timeout_secs, Some(42));
}

/// A TCP connection to `addr` from the source address `from`.
async fn tcp_from(from: &str, addr: &str) -> tokio::net::TcpStream {
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.bind(format!("{from}:0").parse().unwrap()).unwrap();
    sock.connect(addr.parse().unwrap()).await.unwrap()
}

/// Seconds until the server closes `s` (reading and dropping what comes), at most `limit`.
async fn closed_within(mut s: impl tokio::io::AsyncRead + Unpin, limit: std::time::Duration) -> Option<f64> {
    use tokio::io::AsyncReadExt;
    let t = std::time::Instant::now();
    let mut buf = [0u8; 4096];
    let done = tokio::time::timeout(limit, async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
    })
    .await;
    done.ok().map(|()| t.elapsed().as_secs_f64())
}

async fn tls_from(c: &TestCluster, from: &str, addr: &str) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    let ca = std::fs::read(c.cluster_dir().join("pki/ca.pem")).unwrap();
    let cfg = common::tls::anonymous_client_config(&ca, &[b"http/1.1"]).unwrap();
    let ip: std::net::SocketAddr = addr.parse().unwrap();
    tokio_rustls::TlsConnector::from(cfg)
        .connect(rustls::pki_types::ServerName::from(ip.ip()), tcp_from(from, addr).await)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unauthenticated_connections_are_capped_and_timed_out() {
    use std::time::Duration;

    use tokio::io::AsyncWriteExt;
    let c = TestCluster::builder()
        .group("g1", "active-active", 1)
        .limits("c1", "handshake_timeout_ms = 500\nheader_timeout_ms = 500\nmax_anonymous_per_ip = 20\nmax_handshakes_per_ip = 20")
        .start()
        .await;
    let leader = addr_of(&c, "c1");
    // 20 connections that never start TLS are held; the 21st and later are closed at once.
    let mut held = Vec::new();
    for _ in 0..20 {
        held.push(tcp_from("127.0.0.99", &leader).await);
    }
    for _ in 0..10 {
        let extra = tcp_from("127.0.0.99", &leader).await;
        let t = closed_within(extra, Duration::from_secs(5)).await.expect("an extra connection is closed");
        assert!(t < 0.4, "an extra connection stayed open {t} s");
    }
    // Meanwhile the API answers callers from other addresses, and the nodes keep their sessions.
    assert_eq!(c.api().get("/api/cluster").await.unwrap()["leader"], "c1");
    // The held ones are dropped once the handshake time is up.
    for s in held {
        let t = closed_within(s, Duration::from_secs(5)).await.expect("a silent connection is closed");
        assert!(t < 2.0, "a connection without a handshake stayed open {t} s");
    }
    // A half-sent request, and a slow header, end after the header timeout.
    let mut half = tls_from(&c, "127.0.0.99", &leader).await;
    half.write_all(b"GET /api/cluster HTTP/1.1\r\nHost: x\r\n").await.unwrap();
    let t = closed_within(half, Duration::from_secs(5)).await.expect("a half-sent request is closed");
    assert!(t < 2.0, "a half-sent request stayed open {t} s");
    let mut slow = tls_from(&c, "127.0.0.99", &leader).await;
    let dribble = tokio::spawn(async move {
        for b in b"GET /api/cluster HTTP/1.1\r\nHost: xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx" {
            if slow.write_all(&[*b]).await.is_err() {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        false
    });
    assert!(dribble.await.unwrap(), "a header sent a byte at a time was never cut off");
    // An idle keep-alive connection ends too.
    let mut idle = tls_from(&c, "127.0.0.99", &leader).await;
    idle.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
    let t = closed_within(idle, Duration::from_secs(5)).await.expect("an idle connection is closed");
    assert!(t < 2.0, "an idle connection stayed open {t} s");
}

/// Finding 5 of issue 25: idle HTTP/2 connections without a certificate
/// (TLS, the preface, pings answered) used to take every connection slot,
/// so that SE heartbeats, the admin and writes through a follower failed.
/// Now they fill only the anonymous budget, and are closed once idle.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anonymous_connections_cannot_starve_certificate_holders() {
    use std::time::Duration;

    use hyper_util::rt::{TokioExecutor, TokioIo};
    let limits = "max_anonymous = 16\nheader_timeout_ms = 1500\nmax_handshakes_per_ip = 4";
    let c = TestCluster::builder()
        .controllers(3)
        .group("g1", "active-active", 1)
        .limits("c1", limits)
        .limits("c2", limits)
        .limits("c3", limits)
        .start()
        .await;
    let leader = c.leader().settings.node_id.to_string();
    let follower = ["c1", "c2", "c3"].into_iter().find(|n| *n != leader).unwrap();
    let to = addr_of(&c, &leader);
    let ca = std::fs::read(c.cluster_dir().join("pki/ca.pem")).unwrap();
    let h2_idle = async |from: &str| {
        let cfg = common::tls::anonymous_client_config(&ca, &[b"h2"]).unwrap();
        let ip: std::net::SocketAddr = to.parse().unwrap();
        let tls = tokio_rustls::TlsConnector::from(cfg)
            .connect(rustls::pki_types::ServerName::from(ip.ip()), tcp_from(from, &to).await)
            .await
            .unwrap();
        let (send, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
            .handshake::<_, http_body_util::Empty<bytes::Bytes>>(TokioIo::new(tls))
            .await
            .unwrap();
        (send, tokio::spawn(conn))
    };
    // The attack, from addresses of their own: the anonymous budget fills.
    let mut held = Vec::new();
    for i in 0..16 {
        held.push(h2_idle(&format!("127.0.1.{}", 10 + i / 4)).await);
    }
    // One more without a certificate is closed once its handshake is done.
    let (_send, extra) = h2_idle("127.0.1.30").await;
    let closed = tokio::time::timeout(Duration::from_secs(1), extra).await;
    assert!(closed.is_ok(), "a connection over the anonymous budget stayed open");
    // Handshakes left hanging: at most 4 from one address; a 5th is closed at once.
    let mut stalled = Vec::new();
    for _ in 0..4 {
        stalled.push(tcp_from("127.0.2.1", &to).await);
    }
    let fifth = tcp_from("127.0.2.1", &to).await;
    let t = closed_within(fifth, Duration::from_secs(5)).await.expect("a fifth handshake is closed");
    assert!(t < 0.4, "a fifth handshake from one address stayed open {t} s");
    // Certificate holders go on: the admin's certificate (molt's client
    // presents it), SEs' heartbeats, a write through a follower.
    assert_eq!(c.cluster().await.leader, Some(leader.clone()));
    let api = c.api().pinned(addr_of(&c, follower).parse().unwrap());
    api.post("/api/serviceenginegroup", &serde_json::json!({"name": "g7", "ha_mode": "active-active"})).await.unwrap();
    for id in ["c1", "c2", "c3", "g1-se1"] {
        assert_eq!(c.node_view(id).await.state, ClusterNodeState::Up, "{id}");
    }
    // The idle ones are closed after header_timeout_ms (1.5 s), whatever
    // pings they answer; then anonymous callers get in again.
    for (send, conn) in held {
        let ended = tokio::time::timeout(Duration::from_secs(6), conn).await;
        assert!(ended.is_ok(), "an idle HTTP/2 connection without a certificate stayed open");
        drop(send);
    }
    let (mut send, conn) = h2_idle("127.0.1.10").await;
    let req = http::Request::get("/").header(http::header::HOST, to.as_str()).body(Default::default()).unwrap();
    assert_eq!(send.send_request(req).await.unwrap().status(), 200);
    conn.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn image_streams_only_for_nodes_told_to_stage_and_bounded() {
    use common::DeploymentKind;
    use integration_tests::{eventually, make_package};
    use proto::v1 as pb;
    use tonic::Code;

    let c = TestCluster::builder().group("g1", "active-active", 1).fetch_rate_limit(2 << 20).start().await;
    let tmp = tempfile::tempdir().unwrap();
    let pkg = make_package(tmp.path(), "2.0.0", DeploymentKind::Vm, 12 << 20);
    let (sha, _) = common::package::hash_file(&pkg).unwrap();
    c.api().upload(&pkg, "controller.pkg", |_| {}).await.unwrap();
    let pki = c.cluster_dir().join("pki");
    let ca = std::fs::read(pki.join("ca.pem")).unwrap();
    let fetch = async || {
        let ch = crate::security::channel(&ca, &pki, Some("g1-se1"), &addr_of(&c, "c1")).await.unwrap();
        pb::leader_client::LeaderClient::new(ch)
            .fetch_image(pb::FetchImageRequest { sha256: sha.to_hex(), offset: 0, ..Default::default() })
            .await
            .map(|r| r.into_inner())
    };
    let e = fetch().await.unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e}");
    assert!(e.message().contains("has not asked it to stage"), "{}", e.message());
    // While the leader drives g1-se1's staging, it may fetch, within its
    // limit (`fetch_streams_per_node`, 8 — a node fetches up to
    // `relay_fanout` stripes — its own stream included).
    c.prestage("controller://upgrade_pkgs/controller.pkg").await.unwrap();
    let part = c.data_dir("g1-se1").join("staging").join(format!("{sha}.part"));
    eventually(30, "g1-se1 staging", async || std::fs::metadata(&part).map(|m| m.len() > 0).unwrap_or(false)).await;
    let mut held = Vec::new();
    let mut exhausted = 0;
    for _ in 0..20 {
        match fetch().await {
            Ok(s) => held.push(s), // opened and never read
            Err(e) if e.code() == Code::ResourceExhausted => exhausted += 1,
            Err(e) => panic!("unexpected refusal: {e}"),
        }
    }
    assert!(held.len() <= 7 && exhausted >= 13, "{} streams opened, {exhausted} refused", held.len());
    drop(held);
    let end = c.wait_operation(60).await;
    assert_eq!(end.state, OpState::Completed, "{end:#?}");
    // Staged: the grant is gone with the operation.
    let e = fetch().await.unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeats_are_checked_and_one_session_per_node_lives() {
    use proto::v1 as pb;
    use tonic::Code;

    let c = TestCluster::builder().group("g1", "active-active", 1).start().await;
    let pki = c.cluster_dir().join("pki");
    let ca = std::fs::read(pki.join("ca.pem")).unwrap();
    let open = async |who: &str, hb: pb::Heartbeat| {
        let ch = crate::security::channel(&ca, &pki, Some(who), &addr_of(&c, "c1")).await.unwrap();
        let first = pb::AgentMessage { kind: Some(pb::agent_message::Kind::Heartbeat(hb)) };
        // Keep the stream open: a session that ended at once would prove nothing.
        let msgs = tokio_stream::iter(vec![first]).chain(futures_util::stream::pending());
        pb::leader_client::LeaderClient::new(ch).session(msgs).await.map(|_| ())
    };
    use futures_util::StreamExt;
    let base = |id: &str, role: &str, addr: &str| pb::Heartbeat {
        node_id: id.into(),
        role: role.into(),
        version: "1.0.0".into(),
        boot_id: "intruder".into(),
        deployment: "vm".into(),
        se_group: if role == "se" { "g1".into() } else { String::new() },
        addr: addr.into(),
        ..Default::default()
    };
    // The real g1-se1 is live: a second session under its id is refused, and it stays up.
    let e = open("g1-se1", base("g1-se1", "se", &addr_of(&c, "g1-se1"))).await.unwrap_err();
    assert_eq!(e.code(), Code::AlreadyExists, "{e}");
    assert!(e.message().contains("already has a live session"), "{}", e.message());
    let se = c.node_view("g1-se1").await;
    assert_eq!(se.state, ClusterNodeState::Up);
    assert_ne!(se.boot_id.as_deref(), Some("intruder"), "the real agent's session was displaced");
    // Control characters in a field are refused.
    let mut hb = base("g1-se1", "se", &addr_of(&c, "g1-se1"));
    hb.boot_id = "x\u{1b}[2J".into();
    let e = open("g1-se1", hb).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e}");
    assert!(e.message().contains("control characters"), "{}", e.message());
    // An SE may not claim another group or address than the configuration's.
    let mut hb = base("g1-se1", "se", &addr_of(&c, "g1-se1"));
    hb.se_group = "g2".into();
    let e = open("g1-se1", hb).await.unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e}");
    assert!(e.message().contains("claims SE group g2"), "{}", e.message());
    let e = open("g1-se1", base("g1-se1", "se", "127.0.0.1:9")).await.unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e}");
    // A controller may not claim an address other than the configured one.
    let e = open("c1", base("c1", "controller", "127.0.0.1:9")).await.unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e}");
    assert!(e.message().contains("cluster configuration has it at"), "{}", e.message());
}

/// The certificate `addr` presents now.
async fn served_serial(c: &TestCluster, addr: &str) -> String {
    let tls = tls_from(c, "127.0.0.1", addr).await;
    let der = tls.get_ref().1.peer_certificates().unwrap()[0].clone();
    common::identity::serial_hex(&der).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoked_certificates_are_cut_off_and_renewed_ones_taken_without_a_restart() {
    use integration_tests::eventually;
    use proto::v1 as pb;

    let c = TestCluster::builder().group("g1", "active-active", 1).start().await;
    let pki = c.cluster_dir().join("pki");
    // Revoked: its open session is closed, and it cannot come back.
    molt::pki::revoke(&pki, &["g1-se1".into()]).unwrap();
    eventually(15, "g1-se1 down once revoked", async || c.node_view("g1-se1").await.state == ClusterNodeState::Down)
        .await;
    let ca = std::fs::read(pki.join("ca.pem")).unwrap();
    let refused = match crate::security::channel(&ca, &pki, Some("g1-se1"), &addr_of(&c, "c1")).await {
        Err(_) => true,
        Ok(ch) => pb::leader_client::LeaderClient::new(ch)
            .fetch_image(pb::FetchImageRequest { sha256: "ab".repeat(32), offset: 0, ..Default::default() })
            .await
            .is_err_and(|e| e.code() != tonic::Code::PermissionDenied),
    };
    assert!(refused, "a revoked certificate still completed a handshake");
    // Taken off the list: it rejoins by itself.
    std::fs::write(pki.join("revoked.txt"), "# nothing revoked\n").unwrap();
    eventually(15, "g1-se1 up again", async || c.node_view("g1-se1").await.state == ClusterNodeState::Up).await;
    // Renewed: the running node serves the new certificate, and stays up.
    let before = served_serial(&c, &addr_of(&c, "g1-se1")).await;
    let renewed = molt::pki::renew(&pki, &"g1-se1".parse().unwrap(), 30).unwrap();
    assert_eq!(renewed.replaces, before);
    eventually(15, "g1-se1 serving its renewed certificate", async || {
        served_serial(&c, &addr_of(&c, "g1-se1")).await == renewed.serial
    })
    .await;
    assert_eq!(c.node_view("g1-se1").await.state, ClusterNodeState::Up);
    // Revoking the old serial ends the connections made with it; the node
    // redials with its renewed certificate and stays in the cluster.
    let boot_before = c.node_view("g1-se1").await.boot_id;
    molt::pki::revoke(&pki, std::slice::from_ref(&before)).unwrap();
    // Once the leader has the revocation in force, the connections made with
    // the old serial are ended (`revoked_later`).
    eventually(15, "the leader revoking the old serial", async || {
        c.leader().settings.tls.revocations().revokes("g1-se1", &before)
    })
    .await;
    eventually(15, "g1-se1 up on its renewed certificate", async || {
        c.node_view("g1-se1").await.state == ClusterNodeState::Up
    })
    .await;
    assert_eq!(c.node_view("g1-se1").await.boot_id, boot_before, "the node was not restarted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_answers_are_not_sniffed_and_services_stay_off_the_agents_port() {
    let c = TestCluster::builder().group("g1", "active-active", 1).start().await;
    let token = std::fs::read_to_string(c.cluster_dir().join("pki/admin.token")).unwrap();
    for path in ["/api/cluster", "/api/nope", "/metrics"] {
        let req = format!(
            "GET {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\nConnection: close\r\n\r\n",
            token.trim()
        );
        let answer = raw_https(&c, &addr_of(&c, "c1"), req.as_bytes(), false).await.to_ascii_lowercase();
        assert!(answer.contains("x-content-type-options: nosniff"), "{path}: {answer}");
    }
    let api = c.api();
    api.post("/api/serviceenginegroup", &serde_json::json!({"name": "g1", "ha_mode": "active-active"})).await.unwrap();
    let e = api
        .post("/api/virtualservice", &serde_json::json!({"name": "grpc", "se_group": "g1", "port": 8443}))
        .await
        .unwrap_err();
    match e {
        molt::client::ClientError::Api { status, message, .. } => {
            assert_eq!(status.as_u16(), 400);
            assert!(message.contains("agents' own port"), "{message}");
        }
        other => panic!("{other}"),
    }
    assert!(api.get("/api/virtualservice/grpc").await.is_err(), "nothing was stored");
}
