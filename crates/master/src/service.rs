//! The MUC service: routes inbound stanzas to room tasks, creates rooms on
//! their first join, answers for the service domain, lists public rooms,
//! and finds the peerhosts of joiners' domains.
//!
//! The first join from a domain the service knows nothing about waits
//! (at most twice the discovery timeout) while the service asks that
//! domain for its peerhost and, if it has one, connects to it: so that the
//! slave, not the master, serves that join and every later one.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use dmuc_component::metrics::{Gauge, Metrics};
use dmuc_component::{Inbound, InvalidStanza, LinkHandle};
use dmuc_protocol::tls::LoadedTls;
use dmuc_room::event::StanzaKind;
use dmuc_room::{Condition, Input, Outgoing, Room, RoomSettings, StoredRoom};
use jid::{BareJid, FullJid, Jid};
use minidom::Element;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};
use xmpp_parsers::ns;

use crate::peering::conn::{PeerContext, Submitted, Transport};
use crate::peering::iq::Requests;
use crate::peering::{Directory, PeerHandle, PeerTarget, conn, discovery};
use crate::room_task::{self, Listing, RoomContext, RoomEvent, RoomHandle};
use crate::store::Writer;
use dmuc_stanza::inbound::{self, Routed, ServiceRequest};
use dmuc_stanza::outbound::{self, Attr};

/// Features of the service itself (XEP-0045 §6.2 and the id XEPs).
const SERVICE_FEATURES: &[&str] = &[
    ns::MUC,
    "http://jabber.org/protocol/muc#stable_id",
    "http://jabber.org/protocol/muc#self-ping-optimization",
    ns::SID,
    ns::OID,
    ns::DISCO_INFO,
    ns::DISCO_ITEMS,
    ns::PING,
];

/// The service's fixed parameters.
#[derive(Clone, Debug)]
pub struct ServiceConfig {
    pub domain: BareJid,
    pub settings: RoomSettings,
    pub max_message_bytes: usize,
    pub max_rooms_per_user: usize,
    /// The server to ask for XEP-0033 multicast (our parent domain), if any.
    pub multicast_from: Option<BareJid>,
    /// The epoch of this run (see `RoomContext::epoch`).
    pub epoch: u64,
    /// Where the service and its peer tasks register their metrics.
    pub metrics: Metrics,
    pub peering: PeeringOptions,
}

/// How the service finds and uses peerhosts.
#[derive(Clone, Debug)]
pub struct PeeringOptions {
    /// The domain whose users the master serves itself, never asked for a
    /// peerhost (our parent domain).
    pub home: Option<BareJid>,
    /// Whether to look for peerhosts by service discovery.
    pub discovery: bool,
    pub found_ttl: Duration,
    pub missing_ttl: Duration,
    pub timeout: Duration,
    pub slave_grace: Duration,
    /// Peerhosts named by configuration.
    pub static_peers: Vec<PeerTarget>,
    /// Mutual TLS towards peerhosts.
    pub tls: Option<Arc<LoadedTls>>,
    /// Whether plaintext (`http://`) peerhosts may be used.
    pub allow_plaintext: bool,
    /// How often peer streams are probed (see `PeerContext::keepalive`).
    pub keepalive: Duration,
    /// Rooms' slaves relay to each other (`[peering] max_fanout`; `None`:
    /// a bare star without detours).
    pub trees: Option<Arc<crate::tree::TreeSetup>>,
}

/// Where the service hears of peerhosts that dial in.
#[derive(Debug)]
pub struct Uplinks(pub mpsc::UnboundedReceiver<Transport>);

/// What discovery tasks report.
enum Found {
    /// Discovery of `domain` ended.
    Target {
        domain: BareJid,
        target: Option<PeerTarget>,
    },
    /// The first connection attempt to `domain`'s peerhost ended.
    Settled { domain: BareJid },
}

struct Running {
    handle: RoomHandle,
    /// Who created it, for the rooms-per-user limit (`None`: loaded from storage).
    creator: Option<BareJid>,
}

