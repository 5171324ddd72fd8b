//! molt's one door to Docker Engine, through its API on
//! `/var/run/docker.sock` (bollard); nothing here shells out to the `docker`
//! CLI. No registry is used: images come from a package (`docker load`) or
//! from a root filesystem made of the build's binaries (`docker import`).
//!
//! - [`Engine`]: load, import, tag, save images; run, wait for and remove a
//!   node's container.
//! - [`image_tag`], [`container_name`]: the contract's names,
//!   `molt-ROLE:VERSION` and `molt-CLUSTER-NODE`.
//! - [`archive_tags`]: the tags a `docker save` archive holds, read without Docker.
//! - [`rootfs`]: a root filesystem tar of binaries and the libraries they link.

use std::{
    collections::HashMap,
    io::{Read, Write},
    path::{Path, PathBuf},
};

use bollard::{
    Docker,
    errors::Error as BollardError,
    models::{ContainerCreateBody, HostConfig},
    query_parameters::{
        CreateContainerOptionsBuilder, CreateImageOptionsBuilder, ImportImageOptionsBuilder,
        ListContainersOptionsBuilder, LogsOptionsBuilder, RemoveContainerOptionsBuilder, TagImageOptionsBuilder,
    },
};
use bytes::Bytes;
use common::{Role, Version};
use futures_util::{StreamExt, TryStreamExt};

/// Where Docker Engine listens.
pub const SOCKET: &str = "/var/run/docker.sock";

/// Why a Docker operation failed. Every message says what to do.
#[derive(Debug, thiserror::Error)]
pub enum DockerError {
    /// No Docker Engine answers.
    #[error(
        "cannot reach Docker Engine at {SOCKET}: {0}; start it (`systemctl start docker`, or `dockerd &` as root) and try again"
    )]
    Unreachable(String),
    /// Docker refused or failed an operation.
    #[error("docker {what}: {message}")]
    Api {
        /// What was asked.
        what: String,
        /// What Docker said.
        message: String,
    },
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// An archive or a binary that cannot be used.
    #[error("{0}")]
    Invalid(String),
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> DockerError + '_ {
    move |source| DockerError::Io { path: path.to_owned(), source }
}

fn api(what: impl Into<String>) -> impl FnOnce(BollardError) -> DockerError {
    let what = what.into();
    move |e| DockerError::Api {
        what,
        message: match e {
            BollardError::DockerResponseServerError { message, .. } => message,
            other => other.to_string(),
        },
    }
}

fn is_not_found(e: &BollardError) -> bool {
    matches!(e, BollardError::DockerResponseServerError { status_code: 404, .. })
}

/// The image tag of a role's agent at a version: `molt-controller:2.0.0`, `molt-se:2.0.0`.
pub fn image_tag(role: Role, version: Version) -> String {
    format!("molt-{}:{version}", role.as_str())
}

/// The container of a node: `molt-CLUSTER-NODE`.
pub fn container_name(cluster: &str, node: &str) -> String {
    format!("molt-{cluster}-{node}")
}

/// The path of a role's agent inside the image.
pub fn agent_path(role: Role) -> &'static str {
    match role {
        Role::Controller => "/bin/controller-agent",
        _ => "/bin/se-agent",
    }
}

/// A directory of the host mounted into a node's container at the same path.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Bind {
    /// The directory (the same path inside the container).
    pub path: PathBuf,
    /// Mounted read-only.
    pub read_only: bool,
}

/// What a node's container runs.
#[derive(Debug, Clone)]
pub struct NodeContainer {
    /// `molt-CLUSTER-NODE`.
    pub name: String,
    /// `molt-ROLE:VERSION`.
    pub image: String,
    /// The agent's command line.
    pub cmd: Vec<String>,
    /// Host directories mounted at the same path.
    pub binds: Vec<Bind>,
    /// Labels (cluster, node, version) for operators' `docker ps`.
    pub labels: HashMap<String, String>,
}

/// A connection to Docker Engine.
#[derive(Debug, Clone)]
pub struct Engine {
    docker: Docker,
}

impl Engine {
    /// Connects to [`SOCKET`] and agrees on the API version (Docker 20.10 and later).
    pub async fn connect() -> Result<Self, DockerError> {
        let docker = Docker::connect_with_socket_defaults().map_err(|e| DockerError::Unreachable(e.to_string()))?;
        let docker = docker.negotiate_version().await.map_err(|e| DockerError::Unreachable(e.to_string()))?;
        Ok(Self { docker })
    }

