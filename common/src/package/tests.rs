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
pub(crate) fn handmade(entries: &[(&str, tar::EntryType, Option<&str>)]) -> Vec<u8> {
    let with_mode: Vec<_> = entries.iter().map(|(p, k, l)| (*p, *k, *l, 0o755)).collect();
    handmade_modes(&with_mode)
}

/// As [`handmade`], with each entry's mode.
pub(crate) fn handmade_modes(entries: &[(&str, tar::EntryType, Option<&str>, u32)]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (path, kind, link, mode) in entries {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(*kind);
        h.set_size(if *kind == tar::EntryType::Regular { 3 } else { 0 });
        h.set_mode(*mode);
        // Bypass the builder's own path checks to model a hostile archive.
        let name = &mut h.as_old_mut().name;
        name[..path.len()].copy_from_slice(path.as_bytes());
        if let Some(l) = link {
            h.set_link_name(l).unwrap();
        }
        h.set_cksum();
        let data: &[u8] = if *kind == tar::EntryType::Regular { b"abc" } else { b"" };
        b.append(&h, data).unwrap();
    }
    let tar = b.into_inner().unwrap();
    let m = Manifest {
        format: 1,
        version: "2.0.0".parse().unwrap(),
        min_compatible: "1.0.0".parse().unwrap(),
        kind: DeploymentKind::Vm,
        payload_sha256: Sha256Digest::of(&tar),
        payload_size: tar.len() as u64,
        built_at: 0,
    };
    let json = serde_json::to_vec(&m).unwrap();
    let mut out = MAGIC.to_vec();
    out.extend_from_slice(&(json.len() as u32).to_be_bytes());
    out.extend_from_slice(&json);
    out.extend_from_slice(&tar);
    out
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

const BINS: [(&str, tar::EntryType, Option<&str>); 2] =
    [("bin/controller-agent", tar::EntryType::Regular, None), ("bin/se-agent", tar::EntryType::Regular, None)];

/// A sandbox: `slot` is where unpacking goes, `outside/victim` is a file
/// next to it that no package may touch.
fn sandbox() -> (tempfile::TempDir, PathBuf) {
    let d = tempfile::tempdir().unwrap();
    std::fs::create_dir(d.path().join("outside")).unwrap();
    std::fs::write(d.path().join("outside/victim"), b"untouched").unwrap();
    let slot = d.path().join("slot");
    (d, slot)
}

/// Every path under `root` (not following symlinks), relative, sorted.
fn tree(root: &Path) -> Vec<PathBuf> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<PathBuf>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let e = e.unwrap();
            out.push(e.path().strip_prefix(root).unwrap().to_owned());
            if e.file_type().unwrap().is_dir() {
                walk(root, &e.path(), out);
            }
        }
    }
    let mut out = Vec::new();
    walk(root, root, &mut out);
    out.sort();
    out
}

fn verify_and_unpack(pkg: &[u8]) -> (Result<PackageInfo, PackageError>, Result<Manifest, PackageError>, PathBuf) {
    let (d, slot) = sandbox();
    let file = d.path().join("p.pkg");
    std::fs::write(&file, pkg).unwrap();
    let before = tree(d.path());
    let verified = verify(Cursor::new(pkg));
    let unpacked = unpack(&file, &slot);
    // Whatever the verdict, nothing outside the slot changed.
    let after: Vec<_> = tree(d.path()).into_iter().filter(|p| !p.starts_with("slot")).collect();
    assert_eq!(after, before, "unpacking changed something outside the slot");
    assert_eq!(std::fs::read(d.path().join("outside/victim")).unwrap(), b"untouched");
    assert_eq!(verified.is_ok(), unpacked.is_ok(), "verify and unpack disagree: {verified:?} / {unpacked:?}");
    if unpacked.is_err() {
        assert!(!slot.exists(), "a refused unpack leaves nothing");
    }
    std::mem::forget(d); // callers inspect the slot; the OS cleans /tmp
    (verified, unpacked, slot)
}