/// Routes stanzas; owns the map from room to room task.
pub struct Service {
    config: ServiceConfig,
    rooms: HashMap<BareJid, Running>,
    /// `dmuc_rooms_active`: `rooms.len()`.
    rooms_active: Gauge,
    listings: BTreeMap<BareJid, Listing>,
    created_by: HashMap<BareJid, usize>,
    ctx: RoomContext,
    /// Where room tasks see whether multicast is on.
    multicast: watch::Sender<Option<BareJid>>,
    events: mpsc::UnboundedReceiver<RoomEvent>,
    tasks: JoinSet<()>,
    next_generation: u64,
    requests: Requests,
    /// Domains whose peerhost (or its absence) is known, until when
    /// (`None`: for good, from configuration). What was found is in the
    /// rooms' `Directory`.
    known: HashMap<BareJid, Option<Instant>>,
    /// Joins waiting for their domain's discovery (or first connection).
    parked: HashMap<BareJid, Vec<(BareJid, Input, bool)>>,
    found_tx: mpsc::UnboundedSender<Found>,
    found: mpsc::UnboundedReceiver<Found>,
    /// Ends the peer tasks, once the rooms are done.
    peers_shutdown: CancellationToken,
    peer_context: Arc<PeerContext>,
    submissions: mpsc::UnboundedReceiver<Submitted>,
    /// Streams peerhosts opened to us (`[peering] listen`), welcomed.
    uplinks: mpsc::UnboundedReceiver<Transport>,
    /// Those waiting for their domain's discovery to vouch for them.
    unvouched: HashMap<BareJid, Vec<Transport>>,
}

impl std::fmt::Debug for Service {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Service")
            .field("domain", &self.config.domain)
            .field("rooms", &self.rooms.len())
            .finish()
    }
}

impl Service {
    /// A service with its persistent rooms restored and running.
    pub fn new(
        config: ServiceConfig,
        link: LinkHandle,
        writer: Writer,
        stored: Vec<(BareJid, StoredRoom)>,
        uplinks: Uplinks,
    ) -> Self {
        let (events_tx, events) = mpsc::unbounded_channel();
        let (multicast, multicast_rx) = watch::channel(None);
        let (found_tx, found) = mpsc::unbounded_channel();
        let directory = Directory::default();
        let peers_shutdown = CancellationToken::new();
        let (submitted, submissions) = mpsc::unbounded_channel();
        let peer_context = Arc::new(PeerContext {
            master_jid: config.domain.clone(),
            tls: config.peering.tls.clone(),
            allow_plaintext: config.peering.allow_plaintext,
            submissions: submitted.clone(),
            keepalive: config.peering.keepalive,
            metrics: config.metrics.clone(),
        });
        let rooms_active = config
            .metrics
            .gauge("dmuc_rooms_active", "Rooms with a running room task");
        let mut known = HashMap::new();
        for target in &config.peering.static_peers {
            directory.insert(conn::spawn(
                target.clone(),
                peer_context.clone(),
                peers_shutdown.clone(),
            ));
            known.insert(target.domain.clone(), None);
        }
        let mut service = Service {
            ctx: RoomContext {
                link,
                writer,
                events: events_tx,
                multicast: multicast_rx,
                directory,
                epoch: config.epoch,
                slave_grace: config.peering.slave_grace,
                trees: config.peering.trees.clone(),
                forwards: submitted,
            },
            config,
            requests: Requests::default(),
            known,
            parked: HashMap::new(),
            found_tx,
            found,
            peers_shutdown,
            peer_context,
            submissions,
            uplinks: uplinks.0,
            unvouched: HashMap::new(),
            rooms: HashMap::new(),
            rooms_active,
            listings: BTreeMap::new(),
            created_by: HashMap::new(),
            multicast,
            events,
            tasks: JoinSet::new(),
            next_generation: 0,
        };
        for (jid, stored) in stored {
            let room = Room::restore(jid.clone(), service.config.settings.clone(), stored);
            if room.config().public {
                service.listings.insert(
                    jid.clone(),
                    Listing {
                        name: room.config().name.clone(),
                    },
                );
            }
            service.start_room(room, None);
        }
        info!(rooms = service.rooms.len(), "persistent rooms restored");
        service
    }

