//! The molt package format (`controller.pkg`, `controller_docker.tgz`).
//!
//! ```text
//! "MOLTPKG1"                  8 bytes of magic
//! manifest length             u32, big endian, at most 64 KiB
//! manifest                    JSON (Manifest)
//! payload                     tar, exactly payload_size bytes, SHA-256 payload_sha256
//! ```
//!
//! Everything can be checked in one streaming pass ([`verify`]): the header is
//! bounded, the payload's digest and size are known before it arrives, and
//! every tar entry is checked as it passes. The package's own digest (as
//! `sha256sum` prints it) is computed over the same pass. Nothing in a
//! package is trusted before it is checked: sizes are bounded, and every
//! entry must follow the payload rules of [`payload`], the same rules that
//! unpacking applies.

use std::{
    fs::File,
    io::{self, BufWriter, Read, Write},
    path::{Component, Path, PathBuf},
    time::{SystemTime, UNIX_EPOCH},
};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::{DeploymentKind, Sha256Digest, Version, fsutil};

/// The first eight bytes of every package.
pub const MAGIC: &[u8; 8] = b"MOLTPKG1";
/// Largest manifest accepted.
pub const MAX_MANIFEST_BYTES: u32 = 64 * 1024;
/// Largest number of payload entries accepted; the directories a path only
/// implies count too (unpacking makes them all the same).
pub const MAX_ENTRIES: u64 = 100_000;
/// Longest name of one path component (every Linux file system's `NAME_MAX`).
pub const MAX_NAME_BYTES: usize = 255;
/// Longest path of an entry beneath the slot (`PATH_MAX`).
pub const MAX_PATH_BYTES: usize = 4096;
/// Deepest path of an entry beneath the slot. Real payloads are a few
/// levels deep; the bound keeps every walk over a slot short.
pub const MAX_DEPTH: usize = 64;
/// Longest symlink target (`PATH_MAX` less its terminating NUL).
pub const MAX_LINK_BYTES: usize = 4095;
/// Largest PAX extended header record set of one entry, checked before it is read.
pub const MAX_PAX_BYTES: u64 = 16 * 1024;
/// Largest payload accepted (64 GiB).
pub const MAX_PAYLOAD_BYTES: u64 = 64 << 30;
/// Files a VM payload must contain: the binaries a node runs after booting it.
pub const REQUIRED_ENTRIES: [&str; 2] = ["bin/controller-agent", "bin/se-agent"];
/// The file a docker payload must contain: a `docker save` archive holding
/// the images `molt-controller:VERSION` and `molt-se:VERSION`.
pub const DOCKER_IMAGE_ENTRY: &str = "image.tar";

/// The files a payload of `kind` must contain.
pub fn required_entries(kind: DeploymentKind) -> &'static [&'static str] {
    match kind {
        DeploymentKind::Vm => &REQUIRED_ENTRIES,
        DeploymentKind::Docker => &[DOCKER_IMAGE_ENTRY],
    }
}

/// What a package says about itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Format of this manifest (1).
    pub format: u32,
    /// The version the package installs.
    pub version: Version,
    /// Oldest version that may upgrade to this one without `force`.
    pub min_compatible: Version,
    /// The deployment kind the package is for.
    pub kind: DeploymentKind,
    /// SHA-256 of the payload tar.
    pub payload_sha256: Sha256Digest,
    /// Size of the payload tar in bytes.
    pub payload_size: u64,
    /// Build time, seconds since the Unix epoch.
    pub built_at: u64,
    /// The builder's signature over the rest of the manifest ([`signing`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<signing::Signature>,
}

/// A package that passed [`verify`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PackageInfo {
    /// The manifest.
    pub manifest: Manifest,
    /// SHA-256 of the whole package file.
    pub sha256: Sha256Digest,
    /// Size of the whole package file.
    pub size: u64,
    /// Number of payload entries.
    pub entries: u64,
}

