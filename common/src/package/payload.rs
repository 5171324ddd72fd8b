//! The rules a package payload must follow, and the unpacking that applies
//! them. [`PayloadRules`] is fed every tar entry, in order, by both
//! `verify` and `unpack`: verification is a dry run of unpacking, so the two
//! can never disagree about a package.
//!
//! The rules, each stated against what a hostile archive could do:
//! - an entry's path is relative and has no `..` component;
//! - no entry lies under a symlink or a file of the same archive (unpacking
//!   would otherwise follow an earlier entry's symlink out of the slot);
//! - no path appears twice (the last one would win after the required-file
//!   check had passed), except a directory named again;
//! - only regular files, directories and symlinks; a symlink's target is
//!   relative, stays inside the slot when resolved from its own directory,
//!   and passes through no other symlink of the archive on its way;
//! - `manifest.json` at the root is the slot's own and may not come from a package;
//! - modes are sanitized: no setuid, setgid, sticky, group- or world-writable bits;
//! - sizes stay within what every file system and `openat2` take, so that
//!   nothing verified can fail half way through unpacking for its shape:
//!   a name of at most [`MAX_NAME_BYTES`], a path of at most
//!   [`MAX_PATH_BYTES`] and [`MAX_DEPTH`] levels, a symlink target of at most
//!   [`MAX_LINK_BYTES`], at most [`MAX_ENTRIES`] nodes, the directories only
//!   implied by a path included.
//!
//! Unpacking then applies the entries without ever following a symlink:
//! parents are opened with `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)`,
//! files are created with `O_EXCL | O_NOFOLLOW`. Even a rule missed here could
//! not make the kernel write outside the slot.

use std::{
    collections::HashMap,
    ffi::OsStr,
    fs::File,
    io,
    os::{
        fd::{AsFd, OwnedFd},
        unix::fs::PermissionsExt,
    },
    path::{Component, Path, PathBuf},
};

use nix::{
    errno::Errno,
    fcntl::{OFlag, OpenHow, ResolveFlag, openat2},
    sys::stat::{Mode, mkdirat},
    unistd::symlinkat,
};

use super::{MAX_DEPTH, MAX_ENTRIES, MAX_LINK_BYTES, MAX_NAME_BYTES, MAX_PATH_BYTES, PackageError};

/// The slot's own manifest, written by the installer next to the payload.
pub const RESERVED_ROOT_ENTRY: &str = "manifest.json";

/// What an admitted entry is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EntryKind {
    /// A regular file.
    File,
    /// A directory.
    Dir,
    /// A symlink to this (relative) target.
    Symlink(PathBuf),
}

/// An entry that passed the rules: where it goes, what it is, its mode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Admitted {
    /// Path beneath the slot, normalized, never empty.
    pub rel: PathBuf,
    /// The entry's kind.
    pub kind: EntryKind,
    /// Sanitized permission bits.
    pub mode: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Node {
    /// A directory named by an entry of its own.
    Dir,
    /// A directory only implied as the parent of an entry.
    ImpliedDir,
    File,
    Symlink,
}

/// The payload's tree as seen so far, one node per path: a node holds its
/// own name only (never its whole path), so memory is linear in the
/// number of nodes, whatever the depth.
#[derive(Debug)]
struct Tree {
    kinds: Vec<Node>,
    parents: Vec<u32>,
    children: Vec<HashMap<Box<OsStr>, u32>>,
}

/// The root of every payload's tree.
const ROOT: u32 = 0;

impl Tree {
    fn new() -> Self {
        Self { kinds: vec![Node::Dir], parents: vec![ROOT], children: vec![HashMap::new()] }
    }

    /// Nodes, the root included.
    fn len(&self) -> usize {
        self.kinds.len()
    }

    fn child(&self, at: u32, name: &OsStr) -> Option<u32> {
        self.children[at as usize].get(name).copied()
    }

    fn add(&mut self, at: u32, name: &OsStr, kind: Node) -> u32 {
        let id = self.kinds.len() as u32;
        self.kinds.push(kind);
        self.parents.push(at);
        self.children.push(HashMap::new());
        self.children[at as usize].insert(name.into(), id);
        id
    }

    fn kind(&self, id: u32) -> Node {
        self.kinds[id as usize]
    }

    /// The nodes from the root down to `id`, both included.
    fn chain(&self, mut id: u32) -> Vec<u32> {
        let mut out = vec![id];
        while id != ROOT {
            id = self.parents[id as usize];
            out.push(id);
        }
        out.reverse();
        out
    }
}

