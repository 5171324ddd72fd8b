//! The security review's findings (issue 10), each as the attack it
//! reproduced: the package that climbs out of its slot, the certificate gate
//! routed around by a content-type, trusted heartbeat fields, uploads that
//! are refused but still written, virtual services on the agent's port.

use integration_tests::TestCluster;

use crate::security::raw_https;

fn addr_of(c: &TestCluster, id: &str) -> String {
    c.file.nodes.iter().find(|n| n.id == id).unwrap().addr.clone()
}

/// A gRPC frame holding `ServerReflectionRequest { list_services: "" }`.
const LIST_SERVICES: &[u8] = &[0, 0, 0, 0, 2, 0x3a, 0x00];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_content_type_routes_around_the_certificate_gate() {
    let c = TestCluster::builder().group("g1", "active-active", 1).start().await;
    for node in ["c1", "g1-se1"] {
        for ct in ["text/plain", "Application/gRPC", "application/grpc"] {
            let mut req = format!(
                "POST /grpc.reflection.v1.ServerReflection/ServerReflectionInfo HTTP/1.1\r\nHost: x\r\n\
                 Content-Type: {ct}\r\nTE: trailers\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                LIST_SERVICES.len()
            )
            .into_bytes();
            req.extend_from_slice(LIST_SERVICES);
            let answer = raw_https(&c, &addr_of(&c, node), &req, false).await;
            assert!(!answer.contains("molt.v1"), "{node}, {ct}: reflection answered without a certificate: {answer}");
            assert!(answer.to_ascii_lowercase().contains("grpc-status: 16"), "{node}, {ct}: {answer}");
        }
        // Health too: no gRPC path is open without a certificate.
        let req = b"POST /grpc.health.v1.Health/Check HTTP/1.1\r\nHost: x\r\nContent-Type: text/plain\r\n\
                    Content-Length: 5\r\nConnection: close\r\n\r\n\0\0\0\0\0";
        let answer = raw_https(&c, &addr_of(&c, node), req, false).await;
        assert!(answer.to_ascii_lowercase().contains("grpc-status: 16"), "{node} health: {answer}");
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
    let addr: std::net::SocketAddr = addr_of(c, "c1").parse().unwrap();
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let tls = tokio_rustls::TlsConnector::from(cfg)
        .connect(rustls::pki_types::ServerName::from(addr.ip()), tcp)
        .await
        .unwrap();
    let sent = Arc::new(AtomicU64::new(0));
    let counter = sent.clone();
    let stream = futures_util::stream::iter(0..chunks).map(move |i| {
        counter.fetch_add(1, Ordering::Relaxed);
        let mut b = vec![0u8; 1 << 20];
        if i == 0 {
            b[..head.len()].copy_from_slice(head);
        }
        Ok::<_, std::convert::Infallible>(hyper::body::Frame::data(bytes::Bytes::from(b)))
    });
    let req = http::Request::post(path)
        .header(http::header::HOST, addr.to_string())
        .header(http::header::AUTHORIZATION, format!("Bearer {token}"))
        .body(StreamBody::new(stream))
        .unwrap();
    let resp = if h2 {
        let (mut s, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls)).await.unwrap();
        tokio::spawn(conn);
        s.send_request(req).await.unwrap()
    } else {
        let (mut s, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls)).await.unwrap();
        tokio::spawn(conn);
        s.send_request(req).await.unwrap()
    };
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    let json =
        serde_json::from_slice(&body).unwrap_or_else(|_| serde_json::json!({ "raw": String::from_utf8_lossy(&body) }));
    (status, json, sent.load(Ordering::Relaxed))
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
    }
}
