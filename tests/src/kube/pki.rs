//! The cluster's certificates, made locally as kubeadm lays them out: one
//! CA for every serving and client certificate, and the service-account
//! signing key. ECDSA P-256 throughout; every component of Kubernetes 1.35
//! reads it.

use anyhow::{Context, Result};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use std::path::{Path, PathBuf};

/// A certificate and its key, as files.
#[derive(Clone, Debug)]
pub struct CertFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

pub struct ClusterPki {
    dir: PathBuf,
    issuer: Issuer<'static, KeyPair>,
    pub ca: PathBuf,
    pub apiserver: CertFiles,
    /// Signs service-account tokens (kube-apiserver's
    /// `--service-account-signing-key-file`, kube-controller-manager's
    /// `--service-account-private-key-file`).
    pub service_account_key: PathBuf,
    /// Verifies them (kube-apiserver's `--service-account-key-file`).
    pub service_account_public_key: PathBuf,
}

impl ClusterPki {
    /// A new CA in `dir`, with kube-apiserver's serving certificate for the
    /// loopback address and the in-cluster service names.
    pub fn create(dir: &Path) -> Result<ClusterPki> {
        std::fs::create_dir_all(dir)?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.distinguished_name = name("furnace-test-ca", &[]);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let key = KeyPair::generate()?;
        let cert = params.self_signed(&key)?;
        let ca = dir.join("ca.crt");
        write(&ca, &cert.pem(), 0o644)?;
        write(&dir.join("ca.key"), &key.serialize_pem(), 0o600)?;

        let signer = KeyPair::generate()?;
        let service_account_key = dir.join("sa.key");
        write(&service_account_key, &signer.serialize_pem(), 0o600)?;
        let service_account_public_key = dir.join("sa.pub");
        write(&service_account_public_key, &signer.public_key_pem(), 0o644)?;

        let issuer = Issuer::new(params, key);
        let apiserver = issue(
            dir,
            &issuer,
            "kube-apiserver",
            serving_params(
                "kube-apiserver",
                &[
                    "localhost",
                    "kubernetes",
                    "kubernetes.default",
                    "kubernetes.default.svc",
                    "kubernetes.default.svc.cluster.local",
                ],
                &[
                    std::net::Ipv4Addr::LOCALHOST.into(),
                    super::control_plane::SERVICE_IP.parse()?,
                ],
            )?,
        )?;
        Ok(ClusterPki {
            dir: dir.to_owned(),
            issuer,
            ca,
            apiserver,
            service_account_key,
            service_account_public_key,
        })
    }

    /// A client certificate: Kubernetes takes the user from the common
    /// name and the groups from the organizations.
    pub fn client(&self, user: &str, groups: &[&str]) -> Result<CertFiles> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.distinguished_name = name(user, groups);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        self.issue(&file_stem(user), params)
    }

    /// A serving certificate for these DNS names and addresses.
    pub fn serving(
        &self,
        stem: &str,
        dns: &[&str],
        addresses: &[std::net::IpAddr],
    ) -> Result<CertFiles> {
        self.issue(stem, serving_params(stem, dns, addresses)?)
    }

    fn issue(&self, stem: &str, params: CertificateParams) -> Result<CertFiles> {
        issue(&self.dir, &self.issuer, stem, params)
    }
}

fn serving_params(
    stem: &str,
    dns: &[&str],
    addresses: &[std::net::IpAddr],
) -> Result<CertificateParams> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.distinguished_name = name(stem, &[]);
    params.subject_alt_names = dns
        .iter()
        .map(|d| Ok(SanType::DnsName((*d).try_into()?)))
        .chain(addresses.iter().map(|a| Ok(SanType::IpAddress(*a))))
        .collect::<Result<_>>()?;
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    Ok(params)
}

/// Signs `params` with the CA and writes `<stem>.crt` and `<stem>.key` in `dir`.
fn issue(
    dir: &Path,
    issuer: &Issuer<'static, KeyPair>,
    stem: &str,
    mut params: CertificateParams,
) -> Result<CertFiles> {
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    let key = KeyPair::generate()?;
    let cert = params
        .signed_by(&key, issuer)
        .with_context(|| format!("signing {stem}'s certificate"))?;
    let files = CertFiles {
        cert: dir.join(format!("{stem}.crt")),
        key: dir.join(format!("{stem}.key")),
    };
    write(&files.cert, &cert.pem(), 0o644)?;
    write(&files.key, &key.serialize_pem(), 0o600)?;
    Ok(files)
}

fn name(common: &str, organizations: &[&str]) -> DistinguishedName {
    let mut name = DistinguishedName::new();
    name.push(DnType::CommonName, common);
    for organization in organizations {
        name.push(DnType::OrganizationName, *organization);
    }
    name
}

/// `system:kube-scheduler` → `system-kube-scheduler`.
fn file_stem(user: &str) -> String {
    user.replace(':', "-")
}

fn write(path: &Path, text: &str, mode: u32) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(path)
        .with_context(|| format!("writing {}", path.display()))?;
    file.write_all(text.as_bytes())?;
    Ok(())
}