/// Why a package was refused. Every message says what is wrong and what to do.
#[derive(Debug, thiserror::Error)]
pub enum PackageError {
    /// Reading failed.
    #[error("cannot read the package: {0}")]
    Io(#[from] io::Error),
    /// Wrong magic: not a molt package at all.
    #[error("not a molt package (it does not start with MOLTPKG1); build one with `molt package build`")]
    NotAPackage,
    /// The file ends before the package does.
    #[error("the package is truncated: {got} of {expected} bytes are present; copy or upload it again")]
    Truncated {
        /// Bytes the package should have.
        expected: u64,
        /// Bytes present.
        got: u64,
    },
    /// Bytes after the payload.
    #[error("the package has {0} unexpected bytes after its payload; it is corrupt or not a molt package")]
    TrailingData(u64),
    /// Manifest longer than the bound.
    #[error("the package manifest is {0} bytes, more than the 64 KiB allowed; the package is corrupt")]
    ManifestTooLarge(u32),
    /// Manifest does not parse.
    #[error("the package manifest is invalid: {0}")]
    BadManifest(String),
    /// Payload digest mismatch.
    #[error(
        "the package payload is corrupt: its SHA-256 is {actual}, the manifest says {expected}; get the package again"
    )]
    PayloadDigest {
        /// What the manifest says.
        expected: Sha256Digest,
        /// What the bytes hash to.
        actual: Sha256Digest,
    },
    /// An entry escapes the payload directory or has a forbidden type.
    #[error("the package is refused: entry {path:?} {why}")]
    UnsafeEntry {
        /// The entry's path as stored.
        path: String,
        /// What makes it unsafe.
        why: String,
    },
    /// Too many entries.
    #[error(
        "the package has more than {MAX_ENTRIES} entries (directories its paths only imply count too); split the payload"
    )]
    TooManyEntries,
    /// The payload tar is malformed.
    #[error("the package payload is not a valid tar archive: {0}")]
    BadPayload(String),
    /// A required file is missing from the payload.
    #[error("the package payload lacks {0}: a node could not boot it")]
    MissingEntry(&'static str),
    /// The manifest is not signed by a trusted key.
    #[error("{0}")]
    Untrusted(#[from] signing::SigningError),
    /// `molt package build` input problems.
    #[error("{0}")]
    Build(String),
}

/// Reads and checks only the header and manifest (for a file already verified).
pub fn read_manifest(mut r: impl Read) -> Result<Manifest, PackageError> {
    let mut counter = CountingReader::new(&mut r);
    read_header(&mut counter)
}

fn read_header(r: &mut CountingReader<impl Read>) -> Result<Manifest, PackageError> {
    let mut magic = [0u8; 8];
    read_exact_or(r, &mut magic, PackageError::NotAPackage)?;
    if &magic != MAGIC {
        return Err(PackageError::NotAPackage);
    }
    let mut len = [0u8; 4];
    read_exact_or(r, &mut len, PackageError::NotAPackage)?;
    let len = u32::from_be_bytes(len);
    if len > MAX_MANIFEST_BYTES {
        return Err(PackageError::ManifestTooLarge(len));
    }
    let mut buf = vec![0u8; len as usize];
    let got_before = r.count;
    read_exact_or(r, &mut buf, PackageError::Truncated { expected: got_before + len as u64, got: 0 }).map_err(|e| {
        match e {
            PackageError::Truncated { expected, .. } => PackageError::Truncated { expected, got: r.count },
            e => e,
        }
    })?;
    let m: Manifest = serde_json::from_slice(&buf).map_err(|e| PackageError::BadManifest(e.to_string()))?;
    if m.format != 1 {
        return Err(PackageError::BadManifest(format!(
            "format {} is not supported (this molt reads format 1)",
            m.format
        )));
    }
    if m.payload_size > MAX_PAYLOAD_BYTES {
        return Err(PackageError::BadManifest(format!("payload_size {} exceeds the 64 GiB limit", m.payload_size)));
    }
    if m.min_compatible > m.version {
        return Err(PackageError::BadManifest(format!(
            "min_compatible {} is above the version {}",
            m.min_compatible, m.version
        )));
    }
    Ok(m)
}

fn read_exact_or(r: &mut impl Read, buf: &mut [u8], short: PackageError) -> Result<(), PackageError> {
    match r.read_exact(buf) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Err(short),
        Err(e) => Err(e.into()),
    }
}

