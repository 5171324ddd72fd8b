//! Staging: receive an image from the leader into `staging/`, hashing as it
//! arrives, and keep it only when its SHA-256 matches.
//!
//! `staging/<sha256>.part` grows as bytes arrive; a broken stream is resumed
//! from its end (the bytes already there are re-hashed once after a restart,
//! never fetched again). When the last byte is in, the file is fsynced,
//! its digest and manifest checked, and it is renamed to `<sha256>.pkg`.
//! A digest or manifest mismatch deletes the partial file: nothing half-staged
//! remains.

use std::{
    collections::{BTreeMap, HashMap},
    fs::{self, File, OpenOptions},
    io::{Read, Seek, SeekFrom},
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::Duration,
};

use bytes::Bytes;
use common::{
    DeploymentKind, Sha256Digest, fsutil, package,
    session::{ImageRef, StagedImage, Transfer},
};
use futures_util::{Stream, StreamExt};
use sha2::{Digest, Sha256};
use tracing::{info, warn};

use crate::image_stream::Growth;

/// Free space kept beyond what an image needs.
pub const DISK_MARGIN: u64 = 16 << 20;
/// Consecutive failed attempts without progress before staging gives up.
const MAX_ATTEMPTS: u32 = 8;

/// Why an image could not be staged. Nothing is left half-staged.
#[derive(Debug, thiserror::Error)]
pub enum StageError {
    /// The image is for another deployment kind.
    #[error("image {sha} is a {image} package but this node is deployed as {node}; upload the {node} package ({file})")]
    KindMismatch {
        /// The image.
        sha: String,
        /// Its kind.
        image: DeploymentKind,
        /// The node's kind.
        node: DeploymentKind,
        /// The package file to use.
        file: &'static str,
    },
    /// Not enough disk.
    #[error("not enough disk space in {dir}: the image needs {need} bytes, {free} are free; free space and retry")]
    NoSpace {
        /// The staging dir.
        dir: String,
        /// Bytes needed.
        need: u64,
        /// Bytes free.
        free: u64,
    },
    /// The bytes do not hash to the expected digest.
    #[error(
        "image digest mismatch: expected {expected}, received bytes hash to {actual}; the partial copy was deleted"
    )]
    DigestMismatch {
        /// Expected.
        expected: Sha256Digest,
        /// Actual.
        actual: Sha256Digest,
    },
    /// The leader sent more or other bytes than announced.
    #[error("the leader's stream is inconsistent: {0}")]
    Protocol(String),
    /// The received file is not the package the leader described.
    #[error("received image is not the announced package: {0}")]
    Package(String),
    /// The transfer kept failing.
    #[error("transfer from the leader failed {MAX_ATTEMPTS} times in a row, last: {0}")]
    Transfer(String),
    /// Local I/O failure.
    #[error("staging I/O error on {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The error.
        source: std::io::Error,
    },
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> StageError + '_ {
    move |source| StageError::Io { path: path.display().to_string(), source }
}

/// A chunk of an image at an offset.
#[derive(Debug)]
pub struct Chunk {
    /// Where the chunk starts.
    pub offset: u64,
    /// Its bytes.
    pub data: Bytes,
}

/// A file on this node that holds an image already (the leader's own store).
#[derive(Debug, Clone)]
pub struct LocalCopy {
    /// The file.
    pub path: PathBuf,
    /// Its SHA-256 was verified by this process for the file as it is now
    /// (same inode, length and modification time): staging does not hash it again.
    pub digest_verified: bool,
}

/// Where images come from (the leader, over `FetchImage`).
pub trait ImageSource: Send + Sync + 'static {
    /// A file on this node that holds `sha` already (the leader's own
    /// image store); staging links it instead of fetching it.
    fn local_copy(&self, _sha: &Sha256Digest) -> Option<LocalCopy> {
        None
    }

    /// Streams `sha` from `offset` to its end.
    fn fetch(&self, sha: Sha256Digest, offset: u64)
    -> futures_util::future::BoxFuture<'_, Result<ChunkStream, String>>;
}

