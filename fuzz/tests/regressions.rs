//! Cases the fuzz targets (or the security review) found, kept as explicit
//! tests: each once broke a property.

use common::package::{PackageError, RawEntry, raw_package};
use molt_fuzz::targets::package::{BINS, all_inside, verify_and_unpack};
use tar::EntryType::*;

fn with_bins(extra: &[RawEntry<'static>]) -> Vec<u8> {
    let mut all = BINS.to_vec();
    all.extend_from_slice(extra);
    raw_package(&all)
}

/// Found by `molt-fuzz --target package --seed 1 --case 7`: `unpack`
/// installed a package that `verify` refused for its trailing bytes.
#[test]
fn trailing_bytes_are_refused_by_unpack_as_by_verify() {
    let mut pkg = with_bins(&[]);
    pkg.extend_from_slice(b"appended");
    let out = verify_and_unpack(&pkg).unwrap();
    assert!(matches!(out.verified, Err(PackageError::TrailingData(8))), "{:?}", out.verified);
    assert!(matches!(out.unpacked, Err(PackageError::TrailingData(8))), "{:?}", out.unpacked);
}

/// The review's reproduction: each entry's text is harmless on its own.
#[test]
fn a_symlink_chain_out_of_the_slot_is_refused() {
    let pkg = with_bins(&[
        ("x", Symlink, Some("."), 0o777),
        ("x/l1", Symlink, Some(".."), 0o777),
        ("l1/l2", Symlink, Some(".."), 0o777),
        ("l1/l2/l3", Symlink, Some(".."), 0o777),
        ("l1/l2/l3/outside/victim", Regular, None, 0o644),
    ]);
    let out = verify_and_unpack(&pkg).unwrap();
    let err = out.verified.unwrap_err();
    assert!(err.to_string().contains("lies under the symlink \"x\""), "{err}");
    assert!(matches!(out.unpacked, Err(PackageError::UnsafeEntry { .. })));
}

#[test]
fn a_symlink_whose_target_passes_through_another_symlink_is_refused() {
    // `a -> l/..` stays inside lexically, but `l -> .` makes it the slot's parent.
    for order in [[("l", "."), ("a", "l/..")], [("a", "l/.."), ("l", ".")]] {
        let extra: Vec<RawEntry<'static>> = order.iter().map(|(p, t)| (*p, Symlink, Some(*t), 0o777)).collect();
        let out = verify_and_unpack(&with_bins(&extra)).unwrap();
        assert!(out.verified.unwrap_err().to_string().contains("passes through the symlink \"l\""));
    }
}

#[test]
fn duplicate_paths_and_the_reserved_manifest_are_refused() {
    // The last entry would have won after the required-file check passed.
    let out = verify_and_unpack(&with_bins(&[("bin/controller-agent", Symlink, Some("se-agent"), 0o777)])).unwrap();
    assert!(out.verified.unwrap_err().to_string().contains("appears more than once"));
    let out = verify_and_unpack(&with_bins(&[("f", Regular, None, 0o644), ("f/g", Regular, None, 0o644)])).unwrap();
    assert!(out.verified.unwrap_err().to_string().contains("lies under the file"));
    let out = verify_and_unpack(&with_bins(&[("manifest.json", Regular, None, 0o644)])).unwrap();
    assert!(out.verified.unwrap_err().to_string().contains("reserved"));
    // A directory named again after its files is fine (tar does that).
    let mut dir_again = vec![("bin", Directory, None, 0o755)];
    dir_again.extend(BINS);
    dir_again.push(("bin", Directory, None, 0o755));
    let out = verify_and_unpack(&raw_package(&dir_again)).unwrap();
    out.verified.unwrap();
    out.unpacked.unwrap();
}

#[test]
fn modes_lose_setuid_setgid_sticky_and_group_or_world_write() {
    use std::os::unix::fs::PermissionsExt;
    let pkg = raw_package(&[
        ("bin", Directory, None, 0o1777),
        ("bin/controller-agent", Regular, None, 0o4777),
        ("bin/se-agent", Regular, None, 0o2755),
        ("data", Regular, None, 0o666),
    ]);
    let out = verify_and_unpack(&pkg).unwrap();
    out.unpacked.unwrap();
    let mode = |p: &str| std::fs::metadata(out.slot.join(p)).unwrap().permissions().mode() & 0o7777;
    assert_eq!(mode("bin"), 0o755);
    assert_eq!(mode("bin/controller-agent"), 0o755);
    assert_eq!(mode("bin/se-agent"), 0o755);
    assert_eq!(mode("data"), 0o644);
}

#[test]
fn in_slot_symlinks_are_unpacked() {
    let pkg = with_bins(&[
        ("lib", Directory, None, 0o755),
        ("lib/agent", Symlink, Some("../bin/se-agent"), 0o777),
        ("cur", Symlink, Some("."), 0o777),
    ]);
    let out = verify_and_unpack(&pkg).unwrap();
    assert_eq!(out.verified.unwrap().entries, 5);
    out.unpacked.unwrap();
    assert_eq!(std::fs::read(out.slot.join("lib/agent")).unwrap(), b"abc");
    all_inside(&out.slot).unwrap();
}
