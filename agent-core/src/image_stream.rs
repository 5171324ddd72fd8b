//! The image streams a node sends: the leader's `FetchImage`, and a relay's
//! (a node serving the image it holds, or is still receiving, to the nodes
//! the leader sends to it).
//!
//! Reading runs on a blocking thread feeding a small channel, so a slow or
//! gone receiver stops the reader (the channel closes) and memory stays at a
//! few chunks whatever the image size. A relay's file may still be growing:
//! the reader follows it until the image is whole, and ends with an error
//! when the relay's own transfer stops (its receiver then resumes elsewhere).
//! [`Egress`] caps what a node sends in all, as its NIC would.

use std::{
    fs::File,
    io::{Read, Seek, SeekFrom},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use bytes::Bytes;
use tokio::sync::mpsc;
use tonic::Status;

use common::{fsutil, stripe::Stripe};

use crate::follower::stage::{Arrived, Chunk};

/// Bytes per chunk.
pub const CHUNK: usize = 1 << 20;
/// Chunks buffered between the reader thread and the socket.
pub const DEPTH: usize = 4;
/// A receiver that takes no chunk for this long loses its stream; a relay
/// file that does not grow for this long ends the stream.
pub const SEND_DEADLINE: Duration = Duration::from_secs(60);
/// How often a reader at the end of a growing file looks again.
const FOLLOW_POLL: Duration = Duration::from_millis(5);

/// A node's cap on the image bytes it sends per second, over all its streams.
#[derive(Debug)]
pub struct Egress {
    rate: u64,
    next: Mutex<Instant>,
}

impl Egress {
    /// A cap of `rate` bytes per second (none for `None` or 0).
    pub fn new(rate: Option<u64>) -> Option<Arc<Self>> {
        rate.filter(|r| *r > 0).map(|rate| Arc::new(Self { rate, next: Mutex::new(Instant::now()) }))
    }

    /// Reserves `n` bytes of the node's budget; returns when they may go.
    fn reserve(&self, n: usize) -> Instant {
        let mut next = self.next.lock().expect("egress lock");
        let now = Instant::now();
        let at = (*next).max(now);
        *next = at + Duration::from_secs_f64(n as f64 / self.rate as f64);
        at
    }
}

/// Where a growing file stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Growth {
    /// Still arriving: wait for more.
    Growing,
    /// Whole (verified): what is in the file is all there is.
    Done,
    /// The transfer feeding it stopped; why.
    Stopped(String),
}

/// What to stream and how.
pub struct StreamSpec {
    /// The open image file.
    pub file: File,
    /// Where to start (the stripe's first byte at or after it).
    pub offset: u64,
    /// The stripe to send (`Stripe::WHOLE`: every byte).
    pub stripe: Stripe,
    /// The image's size.
    pub size: u64,
    /// This stream's cap, bytes per second.
    pub rate: Option<u64>,
    /// The caps this stream shares with others: the node's over all its
    /// streams, a relay's over all the streams of one fetcher.
    pub egress: Vec<Arc<Egress>>,
    /// Counts the bytes sent.
    pub served: Arc<AtomicU64>,
    /// For a file still arriving: where it stands.
    pub growth: Option<Box<dyn Fn() -> Growth + Send>>,
    /// For a file still arriving: the chunks received and not yet in it.
    pub arrived: Option<Arc<Arrived>>,
    /// The same file opened with `O_DIRECT` (`fsutil::open_direct`), for a
    /// whole image: read past the page cache, which on these machines costs
    /// as much to fill on a read as on a write.
    pub direct: Option<File>,
}

impl std::fmt::Debug for StreamSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamSpec").field("offset", &self.offset).field("size", &self.size).finish_non_exhaustive()
    }
}

/// Starts streaming. `permit` is held until the reader ends (it counts the
/// stream against its limits).
pub fn stream<P: Send + 'static>(spec: StreamSpec, permit: P) -> mpsc::Receiver<Result<Chunk, Status>> {
    let (tx, rx) = mpsc::channel(DEPTH);
    let runtime = tokio::runtime::Handle::current();
    tokio::task::spawn_blocking(move || {
        let _permit = permit;
        let fail = |why: String| {
            let _ = tx.blocking_send(Err(common::errors::ErrorKind::Unavailable.grpc(why)));
        };
        let StreamSpec { mut file, offset, stripe, size, rate, egress, served, growth, arrived, direct } = spec;
        let mut pos = stripe.next_byte(offset);
        let started = Instant::now();
        let mut sent = 0u64;
        let mut last_growth = Instant::now();
        let mut reread = false;
        while pos < size {
            let want = (CHUNK as u64).min(size - pos).min(stripe.run_end(pos) - pos) as usize;
            // A relay's chunks still on their way to its file first, then the file.
            let early = arrived.as_ref().and_then(|a| a.get(pos, want));
            let data = match early.or_else(|| direct.as_ref().and_then(|d| fsutil::read_direct(d, pos, want))) {
                Some(data) => data,
                None => match read_at(&mut file, pos, want) {
                    Ok(data) => data,
                    Err(e) => return fail(format!("cannot read image: {e}")),
                },
            };
            let filled = data.len();
            if filled == 0 {
                // At the end of what is there.
                match growth.as_ref().map(|g| g()) {
                    Some(Growth::Growing) if last_growth.elapsed() < SEND_DEADLINE => {
                        std::thread::sleep(FOLLOW_POLL);
                        continue;
                    }
                    Some(Growth::Growing) => return fail("the relay's own copy stopped growing".into()),
                    // Whole now: its last bytes may have come after this read.
                    Some(Growth::Done) if !reread => {
                        reread = true;
                        continue;
                    }
                    Some(Growth::Stopped(why)) => return fail(format!("the relay's own transfer stopped: {why}")),
                    _ => return fail(format!("the image ends at byte {pos} of {size}")),
                }
            }
            last_growth = Instant::now();
            if let Some(rate) = rate {
                // Pace to `rate`: sleep until the bytes sent so far are due.
                let due = Duration::from_secs_f64(sent as f64 / rate as f64);
                if let Some(wait) = due.checked_sub(started.elapsed()) {
                    std::thread::sleep(wait);
                }
            }
            for e in &egress {
                let at = e.reserve(filled);
                if let Some(wait) = at.checked_duration_since(Instant::now()) {
                    std::thread::sleep(wait);
                }
            }
            let chunk = Chunk { offset: pos, data };
            match runtime.block_on(tokio::time::timeout(SEND_DEADLINE, tx.send(Ok(chunk)))) {
                Ok(Ok(())) => {}
                // The receiver went away, or reads nothing: end the stream (it resumes from its offset).
                Ok(Err(_)) | Err(_) => return,
            }
            sent += filled as u64;
            served.fetch_add(filled as u64, Ordering::Relaxed);
            pos = stripe.after(pos + filled as u64);
        }
    });
    rx
}

