//! Link health: this peerhost pings the other peerhosts its masters'
//! `Assign`s name (parents and fallbacks, dialled as a parent would be:
//! `[peering] routes` first, mutual TLS), keeps an [`Estimator`] per peer,
//! and tells each master, on its own stream, how its links to the peers
//! of that master's rooms are when they change enough (`LinkHealth`, with
//! the "link-health" feature). The master's trees prefer parents by it.
//!
//! ```text
//!  every PROBE_EVERY: peers of the places (Hub::assign) ─ TreeRelay.Ping ─▶ peer
//!       answered in PROBE_TIMEOUT, or not ─▶ Estimator ─▶ dmuc_peer_link_*{peer}
//!       changed_enough since told ─▶ LinkHealth on the stream of each master
//!                                    whose rooms name the peer
//! ```
//!
//! A master's new stream is told every link again (see `Hub::stream_up`).

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use dmuc_component::metrics::Gauge;
use dmuc_protocol::pb::tree_relay_client::TreeRelayClient;
use dmuc_protocol::pb::{self, peer_frame};
use dmuc_protocol::tls;
use jid::BareJid;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tonic::Status;
use tonic::transport::Channel;
use tracing::{debug, info};

use super::Hub;
use super::links::{Estimate, Estimator, changed_enough};

/// How often each peer is pinged.
const PROBE_EVERY: Duration = Duration::from_secs(5);
/// A ping (with the connection, if there is none) unanswered by then is lost.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

type Client = TreeRelayClient<Channel>;

/// One peer's link, as the probe task keeps it.
struct Peer {
    url: String,
    /// The connection, kept between pings; dropped when one fails.
    client: Option<Client>,
    estimator: Estimator,
    rtt: Gauge,
    loss: Gauge,
    reachable: Gauge,
}

/// The peers the places name now.
#[derive(Default)]
struct Known {
    /// Where to dial each, by JID.
    urls: HashMap<String, String>,
    /// The peers of each master's rooms.
    by_master: HashMap<BareJid, BTreeSet<String>>,
}

