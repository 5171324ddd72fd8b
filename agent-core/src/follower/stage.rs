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
    DeploymentKind, Sha256Digest, Version, fsutil, package,
    session::{ImageRef, StagedImage, Transfer},
    stripe::Stripe,
};
use futures_util::{Stream, StreamExt};
use sha2::{Digest, Sha256};
use tracing::{info, warn};

use crate::image_stream::Growth;

pub use common::package::DISK_MARGIN;
/// Consecutive failed attempts without progress before staging gives up.
const MAX_ATTEMPTS: u32 = 8;
/// How far past the first missing byte a stripe may run ahead: bytes
/// received out of order wait in memory, at most this many.
const REORDER_WINDOW: u64 = 32 << 20;

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

    /// Streams `stripe` of `sha` from its first byte at or after `offset`
    /// to the image's end.
    fn fetch(
        &self,
        sha: Sha256Digest,
        offset: u64,
        stripe: Stripe,
    ) -> futures_util::future::BoxFuture<'_, Result<ChunkStream, FetchError>>;
}

/// Why a fetch did not start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FetchError {
    /// The leader cuts this image into this many stripes: fetch those.
    Restripe(u32),
    /// The source could not be reached or refused; why.
    Failed(String),
}

/// The chunks of an image received but not yet in its `.part` file (ahead
/// of the bytes written in order, or on their way to the writer): a relay
/// serves them from here at once, so a stripe flows on through a relay
/// without waiting for the relay's other stripes.
#[derive(Debug, Default)]
pub struct Arrived(Mutex<BTreeMap<u64, Bytes>>);

impl Arrived {
    fn insert(&self, offset: u64, data: Bytes) {
        self.0.lock().expect("arrived lock").insert(offset, data);
    }

    /// Forgets the chunks that are in the file now: those wholly below `end`.
    fn written(&self, end: u64) {
        let mut m = self.0.lock().expect("arrived lock");
        while let Some(e) = m.first_entry() {
            if *e.key() + e.get().len() as u64 > end {
                break;
            }
            e.remove();
        }
    }

    /// At most `max` bytes from `pos`, if they arrived and are not in the file yet.
    pub fn get(&self, pos: u64, max: usize) -> Option<Bytes> {
        let m = self.0.lock().expect("arrived lock");
        let (at, data) = m.range(..=pos).next_back()?;
        let from = (pos - at) as usize;
        (from < data.len()).then(|| data.slice(from..data.len().min(from + max)))
    }
}

/// A copy of an image a node can serve to another.
pub struct RelaySource {
    /// The open file.
    pub file: File,
    /// The image's size.
    pub size: u64,
    /// Where a copy still arriving stands (none: whole).
    pub growth: Option<Box<dyn Fn() -> Growth + Send>>,
    /// For a copy still arriving: its chunks not yet in the file.
    pub arrived: Option<Arc<Arrived>>,
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
    /// The chunks of each transfer not yet in its file.
    arrived: HashMap<Sha256Digest, Arc<Arrived>>,
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
    /// Opens `data_dir/staging`, listing the images already verified there;
    /// signatures are not checked.
    pub fn open(data_dir: &Path, kind: DeploymentKind) -> Result<Self, StageError> {
        Self::open_trusting(data_dir, kind, Vec::new())
    }

    /// Opens `data_dir/staging` for a node that stages only packages signed
    /// by one of `trusted` (none: signatures are not checked). An image
    /// staged before is checked again against these keys: one staged while
    /// the node trusted other keys, or none, is deleted, not offered.
    pub fn open_trusting(
        data_dir: &Path,
        kind: DeploymentKind,
        trusted: Vec<package::signing::PublicKey>,
    ) -> Result<Self, StageError> {
        let dir = data_dir.join("staging");
        fs::create_dir_all(&dir).map_err(io_err(&dir))?;
        let mut state = State::default();
        for e in fs::read_dir(&dir).map_err(io_err(&dir))? {
            let path = e.map_err(io_err(&dir))?.path();
            let Some(sha) = staged_sha(&path) else { continue };
            let meta = fs::metadata(&path).map_err(io_err(&path))?;
            let manifest = File::open(&path)
                .map_err(|e| e.to_string())
                .and_then(|f| package::read_manifest(std::io::BufReader::new(f)).map_err(|e| e.to_string()));
            match manifest.and_then(|m| package::signing::check(&m, &trusted).map(|_| m).map_err(|e| e.to_string())) {
                Ok(m) => {
                    state.staged.insert(sha, StagedImage { sha256: sha, version: m.version, size: meta.len() });
                }
                Err(e) => {
                    warn!(path = %path.display(), error = %e, "deleting a staged image this node does not accept");
                    fs::remove_file(&path).map_err(io_err(&path))?;
                }
            }
        }
        Ok(Self { dir, kind, state: Arc::new(Mutex::new(state)), trusted: Arc::new(trusted) })
    }