#[test]
fn a_symlink_chain_out_of_the_slot_is_refused_by_verify_and_unpack() {
    use tar::EntryType::*;
    // The review's reproduction: each entry's text is harmless on its own.
    let mut all = BINS.to_vec();
    all.extend([
        ("x", Symlink, Some(".")),
        ("x/l1", Symlink, Some("..")),
        ("l1/l2", Symlink, Some("..")),
        ("l1/l2/l3", Symlink, Some("..")),
        ("l1/l2/l3/outside/victim", Regular, None),
    ]);
    let (v, u, _) = verify_and_unpack(&handmade(&all));
    let err = v.unwrap_err();
    assert!(err.to_string().contains("lies under the symlink \"x\""), "{err}");
    assert!(matches!(u.unwrap_err(), PackageError::UnsafeEntry { .. }));
}

#[test]
fn a_symlink_whose_target_passes_through_another_symlink_is_refused() {
    use tar::EntryType::*;
    // `a -> l/..` stays inside lexically, but `l -> .` makes it the slot's parent.
    for order in [[("l", Some(".")), ("a", Some("l/.."))], [("a", Some("l/..")), ("l", Some("."))]] {
        let mut all = BINS.to_vec();
        all.extend(order.iter().map(|(p, t)| (*p, Symlink, *t)));
        let (v, _, _) = verify_and_unpack(&handmade(&all));
        assert!(v.unwrap_err().to_string().contains("passes through the symlink \"l\""));
    }
}

#[test]
fn duplicate_paths_and_the_reserved_manifest_are_refused() {
    use tar::EntryType::*;
    let mut dup = BINS.to_vec();
    dup.push(("bin/controller-agent", Symlink, Some("se-agent")));
    let (v, _, _) = verify_and_unpack(&handmade(&dup));
    assert!(v.unwrap_err().to_string().contains("appears more than once"));
    let mut file_then_dir = BINS.to_vec();
    file_then_dir.extend([("f", Regular, None), ("f/g", Regular, None)]);
    let (v, _, _) = verify_and_unpack(&handmade(&file_then_dir));
    assert!(v.unwrap_err().to_string().contains("lies under the file"));
    let mut reserved = BINS.to_vec();
    reserved.push(("manifest.json", Regular, None));
    let (v, _, _) = verify_and_unpack(&handmade(&reserved));
    assert!(v.unwrap_err().to_string().contains("reserved"));
    // A directory named again after its files is fine (tar does that).
    let mut dir_again = vec![("bin", Directory, None)];
    dir_again.extend(BINS);
    dir_again.push(("bin", Directory, None));
    let (v, u, _) = verify_and_unpack(&handmade(&dir_again));
    v.unwrap();
    u.unwrap();
}

#[test]
fn modes_lose_setuid_setgid_and_group_or_world_write() {
    use std::os::unix::fs::PermissionsExt;
    use tar::EntryType::*;
    let entries = [
        ("bin", Directory, None, 0o1777),
        ("bin/controller-agent", Regular, None, 0o4777),
        ("bin/se-agent", Regular, None, 0o2755),
        ("data", Regular, None, 0o666),
    ];
    let (v, u, slot) = verify_and_unpack(&handmade_modes(&entries));
    v.unwrap();
    u.unwrap();
    let mode = |p: &str| std::fs::metadata(slot.join(p)).unwrap().permissions().mode() & 0o7777;
    assert_eq!(mode("bin"), 0o755);
    assert_eq!(mode("bin/controller-agent"), 0o755);
    assert_eq!(mode("bin/se-agent"), 0o755);
    assert_eq!(mode("data"), 0o644);
}

#[test]
fn in_slot_symlinks_are_unpacked() {
    use tar::EntryType::*;
    let mut all = BINS.to_vec();
    all.extend([
        ("lib", Directory, None),
        ("lib/agent", Symlink, Some("../bin/se-agent")),
        ("cur", Symlink, Some(".")),
    ]);
    let (v, u, slot) = verify_and_unpack(&handmade(&all));
    assert_eq!(v.unwrap().entries, 5);
    u.unwrap();
    assert_eq!(std::fs::read_link(slot.join("lib/agent")).unwrap(), Path::new("../bin/se-agent"));
    assert_eq!(std::fs::read(slot.join("lib/agent")).unwrap(), b"abc");
}
