//! Mutual TLS over real TCP: a peerhost on `127.0.0.1:0` configured with
//! [`tls::server_config`] that checks `Hello.master_jid` against the
//! client's certificate, and masters configured with
//! [`tls::client_config`], all with certificates from a test CA
//! (`dmuc_testbed::pki`). Each failure case checks who refuses and how
//! the refusal reaches the master.

use std::net::SocketAddr;
use std::path::Path;
use std::pin::Pin;

use dmuc_protocol::pb::peering_client::PeeringClient;
use dmuc_protocol::pb::peering_server::{Peering, PeeringServer};
use dmuc_protocol::pb::{self, master_frame, peer_frame};
use dmuc_protocol::tls::{self, LoadedTls, Roots, TlsError, TlsFiles};
use dmuc_testbed::pki::{IssuedCert, TestCa, Usage};
use tokio::sync::{mpsc, oneshot};
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Channel, ClientTlsConfig, Endpoint, Server};
use tonic::{Request, Response, Status, Streaming};

const MASTER: &str = "conference.a.test";
const PEER: &str = "muc-peer.b.test";

type Frames = Pin<Box<dyn Stream<Item = Result<pb::PeerFrame, Status>> + Send>>;

/// A peerhost that welcomes a master whose certificate is valid for the
/// JID its `Hello` claims, and reports the certificate's names.
struct CheckingPeer {
    seen: mpsc::UnboundedSender<Vec<String>>,
}

#[tonic::async_trait]
impl Peering for CheckingPeer {
    type ReplicateStream = Frames;

    async fn replicate(
        &self,
        request: Request<Streaming<pb::MasterFrame>>,
    ) -> Result<Response<Frames>, Status> {
        let names =
            tls::client_names(&request).map_err(|e| Status::unauthenticated(e.to_string()))?;
        let _ = self.seen.send(names.clone());
        let mut inbound = request.into_inner();
        let hello = match inbound.message().await? {
            Some(pb::MasterFrame {
                frame: Some(master_frame::Frame::Hello(hello)),
            }) => hello,
            _ => return Err(Status::invalid_argument("frame: expected hello")),
        };
        if !tls::cert_matches_jid(&names, &hello.master_jid) {
            return Err(Status::permission_denied(
                "master_jid: not in the client certificate",
            ));
        }
        let welcome = pb::PeerFrame {
            frame: Some(peer_frame::Frame::Welcome(pb::Welcome {
                version: dmuc_protocol::PROTOCOL_VERSION,
                features: Vec::new(),
                peer_jid: PEER.into(),
                domain: "b.test".into(),
                resumable: Vec::new(),
                intercepts: false,
            })),
        };
        let (tx, rx) = mpsc::channel(1);
        tx.send(Ok(welcome)).await.ok();
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

/// A running peerhost: its address, the names of each client certificate
/// it saw, and its stop switch.
struct Peerhost {
    addr: SocketAddr,
    seen: mpsc::UnboundedReceiver<Vec<String>>,
    _stop: oneshot::Sender<()>,
}

async fn serve(tls: &LoadedTls) -> Peerhost {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    let (seen_tx, seen) = mpsc::unbounded_channel();
    let server = Server::builder()
        .tls_config(tls::server_config(tls))
        .unwrap()
        .add_service(PeeringServer::new(CheckingPeer { seen: seen_tx }));
    tokio::spawn(
        server.serve_with_incoming_shutdown(TcpIncoming::from(listener), async {
            let _ = stopped.await;
        }),
    );
    Peerhost {
        addr,
        seen,
        _stop: stop,
    }
}

/// Dials `addr` (an IP address: the name checked is the configuration's).
async fn dial(
    addr: SocketAddr,
    config: ClientTlsConfig,
) -> Result<PeeringClient<Channel>, tonic::transport::Error> {
    let channel = Endpoint::from_shared(format!("https://{addr}"))
        .unwrap()
        .tls_config(config)?
        .connect()
        .await?;
    Ok(PeeringClient::new(channel))
}

/// Opens `Replicate` with a `Hello` for `master_jid`; the first answer.
async fn hello(
    client: &mut PeeringClient<Channel>,
    master_jid: &str,
) -> Result<pb::Welcome, Status> {
    let outbound = tokio_stream::iter(vec![pb::MasterFrame {
        frame: Some(master_frame::Frame::Hello(dmuc_protocol::hello(master_jid))),
    }]);
    let mut inbound = client.replicate(outbound).await?.into_inner();
    match inbound.message().await? {
        Some(pb::PeerFrame {
            frame: Some(peer_frame::Frame::Welcome(welcome)),
        }) => Ok(welcome),
        other => panic!("expected a welcome, got {other:?}"),
    }
}

/// An error and all its sources, for matching on the cause.
fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(e) = source {
        text.push_str(": ");
        text.push_str(&e.to_string());
        source = e.source();
    }
    text
}

fn files(issued: &IssuedCert) -> TlsFiles {
    TlsFiles {
        cert: issued.cert.clone(),
        key: issued.key.clone(),
        ca: Some(issued.ca.clone()),
    }
}

fn load(issued: &IssuedCert) -> LoadedTls {
    files(issued).load().unwrap()
}

fn issue(ca: &TestCa, dir: &Path, stem: &str, names: &[&str]) -> LoadedTls {
    load(&ca.issue(dir, stem, names).unwrap())
}

#[tokio::test]
async fn mutual_tls_shows_the_peerhost_the_masters_names() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new().unwrap();
    let master = issue(&ca, dir.path(), "master", &[MASTER]);
    let peer = issue(&ca, dir.path(), "peer", &[PEER]);
    assert_eq!(master.names(), [MASTER]);
    assert!(matches!(master.roots(), Roots::File(_)));
    assert_eq!(master.root_count(), 1);
    let mut peerhost = serve(&peer).await;