    /// `docker load` of a `docker save` archive; returns the tags it loaded.
    pub async fn load(&self, archive: &Path) -> Result<Vec<String>, DockerError> {
        let file = tokio::fs::File::open(archive).await.map_err(io_err(archive))?;
        let body = tokio_util::io::ReaderStream::with_capacity(file, 1 << 20);
        let options = ImportImageOptionsBuilder::default().quiet(true).build();
        let infos: Vec<_> = self
            .docker
            .import_image_stream(options, body, None)
            .try_collect()
            .await
            .map_err(api(format!("load {}", archive.display())))?;
        Ok(infos
            .iter()
            .filter_map(|i| i.stream.as_deref())
            .flat_map(str::lines)
            .filter_map(|l| l.trim().strip_prefix("Loaded image: ").map(str::to_owned))
            .collect())
    }

    /// Whether the image `tag` is in the engine's store.
    pub async fn has_image(&self, tag: &str) -> Result<bool, DockerError> {
        match self.docker.inspect_image(tag).await {
            Ok(_) => Ok(true),
            Err(e) if is_not_found(&e) => Ok(false),
            Err(e) => Err(api(format!("inspect image {tag}"))(e)),
        }
    }

    /// A label of the image `tag`; `None` if the image or the label is missing.
    pub async fn image_label(&self, tag: &str, key: &str) -> Result<Option<String>, DockerError> {
        match self.docker.inspect_image(tag).await {
            Ok(i) => Ok(i.config.and_then(|c| c.labels).and_then(|mut l| l.remove(key))),
            Err(e) if is_not_found(&e) => Ok(None),
            Err(e) => Err(api(format!("inspect image {tag}"))(e)),
        }
    }

    /// `docker import` of a root filesystem tar as the image `tag`, with `labels`.
    pub async fn import_rootfs(&self, rootfs: Vec<u8>, tag: &str, labels: &[(&str, &str)]) -> Result<(), DockerError> {
        let (repo, version) = tag.split_once(':').unwrap_or((tag, "latest"));
        let changes: Vec<String> = labels.iter().map(|(k, v)| format!("LABEL {k}={v}")).collect();
        let options =
            CreateImageOptionsBuilder::default().from_src("-").repo(repo).tag(version).changes(changes).build();
        let body = bollard::body_full(Bytes::from(rootfs));
        self.docker
            .create_image(Some(options), Some(body), None)
            .try_collect::<Vec<_>>()
            .await
            .map_err(api(format!("import {tag}")))?;
        Ok(())
    }

    /// `docker tag SOURCE TAG`.
    pub async fn tag(&self, source: &str, tag: &str) -> Result<(), DockerError> {
        let (repo, version) = tag.split_once(':').unwrap_or((tag, "latest"));
        let options = TagImageOptionsBuilder::default().repo(repo).tag(version).build();
        self.docker.tag_image(source, Some(options)).await.map_err(api(format!("tag {source} {tag}")))
    }

