//! A small PKI for tests: certificate authorities, server certificates for IP
//! addresses and DNS names, and client certificates, all generated in the test (ECDSA
//! P-256, with `rcgen` on `ring`). Everything is available as PEM text and can be
//! written as PEM files: certificates mode 0644, private keys mode 0600.
//!
//! ```ignore
//! let ca = Ca::new("controller CA");
//! let server = ca.server(&["127.0.0.1", "localhost"]);
//! let ca_file = ca.write(dir, "ca.pem");
//! let (cert_file, key_file) = ca.client("test-node").write(dir, "client");
//! ```

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, SanType,
};
use std::net::IpAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// Installs ring as the process's default rustls crypto provider, for code that asks
/// for the default (reqwest does). Does nothing if one is installed already. The fake
/// controller and the tests' own TLS clients do not need it: they name ring explicitly.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// A certificate authority: a self-signed CA certificate and its key.
pub struct Ca {
    name: String,
    issuer: CertifiedIssuer<'static, KeyPair>,
}

/// A certificate issued by a [`Ca`], with its private key.
#[derive(Clone)]
pub struct Issued {
    /// The certificate (PEM).
    pub cert_pem: String,
    /// Its private key (PKCS#8 PEM).
    pub key_pem: String,
    /// The certificate (DER), to compare with what a server saw.
    pub der: Vec<u8>,
}

impl Ca {
    /// A new CA whose subject common name is `name` (use a different name for every
    /// CA in a test: certificates are chained by name).
    pub fn new(name: &str) -> Ca {
        let mut params = CertificateParams::default();
        params.distinguished_name = distinguished_name(name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let key = KeyPair::generate().expect("generate a CA key");
        let issuer = CertifiedIssuer::self_signed(params, key).expect("self-sign the test CA");
        Ca {
            name: name.to_string(),
            issuer,
        }
    }

    /// Its common name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its certificate (PEM): what a client puts in its trust store (`ca_file`).
    pub fn cert_pem(&self) -> String {
        self.issuer.pem()
    }

    /// Its certificate (DER).
    pub fn der(&self) -> Vec<u8> {
        self.issuer.der().to_vec()
    }

    /// Writes its certificate as `dir/file_name` (mode 0644) and returns the path.
    pub fn write(&self, dir: &Path, file_name: &str) -> PathBuf {
        write_pem(dir, file_name, &self.cert_pem(), 0o644)
    }

    /// A server certificate for `names`: each an IP address (an IP SAN, e.g.
    /// "127.0.0.1", "::1") or a DNS name (e.g. "localhost"). The first is also the
    /// common name.
    pub fn server(&self, names: &[&str]) -> Issued {
        assert!(!names.is_empty(), "a server certificate needs at least one name");
        let mut params = CertificateParams::default();
        params.distinguished_name = distinguished_name(names[0]);
        params.subject_alt_names = names
            .iter()
            .map(|name| match name.parse::<IpAddr>() {
                Ok(ip) => SanType::IpAddress(ip),
                Err(_) => SanType::DnsName(
                    name.to_string()
                        .try_into()
                        .unwrap_or_else(|e| panic!("{name:?} is not a DNS name: {e}")),
                ),
            })
            .collect();
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        self.issue(params)
    }

    /// A client certificate (for mutual TLS) with subject common name `common_name`.
    pub fn client(&self, common_name: &str) -> Issued {
        let mut params = CertificateParams::default();
        params.distinguished_name = distinguished_name(common_name);
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        self.issue(params)
    }

    fn issue(&self, mut params: CertificateParams) -> Issued {
        params.use_authority_key_identifier_extension = true;
        let key = KeyPair::generate().expect("generate a key");
        let cert = params.signed_by(&key, &self.issuer).expect("sign a certificate");
        Issued {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            der: cert.der().to_vec(),
        }
    }
}

impl Issued {
    /// Writes `dir/<stem>.crt` (mode 0644) and `dir/<stem>.key` (mode 0600); returns
    /// (certificate path, key path).
    pub fn write(&self, dir: &Path, stem: &str) -> (PathBuf, PathBuf) {
        let cert = write_pem(dir, &format!("{stem}.crt"), &self.cert_pem, 0o644);
        let key = write_pem(dir, &format!("{stem}.key"), &self.key_pem, 0o600);
        (cert, key)
    }
}

/// Writes `text` to `dir/file_name` with `mode` (set before anything is written, so a
/// key is never readable by others, not even for a moment) and returns the path.
pub fn write_pem(dir: &Path, file_name: &str, text: &str, mode: u32) -> PathBuf {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let path = dir.join(file_name);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&path)
        .unwrap_or_else(|e| panic!("cannot create {}: {e}", path.display()));
    // The mode given to open is filtered by the umask, and an existing file keeps its own.
    file.set_permissions(std::fs::Permissions::from_mode(mode))
        .unwrap_or_else(|e| panic!("cannot chmod {}: {e}", path.display()));
    file.write_all(text.as_bytes())
        .unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
    path
}

fn distinguished_name(common_name: &str) -> DistinguishedName {
    let mut name = DistinguishedName::new();
    name.push(DnType::OrganizationName, "ker-agent tests");
    name.push(DnType::CommonName, common_name);
    name
}
