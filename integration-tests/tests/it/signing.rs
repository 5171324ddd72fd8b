//! Signed packages at process level: keys made by `molt package keygen`,
//! packages signed by `molt package build --sign-key`, nodes that trust
//! keys (`molt local up --trusted-key`). An unsigned, wrongly signed or
//! tampered package is refused at upload, naming the key; a node refuses to
//! stage a package its own keys do not trust; a trusted one upgrades.

use std::path::{Path, PathBuf};

use integration_tests::process::{bin, molt};

use crate::support::*;

fn ok(out: &std::process::Output) -> String {
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{text}");
    text
}

/// `molt package keygen --out DIR`; returns the key id it printed.
fn keygen(dir: &Path) -> String {
    let out = ok(&molt(&["package", "keygen", "--out", dir.to_str().unwrap()]));
    out.split_whitespace().nth(1).unwrap().trim_end_matches(':').to_owned()
}

/// `molt package build` of 2.0.0 from this build's agents, signed by `key` if given.
fn build(dir: &Path, name: &str, key: Option<&Path>) -> PathBuf {
    let payload = dir.join("payload");
    std::fs::create_dir_all(payload.join("bin")).unwrap();
    for agent in ["controller-agent", "se-agent"] {
        let dst = payload.join("bin").join(agent);
        if !dst.exists() {
            std::fs::copy(bin(agent), &dst).unwrap();
        }
    }
    let out = dir.join(name);
    let (p, o) = (payload.to_str().unwrap(), out.to_str().unwrap());
    let mut args = vec!["package", "build", "--version", "2.0.0", "--min-compatible", "1.0.0", "--kind", "vm"];
    args.extend(["--payload", p, "--out", o]);
    if let Some(k) = key {
        args.extend(["--sign-key", k.to_str().unwrap()]);
    }
    ok(&molt(&args));
    out
}

/// The refusal of `molt upgrade system image_path PKG`: its stderr.
fn refused(c: &integration_tests::LocalCluster, pkg: &Path) -> String {
    let out = c.molt(&["upgrade", "system", "image_path", pkg.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "{err}");
    err
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_packages_signed_by_a_trusted_key_are_installed() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = (tmp.path().join("keys-a"), tmp.path().join("keys-b"));
    let (id_a, id_b) = (keygen(&a), keygen(&b));
    assert_ne!(id_a, id_b);
    // Keygen never overwrites a key.
    assert!(!molt(&["package", "keygen", "--out", a.to_str().unwrap()]).status.success());
    let trusted = a.join("signing.pub");
    let (c, api) =
        start(&["--controllers", "1", "--groups", "g1:active-active:2", "--trusted-key", trusted.to_str().unwrap()]);

    // Unsigned: refused at the upload, naming the key the cluster trusts.
    let err = refused(&c, &build(tmp.path(), "unsigned.pkg", None));
    assert!(err.contains("unsigned") && err.contains(&id_a), "{err}");
    // Signed by another key: refused, naming both.
    let by_b = build(tmp.path(), "by-b.pkg", Some(&b.join("signing.key")));
    let err = refused(&c, &by_b);
    assert!(err.contains(&format!("signed by key {id_b}")) && err.contains(&id_a), "{err}");
    // Tampered after signing (the build time in the manifest changed): refused.
    let by_a = build(tmp.path(), "by-a.pkg", Some(&a.join("signing.key")));
    let inspect = ok(&molt(&["package", "inspect", by_a.to_str().unwrap()]));
    assert!(inspect.contains(&format!("signed by key {id_a}")), "{inspect}");
    let mut bytes = std::fs::read(&by_a).unwrap();
    let at = bytes.windows(11).position(|w| w == b"\"built_at\":").unwrap() + 11;
    bytes[at] = if bytes[at] == b'1' { b'2' } else { b'1' };
    let tampered = tmp.path().join("tampered.pkg");
    std::fs::write(&tampered, bytes).unwrap();
    let err = refused(&c, &tampered);
    assert!(err.contains(&format!("signature by key {id_a} does not match")), "{err}");
    // Nothing was kept or started.
    assert_eq!(status(&api).await.state, OpState::Idle);

    // One SE trusts only key B: it refuses to stage A's package, so the
    // distribution fails and nothing is installed anywhere.
    c.power("off", "g1-se2");
    let toml_path = c.path().join("nodes/g1-se2/node.toml");
    let toml = std::fs::read_to_string(&toml_path).unwrap();
    let b_pub = std::fs::canonicalize(b.join("signing.pub")).unwrap();
    let canonical_a = std::fs::canonicalize(&trusted).unwrap();
    std::fs::write(&toml_path, toml.replace(canonical_a.to_str().unwrap(), b_pub.to_str().unwrap())).unwrap();
    c.power("on", "g1-se2");
    all_up_on(&api, "1.0.0", &[], 30).await;
    let out = c.molt(&["upgrade", "system", "image_path", by_a.to_str().unwrap()]);
    assert!(!out.status.success());
    let s = status(&api).await;
    assert_eq!(s.state, OpState::Aborted, "{s:#?}");
    let reason = s.reason.as_str();
    assert!(reason.contains("g1-se2") && reason.contains(&format!("signed by key {id_a}")), "{reason}");
    all_up_on(&api, "1.0.0", &[], 30).await;

    // Trusted everywhere again: A's package upgrades the cluster.
    c.power("off", "g1-se2");
    std::fs::write(&toml_path, toml).unwrap();
    c.power("on", "g1-se2");
    all_up_on(&api, "1.0.0", &[], 30).await;
    ok(&c.molt(&["upgrade", "system", "image_path", by_a.to_str().unwrap()]));
    let s = status(&api).await;
    assert_eq!(s.state, OpState::Completed, "{s:#?}");
    assert_eq!(s.package_signature, format!("verified: signed by trusted key {id_a}"));
    all_up_on(&api, "2.0.0", &[], 30).await;
}
