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
/// than its Content-Length the server never stores the object. The chunk that completes
/// the size is held back until the stream is seen to end there, because the client stops
/// reading a body once Content-Length bytes have gone, and a body that runs on would
/// otherwise be stored cut short without an error.
pub(crate) struct ChunkBody {
    /// Behind a mutex only because the SDK wants a `Sync` body; polling has `&mut self`, so
    /// it is never locked.
    chunks: Mutex<Chunks>,
    size: u64,
    /// Bytes given out so far.
    sent: u64,
    /// The chunk that completes the size, until the stream has ended.
    last: Option<Bytes>,
    /// Set once the body has ended, well or not: nothing is read after that.
    done: bool,
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
            size,
            sent: 0,
            last: None,
            done: false,
            target: (store.to_string(), key.to_string()),
            failure: failure.clone(),
        };
        (body, Failure(failure))
    }

    fn fail(&mut self, e: Error) -> Poll<Option<Result<Frame<Bytes>, Error>>> {
        self.done = true;
        self.failure
            .lock()
            .expect("body failure lock")
            .get_or_insert(e.clone());
        Poll::Ready(Some(Err(e)))
    }

    fn wrong_size(&mut self, got: u64) -> Poll<Option<Result<Frame<Bytes>, Error>>> {
        let e = short_body(&self.target.0, &self.target.1, got, self.size);
        self.fail(e)
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
        loop {
            if this.done {
                return Poll::Ready(None);
            }
            let next = ready!(this
                .chunks
                .get_mut()
                .expect("body chunks lock")
                .poll_next_unpin(cx));
            match next {
                Some(Err(e)) => return this.fail(e),
                Some(Ok(chunk)) if chunk.is_empty() => {}
                Some(Ok(chunk))
                    if this.last.is_some() || this.sent + chunk.len() as u64 > this.size =>
                {
                    let got = this.sent + chunk.len() as u64;
                    return this.wrong_size(got);
                }
                Some(Ok(chunk)) => {
                    this.sent += chunk.len() as u64;
                    if this.sent < this.size {
                        return Poll::Ready(Some(Ok(Frame::data(chunk))));
                    }
                    // The size is complete: hand this chunk over once the stream ends.
                    this.last = Some(chunk);
                }
                None if this.sent < this.size => return this.wrong_size(this.sent),
                None => {
                    this.done = true;
                    return Poll::Ready(this.last.take().map(|c| Ok(Frame::data(c))));
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done
    }

    fn size_hint(&self) -> SizeHint {
        let held = self.last.as_ref().map_or(0, |c| c.len() as u64);
        SizeHint::with_exact(self.size - self.sent + held)
    }
}
