//! IQ requests the service itself sends (service discovery of other
//! domains) and the answers it waits for.
//!
//! A request gets a fresh id; the service hands every `result` or `error`
//! IQ addressed to it to [`Requests::answer`], which completes the waiting
//! request if the id is one of ours and the answer comes from the JID that
//! was asked (the server checked that `from` over s2s).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use dmuc_component::LinkHandle;
use dmuc_stanza::outbound::Attr;
use jid::BareJid;
use minidom::Element;
use tokio::sync::oneshot;
use xmpp_parsers::ns;

/// Prefix of the ids of our requests.
const PREFIX: &str = "dmuc-q-";

#[derive(Clone, Debug, Default)]
pub struct Requests {
    waiting: Arc<Mutex<HashMap<String, Waiting>>>,
    next: Arc<AtomicU64>,
}

#[derive(Debug)]
struct Waiting {
    to: BareJid,
    reply: oneshot::Sender<Element>,
}

/// Why a request got no answer.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum NoAnswer {
    #[error("no answer in time")]
    Timeout,
    #[error("the component link is closed")]
    Closed,
}

impl Requests {
    /// Sends `<iq type='get'>` with `query` from `from` to `to` and waits
    /// for the answer (a result or an error stanza).
    pub async fn get(
        &self,
        link: &LinkHandle,
        from: &BareJid,
        to: &BareJid,
        query: Element,
        timeout: Duration,
    ) -> Result<Element, NoAnswer> {
        let id = format!("{PREFIX}{}", self.next.fetch_add(1, Ordering::Relaxed));
        let (reply, answer) = oneshot::channel();
        self.lock().insert(
            id.clone(),
            Waiting {
                to: to.clone(),
                reply,
            },
        );
        let iq = Element::builder("iq", ns::DEFAULT_NS)
            .a("type", "get")
            .a("id", id.as_str())
            .a("from", from.to_string())
            .a("to", to.to_string())
            .append(query)
            .build();
        let result = if link.send(iq).await.is_err() {
            Err(NoAnswer::Closed)
        } else {
            match tokio::time::timeout(timeout, answer).await {
                Ok(Ok(el)) => Ok(el),
                Ok(Err(_)) => Err(NoAnswer::Closed),
                Err(_) => Err(NoAnswer::Timeout),
            }
        };
        self.lock().remove(&id);
        result
    }

    /// Completes a waiting request with `el`, if `el` answers one; gives
    /// `el` back otherwise.
    pub fn answer(&self, el: Element) -> Option<Element> {
        let ours = el.is("iq", ns::DEFAULT_NS)
            && matches!(el.attr("type"), Some("result" | "error"))
            && el.attr("id").is_some_and(|id| id.starts_with(PREFIX));
        if !ours {
            return Some(el);
        }
        let id = el.attr("id").unwrap_or_default().to_owned();
        let from = el.attr("from").and_then(|f| f.parse::<BareJid>().ok());
        let mut waiting = self.lock();
        match waiting.get(&id) {
            Some(w) if from.as_ref() == Some(&w.to) => {
                let w = waiting.remove(&id).expect("present");
                let _ = w.reply.send(el);
            }
            // An answer to a request we no longer wait for, or from someone
            // we did not ask: ignored.
            _ => {}
        }
        None
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Waiting>> {
        self.waiting.lock().expect("requests lock")
    }
}
