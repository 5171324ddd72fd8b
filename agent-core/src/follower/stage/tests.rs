use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use common::stripe;
use futures_util::FutureExt;

use super::*;

/// Serves `bytes` in 64 KiB chunks, cut into `stripes` (a request for
/// another number of stripes is told to restripe); the first request of
/// stripe `cut.0` ends after its first `cut.1` bytes with a transport
/// error; stripe `slow` waits 20 ms before each chunk.
struct Fake {
    bytes: Vec<u8>,
    stripes: u32,
    cut: Option<(u32, u64)>,
    slow: Option<u32>,
    requests: AtomicUsize,
    served: AtomicU64,
    offsets: Mutex<Vec<(u64, Stripe)>>,
}

impl Fake {
    fn new(bytes: Vec<u8>, cut_after: Option<u64>) -> Self {
        Self {
            bytes,
            stripes: 1,
            cut: cut_after.map(|c| (0, c)),
            slow: None,
            requests: 0.into(),
            served: 0.into(),
            offsets: Mutex::default(),
        }
    }
}

impl ImageSource for Fake {
    fn fetch(
        &self,
        _sha: Sha256Digest,
        offset: u64,
        stripe: Stripe,
    ) -> futures_util::future::BoxFuture<'_, Result<ChunkStream, FetchError>> {
        async move {
            self.requests.fetch_add(1, Ordering::SeqCst);
            if stripe.count() != self.stripes {
                return Err(FetchError::Restripe(self.stripes));
            }
            let first = {
                let mut offsets = self.offsets.lock().unwrap();
                offsets.push((offset, stripe));
                offsets.iter().filter(|(_, s)| *s == stripe).count() == 1
            };
            let mut budget = match self.cut {
                Some((index, c)) if first && index == stripe.index() => c,
                _ => u64::MAX,
            };
            let mut items: Vec<Result<Chunk, String>> = Vec::new();
            let size = self.bytes.len() as u64;
            let mut pos = stripe.next_byte(offset);
            while pos < size && budget > 0 {
                let n = (64 << 10).min(size - pos).min(stripe.run_end(pos) - pos).min(budget);
                let data = Bytes::copy_from_slice(&self.bytes[pos as usize..(pos + n) as usize]);
                items.push(Ok(Chunk { offset: pos, data }));
                self.served.fetch_add(n, Ordering::SeqCst);
                budget -= n;
                pos = stripe.after(pos + n);
            }
            if pos < size {
                items.push(Err("connection reset".into()));
            }
            let slow = self.slow == Some(stripe.index());
            let s: ChunkStream = Box::pin(futures_util::stream::iter(items).then(move |c| async move {
                if slow {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                c
            }));
            Ok(s)
        }
        .boxed()
    }
}

fn package_bytes(dir: &Path, kind: DeploymentKind) -> Vec<u8> {
    package_of_size(dir, kind, 700_000)
}

/// A package whose payload holds about `size` bytes.
fn package_of_size(dir: &Path, kind: DeploymentKind, size: u32) -> Vec<u8> {
    let payload = dir.join("payload");
    fs::create_dir_all(payload.join("bin")).unwrap();
    fs::write(payload.join("bin/controller-agent"), b"c").unwrap();
    // Not compressible much: a package of about `size` bytes.
    let noise = (0..size).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect::<Vec<_>>();
    fs::write(payload.join("bin/se-agent"), noise).unwrap();
    // What a docker payload requires (a vm payload may hold it too).
    fs::write(payload.join(package::DOCKER_IMAGE_ENTRY), b"not a real image").unwrap();
    let out = dir.join("p.pkg");
    package::build(&payload, "2.0.0".parse().unwrap(), "1.0.0".parse().unwrap(), kind, &out).unwrap();
    fs::read(out).unwrap()
}

/// A small vm package of `version`, and its reference.
fn package_of_version(dir: &Path, version: &str) -> (Vec<u8>, ImageRef) {
    let payload = dir.join(format!("payload-{version}"));
    fs::create_dir_all(payload.join("bin")).unwrap();
    fs::write(payload.join("bin/controller-agent"), version.as_bytes()).unwrap();
    fs::write(payload.join("bin/se-agent"), version.as_bytes()).unwrap();
    let out = dir.join(format!("{version}.pkg"));
    package::build(&payload, version.parse().unwrap(), "1.0.0".parse().unwrap(), DeploymentKind::Vm, &out).unwrap();
    let bytes = fs::read(out).unwrap();
    let image = ImageRef { version: version.parse().unwrap(), ..image_of(&bytes, DeploymentKind::Vm) };
    (bytes, image)
}

