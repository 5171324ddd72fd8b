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
    let checked = verify_except_digest(&bytes[..], &[]).unwrap().with_digest(Sha256Digest::of(&bytes));
    assert_eq!((checked.sha256, checked.size, checked.entries), (whole.sha256, whole.size, whole.entries));
    assert_eq!(checked.manifest, built.manifest);
    let mut cut = bytes.clone();
    cut.truncate(bytes.len() - 100);
    assert!(matches!(verify_except_digest(&cut[..], &[]), Err(PackageError::Truncated { .. })));
    let mut flipped = bytes.clone();
    let last = flipped.len() - 1;
    flipped[last] ^= 1;
    assert!(verify_except_digest(&flipped[..], &[]).is_err(), "the payload digest is still checked");
}

/// A tar of the two binaries and `extra`, each (path, type, link) written
/// through the tar builder: paths over 100 bytes get a GNU long-name record.
fn tar_with(extra: &[(String, tar::EntryType, Option<String>)]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    let mut all: Vec<(String, tar::EntryType, Option<String>)> = vec![
        ("bin/controller-agent".into(), tar::EntryType::Regular, None),
        ("bin/se-agent".into(), tar::EntryType::Regular, None),
    ];
    all.extend_from_slice(extra);
    for (path, kind, link) in all {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_mode(0o755);
        let data: &[u8] = if kind == tar::EntryType::Regular { b"abc" } else { b"" };
        h.set_size(data.len() as u64);
        match link {
            Some(l) => b.append_link(&mut h, &path, &l).unwrap(),
            None => b.append_data(&mut h, &path, data).unwrap(),
        }
    }
    b.into_inner().unwrap()
}

fn verdicts(pkg: &[u8]) -> (Result<PackageInfo, PackageError>, Result<Manifest, PackageError>, bool) {
    let d = tempfile::tempdir().unwrap();
    let file = d.path().join("p.pkg");
    std::fs::write(&file, pkg).unwrap();
    let slot = d.path().join("slot");
    let unpacked = unpack(&file, &slot);
    (verify(Cursor::new(pkg)), unpacked, slot.exists())
}

/// Issue 25, 1: a package one file 21,000 levels deep, or with a 300-byte
/// name, was "verified" and then crashed every node that unpacked it.
/// Verify and unpack now refuse both, in the same words, and leave nothing.
#[test]
fn names_paths_and_depths_beyond_the_limits_are_refused_by_verify_and_unpack_alike() {
    let deep = |levels: usize| format!("{}f", "d/".repeat(levels - 1));
    let ok = package_of_tar(&tar_with(&[
        (deep(MAX_DEPTH), tar::EntryType::Regular, None),
        ("n".repeat(MAX_NAME_BYTES), tar::EntryType::Regular, None),
    ]));
    let (v, u, slot) = verdicts(&ok);
    assert!(v.is_ok() && u.is_ok() && slot, "{v:?} {u:?}");
    let cases = [
        (deep(MAX_DEPTH + 1), None, "levels deep, more than the 64 allowed"),
        (deep(21_000), None, "a GNU long name of 42000 bytes, more than the 4097 allowed"),
        (deep(2_000), None, "has a path 2000 levels deep"),
        (vec!["x".repeat(250); 17].join("/"), None, "a GNU long name of 4267 bytes, more than the 4097 allowed"),
        ("n".repeat(MAX_NAME_BYTES + 1), None, "a name of 256 bytes, more than the 255 allowed"),
        (format!("{}/x", "m".repeat(300)), None, "a name of 300 bytes"),
        ("link".into(), Some("t".repeat(256)), "symlink target with a name of 256 bytes"),
    ];
    for (path, link, why) in cases {
        let kind = if link.is_some() { tar::EntryType::Symlink } else { tar::EntryType::Regular };
        let pkg = package_of_tar(&tar_with(&[(path.clone(), kind, link)]));
        let (v, u, slot) = verdicts(&pkg);
        let (v, u) = (v.unwrap_err().to_string(), u.unwrap_err().to_string());
        assert!(v.contains(why), "{}: {v}", &path[..path.len().min(40)]);
        assert_eq!(v, u, "verify and unpack say the same");
        assert!(v.len() < 600, "the error quotes at most a part of the path: {v}");
        assert!(!slot, "a refused package leaves no slot");
    }
}