/// The payload's entries seen so far, checked one by one ([`Self::admit`])
/// and as a whole at the end ([`Self::finish`]).
#[derive(Debug)]
pub struct PayloadRules {
    tree: Tree,
    /// Each symlink's node and target.
    symlinks: Vec<(u32, PathBuf)>,
    count: u64,
    /// The files the payload must hold, and whether each was seen.
    required: Vec<(&'static str, bool)>,
}

fn unsafe_entry(path: &Path, why: impl Into<String>) -> PackageError {
    PackageError::UnsafeEntry { path: shown(path), why: why.into() }
}

/// A path as an error shows it: at most 200 bytes of it, so an error about
/// an overlong path is not itself overlong.
fn shown(path: &Path) -> String {
    let s = path.display().to_string();
    if s.len() <= 200 {
        return s;
    }
    let mut cut = 200;
    while !s.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}… ({} bytes)", &s[..cut], path.as_os_str().len())
}

/// Checks a path against the size limits every file system and `openat2`
/// hold it to; `what` names it in the error (an entry, a symlink's target).
fn check_limits(path: &Path, what: &str, max_bytes: usize) -> Result<(), String> {
    let len = path.as_os_str().len();
    if len > max_bytes {
        return Err(format!("has a {what} of {len} bytes, more than the {max_bytes} allowed"));
    }
    let mut depth = 0;
    for c in path.components() {
        depth += 1;
        let n = c.as_os_str().len();
        if n > MAX_NAME_BYTES {
            return Err(format!("has a {what} with a name of {n} bytes, more than the {MAX_NAME_BYTES} allowed"));
        }
    }
    if depth > MAX_DEPTH {
        return Err(format!("has a {what} {depth} levels deep, more than the {MAX_DEPTH} allowed"));
    }
    Ok(())
}

