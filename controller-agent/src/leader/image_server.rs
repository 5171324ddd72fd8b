//! `FetchImage`: streams a verified image from an offset in 1 MiB chunks.
//! Reading runs on a blocking thread feeding a small channel, so a slow or
//! gone receiver stops the reader (the channel closes) and memory stays at a
//! few chunks whatever the image size.

use std::{
    fs::File,
    io::{Read, Seek, SeekFrom},
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use bytes::BytesMut;
use proto::v1::ImageChunk;
use tokio::sync::mpsc;
use tonic::Status;

/// Bytes per chunk.
pub const CHUNK: usize = 1 << 20;
/// Chunks buffered between the reader thread and the socket.
const DEPTH: usize = 4;

/// Starts streaming `path` from `offset`. `rate` caps bytes per second.
pub fn stream(
    path: PathBuf,
    offset: u64,
    rate: Option<u64>,
    served: Arc<AtomicU64>,
) -> mpsc::Receiver<Result<ImageChunk, Status>> {
    let (tx, rx) = mpsc::channel(DEPTH);
    tokio::task::spawn_blocking(move || {
        let mut file = match File::open(&path).and_then(|mut f| f.seek(SeekFrom::Start(offset)).map(|_| f)) {
            Ok(f) => f,
            Err(e) => {
                let _ = tx.blocking_send(Err(Status::internal(format!("cannot read image: {e}"))));
                return;
            }
        };
        let started = Instant::now();
        let mut pos = offset;
        let mut sent = 0u64;
        loop {
            let mut buf = BytesMut::zeroed(CHUNK);
            let mut filled = 0;
            while filled < CHUNK {
                match file.read(&mut buf[filled..]) {
                    Ok(0) => break,
                    Ok(n) => filled += n,
                    Err(e) => {
                        let _ = tx.blocking_send(Err(Status::internal(format!("cannot read image: {e}"))));
                        return;
                    }
                }
            }
            if filled == 0 {
                return;
            }
            buf.truncate(filled);
            if let Some(rate) = rate {
                // Pace to `rate`: sleep until the bytes sent so far are due.
                let due = Duration::from_secs_f64(sent as f64 / rate as f64);
                if let Some(wait) = due.checked_sub(started.elapsed()) {
                    std::thread::sleep(wait);
                }
            }
            let chunk = ImageChunk { offset: pos, data: buf.freeze() };
            if tx.blocking_send(Ok(chunk)).is_err() {
                return; // the receiver went away
            }
            pos += filled as u64;
            sent += filled as u64;
            served.fetch_add(filled as u64, Ordering::Relaxed);
        }
    });
    rx
}