    /// `docker save TAGS > out`, fsynced.
    pub async fn save(&self, tags: &[&str], out: &Path) -> Result<(), DockerError> {
        let mut file = std::fs::File::create(out).map_err(io_err(out))?;
        let mut stream = self.docker.export_images(tags);
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(api(format!("save {}", tags.join(" "))))?;
            file.write_all(&chunk).map_err(io_err(out))?;
        }
        file.sync_all().map_err(io_err(out))
    }

    /// Removes the container `name` whatever its state; a missing one is fine.
    pub async fn remove(&self, name: &str) -> Result<(), DockerError> {
        let options = RemoveContainerOptionsBuilder::default().force(true).build();
        match self.docker.remove_container(name, Some(options)).await {
            Ok(()) => Ok(()),
            Err(e) if is_not_found(&e) => Ok(()),
            Err(e) => Err(api(format!("rm -f {name}"))(e)),
        }
    }

    /// Replaces any container of the same name by a new one of `spec` and
    /// starts it: host network, the binds, `CAP_SYS_BOOT` so that the agent's
    /// `reboot(2)` ends the container (exit 129), as on a VM it restarts the
    /// machine. Returns the host PID of the container's init.
    pub async fn run(&self, spec: &NodeContainer) -> Result<u32, DockerError> {
        self.remove(&spec.name).await?;
        let binds = spec
            .binds
            .iter()
            .map(|b| format!("{p}:{p}:{mode}", p = b.path.display(), mode = if b.read_only { "ro" } else { "rw" }))
            .collect();
        let body = ContainerCreateBody {
            image: Some(spec.image.clone()),
            cmd: Some(spec.cmd.clone()),
            labels: Some(spec.labels.clone()),
            host_config: Some(HostConfig {
                binds: Some(binds),
                network_mode: Some("host".into()),
                cap_add: Some(vec!["SYS_BOOT".into()]),
                ..Default::default()
            }),
            ..Default::default()
        };
        let options = CreateContainerOptionsBuilder::default().name(&spec.name).build();
        self.docker.create_container(Some(options), body).await.map_err(api(format!("create {}", spec.name)))?;
        self.docker.start_container(&spec.name, None).await.map_err(api(format!("start {}", spec.name)))?;
        let info =
            self.docker.inspect_container(&spec.name, None).await.map_err(api(format!("inspect {}", spec.name)))?;
        Ok(info.state.and_then(|s| s.pid).unwrap_or(0) as u32)
    }

    /// Waits for the container to stop; returns its exit code (129: its
    /// init was ended by SIGHUP, which is what `reboot(2)` does to it).
    pub async fn wait(&self, name: &str) -> Result<i64, DockerError> {
        let mut stream = self.docker.wait_container(name, None);
        let mut code = 0;
        while let Some(r) = stream.next().await {
            match r {
                Ok(w) => code = w.status_code,
                Err(BollardError::DockerContainerWaitError { code: c, .. }) => code = c,
                Err(e) => return Err(api(format!("wait {name}"))(e)),
            }
        }
        Ok(code)
    }

    /// Whether a container `name` is running.
    pub async fn is_running(&self, name: &str) -> Result<bool, DockerError> {
        match self.docker.inspect_container(name, None).await {
            Ok(info) => Ok(info.state.and_then(|s| s.running).unwrap_or(false)),
            Err(e) if is_not_found(&e) => Ok(false),
            Err(e) => Err(api(format!("inspect {name}"))(e)),
        }
    }

    /// Every container (running or not) of the cluster `cluster`, by its
    /// `molt.cluster` label: `(name, image, running)`, sorted by name.
    pub async fn containers_of(&self, cluster: &str) -> Result<Vec<(String, String, bool)>, DockerError> {
        let filters = HashMap::from([("label".to_owned(), vec![format!("molt.cluster={cluster}")])]);
        let options = ListContainersOptionsBuilder::default().all(true).filters(&filters).build();
        let list = self.docker.list_containers(Some(options)).await.map_err(api("ps"))?;
        let mut out: Vec<_> = list
            .into_iter()
            .map(|c| {
                let name = c.names.and_then(|n| n.into_iter().next()).unwrap_or_default();
                let running = c.state.is_some_and(|s| s.to_string() == "running");
                (name.trim_start_matches('/').to_owned(), c.image.unwrap_or_default(), running)
            })
            .collect();
        out.sort();
        Ok(out)
    }

    /// Copies the container's output to `out` until the container stops.
    pub async fn follow_logs(&self, name: &str, mut out: impl Write) {
        let options = LogsOptionsBuilder::default().follow(true).stdout(true).stderr(true).build();
        let mut stream = self.docker.logs(name, Some(options));
        while let Some(Ok(chunk)) = stream.next().await {
            let _ = out.write_all(&chunk.into_bytes());
            let _ = out.flush();
        }
    }
}

