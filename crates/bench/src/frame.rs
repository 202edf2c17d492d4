//! XMPP stream framing without trees: bytes in, top-level frames out, and
//! cheap byte-level looks into a stanza.
//!
//! The load client reads hundreds of thousands of presences and messages it
//! only needs to classify, so it does not build elements. It relies on what
//! every Prosody serialiser guarantees on a c2s stream: well-formed XML,
//! no comments or CDATA, and `<`/`>` escaped in text and attribute values;
//! a tag therefore ends at the first `>` after its `<`.

use memchr::{memchr, memmem};

/// One unit of the stream.
#[derive(Debug, PartialEq, Eq)]
pub enum Frame<'a> {
    /// The peer opened its `<stream:stream>`.
    StreamOpen,
    /// A complete top-level element, as its bytes.
    Stanza(&'a [u8]),
    /// The peer closed its stream.
    StreamEnd,
}

/// Splits a byte stream into [`Frame`]s; feed it with [`Framer::push`], take
/// frames with [`Framer::next_frame`].
#[derive(Debug, Default)]
pub struct Framer {
    buf: Vec<u8>,
    /// Where scanning resumes: just after the last complete tag.
    pos: usize,
    /// Element depth; 1 inside the stream, 2+ inside a stanza.
    depth: u32,
    /// Start of the stanza being read (valid while `depth >= 2`).
    start: usize,
}

impl Framer {
    /// An empty framer, before the peer's stream header.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends received bytes, first dropping those no frame needs any more.
    pub fn push(&mut self, data: &[u8]) {
        let keep_from = if self.depth >= 2 {
            self.start
        } else {
            self.pos
        };
        if keep_from > 0 {
            self.buf.drain(..keep_from);
            self.pos -= keep_from;
            self.start = self.start.saturating_sub(keep_from);
        }
        self.buf.extend_from_slice(data);
    }

    /// Expects a new stream header (after SASL success); keeps buffered bytes.
    pub fn restart(&mut self) {
        self.depth = 0;
    }

    /// The next complete frame, or `None` until more bytes are pushed.
    pub fn next_frame(&mut self) -> Option<Frame<'_>> {
        loop {
            let lt = self.pos + memchr(b'<', &self.buf[self.pos..])?;
            let Some(gt) = memchr(b'>', &self.buf[lt..]).map(|i| lt + i) else {
                self.pos = lt;
                return None;
            };
            self.pos = gt + 1;
            let tag = &self.buf[lt..self.pos];
            match tag.get(1) {
                // `<?xml …?>`; `<!…>` never comes from a conforming server.
                Some(b'?' | b'!') => {}
                Some(b'/') => {
                    self.depth = self.depth.saturating_sub(1);
                    match self.depth {
                        0 => return Some(Frame::StreamEnd),
                        1 => return Some(Frame::Stanza(&self.buf[self.start..self.pos])),
                        _ => {}
                    }
                }
                _ if tag.ends_with(b"/>") => {
                    if self.depth == 1 {
                        return Some(Frame::Stanza(tag));
                    }
                }
                _ => {
                    self.depth += 1;
                    match self.depth {
                        1 => return Some(Frame::StreamOpen),
                        2 => self.start = lt,
                        _ => {}
                    }
                }
            }
        }
    }
}

/// The element name of a stanza (`message`, `stream:features`, …).
pub fn name(stanza: &[u8]) -> &[u8] {
    let rest = stanza.strip_prefix(b"<").unwrap_or(stanza);
    let end = rest
        .iter()
        .position(|b| matches!(b, b' ' | b'\t' | b'\r' | b'\n' | b'/' | b'>'))
        .unwrap_or(rest.len());
    &rest[..end]
}

/// The value of attribute `attr` in the stanza's own start tag, as raw
/// (still escaped) bytes: the values compared here are plain JIDs and ids.
pub fn attr<'a>(stanza: &'a [u8], attr: &str) -> Option<&'a [u8]> {
    let head = &stanza[..memchr(b'>', stanza).unwrap_or(stanza.len())];
    let mut from = 0;
    while let Some(i) = memmem::find(&head[from..], attr.as_bytes()).map(|i| from + i) {
        from = i + attr.len();
        let preceded = i > 0 && head[i - 1].is_ascii_whitespace();
        let (Some(b'='), Some(&quote @ (b'\'' | b'"'))) = (head.get(from), head.get(from + 1))
        else {
            continue;
        };
        if !preceded {
            continue;
        }
        let value = &head[from + 2..];
        return Some(&value[..memchr(quote, value)?]);
    }
    None
}

