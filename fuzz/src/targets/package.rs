//! Packages against the payload model: whatever the archive holds, `verify`
//! and `unpack` give the same verdict; an accepted payload puts nothing
//! outside the slot and nothing in the slot resolves outside it; a refused
//! one leaves no slot and changes nothing.

use std::path::{Path, PathBuf};

use common::package::{Manifest, PackageError, PackageInfo, RawEntry, raw_package, unpack, verify};

use crate::Rng;

/// The two files every payload needs.
pub const BINS: [RawEntry<'static>; 2] = [
    ("bin/controller-agent", tar::EntryType::Regular, None, 0o755),
    ("bin/se-agent", tar::EntryType::Regular, None, 0o755),
];

/// What one package did in a sandbox.
#[derive(Debug)]
pub struct Outcome {
    /// `verify`'s verdict.
    pub verified: Result<PackageInfo, PackageError>,
    /// `unpack`'s verdict.
    pub unpacked: Result<Manifest, PackageError>,
    /// Where it was unpacked.
    pub slot: PathBuf,
    /// The sandbox (removed on drop).
    pub dir: tempfile::TempDir,
}

/// Every path under `root` (not following symlinks), relative, sorted.
pub fn tree(root: &Path) -> Vec<PathBuf> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<PathBuf>) {
        let Ok(entries) = std::fs::read_dir(dir) else { return };
        for e in entries.flatten() {
            out.push(e.path().strip_prefix(root).expect("under root").to_owned());
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                walk(root, &e.path(), out);
            }
        }
    }
    let mut out = Vec::new();
    walk(root, root, &mut out);
    out.sort();
    out
}

/// Verifies and unpacks `pkg` in a fresh sandbox — `slot` to unpack into,
/// `outside/victim` next to it — and checks the properties that hold for
/// every package: the verdicts agree, nothing outside the slot changed, a
/// refusal leaves no slot.
pub fn verify_and_unpack(pkg: &[u8]) -> Result<Outcome, String> {
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    std::fs::create_dir(dir.path().join("outside")).map_err(|e| e.to_string())?;
    std::fs::write(dir.path().join("outside/victim"), b"untouched").map_err(|e| e.to_string())?;
    let file = dir.path().join("p.pkg");
    std::fs::write(&file, pkg).map_err(|e| e.to_string())?;
    let slot = dir.path().join("slot");
    let before = tree(dir.path());
    let verified = verify(std::io::Cursor::new(pkg));
    // As a node's agent would under `ulimit -s 2048` (the molt-fuzz binary
    // also lowers its descriptors to 256): whatever `verify` took must
    // unpack whole, whatever it refused must leave nothing.
    let unpacked = {
        let (file, slot) = (file.clone(), slot.clone());
        std::thread::Builder::new()
            .stack_size(2 << 20)
            .spawn(move || unpack(&file, &slot))
            .map_err(|e| e.to_string())?
            .join()
            .map_err(|_| "unpack panicked".to_owned())?
    };
    let after: Vec<_> = tree(dir.path()).into_iter().filter(|p| !p.starts_with("slot")).collect();
    if after != before {
        return Err(format!("unpacking changed something outside the slot: {before:?} -> {after:?}"));
    }
    if std::fs::read(dir.path().join("outside/victim")).ok().as_deref() != Some(b"untouched".as_slice()) {
        return Err("a file outside the slot was overwritten".into());
    }
    if verified.is_ok() != unpacked.is_ok() {
        return Err(format!("verify and unpack disagree: {verified:?} / {unpacked:?}"));
    }
    if unpacked.is_err() && slot.exists() {
        return Err("a refused unpack left a slot behind".into());
    }
    Ok(Outcome { verified, unpacked, slot, dir })
}

/// Every path under `slot`, followed through symlinks, stays inside it.
pub fn all_inside(slot: &Path) -> Result<(), String> {
    let root = slot.canonicalize().map_err(|e| e.to_string())?;
    for rel in tree(slot) {
        if let Ok(real) = slot.join(&rel).canonicalize()
            && !real.starts_with(&root)
        {
            return Err(format!("{} resolves to {} outside the slot", rel.display(), real.display()));
        }
    }
    Ok(())
}