    let mut client = dial(peerhost.addr, tls::client_config(&master, PEER).unwrap())
        .await
        .unwrap();
    let welcome = hello(&mut client, MASTER).await.unwrap();
    assert_eq!(welcome.peer_jid, PEER);
    assert_eq!(peerhost.seen.recv().await.unwrap(), [MASTER]);
}

#[tokio::test]
async fn the_peerhost_refuses_a_hello_for_a_jid_outside_the_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new().unwrap();
    let master = issue(&ca, dir.path(), "master", &[MASTER]);
    let peer = issue(&ca, dir.path(), "peer", &[PEER]);
    let peerhost = serve(&peer).await;

    let mut client = dial(peerhost.addr, tls::client_config(&master, PEER).unwrap())
        .await
        .unwrap();
    let status = hello(&mut client, "conference.evil.test")
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::PermissionDenied);
}

#[tokio::test]
async fn a_wildcard_certificate_serves_the_jids_below_it() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new().unwrap();
    let master = issue(&ca, dir.path(), "master", &["*.a.test"]);
    let peer = issue(&ca, dir.path(), "peer", &["*.b.test"]);
    let mut peerhost = serve(&peer).await;

    let mut client = dial(peerhost.addr, tls::client_config(&master, PEER).unwrap())
        .await
        .unwrap();
    hello(&mut client, MASTER).await.unwrap();
    assert_eq!(peerhost.seen.recv().await.unwrap(), ["*.a.test"]);
}

#[tokio::test]
async fn the_master_refuses_a_peerhost_certificate_for_another_jid() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new().unwrap();
    let master = issue(&ca, dir.path(), "master", &[MASTER]);
    let peer = issue(&ca, dir.path(), "peer", &["muc-peer.c.test"]);
    let mut peerhost = serve(&peer).await;

    let e = dial(peerhost.addr, tls::client_config(&master, PEER).unwrap())
        .await
        .unwrap_err();
    let text = chain(&e);
    assert!(
        text.contains(r#"certificate not valid for name "muc-peer.b.test""#),
        "{text}"
    );
    // The handshake failed at the master: nothing reached the service.
    assert!(peerhost.seen.try_recv().is_err());
}

#[tokio::test]
async fn the_master_refuses_a_peerhost_from_another_ca() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new().unwrap();
    let other = TestCa::new().unwrap();
    let master = issue(&ca, dir.path(), "master", &[MASTER]);
    let peer = issue(&other, dir.path(), "peer", &[PEER]);
    let peerhost = serve(&peer).await;

    let e = dial(peerhost.addr, tls::client_config(&master, PEER).unwrap())
        .await
        .unwrap_err();
    let text = chain(&e);
    assert!(text.contains("UnknownIssuer"), "{text}");
}

