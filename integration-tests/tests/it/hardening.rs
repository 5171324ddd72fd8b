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