/// The names a `docker save` archive would give images when loaded, read
/// without Docker: the `RepoTags` of its `manifest.json`, and the image
/// names its OCI `index.json` annotates (which Docker's containerd store
/// loads), normalised (`docker.io/library/` dropped). A package's image is
/// checked with them where no engine runs, before anything is loaded.
pub fn archive_tags(archive: &Path) -> Result<Vec<String>, DockerError> {
    #[derive(serde::Deserialize)]
    struct Entry {
        #[serde(rename = "RepoTags", default)]
        repo_tags: Option<Vec<String>>,
    }
    #[derive(serde::Deserialize)]
    struct Index {
        #[serde(default)]
        manifests: Vec<Described>,
    }
    #[derive(serde::Deserialize)]
    struct Described {
        #[serde(default)]
        annotations: HashMap<String, String>,
    }
    /// The largest `manifest.json` or `index.json` read.
    const MAX_INDEX: u64 = 1 << 20;
    let file = std::fs::File::open(archive).map_err(io_err(archive))?;
    let mut tar = tar::Archive::new(std::io::BufReader::new(file));
    let bad =
        |why: String| DockerError::Invalid(format!("{} is not a `docker save` archive: {why}", archive.display()));
    let mut tags = Vec::new();
    let mut has_manifest = false;
    for entry in tar.entries().map_err(|e| bad(e.to_string()))? {
        let mut entry = entry.map_err(|e| bad(e.to_string()))?;
        let path = entry.path().map_err(|e| bad(e.to_string()))?.into_owned();
        let name = path.to_str().unwrap_or_default().trim_start_matches("./");
        if name != "manifest.json" && name != "index.json" {
            continue;
        }
        if entry.size() > MAX_INDEX {
            return Err(bad(format!("its {name} is over {MAX_INDEX} bytes")));
        }
        let mut text = Vec::new();
        entry.read_to_end(&mut text).map_err(|e| bad(e.to_string()))?;
        if name == "manifest.json" {
            has_manifest = true;
            let entries: Vec<Entry> = serde_json::from_slice(&text).map_err(|e| bad(format!("manifest.json: {e}")))?;
            tags.extend(entries.into_iter().flat_map(|e| e.repo_tags.unwrap_or_default()));
        } else {
            let index: Index = serde_json::from_slice(&text).map_err(|e| bad(format!("index.json: {e}")))?;
            for m in index.manifests {
                for key in ["io.containerd.image.name", "org.opencontainers.image.ref.name"] {
                    let Some(v) = m.annotations.get(key) else { continue };
                    // A bare OCI ref name ("2.0.0") names no repository.
                    if key == "org.opencontainers.image.ref.name" && !v.contains(':') {
                        continue;
                    }
                    tags.push(v.trim_start_matches("docker.io/library/").to_owned());
                }
            }
        }
    }
    if !has_manifest {
        return Err(bad("it has no manifest.json".into()));
    }
    tags.sort();
    tags.dedup();
    Ok(tags)
}

/// A root filesystem tar holding each `(path in image, host binary)`, the
/// shared libraries each binary links (as `ldd` lists them, at the same
/// paths), and an empty `/tmp`.
pub fn rootfs(binaries: &[(&str, &Path)]) -> Result<Vec<u8>, DockerError> {
    let mut files: Vec<(PathBuf, PathBuf)> = Vec::new();
    for (inside, host) in binaries {
        files.push((PathBuf::from(inside), host.to_path_buf()));
        for lib in linked_libraries(host)? {
            if !files.iter().any(|(i, _)| *i == lib) {
                files.push((lib.clone(), lib));
            }
        }
    }
    let mut b = tar::Builder::new(Vec::new());
    let mut dirs: Vec<PathBuf> = vec![PathBuf::from("tmp"), PathBuf::from("etc")];
    for (inside, _) in &files {
        let rel = inside.strip_prefix("/").unwrap_or(inside);
        let mut at = PathBuf::new();
        for c in rel.parent().into_iter().flat_map(Path::components) {
            at.push(c);
            if !dirs.contains(&at) {
                dirs.push(at.clone());
            }
        }
    }
    for d in &dirs {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Directory);
        h.set_mode(if d == Path::new("tmp") { 0o1777 } else { 0o755 });
        h.set_size(0);
        b.append_data(&mut h, d, std::io::empty()).map_err(|e| DockerError::Invalid(e.to_string()))?;
    }
    for (inside, host) in &files {
        let data = std::fs::read(host).map_err(io_err(host))?;
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Regular);
        h.set_mode(0o755);
        h.set_size(data.len() as u64);
        let rel = inside.strip_prefix("/").unwrap_or(inside);
        b.append_data(&mut h, rel, &data[..]).map_err(|e| DockerError::Invalid(e.to_string()))?;
    }
    b.into_inner().map_err(|e| DockerError::Invalid(e.to_string()))
}