/// A copy of an image a node can serve to another.
pub struct RelaySource {
    /// The open file.
    pub file: File,
    /// The image's size.
    pub size: u64,
    /// Where a copy still arriving stands (none: whole).
    pub growth: Option<Box<dyn Fn() -> Growth + Send>>,
}

impl std::fmt::Debug for RelaySource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RelaySource").field("size", &self.size).field("growing", &self.growth.is_some()).finish()
    }
}

/// A stream of chunks or transport errors.
pub type ChunkStream = std::pin::Pin<Box<dyn Stream<Item = Result<Chunk, String>> + Send>>;

#[derive(Debug, Default)]
struct State {
    staged: BTreeMap<Sha256Digest, StagedImage>,
    transfers: HashMap<Sha256Digest, Transfer>,
    /// One staging per digest at a time: a second waits for the first.
    busy: HashMap<Sha256Digest, Arc<tokio::sync::Mutex<()>>>,
}

/// A node's staging area.
#[derive(Debug, Clone)]
pub struct Stager {
    dir: PathBuf,
    kind: DeploymentKind,
    state: Arc<Mutex<State>>,
    /// Keys whose signatures this node trusts (none: not checked).
    trusted: Arc<Vec<package::signing::PublicKey>>,
}

impl Stager {
    /// Opens `data_dir/staging`, listing the images already verified there.
    pub fn open(data_dir: &Path, kind: DeploymentKind) -> Result<Self, StageError> {
        let dir = data_dir.join("staging");
        fs::create_dir_all(&dir).map_err(io_err(&dir))?;
        let mut state = State::default();
        for e in fs::read_dir(&dir).map_err(io_err(&dir))? {
            let path = e.map_err(io_err(&dir))?.path();
            let Some(sha) = staged_sha(&path) else { continue };
            let meta = fs::metadata(&path).map_err(io_err(&path))?;
            match File::open(&path)
                .map_err(|e| e.to_string())
                .and_then(|f| package::read_manifest(std::io::BufReader::new(f)).map_err(|e| e.to_string()))
            {
                Ok(m) => {
                    state.staged.insert(sha, StagedImage { sha256: sha, version: m.version, size: meta.len() });
                }
                Err(e) => warn!(path = %path.display(), error = %e, "ignoring unreadable staged image"),
            }
        }
        Ok(Self { dir, kind, state: Arc::new(Mutex::new(state)), trusted: Arc::default() })
    }

    /// Stages only packages signed by one of `keys` (none: signatures are not checked).
    pub fn with_trusted_keys(mut self, keys: Vec<package::signing::PublicKey>) -> Self {
        self.trusted = Arc::new(keys);
        self
    }

    /// Images verified and kept.
    pub fn staged(&self) -> Vec<StagedImage> {
        self.state.lock().expect("stager lock").staged.values().cloned().collect()
    }

    /// Transfers in progress.
    pub fn transfers(&self) -> Vec<Transfer> {
        self.state.lock().expect("stager lock").transfers.values().cloned().collect()
    }

    /// The path of a staged image, if it is staged.
    pub fn path_of(&self, sha: &Sha256Digest) -> Option<PathBuf> {
        self.state.lock().expect("stager lock").staged.contains_key(sha).then(|| self.final_path(sha))
    }