fn image_of(bytes: &[u8], kind: DeploymentKind) -> ImageRef {
    ImageRef {
        sha256: Sha256Digest::of(bytes),
        size: bytes.len() as u64,
        version: "2.0.0".parse().unwrap(),
        kind,
        min_compatible: "1.0.0".parse().unwrap(),
    }
}

#[tokio::test]
async fn a_cut_transfer_resumes_from_the_bytes_already_received() {
    let d = tempfile::tempdir().unwrap();
    let bytes = package_bytes(d.path(), DeploymentKind::Vm);
    let cut = 300_000u64;
    let source = Fake::new(bytes.clone(), Some(cut));
    let stager = Stager::open(&d.path().join("node"), DeploymentKind::Vm).unwrap();
    let image = image_of(&bytes, DeploymentKind::Vm);
    let staged = stager.stage(&image, &source).await.unwrap();
    assert_eq!(staged.sha256, image.sha256);
    assert_eq!(
        *source.offsets.lock().unwrap(),
        vec![(0, Stripe::WHOLE), (cut, Stripe::WHOLE)],
        "the second request starts where the first broke"
    );
    assert_eq!(source.served.load(Ordering::SeqCst), bytes.len() as u64, "no byte was fetched twice");
    let kept = fs::read(stager.path_of(&image.sha256).unwrap()).unwrap();
    assert_eq!(kept, bytes);
    assert!(stager.transfers().is_empty());
}

#[tokio::test]
async fn a_partial_file_left_by_a_restart_is_resumed_and_rehashed() {
    let d = tempfile::tempdir().unwrap();
    let bytes = package_bytes(d.path(), DeploymentKind::Vm);
    let image = image_of(&bytes, DeploymentKind::Vm);
    let node = d.path().join("node");
    let stager = Stager::open(&node, DeploymentKind::Vm).unwrap();
    fs::write(stager.part_path(&image.sha256), &bytes[..123_456]).unwrap();
    // A new stager, as after a reboot.
    let stager = Stager::open(&node, DeploymentKind::Vm).unwrap();
    assert!(stager.staged().is_empty(), "a partial file is not a staged image");
    let source = Fake::new(bytes.clone(), None);
    stager.stage(&image, &source).await.unwrap();
    // Resumed from the last whole block (the writer appends whole blocks directly).
    assert_eq!(*source.offsets.lock().unwrap(), vec![(123_456 - 123_456 % fsutil::DIRECT_ALIGN as u64, Stripe::WHOLE)]);
    // And the staged image is listed after another restart.
    let again = Stager::open(&node, DeploymentKind::Vm).unwrap();
    assert_eq!(again.staged().len(), 1);
    assert_eq!(again.staged()[0].version.to_string(), "2.0.0");
}

#[tokio::test]
async fn a_digest_mismatch_leaves_nothing_behind() {
    let d = tempfile::tempdir().unwrap();
    let bytes = package_bytes(d.path(), DeploymentKind::Vm);
    let image = image_of(&bytes, DeploymentKind::Vm);
    let mut corrupt = bytes.clone();
    let n = corrupt.len();
    corrupt[n / 2] ^= 1;
    let stager = Stager::open(&d.path().join("node"), DeploymentKind::Vm).unwrap();
    let err = stager.stage(&image, &Fake::new(corrupt, None)).await.unwrap_err();
    assert!(matches!(err, StageError::DigestMismatch { .. }), "{err}");
    assert_eq!(fs::read_dir(d.path().join("node/staging")).unwrap().count(), 0, "nothing half-staged");
    assert!(stager.staged().is_empty());
}

#[tokio::test]
async fn wrong_kind_and_too_little_disk_are_refused_before_any_byte_moves() {
    let d = tempfile::tempdir().unwrap();
    let bytes = package_bytes(d.path(), DeploymentKind::Docker);
    let stager = Stager::open(&d.path().join("node"), DeploymentKind::Vm).unwrap();
    let source = Fake::new(bytes.clone(), None);
    let err = stager.stage(&image_of(&bytes, DeploymentKind::Docker), &source).await.unwrap_err();
    assert!(matches!(err, StageError::KindMismatch { .. }), "{err}");
    assert!(err.to_string().contains("controller.pkg"), "{err}");
    let mut huge = image_of(&bytes, DeploymentKind::Vm);
    huge.size = u64::MAX / 4;
    let err = stager.stage(&huge, &source).await.unwrap_err();
    assert!(matches!(err, StageError::NoSpace { .. }), "{err}");
    assert_eq!(source.requests.load(Ordering::SeqCst), 0);
    assert_eq!(fs::read_dir(d.path().join("node/staging")).unwrap().count(), 0);
}

