//! Durable file operations: every state file molt writes goes through
//! [`atomic_write`], so a crash leaves either the old or the new contents.

use std::{
    fs::{self, File},
    io::{self, Write},
    path::Path,
};

/// Writes `data` to `path` atomically: a temporary file in the same
/// directory, fsync, rename over `path`, fsync of the directory.
pub fn atomic_write(path: &Path, data: &[u8]) -> io::Result<()> {
    let dir = parent_dir(path);
    // Unique per call: concurrent writers of one file must not share a temp file.
    static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let tmp = dir.join(format!(
        ".{}.tmp-{}-{}",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("state"),
        std::process::id(),
        SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    ));
    {
        let mut f = File::create(&tmp)?;
        f.write_all(data)?;
        f.sync_all()?;
    }
    fs::rename(&tmp, path)?;
    fsync_dir(dir)
}

/// Fsyncs a directory, making renames and creations inside it durable.
pub fn fsync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// The directory a path lives in (`.` for a bare file name).
pub fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// Removes `path` and everything beneath it, without recursion: the walk
/// holds at most two directories open and keeps only the names still to
/// visit, and every call is relative to an open directory. No depth of tree,
/// stack size, descriptor limit or `PATH_MAX` can make it fail half way, as
/// `std::fs::remove_dir_all` does (it recurses, holding a descriptor per
/// level). A missing `path` is not an error; symlinks are removed, never followed.
pub fn remove_tree(path: &Path) -> io::Result<()> {
    use std::ffi::CString;

    use nix::{
        dir::{Dir, Type},
        fcntl::{AtFlags, OFlag},
        sys::stat::{Mode, SFlag, fstatat},
        unistd::{UnlinkatFlags, unlinkat},
    };
    let meta = match fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    if !meta.is_dir() {
        return fs::remove_file(path);
    }
    let flags = OFlag::O_DIRECTORY | OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    let mut cur = Dir::open(path, flags, Mode::empty())?;
    // The directories from `path` down to `cur`: each one's name in its
    // parent (none for `path`) and its subdirectories still to remove
    // (none until it was read).
    let mut way: Vec<(Option<CString>, Option<Vec<CString>>)> = vec![(None, None)];
    loop {
        let top = way.last_mut().expect("the walk ends when the way is empty");
        if top.1.is_none() {
            let mut listed = Vec::new();
            for e in cur.iter() {
                let e = e?;
                let name = e.file_name();
                if name != c"." && name != c".." {
                    listed.push((name.to_owned(), e.file_type()));
                }
            }
            let (mut files, mut dirs) = (Vec::new(), Vec::new());
            for (name, kind) in listed {
                let is_dir = match kind {
                    Some(t) => t == Type::Directory,
                    None => {
                        let st = fstatat(&cur, name.as_c_str(), AtFlags::AT_SYMLINK_NOFOLLOW)?;
                        SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT == SFlag::S_IFDIR
                    }
                };
                if is_dir { dirs.push(name) } else { files.push(name) }
            }
            for f in &files {
                unlinkat(&cur, f.as_c_str(), UnlinkatFlags::NoRemoveDir)?;
            }
            top.1 = Some(dirs);
        }
        if let Some(sub) = top.1.as_mut().and_then(Vec::pop) {
            cur = Dir::openat(&cur, sub.as_c_str(), flags, Mode::empty())?;
            way.push((Some(sub), None));
            continue;
        }
        let (name, _) = way.pop().expect("not empty");
        let Some(name) = name else { break };
        let parent = Dir::openat(&cur, c"..", flags, Mode::empty())?;
        cur = parent;
        unlinkat(&cur, name.as_c_str(), UnlinkatFlags::RemoveDir)?;
    }
    drop(cur);
    fs::remove_dir(path)
}

/// Free bytes available to unprivileged writers on the file system of `path`.
pub fn disk_free(path: &Path) -> io::Result<u64> {
    let s = nix::sys::statvfs::statvfs(path).map_err(io::Error::from)?;
    Ok((s.blocks_available() as u64).saturating_mul(s.fragment_size() as u64))
}

/// What identifies a file's contents without reading it: its inode, length
/// and modification time. A file replaced by rename (`atomic_write`, an
/// upload) gets a new inode as well as a new mtime.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FileKey {
    dev: u64,
    ino: u64,
    len: u64,
    mtime_ns: i128,
}

impl FileKey {
    /// The key of the file at `path` as it is now.
    pub fn of(path: &Path) -> io::Result<Self> {
        use std::os::unix::fs::MetadataExt;
        let m = fs::metadata(path)?;
        Ok(Self {
            dev: m.dev(),
            ino: m.ino(),
            len: m.len(),
            mtime_ns: i128::from(m.mtime()) * 1_000_000_000 + i128::from(m.mtime_nsec()),
        })
    }
}

/// The block size direct writes are aligned to (in memory, in size and in
/// the file).
pub const DIRECT_ALIGN: usize = 4096;
/// Bytes gathered before a direct write.
pub const DIRECT_BUF: usize = 1 << 20;