#[tokio::test]
async fn the_peerhost_refuses_a_client_certificate_from_another_ca() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new().unwrap();
    let other = TestCa::new().unwrap();
    let peer = issue(&ca, dir.path(), "peer", &[PEER]);
    // The stranger trusts the peerhost's CA, but its own certificate comes
    // from another.
    let stranger = other.issue(dir.path(), "stranger", &[MASTER]).unwrap();
    let stranger = TlsFiles {
        ca: Some(ca.write_cert(dir.path()).unwrap()),
        ..files(&stranger)
    }
    .load()
    .unwrap();
    let mut peerhost = serve(&peer).await;

    let status = match dial(peerhost.addr, tls::client_config(&stranger, PEER).unwrap()).await {
        // TLS 1.3: the client finishes its handshake before the server has
        // checked its certificate; the refusal arrives with the first call.
        Ok(mut client) => hello(&mut client, MASTER).await.unwrap_err(),
        Err(e) => panic!(
            "expected the handshake to complete at the client: {}",
            chain(&e)
        ),
    };
    assert_eq!(status.code(), tonic::Code::Unknown, "{status:?}");
    assert_eq!(status.message(), "transport error");
    let text = chain(&status);
    assert!(text.contains("received fatal alert: UnknownCA"), "{text}");
    assert!(peerhost.seen.try_recv().is_err());
}

#[tokio::test]
async fn the_peerhost_refuses_a_master_certificate_for_servers_only() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new().unwrap();
    let peer = issue(&ca, dir.path(), "peer", &[PEER]);
    let master = ca
        .issue_for(dir.path(), "master", &[MASTER], Usage::ServerOnly)
        .unwrap();
    let master = load(&master);
    let mut peerhost = serve(&peer).await;

    let mut client = dial(peerhost.addr, tls::client_config(&master, PEER).unwrap())
        .await
        .unwrap();
    let status = hello(&mut client, MASTER).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unknown, "{status:?}");
    let text = chain(&status);
    assert!(
        text.contains("received fatal alert: UnsupportedCertificate"),
        "{text}"
    );
    assert!(peerhost.seen.try_recv().is_err());
}

#[tokio::test]
async fn a_client_without_a_certificate_fails_on_its_first_call() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new().unwrap();
    let peer = issue(&ca, dir.path(), "peer", &[PEER]);
    let mut peerhost = serve(&peer).await;

    let anonymous = ClientTlsConfig::new()
        .ca_certificate(tonic::transport::Certificate::from_pem(ca.cert_pem()))
        .domain_name(PEER);
    let mut client = dial(peerhost.addr, anonymous).await.unwrap();
    let status = hello(&mut client, MASTER).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unknown, "{status:?}");
    assert_eq!(status.message(), "transport error");
    let text = chain(&status);
    assert!(
        text.contains("received fatal alert: CertificateRequired"),
        "{text}"
    );
    assert!(peerhost.seen.try_recv().is_err());
}

#[test]
fn loading_names_the_file_that_is_missing() {
    let dir = tempfile::tempdir().unwrap();
    let issued = TestCa::new()
        .unwrap()
        .issue(dir.path(), "master", &[MASTER])
        .unwrap();
    let missing = dir.path().join("nope.key");
    let e = TlsFiles {
        key: missing.clone(),
        ..files(&issued)
    }
    .load()
    .unwrap_err();
    assert!(
        matches!(&e, TlsError::Read { path, .. } if *path == missing),
        "{e:?}"
    );
    assert!(
        e.to_string()
            .starts_with(&format!("{}: ", missing.display())),
        "{e}"
    );
}

#[test]
fn loading_refuses_a_key_that_is_not_the_certificates() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new().unwrap();
    let master = ca.issue(dir.path(), "master", &[MASTER]).unwrap();
    let peer = ca.issue(dir.path(), "peer", &[PEER]).unwrap();
    let e = TlsFiles {
        key: peer.key.clone(),
        ..files(&master)
    }
    .load()
    .unwrap_err();
    assert!(matches!(e, TlsError::KeyMismatch { .. }), "{e:?}");
    assert_eq!(
        e.to_string(),
        format!(
            "{}: private key does not match the certificate in {}",
            peer.key.display(),
            master.cert.display()
        )
    );
}