impl Hub {
    /// Probes the links to the peers the places name, and reports them,
    /// until `shutdown`.
    pub async fn probe_links(self, shutdown: CancellationToken) {
        let mut peers: HashMap<String, Peer> = HashMap::new();
        let mut every = tokio::time::interval(PROBE_EVERY);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut nonce = 0u64;
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = every.tick() => {}
            }
            let known = self.known_peers();
            peers.retain(|jid, _| known.urls.contains_key(jid));
            let mut probes = JoinSet::new();
            for (jid, url) in &known.urls {
                let peer = peers.entry(jid.clone()).or_insert_with(|| {
                    let labels = [("peer", jid.as_str())];
                    let registry = &self.metrics.0;
                    Peer {
                        url: url.clone(),
                        client: None,
                        estimator: Estimator::default(),
                        rtt: registry.gauge_with(
                            "dmuc_peer_link_rtt_ms",
                            "Smoothed round trip of pings to another peerhost",
                            &labels,
                        ),
                        loss: registry.gauge_with(
                            "dmuc_peer_link_loss_permille",
                            "Recent pings to another peerhost left unanswered, per thousand",
                            &labels,
                        ),
                        reachable: registry.gauge_with(
                            "dmuc_peer_link_reachable",
                            "Whether another peerhost answered one of the last pings",
                            &labels,
                        ),
                    }
                });
                if peer.url != *url {
                    peer.url = url.clone();
                    peer.client = None;
                }
                nonce += 1;
                let (hub, jid, url, client) =
                    (self.clone(), jid.clone(), url.clone(), peer.client.take());
                probes.spawn(async move {
                    let (client, rtt) = hub.ping(&jid, &url, client, nonce).await;
                    (jid, client, rtt)
                });
            }
            while let Some(probed) = probes.join_next().await {
                let Ok((jid, client, rtt)) = probed else {
                    continue;
                };
                let Some(peer) = peers.get_mut(&jid) else {
                    continue;
                };
                peer.client = client;
                match rtt {
                    Some(rtt) => peer.estimator.answered(rtt),
                    None => peer.estimator.unanswered(),
                }
                if let Some(e) = peer.estimator.estimate() {
                    peer.rtt.set(i64::from(e.rtt_ms));
                    peer.loss.set(i64::from(e.loss_permille));
                    peer.reachable.set(i64::from(e.reachable));
                }
            }
            for (master, jids) in &known.by_master {
                let now: Vec<(&String, Estimate)> = jids
                    .iter()
                    .filter_map(|jid| Some((jid, peers.get(jid)?.estimator.estimate()?)))
                    .collect();
                self.report_links(master, &now).await;
            }
        }
    }

    /// Tells `master` the links of `now` that changed enough since it was
    /// last told, if its stream is up and speaks "link-health".
    async fn report_links(&self, master: &BareJid, now: &[(&String, Estimate)]) {
        let up = self
            .upstreams
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(master)
            .filter(|up| up.link_health())
            .cloned();
        let Some(up) = up else { return };
        let changed: Vec<(&String, Estimate)> = {
            let told = self.told();
            now.iter()
                .filter(|(jid, e)| changed_enough(told.get(&(master.clone(), (*jid).clone())), e))
                .copied()
                .collect()
        };
        if changed.is_empty() {
            return;
        }
        let links = changed
            .iter()
            .map(|(jid, e)| pb::PeerLink {
                peer_jid: (*jid).clone(),
                rtt_ms: e.rtt_ms,
                loss_permille: u32::from(e.loss_permille),
                reachable: e.reachable,
            })
            .collect();
        for (jid, e) in &changed {
            info!(%master, peer = %jid, rtt_ms = e.rtt_ms, loss_permille = e.loss_permille, reachable = e.reachable, "tree: link health reported");
        }
        if up
            .send(peer_frame::Frame::LinkHealth(pb::LinkHealth { links }))
            .await
        {
            let mut told = self.told();
            for (jid, e) in changed {
                told.insert((master.clone(), jid.clone()), e);
            }
        }
    }

    /// What each master was last told of each link.
    fn told(&self) -> std::sync::MutexGuard<'_, HashMap<(BareJid, String), Estimate>> {
        self.told
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The peers the places name (their parent, their fallbacks) that
    /// this node can dial, and by which masters' rooms.
    fn known_peers(&self) -> Known {
        let mut known = Known::default();
        let me = self.me.as_str();
        for place in self.lock().values() {
            let Some(master) = &place.master else {
                continue;
            };
            let parent = place
                .parent
                .as_ref()
                .map(|(jid, _)| (jid.clone(), place.parent_endpoint.clone()));
            for (jid, endpoint) in parent.into_iter().chain(place.fallbacks.iter().cloned()) {
                if jid.is_empty() || jid == me {
                    continue;
                }
                let url = self.routes.get(&jid).cloned().unwrap_or(endpoint);
                if url.is_empty() {
                    continue;
                }
                known.urls.entry(jid.clone()).or_insert(url);
                known
                    .by_master
                    .entry(master.clone())
                    .or_default()
                    .insert(jid);
            }
        }
        known
    }

    /// One ping of `jid` at `url` (connecting first if `client` is none):
    /// the connection to keep and the round trip, if it was answered in
    /// time.
    async fn ping(
        &self,
        jid: &str,
        url: &str,
        client: Option<Client>,
        nonce: u64,
    ) -> (Option<Client>, Option<Duration>) {
        let attempt = async {
            let mut client = match client {
                Some(client) => client,
                None => {
                    let endpoint = self.endpoint(jid, url)?;
                    Client::new(endpoint.connect().await.map_err(|e| e.to_string())?)
                }
            };
            let sent = Instant::now();
            let reply = client
                .ping(pb::PingRequest {
                    from_jid: self.me.to_string(),
                    nonce,
                })
                .await
                .map_err(|s| s.to_string())?;
            if reply.get_ref().nonce != nonce {
                return Err("an answer to another ping".to_owned());
            }
            Ok((client, sent.elapsed()))
        };
        match tokio::time::timeout(PROBE_TIMEOUT, attempt).await {
            Ok(Ok((client, rtt))) => {
                debug!(peer = %jid, rtt_us = rtt.as_micros() as u64, "link probe");
                (Some(client), Some(rtt))
            }
            Ok(Err(reason)) => {
                debug!(peer = %jid, %reason, "link probe failed");
                (None, None)
            }
            Err(_) => {
                debug!(peer = %jid, "link probe unanswered in time");
                (None, None)
            }
        }
    }

    /// The answer to another peerhost's ping: only for a caller whose
    /// certificate is valid for the JID it gives (`names`: its
    /// certificate's, with TLS).
    pub(super) fn pong(
        &self,
        request: &pb::PingRequest,
        names: Option<&[String]>,
    ) -> Result<pb::PingReply, Status> {
        if self.tls.is_some() && !names.is_some_and(|n| tls::cert_matches_jid(n, &request.from_jid))
        {
            return Err(Status::permission_denied(
                "from_jid: not a name of the client's certificate",
            ));
        }
        Ok(pb::PingReply {
            nonce: request.nonce,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use dmuc_protocol::tls::TlsFiles;

    use super::*;

    fn ping(from: &str) -> pb::PingRequest {
        pb::PingRequest {
            from_jid: from.into(),
            nonce: 7,
        }
    }

    #[test]
    fn only_a_peerhost_with_a_certificate_for_its_jid_is_answered() {
        let dir = tempfile::tempdir().unwrap();
        let ca = dmuc_testbed::pki::TestCa::new().unwrap();
        let cert = ca
            .issue(dir.path(), "muc-peer.b.test", &["muc-peer.b.test"])
            .unwrap();
        let tls = TlsFiles::from_keys(Some(&cert.cert), Some(&cert.key), Some(&cert.ca))
            .unwrap()
            .unwrap()
            .load()
            .unwrap();
        let me: BareJid = "muc-peer.b.test".parse().unwrap();
        let hub = Hub::new(me.clone(), Some(Arc::new(tls)), HashMap::new());
        let names = ["muc-peer.c.test".to_owned()];
        let reply = hub.pong(&ping("muc-peer.c.test"), Some(&names)).unwrap();
        assert_eq!(reply.nonce, 7);
        // Another JID than its certificate's, or no certificate at all.
        let other = hub.pong(&ping("muc-peer.d.test"), Some(&names));
        assert_eq!(other.unwrap_err().code(), tonic::Code::PermissionDenied);
        assert!(hub.pong(&ping("muc-peer.c.test"), None).is_err());
        // A peerhost without TLS (a trusted network) answers anyone.
        let open = Hub::new(me, None, HashMap::new());
        assert!(open.pong(&ping("muc-peer.d.test"), None).is_ok());
    }

    #[tokio::test]
    async fn the_peers_of_each_master_are_its_places_parents_and_fallbacks() {
        let routes = HashMap::from([(
            "muc-peer.c.test".to_owned(),
            "https://route-to-c:1".to_owned(),
        )]);
        let hub = Hub::new("muc-peer.b.test".parse().unwrap(), None, routes);
        let (a, x): (BareJid, BareJid) = (
            "conference.a.test".parse().unwrap(),
            "conference.x.test".parse().unwrap(),
        );
        {
            let mut rooms = hub.lock();
            let place = rooms
                .entry("r@conference.a.test".parse().unwrap())
                .or_default();
            place.master = Some(a.clone());
            place.parent = Some((
                "muc-peer.c.test".into(),
                super::super::Follow(tokio::spawn(async {})),
            ));
            place.parent_endpoint = "https://c:1".into();
            place.fallbacks = vec![
                ("muc-peer.c.test".into(), "https://c:1".into()),
                // Itself, and a peer it cannot dial: not probed.
                ("muc-peer.b.test".into(), "https://b:1".into()),
                ("muc-peer.e.test".into(), String::new()),
            ];
            let place = rooms
                .entry("s@conference.x.test".parse().unwrap())
                .or_default();
            place.master = Some(x.clone());
            place.fallbacks = vec![("muc-peer.d.test".into(), "https://d:1".into())];
        }
        let known = hub.known_peers();
        // The route first, as for following a parent.
        assert_eq!(
            known.urls,
            HashMap::from([
                ("muc-peer.c.test".into(), "https://route-to-c:1".into()),
                ("muc-peer.d.test".into(), "https://d:1".into()),
            ])
        );
        assert_eq!(
            known.by_master,
            HashMap::from([
                (a, BTreeSet::from(["muc-peer.c.test".to_owned()])),
                (x, BTreeSet::from(["muc-peer.d.test".to_owned()])),
            ])
        );
    }
}