    /// The copy of `sha` this node can relay: staged, or still arriving
    /// (then with a way to tell whether it still grows). Opened here, so a
    /// transfer that ends in a rename meanwhile does not matter.
    pub fn relay_source(&self, sha: &Sha256Digest) -> Option<RelaySource> {
        let (path, size, growing) = {
            let s = self.state.lock().expect("stager lock");
            if let Some(st) = s.staged.get(sha) {
                (self.final_path(sha), st.size, false)
            } else {
                (self.part_path(sha), s.transfers.get(sha)?.total, true)
            }
        };
        let file = File::open(&path).or_else(|_| File::open(self.final_path(sha))).ok()?;
        let growth: Option<Box<dyn Fn() -> Growth + Send>> = growing.then(|| {
            let (state, sha) = (self.state.clone(), *sha);
            Box::new(move || {
                let s = state.lock().expect("stager lock");
                if s.staged.contains_key(&sha) {
                    Growth::Done
                } else if s.transfers.contains_key(&sha) {
                    Growth::Growing
                } else {
                    Growth::Stopped("the relay is no longer receiving the image".into())
                }
            }) as Box<dyn Fn() -> Growth + Send>
        });
        Some(RelaySource { file, size, growth })
    }

    fn final_path(&self, sha: &Sha256Digest) -> PathBuf {
        self.dir.join(format!("{sha}.pkg"))
    }

    fn part_path(&self, sha: &Sha256Digest) -> PathBuf {
        self.dir.join(format!("{sha}.part"))
    }

    /// Checks that the image can be staged here, changing nothing.
    pub fn precheck(&self, image: &ImageRef) -> Result<(), StageError> {
        if image.kind != self.kind {
            return Err(StageError::KindMismatch {
                sha: image.sha256.short(),
                image: image.kind,
                node: self.kind,
                file: self.kind.package_file_name(),
            });
        }
        let have = fs::metadata(self.part_path(&image.sha256)).map(|m| m.len()).unwrap_or(0).min(image.size);
        let need = image.size - have + DISK_MARGIN;
        let free = fsutil::disk_free(&self.dir).map_err(io_err(&self.dir))?;
        if free < need {
            return Err(StageError::NoSpace { dir: self.dir.display().to_string(), need, free });
        }
        Ok(())
    }

    /// Stages `image` from `source`; returns at once if it is already staged.
    /// Two stagings of one image (a prestage and an upgrade) never write the
    /// same `.part` together: the second waits for the first, then finds the
    /// image staged (or resumes what the first left).
    pub async fn stage(&self, image: &ImageRef, source: &dyn ImageSource) -> Result<StagedImage, StageError> {
        let busy = self.state.lock().expect("stager lock").busy.entry(image.sha256).or_default().clone();
        let _one_at_a_time = busy.lock().await;
        if let Some(s) = self.state.lock().expect("stager lock").staged.get(&image.sha256) {
            return Ok(s.clone());
        }
        self.precheck(image)?;
        let part = self.part_path(&image.sha256);
        let result = match source.local_copy(&image.sha256) {
            Some(local) => self.adopt(image, &local, &part).await,
            None => self.receive(image, source, &part).await,
        };
        let staged = match result {
            Ok(s) => s,
            Err(e) => {
                self.state.lock().expect("stager lock").transfers.remove(&image.sha256);
                // Keep a partial file only when it can be resumed.
                if !matches!(e, StageError::Transfer(_)) {
                    let _ = fs::remove_file(&part);
                }
                return Err(e);
            }
        };
        // In one step: a relay reading the copy sees it arriving, then whole.
        let mut state = self.state.lock().expect("stager lock");
        state.transfers.remove(&image.sha256);
        state.staged.insert(image.sha256, staged.clone());
        drop(state);
        info!(sha = %image.sha256.short(), version = %image.version, "image staged");
        Ok(staged)
    }

