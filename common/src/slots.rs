//! A node's two installation slots and its boot record.
//!
//! ```text
//! <data_dir>/slots/a/  slots/b/   manifest.json + payload (bin/...)
//! <data_dir>/boot.json            active slot, previous slot, pending?, attempts
//! ```
//!
//! The boot record is only ever replaced atomically ([`crate::fsutil::atomic_write`]).

use std::{
    fmt,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

use crate::{
    DeploymentKind, Version, fsutil,
    package::{Manifest, signing::PublicKey},
};

/// One of the two slots.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Slot {
    /// `slots/a`.
    A,
    /// `slots/b`.
    B,
}

impl Slot {
    /// The other slot.
    pub fn other(self) -> Slot {
        match self {
            Slot::A => Slot::B,
            Slot::B => Slot::A,
        }
    }
}

impl fmt::Display for Slot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Slot::A => "a",
            Slot::B => "b",
        })
    }
}

/// What the boot loader reads to choose a slot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BootRecord {
    /// Format of this record (1).
    pub format: u32,
    /// The slot to boot.
    pub active: Slot,
    /// The slot booted before the last switch, for rollback.
    pub previous: Option<Slot>,
    /// The active slot is on trial until committed.
    pub pending: bool,
    /// Boots attempted of the pending slot.
    pub attempts: u32,
}

/// Boots of a pending slot tried before falling back.
pub const MAX_BOOT_ATTEMPTS: u32 = 3;

/// The boot record to write before booting, given the one found. Pure.
pub fn next_record(r: &BootRecord, max_attempts: u32) -> BootRecord {
    let mut next = r.clone();
    if r.pending {
        match r.previous {
            Some(prev) if r.attempts >= max_attempts => {
                next.active = prev;
                next.previous = Some(r.active);
                next.pending = false;
                next.attempts = 0;
            }
            _ => next.attempts += 1,
        }
    }
    next
}

/// What the installed layout says about the running version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SlotManifest {
    /// Version installed in the slot.
    pub version: Version,
    /// Deployment kind of the slot's package.
    pub kind: DeploymentKind,
}

impl From<&Manifest> for SlotManifest {
    fn from(m: &Manifest) -> Self {
        Self { version: m.version, kind: m.kind }
    }
}

/// Why the slots could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum SlotError {
    /// No boot record: nothing was installed.
    #[error("no version is installed in {0}: install one with `molt local up` or as INSTALL.md describes")]
    NotInstalled(PathBuf),
    /// I/O failure.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// A record that does not parse.
    #[error("{path} is corrupt: {message}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What the parser said.
        message: String,
    },
}

/// The slot layout under a data directory.
#[derive(Debug, Clone)]
pub struct Slots {
    data_dir: PathBuf,
}

impl Slots {
    /// The layout under `data_dir`.
    pub fn new(data_dir: &Path) -> Self {
        Self { data_dir: data_dir.to_owned() }
    }

    /// The boot record's path.
    pub fn boot_record_path(&self) -> PathBuf {
        self.data_dir.join("boot.json")
    }

    /// A slot's directory.
    pub fn slot_dir(&self, s: Slot) -> PathBuf {
        self.data_dir.join("slots").join(s.to_string())
    }

