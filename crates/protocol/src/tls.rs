//! Mutual TLS on the peering link: the PEM files of `[peering]` (`tls_cert`,
//! `tls_key`, `tls_ca`), the tonic client and server configurations built
//! from them, and the DNS names a peer's certificate is valid for.
//!
//! # Who checks what
//!
//! ```text
//!  master (gRPC client)                          peerhost (gRPC server)
//!  client_config(&tls, "muc-peer.b.test") ─TLS─▶ server_config(&tls)
//!   rustls: the peerhost's chain ends at          rustls: a client certificate is
//!   the roots and its certificate is valid        required and must chain to the roots
//!   for the JID the master dialled                client_names(&request) → names
//!                                                 cert_matches_jid(&names, hello.master_jid)
//!                                                 then the peerhost's own policy
//! ```
//!
//! The TLS stack proves that the peer holds a certificate for a name; this
//! module does not decide whom to trust. Whether `muc-peer.b.test` may
//! serve domain `b.test` (the domain's server lists it, or configuration
//! says so) is the master's decision; whether a master is welcome (an
//! allow-list, or any master with a valid certificate) is the peerhost's.
//! What this module adds is the check the TLS stack cannot make: a master
//! may only claim, in `Hello.master_jid`, a JID its certificate is valid
//! for ([`cert_matches_jid`]).
//!
//! # Roots
//!
//! Both directions use the same roots: the `tls_ca` file when configured
//! (one or more PEM certificates), otherwise the system's store, read by
//! `rustls-native-certs` (`/etc/ssl/certs` and the like; `SSL_CERT_FILE`
//! and `SSL_CERT_DIR` override it). The system store is read once, in
//! [`TlsFiles::load`], so a missing store is a start-up error rather than a
//! failure of every later connection. On the server side, tonic accepts
//! client roots only as PEM, so the system's certificates are re-encoded;
//! with the system store the server's certificate request lists every
//! root's name (some kilobytes per handshake): give peerhosts a `tls_ca`
//! when the masters' CA is known.
//!
//! Public CAs no longer put the `clientAuth` extended key usage in the
//! certificates they issue (Chrome's root program requires separate server
//! and client hierarchies by June 2026; Let's Encrypt's default profile
//! dropped it in February 2026). webpki, which checks client certificates
//! here, requires `clientAuth` whenever a certificate lists usages at all,
//! so a master with such a certificate is refused by every peerhost,
//! whatever the peerhost's policy (`received fatal alert:
//! UnsupportedCertificate` on its first call). In practice masters need
//! certificates from a CA that still issues client certificates, typically
//! a private one that peerhosts name in `tls_ca`.
//!
//! # Crypto provider
//!
//! tonic's client falls back to ring when no process-wide rustls provider
//! is installed, but its server asks rustls for the process default, and
//! rustls can only pick one on its own while exactly one of its `ring` and
//! `aws-lc-rs` features is enabled. One more dependency enabling
//! `aws-lc-rs` anywhere in a binary would make the server panic at start.
//! [`server_config`] and [`client_config`] therefore install ring as the
//! process default when none is installed; a provider the program installed
//! earlier is kept.
//!
//! # A client without a certificate
//!
//! With TLS 1.3 the server checks the client's certificate after the client
//! considers the handshake done: a master without an acceptable
//! certificate "connects", and its first call fails with a `Status` of code
//! `Unknown`, message `transport error`, whose source chain holds the
//! server's alert (`received fatal alert: CertificateRequired`, or
//! `UnknownCA` for a certificate from other roots). The master should log
//! that chain; the peerhost's tonic logs the refusal at debug level only. A
//! server certificate the master refuses fails `connect()` itself.
//!
//! # Errors
//!
//! [`TlsError`] is separate from [`crate::ProtocolError`]: the latter is a
//! malformed frame, cloneable and comparable, naming a field and mapped to
//! a `tonic::Status` for the remote peer; these are local configuration
//! errors (file paths, I/O errors) or facts about a peer's certificate that
//! the caller turns into its own refusal.

use std::io;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine as _;
use rustls::pki_types::pem::{self, PemObject as _};
use rustls::pki_types::{CertificateDer, DnsName, PrivateKeyDer};
use tonic::transport::{Certificate, ClientTlsConfig, Identity, ServerTlsConfig};

