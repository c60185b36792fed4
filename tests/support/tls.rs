//! A test certificate authority, made at test time with rcgen: a CA and
//! server certificates for `127.0.0.1` and `localhost`, written as the PEM
//! files pullthrough's `[tls]` reads and the clients' CA files.

use std::path::{Path, PathBuf};

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};

/// A CA that signs server certificates.
pub struct TestCa {
    /// The CA certificate, PEM, as clients trust it.
    pub pem: String,
    cert: rcgen::Certificate,
    key: KeyPair,
}

/// A server certificate and its key, PEM.
pub struct ServerCert {
    pub cert_pem: String,
    pub key_pem: String,
}

impl TestCa {
    /// A new CA named `name`.
    pub fn new(name: &str) -> TestCa {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        let cert = params.self_signed(&key).unwrap();
        TestCa {
            pem: cert.pem(),
            cert,
            key,
        }
    }

    /// A server certificate for `127.0.0.1` and `localhost`.
    pub fn server(&self) -> ServerCert {
        let key = KeyPair::generate().unwrap();
        let mut params =
            CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()]).unwrap();
        params
            .distinguished_name
            .push(DnType::CommonName, "pullthrough test");
        let cert = params.signed_by(&key, &self.cert, &self.key).unwrap();
        ServerCert {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        }
    }

    /// The CA certificate as a reqwest root.
    pub fn reqwest_root(&self) -> reqwest::Certificate {
        reqwest::Certificate::from_pem(self.pem.as_bytes()).unwrap()
    }
}

impl ServerCert {
    /// Writes `cert.pem` and `key.pem` into `dir`, each by a rename so a
    /// reload never reads half a file; their paths.
    pub fn install(&self, dir: &Path) -> (PathBuf, PathBuf) {
        let write = |name: &str, text: &str| {
            let path = dir.join(name);
            let tmp = dir.join(format!(".{name}.tmp"));
            std::fs::write(&tmp, text).unwrap();
            std::fs::rename(&tmp, &path).unwrap();
            path
        };
        (
            write("cert.pem", &self.cert_pem),
            write("key.pem", &self.key_pem),
        )
    }
}