    /// The keys this node's packages must be signed by (none: not checked).
    pub fn trusted_keys(&self) -> &[package::signing::PublicKey] {
        &self.trusted
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
        let (path, size, growing, arrived) = {
            let s = self.state.lock().expect("stager lock");
            if let Some(st) = s.staged.get(sha) {
                (self.final_path(sha), st.size, false, None)
            } else {
                (self.part_path(sha), s.transfers.get(sha)?.total, true, s.arrived.get(sha).cloned())
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
        Some(RelaySource { file, size, growth, arrived })
    }

    /// Deletes every staged image whose version is not in `keep` (the
    /// running version, the previous slot's, the one just staged): staging
    /// holds what a node may still install or return to, nothing more. A
    /// relay already reading a deleted image reads on (the file stays open);
    /// a new fetch of it goes to another source. Returns what was deleted.
    pub fn prune(&self, keep: &[Version]) -> Vec<StagedImage> {
        let gone: Vec<StagedImage> = {
            let mut s = self.state.lock().expect("stager lock");
            let drop: Vec<Sha256Digest> =
                s.staged.values().filter(|i| !keep.contains(&i.version)).map(|i| i.sha256).collect();
            drop.iter().filter_map(|sha| s.staged.remove(sha)).collect()
        };
        for image in &gone {
            let path = self.final_path(&image.sha256);
            match fs::remove_file(&path) {
                Ok(()) => info!(sha = %image.sha256.short(), version = %image.version, "staged image pruned"),
                Err(e) => warn!(path = %path.display(), error = %e, "cannot delete a pruned staged image"),
            }
        }
        gone
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
                let mut state = self.state.lock().expect("stager lock");
                state.transfers.remove(&image.sha256);
                state.arrived.remove(&image.sha256);
                drop(state);
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
        state.arrived.remove(&image.sha256);
        state.staged.insert(image.sha256, staged.clone());
        drop(state);
        info!(sha = %image.sha256.short(), version = %image.version, "image staged");
        Ok(staged)
    }

    /// Receives the image into `part`: as one stream, or as the stripes the
    /// leader cuts it into, one stream each at once. Bytes are written and
    /// hashed in order whatever order they arrive in (a stripe ahead of the
    /// others waits, at most [`REORDER_WINDOW`] ahead), so the `.part` file
    /// is always a prefix of the image and a resume starts at its end.
    async fn receive(
        &self,
        image: &ImageRef,
        source: &dyn ImageSource,
        part: &Path,
    ) -> Result<StagedImage, StageError> {
        let start = resume_offset(part, image.size).map_err(io_err(part))?;
        let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(8);
        let writer_part = part.to_owned();
        let arrived = Arc::new(Arrived::default());
        self.state.lock().expect("stager lock").arrived.insert(image.sha256, arrived.clone());
        let in_file = arrived.clone();
        // Hashing and writing run on their own thread, away from the socket reader.
        let writer = tokio::task::spawn_blocking(move || write_and_hash(&writer_part, start, rx, &in_file));
        let mut front = start;
        self.progress(image, front);
        let mut stripes = 1;
        let mut restripes = 0;
        let received = loop {
            match self.receive_stripes(image, source, stripes, &mut front, &tx, &arrived).await {
                Ok(()) => break Ok(()),
                Err(LanesEnd::Restripe(k)) if restripes < MAX_ATTEMPTS => {
                    restripes += 1;
                    info!(sha = %image.sha256.short(), stripes = k, offset = front, "fetching the image in stripes");
                    stripes = k;
                }
                Err(LanesEnd::Restripe(k)) => {
                    break Err(StageError::Transfer(format!("the leader kept changing its stripes (now {k})")));
                }
                Err(LanesEnd::Failed(e)) => break Err(e),
            }
        };
        drop(tx);
        let written = writer.await.map_err(|e| StageError::Protocol(format!("writer thread failed: {e}")))?;
        received?;
        let (digest, mut file) = written.map_err(io_err(part))?;
        if digest != image.sha256 {
            return Err(StageError::DigestMismatch { expected: image.sha256, actual: digest });
        }
        file.seek(SeekFrom::Start(0)).map_err(io_err(part))?;
        self.finish(image, part, file)
    }

    /// Receives `count` stripes from `front` on, one lane each, handing the
    /// bytes to the writer in order; `front` follows what the writer has.
    async fn receive_stripes(
        &self,
        image: &ImageRef,
        source: &dyn ImageSource,
        count: u32,
        front: &mut u64,
        writer: &tokio::sync::mpsc::Sender<Bytes>,
        arrived: &Arrived,
    ) -> Result<(), LanesEnd> {
        let (front_tx, front_rx) = tokio::sync::watch::channel(*front);
        let (chunks_tx, mut chunks) = tokio::sync::mpsc::channel::<Chunk>(4 * count as usize);
        let lanes = futures_util::future::try_join_all(
            Stripe::all(count).map(|s| self.lane(image, source, s, *front, chunks_tx.clone(), front_rx.clone())),
        );
        drop(chunks_tx);
        // `arrived` is the reorder buffer too: a chunk stays there, for
        // relays, until the writer has put it in the file.
        let merge = async {
            while *front < image.size {
                let Some(c) = chunks.recv().await else {
                    return Err(LanesEnd::Failed(StageError::Protocol(format!(
                        "every stripe ended, the image stops at byte {front}"
                    ))));
                };
                arrived.insert(c.offset, c.data);
                while let Some(data) = arrived.get(*front, usize::MAX) {
                    *front += data.len() as u64;
                    writer
                        .send(data)
                        .await
                        .map_err(|_| LanesEnd::Failed(StageError::Protocol("the writer thread stopped".into())))?;
                }
                self.progress(image, *front);
                front_tx.send_replace(*front);
            }
            Ok(())
        };
        futures_util::future::try_join(lanes, merge).await.map(|_| ())
    }

    /// One stripe, from `from` to the image's end: fetch, pass each chunk
    /// on once it is within the window, resume from the next byte when the
    /// stream breaks.
    async fn lane(
        &self,
        image: &ImageRef,
        source: &dyn ImageSource,
        stripe: Stripe,
        from: u64,
        out: tokio::sync::mpsc::Sender<Chunk>,
        mut front: tokio::sync::watch::Receiver<u64>,
    ) -> Result<(), LanesEnd> {
        let mut next = stripe.next_byte(from);
        let mut failures = 0u32;
        let mut last_error = String::new();
        while next < image.size {
            if failures >= MAX_ATTEMPTS {
                return Err(LanesEnd::Failed(StageError::Transfer(last_error)));
            }
            let stream = match source.fetch(image.sha256, next, stripe).await {
                Ok(s) => s,
                Err(FetchError::Restripe(k)) => return Err(LanesEnd::Restripe(k)),
                Err(FetchError::Failed(e)) => {
                    failures += 1;
                    last_error = e;
                    backoff(failures).await;
                    continue;
                }
            };
            let before = next;
            match pump(image.size, stripe, stream, &mut next, &out, &mut front).await {
                Ok(()) if next >= image.size => break,
                Ok(()) => last_error = format!("stream ended at byte {next} of {}", image.size),
                Err(StreamFault::Transport(e)) => last_error = e,
                Err(StreamFault::Fatal(e)) => return Err(LanesEnd::Failed(e)),
            }
            if next > before {
                failures = 0;
            }
            failures += 1;
            warn!(sha = %image.sha256.short(), %stripe, offset = next, error = %last_error, "transfer interrupted; resuming");
            backoff(failures).await;
        }
        Ok(())
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

/// How a set of lanes ended other than with the whole image.
enum LanesEnd {
    /// The leader cuts the image into this many stripes.
    Restripe(u32),
    /// Staging failed.
    Failed(StageError),
}

/// Passes one stream's chunks of `stripe` on, each at the byte expected
/// next (`next`) and within the window ahead of `front`.
async fn pump(
    size: u64,
    stripe: Stripe,
    mut stream: ChunkStream,
    next: &mut u64,
    out: &tokio::sync::mpsc::Sender<Chunk>,
    front: &mut tokio::sync::watch::Receiver<u64>,
) -> Result<(), StreamFault> {
    let fatal = |why: String| StreamFault::Fatal(StageError::Protocol(why));
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(StreamFault::Transport)?;
        if chunk.offset != *next {
            return Err(fatal(format!("chunk at offset {} where {} was expected", chunk.offset, next)));
        }
        let end = *next + chunk.data.len() as u64;
        if end > size {
            return Err(fatal(format!("the stream runs past the announced size {size}")));
        }
        if end > stripe.run_end(*next) {
            return Err(fatal(format!("a chunk at {} runs past the end of its {stripe}", chunk.offset)));
        }
        while chunk.offset >= *front.borrow_and_update() + REORDER_WINDOW {
            front.changed().await.map_err(|_| fatal("the receiver stopped".into()))?;
        }
        out.send(chunk).await.map_err(|_| fatal("the receiver stopped".into()))?;
        *next = stripe.after(end);
    }
    Ok(())
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
    arrived: &Arrived,
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
    let mut appended = existing;
    while let Some(data) = rx.blocking_recv() {
        if let Err(e) = file.write(&data) {
            result = Err(e);
            break;
        }
        appended += data.len() as u64;
        arrived.written(appended - file.gathered() as u64);
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