    /// Reads the boot record.
    pub fn boot_record(&self) -> Result<BootRecord, SlotError> {
        let path = self.boot_record_path();
        let text = match std::fs::read(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(SlotError::NotInstalled(self.data_dir.clone()));
            }
            Err(source) => return Err(SlotError::Io { path, source }),
        };
        serde_json::from_slice(&text).map_err(|e| SlotError::Corrupt { path, message: e.to_string() })
    }

    /// Replaces the boot record atomically.
    pub fn write_boot_record(&self, r: &BootRecord) -> Result<(), SlotError> {
        let path = self.boot_record_path();
        let json = serde_json::to_vec_pretty(r).expect("boot record serializes");
        fsutil::atomic_write(&path, &json).map_err(|source| SlotError::Io { path, source })
    }

    /// The manifest of a slot.
    pub fn slot_manifest(&self, s: Slot) -> Result<SlotManifest, SlotError> {
        let path = self.slot_dir(s).join("manifest.json");
        let text = std::fs::read(&path).map_err(|source| SlotError::Io { path: path.clone(), source })?;
        serde_json::from_slice(&text).map_err(|e| SlotError::Corrupt { path, message: e.to_string() })
    }

    /// The manifest of the active slot: what this node runs.
    pub fn active(&self) -> Result<(BootRecord, SlotManifest), SlotError> {
        let r = self.boot_record()?;
        let m = self.slot_manifest(r.active)?;
        Ok((r, m))
    }

    /// First installation: copies `bin_dir`'s agent binaries into slot `a`
    /// (a docker node's slot holds only the manifest: its image,
    /// `molt-ROLE:VERSION`, is in Docker's store), writes its manifest, then
    /// the boot record. Leaves an existing installation as it is.
    pub fn install_initial(&self, version: Version, kind: DeploymentKind, bin_dir: &Path) -> Result<(), SlotError> {
        if self.boot_record_path().exists() {
            return Ok(());
        }
        let dir = self.slot_dir(Slot::A);
        let io = |path: &Path| {
            let path = path.to_owned();
            move |source| SlotError::Io { path, source }
        };
        std::fs::create_dir_all(&dir).map_err(io(&dir))?;
        let binaries: &[&str] = if kind == DeploymentKind::Vm { &crate::package::REQUIRED_ENTRIES } else { &[] };
        for name in binaries {
            std::fs::create_dir_all(dir.join("bin")).map_err(io(&dir))?;
            let src = bin_dir.join(Path::new(name).file_name().expect("has a name"));
            let dst = dir.join(name);
            // A link where it can be (a local cluster of 200 nodes would
            // copy 40 GB of agents otherwise): slots are replaced whole,
            // never written in place, so the shared file is never changed.
            if std::fs::hard_link(&src, &dst).is_err() {
                std::fs::copy(&src, &dst).map_err(io(&src))?;
            }
        }
        let m = SlotManifest { version, kind };
        let path = dir.join("manifest.json");
        fsutil::atomic_write(&path, &serde_json::to_vec_pretty(&m).expect("serializes")).map_err(io(&path))?;
        self.write_boot_record(&BootRecord { format: 1, active: Slot::A, previous: None, pending: false, attempts: 0 })
    }
}

impl Slots {
    /// Installs a verified package into the inactive slot: unpack into a
    /// temporary dir, write the slot manifest, swap it in, fsync. The boot
    /// record is not touched; call [`Slots::activate_on_trial`] next.
    /// Refused, before a byte is unpacked: while the active slot is on trial
    /// (the inactive slot then holds the last version known to boot, the boot
    /// loader's way back); for a package of another deployment kind than the
    /// node's; for one not signed by a key of `trusted` (when there are
    /// keys); and for a version not newer than the running one (a node goes
    /// back only to its previous slot, by [`Slots::switch_to_previous`]).
    pub fn install_inactive(
        &self,
        package: &Path,
        kind: DeploymentKind,
        trusted: &[PublicKey],
    ) -> Result<(Slot, SlotManifest), InstallError> {
        let (record, running) = self.active()?;
        let manifest = admit_package(package, kind, trusted)?;
        if record.pending {
            let good = record.previous.and_then(|p| self.slot_manifest(p).ok()).map(|m| m.version);
            return Err(InstallError::OnTrial { running: running.version, known_good: good });
        }
        if manifest.version <= running.version {
            return Err(InstallError::NotNewer { package: manifest.version, running: running.version });
        }
        let slot = record.active.other();
        let sm = self.unpack_into(slot, package)?;
        Ok((slot, sm))
    }

    /// First installation on a real node, from a package: verify and unpack
    /// it into slot `a`, then write the boot record (last, so that a failure
    /// leaves the node as uninstalled as it was). Refuses a node that
    /// already has a version (those are upgraded through the leader), and a
    /// package of another kind or not signed by a key of `trusted`.
    pub fn install_first(
        &self,
        package: &Path,
        kind: DeploymentKind,
        trusted: &[PublicKey],
    ) -> Result<SlotManifest, InstallError> {
        match self.active() {
            Ok((_, m)) => return Err(InstallError::AlreadyInstalled(m.version)),
            Err(SlotError::NotInstalled(_)) => {}
            // A record whose slot is unreadable: say so rather than overwrite.
            Err(e) => return Err(e.into()),
        }
        admit_package(package, kind, trusted)?;
        let sm = self.unpack_into(Slot::A, package)?;
        self.write_boot_record(&BootRecord {
            format: 1,
            active: Slot::A,
            previous: None,
            pending: false,
            attempts: 0,
        })?;
        Ok(sm)
    }