    fn start_room(&mut self, room: Room, creator: Option<BareJid>) {
        self.next_generation += 1;
        let jid = room.jid().clone();
        let (handle, task) = room_task::spawn(room, self.next_generation, self.ctx.clone());
        self.tasks.spawn(async move {
            let _ = task.await;
        });
        if let Some(c) = &creator {
            *self.created_by.entry(c.clone()).or_default() += 1;
        }
        self.rooms.insert(jid, Running { handle, creator });
        self.rooms_active.set(self.rooms.len() as i64);
    }

    /// Serves until `shutdown`, then tells every occupant (332) and waits for
    /// every room to make its changes durable.
    pub async fn run(mut self, mut inbound: mpsc::Receiver<Inbound>, shutdown: CancellationToken) {
        loop {
            tokio::select! {
                // Room events first: a room that closed before a stanza
                // arrived must be gone when that stanza is routed.
                biased;
                _ = shutdown.cancelled() => break,
                Some(event) = self.events.recv() => self.on_room_event(event).await,
                Some(found) = self.found.recv() => self.on_found(found).await,
                Some(transport) = self.uplinks.recv() => self.on_uplink(transport).await,
                Some(submitted) = self.submissions.recv() => match submitted {
                    // A merge never waits for discovery: its peerhost is connected.
                    Submitted::Input { room, input: input @ Input::Merge(_) } => {
                        self.route_to_room(room, input, false).await;
                    }
                    Submitted::Input { room, input } => {
                        let creates = creates(&input);
                        self.dispatch(room, input, creates).await;
                    }
                    Submitted::Stanza(el) => self.on_stanza(el).await,
                },
                item = inbound.recv() => match item {
                    Some(Inbound::Stanza(el)) => self.on_stanza(el).await,
                    Some(Inbound::Invalid(bad)) => self.on_invalid(bad).await,
                    Some(Inbound::Connected { .. }) => {
                        info!("component link up");
                        self.probe_multicast().await;
                    }
                    Some(Inbound::Disconnected { reason, retry_in }) => {
                        warn!(%reason, ?retry_in, "component link down; reconnecting");
                        // The server may come back without the module.
                        self.multicast.send_replace(None);
                    }
                    None => break,
                },
            }
        }
        info!(rooms = self.rooms.len(), "shutting down: telling occupants");
        for (_, running) in self.rooms.drain() {
            let _ = running.handle.inbox.send(Input::Shutdown).await;
        }
        // Room tasks end once their inboxes close and their commits are durable.
        while self.tasks.join_next().await.is_some() {}
        self.peers_shutdown.cancel();
    }

    /// Asks the server whether it offers XEP-0033 multicast.
    async fn probe_multicast(&self) {
        if let Some(server) = &self.config.multicast_from {
            self.send(outbound::multicast_probe(&self.config.domain, server))
                .await;
        }
    }

    /// The answer to [`Self::probe_multicast`].
    fn on_multicast_probe(&self, offered: bool) {
        let via = offered
            .then(|| self.config.multicast_from.clone())
            .flatten();
        info!(via = ?via.as_ref().map(|j| j.to_string()), "XEP-0033 multicast");
        self.multicast.send_replace(via);
    }

    async fn on_stanza(&mut self, el: Element) {
        if let Some(offered) = outbound::multicast_offered(&el) {
            return self.on_multicast_probe(offered);
        }
        let Some(el) = self.requests.answer(el) else {
            return;
        };
        match inbound::route(el, &self.config.domain, self.config.max_message_bytes) {
            Routed::Room {
                room,
                input,
                creates,
            } => self.dispatch(room, input, creates).await,
            Routed::Service { from, id, request } => self.answer_service(from, id, request).await,
            Routed::Reply(reply) => self.send(reply).await,
            Routed::Drop(why) => debug!(why, "stanza dropped"),
        }
    }