/// Verifies a whole package in one streaming pass: header, manifest, payload
/// digest and size, every entry's path, nothing trailing. Returns the manifest
/// and the digest of the whole stream.
pub fn verify(r: impl Read) -> Result<PackageInfo, PackageError> {
    verify_trusting(r, &[])
}

/// As [`verify`], for a reader that accepts only packages signed by one of
/// `trusted` (none: unchecked): the signature is checked as soon as the
/// manifest is read, before a byte of the payload, so an untrusted
/// package costs no more than its header.
pub fn verify_trusting(r: impl Read, trusted: &[signing::PublicKey]) -> Result<PackageInfo, PackageError> {
    let mut outer = CountingReader::new(r);
    let checked = verify_counted(&mut outer, trusted)?;
    Ok(checked.with_digest(outer.digest()))
}

/// As [`verify_trusting`], but hashing only the payload: the caller hashes
/// the whole stream elsewhere (on another core) and completes the answer
/// with [`Checked::with_digest`].
pub fn verify_except_digest(r: impl Read, trusted: &[signing::PublicKey]) -> Result<Checked, PackageError> {
    verify_counted(&mut CountingReader::counting_only(r), trusted)
}

/// A package checked by [`verify_except_digest`]: all but its digest.
#[derive(Debug)]
pub struct Checked {
    manifest: Manifest,
    size: u64,
    entries: u64,
}

impl Checked {
    /// The package's description, with `sha256` as the whole stream's digest.
    pub fn with_digest(self, sha256: Sha256Digest) -> PackageInfo {
        PackageInfo { manifest: self.manifest, sha256, size: self.size, entries: self.entries }
    }
}

fn verify_counted<R: Read>(
    outer: &mut CountingReader<R>,
    trusted: &[signing::PublicKey],
) -> Result<Checked, PackageError> {
    let manifest = read_header(outer)?;
    signing::check(&manifest, trusted)?;
    let header_len = outer.count;
    let expected_total = header_len + manifest.payload_size;
    let mut payload = CountingReader::new(outer.by_ref().take(manifest.payload_size));
    let walked = walk_entries(&mut payload, manifest.kind, |entry, _| io::copy(entry, &mut io::sink()).map(|_| ()));
    // Drain what the tar reader did not consume (end-of-archive padding).
    io::copy(&mut payload, &mut io::sink())?;
    if payload.count < manifest.payload_size {
        return Err(PackageError::Truncated { expected: expected_total, got: header_len + payload.count });
    }
    let entries = walked?;
    let actual = payload.digest();
    if actual != manifest.payload_sha256 {
        return Err(PackageError::PayloadDigest { expected: manifest.payload_sha256, actual });
    }
    let trailing = io::copy(outer, &mut io::sink())?;
    if trailing > 0 {
        return Err(PackageError::TrailingData(trailing));
    }
    Ok(Checked { manifest, size: outer.count, entries })
}

/// Unpacks a package's payload into `dest` (which must not exist), under
/// exactly the rules [`verify`] applies (see [`payload`]), checking the payload
/// digest at the end. On any error `dest` is removed: nothing half-installed
/// remains, and nothing was ever written outside `dest`.
pub fn unpack(package: &Path, dest: &Path) -> Result<Manifest, PackageError> {
    if dest.exists() {
        return Err(PackageError::Io(io::Error::new(
            io::ErrorKind::AlreadyExists,
            format!("{} already exists", dest.display()),
        )));
    }
    let result = unpack_inner(package, dest);
    if result.is_err() {
        let _ = fsutil::remove_tree(dest);
    }
    result
}