/// Issue 25, 2: a GNU long name or PAX record was read whole before any
/// check (a 1 GiB one took 4.7 GB). Their declared size is checked first.
#[test]
fn long_name_and_pax_records_are_bounded_before_they_are_read() {
    let mut tar = tar_with(&[]);
    tar.truncate(tar.len() - 1024); // the end-of-archive blocks
    let mut h = tar::Header::new_gnu();
    h.as_gnu_mut().unwrap().name[..13].copy_from_slice(b"././@LongLink");
    h.set_entry_type(tar::EntryType::GNULongName);
    h.set_size(1 << 30); // declared, never sent
    h.set_cksum();
    tar.extend_from_slice(h.as_bytes());
    tar.extend_from_slice(&[0u8; 4096]);
    let e = verify(Cursor::new(package_of_tar(&tar))).unwrap_err().to_string();
    assert!(e.contains("a GNU long name of 1073741824 bytes, more than the 4097 allowed"), "{e}");

    // PAX: a path record is taken (and checked), a size record is refused.
    let pax = |records: &[(&str, &str)]| {
        let mut b = tar::Builder::new(Vec::new());
        b.append_pax_extensions(records.iter().map(|(k, v)| (*k, v.as_bytes()))).unwrap();
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(tar::EntryType::Regular);
        h.set_mode(0o755);
        h.set_size(3);
        b.append_data(&mut h, "placeholder", &b"abc"[..]).unwrap();
        let mut tar = tar_with(&[]);
        tar.truncate(tar.len() - 1024);
        tar.extend_from_slice(&b.into_inner().unwrap());
        package_of_tar(&tar)
    };
    let info = verify(Cursor::new(pax(&[("path", "docs/readme"), ("mtime", "1")]))).unwrap();
    assert_eq!(info.entries, 3);
    let e = verify(Cursor::new(pax(&[("path", &format!("{}f", "d/".repeat(70)))]))).unwrap_err().to_string();
    assert!(e.contains("levels deep"), "{e}");
    let long = vec!["x".repeat(250); 17].join("/");
    let e = verify(Cursor::new(pax(&[("path", &long)]))).unwrap_err().to_string();
    assert!(e.contains("has a path of 4266 bytes, more than the 4096 allowed"), "{e}");
    let e = verify(Cursor::new(pax(&[("size", "3")]))).unwrap_err().to_string();
    assert!(e.contains("a PAX record with the key \"size\""), "{e}");
}

/// Issue 25, 2: every ancestor of every path was kept as a path of its own,
/// so memory grew with the square of the depth. Directories a path implies
/// now count against the entry limit, and each node keeps its own name.
#[test]
fn directories_a_path_implies_count_against_the_entry_limit() {
    // 1,700 files each 60 levels deep in a tree of their own: 102,000 nodes.
    let mut b = tar::Builder::new(Vec::new());
    for (path, kind) in [("bin/controller-agent", tar::EntryType::Regular), ("bin/se-agent", tar::EntryType::Regular)] {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_mode(0o755);
        h.set_size(3);
        b.append_data(&mut h, path, &b"abc"[..]).unwrap();
    }
    for i in 0..1_700 {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Regular);
        h.set_mode(0o644);
        h.set_size(0);
        b.append_data(&mut h, format!("t{i}/{}f", "d/".repeat(58)), &b""[..]).unwrap();
    }
    let e = verify(Cursor::new(package_of_tar(&b.into_inner().unwrap()))).unwrap_err();
    assert!(matches!(e, PackageError::TooManyEntries), "{e}");
    assert!(e.to_string().contains("directories its paths only imply count too"), "{e}");
}

/// Issue 25, 2/3: the payload was read (and could cost gigabytes) before
/// the signature was checked. With keys, an unsigned package is refused
/// after its header: a payload that is not even there is never read.
#[test]
fn the_signature_is_checked_before_the_payload_is_read() {
    let d = tempfile::tempdir().unwrap();
    let key = signing::keygen(d.path()).unwrap();
    let (_d, out, _) = build_pkg();
    let bytes = std::fs::read(&out).unwrap();
    let header = 12 + u32::from_be_bytes(bytes[8..12].try_into().unwrap()) as usize;
    let e = verify_trusting(Cursor::new(&bytes[..header]), std::slice::from_ref(&key)).unwrap_err();
    assert!(matches!(e, PackageError::Untrusted(_)), "refused for its signature, not as truncated: {e}");
    assert!(matches!(verify_trusting(Cursor::new(&bytes[..header]), &[]).unwrap_err(), PackageError::Truncated { .. }));
}