/// Opens `path` for reading with `O_DIRECT` (past the page cache), where
/// the file system allows it; `None` where it does not.
pub fn open_direct(path: &Path) -> Option<File> {
    use std::os::unix::fs::OpenOptionsExt;
    fs::OpenOptions::new().read(true).custom_flags(nix::fcntl::OFlag::O_DIRECT.bits()).open(path).ok()
}

/// Reads up to `want` bytes at `pos` of a file opened with [`open_direct`]
/// (fewer at its end), or `None` when `pos` is not block-aligned or the
/// read is refused (read it through the page cache then).
pub fn read_direct(file: &File, pos: u64, want: usize) -> Option<bytes::Bytes> {
    use std::os::unix::fs::FileExt;
    if !pos.is_multiple_of(DIRECT_ALIGN as u64) || want == 0 {
        return None;
    }
    let len = want.div_ceil(DIRECT_ALIGN) * DIRECT_ALIGN;
    let mut buf = vec![0u8; len + DIRECT_ALIGN];
    let start = buf.as_ptr().align_offset(DIRECT_ALIGN);
    let mut got = 0;
    while got < len {
        match file.read_at(&mut buf[start + got..start + len], pos + got as u64) {
            Ok(0) => break,
            Ok(n) if n % DIRECT_ALIGN == 0 => got += n,
            // A short read is the file's end.
            Ok(n) => {
                got += n;
                break;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return None,
        }
    }
    Some(bytes::Bytes::from(buf).slice(start..start + got.min(want)))
}

/// Appends to a file (an image arriving) with `O_DIRECT` where the file
/// system allows it: the bytes go from one aligned buffer to the disk,
/// without the copy into the page cache that was the largest single cost of
/// staging in the profile (and the most variable on this kind of machine).
/// Where it is not allowed it writes through the page cache. The last part of a block is written through the page
/// cache at the end. Durability is the same either way: one fsync at the
/// end, before the rename.
#[derive(Debug)]
pub struct DirectAppend {
    file: File,
    direct: bool,
    /// `DIRECT_BUF + DIRECT_ALIGN` bytes; the aligned window starts at `start`.
    buf: Vec<u8>,
    start: usize,
    len: usize,
}

impl DirectAppend {
    /// Opens `part` for appending (creating it); it is written directly
    /// only if its length is a multiple of [`DIRECT_ALIGN`].
    pub fn open(part: &Path) -> io::Result<Self> {
        use std::os::unix::fs::OpenOptionsExt;
        let open =
            |flags: i32| fs::OpenOptions::new().create(true).read(true).append(true).custom_flags(flags).open(part);
        let (file, direct) = match open(nix::fcntl::OFlag::O_DIRECT.bits()) {
            Ok(f) => (f, true),
            Err(e) if e.raw_os_error() == Some(nix::libc::EINVAL) => (open(0)?, false),
            Err(e) => return Err(e),
        };
        let direct = direct && file.metadata()?.len() % DIRECT_ALIGN as u64 == 0;
        let buf = vec![0u8; DIRECT_BUF + DIRECT_ALIGN];
        let start = buf.as_ptr().align_offset(DIRECT_ALIGN);
        let mut w = Self { file, direct, buf, start, len: 0 };
        if !direct {
            w.buffered()?;
        }
        Ok(w)
    }

    /// From now on through the page cache.
    fn buffered(&mut self) -> io::Result<()> {
        use nix::fcntl::{FcntlArg, OFlag, fcntl};
        self.direct = false;
        let flags = OFlag::from_bits_truncate(fcntl(&self.file, FcntlArg::F_GETFL)?);
        if flags.contains(OFlag::O_DIRECT) {
            fcntl(&self.file, FcntlArg::F_SETFL(flags - OFlag::O_DIRECT))?;
        }
        Ok(())
    }

    /// Bytes appended but still gathered here, not yet in the file.
    pub fn gathered(&self) -> usize {
        self.len
    }

    /// Appends `data` (gathered into whole blocks first when direct).
    pub fn write(&mut self, mut data: &[u8]) -> io::Result<()> {
        if !self.direct {
            self.write_rest()?;
            return self.file.write_all(data);
        }
        while !data.is_empty() {
            let n = (DIRECT_BUF - self.len).min(data.len());
            let at = self.start + self.len;
            self.buf[at..at + n].copy_from_slice(&data[..n]);
            self.len += n;
            data = &data[n..];
            if self.len == DIRECT_BUF {
                self.flush_blocks()?;
            }
        }
        Ok(())
    }

    /// Writes the whole blocks gathered, directly (through the page cache
    /// from the first refusal or short write on: the file system refused
    /// direct I/O after all, or the file's end is no longer at a block
    /// boundary), keeping the rest.
    fn flush_blocks(&mut self) -> io::Result<()> {
        let whole = self.len - self.len % DIRECT_ALIGN;
        let mut done = 0;
        while done < whole {
            let at = self.start + done;
            match self.file.write(&self.buf[at..self.start + whole]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => {
                    done += n;
                    if self.direct && n % DIRECT_ALIGN != 0 {
                        self.buffered()?;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if self.direct && e.raw_os_error() == Some(nix::libc::EINVAL) => self.buffered()?,
                Err(e) => return Err(e),
            }
        }
        self.buf.copy_within(self.start + whole..self.start + self.len, self.start);
        self.len -= whole;
        Ok(())
    }

    /// Writes what is gathered through the page cache (after direct writes
    /// stopped, before any later bytes).
    fn write_rest(&mut self) -> io::Result<()> {
        if self.len > 0 {
            self.file.write_all(&self.buf[self.start..self.start + self.len])?;
            self.len = 0;
        }
        Ok(())
    }

    /// Writes what is left (the last part of a block through the page cache)
    /// and fsyncs.
    pub fn finish(mut self) -> io::Result<File> {
        if self.direct {
            self.flush_blocks()?;
        }
        if self.len > 0 {
            self.buffered()?;
            self.write_rest()?;
        }
        self.file.sync_all()?;
        Ok(self.file)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_tree_deeper_than_path_max_is_removed_on_a_small_stack() {
        use std::os::fd::AsFd;

        use nix::{
            fcntl::{OFlag, openat},
            sys::stat::{Mode, mkdirat},
        };
        let d = tempfile::tempdir().unwrap();
        let root = d.path().join("deep");
        fs::create_dir(&root).unwrap();
        // 3,000 levels of "dd" with a file at each: 9,000 bytes of path,
        // beyond PATH_MAX, so only a walk relative to open directories can
        // remove it.
        let mut cur: std::os::fd::OwnedFd = File::open(&root).unwrap().into();
        for i in 0..3000 {
            mkdirat(cur.as_fd(), "dd", Mode::from_bits_truncate(0o755)).unwrap();
            let f = openat(
                cur.as_fd(),
                format!("f{i}").as_str(),
                OFlag::O_CREAT | OFlag::O_WRONLY,
                Mode::from_bits_truncate(0o644),
            );
            drop(f.unwrap());
            cur = openat(cur.as_fd(), "dd", OFlag::O_DIRECTORY | OFlag::O_RDONLY, Mode::empty()).unwrap();
        }
        drop(cur);
        // 64 KiB of stack: a recursive walk of 3,000 levels would overflow it.
        let path = root.clone();
        std::thread::Builder::new()
            .stack_size(64 << 10)
            .spawn(move || super::remove_tree(&path))
            .unwrap()
            .join()
            .unwrap()
            .unwrap();
        assert!(!root.exists());
        // Missing, a file, a symlink (not followed).
        super::remove_tree(&root).unwrap();
        fs::write(d.path().join("f"), b"x").unwrap();
        super::remove_tree(&d.path().join("f")).unwrap();
        std::os::unix::fs::symlink(d.path(), d.path().join("l")).unwrap();
        super::remove_tree(&d.path().join("l")).unwrap();
        assert!(d.path().exists());
    }

    use super::*;

    #[test]
    fn atomic_write_replaces_contents_and_leaves_no_temp() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("boot.json");
        atomic_write(&p, b"one").unwrap();
        atomic_write(&p, b"two").unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"two");
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
        assert!(disk_free(dir.path()).unwrap() > 0);
    }

    /// Appends chunks of awkward sizes, after a resume at a block boundary, on
    /// a file system that allows direct I/O (the temp dir's, if it does) and on
    /// tmpfs (which may not): the file holds exactly the bytes, in order.
    #[test]
    fn the_append_writer_keeps_every_byte_in_order_with_or_without_direct_io() {
        let bytes: Vec<u8> = (0..3_500_000u32).map(|i| (i % 251) as u8).collect();
        let sizes = [1000, 70_000, 1_500_000, 3, DIRECT_BUF, 4096, 10_000];
        for dir in [tempfile::tempdir().unwrap(), tempfile::tempdir_in("/dev/shm").unwrap()] {
            let part = dir.path().join("x.part");
            std::fs::write(&part, &bytes[..8192]).unwrap();
            let mut w = DirectAppend::open(&part).unwrap();
            eprintln!("{}: direct I/O {}", dir.path().display(), w.direct);
            let mut at = 8192;
            for (i, n) in sizes.iter().cycle().enumerate() {
                let n = (*n).min(bytes.len() - at);
                if n == 0 {
                    break;
                }
                w.write(&bytes[at..at + n]).unwrap();
                at += n;
                if i == 2 {
                    // As when the file system refuses a direct write: through
                    // the page cache from here, what was gathered first.
                    w.buffered().unwrap();
                }
            }
            w.finish().unwrap();
            assert_eq!(std::fs::read(&part).unwrap(), bytes, "in {}", dir.path().display());
        }
    }
}