#[tokio::test]
async fn a_stream_longer_than_announced_is_refused() {
    let d = tempfile::tempdir().unwrap();
    let bytes = package_bytes(d.path(), DeploymentKind::Vm);
    let mut image = image_of(&bytes, DeploymentKind::Vm);
    image.size -= 10;
    let stager = Stager::open(&d.path().join("node"), DeploymentKind::Vm).unwrap();
    let err = stager.stage(&image, &Fake::new(bytes, None)).await.unwrap_err();
    assert!(matches!(err, StageError::Protocol(_)), "{err}");
    assert_eq!(fs::read_dir(d.path().join("node/staging")).unwrap().count(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_stagings_of_one_image_at_once_share_one_transfer() {
    // A prestage and an upgrade can ask for the same image at the same moment;
    // they must not append into the same `.part` file.
    let d = tempfile::tempdir().unwrap();
    let bytes = package_bytes(d.path(), DeploymentKind::Vm);
    let source = Fake::new(bytes.clone(), None);
    let stager = Stager::open(&d.path().join("node"), DeploymentKind::Vm).unwrap();
    let image = image_of(&bytes, DeploymentKind::Vm);
    let (a, b) = tokio::join!(stager.stage(&image, &source), stager.stage(&image, &source));
    a.unwrap();
    b.unwrap();
    assert_eq!(source.served.load(Ordering::SeqCst), bytes.len() as u64, "the image was fetched once");
    let staged = stager.path_of(&image.sha256).unwrap();
    assert_eq!(fs::read(staged).unwrap(), bytes);
}

/// A node's own store, with the verdict it gives on its file.
struct Local(LocalCopy);

impl ImageSource for Local {
    fn local_copy(&self, _sha: &Sha256Digest) -> Option<LocalCopy> {
        Some(self.0.clone())
    }
    fn fetch(
        &self,
        _: Sha256Digest,
        _: u64,
        _: Stripe,
    ) -> futures_util::future::BoxFuture<'_, Result<ChunkStream, FetchError>> {
        async { Err(FetchError::Failed("a local copy is never fetched".to_owned())) }.boxed()
    }
}

#[tokio::test]
async fn a_local_copy_is_hashed_again_unless_its_digest_was_verified_as_it_is() {
    let d = tempfile::tempdir().unwrap();
    let bytes = package_bytes(d.path(), DeploymentKind::Vm);
    let image = image_of(&bytes, DeploymentKind::Vm);
    let store = d.path().join("store.pkg");
    let mut corrupt = bytes.clone();
    *corrupt.last_mut().unwrap() ^= 1;
    fs::write(&store, &corrupt).unwrap();
    let stager = Stager::open(&d.path().join("node"), DeploymentKind::Vm).unwrap();
    let unverified = Local(LocalCopy { path: store.clone(), digest_verified: false });
    let e = stager.stage(&image, &unverified).await.unwrap_err();
    assert!(matches!(e, StageError::DigestMismatch { .. }), "{e}");
    assert!(stager.staged().is_empty());
    // The store vouches for a good file: linked, not hashed (the size and
    // the manifest are still checked).
    fs::write(&store, &bytes).unwrap();
    let verified = Local(LocalCopy { path: store.clone(), digest_verified: true });
    stager.stage(&image, &verified).await.unwrap();
    assert_eq!(fs::read(stager.path_of(&image.sha256).unwrap()).unwrap(), bytes);
    let other = Stager::open(&d.path().join("node2"), DeploymentKind::Vm).unwrap();
    fs::write(&store, &bytes[..bytes.len() - 1]).unwrap();
    let e = other.stage(&image, &verified).await.unwrap_err();
    assert!(matches!(e, StageError::DigestMismatch { .. }), "a file of another size: {e}");
}

#[tokio::test]
async fn a_striped_transfer_arriving_out_of_order_is_written_in_order_and_a_broken_stripe_resumes() {
    let d = tempfile::tempdir().unwrap();
    let bytes = package_of_size(d.path(), DeploymentKind::Vm, 5_500_000);
    assert!(bytes.len() as u64 > 5 * stripe::RUN, "{} bytes: every stripe has runs", bytes.len());
    let image = image_of(&bytes, DeploymentKind::Vm);
    let stager = Stager::open(&d.path().join("node"), DeploymentKind::Vm).unwrap();
    // Stripe 0 comes slowly, so stripes 1 and 2 run ahead of the bytes
    // written; stripe 1's first stream breaks inside its first run.
    let source = Fake { stripes: 3, cut: Some((1, 300_000)), slow: Some(0), ..Fake::new(bytes.clone(), None) };
    stager.stage(&image, &source).await.unwrap();
    assert_eq!(fs::read(stager.path_of(&image.sha256).unwrap()).unwrap(), bytes);
    assert_eq!(source.served.load(Ordering::SeqCst), bytes.len() as u64, "every byte fetched once");
    let mut asked = source.offsets.lock().unwrap().clone();
    asked.sort();
    let s = |i| Stripe::new(i, 3).unwrap();
    assert_eq!(
        asked,
        vec![(0, s(0)), (stripe::RUN, s(1)), (stripe::RUN + 300_000, s(1)), (2 * stripe::RUN, s(2))],
        "one whole-image request told to restripe, then the three stripes and stripe 1 resumed at its byte"
    );
    assert_eq!(source.requests.load(Ordering::SeqCst), 5);
}

#[test]
fn a_relay_finds_arrived_chunks_until_they_are_in_the_file() {
    let a = Arrived::default();
    a.insert(4096, Bytes::from(vec![1u8; 4096]));
    a.insert(0, Bytes::from(vec![0u8; 4096]));
    assert_eq!(a.get(100, 10).unwrap(), Bytes::from(vec![0u8; 10]), "inside a chunk, at most what is asked");
    assert_eq!(a.get(4000, 1 << 20).unwrap().len(), 96, "up to the chunk's end");
    assert!(a.get(8192, 1).is_none(), "not arrived");
    a.written(4096 + 100);
    assert!(a.get(0, 1).is_none(), "in the file now: read from there");
    assert_eq!(a.get(4096, 1).unwrap(), Bytes::from(vec![1u8]), "partly in the file: kept until wholly");
}

/// Issue 25, 3a: an SE that staged an unsigned image, then was given
/// `trusted_keys` and restarted, installed that image in the next upgrade:
/// staged images were listed again without a signature check. They are
/// checked at every start, and one the node no longer trusts is deleted.
#[tokio::test]
async fn a_staged_image_the_node_no_longer_trusts_is_not_offered_after_a_restart() {
    let d = tempfile::tempdir().unwrap();
    let bytes = package_bytes(d.path(), DeploymentKind::Vm);
    let image = image_of(&bytes, DeploymentKind::Vm);
    let node = d.path().join("node");
    let stager = Stager::open(&node, DeploymentKind::Vm).unwrap();
    stager.stage(&image, &Fake::new(bytes.clone(), None)).await.unwrap();
    assert!(stager.path_of(&image.sha256).is_some());
    let key = package::signing::keygen(&d.path().join("keys")).unwrap();
    let restarted = Stager::open_trusting(&node, DeploymentKind::Vm, vec![key]).unwrap();
    assert!(restarted.staged().is_empty(), "{:?}", restarted.staged());
    assert!(restarted.path_of(&image.sha256).is_none());
    assert!(!stager.final_path(&image.sha256).exists(), "the untrusted copy is deleted");
}

/// Issue 25, 7: staging was never pruned (five images per controller after
/// a day of testing). It keeps what the node may still install or return to.
#[tokio::test]
async fn staging_keeps_only_the_versions_asked_for() {
    let d = tempfile::tempdir().unwrap();
    let stager = Stager::open(&d.path().join("node"), DeploymentKind::Vm).unwrap();
    let mut images = Vec::new();
    for v in ["1.0.0", "2.0.0", "2.1.0", "3.0.0"] {
        let (bytes, image) = package_of_version(d.path(), v);
        stager.stage(&image, &Fake::new(bytes, None)).await.unwrap();
        images.push(image);
    }
    assert_eq!(stager.staged().len(), 4);
    // Running 2.0.0, previous slot 1.0.0, 3.0.0 just staged: 2.1.0 goes.
    let keep: Vec<Version> = ["3.0.0", "2.0.0", "1.0.0"].iter().map(|v| v.parse().unwrap()).collect();
    let gone = stager.prune(&keep);
    assert_eq!(gone.iter().map(|i| i.version.to_string()).collect::<Vec<_>>(), ["2.1.0"]);
    assert!(stager.path_of(&images[2].sha256).is_none() && !stager.final_path(&images[2].sha256).exists());
    for i in [0, 1, 3] {
        assert!(stager.final_path(&images[i].sha256).exists(), "{}", images[i].version);
    }
    // After a restart the same three are found.
    let again = Stager::open(&d.path().join("node"), DeploymentKind::Vm).unwrap();
    assert_eq!(again.staged().len(), 3);
}