fn unpack_inner(package: &Path, dest: &Path) -> Result<Manifest, PackageError> {
    let mut outer = CountingReader::new(io::BufReader::with_capacity(1 << 20, File::open(package)?));
    let manifest = read_header(&mut outer)?;
    let mut unpacker = payload::Unpacker::create(dest)?;
    let mut payload = CountingReader::new((&mut outer).take(manifest.payload_size));
    let walked = walk_entries(&mut payload, manifest.kind, |entry, admitted| unpacker.apply(admitted, entry));
    io::copy(&mut payload, &mut io::sink())?;
    if payload.count < manifest.payload_size {
        return Err(PackageError::Truncated { expected: manifest.payload_size, got: payload.count });
    }
    walked?;
    let actual = payload.digest();
    if actual != manifest.payload_sha256 {
        return Err(PackageError::PayloadDigest { expected: manifest.payload_sha256, actual });
    }
    // As `verify`: a package is exactly its header and payload.
    let trailing = io::copy(&mut outer, &mut io::sink())?;
    if trailing > 0 {
        return Err(PackageError::TrailingData(trailing));
    }
    Ok(manifest)
}

/// Walks the tar entries, admitting each under [`payload::PayloadRules`]
/// before `on_entry` sees it, then checks the payload as a whole; returns the
/// entry count. `verify` and `unpack` both go through here.
///
/// The archive is read raw: GNU long names and links and PAX records are
/// taken apart here, each bounded by its header's size before a byte of it
/// is read (the tar crate would read them whole, however large).
fn walk_entries<R: Read>(
    r: &mut R,
    kind: DeploymentKind,
    mut on_entry: impl FnMut(&mut tar::Entry<'_, &mut R>, &payload::Admitted) -> io::Result<()>,
) -> Result<u64, PackageError> {
    let mut archive = tar::Archive::new(r);
    let mut rules = payload::PayloadRules::new(required_entries(kind));
    let entries = archive.entries().map_err(|e| PackageError::BadPayload(e.to_string()))?.raw(true);
    let mut pending = Extensions::default();
    for entry in entries {
        let mut entry = entry.map_err(|e| PackageError::BadPayload(e.to_string()))?;
        if pending.take(&mut entry)? {
            continue;
        }
        let (long_path, long_link) = std::mem::take(&mut pending).into_names();
        let path = match long_path {
            Some(p) => p,
            None => entry.path().map_err(|e| PackageError::BadPayload(e.to_string()))?.into_owned(),
        };
        let kind = entry.header().entry_type();
        let link = match (kind, long_link) {
            (tar::EntryType::Symlink, Some(l)) => Some(l),
            (tar::EntryType::Symlink, None) => {
                entry.link_name().map_err(|e| PackageError::BadPayload(e.to_string()))?.map(|l| l.into_owned())
            }
            _ => None,
        };
        let mode = entry.header().mode().map_err(|e| PackageError::BadPayload(e.to_string()))?;
        let Some(admitted) = rules.admit(&path, kind, link.as_deref(), mode)? else {
            continue;
        };
        on_entry(&mut entry, &admitted)
            .map_err(|e| PackageError::BadPayload(format!("entry {:?}: {e}", admitted.rel.display().to_string())))?;
    }
    if !pending.is_empty() {
        return Err(PackageError::BadPayload(
            "the archive ends with a long-name or PAX record that describes no entry".into(),
        ));
    }
    rules.finish()
}

/// The long names and PAX records read for the next entry of a raw archive.
#[derive(Debug, Default)]
struct Extensions {
    gnu_path: Option<PathBuf>,
    gnu_link: Option<PathBuf>,
    pax_path: Option<PathBuf>,
    pax_link: Option<PathBuf>,
    pax_seen: bool,
}

/// PAX keys a payload may carry: names, and metadata unpacking ignores.
/// Any other (a `size`, sparse maps, a charset) could make two readers see
/// different archives, and is refused.
const PAX_KEYS_ALLOWED: [&str; 10] =
    ["path", "linkpath", "mtime", "atime", "ctime", "uid", "gid", "uname", "gname", "comment"];

impl Extensions {
    fn is_empty(&self) -> bool {
        self.gnu_path.is_none() && self.gnu_link.is_none() && !self.pax_seen
    }

    /// The path and link target the records name (PAX over GNU, as tar does).
    fn into_names(self) -> (Option<PathBuf>, Option<PathBuf>) {
        (self.pax_path.or(self.gnu_path), self.pax_link.or(self.gnu_link))
    }

    /// Takes `entry` if it is an extension record (then `true`), bounded by
    /// its declared size before it is read.
    fn take<R: Read>(&mut self, entry: &mut tar::Entry<'_, R>) -> Result<bool, PackageError> {
        let t = entry.header().entry_type();
        let (what, max) = if t.is_gnu_longname() || t.is_gnu_longlink() {
            ("GNU long name", MAX_PATH_BYTES as u64 + 1)
        } else if t.is_pax_local_extensions() {
            ("PAX record", MAX_PAX_BYTES)
        } else if t.is_pax_global_extensions() {
            return Err(PackageError::BadPayload(
                "the archive has a PAX global header, which molt packages do not use; build it with `molt package build`".into(),
            ));
        } else {
            return Ok(false);
        };
        let size = entry.header().entry_size().map_err(|e| PackageError::BadPayload(e.to_string()))?;
        if size > max {
            return Err(PackageError::BadPayload(format!(
                "a {what} of {size} bytes, more than the {max} allowed; the package is not a molt package"
            )));
        }
        let mut data = Vec::with_capacity(size as usize);
        (&mut *entry).take(max).read_to_end(&mut data)?;
        let twice = || PackageError::BadPayload(format!("two {what}s describe the same entry"));
        if t.is_gnu_longname() || t.is_gnu_longlink() {
            let name = path_from_record(&data, what)?;
            let slot = if t.is_gnu_longname() { &mut self.gnu_path } else { &mut self.gnu_link };
            if slot.replace(name).is_some() {
                return Err(twice());
            }
            return Ok(true);
        }
        if std::mem::replace(&mut self.pax_seen, true) {
            return Err(twice());
        }
        for ext in tar::PaxExtensions::new(&data) {
            let ext = ext.map_err(|e| PackageError::BadPayload(format!("a malformed PAX record: {e}")))?;
            let key = ext.key().map_err(|_| PackageError::BadPayload("a PAX key that is not UTF-8".into()))?;
            match key {
                "path" => self.pax_path = Some(path_from_record(ext.value_bytes(), what)?),
                "linkpath" => self.pax_link = Some(path_from_record(ext.value_bytes(), what)?),
                k if PAX_KEYS_ALLOWED.contains(&k) => {}
                k => {
                    return Err(PackageError::BadPayload(format!(
                        "a PAX record with the key {:?}, which molt packages do not use",
                        k.chars().take(64).collect::<String>()
                    )));
                }
            }
        }
        Ok(true)
    }
}

/// A path from a long-name record or a PAX value: its bytes to the first
/// NUL (GNU terminates its names), none empty or holding a NUL inside.
fn path_from_record(bytes: &[u8], what: &str) -> Result<PathBuf, PackageError> {
    use std::os::unix::ffi::OsStrExt;
    let mut end = bytes.len();
    while end > 0 && bytes[end - 1] == 0 {
        end -= 1;
    }
    let name = &bytes[..end];
    if name.is_empty() || name.contains(&0) {
        return Err(PackageError::BadPayload(format!("a {what} that names no path")));
    }
    Ok(PathBuf::from(std::ffi::OsStr::from_bytes(name)))
}

/// Normalizes a relative path lexically; `None` if it is absolute or would
/// climb above its root.
pub fn safe_relative(path: &Path) -> Option<PathBuf> {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::Normal(p) => out.push(p),
            Component::CurDir => {}
            Component::ParentDir => {
                if !out.pop() {
                    return None;
                }
            }
            Component::RootDir | Component::Prefix(_) => return None,
        }
    }
    Some(out)
}

