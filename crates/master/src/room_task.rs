//! One task owns each room: it feeds inputs to the state machine and carries
//! out the actions, keeping every stanza behind the commits before it.
//!
//! ```text
//!  inbox ─▶ Room::handle ─▶ Persist.. ─▶ Writer (group commit) ─┐
//!                        └▶ Send..   ─▶ pending queue ──────────┴▶ link (once durable)
//! ```
//! A reflected message is therefore always durable: what any occupant saw
//! survives a crash of the master. So is a merged split's input before the
//! master confirms it to the peerhost (`SplitMerged`). A stanza for several recipients goes out
//! once, through the server's XEP-0033 multicast, when the server offers it.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use dmuc_component::LinkHandle;
use dmuc_protocol::RoomEvent as ProtocolEvent;
use dmuc_room::{Action, Input, Persist, Room, Timestamp};
use dmuc_stanza::outbound;
use jid::BareJid;
use minidom::Element;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tracing::{Instrument, debug, error, info_span, warn};

use crate::fanout::{Effect, Fanout, Release};
use crate::peering::conn::Submitted;
use crate::peering::{Directory, News};
use crate::store::{Commit, Writer};

/// How many inputs may wait for a busy room before senders wait.
const INBOX: usize = 1024;

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
    /// The peerhosts of other domains.
    pub directory: Directory,
    /// This run of the master: event numbers start at `epoch << 40`, so
    /// that they keep growing across restarts.
    pub epoch: u64,
    /// How long a slave outlives its domain's last occupant.
    pub slave_grace: Duration,
    /// Spanning trees of slaves (always, from the config; `None`: a bare
    /// star without detours).
    pub trees: Option<Arc<crate::tree::TreeSetup>>,
    /// Where stanzas carried up a tree go, once checked (to the service,
    /// as a peerhost's own `Forward`s do).
    pub forwards: mpsc::UnboundedSender<Submitted>,
}

/// Starts the task that owns `room`.
pub fn spawn(
    room: Room,
    generation: u64,
    ctx: RoomContext,
) -> (RoomHandle, tokio::task::JoinHandle<()>) {
    let (tx, rx) = mpsc::channel(INBOX);
    let span = info_span!("room", room = %room.jid());
    let task = tokio::spawn(
        RoomTask::new(room, generation, ctx)
            .run(rx)
            .instrument(span),
    );
    (
        RoomHandle {
            inbox: tx,
            generation,
        },
        task,
    )
}

/// What one input (or one piece of peer news) leaves to do, in order,
/// once the commit it waits for (if any) is durable.
struct Pending {
    commit: Option<Commit>,
    items: Vec<Item>,
}

enum Item {
    Stanzas(Vec<Element>),
    Step(Release),
    /// Tell `domain`'s peerhost how far its split is merged.
    Merged {
        domain: String,
        began: Timestamp,
        next_index: u64,
    },
}

struct RoomTask {
    room: Room,
    generation: u64,
    ctx: RoomContext,
    /// The last event number given to an input.
    seq: u64,
    fanout: Fanout,
    news: mpsc::UnboundedReceiver<News>,
    pending: VecDeque<Pending>,
}

impl RoomTask {
    fn new(room: Room, generation: u64, ctx: RoomContext) -> Self {
        let (news_tx, news) = mpsc::unbounded_channel();
        RoomTask {
            fanout: Fanout::new(room.jid().clone(), ctx.slave_grace, news_tx)
                .with_tree(ctx.trees.clone()),
            seq: ctx.epoch << 40,
            room,
            generation,
            ctx,
            news,
            pending: VecDeque::new(),
        }
    }

    async fn run(mut self, mut inbox: mpsc::Receiver<Input>) {
        let mut listing = Listing::of(&self.room);
        loop {
            let waiting = self.pending.front().is_some_and(|p| p.commit.is_some());
            let check = self.fanout.next_check();
            tokio::select! {
                biased;
                result = async { self.pending.front_mut().and_then(|p| p.commit.as_mut()).expect("waiting").await }, if waiting => {
                    let head = self.pending.pop_front().expect("waiting");
                    match result {
                        Ok(()) => self.release(head.items).await,
                        // Nothing was reflected, so nothing acknowledged is lost;
                        // the senders will not see their messages.
                        Err(e) => error!(error = %e, withheld = head.items.len(), "storage failed: stanzas withheld"),
                    }
                    self.flush_ready().await;
                }
                Some(news) = self.news.recv() => {
                    let mut effects = Vec::new();
                    let step = self.fanout.on_news(&news.domain, news.news, &self.room, self.seq, &self.ctx.directory, &mut effects);
                    self.perform(effects).await;
                    if let Some(step) = step {
                        self.queue(None, vec![Item::Step(step)]).await;
                    }
                }
                () = sleep_until(check), if check.is_some() => {
                    let effects = self.fanout.detours(Instant::now());
                    self.perform(effects).await;
                    let effects = self.fanout.replan_due(Instant::now());
                    self.perform(effects).await;
                    let steps = self.fanout.occupancy(&self.room, Instant::now());
                    self.queue(None, steps.into_iter().map(Item::Step).collect()).await;
                }
                input = inbox.recv() => {
                    let Some(input) = input else { break };
                    let closed = self.handle(input).await;
                    let next = Listing::of(&self.room);
                    if closed || next != listing {
                        listing = if closed { None } else { next };
                        let _ = self.ctx.events.send(RoomEvent::Listing { room: self.room.jid().clone(), listing: listing.clone() });
                    }
                    if closed {
                        inbox.close();
                        let mut leftover = Vec::new();
                        while let Ok(input) = inbox.try_recv() {
                            leftover.push(input);
                        }
                        self.finish().await;
                        let _ = self.ctx.events.send(RoomEvent::Closed { room: self.room.jid().clone(), generation: self.generation, leftover });
                        debug!("room closed");
                        return;
                    }
                }
            }
        }
        self.finish().await;
        debug!("room task stopped");
    }