impl PayloadRules {
    /// Rules for a payload that must hold the files `required`.
    pub fn new(required: &[&'static str]) -> Self {
        Self {
            tree: Tree::new(),
            symlinks: Vec::new(),
            count: 0,
            required: required.iter().map(|r| (*r, false)).collect(),
        }
    }

    /// Checks one entry against the rules and the entries before it.
    /// `Ok(None)` is an entry with nothing to do (the payload root itself).
    pub fn admit(
        &mut self,
        path: &Path,
        kind: tar::EntryType,
        link: Option<&Path>,
        mode: u32,
    ) -> Result<Option<Admitted>, PackageError> {
        self.count += 1;
        if self.count > MAX_ENTRIES {
            return Err(PackageError::TooManyEntries);
        }
        check_limits(path, "path", MAX_PATH_BYTES).map_err(|why| unsafe_entry(path, why))?;
        let rel = strict_relative(path).ok_or_else(|| unsafe_entry(path, "is absolute or has a `..` component"))?;
        if rel.as_os_str().is_empty() {
            return if kind == tar::EntryType::Directory {
                Ok(None)
            } else {
                Err(unsafe_entry(path, "has an empty path"))
            };
        }
        if rel == Path::new(RESERVED_ROOT_ENTRY) {
            return Err(unsafe_entry(path, "is reserved for the slot's own manifest"));
        }
        let kind = match kind {
            tar::EntryType::Regular => EntryKind::File,
            tar::EntryType::Directory => EntryKind::Dir,
            tar::EntryType::Symlink => {
                let target = link.ok_or_else(|| unsafe_entry(path, "is a symlink without a target"))?;
                check_limits(target, "symlink target", MAX_LINK_BYTES).map_err(|why| unsafe_entry(path, why))?;
                check_link_lexically(&rel, target).map_err(|why| unsafe_entry(path, why))?;
                EntryKind::Symlink(target.to_owned())
            }
            _ => return Err(unsafe_entry(path, "has a type other than file, directory or relative symlink")),
        };
        // Every parent must be a directory of this payload, never a symlink or a file.
        let depth = rel.components().count();
        let mut at = ROOT;
        for (i, c) in rel.components().take(depth - 1).enumerate() {
            let name = c.as_os_str();
            at = match self.tree.child(at, name) {
                Some(id) => match self.tree.kind(id) {
                    Node::Symlink => {
                        let parent: PathBuf = rel.components().take(i + 1).collect();
                        return Err(unsafe_entry(
                            path,
                            format!("lies under the symlink {:?}: unpacking it would follow that link", shown(&parent)),
                        ));
                    }
                    Node::File => {
                        let parent: PathBuf = rel.components().take(i + 1).collect();
                        return Err(unsafe_entry(path, format!("lies under the file {:?}", shown(&parent))));
                    }
                    Node::Dir | Node::ImpliedDir => id,
                },
                None => self.add_node(at, name, Node::ImpliedDir)?,
            };
        }
        let node = match kind {
            EntryKind::File => Node::File,
            EntryKind::Dir => Node::Dir,
            EntryKind::Symlink(_) => Node::Symlink,
        };
        let name = rel.file_name().expect("a non-empty normal path has a last name");
        let id = match (self.tree.child(at, name), node) {
            (None, _) => self.add_node(at, name, node)?,
            (Some(id), Node::Dir) if matches!(self.tree.kind(id), Node::ImpliedDir | Node::Dir) => {
                self.tree.kinds[id as usize] = Node::Dir;
                id
            }
            (Some(_), _) => return Err(unsafe_entry(path, "appears more than once in the payload")),
        };
        if let EntryKind::Symlink(target) = &kind {
            self.symlinks.push((id, target.clone()));
        }
        if kind == EntryKind::File
            && let Some(seen) = self.required.iter_mut().find(|(r, _)| Path::new(r) == rel)
        {
            seen.1 = true;
        }
        let mode = match kind {
            EntryKind::Dir => (mode & 0o755) | 0o700,
            _ => mode & 0o755,
        };
        Ok(Some(Admitted { rel, kind, mode }))
    }

    /// Adds a node, counting it against [`MAX_ENTRIES`]: a directory only
    /// implied by a path is made by unpacking as surely as a named one.
    fn add_node(&mut self, at: u32, name: &OsStr, kind: Node) -> Result<u32, PackageError> {
        if self.tree.len() as u64 > MAX_ENTRIES {
            return Err(PackageError::TooManyEntries);
        }
        Ok(self.tree.add(at, name, kind))
    }

    /// The checks that need the whole payload: required files present, and
    /// no symlink target passing through another symlink. Returns the entry count.
    pub fn finish(self) -> Result<u64, PackageError> {
        for (link, target) in &self.symlinks {
            // The way from the root to where the walk stands; `None` once it
            // left the payload's tree (a name no entry made), where no
            // symlink of the package can be.
            let mut way: Vec<Option<u32>> =
                self.tree.chain(self.tree.parents[*link as usize]).into_iter().map(Some).collect();
            let parts: Vec<Component<'_>> = target.components().collect();
            for (i, c) in parts.iter().enumerate() {
                match c {
                    Component::CurDir => continue,
                    Component::ParentDir => {
                        // Never above the root: checked lexically in admit.
                        way.pop();
                    }
                    Component::Normal(n) => {
                        let next = way.last().copied().flatten().and_then(|at| self.tree.child(at, n));
                        way.push(next);
                    }
                    Component::RootDir | Component::Prefix(_) => unreachable!("checked in admit"),
                }
                let last = i + 1 == parts.len();
                if !last
                    && let Some(Some(at)) = way.last()
                    && self.tree.kind(*at) == Node::Symlink
                {
                    return Err(unsafe_entry(
                        &self.path_of(*link),
                        format!("is a symlink whose target passes through the symlink {:?}", shown(&self.path_of(*at))),
                    ));
                }
            }
        }
        if let Some((missing, _)) = self.required.iter().find(|(_, seen)| !seen) {
            return Err(PackageError::MissingEntry(missing));
        }
        Ok(self.count)
    }

    /// A node's path, for an error.
    fn path_of(&self, id: u32) -> PathBuf {
        let chain = self.tree.chain(id);
        let mut out = PathBuf::new();
        for pair in chain.windows(2) {
            let (parent, child) = (pair[0], pair[1]);
            if let Some((name, _)) = self.tree.children[parent as usize].iter().find(|(_, c)| **c == child) {
                out.push(&**name);
            }
        }
        out
    }
}

/// A relative path with no `..`, `.` dropped; `None` if absolute or climbing.
fn strict_relative(path: &Path) -> Option<PathBuf> {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::Normal(p) => out.push(p),
            Component::CurDir => {}
            Component::ParentDir | Component::RootDir | Component::Prefix(_) => return None,
        }
    }
    Some(out)
}