    async fn receive(
        &self,
        image: &ImageRef,
        source: &dyn ImageSource,
        part: &Path,
    ) -> Result<StagedImage, StageError> {
        let size = image.size;
        let start = resume_offset(part, size).map_err(io_err(part))?;
        let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(8);
        let writer_part = part.to_owned();
        // Hashing and writing run on their own thread, away from the socket reader.
        let writer = tokio::task::spawn_blocking(move || write_and_hash(&writer_part, start, rx));
        let mut offset = start;
        self.progress(image, offset);
        let mut failures = 0u32;
        let mut last_error = String::new();
        while offset < size {
            if failures >= MAX_ATTEMPTS {
                drop(tx);
                let _ = writer.await;
                return Err(StageError::Transfer(last_error));
            }
            let stream = match source.fetch(image.sha256, offset).await {
                Ok(s) => s,
                Err(e) => {
                    failures += 1;
                    last_error = e;
                    backoff(failures).await;
                    continue;
                }
            };
            let before = offset;
            match self.pump(image, stream, &mut offset, &tx).await {
                Ok(()) if offset == size => break,
                Ok(()) => last_error = format!("stream ended at byte {offset} of {size}"),
                Err(StreamFault::Transport(e)) => last_error = e,
                Err(StreamFault::Fatal(e)) => {
                    drop(tx);
                    let _ = writer.await;
                    return Err(e);
                }
            }
            if offset > before {
                failures = 0;
            }
            failures += 1;
            warn!(sha = %image.sha256.short(), offset, error = %last_error, "transfer interrupted; resuming");
            backoff(failures).await;
        }
        drop(tx);
        let (digest, file) = writer
            .await
            .map_err(|e| StageError::Protocol(format!("writer thread failed: {e}")))?
            .map_err(io_err(part))?;
        if digest != image.sha256 {
            return Err(StageError::DigestMismatch { expected: image.sha256, actual: digest });
        }
        let mut file = file;
        file.seek(SeekFrom::Start(0)).map_err(io_err(part))?;
        self.finish(image, part, file)
    }

    /// Stages a file already on this node: hard link (copy across file
    /// systems), then the same digest and manifest checks as a transfer —
    /// the digest only if it was not verified already (a hard link is the
    /// same file; a copy is hashed).
    async fn adopt(&self, image: &ImageRef, local: &LocalCopy, part: &Path) -> Result<StagedImage, StageError> {
        let _ = fs::remove_file(part);
        let linked = fs::hard_link(&local.path, part).is_ok();
        if !linked {
            fs::copy(&local.path, part).map_err(io_err(part))?;
        }
        let p = part.to_owned();
        let (digest, size) = if linked && local.digest_verified {
            (image.sha256, fs::metadata(part).map_err(io_err(part))?.len())
        } else {
            tokio::task::spawn_blocking(move || package::hash_file(&p))
                .await
                .map_err(|e| StageError::Protocol(e.to_string()))?
                .map_err(io_err(part))?
        };
        if digest != image.sha256 || size != image.size {
            return Err(StageError::DigestMismatch { expected: image.sha256, actual: digest });
        }
        self.progress(image, size);
        self.finish(image, part, File::open(part).map_err(io_err(part))?)
    }

    /// Checks the manifest of a verified file and moves it into place.
    fn finish(&self, image: &ImageRef, part: &Path, file: File) -> Result<StagedImage, StageError> {
        let m =
            package::read_manifest(std::io::BufReader::new(file)).map_err(|e| StageError::Package(e.to_string()))?;
        if m.version != image.version || m.kind != image.kind {
            return Err(StageError::Package(format!(
                "it holds {} {}, the leader announced {} {}",
                m.kind, m.version, image.kind, image.version
            )));
        }
        // Before it counts as staged: only a trusted builder's package.
        package::signing::check(&m, &self.trusted).map_err(|e| StageError::Package(e.to_string()))?;
        let dst = self.final_path(&image.sha256);
        fs::rename(part, &dst).map_err(io_err(&dst))?;
        fsutil::fsync_dir(&self.dir).map_err(io_err(&self.dir))?;
        Ok(StagedImage { sha256: image.sha256, version: image.version, size: image.size })
    }

