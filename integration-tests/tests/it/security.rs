//! Who may call what: mutual TLS for gRPC, roles from certificates, tokens
//! for REST.

use std::{sync::Arc, time::Duration};

use crate::support::*;
use integration_tests::TestCluster;
use proto::v1 as pb;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::{
    Code,
    transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity},
};

/// Sends raw bytes over TLS (trusting the cluster CA, no client
/// certificate) and returns what came back; with `cut`, drops the
/// connection right after writing.
pub async fn raw_https(c: &TestCluster, addr: &str, request: &[u8], cut: bool) -> String {
    let ca = std::fs::read(c.cluster_dir().join("pki/ca.pem")).unwrap();
    let cfg = common::tls::anonymous_client_config(&ca, &[b"http/1.1"]).unwrap();
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let ip: std::net::SocketAddr = addr.parse().unwrap();
    let name = rustls::pki_types::ServerName::from(ip.ip());
    let mut tls = tokio_rustls::TlsConnector::from(cfg).connect(name, tcp).await.unwrap();
    tls.write_all(request).await.unwrap();
    if cut {
        return String::new();
    }
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), tls.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

fn pki_file(c: &TestCluster, name: &str) -> Vec<u8> {
    std::fs::read(c.cluster_dir().join("pki").join(name)).unwrap()
}

/// A gRPC channel to `addr` trusting the cluster CA, presenting `who`'s
/// certificate from `pki_dir` (none if `who` is None).
pub async fn channel(
    ca: &[u8],
    pki_dir: &std::path::Path,
    who: Option<&str>,
    addr: &str,
) -> Result<Channel, tonic::transport::Error> {
    let mut tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca));
    if let Some(id) = who {
        let cert = std::fs::read(pki_dir.join(format!("{id}.pem"))).unwrap();
        let key = std::fs::read(pki_dir.join(format!("{id}.key"))).unwrap();
        tls = tls.identity(Identity::from_pem(cert, key));
    }
    Endpoint::from_shared(format!("https://{addr}"))?.tls_config(tls)?.connect().await
}

pub fn addr_of(c: &TestCluster, id: &str) -> String {
    c.file.nodes.iter().find(|n| n.id == id).unwrap().addr.clone()
}

fn stage_command(generation: u64) -> pb::Command {
    pb::Command {
        id: format!("probe-{generation}"),
        generation,
        kind: Some(pb::command::Kind::Stage(pb::Stage {
            image: Some(pb::ImageRef {
                sha256: "ab".repeat(32),
                size: 1,
                version: "2.0.0".into(),
                kind: "docker".into(),
                min_compatible: "1.0.0".into(),
            }),
        })),
        operation_id: String::new(),
    }
}

async fn execute_at(
    c: &TestCluster,
    who: Option<&str>,
    target: &str,
    generation: u64,
) -> Result<pb::CommandAck, tonic::Status> {
    let pki = c.cluster_dir().join("pki");
    let ch = channel(&pki_file(c, "ca.pem"), &pki, who, &addr_of(c, target))
        .await
        .map_err(|e| tonic::Status::unavailable(format!("{e:?}")))?;
    pb::control_client::ControlClient::new(ch).execute(stage_command(generation)).await.map(|r| r.into_inner())
}