    /// Removes what an install cut short left in `slots/` (a
    /// `.a.installing` or `.b.installing`), however deep: at every start,
    /// before any command runs. Returns what was removed.
    pub fn remove_leftovers(&self) -> Result<Vec<PathBuf>, SlotError> {
        let mut removed = Vec::new();
        for slot in [Slot::A, Slot::B] {
            let tmp = self.installing_dir(slot);
            if std::fs::symlink_metadata(&tmp).is_ok() {
                fsutil::remove_tree(&tmp).map_err(|source| SlotError::Io { path: tmp.clone(), source })?;
                removed.push(tmp);
            }
        }
        Ok(removed)
    }

    fn installing_dir(&self, slot: Slot) -> PathBuf {
        self.data_dir.join("slots").join(format!(".{slot}.installing"))
    }

    /// Verifies and unpacks `package` into `slot`, replacing what was there,
    /// and fsyncs. Nothing of a failed unpack remains.
    fn unpack_into(&self, slot: Slot, package: &Path) -> Result<SlotManifest, InstallError> {
        let dir = self.slot_dir(slot);
        let parent = self.data_dir.join("slots");
        let tmp = self.installing_dir(slot);
        let io = |path: &Path| {
            let path = path.to_owned();
            move |source| InstallError::Slots(SlotError::Io { path, source })
        };
        std::fs::create_dir_all(&parent).map_err(io(&parent))?;
        fsutil::remove_tree(&tmp).map_err(io(&tmp))?;
        let manifest = crate::package::unpack(package, &tmp)?;
        let sm = SlotManifest::from(&manifest);
        let mpath = tmp.join("manifest.json");
        fsutil::atomic_write(&mpath, &serde_json::to_vec_pretty(&sm).expect("serializes")).map_err(io(&mpath))?;
        fsutil::remove_tree(&dir).map_err(io(&dir))?;
        std::fs::rename(&tmp, &dir).map_err(io(&dir))?;
        fsutil::fsync_dir(&parent).map_err(io(&parent))?;
        Ok(sm)
    }

    /// Makes `slot` the active slot on trial: the boot loader counts its
    /// boots and falls back to the current slot unless it is committed.
    pub fn activate_on_trial(&self, slot: Slot) -> Result<BootRecord, SlotError> {
        let r = self.boot_record()?;
        let next = BootRecord { format: 1, active: slot, previous: Some(r.active), pending: true, attempts: 0 };
        self.write_boot_record(&next)?;
        Ok(next)
    }

    /// Keeps the running slot: no longer on trial.
    pub fn commit(&self) -> Result<BootRecord, SlotError> {
        let mut r = self.boot_record()?;
        r.pending = false;
        r.attempts = 0;
        self.write_boot_record(&r)?;
        Ok(r)
    }

    /// Switches back to the previous slot (committed); `None` if there is none.
    pub fn switch_to_previous(&self) -> Result<Option<BootRecord>, SlotError> {
        let r = self.boot_record()?;
        let Some(prev) = r.previous else { return Ok(None) };
        let next = BootRecord { format: 1, active: prev, previous: Some(r.active), pending: false, attempts: 0 };
        self.write_boot_record(&next)?;
        Ok(Some(next))
    }
}

/// Reads `package`'s manifest and checks what a node checks before it
/// installs anything: its deployment kind, and its signature against the
/// node's own `trusted` keys (when it has some).
fn admit_package(package: &Path, kind: DeploymentKind, trusted: &[PublicKey]) -> Result<Manifest, InstallError> {
    let file = std::fs::File::open(package).map_err(|source| SlotError::Io { path: package.to_owned(), source })?;
    let manifest = crate::package::read_manifest(std::io::BufReader::new(file))?;
    if manifest.kind != kind {
        return Err(InstallError::WrongKind { package: manifest.kind, node: kind });
    }
    crate::package::signing::check(&manifest, trusted)?;
    Ok(manifest)
}