/// How long either side waits for a TLS handshake to complete. Without it,
/// a peer that opens a connection and stays silent holds it open forever.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Where the certificate, key and roots are: the `[peering]` keys
/// `tls_cert`, `tls_key` and `tls_ca`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// This service's certificate, PEM, leaf first, then any intermediates.
    /// It must be valid for the service's JID.
    pub cert: PathBuf,
    /// Its private key, PEM (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// The CA certificates peers' certificates must chain to, PEM; `None`
    /// for the system's root store.
    pub ca: Option<PathBuf>,
}

/// Where the roots of a [`LoadedTls`] came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Roots {
    /// The `tls_ca` file.
    File(PathBuf),
    /// The system's root store.
    System,
}

/// The checked contents of [`TlsFiles`]: an identity whose key matches its
/// certificate, the certificate's DNS names, and at least one root.
pub struct LoadedTls {
    identity: Identity,
    names: Vec<String>,
    roots: Certificate,
    roots_from: Roots,
    root_count: usize,
}

/// Leaves the key out.
impl std::fmt::Debug for LoadedTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadedTls")
            .field("names", &self.names)
            .field("roots", &self.roots_from)
            .field("root_count", &self.root_count)
            .finish_non_exhaustive()
    }
}

impl LoadedTls {
    /// The DNS names this service's own certificate is valid for (its
    /// subjectAltName entries; a wildcard stays `*.b.test`). A service
    /// checks at start that its JID is among them with [`cert_matches_jid`].
    pub fn names(&self) -> &[String] {
        &self.names
    }

    /// Where the roots came from.
    pub fn roots(&self) -> &Roots {
        &self.roots_from
    }

    /// How many root certificates were loaded.
    pub fn root_count(&self) -> usize {
        self.root_count
    }
}

/// A TLS file that cannot be used, or a peer certificate that cannot be
/// read. See the module docs for why this is not a [`crate::ProtocolError`].
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read.
    #[error("{}: {source}", path.display())]
    Read { path: PathBuf, source: io::Error },
    /// A file is not well-formed PEM.
    #[error("{}: malformed pem: {reason}", path.display())]
    Pem { path: PathBuf, reason: &'static str },
    /// A certificate or CA file holds no certificate.
    #[error("{}: no pem certificate", path.display())]
    NoCertificate { path: PathBuf },
    /// A certificate that does not parse as X.509 (or as a trust anchor,
    /// for a CA file).
    #[error("{}: malformed certificate: {reason}", path.display())]
    Certificate { path: PathBuf, reason: String },
    /// The certificate names no DNS name in its subjectAltName (a name
    /// only in the subject's common name is ignored, as browsers do).
    #[error("{}: certificate has no dns name in its subject alternative names", path.display())]
    NoDnsName { path: PathBuf },
    /// The key file holds no private key.
    #[error("{}: no pem private key", path.display())]
    NoKey { path: PathBuf },
    /// A private key of a kind ring cannot sign with.
    #[error("{}: unusable private key: {reason}", path.display())]
    Key { path: PathBuf, reason: String },
    /// The private key is not the certificate's.
    #[error("{}: private key does not match the certificate in {}", key.display(), cert.display())]
    KeyMismatch { cert: PathBuf, key: PathBuf },
    /// No `tls_ca` file, and the system store has no usable certificate.
    #[error("no tls_ca file and no usable certificate in the system root store{detail}")]
    NoSystemRoots { detail: String },
    /// A peer name that is not a DNS name (an IP address, a JID with a
    /// local part or resource, an empty string).
    #[error("not a dns name: {name:?}")]
    PeerName { name: String },
    /// The connection carries no client certificate: the server does not
    /// use TLS, or the request did not come through its TLS listener.
    #[error("no peer certificate")]
    NoPeerCertificate,
    /// The peer's leaf certificate does not parse (it passed the TLS stack's
    /// checks, so this should not happen).
    #[error("malformed peer certificate: {reason}")]
    PeerCertificate { reason: String },
}