async fn execute(c: &TestCluster, who: Option<&str>, target: &str) -> Result<pb::CommandAck, tonic::Status> {
    execute_at(c, who, target, 1_000).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_controller_leading_a_nodes_session_commands_it() {
    let c = TestCluster::builder().controllers(3).group("g1", "active-active", 2).start().await;
    let e = execute(&c, Some("g1-se1"), "g1-se2").await.unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "an SE commands another SE: {e}");
    let e = execute(&c, Some("g1-se1"), "c2").await.unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "an SE commands a controller: {e}");
    let e = execute(&c, Some("admin"), "g1-se1").await.unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "the admin certificate is not a controller: {e}");
    // The leader's generation comes from its raft term: above any number a
    // leader took before raft.
    let generation = c.leader().generation();
    assert!(generation >= 1 << 32, "generation {generation}");
    let ack = execute_at(&c, Some("c1"), "g1-se1", generation).await.unwrap();
    assert_eq!(ack.result.unwrap().state, pb::CommandState::Running as i32, "the leader's command is taken");
    // Another controller's certificate does not command a node, whatever
    // generation it claims (issue 25, 3c: a follower made an SE apply).
    for claimed in [generation, generation + 1] {
        let e = execute_at(&c, Some("c2"), "g1-se1", claimed).await.unwrap_err();
        assert_eq!(e.code(), Code::PermissionDenied, "a follower commands an SE: {e}");
        assert!(e.message().contains("c1 in generation"), "{}", e.message());
    }
    // Nor does the leader with a generation other than the one it announced
    // (a deposed leader's, or one made up).
    let e = execute_at(&c, Some("c1"), "g1-se1", generation - 1).await.unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_controllers_reach_the_raft_service() {
    let c = TestCluster::builder().controllers(3).group("g1", "active-active", 1).start().await;
    let pki = c.cluster_dir().join("pki");
    let vote = |who: &'static str| {
        let (pki, c2) = (pki.clone(), addr_of(&c, "c2"));
        let ca = pki_file(&c, "ca.pem");
        async move {
            let ch = channel(&ca, &pki, Some(who), &c2).await.unwrap();
            let msg = pb::RaftMessage { json: b"{}".to_vec() };
            pb::raft_client::RaftClient::new(ch).vote(msg).await
        }
    };
    for who in ["g1-se1", "admin"] {
        let e = vote(who).await.unwrap_err();
        assert_eq!(e.code(), Code::PermissionDenied, "{who}: {e}");
    }
    // A member passes the check, and a malformed message is refused as such.
    let e = vote("c1").await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e}");
    assert!(e.message().contains("malformed raft message"), "{}", e.message());
    // A message meant for another member (the membership names a wrong
    // address for it) is refused by whoever answers there.
    let ch = channel(&pki_file(&c, "ca.pem"), &pki, Some("c1"), &addr_of(&c, "c2")).await.unwrap();
    let mut msg = tonic::Request::new(pb::RaftMessage { json: b"{}".to_vec() });
    let c3: common::NodeId = "c3".parse().unwrap();
    msg.metadata_mut().insert("x-molt-raft-to", controller_agent::raft::raft_id(&c3).to_string().parse().unwrap());
    let e = pb::raft_client::RaftClient::new(ch).vote(msg).await.unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e}");
    assert!(e.message().contains("this is controller c2"), "{}", e.message());
    // A controller certificate of this CA for a node that is no member
    // (issue 25, 7: a non-member c9 forced an election).
    let spec: molt::pki::NodeSpec = "c9=controller@127.0.0.1".parse().unwrap();
    molt::pki::add(&pki, &[spec], 30).unwrap();
    let e = vote("c9").await.unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e}");
    assert!(e.message().contains("not a member"), "{}", e.message());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_without_a_cluster_certificate_reaches_no_method() {
    let c = TestCluster::builder().group("g1", "active-active", 1).start().await;
    // No client certificate.
    let e = execute(&c, None, "g1-se1").await.unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated, "{e}");
    // A certificate with the very same identity, from another CA.
    let other = tempfile::tempdir().unwrap();
    let spec: molt::pki::NodeSpec = "c1=controller@127.0.0.1".parse().unwrap();
    molt::pki::init(other.path(), "local", &[spec]).unwrap();
    let ch = channel(&pki_file(&c, "ca.pem"), other.path(), Some("c1"), &addr_of(&c, "g1-se1")).await;
    let refused = match ch {
        Err(_) => true,
        Ok(ch) => pb::control_client::ControlClient::new(ch).execute(stage_command(1)).await.is_err(),
    };
    assert!(refused, "a certificate from another CA must be refused");
    // Plaintext gRPC.
    let plain = Endpoint::from_shared(format!("http://{}", addr_of(&c, "g1-se1"))).unwrap().connect().await;
    let refused = match plain {
        Err(_) => true,
        Ok(ch) => pb::control_client::ControlClient::new(ch).execute(stage_command(1)).await.is_err(),
    };
    assert!(refused, "plaintext must be refused");
    // Plaintext HTTP gets no HTTP answer.
    let mut tcp = tokio::net::TcpStream::connect(addr_of(&c, "c1")).await.unwrap();
    tcp.write_all(b"GET /api/cluster HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
    let mut buf = vec![0u8; 64];
    let n = tokio::time::timeout(Duration::from_secs(5), tcp.read(&mut buf)).await.unwrap().unwrap_or(0);
    assert!(!String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/"), "plaintext got an HTTP answer");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_cannot_open_a_session_as_another_node() {
    let c = TestCluster::builder().group("g1", "active-active", 1).start().await;
    let pki = c.cluster_dir().join("pki");
    let ch = channel(&pki_file(&c, "ca.pem"), &pki, Some("g1-se1"), &addr_of(&c, "c1")).await.unwrap();
    let hb = pb::Heartbeat {
        node_id: "c2".into(),
        role: "controller".into(),
        version: "1.0.0".into(),
        boot_id: "x".into(),
        deployment: "vm".into(),
        addr: "127.0.0.1:8443".into(),
        ..Default::default()
    };
    let first = pb::AgentMessage { kind: Some(pb::agent_message::Kind::Heartbeat(hb)) };
    let e = pb::leader_client::LeaderClient::new(ch).session(tokio_stream::iter(vec![first])).await.unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e}");
    assert!(e.message().contains("certificate is for se g1-se1"), "{}", e.message());
    // And an SE may not fetch images as an admin could not either.
    let ch = channel(&pki_file(&c, "ca.pem"), &pki, Some("admin"), &addr_of(&c, "c1")).await.unwrap();
    let e = pb::leader_client::LeaderClient::new(ch)
        .fetch_image(pb::FetchImageRequest { sha256: "ab".repeat(32), offset: 0, ..Default::default() })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e}");
}

