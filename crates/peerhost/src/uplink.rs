//! Dialling out to masters (`[[peering.uplink]]`): for a peerhost that
//! masters cannot reach (behind a firewall), or that must reach its master
//! first (it intercepts its users' traffic). It opens
//! `dmuc.peering.v1.Uplink/Attach` and then serves the stream exactly as a
//! `Replicate` stream the master opened ([`crate::stream`]); it dials again,
//! with backoff, whenever the stream ends.
//!
//! ```text
//!  uplink task ══Attach══▶ master (TLS: its certificate must be valid for the configured JID)
//!       │ ◀═ MasterFrame (Hello, CreateSlave, events…) ═╗
//!       └── stream::serve (the same state machine) ─────╨═ PeerFrame (Welcome, Ack…) ═▶
//! ```

use std::sync::Arc;
use std::time::Duration;

use dmuc_component::{Backoff, BackoffConfig};
use dmuc_protocol::pb::uplink_client::UplinkClient;
use dmuc_protocol::tls::{self, LoadedTls};
use jid::BareJid;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::transport::Endpoint;
use tracing::{Instrument, info, info_span, warn};

use crate::stream::{self, PeeringService};

/// Frames waiting for the master to read them.
const OUTBOUND: usize = 256;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// The longest wait between dials: while the stream is down, an
/// intercepting peerhost's rooms are split, and a split should not outlast
/// the outage by much.
const MAX_RETRY: Duration = Duration::from_secs(10);

/// A master this peerhost dials.
#[derive(Debug, Clone)]
pub struct UplinkTarget {
    /// The master's MUC service JID: its certificate must be valid for it,
    /// and its `Hello` must say it.
    pub master: BareJid,
    /// Its `[peering] listen` address, as a URL.
    pub endpoint: String,
}

/// Starts dialling `target` until `shutdown`.
pub fn spawn(
    service: PeeringService,
    target: UplinkTarget,
    tls: Option<Arc<LoadedTls>>,
    keepalive: Duration,
    shutdown: CancellationToken,
) {
    let span = info_span!("uplink", master = %target.master);
    let streams = service.streams();
    streams.spawn(run(service, target, tls, keepalive, shutdown).instrument(span));
}

async fn run(
    service: PeeringService,
    target: UplinkTarget,
    tls: Option<Arc<LoadedTls>>,
    keepalive: Duration,
    shutdown: CancellationToken,
) {
    let mut backoff = Backoff::new(BackoffConfig {
        max: MAX_RETRY,
        ..BackoffConfig::default()
    });
    loop {
        let started = Instant::now();
        let outcome = tokio::select! {
            _ = shutdown.cancelled() => return,
            outcome = attach(&service, &target, tls.as_deref(), keepalive) => outcome,
        };
        if shutdown.is_cancelled() {
            return;
        }
        backoff.connected_for(started.elapsed());
        let delay = backoff.next_delay();
        match outcome {
            Ok(()) => info!(retry_in = ?delay, "uplink stream ended"),
            Err(reason) => warn!(%reason, retry_in = ?delay, "uplink failed"),
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            () = tokio::time::sleep(delay) => {}
        }
    }
}

/// Dials once and serves the stream to its end.
async fn attach(
    service: &PeeringService,
    target: &UplinkTarget,
    tls: Option<&LoadedTls>,
    keepalive: Duration,
) -> Result<(), String> {
    let url = &target.endpoint;
    let mut endpoint = Endpoint::from_shared(url.clone())
        .map_err(|e| format!("endpoint {url:?}: {e}"))?
        .connect_timeout(CONNECT_TIMEOUT)
        .tcp_nodelay(true)
        .http2_keep_alive_interval(keepalive)
        .keep_alive_timeout(keepalive)
        .keep_alive_while_idle(true);
    let names = if url.starts_with("https://") {
        let Some(tls) = tls else {
            return Err("https endpoint, but no [peering] tls_cert configured".into());
        };
        let config = tls::client_config(tls, target.master.as_str()).map_err(|e| e.to_string())?;
        endpoint = endpoint.tls_config(config).map_err(|e| e.to_string())?;
        // The TLS stack checked that the master's certificate is for this JID.
        Some(vec![target.master.to_string()])
    } else {
        None
    };
    let channel = endpoint.connect().await.map_err(|e| format!("{e:?}"))?;
    let (frames, rx) = mpsc::channel(OUTBOUND);
    // An error frame ends the request stream (the master sees it end).
    let outbound = ReceiverStream::new(rx)
        .take_while(Result::is_ok)
        .filter_map(Result::ok);
    let inbound = UplinkClient::new(channel)
        .max_decoding_message_size(crate::MAX_FRAME_BYTES)
        .attach(outbound)
        .await
        .map_err(|s| s.to_string())?
        .into_inner();
    info!("uplink stream open");
    stream::serve(service.clone(), inbound, names, frames).await;
    Ok(())
}