/// The shared libraries `binary` links, by `ldd` (empty for a static binary).
fn linked_libraries(binary: &Path) -> Result<Vec<PathBuf>, DockerError> {
    let out = std::process::Command::new("ldd").arg(binary).output().map_err(io_err(Path::new("ldd")))?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        if text.contains("not a dynamic executable") || String::from_utf8_lossy(&out.stderr).contains("not a dynamic") {
            return Ok(vec![]);
        }
        return Err(DockerError::Invalid(format!(
            "ldd {}: {}",
            binary.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(parse_ldd(&text))
}

/// The absolute library paths in `ldd` output.
fn parse_ldd(text: &str) -> Vec<PathBuf> {
    text.lines()
        .filter_map(|l| {
            let l = l.trim();
            let path = match l.split_once("=>") {
                Some((_, right)) => right.split_whitespace().next()?,
                None => l.split_whitespace().next()?,
            };
            path.starts_with('/').then(|| PathBuf::from(path))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ldd_output_gives_the_libraries_and_the_loader() {
        let text = "\tlinux-vdso.so.1 (0x00007ffc)\n\tlibgcc_s.so.1 => /lib/x86_64-linux-gnu/libgcc_s.so.1 (0x1)\n\tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x2)\n\t/lib64/ld-linux-x86-64.so.2 (0x3)\n";
        assert_eq!(
            parse_ldd(text),
            vec![
                PathBuf::from("/lib/x86_64-linux-gnu/libgcc_s.so.1"),
                PathBuf::from("/lib/x86_64-linux-gnu/libc.so.6"),
                PathBuf::from("/lib64/ld-linux-x86-64.so.2"),
            ]
        );
    }

    #[test]
    fn names_follow_the_contract() {
        let v: Version = "2.0.0".parse().unwrap();
        assert_eq!(image_tag(Role::Controller, v), "molt-controller:2.0.0");
        assert_eq!(image_tag(Role::ServiceEngine, v), "molt-se:2.0.0");
        assert_eq!(container_name("prod", "c1"), "molt-prod-c1");
    }

    #[test]
    fn archive_tags_reads_the_manifest_and_refuses_other_tars() {
        let dir = tempfile::tempdir().unwrap();
        let good = dir.path().join("image.tar");
        let mut b = tar::Builder::new(std::fs::File::create(&good).unwrap());
        let manifest = br#"[{"Config":"x.json","RepoTags":["molt-controller:2.0.0","molt-se:2.0.0"],"Layers":[]}]"#;
        let mut h = tar::Header::new_gnu();
        h.set_size(manifest.len() as u64);
        h.set_mode(0o644);
        b.append_data(&mut h, "manifest.json", &manifest[..]).unwrap();
        b.finish().unwrap();
        drop(b);
        assert_eq!(archive_tags(&good).unwrap(), vec!["molt-controller:2.0.0", "molt-se:2.0.0"]);

        let other = dir.path().join("other.tar");
        let mut b = tar::Builder::new(std::fs::File::create(&other).unwrap());
        let mut h = tar::Header::new_gnu();
        h.set_size(3);
        h.set_mode(0o644);
        b.append_data(&mut h, "bin/x", &b"abc"[..]).unwrap();
        b.finish().unwrap();
        drop(b);
        let e = archive_tags(&other).unwrap_err().to_string();
        assert!(e.contains("has no manifest.json"), "{e}");

        // An OCI index naming another image counts too (Docker's containerd
        // store loads by it).
        let oci = dir.path().join("oci.tar");
        let mut b = tar::Builder::new(std::fs::File::create(&oci).unwrap());
        let index = br#"{"manifests":[{"annotations":{"io.containerd.image.name":"docker.io/library/postgres:16","org.opencontainers.image.ref.name":"16"}}]}"#;
        for (name, data) in [("index.json", &index[..]), ("manifest.json", &manifest[..])] {
            let mut h = tar::Header::new_gnu();
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            b.append_data(&mut h, name, data).unwrap();
        }
        b.finish().unwrap();
        drop(b);
        assert_eq!(archive_tags(&oci).unwrap(), vec!["molt-controller:2.0.0", "molt-se:2.0.0", "postgres:16"]);
    }
}
