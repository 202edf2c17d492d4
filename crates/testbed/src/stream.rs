//! XML stream framing: bytes in, stream header / stanzas / stream end out.
//!
//! A push parser ([`rxml::RawParser`]) feeds a [`minidom::tree_builder::TreeBuilder`];
//! every element closed at depth 1 (directly under `<stream:stream>`) is a
//! stanza. After SASL success the stream restarts with a fresh
//! [`XmlReader`] over the same read half.

use minidom::Element;
use minidom::tree_builder::TreeBuilder;
use rxml::error::EndOrError;
use rxml::{Parse, RawEvent, RawParser};
use tokio::io::{AsyncRead, AsyncReadExt};

use crate::error::{Error, Result};

/// One unit read from the stream.
#[derive(Debug)]
pub(crate) enum Frame {
    /// `<stream:stream ...>` was opened by the peer.
    StreamOpen,
    /// A complete top-level element.
    Stanza(Element),
    /// `</stream:stream>` or the connection closed.
    StreamEnd,
}

/// Reads [`Frame`]s from `R`.
pub(crate) struct XmlReader<R> {
    inner: R,
    buf: Vec<u8>,
    parser: RawParser,
    tree: TreeBuilder,
}

// TreeBuilder has no Debug impl, so no derive here.
impl<R> std::fmt::Debug for XmlReader<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("XmlReader")
            .field("buffered", &self.buf.len())
            .field("depth", &self.tree.depth())
            .finish_non_exhaustive()
    }
}

impl<R: AsyncRead + Unpin> XmlReader<R> {
    pub(crate) fn new(inner: R) -> Self {
        Self {
            inner,
            buf: Vec::with_capacity(8192),
            parser: RawParser::new(),
            tree: TreeBuilder::new(),
        }
    }

    /// Gives back the reader, for a stream restart.
    pub(crate) fn into_inner(self) -> R {
        self.inner
    }

    /// The next frame; reads from the socket as needed.
    pub(crate) async fn next(&mut self) -> Result<Frame> {
        loop {
            if let Some(frame) = self.parse_buffered()? {
                return Ok(frame);
            }
            let mut chunk = [0u8; 8192];
            let n = self
                .inner
                .read(&mut chunk)
                .await
                .map_err(Error::io("reading the xml stream"))?;
            if n == 0 {
                return Ok(Frame::StreamEnd);
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// Parses buffered bytes until a frame completes or more data is needed.
    fn parse_buffered(&mut self) -> Result<Option<Frame>> {
        loop {
            let mut slice = &self.buf[..];
            let before = slice.len();
            let result = self.parser.parse(&mut slice, false);
            let consumed = before - slice.len();
            self.buf.drain(..consumed);
            let event = match result {
                Ok(Some(event)) => event,
                Ok(None) => return Ok(Some(Frame::StreamEnd)),
                Err(EndOrError::NeedMoreData) => return Ok(None),
                Err(EndOrError::Error(e)) => return Err(Error::Xml(e.to_string())),
            };
            let is_head_close = matches!(event, RawEvent::ElementHeadClose(_));
            let is_foot = matches!(event, RawEvent::ElementFoot(_));
            self.tree
                .process_event(event)
                .map_err(|e| Error::Xml(e.to_string()))?;
            let depth = self.tree.depth();
            if is_head_close && depth == 1 {
                return Ok(Some(Frame::StreamOpen));
            }
            if is_foot {
                match depth {
                    1 => {
                        if let Some(stanza) = self.tree.unshift_child() {
                            return Ok(Some(Frame::Stanza(stanza)));
                        }
                    }
                    0 => return Ok(Some(Frame::StreamEnd)),
                    _ => {}
                }
            }
        }
    }
}