/// Builds a package from a payload directory, writing `out` atomically.
pub fn build(
    payload_dir: &Path,
    version: Version,
    min_compatible: Version,
    kind: DeploymentKind,
    out: &Path,
) -> Result<PackageInfo, PackageError> {
    build_signed(payload_dir, version, min_compatible, kind, out, None)
}

/// [`build`], with the manifest signed by `key` when given.
pub fn build_signed(
    payload_dir: &Path,
    version: Version,
    min_compatible: Version,
    kind: DeploymentKind,
    out: &Path,
    key: Option<&signing::SigningKey>,
) -> Result<PackageInfo, PackageError> {
    if !payload_dir.is_dir() {
        return Err(PackageError::Build(format!("payload directory {} does not exist", payload_dir.display())));
    }
    if min_compatible > version {
        return Err(PackageError::Build(format!("--min-compatible {min_compatible} is above --version {version}")));
    }
    for req in required_entries(kind) {
        if !payload_dir.join(req).is_file() {
            return Err(PackageError::Build(format!(
                "payload directory {} lacks {req}: a node could not boot this package",
                payload_dir.display()
            )));
        }
    }
    let dir = fsutil::parent_dir(out);
    let tar_tmp = tempfile_in(dir, "payload")?;
    {
        let mut b = tar::Builder::new(BufWriter::new(File::create(&tar_tmp.0)?));
        b.follow_symlinks(false);
        // Plain entries only: sparse ones are refused by `verify`.
        b.sparse(false);
        b.mode(tar::HeaderMode::Deterministic);
        append_sorted(&mut b, payload_dir, Path::new(""))?;
        b.into_inner()?.flush()?;
    }
    let (payload_sha256, payload_size) = hash_file(&tar_tmp.0)?;
    let built_at = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let mut manifest =
        Manifest { format: 1, version, min_compatible, kind, payload_sha256, payload_size, built_at, signature: None };
    manifest.signature = key.map(|k| k.sign(&manifest));
    let json = serde_json::to_vec(&manifest).map_err(|e| PackageError::Build(e.to_string()))?;
    let pkg_tmp = tempfile_in(dir, "pkg")?;
    {
        let mut w = BufWriter::new(File::create(&pkg_tmp.0)?);
        w.write_all(MAGIC)?;
        w.write_all(&(json.len() as u32).to_be_bytes())?;
        w.write_all(&json)?;
        io::copy(&mut File::open(&tar_tmp.0)?, &mut w)?;
        w.into_inner().map_err(|e| e.into_error())?.sync_all()?;
    }
    // Verify what was written, exactly as a node will.
    let info = verify(io::BufReader::with_capacity(1 << 20, File::open(&pkg_tmp.0)?))?;
    std::fs::rename(&pkg_tmp.0, out)?;
    fsutil::fsync_dir(dir)?;
    Ok(info)
}

