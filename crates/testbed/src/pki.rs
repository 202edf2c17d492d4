//! A throw-away PKI for tests of the TLS peering link: a CA made with
//! `rcgen` (ring), leaf certificates for JIDs, written as PEM files.
//!
//! ```ignore
//! let dir = tempfile::tempdir()?;
//! let ca = TestCa::new()?;
//! let master = ca.issue(dir.path(), "master", &["conference.a.test"])?;
//! let peer = ca.issue(dir.path(), "peer", &["muc-peer.b.test"])?;
//! let stranger = TestCa::new()?.issue(dir.path(), "stranger", &["conference.a.test"])?;
//! // master.cert, master.key, master.ca: the paths of [peering] tls_cert, tls_key, tls_ca
//! ```
//!
//! Every [`TestCa::new`] makes a fresh key, so two CAs are unrelated: a
//! certificate of one does not chain to the other.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};

use crate::{Error, Result};

/// Numbers CAs within the process, for distinct names and file names.
static NEXT_CA: AtomicU64 = AtomicU64::new(1);

/// A certificate authority that lives as long as the test.
#[derive(Debug)]
pub struct TestCa {
    issuer: CertifiedIssuer<'static, KeyPair>,
    name: String,
    file: String,
}

/// What an issued certificate may be used for (its extended key usages).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Usage {
    /// TLS server and client: what a private CA for the peering link issues.
    ServerAndClient,
    /// TLS server only: what public CAs issue since 2026 (Let's Encrypt's
    /// default profile has no client usage since February 2026).
    ServerOnly,
}

/// The files of an issued certificate, as `[peering]` names them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssuedCert {
    /// The leaf certificate, PEM (`tls_cert`).
    pub cert: PathBuf,
    /// Its private key, PKCS#8 PEM, mode 0600 (`tls_key`).
    pub key: PathBuf,
    /// The issuing CA's certificate, PEM (`tls_ca`).
    pub ca: PathBuf,
}

impl TestCa {
    /// A new CA named `dmuc test CA <n>`.
    pub fn new() -> Result<Self> {
        let n = NEXT_CA.fetch_add(1, Ordering::Relaxed);
        Self::create(format!("dmuc test CA {n}"), n)
    }

    /// A new CA with the given common name.
    pub fn named(name: &str) -> Result<Self> {
        let n = NEXT_CA.fetch_add(1, Ordering::Relaxed);
        Self::create(name.to_owned(), n)
    }

    fn create(name: String, n: u64) -> Result<Self> {
        let mut params = CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, name.as_str());
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let issuer = CertifiedIssuer::self_signed(params, KeyPair::generate()?)?;
        Ok(Self {
            issuer,
            name,
            file: format!("ca-{n}.crt"),
        })
    }

    /// The CA's common name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The CA's certificate, PEM.
    pub fn cert_pem(&self) -> String {
        self.issuer.pem()
    }

    /// Writes the CA's certificate into `dir` (as `ca-<n>.crt`) and returns
    /// its path.
    pub fn write_cert(&self, dir: &Path) -> Result<PathBuf> {
        let path = dir.join(&self.file);
        write(&path, self.cert_pem().as_bytes(), false)?;
        Ok(path)
    }

    /// Issues a certificate for `dns_names` (subjectAltName; the first is
    /// also the common name), usable by TLS servers and clients alike, and
    /// writes `<file_stem>.crt`, `<file_stem>.key` and the CA's certificate
    /// into `dir`.
    pub fn issue(&self, dir: &Path, file_stem: &str, dns_names: &[&str]) -> Result<IssuedCert> {
        self.issue_for(dir, file_stem, dns_names, Usage::ServerAndClient)
    }

    /// [`TestCa::issue`] for the given usage.
    pub fn issue_for(
        &self,
        dir: &Path,
        file_stem: &str,
        dns_names: &[&str],
        usage: Usage,
    ) -> Result<IssuedCert> {
        let (cert_pem, key_pem) = self.issue_pem(dns_names, usage)?;
        let cert = dir.join(format!("{file_stem}.crt"));
        let key = dir.join(format!("{file_stem}.key"));
        write(&cert, cert_pem.as_bytes(), false)?;
        write(&key, key_pem.as_bytes(), true)?;
        Ok(IssuedCert {
            cert,
            key,
            ca: self.write_cert(dir)?,
        })
    }

    /// Issues a certificate as [`TestCa::issue_for`] does, without writing
    /// it: the certificate and its private key, PEM.
    pub fn issue_pem(&self, dns_names: &[&str], usage: Usage) -> Result<(String, String)> {
        let names: Vec<String> = dns_names.iter().map(|n| (*n).to_owned()).collect();
        let mut params = CertificateParams::new(names)?;
        params.distinguished_name = rcgen::DistinguishedName::new();
        if let Some(first) = dns_names.first() {
            params.distinguished_name.push(DnType::CommonName, *first);
        }
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = match usage {
            Usage::ServerAndClient => vec![
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ],
            Usage::ServerOnly => vec![ExtendedKeyUsagePurpose::ServerAuth],
        };
        params.use_authority_key_identifier_extension = true;
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok((cert.pem(), key.serialize_pem()))
    }
}

/// Writes a file; a private key only readable by its owner.
/// Writes `path` whole or not at all: into a temporary file next to it,
/// then renamed over it. The CA's certificate is written again with every
/// certificate issued, while processes started earlier may be reading it.
fn write(path: &Path, contents: &[u8], private: bool) -> Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::PermissionsExt as _;
    let context = || format!("writing {}", path.display());
    let dir = path.parent().unwrap_or_else(|| Path::new("."));
    let mut file = tempfile::Builder::new()
        .permissions(std::fs::Permissions::from_mode(if private {
            0o600
        } else {
            0o644
        }))
        .tempfile_in(dir)
        .map_err(Error::io(context()))?;
    file.write_all(contents).map_err(Error::io(context()))?;
    file.persist(path)
        .map_err(|e| e.error)
        .map_err(Error::io(context()))?;
    Ok(())
}