impl TlsFiles {
    /// From the `[peering]` keys `tls_cert`, `tls_key` and `tls_ca`: both
    /// of the first two, or none of the three (no TLS). The error names
    /// the key that is missing.
    pub fn from_keys(
        cert: Option<&Path>,
        key: Option<&Path>,
        ca: Option<&Path>,
    ) -> Result<Option<TlsFiles>, String> {
        match (cert, key) {
            (Some(cert), Some(key)) => Ok(Some(TlsFiles {
                cert: cert.to_owned(),
                key: key.to_owned(),
                ca: ca.map(Path::to_owned),
            })),
            (None, None) if ca.is_none() => Ok(None),
            (None, _) => Err("peering.tls_cert: needed with tls_key and tls_ca".into()),
            (Some(_), None) => Err("peering.tls_key: needed with tls_cert".into()),
        }
    }

    /// Reads and checks the files: the certificate parses and has DNS
    /// names, the key is the certificate's, the roots parse (or the system
    /// store has some). Errors name the file.
    pub fn load(&self) -> Result<LoadedTls, TlsError> {
        let cert_pem = read(&self.cert)?;
        let chain = certificates(&self.cert, &cert_pem)?;
        let key_pem = read(&self.key)?;
        let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| match e {
            pem::Error::NoItemsFound => TlsError::NoKey {
                path: self.key.clone(),
            },
            e => TlsError::Pem {
                path: self.key.clone(),
                reason: pem_reason(&e),
            },
        })?;
        check_key(&self.cert, &self.key, &chain, key)?;
        let names = dns_names(&chain[0]).map_err(|reason| TlsError::Certificate {
            path: self.cert.clone(),
            reason,
        })?;
        if names.is_empty() {
            return Err(TlsError::NoDnsName {
                path: self.cert.clone(),
            });
        }

        let (roots, roots_from, root_count) = match &self.ca {
            Some(path) => {
                let pem = read(path)?;
                let certs = certificates(path, &pem)?;
                for cert in &certs {
                    webpki::anchor_from_trusted_cert(cert).map_err(|e| TlsError::Certificate {
                        path: path.clone(),
                        reason: e.to_string(),
                    })?;
                }
                (
                    Certificate::from_pem(pem),
                    Roots::File(path.clone()),
                    certs.len(),
                )
            }
            None => {
                let (pem, count) = system_roots()?;
                (Certificate::from_pem(pem), Roots::System, count)
            }
        };

        Ok(LoadedTls {
            identity: Identity::from_pem(cert_pem, key_pem),
            names,
            roots,
            roots_from,
            root_count,
        })
    }
}

/// The peerhost's side: presents its certificate and requires a client
/// certificate that chains to the roots. Which names the client's
/// certificate holds is for the service to check ([`client_names`]).
pub fn server_config(tls: &LoadedTls) -> ServerTlsConfig {
    install_ring_provider();
    ServerTlsConfig::new()
        .identity(tls.identity.clone())
        .client_ca_root(tls.roots.clone())
        .timeout(HANDSHAKE_TIMEOUT)
}

/// The master's side, for one peer: presents the master's certificate and
/// accepts only a server certificate that chains to the roots and is
/// valid for `peer_jid` (a component JID, a DNS name), whatever address is
/// dialled. Fails if `peer_jid` is not a DNS name.
pub fn client_config(tls: &LoadedTls, peer_jid: &str) -> Result<ClientTlsConfig, TlsError> {
    if !is_dns_name(peer_jid) {
        return Err(TlsError::PeerName {
            name: peer_jid.to_owned(),
        });
    }
    install_ring_provider();
    Ok(ClientTlsConfig::new()
        .ca_certificate(tls.roots.clone())
        .identity(tls.identity.clone())
        .domain_name(peer_jid)
        .timeout(HANDSHAKE_TIMEOUT))
}

/// The DNS names of the client certificate of a request to a server
/// configured with [`server_config`] (`request.peer_certs()`, leaf first).
/// The TLS stack has verified the chain already.
pub fn client_names<T>(request: &tonic::Request<T>) -> Result<Vec<String>, TlsError> {
    match request.peer_certs() {
        Some(certs) => peer_names(&certs),
        None => Err(TlsError::NoPeerCertificate),
    }
}