/// Runs `python3 -c script` with `args`; returns its exit success and output.
fn python(script: &str, args: &[&str]) -> (bool, String) {
    let out = std::process::Command::new("python3").arg("-c").arg(script).args(args).output().expect("python3 runs");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

/// A REST call from Python's standard library with a strict default context:
/// `ssl.create_default_context(cafile=CA)` plus `VERIFY_X509_STRICT` (the
/// default from Python 3.13 on), the admin's client certificate, no token.
/// Prints the status and the body.
const STRICT_CLIENT: &str = r#"
import ssl, sys, urllib.request, urllib.error
ca, cert, key, url = sys.argv[1:5]
ctx = ssl.create_default_context(cafile=ca)
ctx.verify_flags |= ssl.VERIFY_X509_STRICT
ctx.load_cert_chain(cert, key)
try:
    r = urllib.request.urlopen(url, context=ctx, timeout=10)
    print(r.status, r.read().decode())
except urllib.error.HTTPError as e:
    print(e.code, e.read().decode())
"#;

/// Issue 27: with no Authority Key Identifier in the certificates, a strict
/// client (Python 3.13's default) refused every controller. It now reaches
/// the REST API and `/metrics` with the admin's certificate, verifying the
/// controller's; an operator certificate cannot serve.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_strict_python_client_calls_the_rest_api_with_a_client_certificate() {
    let c = TestCluster::builder().group("g1", "active-active", 1).start().await;
    let pki = c.cluster_dir().join("pki");
    let file = |name: &str| pki.join(name).to_str().unwrap().to_owned();
    let url = |path: &str| format!("https://{}{path}", addr_of(&c, "c1"));
    let (ca, cert, key) = (file("ca.pem"), file("admin.pem"), file("admin.key"));
    let (ok, out) = python(STRICT_CLIENT, &[&ca, &cert, &key, &url("/api/cluster")]);
    assert!(ok && out.starts_with("200 "), "{out}");
    let doc: ClusterDoc = serde_json::from_str(out.trim_start_matches("200 ").trim()).unwrap();
    assert_eq!(doc.leader.as_deref(), Some("c1"));
    let (ok, out) = python(STRICT_CLIENT, &[&ca, &cert, &key, &url("/metrics")]);
    assert!(ok && out.starts_with("200 ") && out.contains("molt_node_up"), "{out}");
    // What each certificate may be: nodes serve and dial, the admin only dials.
    for (name, server) in [("c1.pem", true), ("g1-se1.pem", true), ("admin.pem", false)] {
        let out = std::process::Command::new("openssl")
            .args(["verify", "-x509_strict", "-purpose", "sslserver", "-CAfile", &ca, &file(name)])
            .output()
            .unwrap();
        assert_eq!(out.status.success(), server, "{name}: {}", String::from_utf8_lossy(&out.stderr));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rest_needs_the_admin_token() {
    let c = TestCluster::builder().start().await;
    let addr = addr_of(&c, "c1");
    let none = raw_https(&c, &addr, b"GET /api/cluster HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", false).await;
    assert!(none.starts_with("HTTP/1.1 401"), "{none}");
    assert!(none.contains("admin.token"), "the refusal says what to send: {none}");
    let wrong = raw_https(
        &c,
        &addr,
        b"GET /api/cluster/upgrade/status HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer 0000000000000000\r\nConnection: close\r\n\r\n",
        false,
    )
    .await;
    assert!(wrong.starts_with("HTTP/1.1 401"), "{wrong}");
    let upload = raw_https(
        &c,
        &addr,
        b"POST /api/upload?name=x.pkg HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nConnection: close\r\n\r\nabc",
        false,
    )
    .await;
    assert!(upload.starts_with("HTTP/1.1 401"), "{upload}");
    assert_eq!(std::fs::read_dir(c.data_dir("c1").join("upgrade_pkgs")).unwrap().count(), 0);
    // With the token, the same call works.
    assert_eq!(c.api().get("/api/cluster").await.unwrap()["leader"], "c1");
}

/// The status code, the headers (lower case) and the JSON body of a raw
/// HTTP/1.1 answer.
fn parse_answer(raw: &str) -> (u16, String, serde_json::Value) {
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((raw, ""));
    let code = head.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let json = serde_json::from_str(body.trim()).unwrap_or(serde_json::Value::Null);
    (code, head.to_lowercase(), json)
}

/// Issue 27: without a client certificate, paths outside the routes
/// answered `200 application/grpc` with a gRPC error in a trailer, an SE
/// answered the REST API and `/metrics` 200 with an empty body, a 405 had no
/// body, and a JSON array was taken for a request by position. A request is
/// gRPC by its content type now; everything else is HTTP by the book.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_outside_the_routes_is_json_404_or_405_and_an_se_names_the_controllers() {
    let c = TestCluster::builder().group("g1", "active-active", 1).start().await;
    let token = String::from_utf8(pki_file(&c, "admin.token")).unwrap().trim().to_owned();
    let ask = async |id: &str, method: &str, path: &str, extra: &str| {
        let req = format!("{method} {path} HTTP/1.1\r\nHost: x\r\n{extra}Connection: close\r\n\r\n");
        parse_answer(&raw_https(&c, &addr_of(&c, id), req.as_bytes(), false).await)
    };
    for path in ["/openapi.json", "/docs", "/api", "/favicon.ico", "/API/cluster", "/nonexistent", "/ui/nope.js"] {
        let (code, head, body) = ask("c1", "GET", path, "").await;
        assert_eq!(code, 404, "{path}: {head}");
        assert!(head.contains("content-type: application/json"), "{path}: {head}");
        assert_eq!(body["kind"], "not_found", "{path}: {body}");
        assert!(body["error"].is_string(), "{path}: {body}");
    }
    // A known path, another method: 405, JSON, and what is allowed.
    let auth = format!("Authorization: Bearer {token}\r\n");
    let (code, head, body) = ask("c1", "DELETE", "/api/cluster", &auth).await;
    assert_eq!((code, &body["kind"]), (405, &serde_json::json!("method_not_allowed")), "{head}{body}");
    assert!(head.contains("allow: get,head") && head.contains("content-type: application/json"), "{head}");
    let (code, head, _) = ask("c1", "POST", "/", "Content-Length: 0\r\n").await;
    assert!(code == 405 && head.contains("allow: get,head"), "{head}");
    // A body is a JSON object, or it is refused naming what it was.
    let array = api_post_raw(&c, "/api/cluster/upgrade", "[]", &token).await;
    assert_eq!((array.0, &array.2["kind"]), (400, &serde_json::json!("bad_request")), "{array:?}");
    assert!(array.2["error"].as_str().unwrap().contains("expected a JSON object, got an array"), "{array:?}");
    // gRPC is still gRPC: without a certificate, UNAUTHENTICATED on any path.
    let (code, head, _) =
        ask("c1", "POST", "/nonexistent", "Content-Type: application/grpc\r\nContent-Length: 0\r\n").await;
    assert!(code == 200 && head.contains("grpc-status: 16"), "{head}");
    // An SE serves no REST API or page: 404, naming the controllers; its
    // own metrics only to a cluster certificate.
    let (code, head, body) = ask("g1-se1", "GET", "/metrics", &auth).await;
    assert_eq!((code, &body["kind"]), (401, &serde_json::json!("unauthenticated")), "{head}{body}");
    for path in ["/", "/api/cluster"] {
        let (code, head, body) = ask("g1-se1", "GET", path, &auth).await;
        assert_eq!((code, &body["kind"]), (404, &serde_json::json!("not_found")), "{path}: {head}{body}");
        let said = body["error"].as_str().unwrap();
        assert!(said.contains("Service Engine") && said.contains(&addr_of(&c, "c1")), "{said}");
    }
}

/// POSTs `body` with the token over a raw connection: status, head, JSON body.
async fn api_post_raw(c: &TestCluster, path: &str, body: &str, token: &str) -> (u16, String, serde_json::Value) {
    let req = format!(
        "POST {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    parse_answer(&raw_https(c, &addr_of(c, "c1"), req.as_bytes(), false).await)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_and_reflection_answer_with_cluster_certificates() {
    use tonic_health::pb::health_check_response::ServingStatus;
    let c = TestCluster::builder().controllers(3).group("g1", "active-active", 1).start().await;
    let pki = c.cluster_dir().join("pki");
    let health_of = async |id: &str, service: &str| -> Result<i32, tonic::Status> {
        let ch = channel(&pki_file(&c, "ca.pem"), &pki, Some("admin"), &addr_of(&c, id)).await.unwrap();
        let mut health = tonic_health::pb::health_client::HealthClient::new(ch);
        let req = tonic_health::pb::HealthCheckRequest { service: service.into() };
        health.check(req).await.map(|r| r.into_inner().status)
    };
    // Issue 27: health knew only "" and molt.v1.Control. Every service a node
    // serves answers now, and molt.v1.Leader follows leadership.
    let serving = ServingStatus::Serving as i32;
    for service in ["", "molt.v1.Control", "molt.v1.Relay", "molt.v1.Leader", "molt.v1.Raft"] {
        assert_eq!(health_of("c1", service).await.unwrap(), serving, "c1 {service}");
    }
    for service in ["", "molt.v1.Control", "molt.v1.Relay", "molt.v1.Raft"] {
        assert_eq!(health_of("c2", service).await.unwrap(), serving, "c2 {service}");
    }
    assert_eq!(health_of("c2", "molt.v1.Leader").await.unwrap(), ServingStatus::NotServing as i32, "c2 does not lead");
    for service in ["", "molt.v1.Control", "molt.v1.Relay"] {
        assert_eq!(health_of("g1-se1", service).await.unwrap(), serving, "g1-se1 {service}");
    }
    for service in ["molt.v1.Leader", "molt.v1.Raft", "molt.v1.Nope"] {
        let e = health_of("g1-se1", service).await.unwrap_err();
        assert_eq!(e.code(), Code::NotFound, "an SE does not serve {service}");
    }
    // Reflection lists molt's services, as `grpcurl ... list` shows them.
    let ch = channel(&pki_file(&c, "ca.pem"), &pki, Some("admin"), &addr_of(&c, "c1")).await.unwrap();
    let mut refl = tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient::new(ch);
    let req = tonic_reflection::pb::v1::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(tonic_reflection::pb::v1::server_reflection_request::MessageRequest::ListServices(
            String::new(),
        )),
    };
    // Issue 27: an unknown symbol ended the whole stream with NOT_FOUND, and
    // what was asked after it on that stream was lost. It is an in-stream
    // error_response now, and the stream goes on.
    use tonic_reflection::pb::v1::{
        server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
    };
    let unknown = tonic_reflection::pb::v1::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::FileContainingSymbol("molt.v1.Nope".into())),
    };
    let known = tonic_reflection::pb::v1::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::FileContainingSymbol("molt.v1.Leader".into())),
    };
    let mut answers =
        refl.server_reflection_info(tokio_stream::iter(vec![unknown, req, known])).await.unwrap().into_inner();
    match answers.message().await.unwrap().unwrap().message_response {
        Some(MessageResponse::ErrorResponse(e)) => {
            assert_eq!(e.error_code, Code::NotFound as i32, "{e:?}");
            assert!(e.error_message.contains("molt.v1.Nope"), "{e:?}");
        }
        other => panic!("expected an in-stream error, got {other:?}"),
    }
    let answer = answers.message().await.unwrap().unwrap();
    let listed = format!("{:?}", answer.message_response);
    assert!(listed.contains("molt.v1.Leader") && listed.contains("molt.v1.Control"), "{listed}");
    match answers.message().await.unwrap().unwrap().message_response {
        Some(MessageResponse::FileDescriptorResponse(f)) => assert_eq!(f.file_descriptor_proto.len(), 1),
        other => panic!("expected the file of molt.v1.Leader, got {other:?}"),
    }
    // The same through v1alpha, for clients that speak only that version.
    let ch = channel(&pki_file(&c, "ca.pem"), &pki, Some("admin"), &addr_of(&c, "c1")).await.unwrap();
    let mut refl = tonic_reflection::pb::v1alpha::server_reflection_client::ServerReflectionClient::new(ch);
    let req = tonic_reflection::pb::v1alpha::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(tonic_reflection::pb::v1alpha::server_reflection_request::MessageRequest::ListServices(
            String::new(),
        )),
    };
    let mut answers = refl.server_reflection_info(tokio_stream::iter(vec![req])).await.unwrap().into_inner();
    let answer = answers.message().await.unwrap().unwrap();
    let listed = format!("{:?}", answer.message_response);
    assert!(listed.contains("molt.v1.Leader") && listed.contains("molt.v1.Control"), "{listed}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_serves_only_the_fetcher_its_leader_ticket_names() {
    use common::ticket::{RelayGrant, sign};
    let c = TestCluster::builder().group("g1", "active-active", 2).start().await;
    let pki = c.cluster_dir().join("pki");
    let creds = |id: &str| {
        common::credentials::Credentials::load(
            &pki.join("ca.pem"),
            &pki.join(format!("{id}.pem")),
            &pki.join(format!("{id}.key")),
            None,
        )
        .unwrap()
    };
    let sha = common::Sha256Digest::of(b"image");
    let fetch = async |as_node: &str, ticket: Vec<u8>| {
        let ch = channel(&pki_file(&c, "ca.pem"), &pki, Some(as_node), &addr_of(&c, "g1-se1")).await.unwrap();
        pb::relay_client::RelayClient::new(ch)
            .fetch_image(pb::FetchImageRequest { sha256: sha.to_hex(), offset: 0, ticket, stripe: 0, stripes: 1 })
            .await
            .unwrap_err()
    };
    let e = fetch("g1-se2", vec![]).await;
    assert_eq!(e.code(), Code::PermissionDenied, "no ticket: {e}");
    let grant = RelayGrant::new(&sha, "g1-se2", "g1-se1", common::stripe::Stripe::WHOLE);
    let e = fetch("g1-se2", sign(&creds("g1-se2"), &grant).unwrap()).await;
    assert_eq!(e.code(), Code::PermissionDenied, "{e}");
    assert!(e.message().contains("not a controller"), "an SE's ticket: {}", e.message());
    let ticket = sign(&creds("c1"), &grant).unwrap();
    let e = fetch("c1", ticket.clone()).await;
    assert_eq!(e.code(), Code::PermissionDenied, "{e}");
    assert!(e.message().contains("the ticket lets g1-se2"), "another node's ticket: {}", e.message());
    // The right fetcher with the leader's ticket gets through to the copy,
    // which g1-se1 does not have.
    let e = fetch("g1-se2", ticket).await;
    assert_eq!(e.code(), Code::NotFound, "{e}");
    assert!(e.message().contains("holds no copy"), "{}", e.message());
}