    /// A stanza the link could not parse: bounce an error if we can.
    async fn on_invalid(&mut self, bad: InvalidStanza) {
        warn!(name = %bad.name, from = ?bad.from, reason = %bad.reason, "invalid stanza");
        let (Some(from), Some(to)) = (&bad.from, &bad.to) else {
            return;
        };
        if bad.type_.as_deref() == Some("error")
            || !matches!(bad.name.as_str(), "message" | "presence" | "iq")
        {
            return;
        }
        let mut el = Element::builder(bad.name.as_str(), ns::DEFAULT_NS)
            .a("from", from.as_str())
            .a("to", to.as_str())
            .a("id", bad.id.clone())
            .build();
        if let Some(t) = &bad.type_ {
            outbound::set_attr(&mut el, "type", t.as_str());
        }
        if let Some(reply) =
            outbound::error_reply(&el, Condition::BadRequest, Some("malformed stanza"))
        {
            self.send(reply).await;
        }
    }

    async fn dispatch(&mut self, room: BareJid, input: Input, creates: bool) {
        if let Some(domain) = self.joiner_domain(&input)
            && let Some(parked) = self.must_wait(domain)
        {
            parked.push((room, input, creates));
            return;
        }
        self.route_to_room(room, input, creates).await;
    }

    /// The domain of a joiner whose domain may have a peerhost.
    fn joiner_domain(&self, input: &Input) -> Option<BareJid> {
        let domain = BareJid::new(input.joiner()?.domain().as_str()).ok()?;
        self.joiner_domain_ok(&domain).then_some(domain)
    }

    /// Whether `domain` is one that may have a peerhost: not the master's own.
    fn joiner_domain_ok(&self, domain: &BareJid) -> bool {
        self.config.peering.home.as_ref() != Some(domain) && *domain != self.config.domain
    }

    /// Where a join from `domain` must wait, if it must: while the domain's
    /// peerhost is looked for the first time. Starts looking if needed; an
    /// expired answer is renewed in the background.
    fn must_wait(&mut self, domain: BareJid) -> Option<&mut Vec<(BareJid, Input, bool)>> {
        if self.parked.contains_key(&domain) {
            return self.parked.get_mut(&domain);
        }
        let now = Instant::now();
        match self.known.get(&domain) {
            Some(until) if until.is_none_or(|until| until > now) => return None,
            Some(_) => {
                self.discover(domain);
                return None;
            }
            None if !self.config.peering.discovery => return None,
            None => {}
        }
        self.discover(domain.clone());
        Some(self.parked.entry(domain).or_default())
    }

    /// Looks for `domain`'s peerhost in the background.
    fn discover(&mut self, domain: BareJid) {
        // Until the answer comes, do not ask again.
        let missing_ttl = self.config.peering.missing_ttl;
        self.known
            .insert(domain.clone(), Some(Instant::now() + missing_ttl));
        debug!(%domain, "looking for a peerhost");
        let requests = self.requests.clone();
        let link = self.ctx.link.clone();
        let service = self.config.domain.clone();
        let timeout = self.config.peering.timeout;
        let found = self.found_tx.clone();
        tokio::spawn(async move {
            let target = discovery::discover(&requests, &link, &service, &domain, timeout).await;
            let _ = found.send(Found::Target { domain, target });
        });
    }

    /// A peerhost dialled in: trusted for the domain it says only if that
    /// domain lists it (asked now, unless known) or configuration names it.
    async fn on_uplink(&mut self, transport: Transport) {
        let welcome = &transport.welcome;
        let (Ok(domain), Ok(jid)) = (
            BareJid::new(&welcome.domain),
            BareJid::new(&welcome.peer_jid),
        ) else {
            return warn!(domain = %welcome.domain, peer = %welcome.peer_jid, "peerhost dialled in with malformed JIDs");
        };
        if let Some(peer) = self.ctx.directory.get(&domain)
            && peer.target.jid == jid
        {
            return peer.adopt(transport).await;
        }
        if self.joiner_domain_ok(&domain) {
            let first = !self.unvouched.contains_key(&domain);
            self.unvouched
                .entry(domain.clone())
                .or_default()
                .push(transport);
            if first && !self.parked.contains_key(&domain) {
                self.discover(domain);
            }
        } else {
            warn!(%domain, %jid, "peerhost dialled in for a domain the master serves itself");
        }
    }