/// The DNS names (subjectAltName) of a verified peer chain's leaf, the
/// first certificate.
pub fn peer_names(certs: &[CertificateDer<'_>]) -> Result<Vec<String>, TlsError> {
    let leaf = certs.first().ok_or(TlsError::NoPeerCertificate)?;
    dns_names(leaf).map_err(|reason| TlsError::PeerCertificate { reason })
}

/// Whether a certificate with DNS names `names` is valid for `jid`, a JID
/// without local part or resource (a component's or a domain's).
///
/// Comparison is ASCII case-insensitive and exact, except that a name
/// `*.b.test` stands for exactly one non-empty label before `b.test`: it
/// matches `muc.b.test`, not `b.test` nor `x.muc.b.test`. A wildcard needs
/// at least two labels after it (`*.test` matches nothing), and only a
/// whole leftmost label can be a wildcard (the TLS stack drops `m*.b.test`
/// before it gets here). Internationalised domains compare in their ASCII
/// (`xn--`) form: a `jid` with non-ASCII characters matches nothing.
pub fn cert_matches_jid<S: AsRef<str>>(names: &[S], jid: &str) -> bool {
    is_dns_name(jid) && names.iter().any(|name| name_matches(name.as_ref(), jid))
}

fn name_matches(name: &str, jid: &str) -> bool {
    match name.strip_prefix("*.") {
        Some(base) => {
            base.contains('.')
                && jid.split_once('.').is_some_and(|(label, rest)| {
                    !label.is_empty() && rest.eq_ignore_ascii_case(base)
                })
        }
        None => name.eq_ignore_ascii_case(jid),
    }
}

/// A DNS name: not an IP address, and only what rustls accepts as a
/// server name (letters, digits, hyphens, dots; no `@`, `/`, `*`).
fn is_dns_name(name: &str) -> bool {
    name.parse::<IpAddr>().is_err() && DnsName::try_from(name).is_ok()
}

/// Installs ring as rustls's process-wide provider unless one is installed
/// (see the module docs).
fn install_ring_provider() {
    if rustls::crypto::CryptoProvider::get_default().is_none() {
        // Losing a race to another thread installing one is fine.
        let _ = rustls::crypto::ring::default_provider().install_default();
    }
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.to_owned(),
        source,
    })
}

/// Every certificate in a PEM file, at least one.
fn certificates(path: &Path, pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Pem {
            path: path.to_owned(),
            reason: pem_reason(&e),
        })?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate {
            path: path.to_owned(),
        });
    }
    Ok(certs)
}

/// A reason that never quotes the file: the key file's lines are secret.
fn pem_reason(e: &pem::Error) -> &'static str {
    match e {
        pem::Error::MissingSectionEnd { .. } => "a section has no end line",
        pem::Error::IllegalSectionStart { .. } => "a malformed begin line",
        pem::Error::Base64Decode(_) => "bad base64",
        pem::Error::SectionTooLarge => "a section is too large",
        _ => "unreadable",
    }
}