/// `true` if `needle` occurs anywhere in the stanza.
pub fn contains(stanza: &[u8], needle: &[u8]) -> bool {
    memmem::find(stanza, needle).is_some()
}

/// `true` if the stanza carries the XEP-0045 status `code` (either quote).
pub fn has_status(stanza: &[u8], code: u16) -> bool {
    contains(stanza, format!("code='{code}'").as_bytes())
        || contains(stanza, format!("code=\"{code}\"").as_bytes())
}

/// The text between the first `<tag>` and the following `</tag>`.
pub fn child_text<'a>(stanza: &'a [u8], tag: &str) -> Option<&'a [u8]> {
    let open = format!("<{tag}>");
    let start = memmem::find(stanza, open.as_bytes())? + open.len();
    let len = memmem::find(&stanza[start..], format!("</{tag}>").as_bytes())?;
    Some(&stanza[start..start + len])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frames(chunks: &[&str]) -> Vec<String> {
        let mut framer = Framer::new();
        let mut out = Vec::new();
        for chunk in chunks {
            framer.push(chunk.as_bytes());
            while let Some(frame) = framer.next_frame() {
                out.push(match frame {
                    Frame::StreamOpen => "OPEN".to_owned(),
                    Frame::Stanza(s) => String::from_utf8(s.to_vec()).unwrap(),
                    Frame::StreamEnd => "END".to_owned(),
                });
            }
        }
        out
    }

    const STREAM: &str = "<?xml version='1.0'?><stream:stream xmlns='jabber:client' id='x'>\
        <stream:features><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'/></stream:features>\
        <presence from='r@m/a' to='u@a/b'><x xmlns='http://jabber.org/protocol/muc#user'><status code='110'/></x></presence>\
        <message type='groupchat'><body>a &gt; b</body></message><iq type='result' id='1'/></stream:stream>";

    #[test]
    fn splits_a_stream_into_frames() {
        let all = frames(&[STREAM]);
        assert_eq!(all.len(), 6);
        assert_eq!(all[0], "OPEN");
        assert!(all[1].starts_with("<stream:features>") && all[1].ends_with("</stream:features>"));
        assert!(all[2].starts_with("<presence") && all[2].ends_with("</presence>"));
        assert_eq!(
            all[3],
            "<message type='groupchat'><body>a &gt; b</body></message>"
        );
        assert_eq!(all[4], "<iq type='result' id='1'/>");
        assert_eq!(all[5], "END");
    }

    #[test]
    fn any_split_of_the_bytes_gives_the_same_frames() {
        let whole = frames(&[STREAM]);
        for cut in 1..STREAM.len() {
            let (a, b) = STREAM.split_at(cut);
            assert_eq!(frames(&[a, b]), whole, "split at {cut}");
        }
        let bytes: Vec<String> = STREAM.chars().map(String::from).collect();
        let refs: Vec<&str> = bytes.iter().map(String::as_str).collect();
        assert_eq!(frames(&refs), whole);
    }

    #[test]
    fn restart_expects_a_new_header() {
        let mut framer = Framer::new();
        framer.push(b"<stream:stream><success xmlns='s'/>");
        assert_eq!(framer.next_frame(), Some(Frame::StreamOpen));
        assert_eq!(
            framer.next_frame(),
            Some(Frame::Stanza(b"<success xmlns='s'/>"))
        );
        framer.restart();
        framer.push(b"<?xml version='1.0'?><stream:stream><a/>");
        assert_eq!(framer.next_frame(), Some(Frame::StreamOpen));
        assert_eq!(framer.next_frame(), Some(Frame::Stanza(b"<a/>")));
        assert_eq!(framer.next_frame(), None);
    }

    #[test]
    fn looks_into_stanzas() {
        let p = b"<presence xmlns:x='1' xfrom='no' from=\"r@m/a\" type='error'><x code='110'/></presence>";
        assert_eq!(name(p), b"presence");
        assert_eq!(name(b"<stream:features>"), b"stream:features");
        assert_eq!(attr(p, "from"), Some(&b"r@m/a"[..]));
        assert_eq!(attr(p, "type"), Some(&b"error"[..]));
        assert_eq!(attr(p, "code"), None, "only the stanza's own tag");
        assert!(has_status(p, 110) && !has_status(p, 201));
        assert_eq!(
            child_text(b"<iq><bind><jid>u@a/r</jid></bind></iq>", "jid"),
            Some(&b"u@a/r"[..])
        );
    }
}