/// Up to `want` bytes of `file` at `pos` (fewer at its end), read into
/// spare capacity: no 1 MiB memset per chunk.
fn read_at(file: &mut File, pos: u64, want: usize) -> std::io::Result<Bytes> {
    file.seek(SeekFrom::Start(pos))?;
    let mut buf = Vec::with_capacity(want);
    Read::by_ref(file).take(want as u64).read_to_end(&mut buf)?;
    Ok(Bytes::from(buf))
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_growing_file_is_followed_to_its_end_and_a_stopped_one_ends_the_stream() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("image.part");
        let mut w = File::create(&path).unwrap();
        w.write_all(&[1u8; 3000]).unwrap();
        let state = Arc::new(Mutex::new(Growth::Growing));
        let g = state.clone();
        let spec = StreamSpec {
            file: File::open(&path).unwrap(),
            offset: 1000,
            stripe: Stripe::WHOLE,
            size: 6000,
            rate: None,
            egress: vec![],
            served: Arc::default(),
            growth: Some(Box::new(move || g.lock().unwrap().clone())),
            arrived: None,
            direct: None,
        };
        let mut rx = stream(spec, ());
        let first = rx.recv().await.unwrap().unwrap();
        assert_eq!((first.offset, first.data.len()), (1000, 2000));
        tokio::time::sleep(Duration::from_millis(30)).await;
        assert!(rx.try_recv().is_err(), "nothing more until the file grows");
        w.write_all(&[2u8; 3000]).unwrap();
        *state.lock().unwrap() = Growth::Done;
        let second = rx.recv().await.unwrap().unwrap();
        assert_eq!((second.offset, second.data.len()), (3000, 3000));
        assert!(rx.recv().await.is_none(), "the stream ends at the image's size");

        let state = Arc::new(Mutex::new(Growth::Growing));
        let g = state.clone();
        let spec = StreamSpec {
            file: File::open(&path).unwrap(),
            offset: 6000,
            stripe: Stripe::WHOLE,
            size: 9000,
            rate: None,
            egress: vec![],
            served: Arc::default(),
            growth: Some(Box::new(move || g.lock().unwrap().clone())),
            arrived: None,
            direct: None,
        };
        let mut rx = stream(spec, ());
        *state.lock().unwrap() = Growth::Stopped("digest mismatch".into());
        let e = rx.recv().await.unwrap().unwrap_err();
        assert!(e.message().contains("digest mismatch"), "{e:?}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_stripe_stream_sends_only_its_runs_in_order_from_inside_one() {
        use common::stripe::RUN;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("image.pkg");
        let image: Vec<u8> = (0..7 * RUN + 100).map(|i| (i / RUN) as u8).collect();
        std::fs::write(&path, &image).unwrap();
        let spec = StreamSpec {
            file: File::open(&path).unwrap(),
            offset: RUN + 10,
            stripe: Stripe::new(1, 3).unwrap(),
            size: image.len() as u64,
            rate: None,
            egress: vec![],
            served: Arc::default(),
            growth: None,
            arrived: None,
            direct: None,
        };
        let mut rx = stream(spec, ());
        let mut got = vec![];
        while let Some(c) = rx.recv().await {
            let c = c.unwrap();
            assert!(c.data.iter().all(|b| u64::from(*b) == c.offset / RUN), "bytes from their own offset");
            got.push((c.offset, c.data.len() as u64));
        }
        assert_eq!(got, vec![(RUN + 10, RUN - 10), (4 * RUN, RUN), (7 * RUN, 100)]);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_egress_cap_holds_over_two_streams() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("image.pkg");
        std::fs::write(&path, vec![0u8; 2 * CHUNK]).unwrap();
        let egress = Egress::new(Some(8 * CHUNK as u64));
        let started = Instant::now();
        let mut rxs: Vec<_> = (0..2)
            .map(|_| {
                stream(
                    StreamSpec {
                        file: File::open(&path).unwrap(),
                        offset: 0,
                        stripe: Stripe::WHOLE,
                        size: 2 * CHUNK as u64,
                        rate: None,
                        egress: egress.clone().into_iter().collect(),
                        served: Arc::default(),
                        growth: None,
                        arrived: None,
                        direct: None,
                    },
                    (),
                )
            })
            .collect();
        for rx in &mut rxs {
            while let Some(c) = rx.recv().await {
                c.unwrap();
            }
        }
        // 4 MiB at 8 MiB/s: the first chunk goes at once, the last three wait 3/8 s.
        assert!(started.elapsed() >= Duration::from_millis(370), "{:?}", started.elapsed());
    }
}