    /// Hands the streams of peerhosts that dialled in for `domain` to its
    /// peer task, if discovery vouched for them.
    async fn vouch(&mut self, domain: &BareJid) {
        let peer = self.ctx.directory.get(domain);
        for transport in self.unvouched.remove(domain).unwrap_or_default() {
            match &peer {
                Some(peer) if peer.target.jid.as_str() == transport.welcome.peer_jid => {
                    peer.adopt(transport).await;
                }
                _ => warn!(
                    %domain,
                    peer = %transport.welcome.peer_jid,
                    "peerhost refused: its domain does not list it"
                ),
            }
        }
    }

    async fn on_found(&mut self, found: Found) {
        match found {
            Found::Target { domain, target } => {
                let peering = &self.config.peering;
                let ttl = if target.is_some() {
                    peering.found_ttl
                } else {
                    peering.missing_ttl
                };
                info!(%domain, peerhost = ?target.as_ref().map(|t| t.jid.to_string()), "discovery");
                self.known
                    .insert(domain.clone(), Some(Instant::now() + ttl));
                let current = self.ctx.directory.get(&domain);
                match target {
                    Some(target)
                        if current.as_ref().map(|p| p.target.as_ref()) != Some(&target) =>
                    {
                        let handle = conn::spawn(
                            target,
                            self.peer_context.clone(),
                            self.peers_shutdown.clone(),
                        );
                        self.ctx.directory.insert(handle.clone());
                        self.vouch(&domain).await;
                        self.settle(domain, handle);
                    }
                    Some(_) => {
                        self.vouch(&domain).await;
                        self.release_parked(&domain).await;
                    }
                    None => {
                        // No longer listed: new rooms serve the domain directly.
                        self.ctx.directory.remove(&domain);
                        self.vouch(&domain).await;
                        self.release_parked(&domain).await;
                    }
                }
            }
            Found::Settled { domain } => self.release_parked(&domain).await,
        }
    }

    /// Lets the joins from `domain` go once the first connection attempt
    /// to its peerhost has ended (or the timeout passed).
    fn settle(&self, domain: BareJid, mut handle: PeerHandle) {
        let found = self.found_tx.clone();
        let timeout = self.config.peering.timeout;
        tokio::spawn(async move {
            let state = tokio::time::timeout(timeout, handle.settled()).await;
            debug!(%domain, ?state, "peerhost connection settled");
            let _ = found.send(Found::Settled { domain });
        });
    }

    async fn release_parked(&mut self, domain: &BareJid) {
        for (room, input, creates) in self.parked.remove(domain).unwrap_or_default() {
            self.route_to_room(room, input, creates).await;
        }
    }

    async fn route_to_room(&mut self, room: BareJid, input: Input, creates: bool) {
        let input = match self.rooms.get(&room) {
            Some(running) => match running.handle.inbox.send(input).await {
                Ok(()) => return,
                // The room just closed: it no longer exists for this input.
                Err(mpsc::error::SendError(input)) => {
                    self.forget(&room);
                    input
                }
            },
            None => input,
        };
        if let Input::Merge(merge) = &input {
            info!(%room, domain = %merge.domain, index = merge.index, "merge for a room that does not exist: confirmed");
            let directory = &self.ctx.directory;
            return directory
                .confirm_merge(
                    &room,
                    &merge.domain,
                    merge.began,
                    merge.index.saturating_add(1),
                )
                .await;
        }
        let creator = match &input {
            Input::Presence { from, .. } if creates => from.to_bare(),
            _ => {
                let refusal = refusal(&input, Condition::ItemNotFound, "No such room");
                return self.reply(&room, refusal).await;
            }
        };
        if self.created_by.get(&creator).copied().unwrap_or(0) >= self.config.max_rooms_per_user {
            let refusal = refusal(
                &input,
                Condition::NotAllowed,
                "You have created too many rooms",
            );
            return self.reply(&room, refusal).await;
        }
        debug!(%room, %creator, "creating room");
        self.start_room(
            Room::new(room.clone(), self.config.settings.clone()),
            Some(creator),
        );
        let running = &self.rooms[&room];
        if running.handle.inbox.send(input).await.is_err() {
            warn!(%room, "new room ended before its first input");
        }
    }