#[test]
fn loading_refuses_files_without_what_they_should_hold() {
    let dir = tempfile::tempdir().unwrap();
    let master = TestCa::new()
        .unwrap()
        .issue(dir.path(), "master", &[MASTER])
        .unwrap();
    let garbage = dir.path().join("garbage.pem");
    std::fs::write(
        &garbage,
        "-----BEGIN CERTIFICATE-----\nnot base64!\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    let empty = dir.path().join("empty.pem");
    std::fs::write(&empty, "").unwrap();

    // The certificate file holds the key, and the key file the certificate.
    let e = TlsFiles {
        cert: master.key.clone(),
        ..files(&master)
    }
    .load()
    .unwrap_err();
    assert!(
        matches!(&e, TlsError::NoCertificate { path } if *path == master.key),
        "{e:?}"
    );
    let e = TlsFiles {
        key: master.cert.clone(),
        ..files(&master)
    }
    .load()
    .unwrap_err();
    assert!(
        matches!(&e, TlsError::NoKey { path } if *path == master.cert),
        "{e:?}"
    );
    let e = TlsFiles {
        ca: Some(garbage.clone()),
        ..files(&master)
    }
    .load()
    .unwrap_err();
    assert!(
        matches!(&e, TlsError::Pem { path, .. } if *path == garbage),
        "{e:?}"
    );
    let e = TlsFiles {
        ca: Some(empty.clone()),
        ..files(&master)
    }
    .load()
    .unwrap_err();
    assert!(
        matches!(&e, TlsError::NoCertificate { path } if *path == empty),
        "{e:?}"
    );
}

#[test]
fn client_config_wants_a_dns_name() {
    let dir = tempfile::tempdir().unwrap();
    let master = issue(&TestCa::new().unwrap(), dir.path(), "master", &[MASTER]);
    for name in ["127.0.0.1", "peer@b.test", ""] {
        let e = tls::client_config(&master, name).unwrap_err();
        assert!(matches!(e, TlsError::PeerName { .. }), "{e:?}");
    }
}

#[test]
fn without_a_ca_file_the_system_roots_are_used() {
    let dir = tempfile::tempdir().unwrap();
    let issued = TestCa::new()
        .unwrap()
        .issue(dir.path(), "master", &[MASTER])
        .unwrap();
    match (TlsFiles {
        ca: None,
        ..files(&issued)
    })
    .load()
    {
        Ok(tls) => {
            assert_eq!(tls.roots(), &Roots::System);
            assert!(tls.root_count() > 0);
        }
        // A machine without a root store (a bare container) says so.
        Err(e) => assert!(matches!(e, TlsError::NoSystemRoots { .. }), "{e:?}"),
    }
}

#[tokio::test]
async fn system_roots_do_not_trust_the_test_ca_either_way() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new().unwrap();
    let master = ca.issue(dir.path(), "master", &[MASTER]).unwrap();
    let Ok(master) = (TlsFiles {
        ca: None,
        ..files(&master)
    })
    .load() else {
        eprintln!("no system root store: skipped");
        return;
    };
    let peer = ca.issue(dir.path(), "peer", &[PEER]).unwrap();

    // A master on system roots refuses a peerhost with a test certificate.
    let peerhost = serve(&load(&peer)).await;
    let e = dial(peerhost.addr, tls::client_config(&master, PEER).unwrap())
        .await
        .unwrap_err();
    assert!(chain(&e).contains("UnknownIssuer"), "{}", chain(&e));

    // A peerhost on system roots (re-encoded for tonic) refuses a master
    // with a test certificate.
    let peer = (TlsFiles {
        ca: None,
        ..files(&peer)
    })
    .load()
    .unwrap();
    let master = issue(&ca, dir.path(), "master", &[MASTER]);
    let peerhost = serve(&peer).await;
    let mut client = dial(peerhost.addr, tls::client_config(&master, PEER).unwrap())
        .await
        .unwrap();
    let status = hello(&mut client, MASTER).await.unwrap_err();
    assert!(
        chain(&status).contains("received fatal alert: UnknownCA"),
        "{}",
        chain(&status)
    );
}
