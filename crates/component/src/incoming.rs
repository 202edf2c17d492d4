//! What one top-level element read off the stream becomes.
//!
//! tokio-xmpp's `XmlStream` is generic over the element type it builds. We
//! plug in [`Incoming`], which builds a plain [`minidom::Element`] (no
//! xmpp-parsers validation: that is the caller's job, so it can bounce errors)
//! but refuses to build elements that are too large or too deeply nested.
//! Those become [`Incoming::Invalid`] carrying the top-level attributes read
//! from the start tag, so the caller can still address an error reply.
//!
//! The limits protect the process, not the protocol: minidom builds and drops
//! elements recursively (deep nesting would overflow the stack) and keeps the
//! whole element in memory.

use minidom::Element;
use xso::exports::rxml::{self, AttrMap, Event, Namespace};
use xso::minidom_compat::ElementFromEvents;
use xso::{Context, FromEventsBuilder, FromXml, error::FromEventsError};

/// Largest accepted stanza, counted in bytes of XML read (names, attributes,
/// text, markup). Prosody limits c2s stanzas to 256 KiB and s2s to 512 KiB,
/// so nothing legitimate routed to a component comes near.
pub const MAX_STANZA_BYTES: usize = 1024 * 1024;

/// Deepest accepted element nesting, the top-level element counting as 1.
/// Real payloads stay below 10.
pub const MAX_STANZA_DEPTH: usize = 64;

/// The start-tag attributes of an inbound element that was not delivered as
/// an [`Element`], enough to bounce an XMPP error to its sender.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidStanza {
    /// Local name of the top-level element (`message`, `presence`, `iq`, ...).
    pub name: String,
    /// Its namespace.
    pub ns: String,
    /// Raw `from` attribute, unparsed.
    pub from: Option<String>,
    /// Raw `to` attribute, unparsed.
    pub to: Option<String>,
    /// Raw `id` attribute.
    pub id: Option<String>,
    /// Raw `type` attribute.
    pub type_: Option<String>,
    /// Why it was not delivered.
    pub reason: String,
}

/// One top-level element read from the stream.
#[derive(Debug)]
pub(crate) enum Incoming {
    Element(Element),
    Invalid(InvalidStanza),
}

impl FromXml for Incoming {
    type Builder = IncomingBuilder;

    fn from_events(
        qname: rxml::QName,
        attrs: AttrMap,
        _ctx: &Context<'_>,
    ) -> Result<Self::Builder, FromEventsError> {
        let head = head_of(&qname, &attrs);
        let bytes = qname.1.len()
            + attrs
                .iter()
                .map(|((_, name), value)| name.len() + value.len() + 4)
                .sum::<usize>();
        let state = if bytes > MAX_STANZA_BYTES {
            State::Skipping {
                depth: 1,
                reason: too_large(),
            }
        } else {
            State::Building {
                inner: Box::new(ElementFromEvents::new(qname, attrs)),
                depth: 1,
                bytes,
            }
        };
        Ok(IncomingBuilder { head, state })
    }
}

/// Builder for [`Incoming`]: minidom's builder plus depth and size accounting.
pub(crate) struct IncomingBuilder {
    head: InvalidStanza,
    state: State,
}

enum State {
    Building {
        inner: Box<ElementFromEvents>,
        /// Elements currently open, the top-level one included.
        depth: usize,
        bytes: usize,
    },
    /// The element was given up on; consume the rest of it without building.
    Skipping { depth: usize, reason: String },
}

impl FromEventsBuilder for IncomingBuilder {
    type Output = Incoming;

    fn feed(
        &mut self,
        ev: Event,
        ctx: &Context<'_>,
    ) -> Result<Option<Incoming>, xso::error::Error> {
        let delta: isize = match ev {
            Event::StartElement(..) => 1,
            Event::EndElement(..) => -1,
            Event::Text(..) | Event::XmlDeclaration(..) => 0,
        };
        match &mut self.state {
            State::Building {
                inner,
                depth,
                bytes,
            } => {
                *depth = depth.saturating_add_signed(delta);
                *bytes += ev.metrics().len();
                let give_up = if *depth > MAX_STANZA_DEPTH {
                    Some(format!("nested deeper than {MAX_STANZA_DEPTH} elements"))
                } else if *bytes > MAX_STANZA_BYTES {
                    Some(too_large())
                } else {
                    None
                };
                if let Some(reason) = give_up {
                    // Dropping the partial element here frees its memory
                    // before we read the rest.
                    self.state = State::Skipping {
                        depth: *depth,
                        reason,
                    };
                    return Ok(None);
                }
                let depth = *depth;
                match inner.feed(ev, ctx) {
                    Ok(Some(element)) => Ok(Some(Incoming::Element(element))),
                    Ok(None) => Ok(None),
                    // minidom's builder accepts any well-formed XML today;
                    // should that change, skip the element, not the stream.
                    Err(e) => {
                        let reason = e.to_string();
                        if depth == 0 {
                            return Ok(Some(self.invalid(reason)));
                        }
                        self.state = State::Skipping { depth, reason };
                        Ok(None)
                    }
                }
            }
            State::Skipping { depth, reason } => {
                *depth = depth.saturating_add_signed(delta);
                if *depth == 0 {
                    let reason = std::mem::take(reason);
                    return Ok(Some(self.invalid(reason)));
                }
                Ok(None)
            }
        }
    }
}

