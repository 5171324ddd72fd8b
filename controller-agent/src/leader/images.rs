//! Images on the leader: `<data_dir>/upgrade_pkgs/`, addressed as
//! `controller://upgrade_pkgs/NAME`. An upload is verified while it streams
//! to disk (never held in memory, never read a second time); a file placed by
//! hand is verified once and the result cached by size and mtime.

use std::{
    collections::HashMap,
    fs,
    io::{self, Read, Write},
    path::{Path, PathBuf},
    sync::Mutex,
    time::SystemTime,
};

use bytes::Bytes;
use common::{
    Sha256Digest, fsutil,
    package::{self, PackageError, PackageInfo},
};
use futures_util::{Stream, StreamExt};
use tracing::info;

/// The pseudo-URI scheme for paths under the leader's data dir.
pub const SCHEME: &str = "controller://";

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
    /// Local I/O.
    #[error("I/O error on the leader: {0}")]
    Io(#[from] io::Error),
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
}

type CacheKey = (PathBuf, u64, Option<SystemTime>);

/// The leader's images.
#[derive(Debug)]
pub struct ImageStore {
    data_dir: PathBuf,
    pkgs: PathBuf,
    verified: Mutex<HashMap<CacheKey, PackageInfo>>,
    by_sha: Mutex<HashMap<Sha256Digest, PathBuf>>,
}

impl ImageStore {
    /// Opens `<data_dir>/upgrade_pkgs`, removing uploads a crash interrupted.
    pub fn open(data_dir: &Path) -> io::Result<Self> {
        let pkgs = data_dir.join("upgrade_pkgs");
        fs::create_dir_all(&pkgs)?;
        for e in fs::read_dir(&pkgs)? {
            let p = e?.path();
            if p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with(".upload-")) {
                let _ = fs::remove_file(p);
            }
        }
        Ok(Self { data_dir: data_dir.to_owned(), pkgs, verified: Mutex::default(), by_sha: Mutex::default() })
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
        let meta = fs::metadata(&path)?;
        let key = (path.clone(), meta.len(), meta.modified().ok());
        let cached = self.verified.lock().expect("image lock").get(&key).cloned();
        let info = match cached {
            Some(info) => info,
            None => {
                let p = path.clone();
                let info = tokio::task::spawn_blocking(move || {
                    package::verify(io::BufReader::with_capacity(1 << 20, fs::File::open(p)?))
                })
                .await
                .map_err(|e| io::Error::other(e.to_string()))??;
                self.verified.lock().expect("image lock").insert(key, info.clone());
                info
            }
        };
        self.by_sha.lock().expect("image lock").insert(info.sha256, path.clone());
        Ok(Image { path, image_path: image_path.to_owned(), info })
    }

    /// The file holding a verified image, for `FetchImage`.
    pub fn path_of(&self, sha: &Sha256Digest) -> Option<PathBuf> {
        self.by_sha.lock().expect("image lock").get(sha).cloned()
    }

    /// Streams an upload into `upgrade_pkgs/NAME`, verifying it on the way.
    /// On any failure nothing is kept and an existing file of that name is
    /// left as it was.
    pub async fn upload<S, E>(&self, name: &str, expected_len: Option<u64>, body: S) -> Result<Image, ImageError>
    where
        S: Stream<Item = Result<Bytes, E>> + Unpin,
        E: std::fmt::Display,
    {
        check_name(name)?;
        let free = fsutil::disk_free(&self.pkgs)?;
        if let Some(len) = expected_len
            && len + (16 << 20) > free
        {
            return Err(ImageError::NoSpace { need: len, free });
        }
        let tmp = self.pkgs.join(format!(".upload-{}", common::types::random_hex(6)));
        let result = self.receive(&tmp, body).await;
        let info = match result {
            Ok(info) => info,
            Err(e) => {
                let _ = fs::remove_file(&tmp);
                return Err(e);
            }
        };
        let dst = self.pkgs.join(name);
        fs::rename(&tmp, &dst)?;
        fsutil::fsync_dir(&self.pkgs)?;
        let meta = fs::metadata(&dst)?;
        let dst = fs::canonicalize(&dst)?;
        self.verified.lock().expect("image lock").insert((dst.clone(), meta.len(), meta.modified().ok()), info.clone());
        self.by_sha.lock().expect("image lock").insert(info.sha256, dst.clone());
        info!(name, sha = %info.sha256.short(), version = %info.manifest.version, "image uploaded");
        Ok(Image { path: dst, image_path: format!("{SCHEME}upgrade_pkgs/{name}"), info })
    }

    async fn receive<S, E>(&self, tmp: &Path, mut body: S) -> Result<PackageInfo, ImageError>
    where
        S: Stream<Item = Result<Bytes, E>> + Unpin,
        E: std::fmt::Display,
    {
        let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(16);
        let file = fs::File::create(tmp)?;
        // One thread writes and verifies: the package is checked in the same
        // pass that puts it on disk.
        let worker = tokio::task::spawn_blocking(move || -> Result<PackageInfo, ImageError> {
            let mut tee = TeeReader { rx, current: Bytes::new(), file, closed: false };
            let verdict = package::verify(&mut tee);
            // Whatever the verdict, the stream must be drained so the sender never blocks.
            let drained = io::copy(&mut tee, &mut io::sink());
            let info = verdict?;
            drained?;
            if !tee.closed {
                return Err(ImageError::Io(io::Error::other("upload ended before the body")));
            }
            tee.file.sync_all()?;
            Ok(info)
        });
        let mut received = 0u64;
        let mut broken = false;
        while let Some(chunk) = body.next().await {
            match chunk {
                Ok(b) => {
                    received += b.len() as u64;
                    if tx.send(b).await.is_err() {
                        break;
                    }
                }
                Err(_) => {
                    broken = true;
                    break;
                }
            }
        }
        drop(tx);
        let verdict = worker.await.map_err(|e| io::Error::other(e.to_string()))?;
        if broken {
            return Err(ImageError::Interrupted(received));
        }
        verdict
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

/// Reads chunks from a channel, writing each to `file` as it passes.
struct TeeReader {
    rx: tokio::sync::mpsc::Receiver<Bytes>,
    current: Bytes,
    file: fs::File,
    closed: bool,
}

impl Read for TeeReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.current.is_empty() {
            match self.rx.blocking_recv() {
                Some(b) => {
                    self.file.write_all(&b)?;
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
