use std::io::Cursor;

use super::*;

fn payload_dir() -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(d.path().join("bin")).unwrap();
    std::fs::write(d.path().join("bin/controller-agent"), b"#!/bin/sh\necho c\n").unwrap();
    std::fs::write(d.path().join("bin/se-agent"), vec![7u8; 300_000]).unwrap();
    std::fs::write(d.path().join("README"), b"hello").unwrap();
    d
}

fn build_pkg() -> (tempfile::TempDir, PathBuf, PackageInfo) {
    let p = payload_dir();
    let out_dir = tempfile::tempdir().unwrap();
    let out = out_dir.path().join("controller.pkg");
    let info = build(p.path(), "2.0.0".parse().unwrap(), "1.0.0".parse().unwrap(), DeploymentKind::Vm, &out).unwrap();
    (out_dir, out, info)
}

#[test]
fn build_then_verify_matches_sha256sum_of_file() {
    let (_d, out, info) = build_pkg();
    let bytes = std::fs::read(&out).unwrap();
    assert_eq!(info.sha256, Sha256Digest::of(&bytes));
    assert_eq!(info.size, bytes.len() as u64);
    assert_eq!(info.manifest.version.to_string(), "2.0.0");
    assert_eq!(info.entries, 4); // bin/, two binaries, README
    let again = verify(Cursor::new(&bytes)).unwrap();
    assert_eq!(again, info);
    assert_eq!(read_manifest(Cursor::new(&bytes)).unwrap(), info.manifest);
}

#[test]
fn truncated_package_is_refused_as_truncated() {
    let (_d, out, _) = build_pkg();
    let bytes = std::fs::read(&out).unwrap();
    for cut in [bytes.len() - 1, bytes.len() / 2, 20] {
        let err = verify(Cursor::new(&bytes[..cut])).unwrap_err();
        assert!(matches!(err, PackageError::Truncated { .. }), "cut {cut}: {err}");
        assert!(err.to_string().contains("truncated"));
    }
}

#[test]
fn corrupt_trailing_and_foreign_files_are_refused() {
    let (_d, out, _) = build_pkg();
    let mut bytes = std::fs::read(&out).unwrap();
    let mut trailing = bytes.clone();
    trailing.extend_from_slice(b"junk");
    assert!(matches!(verify(Cursor::new(&trailing)).unwrap_err(), PackageError::TrailingData(4)));
    let n = bytes.len();
    bytes[n - 3000] ^= 0xff; // inside the se-agent contents
    assert!(matches!(verify(Cursor::new(&bytes)).unwrap_err(), PackageError::PayloadDigest { .. }));
    assert!(matches!(verify(Cursor::new(b"#!/bin/bash\necho hi\n")).unwrap_err(), PackageError::NotAPackage));
    assert!(matches!(verify(Cursor::new(b"MOL")).unwrap_err(), PackageError::NotAPackage));
}

/// Hand-writes a package whose tar holds `entries` (path, type, link).
fn handmade(entries: &[(&str, tar::EntryType, Option<&str>)]) -> Vec<u8> {
    let with_mode: Vec<_> = entries.iter().map(|(p, k, l)| (*p, *k, *l, 0o755)).collect();
    raw_package(&with_mode)
}

#[test]
fn entries_escaping_the_payload_are_refused() {
    use tar::EntryType::*;
    let ok = [("bin/controller-agent", Regular, None), ("bin/se-agent", Regular, None)];
    assert!(verify(Cursor::new(handmade(&ok))).is_ok());
    let cases: Vec<Vec<(&str, tar::EntryType, Option<&str>)>> = vec![
        vec![("../evil", Regular, None)],
        vec![("/etc/passwd", Regular, None)],
        vec![("bin/../../x", Regular, None)],
        vec![("link", Symlink, Some("/etc/shadow"))],
        vec![("bin/link", Symlink, Some("../../outside"))],
        vec![("dev", Char, None)],
        vec![("hard", Link, Some("bin/se-agent"))],
    ];
    for c in cases {
        let mut all = ok.to_vec();
        all.extend(c.iter().cloned());
        let err = verify(Cursor::new(handmade(&all))).unwrap_err();
        assert!(matches!(err, PackageError::UnsafeEntry { .. }), "{c:?}: {err}");
    }
    let missing = verify(Cursor::new(handmade(&ok[..1]))).unwrap_err();
    assert!(matches!(missing, PackageError::MissingEntry("bin/se-agent")), "{missing}");
}

#[test]
fn oversized_manifest_is_refused_before_reading_it() {
    let mut b = MAGIC.to_vec();
    b.extend_from_slice(&u32::MAX.to_be_bytes());
    assert!(matches!(verify(Cursor::new(b)).unwrap_err(), PackageError::ManifestTooLarge(_)));
}

#[test]
fn build_refuses_payload_without_binaries() {
    let d = tempfile::tempdir().unwrap();
    let err = build(
        d.path(),
        "1.0.0".parse().unwrap(),
        "1.0.0".parse().unwrap(),
        DeploymentKind::Vm,
        &d.path().join("x.pkg"),
    )
    .unwrap_err();
    assert!(err.to_string().contains("bin/controller-agent"), "{err}");
    assert!(!d.path().join("x.pkg").exists());
}

#[test]
fn verifying_all_but_the_digest_checks_the_same_and_takes_the_callers_digest() {
    let (_d, pkg, built) = build_pkg();
    let bytes = std::fs::read(&pkg).unwrap();
    let whole = verify(&bytes[..]).unwrap();
    let checked = verify_except_digest(&bytes[..]).unwrap().with_digest(Sha256Digest::of(&bytes));
    assert_eq!((checked.sha256, checked.size, checked.entries), (whole.sha256, whole.size, whole.entries));
    assert_eq!(checked.manifest, built.manifest);
    let mut cut = bytes.clone();
    cut.truncate(bytes.len() - 100);
    assert!(matches!(verify_except_digest(&cut[..]), Err(PackageError::Truncated { .. })));
    let mut flipped = bytes.clone();
    let last = flipped.len() - 1;
    flipped[last] ^= 1;
    assert!(verify_except_digest(&flipped[..]).is_err(), "the payload digest is still checked");
}
