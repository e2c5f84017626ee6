//! The client's request body on its way upstream.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use hyper::body::{Body, Frame, Incoming, SizeHint};

/// The client's request body as sent upstream: the same stream, frame for frame, with its
/// errors marked as the client's ([`ClientBodyError`]), so that a malformed body (a bad chunk
/// size, a body cut short) can be told from an upstream failure when the upstream request
/// fails.
#[derive(Debug)]
pub struct ClientBody(Incoming);

impl ClientBody {
    pub fn new(body: Incoming) -> ClientBody {
        ClientBody(body)
    }
}

/// An error of the client's request body (see [`ClientBody`]).
#[derive(Debug, thiserror::Error)]
#[error("client request body: {0}")]
pub struct ClientBodyError(#[source] hyper::Error);

impl Body for ClientBody {
    type Data = Bytes;
    type Error = ClientBodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, ClientBodyError>>> {
        Pin::new(&mut self.get_mut().0)
            .poll_frame(cx)
            .map_err(ClientBodyError)
    }

    fn is_end_stream(&self) -> bool {
        self.0.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.0.size_hint()
    }
}

/// Whether `e` (an upstream request's error) was caused by the client's request body.
pub(crate) fn client_body_failed(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut next = Some(e);
    while let Some(err) = next {
        if err.is::<ClientBodyError>() {
            return true;
        }
        next = err.source();
    }
    false
}