    fn forget(&mut self, room: &BareJid) {
        let removed = self.rooms.remove(room);
        self.rooms_active.set(self.rooms.len() as i64);
        if let Some(running) = removed
            && let Some(creator) = running.creator
            && let Some(n) = self.created_by.get_mut(&creator)
        {
            *n -= 1;
            if *n == 0 {
                self.created_by.remove(&creator);
            }
        }
    }

    async fn on_room_event(&mut self, event: RoomEvent) {
        match event {
            RoomEvent::Listing { room, listing } => match listing {
                Some(l) => {
                    self.listings.insert(room, l);
                }
                None => {
                    self.listings.remove(&room);
                }
            },
            RoomEvent::Closed {
                room,
                generation,
                leftover,
            } => {
                if self
                    .rooms
                    .get(&room)
                    .is_some_and(|r| r.handle.generation == generation)
                {
                    self.forget(&room);
                }
                for input in leftover {
                    let creates = creates(&input);
                    Box::pin(self.route_to_room(room.clone(), input, creates)).await;
                }
            }
        }
    }

    async fn answer_service(&mut self, from: FullJid, id: String, request: ServiceRequest) {
        let domain = self.config.domain.to_string();
        let reply = Element::builder("iq", ns::DEFAULT_NS)
            .a("from", domain.as_str())
            .a("to", from.to_string())
            .a("id", id.as_str());
        let reply = match request {
            ServiceRequest::DiscoInfo => reply
                .a("type", "result")
                .append(outbound::disco_info(
                    "conference",
                    "text",
                    "dmuc",
                    SERVICE_FEATURES,
                    None,
                ))
                .build(),
            ServiceRequest::DiscoItems => reply
                .a("type", "result")
                .append(outbound::disco_items(
                    self.listings
                        .iter()
                        .map(|(jid, l)| (Jid::from(jid.clone()), l.name.as_str())),
                ))
                .build(),
            ServiceRequest::Ping => reply.a("type", "result").build(),
            ServiceRequest::Unsupported => {
                let request = Element::builder("iq", ns::DEFAULT_NS)
                    .a("type", "get")
                    .a("from", from.to_string())
                    .a("to", domain.as_str())
                    .a("id", id.as_str())
                    .build();
                match outbound::error_reply(&request, Condition::ServiceUnavailable, None) {
                    Some(r) => r,
                    None => return,
                }
            }
        };
        self.send(reply).await;
    }

    async fn reply(&self, room: &BareJid, reply: Option<(FullJid, Outgoing)>) {
        if let Some((to, stanza)) = reply {
            let el = outbound::build(room, &stanza);
            self.send(outbound::addressed(el, &to)).await;
        }
    }

    async fn send(&self, el: Element) {
        if let Err(e) = self.ctx.link.send(el).await {
            warn!(error = %e, "component link closed; reply dropped");
        }
    }
}

/// Whether `input` creates its room if it does not exist: a join, but
/// not a merged one (a room that ended during a split stays ended).
fn creates(input: &Input) -> bool {
    input.joiner().is_some() && !matches!(input, Input::Merge(_))
}

/// The error answer from `room` to `input` (none for inputs that must not
/// be answered, such as unavailable presence).
fn refusal(input: &Input, condition: Condition, text: &'static str) -> Option<(FullJid, Outgoing)> {
    let (from, kind, nick, id) = match input {
        Input::Groupchat { from, id, .. } => (from, StanzaKind::Message, None, id.clone()),
        Input::Private { from, to, id, .. } => {
            (from, StanzaKind::Message, Some(to.clone()), id.clone())
        }
        Input::Iq { from, to, id, .. } => (from, StanzaKind::Iq, to.clone(), Some(id.clone())),
        Input::Presence { from, nick, .. } => {
            (from, StanzaKind::Presence, Some(nick.clone()), None)
        }
        Input::Leave { .. }
        | Input::Bounced { .. }
        | Input::IqResponse { .. }
        | Input::Shutdown
        | Input::Merge(_) => return None,
    };
    Some((
        from.clone(),
        Outgoing::Error {
            kind,
            from: nick,
            id,
            condition,
            error_type: condition.error_type(),
            text: Some(text),
        },
    ))
}