fn append_sorted<W: Write>(b: &mut tar::Builder<W>, root: &Path, rel: &Path) -> Result<(), PackageError> {
    let mut names: Vec<_> = std::fs::read_dir(root.join(rel))?.collect::<Result<Vec<_>, _>>()?;
    names.sort_by_key(|e| e.file_name());
    for e in names {
        let child = rel.join(e.file_name());
        let ft = e.file_type()?;
        if ft.is_dir() {
            b.append_dir(&child, root.join(&child))?;
            append_sorted(b, root, &child)?;
        } else {
            b.append_path_with_name(root.join(&child), &child)?;
        }
    }
    Ok(())
}

/// One entry of [`raw_package`]: path, type, link target, mode.
pub type RawEntry<'a> = (&'a str, tar::EntryType, Option<&'a str>, u32);

/// Writes a package (version 2.0.0, min 1.0.0, vm) whose payload holds
/// exactly `entries`, each regular file with the contents `abc`, bypassing
/// every check of the tar builder and of this module: hostile archives for
/// the verifier's tests and fuzzing. A path or target over 100 bytes gets a
/// GNU long-name record before its entry, as GNU tar writes it.
pub fn raw_package(entries: &[RawEntry<'_>]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    let long = |b: &mut tar::Builder<Vec<u8>>, kind: tar::EntryType, name: &str| {
        let mut h = tar::Header::new_gnu();
        h.as_old_mut().name[..13].copy_from_slice(b"././@LongLink");
        h.set_entry_type(kind);
        h.set_mode(0o644);
        let mut data = name.as_bytes().to_vec();
        data.push(0);
        h.set_size(data.len() as u64);
        h.set_cksum();
        b.append(&h, data.as_slice()).expect("writing to a Vec does not fail");
    };
    for (path, kind, link, mode) in entries {
        if path.len() > 100 {
            long(&mut b, tar::EntryType::GNULongName, path);
        }
        if let Some(l) = link.filter(|l| l.len() > 100) {
            long(&mut b, tar::EntryType::GNULongLink, l);
        }
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(*kind);
        h.set_size(if *kind == tar::EntryType::Regular { 3 } else { 0 });
        h.set_mode(*mode);
        let name = &mut h.as_old_mut().name;
        let n = path.len().min(100);
        name[..n].copy_from_slice(&path.as_bytes()[..n]);
        if let Some(l) = link {
            let field = &mut h.as_old_mut().linkname;
            let n = l.len().min(100);
            field[..n].copy_from_slice(&l.as_bytes()[..n]);
        }
        h.set_cksum();
        let data: &[u8] = if *kind == tar::EntryType::Regular { b"abc" } else { b"" };
        b.append(&h, data).expect("writing to a Vec does not fail");
    }
    package_of_tar(&b.into_inner().expect("writing to a Vec does not fail"))
}

