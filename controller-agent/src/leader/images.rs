//! Images on the leader: `<data_dir>/upgrade_pkgs/`, addressed as
//! `controller://upgrade_pkgs/NAME`. An upload is verified while it streams
//! to disk (never held in memory, never read a second time); a file placed by
//! hand is verified once and the result cached while the file is unchanged
//! (`fsutil::FileKey`: inode, size and mtime).

use std::{
    collections::HashMap,
    fs,
    io::{self, Read},
    path::{Path, PathBuf},
    sync::Mutex,
};

use bytes::Bytes;
use common::{
    Sha256Digest, fsutil,
    package::{
        self, PackageError, PackageInfo,
        signing::{self, PublicKey, Trust},
    },
};
use futures_util::{Stream, StreamExt};
use tracing::info;

/// The pseudo-URI scheme for paths under the leader's data dir.
pub const SCHEME: &str = "controller://";
/// Free space an upload always leaves on the leader's disk.
pub const SPACE_RESERVE: u64 = 16 << 20;
/// The pieces an upload is handed to its writing and verifying threads in.
const UPLOAD_BATCH: usize = 1 << 20;
/// How often (in bytes written) an upload re-checks the free space.
const SPACE_CHECK_EVERY: u64 = 8 << 20;

/// Why an image was refused.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// The path is not a `controller://` path inside the data dir.
    #[error("{0}")]
    BadPath(String),
    /// No such file.
    #[error(
        "{0} does not exist on the leader; upload it first (POST /api/upload or `molt upgrade ... image_path LOCAL_FILE`)"
    )]
    NotFound(String),
    /// The image was uploaded to another controller (it is registered in
    /// the replicated state), and no other controller could send it.
    #[error(
        "{path} was uploaded to another controller and this leader does not hold it; no controller could send it ({why}): upload it again"
    )]
    Elsewhere {
        /// The image path.
        path: String,
        /// What each controller answered.
        why: String,
    },
    /// The file is not a valid package.
    #[error("{0}")]
    Package(#[from] PackageError),
    /// Not enough disk for an upload.
    #[error("not enough disk space on the leader for the upload: {need} bytes needed, {free} free")]
    NoSpace {
        /// Bytes needed.
        need: u64,
        /// Bytes free.
        free: u64,
    },
    /// The upload body broke off.
    #[error("the upload was interrupted after {0} bytes; nothing was kept, upload again")]
    Interrupted(u64),
    /// No bytes arrived for too long.
    #[error("the upload stalled: no bytes for {secs} s after {received} bytes; nothing was kept, upload again")]
    Stalled {
        /// The stall limit.
        secs: u64,
        /// Bytes received before it.
        received: u64,
    },
    /// Local I/O.
    #[error("I/O error on the leader: {0}")]
    Io(#[from] io::Error),
    /// Keys are trusted and the package is not signed by one of them.
    #[error("{0}")]
    Untrusted(#[from] common::package::signing::SigningError),
}

/// A verified image the leader can serve.
#[derive(Debug, Clone)]
pub struct Image {
    /// Where it is.
    pub path: PathBuf,
    /// Its `controller://` path.
    pub image_path: String,
    /// What verification found.
    pub info: PackageInfo,
    /// Its signature, as checked against the leader's trusted keys.
    pub trust: Trust,
}

type CacheKey = (PathBuf, fsutil::FileKey);

/// The leader's images.
#[derive(Debug)]
pub struct ImageStore {
    data_dir: PathBuf,
    pkgs: PathBuf,
    stall: std::time::Duration,
    verified: Mutex<HashMap<CacheKey, PackageInfo>>,
    by_sha: Mutex<HashMap<Sha256Digest, PathBuf>>,
    trusted: Vec<PublicKey>,
}

impl ImageStore {
    /// Opens `<data_dir>/upgrade_pkgs`, removing uploads a crash interrupted.
    /// An upload that receives nothing for `stall` is ended and deleted.
    pub fn open(data_dir: &Path, stall: std::time::Duration, trusted: Vec<PublicKey>) -> io::Result<Self> {
        let pkgs = data_dir.join("upgrade_pkgs");
        fs::create_dir_all(&pkgs)?;
        for e in fs::read_dir(&pkgs)? {
            let p = e?.path();
            if p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with(".upload-")) {
                let _ = fs::remove_file(p);
            }
        }
        Ok(Self {
            data_dir: data_dir.to_owned(),
            pkgs,
            stall,
            verified: Mutex::default(),
            by_sha: Mutex::default(),
            trusted,
        })
    }

    /// Resolves `controller://x/y` to `<data_dir>/x/y`, refusing paths that
    /// leave the data dir (by `..` or through a symlink).
    pub fn resolve(&self, image_path: &str) -> Result<PathBuf, ImageError> {
        let rest = image_path.strip_prefix(SCHEME).ok_or_else(|| {
            ImageError::BadPath(format!(
                "image_path {image_path:?} must be a controller:// path, for example controller://upgrade_pkgs/controller.pkg"
            ))
        })?;
        let rel = package::safe_relative(Path::new(rest)).filter(|r| !r.as_os_str().is_empty()).ok_or_else(|| {
            ImageError::BadPath(format!("image_path {image_path:?} leaves the controller's data directory"))
        })?;
        let path = self.data_dir.join(rel);
        let real = match fs::canonicalize(&path) {
            Ok(r) => r,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(ImageError::NotFound(image_path.to_owned())),
            Err(e) => return Err(e.into()),
        };
        let root = fs::canonicalize(&self.data_dir)?;
        if !real.starts_with(&root) {
            return Err(ImageError::BadPath(format!(
                "image_path {image_path:?} leads outside the controller's data directory"
            )));
        }
        if !real.is_file() {
            return Err(ImageError::BadPath(format!("image_path {image_path:?} is not a file")));
        }
        Ok(real)
    }

    /// Resolves and verifies an image (cached while the file is unchanged).
    pub async fn get(&self, image_path: &str) -> Result<Image, ImageError> {
        let path = self.resolve(image_path)?;
        self.get_at(path, image_path).await
    }

    /// The image `image_path` names, held in the file at `path` (on this
    /// controller: its upload, or its verified staged copy), verified once.
    pub async fn get_at(&self, path: PathBuf, image_path: &str) -> Result<Image, ImageError> {
        let key = (path.clone(), fsutil::FileKey::of(&path)?);
        let cached = self.verified.lock().expect("image lock").get(&key).cloned();
        let info = match cached {
            Some(info) => info,
            None => {
                let (p, trusted) = (path.clone(), self.trusted.clone());
                let info = tokio::task::spawn_blocking(move || {
                    package::verify_trusting(io::BufReader::with_capacity(1 << 20, fs::File::open(p)?), &trusted)
                })
                .await
                .map_err(|e| io::Error::other(e.to_string()))??;
                self.verified.lock().expect("image lock").insert(key, info.clone());
                info
            }
        };
        // Checked on every use: keys may have been trusted since the upload.
        let trust = signing::check(&info.manifest, &self.trusted)?;
        self.by_sha.lock().expect("image lock").insert(info.sha256, path.clone());
        Ok(Image { path, image_path: image_path.to_owned(), info, trust })
    }

    /// Whether any key is trusted (else signatures are not checked).
    pub fn checks_signatures(&self) -> bool {
        !self.trusted.is_empty()
    }

    /// The file holding a verified image, for `FetchImage`.
    pub fn path_of(&self, sha: &Sha256Digest) -> Option<PathBuf> {
        self.by_sha.lock().expect("image lock").get(sha).cloned()
    }

    /// The file holding `sha`, for this controller's own staging: verified
    /// already when the file is as it was when its digest was checked (same
    /// length and modification time), so it is not hashed again.
    pub fn local_copy(&self, sha: &Sha256Digest) -> Option<agent_core::follower::stage::LocalCopy> {
        let path = self.path_of(sha)?;
        let digest_verified = fsutil::FileKey::of(&path).is_ok_and(|k| {
            self.verified.lock().expect("image lock").get(&(path.clone(), k)).is_some_and(|info| info.sha256 == *sha)
        });
        Some(agent_core::follower::stage::LocalCopy { path, digest_verified })
    }

    /// What can be refused before reading a byte of an upload: the name, and
    /// a declared length the disk cannot hold.
    pub fn precheck_upload(&self, name: &str, expected_len: Option<u64>) -> Result<(), ImageError> {
        check_name(name)?;
        let free = fsutil::disk_free(&self.pkgs)?;
        if let Some(len) = expected_len
            && len.saturating_add(SPACE_RESERVE) > free
        {
            return Err(ImageError::NoSpace { need: len, free });
        }
        Ok(())
    }

    /// Streams an upload into `upgrade_pkgs/NAME`, verifying it on the way.
    /// On any failure nothing is kept and an existing file of that name is
    /// left as it was; a refusal stops reading at once.
    /// The caller keeps `body`: after a refusal it may read what the client
    /// still sends (and drop it) so that the client reads the answer.
    pub async fn upload<S, E>(&self, name: &str, expected_len: Option<u64>, body: &mut S) -> Result<Image, ImageError>
    where
        S: Stream<Item = Result<Bytes, E>> + Unpin,
        E: std::fmt::Display,
    {
        self.precheck_upload(name, expected_len)?;
        let tmp = self.pkgs.join(format!(".upload-{}", common::types::random_hex(6)));
        let result = self.receive(&tmp, body).await;
        let checked = result.and_then(|info| Ok((signing::check(&info.manifest, &self.trusted)?, info)));
        let (trust, info) = match checked {
            Ok(x) => x,
            Err(e) => {
                let _ = fs::remove_file(&tmp);
                return Err(e);
            }
        };
        let dst = self.pkgs.join(name);
        fs::rename(&tmp, &dst)?;
        fsutil::fsync_dir(&self.pkgs)?;
        let dst = fs::canonicalize(&dst)?;
        self.verified.lock().expect("image lock").insert((dst.clone(), fsutil::FileKey::of(&dst)?), info.clone());
        self.by_sha.lock().expect("image lock").insert(info.sha256, dst.clone());
        info!(name, sha = %info.sha256.short(), version = %info.manifest.version, "image uploaded");
        Ok(Image { path: dst, image_path: format!("{SCHEME}upgrade_pkgs/{name}"), info, trust })
    }

    async fn receive<S, E>(&self, tmp: &Path, body: &mut S) -> Result<PackageInfo, ImageError>
    where
        S: Stream<Item = Result<Bytes, E>> + Unpin,
        E: std::fmt::Display,
    {
        // 1 MiB batches (below): a few in flight are enough.
        let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(4);
        // Past the page cache (`fsutil::DirectAppend`), as staging writes:
        // on these machines filling the page cache is the upload's largest
        // cost (38 % of all samples in its profile). The leader serves the
        // image with direct reads too (`image_stream`): with direct writes
        // and page-cache reads, the cost had only moved to serving.
        let file = fsutil::DirectAppend::open(tmp)?;
        let pkgs = self.pkgs.clone();
        let trusted = self.trusted.clone();
        // The package is checked in the same pass that puts it on disk: this
        // thread verifies (hash, entries) while a thread of its own writes.
        // A refusal returns at once, which closes the channel and so stops
        // the reading below.
        let worker = tokio::task::spawn_blocking(move || -> Result<PackageInfo, ImageError> {
            let mut tee = TeeReader::new(rx, file, pkgs)?;
            // Signature first: an untrusted package is refused after its header.
            let verdict = package::verify_except_digest(&mut tee, &trusted);
            let closed = tee.closed;
            let (written, out_of_space, written_file) = tee.finish();
            if let Some(free) = out_of_space {
                return Err(ImageError::NoSpace { need: written + SPACE_RESERVE, free });
            }
            let checked = verdict?;
            if !closed {
                return Err(ImageError::Io(io::Error::other("upload ended before the body")));
            }
            let (file, digest) = written_file?;
            file.sync_all()?;
            Ok(checked.with_digest(digest))
        });
        let mut received = 0u64;
        let mut ended = None;
        // The body comes in the socket's pieces (tens of KiB); the threads
        // take it in 1 MiB batches, which costs one copy and saves most of
        // the per-piece hand-overs between threads.
        let mut batch = bytes::BytesMut::new();
        loop {
            match tokio::time::timeout(self.stall, body.next()).await {
                Err(_) => {
                    ended = Some(ImageError::Stalled { secs: self.stall.as_secs(), received });
                    break;
                }
                Ok(None) => break,
                Ok(Some(Ok(b))) => {
                    received += b.len() as u64;
                    let ready = if batch.is_empty() && b.len() >= UPLOAD_BATCH {
                        Some(b)
                    } else {
                        // Below a batch here: room for this piece, or up to a whole batch.
                        batch.reserve(b.len().max(UPLOAD_BATCH - batch.len()));
                        batch.extend_from_slice(&b);
                        (batch.len() >= UPLOAD_BATCH).then(|| batch.split().freeze())
                    };
                    if let Some(ready) = ready
                        && tx.send(ready).await.is_err()
                    {
                        break; // refused: the worker stopped reading
                    }
                }
                Ok(Some(Err(_))) => {
                    ended = Some(ImageError::Interrupted(received));
                    break;
                }
            }
        }
        // What arrived before the end (or a stall, or a break) is checked too.
        if !batch.is_empty() {
            let _ = tx.send(batch.freeze()).await;
        }
        drop(tx);
        let verdict = worker.await.map_err(|e| io::Error::other(e.to_string()))?;
        match (verdict, ended) {
            // A refusal found in what did arrive says more than the stall.
            (Err(ImageError::Package(PackageError::Truncated { .. }) | ImageError::Io(_)), Some(end)) => Err(end),
            (Err(e), _) => Err(e),
            (Ok(_), Some(end)) => Err(end),
            (Ok(info), None) => Ok(info),
        }
    }
}

fn check_name(name: &str) -> Result<(), ImageError> {
    let ok = !name.is_empty()
        && name.len() <= 128
        && !name.starts_with('.')
        && name.chars().all(|c| c.is_ascii_alphanumeric() || "._-".contains(c));
    if ok {
        Ok(())
    } else {
        Err(ImageError::BadPath(format!(
            "upload name {name:?} must be a plain file name (letters, digits, '.', '_', '-'), such as controller.pkg"
        )))
    }
}

/// Reads chunks from a channel, writing and hashing each as it passes (on a
/// thread of its own: the verifying thread hashes only the payload) and
/// watching the free space as it goes.
struct TeeReader {
    rx: tokio::sync::mpsc::Receiver<Bytes>,
    current: Bytes,
    closed: bool,
    pkgs: PathBuf,
    written: u64,
    next_space_check: u64,
    /// Set (to the free bytes) when the disk filled up.
    out_of_space: Option<u64>,
    to_writer: Option<std::sync::mpsc::SyncSender<Bytes>>,
    writer: Option<std::thread::JoinHandle<io::Result<(fs::File, Sha256Digest)>>>,
}

impl TeeReader {
    fn new(rx: tokio::sync::mpsc::Receiver<Bytes>, mut file: fsutil::DirectAppend, pkgs: PathBuf) -> io::Result<Self> {
        let (to_writer, chunks) = std::sync::mpsc::sync_channel::<Bytes>(4);
        let writer = std::thread::Builder::new().name("upload-write".into()).spawn(move || {
            use sha2::Digest;
            let mut hasher = sha2::Sha256::new();
            for b in chunks {
                file.write(&b)?;
                hasher.update(&b);
            }
            Ok((file.finish()?, Sha256Digest::from_bytes(hasher.finalize().into())))
        })?;
        Ok(Self {
            rx,
            current: Bytes::new(),
            closed: false,
            pkgs,
            written: 0,
            next_space_check: SPACE_CHECK_EVERY,
            out_of_space: None,
            to_writer: Some(to_writer),
            writer: Some(writer),
        })
    }

    /// Waits for the writer: the bytes handed to it, the free space if the
    /// disk filled up, and the file with the digest of all it holds (or the
    /// write's error).
    fn finish(mut self) -> (u64, Option<u64>, io::Result<(fs::File, Sha256Digest)>) {
        self.to_writer = None;
        let file = match self.writer.take().map(|w| w.join()) {
            Some(Ok(r)) => r,
            _ => Err(io::Error::other("the upload's writer thread failed")),
        };
        if let Err(e) = &file
            && e.kind() == io::ErrorKind::StorageFull
        {
            self.out_of_space.get_or_insert(fsutil::disk_free(&self.pkgs).unwrap_or(0));
        }
        (self.written, self.out_of_space, file)
    }

    fn write(&mut self, b: &Bytes) -> io::Result<()> {
        let full = |free| io::Error::new(io::ErrorKind::StorageFull, format!("the disk is full ({free} bytes free)"));
        if self.written + b.len() as u64 >= self.next_space_check {
            self.next_space_check = self.written + SPACE_CHECK_EVERY;
            let free = fsutil::disk_free(&self.pkgs)?;
            if free < SPACE_RESERVE + b.len() as u64 {
                self.out_of_space = Some(free);
                return Err(full(free));
            }
        }
        // A writer that stopped (its write failed) says why in `finish`.
        let sent = self.to_writer.as_ref().is_some_and(|w| w.send(b.clone()).is_ok());
        if !sent {
            return Err(io::Error::other("writing the upload failed"));
        }
        self.written += b.len() as u64;
        Ok(())
    }
}

impl Read for TeeReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.current.is_empty() {
            match self.rx.blocking_recv() {
                Some(b) => {
                    self.write(&b)?;
                    self.current = b;
                }
                None => {
                    self.closed = true;
                    return Ok(0);
                }
            }
        }
        let n = buf.len().min(self.current.len());
        buf[..n].copy_from_slice(&self.current.split_to(n));
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use std::{
        sync::{
            Arc,
            atomic::{AtomicU64, Ordering},
        },
        time::Duration,
    };

    use super::*;

    /// A body of `chunks` chunks of 1 MiB, the first starting with `head`;
    /// counts how many chunks were pulled.
    fn body(head: &'static [u8], chunks: u64, pulled: Arc<AtomicU64>) -> impl Stream<Item = Result<Bytes, io::Error>> {
        futures_util::stream::iter(0..chunks).map(move |i| {
            pulled.fetch_add(1, Ordering::Relaxed);
            let mut b = vec![0u8; 1 << 20];
            if i == 0 {
                b[..head.len()].copy_from_slice(head);
            }
            Ok(Bytes::from(b))
        })
    }

    fn leftovers(dir: &Path) -> Vec<String> {
        fs::read_dir(dir.join("upgrade_pkgs"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into())
            .collect()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_refused_upload_stops_reading_at_once_and_keeps_nothing() {
        let d = tempfile::tempdir().unwrap();
        let store = ImageStore::open(d.path(), Duration::from_secs(60), vec![]).unwrap();
        let pulled = Arc::new(AtomicU64::new(0));
        let err =
            store.upload("x.pkg", None, &mut Box::pin(body(b"NOTAPKG!", 1000, pulled.clone()))).await.unwrap_err();
        assert!(matches!(err, ImageError::Package(PackageError::NotAPackage)), "{err}");
        // Refused after 8 bytes: at most the channel's worth was read, not 1000 MiB.
        assert!(pulled.load(Ordering::Relaxed) < 40, "read {} MiB after the refusal", pulled.load(Ordering::Relaxed));
        assert!(leftovers(d.path()).is_empty(), "{:?}", leftovers(d.path()));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_stalled_upload_ends_and_is_deleted() {
        let d = tempfile::tempdir().unwrap();
        let store = ImageStore::open(d.path(), Duration::from_millis(300), vec![]).unwrap();
        // A header announcing a 4 KiB manifest, then nothing.
        let first = futures_util::stream::once(async { Ok::<_, io::Error>(Bytes::from_static(b"MOLTPKG1\0\0\x10\0")) });
        let stalled = first.chain(futures_util::stream::pending());
        let err = store.upload("x.pkg", None, &mut Box::pin(stalled)).await.unwrap_err();
        assert!(matches!(err, ImageError::Stalled { received: 12, .. }), "{err}");
        assert!(err.to_string().contains("no bytes for"), "{err}");
        assert!(leftovers(d.path()).is_empty(), "{:?}", leftovers(d.path()));
    }

    #[test]
    fn stale_partial_uploads_are_swept_at_start() {
        let d = tempfile::tempdir().unwrap();
        fs::create_dir_all(d.path().join("upgrade_pkgs")).unwrap();
        fs::write(d.path().join("upgrade_pkgs/.upload-abc123"), b"half").unwrap();
        fs::write(d.path().join("upgrade_pkgs/kept.pkg"), b"x").unwrap();
        ImageStore::open(d.path(), Duration::from_secs(60), vec![]).unwrap();
        assert_eq!(leftovers(d.path()), vec!["kept.pkg".to_string()]);
    }
}
