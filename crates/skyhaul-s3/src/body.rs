//! A PutObject body fed by a stream of chunks, so that an object goes from a read into a write
//! without being held in memory whole.

use bytes::Bytes;
use futures::StreamExt;
use http_body::{Body, Frame, SizeHint};
use skyhaul_store::{short_body, Chunks, Error};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{ready, Context, Poll};

/// The body of one streamed write of exactly `size` bytes. A body that fails or holds another
/// size ends in an error, which makes the HTTP client abort the request: with fewer bytes
/// than its Content-Length the server never stores the object.
pub(crate) struct ChunkBody {
    /// Behind a mutex only because the SDK wants a `Sync` body; polling has `&mut self`, so
    /// it is never locked.
    chunks: Mutex<Chunks>,
    left: u64,
    size: u64,
    target: (String, String),
    /// The error the body ended with, for the caller: the SDK reports it only as a failed
    /// dispatch, which would lose its kind (a corrupt read is not a network fault).
    failure: Arc<Mutex<Option<Error>>>,
}

impl ChunkBody {
    pub(crate) fn new(chunks: Chunks, size: u64, store: &str, key: &str) -> (Self, Failure) {
        let failure = Arc::new(Mutex::new(None));
        let body = ChunkBody {
            chunks: Mutex::new(chunks),
            left: size,
            size,
            target: (store.to_string(), key.to_string()),
            failure: failure.clone(),
        };
        (body, Failure(failure))
    }

    fn fail(&mut self, e: Error) -> Poll<Option<Result<Frame<Bytes>, Error>>> {
        *self.failure.lock().expect("body failure lock") = Some(e.clone());
        Poll::Ready(Some(Err(e)))
    }
}

/// Where a [`ChunkBody`]'s own error is left for the request's caller.
pub(crate) struct Failure(Arc<Mutex<Option<Error>>>);

impl Failure {
    pub(crate) fn take(&self) -> Option<Error> {
        self.0.lock().expect("body failure lock").take()
    }
}

impl Body for ChunkBody {
    type Data = Bytes;
    type Error = Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Error>>> {
        let this = self.get_mut();
        let next = ready!(this
            .chunks
            .get_mut()
            .expect("body chunks lock")
            .poll_next_unpin(cx));
        let sent = this.size - this.left;
        match next {
            Some(Ok(chunk)) if chunk.len() as u64 > this.left => {
                let got = sent + chunk.len() as u64;
                let e = short_body(&this.target.0, &this.target.1, got, this.size);
                this.fail(e)
            }
            Some(Ok(chunk)) => {
                this.left -= chunk.len() as u64;
                Poll::Ready(Some(Ok(Frame::data(chunk))))
            }
            Some(Err(e)) => this.fail(e),
            None if this.left > 0 => {
                let e = short_body(&this.target.0, &this.target.1, sent, this.size);
                this.fail(e)
            }
            None => Poll::Ready(None),
        }
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.left)
    }
}