/// Writes a package (version 2.0.0, min 1.0.0, vm, unsigned) around any
/// payload `tar`, checked by nothing: for tests and fuzzing.
pub fn package_of_tar(tar: &[u8]) -> Vec<u8> {
    let m = Manifest {
        format: 1,
        version: Version { major: 2, minor: 0, patch: 0 },
        min_compatible: Version { major: 1, minor: 0, patch: 0 },
        kind: DeploymentKind::Vm,
        payload_sha256: Sha256Digest::of(tar),
        payload_size: tar.len() as u64,
        built_at: 0,
        signature: None,
    };
    let json = serde_json::to_vec(&m).expect("serializes");
    let mut out = MAGIC.to_vec();
    out.extend_from_slice(&(json.len() as u32).to_be_bytes());
    out.extend_from_slice(&json);
    out.extend_from_slice(tar);
    out
}

/// A temporary path removed on drop unless renamed away.
struct TempPath(PathBuf);
impl Drop for TempPath {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn tempfile_in(dir: &Path, what: &str) -> io::Result<TempPath> {
    std::fs::create_dir_all(dir)?;
    Ok(TempPath(dir.join(format!(".molt-{what}-{}.tmp", crate::types::random_hex(6)))))
}

/// SHA-256 and size of a file, read in 1 MiB blocks.
pub fn hash_file(path: &Path) -> io::Result<(Sha256Digest, u64)> {
    let mut r = CountingReader::new(File::open(path)?);
    let mut buf = vec![0u8; 1 << 20];
    while r.read(&mut buf)? > 0 {}
    Ok((r.digest(), r.count))
}

/// A reader that hashes and counts what passes through it.
#[derive(Debug)]
pub struct CountingReader<R> {
    inner: R,
    hasher: Option<Sha256>,
    /// Bytes read so far.
    pub count: u64,
}

impl<R> CountingReader<R> {
    /// Wraps `inner`.
    pub fn new(inner: R) -> Self {
        Self { inner, hasher: Some(Sha256::new()), count: 0 }
    }

    /// Wraps `inner`, counting without hashing.
    pub fn counting_only(inner: R) -> Self {
        Self { inner, hasher: None, count: 0 }
    }

    /// The digest of everything read so far (of nothing, for a counting-only reader).
    pub fn digest(&self) -> Sha256Digest {
        Sha256Digest::from_bytes(self.hasher.clone().unwrap_or_default().finalize().into())
    }
}

impl<R: Read> Read for CountingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if let Some(h) = &mut self.hasher {
            h.update(&buf[..n]);
        }
        self.count += n as u64;
        Ok(n)
    }
}

pub mod payload;
pub mod signing;

/// Free space a node keeps beyond what an image needs: the distribution's
/// pre-check and the node's own check before it stages use the same.
pub const DISK_MARGIN: u64 = 16 << 20;

#[cfg(test)]
mod tests;