impl IncomingBuilder {
    fn invalid(&self, reason: String) -> Incoming {
        Incoming::Invalid(InvalidStanza {
            reason,
            ..self.head.clone()
        })
    }
}

fn too_large() -> String {
    format!("larger than {MAX_STANZA_BYTES} bytes")
}

fn head_of(qname: &rxml::QName, attrs: &AttrMap) -> InvalidStanza {
    let get = |name: &str| attrs.get(Namespace::none(), name).cloned();
    InvalidStanza {
        name: qname.1.to_string(),
        ns: qname.0.to_string(),
        from: get("from"),
        to: get("to"),
        id: get("id"),
        type_: get("type"),
        reason: String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Parse a document whose root stands in for the stream and return what
    /// each top-level child becomes.
    fn read_children(doc: &[u8]) -> Vec<Incoming> {
        let mut reader = rxml::Reader::new(doc);
        let mut events = Vec::new();
        while let Some(ev) = reader.read().expect("well-formed test input") {
            events.push(ev);
        }
        let ctx = Context::empty();
        let mut out = Vec::new();
        let mut builder: Option<IncomingBuilder> = None;
        let mut depth = 0usize;
        for ev in events {
            match (&mut builder, ev) {
                (None, Event::StartElement(_, qname, attrs)) if depth == 1 => {
                    builder = Some(Incoming::from_events(qname, attrs, &ctx).unwrap());
                }
                (None, Event::StartElement(..)) => depth += 1,
                (None, _) => {}
                (Some(b), ev) => {
                    if let Some(done) = b.feed(ev, &ctx).unwrap() {
                        out.push(done);
                        builder = None;
                    }
                }
            }
        }
        out
    }

    #[test]
    fn any_well_formed_stanza_becomes_an_element() {
        let out = read_children(
            b"<s xmlns='jabber:component:accept'>\
              <message type='bogus' to='x@y' from='not a jid@@'><foo xmlns='urn:x'/></message>\
              <presence/></s>",
        );
        assert_eq!(out.len(), 2);
        let Incoming::Element(m) = &out[0] else {
            panic!("expected element, got {:?}", out[0])
        };
        assert_eq!(m.attr("from"), Some("not a jid@@"));
        assert_eq!(m.attr("type"), Some("bogus"));
        assert!(m.has_child("foo", "urn:x"));
        assert!(matches!(&out[1], Incoming::Element(p) if p.name() == "presence"));
    }

    #[test]
    fn too_deep_becomes_invalid_with_head_and_stream_continues() {
        let mut doc = String::from(
            "<s xmlns='jabber:component:accept'><message from='u@b.test/r' to='room@c.a.test' id='m1' type='groupchat'>",
        );
        let n = MAX_STANZA_DEPTH + 10;
        doc.push_str(&"<x>".repeat(n));
        doc.push_str(&"</x>".repeat(n));
        doc.push_str("</message><iq id='after'/></s>");
        let out = read_children(doc.as_bytes());
        assert_eq!(out.len(), 2);
        let Incoming::Invalid(inv) = &out[0] else {
            panic!("expected invalid, got {:?}", out[0])
        };
        assert_eq!(inv.name, "message");
        assert_eq!(inv.from.as_deref(), Some("u@b.test/r"));
        assert_eq!(inv.to.as_deref(), Some("room@c.a.test"));
        assert_eq!(inv.id.as_deref(), Some("m1"));
        assert_eq!(inv.type_.as_deref(), Some("groupchat"));
        assert!(inv.reason.contains("nested"));
        assert!(matches!(&out[1], Incoming::Element(e) if e.attr("id") == Some("after")));
    }

    #[test]
    fn too_large_becomes_invalid() {
        let body = "a".repeat(MAX_STANZA_BYTES + 1);
        let doc = format!(
            "<s xmlns='jabber:component:accept'><message id='big'><body>{body}</body></message><message id='ok'/></s>"
        );
        let out = read_children(doc.as_bytes());
        assert_eq!(out.len(), 2);
        assert!(
            matches!(&out[0], Incoming::Invalid(i) if i.id.as_deref() == Some("big") && i.reason.contains("larger"))
        );
        assert!(matches!(&out[1], Incoming::Element(e) if e.attr("id") == Some("ok")));
    }
}
