//! Issue 27: the REST API described (OpenAPI 3.1, generated from the API's
//! types and the server's routes) and checked by an outside tool that reads
//! only that description: schemathesis.

use std::path::PathBuf;

use integration_tests::{TestCluster, browser::target_dir};

use crate::security::{addr_of, raw_https};

/// schemathesis's `st`, as `.ci/run` installs it (`MOLT_SCHEMATHESIS` names another).
fn schemathesis() -> PathBuf {
    let st = std::env::var_os("MOLT_SCHEMATHESIS")
        .map(PathBuf::from)
        .unwrap_or_else(|| target_dir().join("tools/venv/bin/st"));
    assert!(
        st.exists(),
        "the API test needs schemathesis at {}: run .ci/run, or `python3 -m venv target/tools/venv && \
         target/tools/venv/bin/pip install schemathesis==4.32.5`, or set MOLT_SCHEMATHESIS",
        st.display()
    );
    st
}

/// The document is served without a token (it describes the API, it holds
/// nothing of the cluster), and it is the one kept in the repository.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_served_openapi_document_is_the_repository_s() {
    let c = TestCluster::builder().start().await;
    let raw = raw_https(
        &c,
        &addr_of(&c, "c1"),
        b"GET /api/openapi.json HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        false,
    )
    .await;
    let (head, body) = raw.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(head.to_lowercase().contains("content-type: application/json"), "{head}");
    let body = if head.to_lowercase().contains("transfer-encoding: chunked") { unchunk(body) } else { body.into() };
    let kept = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../api/openapi.json")).unwrap();
    assert_eq!(body.trim_end(), kept.trim_end(), "the served document is api/openapi.json");
    let doc: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(doc["openapi"], "3.1.0");
    assert!(doc["paths"]["/api/cluster/upgrade/status"]["get"].is_object());
}

/// The body of a chunked HTTP/1.1 answer.
fn unchunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 {
            break;
        }
        out.push_str(&rest[..n]);
        body = &rest[n + 2..];
    }
    out
}

/// schemathesis (its coverage, fuzzing and stateful phases) against a
/// cluster of one controller and two SEs, with the admin token, reading
/// nothing but the served document: no answer is a server error (5xx),
/// breaks the document's schema, has an undocumented status, or an
/// undocumented content type.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schemathesis_finds_no_server_error_no_broken_schema_and_no_undocumented_status() {
    let st = schemathesis();
    let c = TestCluster::builder().group("g1", "active-active", 2).start().await;
    let pki = c.cluster_dir().join("pki");
    let token = std::fs::read_to_string(pki.join("admin.token")).unwrap();
    let report = tempfile::tempdir().unwrap();
    let out = tokio::process::Command::new(&st)
        .current_dir(report.path())
        .args([
            "run",
            &format!("https://{}/api/openapi.json", addr_of(&c, "c1")),
            "--checks",
            "not_a_server_error,status_code_conformance,response_schema_conformance,content_type_conformance",
            "--header",
            &format!("Authorization: Bearer {}", token.trim()),
            "--tls-verify",
            pki.join("ca.pem").to_str().unwrap(),
            "--max-examples",
            "50",
            "--seed",
            "27",
            "--workers",
            "2",
            "--request-timeout",
            "30",
        ])
        .env("SCHEMATHESIS_HOOKS", "")
        .output()
        .await
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "schemathesis failed:\n{said}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(said.contains("passed"), "{said}");
    // What it did to the cluster is what an operator could do: the cluster
    // still answers, and its leader still leads.
    assert_eq!(c.cluster().await.leader.as_deref(), Some("c1"));
}
