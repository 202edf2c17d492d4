//! Peerhosts that dial the master (`[peering] listen`): the
//! `dmuc.peering.v1.Uplink` service. A peerhost behind a firewall, or one
//! intercepting its users' traffic, opens `Attach`; the master says
//! `Hello` and reads the `Welcome` as on a stream it dialled itself, then
//! hands the stream to the service, which trusts it for `Welcome.domain`
//! only if that domain lists `Welcome.peer_jid` (or configuration names
//! it), and passes it to that peerhost's task.
//!
//! ```text
//!  peerhost ══Attach══▶ UplinkService ─ Hello / Welcome ─▶ (TLS: certificate valid for peer_jid?)
//!                                                            └─▶ Service: listed by its domain? ─▶ peer task adopts it
//! ```

use std::pin::Pin;

use dmuc_protocol::pb::{self, uplink_server::Uplink};
use dmuc_protocol::tls;
use jid::BareJid;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status, Streaming};
use tracing::{debug, warn};

use super::conn::{self, Transport};

/// Frames waiting for a peerhost that dialled in.
const QUEUE: usize = 4096;

type Frames = Pin<Box<dyn Stream<Item = Result<pb::MasterFrame, Status>> + Send>>;

/// The `Uplink` service of a master.
#[derive(Debug, Clone)]
pub struct UplinkService {
    master_jid: BareJid,
    /// Whether connections come over mutual TLS (then a peerhost's
    /// certificate must be valid for the JID its `Welcome` says).
    tls: bool,
    /// Welcomed streams, for the service to check and hand on.
    welcomed: mpsc::UnboundedSender<Transport>,
}

impl UplinkService {
    pub fn new(master_jid: BareJid, tls: bool, welcomed: mpsc::UnboundedSender<Transport>) -> Self {
        UplinkService {
            master_jid,
            tls,
            welcomed,
        }
    }
}

#[tonic::async_trait]
impl Uplink for UplinkService {
    type AttachStream = Frames;

    async fn attach(
        &self,
        request: Request<Streaming<pb::PeerFrame>>,
    ) -> Result<Response<Frames>, Status> {
        let remote = request.remote_addr();
        let names = if self.tls {
            let names = tls::client_names(&request).map_err(|e| {
                warn!(?remote, error = %e, "peerhost refused: no usable certificate");
                Status::unauthenticated("a client certificate is required")
            })?;
            Some(names)
        } else {
            None
        };
        let (frames, rx) = mpsc::channel(QUEUE);
        let inbound = request.into_inner();
        let master = self.master_jid.clone();
        let welcomed = self.welcomed.clone();
        tokio::spawn(async move {
            let transport = match conn::handshake(&master, frames, inbound).await {
                Ok(transport) => transport,
                Err(reason) => return warn!(?remote, %reason, "peerhost dialled in, no welcome"),
            };
            let peer = &transport.welcome.peer_jid;
            if let Some(names) = names
                && !tls::cert_matches_jid(&names, peer)
            {
                return warn!(?remote, %peer, ?names, "peerhost refused: its certificate is not for the JID it says");
            }
            debug!(?remote, %peer, domain = %transport.welcome.domain, "peerhost dialled in");
            let _ = welcomed.send(transport);
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx).map(Ok))))
    }
}