/// A symlink's target must be relative and, resolved lexically from the
/// link's directory, never climb above the slot at any step.
fn check_link_lexically(rel: &Path, target: &Path) -> Result<(), &'static str> {
    if target.as_os_str().is_empty() {
        return Err("is a symlink with an empty target");
    }
    let mut depth = rel.components().count() - 1;
    for c in target.components() {
        match c {
            Component::Normal(_) => depth += 1,
            Component::CurDir => {}
            Component::ParentDir => depth = depth.checked_sub(1).ok_or("is a symlink pointing outside the payload")?,
            Component::RootDir | Component::Prefix(_) => return Err("is a symlink pointing outside the payload"),
        }
    }
    Ok(())
}

/// Applies admitted entries beneath one directory without following symlinks.
#[derive(Debug)]
pub struct Unpacker {
    root: OwnedFd,
    /// The directory of the last entry, kept open: entries come grouped.
    last_parent: Option<(PathBuf, OwnedFd)>,
}

fn errno_io(e: Errno) -> io::Error {
    io::Error::from_raw_os_error(e as i32)
}

fn beneath(flags: OFlag) -> OpenHow {
    OpenHow::new()
        .flags(flags | OFlag::O_CLOEXEC | OFlag::O_NOFOLLOW)
        .resolve(ResolveFlag::RESOLVE_BENEATH | ResolveFlag::RESOLVE_NO_SYMLINKS | ResolveFlag::RESOLVE_NO_MAGICLINKS)
}

impl Unpacker {
    /// Creates `dest` (which must not exist) and opens it as the root.
    pub fn create(dest: &Path) -> io::Result<Self> {
        std::fs::create_dir(dest)?;
        let root = File::open(dest)?.into();
        Ok(Self { root, last_parent: None })
    }

    /// Opens (creating the implied directories of) `dir` beneath the root.
    fn open_dir(&mut self, dir: &Path) -> io::Result<&OwnedFd> {
        if dir.as_os_str().is_empty() {
            return Ok(&self.root);
        }
        if self.last_parent.as_ref().is_none_or(|(p, _)| p != dir) {
            let mut cur: Option<OwnedFd> = None;
            for c in dir.components() {
                let at = cur.as_ref().map_or(self.root.as_fd(), |f| f.as_fd());
                match mkdirat(at, c.as_os_str(), Mode::from_bits_truncate(0o755)) {
                    Ok(()) | Err(Errno::EEXIST) => {}
                    Err(e) => return Err(errno_io(e)),
                }
                let fd = openat2(at, c.as_os_str(), beneath(OFlag::O_DIRECTORY | OFlag::O_RDONLY)).map_err(errno_io)?;
                cur = Some(fd);
            }
            let fd = cur.expect("a non-empty path has a component");
            self.last_parent = Some((dir.to_owned(), fd));
        }
        Ok(&self.last_parent.as_ref().expect("set above").1)
    }

    /// Creates one admitted entry; a file's contents come from `data`.
    pub fn apply(&mut self, entry: &Admitted, data: &mut impl io::Read) -> io::Result<()> {
        let parent = entry.rel.parent().unwrap_or(Path::new("")).to_owned();
        let name = entry.rel.file_name().expect("admitted paths are not empty").to_owned();
        let mode = Mode::from_bits_truncate(entry.mode);
        let dir = self.open_dir(&parent)?;
        match &entry.kind {
            EntryKind::File => {
                let fd = openat2(
                    dir,
                    name.as_os_str(),
                    beneath(OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL).mode(mode),
                )
                .map_err(errno_io)?;
                let mut f = File::from(fd);
                io::copy(data, &mut f)?;
                f.set_permissions(std::fs::Permissions::from_mode(entry.mode))?;
            }
            EntryKind::Dir => {
                match mkdirat(dir, name.as_os_str(), mode) {
                    Ok(()) | Err(Errno::EEXIST) => {}
                    Err(e) => return Err(errno_io(e)),
                }
                let fd =
                    openat2(dir, name.as_os_str(), beneath(OFlag::O_DIRECTORY | OFlag::O_RDONLY)).map_err(errno_io)?;
                File::from(fd).set_permissions(std::fs::Permissions::from_mode(entry.mode))?;
            }
            EntryKind::Symlink(target) => {
                symlinkat(target.as_os_str(), dir, name.as_os_str()).map_err(errno_io)?;
            }
        }
        Ok(())
    }
}