/// Why a package could not be installed into a slot. Nothing changed then:
/// the active slot and the boot record are as they were.
#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    /// Slot or boot record I/O.
    #[error("{0}")]
    Slots(#[from] SlotError),
    /// The package did not unpack.
    #[error("{0}")]
    Package(#[from] crate::package::PackageError),
    /// First installation on a node that already runs a version.
    #[error("this node already runs {0}; upgrade it through the leader (`molt upgrade system`)")]
    AlreadyInstalled(Version),
    /// The running version is still on trial.
    #[error(
        "this node runs {running} on trial (not committed); installing now would overwrite {}, its last known-good version: commit or roll back first",
        known_good.map(|v| v.to_string()).unwrap_or_else(|| "the previous slot".into())
    )]
    OnTrial {
        /// The uncommitted version.
        running: Version,
        /// The version in the previous slot.
        known_good: Option<Version>,
    },
    /// The package is not signed by a key this node trusts.
    #[error("{0}")]
    Untrusted(#[from] crate::package::signing::SigningError),
    /// The package is not newer than what the node runs.
    #[error(
        "the package holds {package}, not newer than the {running} this node runs: a node only moves forward by installing, and back only to its previous slot (`molt rollback`)"
    )]
    NotNewer {
        /// The package's version.
        package: Version,
        /// The running version.
        running: Version,
    },
    /// A package for another deployment kind.
    #[error("the package is for {package} deployments but this node is deployed as {node}")]
    WrongKind {
        /// The package's kind.
        package: DeploymentKind,
        /// The node's kind.
        node: DeploymentKind,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(pending: bool, attempts: u32) -> BootRecord {
        BootRecord { format: 1, active: Slot::B, previous: Some(Slot::A), pending, attempts }
    }

    #[test]
    fn committed_slot_boots_unchanged() {
        assert_eq!(next_record(&rec(false, 0), 3), rec(false, 0));
    }

    #[test]
    fn pending_slot_counts_attempts_then_falls_back() {
        assert_eq!(next_record(&rec(true, 0), 3).attempts, 1);
        assert_eq!(next_record(&rec(true, 2), 3).attempts, 3);
        let fell = next_record(&rec(true, 3), 3);
        assert_eq!((fell.active, fell.previous, fell.pending), (Slot::A, Some(Slot::B), false));
    }

    /// Writes the two agent binaries (with the given contents) into `dir`.
    fn fake_bins(dir: &Path, controller: &[u8], se: &[u8]) -> PathBuf {
        std::fs::create_dir_all(dir).unwrap();
        std::fs::write(dir.join("controller-agent"), controller).unwrap();
        std::fs::write(dir.join("se-agent"), se).unwrap();
        dir.to_owned()
    }

    #[test]
    fn install_then_read_active() {
        let d = tempfile::tempdir().unwrap();
        let bins = fake_bins(&d.path().join("bins"), b"c", b"s");
        let slots = Slots::new(&d.path().join("node"));
        assert!(matches!(slots.active(), Err(SlotError::NotInstalled(_))));
        slots.install_initial("1.0.0".parse().unwrap(), DeploymentKind::Vm, &bins).unwrap();
        let (r, m) = slots.active().unwrap();
        assert_eq!(r.active, Slot::A);
        assert_eq!(m.version.to_string(), "1.0.0");
        assert!(slots.slot_dir(Slot::A).join("bin/se-agent").exists());
    }

    #[test]
    fn install_activate_commit_and_switch_back() {
        let d = tempfile::tempdir().unwrap();
        let bins = fake_bins(&d.path().join("payload/bin"), b"c2", b"s2");
        let pkg = d.path().join("p.pkg");
        crate::package::build(
            &d.path().join("payload"),
            "2.0.0".parse().unwrap(),
            "1.0.0".parse().unwrap(),
            DeploymentKind::Vm,
            &pkg,
        )
        .unwrap();
        let slots = Slots::new(&d.path().join("node"));
        slots.install_initial("1.0.0".parse().unwrap(), DeploymentKind::Vm, &bins).unwrap();
        let (slot, m) = slots.install_inactive(&pkg, DeploymentKind::Vm, &[]).unwrap();
        assert_eq!((slot, m.version.to_string()), (Slot::B, "2.0.0".into()));
        assert_eq!(std::fs::read(slots.slot_dir(Slot::B).join("bin/se-agent")).unwrap(), b"s2");
        assert_eq!(slots.boot_record().unwrap().active, Slot::A, "installing does not switch");
        slots.activate_on_trial(slot).unwrap();
        let (r, m) = slots.active().unwrap();
        assert!(r.pending && r.previous == Some(Slot::A) && m.version.to_string() == "2.0.0");
        // On trial, the inactive slot is the last known-good one: never overwritten.
        let err = slots.install_inactive(&pkg, DeploymentKind::Vm, &[]).unwrap_err();
        assert!(matches!(err, InstallError::OnTrial { .. }), "{err}");
        assert!(err.to_string().contains("commit or roll back"), "{err}");
        assert_eq!(slots.slot_manifest(Slot::A).unwrap().version.to_string(), "1.0.0");
        assert!(!slots.commit().unwrap().pending);
        let back = slots.switch_to_previous().unwrap().unwrap();
        assert_eq!((back.active, back.previous), (Slot::A, Some(Slot::B)));
        assert_eq!(slots.active().unwrap().1.version.to_string(), "1.0.0");
    }

    /// A package of `kind` whose payload has the files that kind requires.
    fn pkg_of_kind(dir: &Path, kind: DeploymentKind) -> PathBuf {
        let payload = dir.join(format!("payload-{}", kind.as_str()));
        for entry in crate::package::required_entries(kind) {
            std::fs::create_dir_all(payload.join(entry).parent().unwrap()).unwrap();
            std::fs::write(payload.join(entry), b"x").unwrap();
        }
        let pkg = dir.join(format!("{}.pkg", kind.as_str()));
        let v = "2.0.0".parse().unwrap();
        crate::package::build(&payload, v, v, kind, &pkg).unwrap();
        pkg
    }

    #[test]
    fn a_corrupt_package_leaves_the_slots_as_they_were() {
        let d = tempfile::tempdir().unwrap();
        let bins = fake_bins(&d.path().join("bins"), b"c", b"s");
        let slots = Slots::new(&d.path().join("node"));
        slots.install_initial("1.0.0".parse().unwrap(), DeploymentKind::Vm, &bins).unwrap();
        let bad = d.path().join("bad.pkg");
        std::fs::write(&bad, b"MOLTPKG1\0\0\0\x02{}").unwrap();
        assert!(slots.install_inactive(&bad, DeploymentKind::Vm, &[]).is_err());
        assert!(matches!(
            slots.install_inactive(&pkg_of_kind(d.path(), DeploymentKind::Docker), DeploymentKind::Vm, &[]),
            Err(InstallError::WrongKind { .. })
        ));
        assert!(!slots.slot_dir(Slot::B).exists());
        assert_eq!(std::fs::read_dir(d.path().join("node/slots")).unwrap().count(), 1, "no temp dir left");
        assert_eq!(slots.boot_record().unwrap().active, Slot::A);
    }

    #[test]
    fn first_install_from_a_package_once_and_only_of_the_right_kind() {
        let d = tempfile::tempdir().unwrap();
        fake_bins(&d.path().join("payload/bin"), b"c1", b"s1");
        let pkg = d.path().join("p.pkg");
        let v1 = "1.0.0".parse().unwrap();
        crate::package::build(&d.path().join("payload"), v1, v1, DeploymentKind::Vm, &pkg).unwrap();
        let slots = Slots::new(&d.path().join("var-lib-molt"));
        // The wrong kind, a truncated and a corrupt package leave nothing behind.
        let e = slots.install_first(&pkg, DeploymentKind::Docker, &[]).unwrap_err();
        assert!(e.to_string().contains("for vm deployments but this node is deployed as docker"), "{e}");
        let bytes = std::fs::read(&pkg).unwrap();
        let cut = d.path().join("cut.pkg");
        std::fs::write(&cut, &bytes[..bytes.len() - 100]).unwrap();
        assert!(slots.install_first(&cut, DeploymentKind::Vm, &[]).is_err());
        assert!(matches!(slots.active(), Err(SlotError::NotInstalled(_))), "nothing installed");
        assert!(!slots.slot_dir(Slot::A).exists());
        // The real one installs and boots from slot a.
        let m = slots.install_first(&pkg, DeploymentKind::Vm, &[]).unwrap();
        assert_eq!(m.version.to_string(), "1.0.0");
        let (r, _) = slots.active().unwrap();
        assert_eq!((r.active, r.pending, r.previous), (Slot::A, false, None));
        assert_eq!(std::fs::read(slots.slot_dir(Slot::A).join("bin/controller-agent")).unwrap(), b"c1");
        // Twice is refused: upgrades go through the leader.
        let e = slots.install_first(&pkg, DeploymentKind::Vm, &[]).unwrap_err();
        assert!(e.to_string().contains("already runs 1.0.0"), "{e}");
    }

    /// Issue 25, 3a/3b: a node installs only what its own keys trust, and
    /// only forward; `install` checks as an upgrade does.
    #[test]
    fn a_node_installs_only_packages_its_keys_trust_and_only_newer_versions() {
        use crate::package::signing;
        let d = tempfile::tempdir().unwrap();
        fake_bins(&d.path().join("payload/bin"), b"c", b"s");
        let keys = signing::keygen(&d.path().join("keys")).unwrap();
        let other = signing::keygen(&d.path().join("other")).unwrap();
        let key = signing::SigningKey::load(&d.path().join("keys/signing.key")).unwrap();
        let build = |v: &str, signed: bool| {
            let pkg = d.path().join(format!("{v}-{signed}.pkg"));
            let (v, min) = (v.parse().unwrap(), "1.0.0".parse().unwrap());
            let k = signed.then_some(&key);
            crate::package::build_signed(&d.path().join("payload"), v, min, DeploymentKind::Vm, &pkg, k).unwrap();
            pkg
        };
        let slots = Slots::new(&d.path().join("node"));
        let trusted = std::slice::from_ref(&keys);
        let e = slots.install_first(&build("1.0.0", false), DeploymentKind::Vm, trusted).unwrap_err();
        assert!(matches!(e, InstallError::Untrusted(_)), "{e}");
        assert!(e.to_string().contains("unsigned"), "{e}");
        assert!(matches!(slots.active(), Err(SlotError::NotInstalled(_))), "nothing installed");
        let e =
            slots.install_first(&build("1.0.0", true), DeploymentKind::Vm, std::slice::from_ref(&other)).unwrap_err();
        assert!(matches!(e, InstallError::Untrusted(_)), "a key not trusted: {e}");
        slots.install_first(&build("1.0.0", true), DeploymentKind::Vm, trusted).unwrap();

        // An upgrade: unsigned refused, signed taken; never the same or an older version.
        let e = slots.install_inactive(&build("2.0.0", false), DeploymentKind::Vm, trusted).unwrap_err();
        assert!(matches!(e, InstallError::Untrusted(_)), "{e}");
        let (slot, _) = slots.install_inactive(&build("2.0.0", true), DeploymentKind::Vm, trusted).unwrap();
        slots.activate_on_trial(slot).unwrap();
        slots.commit().unwrap();
        for older in ["2.0.0", "1.5.0"] {
            let e = slots.install_inactive(&build(older, true), DeploymentKind::Vm, trusted).unwrap_err();
            assert!(matches!(e, InstallError::NotNewer { .. }), "{older}: {e}");
            assert!(e.to_string().contains("not newer than the 2.0.0 this node runs"), "{e}");
        }
        assert_eq!(slots.slot_manifest(Slot::A).unwrap().version.to_string(), "1.0.0", "the previous slot is kept");
    }

    /// Issue 25, 1: a leftover `.a.installing` deeper than any stack could
    /// walk made every later install (and start) fail; it is removed.
    #[test]
    fn a_deep_leftover_of_an_interrupted_install_is_removed() {
        let d = tempfile::tempdir().unwrap();
        let bins = fake_bins(&d.path().join("bins"), b"c", b"s");
        let slots = Slots::new(&d.path().join("node"));
        slots.install_initial("1.0.0".parse().unwrap(), DeploymentKind::Vm, &bins).unwrap();
        let mut deep = slots.installing_dir(Slot::B);
        for _ in 0..200 {
            deep.push("a");
        }
        std::fs::create_dir_all(&deep).unwrap();
        std::fs::write(deep.join("f"), b"x").unwrap();
        let removed = slots.remove_leftovers().unwrap();
        assert_eq!(removed, vec![slots.installing_dir(Slot::B)]);
        assert!(!slots.installing_dir(Slot::B).exists());
        assert!(slots.remove_leftovers().unwrap().is_empty());
        assert_eq!(slots.active().unwrap().1.version.to_string(), "1.0.0");
    }
}