/// Issue 25, 7: one ticket opened 28 streams, each at the full rate cap,
/// and a one-stripe ticket fetched the whole image. A ticket now names its
/// stripe and carries one stream at a time, and the streams of one fetcher
/// share the transfer's cap however many tickets it holds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_ticket_is_one_stream_of_one_stripe_and_a_fetcher_shares_one_rate() {
    use common::{
        stripe::Stripe,
        ticket::{RelayGrant, sign},
    };
    use integration_tests::{eventually, make_package};
    let c = TestCluster::builder().group("g1", "active-active", 2).start().await;
    let tmp = tempfile::tempdir().unwrap();
    let pkg = make_package(tmp.path(), "2.0.0", common::DeploymentKind::Vm, 24 << 20);
    let (sha, _) = common::package::hash_file(&pkg).unwrap();
    c.api().upload(&pkg, "controller.pkg", |_| {}).await.unwrap();
    c.prestage("controller://upgrade_pkgs/controller.pkg").await.unwrap();
    let staged = c.data_dir("g1-se1").join("staging").join(format!("{sha}.pkg"));
    eventually(60, "g1-se1 staged", async || staged.is_file()).await;
    let end = c.wait_operation(60).await;
    assert_eq!(end.state, OpState::Completed, "{end:#?}");

    let pki = c.cluster_dir().join("pki");
    let leader =
        common::credentials::Credentials::load(&pki.join("ca.pem"), &pki.join("c1.pem"), &pki.join("c1.key"), None)
            .unwrap();
    let rate = 2u64 << 20;
    // As the leader signs them: each stripe's stream gets its share of the
    // transfer's cap.
    let ticket = |stripe: Stripe| {
        let share = rate / u64::from(stripe.count());
        sign(&leader, &RelayGrant::new(&sha, "g1-se2", "g1-se1", stripe).with_rate(Some(share))).unwrap()
    };
    let ch = channel(&pki_file(&c, "ca.pem"), &pki, Some("g1-se2"), &addr_of(&c, "g1-se1")).await.unwrap();
    let client = pb::relay_client::RelayClient::new(ch);
    let fetch = |ticket: Vec<u8>, stripe: Stripe| {
        let mut client = client.clone();
        async move {
            client
                .fetch_image(pb::FetchImageRequest {
                    sha256: sha.to_hex(),
                    offset: 0,
                    ticket,
                    stripe: stripe.index(),
                    stripes: stripe.count(),
                })
                .await
                .map(|r| r.into_inner())
        }
    };
    // A ticket for stripe 0 of 2 does not fetch stripe 1, nor the whole image.
    let half = Stripe::new(0, 2).unwrap();
    let t = ticket(half);
    for other in [Stripe::new(1, 2).unwrap(), Stripe::WHOLE] {
        let e = fetch(t.clone(), other).await.unwrap_err();
        assert_eq!(e.code(), Code::PermissionDenied, "{e}");
        assert!(e.message().contains("the ticket is for stripe 0 of 2"), "{}", e.message());
    }
    // One stream per ticket at a time; free again once it ends.
    let first = fetch(t.clone(), half).await.unwrap();
    let e = fetch(t.clone(), half).await.unwrap_err();
    assert_eq!(e.code(), Code::ResourceExhausted, "{e}");
    assert!(e.message().contains("already carries a stream"), "{}", e.message());
    drop(first);
    eventually(10, "the ticket is free again", async || fetch(t.clone(), half).await.is_ok()).await;

    // Four tickets of the whole image, read together for about 3 s: they
    // share the transfer's 2 MiB/s, not 2 MiB/s each.
    let mut streams = Vec::new();
    for _ in 0..4 {
        streams.push(fetch(ticket(Stripe::WHOLE), Stripe::WHOLE).await.unwrap());
    }
    let started = std::time::Instant::now();
    let total = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let readers: Vec<_> = streams
        .into_iter()
        .map(|mut s| {
            let total = total.clone();
            tokio::spawn(async move {
                while let Ok(Some(chunk)) = s.message().await {
                    total.fetch_add(chunk.data.len() as u64, std::sync::atomic::Ordering::Relaxed);
                }
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let got = total.load(std::sync::atomic::Ordering::Relaxed);
    let secs = started.elapsed().as_secs_f64();
    readers.iter().for_each(|r| r.abort());
    // At most the shared cap plus one chunk per stream of slack (10 MiB);
    // four caps would be about 24 MiB.
    let bound = (rate as f64 * secs) as u64 + 4 * (1 << 20) + (1 << 20);
    assert!(got <= bound, "{got} bytes in {secs:.1} s through four tickets; the shared cap allows {bound}");
    assert!(got > 0, "nothing came through");
}