    /// Handles one input; returns whether the room closed.
    async fn handle(&mut self, input: Input) -> bool {
        let mut items = Vec::new();
        let mut effects = Vec::new();
        let attach = self.fanout.before(
            &input,
            &self.room,
            self.seq,
            &self.ctx.directory,
            &mut effects,
        );
        self.perform(effects).await;
        items.extend(attach.map(Item::Step));

        self.seq += 1;
        let now = now();
        let changes_occupancy = !matches!(input, Input::Groupchat { .. } | Input::Private { .. });
        let event = (!self.fanout.is_empty()).then(|| ProtocolEvent {
            room: self.room.jid().clone(),
            seq: self.seq,
            now,
            input: input.clone(),
        });
        let actions = self.room.handle(input, now);
        if let Some(event) = &event {
            self.fanout.record(event);
        }
        let (direct, shares) = self.fanout.split(actions);
        let mut changes: Vec<Persist> = Vec::new();
        let mut sends = Vec::new();
        let mut closed = false;
        let mut merged = None;
        for action in direct {
            match action {
                Action::Persist(change) => changes.push(change),
                Action::Close => closed = true,
                Action::Merged {
                    domain,
                    began,
                    next_index,
                } => {
                    merged = Some(Item::Merged {
                        domain,
                        began,
                        next_index,
                    })
                }
                send => sends.push(send),
            }
        }
        items.push(Item::Stanzas(self.render(sends)));
        if let Some(event) = event {
            items.push(Item::Step(Release::Event { event, shares }));
        }
        if changes_occupancy {
            let steps = self.fanout.occupancy(&self.room, Instant::now());
            items.extend(steps.into_iter().map(Item::Step));
        }
        if closed {
            items.extend(self.fanout.close().into_iter().map(Item::Step));
        }
        // Confirmed once what the merge changed is durable.
        items.extend(merged);
        let commit = if changes.is_empty() {
            None
        } else {
            Some(
                self.ctx
                    .writer
                    .submit(self.room.jid().clone(), changes)
                    .await,
            )
        };
        self.queue(commit, items).await;
        closed
    }

    /// Queues `items` behind `commit` and what is already waiting.
    async fn queue(&mut self, commit: Option<Commit>, items: Vec<Item>) {
        if commit.is_none() && self.pending.is_empty() {
            self.release(items).await;
        } else if commit.is_some() || !items.is_empty() {
            self.pending.push_back(Pending { commit, items });
        }
    }

    /// The stanzas standing for `sends`, through multicast when the server
    /// offers it.
    fn render(&self, sends: Vec<Action>) -> Vec<Element> {
        let via = self.ctx.multicast.borrow().clone();
        let mut stanzas = Vec::new();
        for action in sends {
            if let Action::Send { to, stanza } = action {
                stanzas.extend(outbound::render(
                    self.room.jid(),
                    &stanza,
                    &to,
                    via.as_ref(),
                ));
            }
        }
        stanzas
    }

    /// Carries out items whose turn has come.
    async fn release(&mut self, items: Vec<Item>) {
        for item in items {
            match item {
                Item::Stanzas(stanzas) => send_all(&self.ctx.link, stanzas).await,
                Item::Step(step) => {
                    let effects = self.fanout.release(step);
                    self.perform(effects).await;
                }
                Item::Merged {
                    domain,
                    began,
                    next_index,
                } => {
                    let room = self.room.jid();
                    let directory = &self.ctx.directory;
                    directory
                        .confirm_merge(room, &domain, began, next_index)
                        .await;
                }
            }
        }
    }

    async fn perform(&mut self, effects: Vec<Effect>) {
        for effect in effects {
            match effect {
                Effect::Direct(actions) => {
                    let stanzas = self.render(actions);
                    send_all(&self.ctx.link, stanzas).await;
                }
                Effect::Peer(peer, msg) => {
                    if !peer.send(msg).await {
                        warn!(domain = %peer.target.domain, "peer task gone");
                    }
                }
                Effect::Forward(stanza) => {
                    let _ = self.ctx.forwards.send(Submitted::Stanza(*stanza));
                }
            }
        }
    }

    /// Releases what waits for no commit.
    async fn flush_ready(&mut self) {
        while self.pending.front().is_some_and(|p| p.commit.is_none()) {
            let head = self.pending.pop_front().expect("checked");
            self.release(head.items).await;
        }
    }

    /// The room task ends: every slave goes, every pending commit is waited
    /// for and what it held back is released.
    async fn finish(&mut self) {
        let steps = self.fanout.close();
        self.queue(None, steps.into_iter().map(Item::Step).collect())
            .await;
        while let Some(head) = self.pending.pop_front() {
            let durable = match head.commit {
                Some(commit) => commit.await,
                None => Ok(()),
            };
            match durable {
                Ok(()) => self.release(head.items).await,
                Err(e) => {
                    error!(error = %e, withheld = head.items.len(), "storage failed: stanzas withheld")
                }
            }
        }
        let effects = self.fanout.deregister(&self.ctx.directory);
        self.perform(effects).await;
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

/// Sleeps until `at` (forever if `None`; the select arm is then disabled).
async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

pub(crate) fn now() -> Timestamp {
    let since = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    Timestamp(since.as_millis() as i64)
}