/// A random payload built from components that collide, climb, and chain
/// through each other.
pub fn random_entries(rng: &mut Rng) -> Vec<(String, tar::EntryType, Option<String>, u32)> {
    use tar::EntryType::*;
    const PARTS: [&str; 8] = ["bin", "x", "l1", "l2", "..", ".", "a", "manifest.json"];
    let path = |rng: &mut Rng| {
        let depth = 1 + rng.below(3);
        (0..depth).map(|_| rng.pick(&PARTS)).collect::<Vec<_>>().join("/")
    };
    let mut out: Vec<_> = Vec::new();
    if !rng.one_in(10) {
        out.extend(BINS.iter().map(|(p, k, _, m)| (p.to_string(), *k, None, *m)));
    }
    // Sometimes an entry at the size limits, a little within or beyond:
    // deep, with a long name, or a long path (verify is a dry run of
    // unpack, resources included).
    if rng.one_in(4) {
        let name = |rng: &mut Rng| "n".repeat(250 + rng.below(10) as usize);
        let entry = match rng.below(4) {
            0 => format!("{}f", "d/".repeat(60 + rng.below(8) as usize)),
            1 => format!("bin/{}", name(rng)),
            2 => (0..15 + rng.below(3)).map(|_| name(rng)).collect::<Vec<_>>().join("/"),
            _ => format!("{}/f", (0..3 + rng.below(3)).map(|i| format!("w{i}")).collect::<Vec<_>>().join("/")),
        };
        let kind = if rng.one_in(3) { Directory } else { Regular };
        let at = rng.below(out.len() as u64 + 1) as usize;
        out.insert(at, (entry, kind, None, 0o755));
    }
    for _ in 0..rng.below(7) {
        let kind = match rng.below(20) {
            0..=8 => Regular,
            9..=11 => Directory,
            12..=17 => Symlink,
            18 => Link,
            _ => Char,
        };
        let target = match kind {
            Symlink | Link => Some(if rng.one_in(8) { format!("/{}", path(rng)) } else { path(rng) }),
            _ => None,
        };
        let mode = [0o755, 0o644, 0o4777, 0o2755, 0o1777, 0o666][rng.below(6) as usize];
        let at = rng.below(out.len() as u64 + 1) as usize;
        out.insert(at, (path(rng), kind, target, mode));
    }
    out
}

/// One case: most often a random payload; sometimes a valid package with
/// bytes flipped, cut or appended.
pub fn case(rng: &mut Rng) -> Result<bool, String> {
    let pkg = if rng.one_in(4) {
        let mut p = raw_package(&BINS);
        match rng.below(3) {
            0 => {
                for _ in 0..1 + rng.below(4) {
                    let i = rng.below(p.len() as u64) as usize;
                    p[i] ^= 1 << rng.below(8);
                }
            }
            1 => p.truncate(rng.below(p.len() as u64) as usize),
            _ => p.extend(rng.bytes_below(600)),
        }
        p
    } else {
        let entries = random_entries(rng);
        let raw: Vec<RawEntry<'_>> = entries.iter().map(|(p, k, t, m)| (p.as_str(), *k, t.as_deref(), *m)).collect();
        raw_package(&raw)
    };
    let out = verify_and_unpack(&pkg)?;
    if out.verified.is_ok() {
        all_inside(&out.slot)?;
        for rel in tree(&out.slot) {
            let meta = std::fs::symlink_metadata(out.slot.join(&rel)).map_err(|e| e.to_string())?;
            let mode = std::os::unix::fs::PermissionsExt::mode(&meta.permissions());
            if !meta.file_type().is_symlink() && mode & 0o7022 != 0 {
                return Err(format!("{} kept mode {mode:o}", rel.display()));
            }
        }
    }
    Ok(out.verified.is_ok())
}
