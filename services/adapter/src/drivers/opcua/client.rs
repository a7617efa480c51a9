//! From a device's `opcua` settings to an OPC UA client: its PKI folder and trust list, the
//! endpoint to match on the server and the user identity.

use std::{path::Path, time::Duration};

use fieldline_core::config::opcua::{Identity, OpcuaSettings, SecurityMode, SecurityPolicy};
use opcua::{
    client::{Client, ClientBuilder, IdentityToken},
    crypto::{CertificateStore, SecurityPolicy as UaPolicy},
    types::{EndpointDescription, MessageSecurityMode, UserTokenPolicy},
};

/// Why a client could not be built from the settings.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error("PKI folder {path}: {source}")]
    Pki {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("trusted server certificate {path}: {message}")]
    TrustedCertificate { path: String, message: String },
    #[error("trusted server certificate {path}: cannot write {target}: {source}")]
    WriteTrusted {
        path: String,
        target: String,
        #[source]
        source: std::io::Error,
    },
    #[error("identity: {0}")]
    Identity(String),
    #[error("client: {0}")]
    Client(String),
}

/// Everything needed to open sessions to one server.
pub struct Setup {
    pub client: Client,
    pub endpoint: EndpointDescription,
    pub identity: IdentityToken,
}

/// The library's policy for a configured one.
pub fn policy(p: SecurityPolicy) -> UaPolicy {
    match p {
        SecurityPolicy::None => UaPolicy::None,
        SecurityPolicy::Basic256Sha256 => UaPolicy::Basic256Sha256,
        SecurityPolicy::Aes128Sha256RsaOaep => UaPolicy::Aes128Sha256RsaOaep,
    }
}

/// The library's message security mode for a configured one.
pub fn mode(m: SecurityMode) -> MessageSecurityMode {
    match m {
        SecurityMode::None => MessageSecurityMode::None,
        SecurityMode::Sign => MessageSecurityMode::Sign,
        SecurityMode::SignAndEncrypt => MessageSecurityMode::SignAndEncrypt,
    }
}

/// Devices of one adapter often share a PKI folder: the first creates the key pair, the
/// others must find it complete rather than write their own over it.
static PKI_LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Builds the client for the server at `endpoint`: creates the PKI folder (and the client's
/// certificate when it has none), adds the configured server certificates to the trust list
/// and resolves the identity (reading the password secret).
pub fn setup(
    endpoint: &str,
    timeout: Duration,
    settings: &OpcuaSettings,
    application_name: &str,
) -> Result<Setup, SetupError> {
    let _pki = PKI_LOCK
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let pki = &settings.pki_dir;
    for sub in ["trusted", "rejected", "own", "private"] {
        std::fs::create_dir_all(pki.join(sub)).map_err(|source| SetupError::Pki {
            path: pki.display().to_string(),
            source,
        })?;
    }
    for path in &settings.trusted_server_certificates {
        trust(pki, path)?;
    }
    let identity = identity(&settings.identity)?;
    // Creating a session with an encrypting policy signs and decrypts with RSA, which takes
    // a while on a small machine: a request gets at least a few seconds.
    let request_timeout = timeout.max(Duration::from_secs(5));
    let client = ClientBuilder::new()
        .application_name(application_name)
        .application_uri(&settings.application_uri)
        .product_uri("urn:fieldline")
        .create_sample_keypair(true)
        .pki_dir(pki)
        .trust_server_certs(settings.trust_unknown_servers)
        .verify_server_certs(true)
        // The driver reconnects itself with its own backoff and re-creates every
        // subscription on a fresh session, so the library makes one attempt only.
        .session_retry_limit(0)
        .request_timeout(request_timeout)
        .keep_alive_interval(Duration::from_secs(2))
        .max_failed_keep_alive_count(3)
        .session_timeout(60_000)
        .client()
        .map_err(|problems| SetupError::Client(problems.join("; ")))?;
    let endpoint: EndpointDescription = (
        endpoint,
        policy(settings.security_policy).to_uri(),
        mode(settings.security_mode),
        // The server's policy for the identity's token type is looked up when the session
        // is activated; matching the endpoint needs only URL, policy and mode.
        UserTokenPolicy::anonymous(),
    )
        .into();
    Ok(Setup {
        client,
        endpoint,
        identity,
    })
}

/// Adds the certificate at `path` to the trust list under `pki`, named the way the library
/// looks certificates up.
fn trust(pki: &Path, path: &Path) -> Result<(), SetupError> {
    let refused = |message: String| SetupError::TrustedCertificate {
        path: path.display().to_string(),
        message,
    };
    let cert = CertificateStore::read_cert(path).map_err(refused)?;
    let der = cert.to_der().map_err(|e| refused(format!("{e:?}")))?;
    let target = pki
        .join("trusted")
        .join(CertificateStore::cert_file_name(&cert));
    std::fs::write(&target, der).map_err(|source| SetupError::WriteTrusted {
        path: path.display().to_string(),
        target: target.display().to_string(),
        source,
    })
}

fn identity(identity: &Identity) -> Result<IdentityToken, SetupError> {
    Ok(match identity {
        Identity::Anonymous {} => IdentityToken::Anonymous,
        Identity::Username { username, password } => {
            let password = fieldline_runtime::secret::resolve(password)
                .map_err(|e| SetupError::Identity(e.to_string()))?;
            IdentityToken::new_user_name(username.clone(), password)
        }
        Identity::Certificate { cert, key } => IdentityToken::new_x509_path(cert, key)
            .map_err(|e| SetupError::Identity(e.to_string()))?,
    })
}
