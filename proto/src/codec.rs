//! The codec of every molt.v1 service: prost, with smaller per-call
//! buffers than tonic's default.
//!
//! tonic allocates `buffer_size` bytes up front for each direction of each
//! call (8 KiB by default) and keeps them while the call lasts. A session
//! is a call that lasts as long as the node runs, so at 10,000 SEs the
//! default buffers alone held 160 MiB of the leader's memory for messages
//! of a few hundred bytes. A larger message still fits: the buffers grow
//! to the size of what they carry (an image chunk reserves its whole
//! length at once), so only the idle cost changes.

use std::marker::PhantomData;

use tonic::codec::{BufferSettings, Codec};
use tonic_prost::{ProstCodec, ProstDecoder, ProstEncoder};

/// Bytes each direction of a call holds before its first message.
pub const BUFFER_SIZE: usize = 1024;
/// Bytes encoded before a streaming call yields to the transport (tonic's
/// default).
pub const YIELD_THRESHOLD: usize = 32 * 1024;

/// prost with [`BUFFER_SIZE`] buffers.
#[derive(Debug, Clone)]
pub struct SmallBuffers<T, U>(PhantomData<(T, U)>);

impl<T, U> Default for SmallBuffers<T, U> {
    fn default() -> Self {
        Self(PhantomData)
    }
}

impl<T, U> Codec for SmallBuffers<T, U>
where
    T: prost::Message + Send + 'static,
    U: prost::Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = ProstDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstCodec::<T, U>::raw_encoder(BufferSettings::new(BUFFER_SIZE, YIELD_THRESHOLD))
    }

    fn decoder(&mut self) -> Self::Decoder {
        ProstCodec::<T, U>::raw_decoder(BufferSettings::new(BUFFER_SIZE, YIELD_THRESHOLD))
    }
}
