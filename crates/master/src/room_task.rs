//! One task owns each room: it feeds inputs to the state machine and carries
//! out the actions, keeping every stanza behind the commits before it.
//!
//! ```text
//!  inbox ─▶ Room::handle ─▶ Persist.. ─▶ Writer (group commit) ─┐
//!                        └▶ Send..   ─▶ pending queue ──────────┴▶ link (once durable)
//! ```
//! A reflected message is therefore always durable: what any occupant saw
//! survives a crash of the master. A stanza for several recipients goes out
//! once, through the server's XEP-0033 multicast, when the server offers it.

use std::collections::VecDeque;
use std::time::{SystemTime, UNIX_EPOCH};

use dmuc_component::LinkHandle;
use dmuc_room::{Action, Input, Persist, Room, Timestamp};
use dmuc_stanza::outbound;
use jid::BareJid;
use minidom::Element;
use tokio::sync::{mpsc, watch};
use tracing::{Instrument, debug, error, info_span, warn};

use crate::store::{Commit, Writer};

/// How many inputs may wait for a busy room before senders wait.
const INBOX: usize = 1024;

/// Recipients per multicast stanza: far below the server's stanza size
/// limit (Prosody: 512 KiB on component streams).
const MULTICAST_CHUNK: usize = 500;

/// What the service keeps of a running room.
#[derive(Debug)]
pub struct RoomHandle {
    pub inbox: mpsc::Sender<Input>,
    /// Distinguishes this incarnation of the room from a later one.
    pub generation: u64,
}

/// What a room tells the service.
#[derive(Debug)]
pub enum RoomEvent {
    /// The room's entry in the service's disco#items changed.
    Listing {
        room: BareJid,
        listing: Option<Listing>,
    },
    /// The room ended; inputs that reached it too late must be routed anew.
    Closed {
        room: BareJid,
        generation: u64,
        leftover: Vec<Input>,
    },
}

/// A public room as the service lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Listing {
    pub name: String,
}

impl Listing {
    /// Public rooms that exist and are open for business are listed.
    fn of(room: &Room) -> Option<Listing> {
        let config = room.config();
        let exists = room.occupant_count() > 0 || config.persistent;
        (config.public && exists && !room.is_locked()).then(|| Listing {
            name: config.name.clone(),
        })
    }
}

/// What every room task needs from the service.
#[derive(Clone, Debug)]
pub struct RoomContext {
    pub link: LinkHandle,
    pub writer: Writer,
    pub events: mpsc::UnboundedSender<RoomEvent>,
    /// The server that expands XEP-0033 multicasts for us, when it does.
    pub multicast: watch::Receiver<Option<BareJid>>,
}

/// Starts the task that owns `room`.
pub fn spawn(
    room: Room,
    generation: u64,
    ctx: RoomContext,
) -> (RoomHandle, tokio::task::JoinHandle<()>) {
    let (tx, rx) = mpsc::channel(INBOX);
    let span = info_span!("room", room = %room.jid());
    let task = tokio::spawn(run(room, rx, generation, ctx).instrument(span));
    (
        RoomHandle {
            inbox: tx,
            generation,
        },
        task,
    )
}

/// Stanzas waiting for the commit of the changes before them.
struct Pending {
    commit: Option<Commit>,
    stanzas: Vec<Element>,
}

async fn run(mut room: Room, mut inbox: mpsc::Receiver<Input>, generation: u64, ctx: RoomContext) {
    let mut pending: VecDeque<Pending> = VecDeque::new();
    let mut listing = Listing::of(&room);
    loop {
        let waiting = pending.front().is_some_and(|p| p.commit.is_some());
        tokio::select! {
            biased;
            result = async { pending.front_mut().and_then(|p| p.commit.as_mut()).expect("waiting").await }, if waiting => {
                let head = pending.pop_front().expect("waiting");
                match result {
                    Ok(()) => send_all(&ctx.link, head.stanzas).await,
                    // Nothing was reflected, so nothing acknowledged is lost;
                    // the senders will not see their messages.
                    Err(e) => error!(error = %e, withheld = head.stanzas.len(), "storage failed: stanzas withheld"),
                }
                flush_ready(&mut pending, &ctx.link).await;
            }
            input = inbox.recv() => {
                let Some(input) = input else { break };
                let actions = room.handle(input, now());
                let closed = execute(&room, actions, &mut pending, &ctx).await;
                let next = Listing::of(&room);
                if closed || next != listing {
                    listing = if closed { None } else { next };
                    let _ = ctx.events.send(RoomEvent::Listing { room: room.jid().clone(), listing: listing.clone() });
                }
                if closed {
                    inbox.close();
                    let mut leftover = Vec::new();
                    while let Ok(input) = inbox.try_recv() {
                        leftover.push(input);
                    }
                    drain(&mut pending, &ctx.link).await;
                    let _ = ctx.events.send(RoomEvent::Closed { room: room.jid().clone(), generation, leftover });
                    debug!("room closed");
                    return;
                }
            }
        }
    }
    drain(&mut pending, &ctx.link).await;
    debug!("room task stopped");
}

/// Carries out one input's actions; returns whether the room closed.
async fn execute(
    room: &Room,
    actions: Vec<Action>,
    pending: &mut VecDeque<Pending>,
    ctx: &RoomContext,
) -> bool {
    let mut changes: Vec<Persist> = Vec::new();
    let mut stanzas = Vec::new();
    let mut closed = false;
    let via = ctx.multicast.borrow().clone();
    for action in actions {
        match action {
            Action::Persist(change) => changes.push(change),
            Action::Send { to, stanza } => {
                let el = outbound::build(room.jid(), &stanza);
                match &via {
                    Some(server) if to.len() > 1 => {
                        stanzas.extend(outbound::multicast(el, &to, server, MULTICAST_CHUNK));
                    }
                    _ => stanzas.extend(to.iter().map(|jid| outbound::addressed(el.clone(), jid))),
                }
            }
            Action::Close => closed = true,
        }
    }
    let commit = if changes.is_empty() {
        None
    } else {
        Some(ctx.writer.submit(room.jid().clone(), changes).await)
    };
    if commit.is_none() && pending.is_empty() {
        send_all(&ctx.link, stanzas).await;
    } else if commit.is_some() || !stanzas.is_empty() {
        pending.push_back(Pending { commit, stanzas });
    }
    closed
}

/// Sends the queued stanzas that wait for no commit.
async fn flush_ready(pending: &mut VecDeque<Pending>, link: &LinkHandle) {
    while pending.front().is_some_and(|p| p.commit.is_none()) {
        let head = pending.pop_front().expect("checked");
        send_all(link, head.stanzas).await;
    }
}

/// Waits for every pending commit and sends what it held back.
async fn drain(pending: &mut VecDeque<Pending>, link: &LinkHandle) {
    while let Some(head) = pending.pop_front() {
        let durable = match head.commit {
            Some(commit) => commit.await,
            None => Ok(()),
        };
        match durable {
            Ok(()) => send_all(link, head.stanzas).await,
            Err(e) => {
                error!(error = %e, withheld = head.stanzas.len(), "storage failed: stanzas withheld")
            }
        }
    }
}

async fn send_all(link: &LinkHandle, stanzas: Vec<Element>) {
    for el in stanzas {
        if let Err(e) = link.send(el).await {
            warn!(error = %e, "component link closed; stanza dropped");
            return;
        }
    }
}

pub(crate) fn now() -> Timestamp {
    let since = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    Timestamp(since.as_millis() as i64)
}