    async fn pump(
        &self,
        image: &ImageRef,
        mut stream: ChunkStream,
        offset: &mut u64,
        tx: &tokio::sync::mpsc::Sender<Bytes>,
    ) -> Result<(), StreamFault> {
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(StreamFault::Transport)?;
            if chunk.offset != *offset {
                return Err(StreamFault::Fatal(StageError::Protocol(format!(
                    "chunk at offset {} where {} was expected",
                    chunk.offset, offset
                ))));
            }
            let end = *offset + chunk.data.len() as u64;
            if end > image.size {
                return Err(StreamFault::Fatal(StageError::Protocol(format!(
                    "the stream runs past the announced size {}",
                    image.size
                ))));
            }
            tx.send(chunk.data)
                .await
                .map_err(|_| StreamFault::Fatal(StageError::Protocol("the writer thread stopped".into())))?;
            *offset = end;
            self.progress(image, end);
        }
        Ok(())
    }

    fn progress(&self, image: &ImageRef, received: u64) {
        self.state
            .lock()
            .expect("stager lock")
            .transfers
            .insert(image.sha256, Transfer { sha256: image.sha256, received, total: image.size });
    }
}

enum StreamFault {
    Transport(String),
    Fatal(StageError),
}

async fn backoff(failures: u32) {
    let ms = 100u64.saturating_mul(1 << failures.min(6)).min(3_000);
    tokio::time::sleep(Duration::from_millis(ms)).await;
}

fn staged_sha(path: &Path) -> Option<Sha256Digest> {
    let name = path.file_name()?.to_str()?;
    name.strip_suffix(".pkg")?.parse().ok()
}

/// Where a resumed transfer starts: the partial file's length, cut back to
/// a whole number of blocks (the writer's direct I/O writes whole blocks at
/// block offsets), or to nothing if it is somehow longer than the image.
fn resume_offset(part: &Path, size: u64) -> std::io::Result<u64> {
    match fs::metadata(part) {
        Ok(m) if m.len() <= size => {
            let whole = m.len() - m.len() % fsutil::DIRECT_ALIGN as u64;
            if whole != m.len() {
                OpenOptions::new().write(true).open(part)?.set_len(whole)?;
            }
            Ok(whole)
        }
        Ok(_) => {
            OpenOptions::new().write(true).open(part)?.set_len(0)?;
            Ok(0)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(0),
        Err(e) => Err(e),
    }
}

/// The writer thread: appends every chunk, and hands it to a hasher thread
/// of its own (the two copies overlap: the page cache's and SHA-256's), which
/// first re-hashes what a previous attempt left. At the end it fsyncs and
/// returns the digest.
fn write_and_hash(
    part: &Path,
    existing: u64,
    mut rx: tokio::sync::mpsc::Receiver<Bytes>,
) -> std::io::Result<(Sha256Digest, File)> {
    let mut file = fsutil::DirectAppend::open(part)?;
    let (to_hasher, chunks) = std::sync::mpsc::sync_channel::<Bytes>(8);
    let prefix = part.to_owned();
    let hasher =
        std::thread::Builder::new().name("stage-hash".into()).spawn(move || -> std::io::Result<Sha256Digest> {
            let mut hasher = Sha256::new();
            if existing > 0 {
                let mut r = File::open(prefix)?.take(existing);
                let mut buf = vec![0u8; 1 << 20];
                loop {
                    let n = r.read(&mut buf)?;
                    if n == 0 {
                        break;
                    }
                    hasher.update(&buf[..n]);
                }
            }
            for data in chunks {
                hasher.update(&data);
            }
            Ok(Sha256Digest::from_bytes(hasher.finalize().into()))
        })?;
    let mut result = Ok(());
    while let Some(data) = rx.blocking_recv() {
        if let Err(e) = file.write(&data) {
            result = Err(e);
            break;
        }
        if to_hasher.send(data).is_err() {
            break;
        }
    }
    drop(to_hasher);
    let digest = hasher.join().map_err(|_| std::io::Error::other("the hasher thread panicked"))?;
    result?;
    let file = file.finish()?;
    Ok((digest?, file))
}

#[cfg(test)]
mod tests;