/// The key must be one ring can sign with and belong to the leaf: both
/// would otherwise surface only when the first connection is made.
fn check_key(
    cert_path: &Path,
    key_path: &Path,
    chain: &[CertificateDer<'static>],
    key: PrivateKeyDer<'static>,
) -> Result<(), TlsError> {
    let provider = rustls::crypto::ring::default_provider();
    match rustls::sign::CertifiedKey::from_der(chain.to_vec(), key, &provider) {
        Ok(_) => Ok(()),
        Err(rustls::Error::InconsistentKeys(_)) => Err(TlsError::KeyMismatch {
            cert: cert_path.to_owned(),
            key: key_path.to_owned(),
        }),
        Err(e) => Err(TlsError::Key {
            path: key_path.to_owned(),
            reason: e.to_string(),
        }),
    }
}

/// The DNS subjectAltNames of a certificate, as webpki reads them (the
/// same parser that verifies it). Lowercased for display and comparison.
fn dns_names(cert: &CertificateDer<'_>) -> Result<Vec<String>, String> {
    let cert = webpki::EndEntityCert::try_from(cert).map_err(|e| e.to_string())?;
    Ok(cert
        .valid_dns_names()
        .map(|name| name.to_ascii_lowercase())
        .collect())
}

/// The system's root certificates, PEM-encoded (tonic's server takes
/// client roots only as PEM), and how many. Certificates that do not parse
/// as trust anchors are skipped, as rustls would skip them.
fn system_roots() -> Result<(String, usize), TlsError> {
    let found = rustls_native_certs::load_native_certs();
    let certs: Vec<_> = found
        .certs
        .iter()
        .filter(|cert| webpki::anchor_from_trusted_cert(cert).is_ok())
        .collect();
    if certs.is_empty() {
        let detail = found
            .errors
            .iter()
            .map(|e| format!(": {e}"))
            .collect::<String>();
        return Err(TlsError::NoSystemRoots { detail });
    }
    Ok((to_pem(&certs), certs.len()))
}

/// Certificates as PEM, 64 base64 characters a line (RFC 7468).
fn to_pem(certs: &[&CertificateDer<'_>]) -> String {
    let mut pem = String::new();
    for cert in certs {
        pem.push_str("-----BEGIN CERTIFICATE-----\n");
        let b64 = base64::engine::general_purpose::STANDARD.encode(cert.as_ref());
        let mut rest = b64.as_str();
        while !rest.is_empty() {
            // Base64 is ASCII: any index is a char boundary.
            let (line, tail) = rest.split_at(rest.len().min(64));
            pem.push_str(line);
            pem.push('\n');
            rest = tail;
        }
        pem.push_str("-----END CERTIFICATE-----\n");
    }
    pem
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_names_match_case_insensitively() {
        let names = ["conference.a.test"];
        assert!(cert_matches_jid(&names, "conference.a.test"));
        assert!(cert_matches_jid(&names, "Conference.A.TEST"));
        assert!(cert_matches_jid(
            &["CONFERENCE.a.test"],
            "conference.a.test"
        ));
        assert!(!cert_matches_jid(&names, "a.test"));
        assert!(!cert_matches_jid(&names, "x.conference.a.test"));
        assert!(!cert_matches_jid(&names, "conference.a.tes"));
        assert!(!cert_matches_jid(&names, "conference.b.test"));
    }

    #[test]
    fn any_of_several_names_matches() {
        let names = vec!["a.test".to_owned(), "conference.a.test".to_owned()];
        assert!(cert_matches_jid(&names, "a.test"));
        assert!(cert_matches_jid(&names, "conference.a.test"));
        assert!(!cert_matches_jid(&names, "muc.a.test"));
        assert!(!cert_matches_jid::<&str>(&[], "a.test"));
    }

    #[test]
    fn a_wildcard_stands_for_one_label() {
        let names = ["*.b.test"];
        assert!(cert_matches_jid(&names, "muc-peer.b.test"));
        assert!(cert_matches_jid(&names, "MUC.B.test"));
        assert!(!cert_matches_jid(&names, "b.test"));
        assert!(!cert_matches_jid(&names, ".b.test"));
        assert!(!cert_matches_jid(&names, "x.muc.b.test"));
        assert!(!cert_matches_jid(&names, "muc.c.test"));
        // Too broad to honour.
        assert!(!cert_matches_jid(&["*.test"], "b.test"));
        // A wildcard only counts as a whole leftmost label.
        assert!(!cert_matches_jid(&["m*.b.test"], "muc.b.test"));
        assert!(!cert_matches_jid(&["muc.*.test"], "muc.b.test"));
    }

    #[test]
    fn a_jid_that_is_not_a_dns_name_matches_nothing() {
        let names = ["*.a.test", "a.test", "conference.a.test"];
        for jid in [
            "",
            "user@a.test",
            "conference.a.test/res",
            "*.a.test",
            "127.0.0.1",
            "::1",
            "müc.a.test",
        ] {
            assert!(!cert_matches_jid(&names, jid), "{jid}");
        }
        assert!(!cert_matches_jid(&["127.0.0.1"], "127.0.0.1"));
    }

    #[test]
    fn pem_encoding_round_trips() {
        let a = CertificateDer::from((0..=255u8).cycle().take(1000).collect::<Vec<_>>());
        let b = CertificateDer::from(vec![1u8; 48]);
        let pem = to_pem(&[&a, &b]);
        assert!(pem.lines().all(|line| line.len() <= 64));
        let back: Vec<_> = CertificateDer::pem_slice_iter(pem.as_bytes())
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(back, [a, b]);
    }

    #[test]
    fn peer_names_must_be_dns_names() {
        for name in ["", "127.0.0.1", "peer@b.test", "b.test/x"] {
            assert!(!is_dns_name(name), "{name}");
        }
        assert!(is_dns_name("muc-peer.b.test"));
    }
}
