//! Reading secrets (passwords, tokens) from where the line document points: an environment
//! variable or a file such as a mounted Kubernetes Secret. Errors name where they looked,
//! never the secret.

use fieldline_core::config::SecretRef;

/// Why a secret could not be read.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("{0}")]
    Reference(&'static str),
    #[error("environment variable {0} is not set or not UTF-8")]
    Env(String),
    #[error("cannot read secret file {path}: {source}")]
    File {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
}

/// Reads the secret `secret` refers to; a file's trailing newline is not part of it.
pub fn resolve(secret: &SecretRef) -> Result<String, SecretError> {
    if let Some(problem) = secret.problem() {
        return Err(SecretError::Reference(problem));
    }
    match (&secret.env, &secret.file) {
        (Some(var), _) => std::env::var(var).map_err(|_| SecretError::Env(var.clone())),
        (None, Some(path)) => std::fs::read_to_string(path)
            .map(|s| s.trim_end_matches(['\n', '\r']).to_string())
            .map_err(|source| SecretError::File {
                path: path.clone(),
                source,
            }),
        (None, None) => Err(SecretError::Reference("set env or file")),
    }
}

/// Whether `presented` is `expected`, in time that depends on their lengths only, so a
/// caller cannot find a token byte by byte from how long refusals take.
pub fn same_secret(presented: &[u8], expected: &[u8]) -> bool {
    if presented.len() != expected.len() {
        return false;
    }
    presented
        .iter()
        .zip(expected)
        .fold(0u8, |diff, (a, b)| diff | (a ^ b))
        == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_resolve_from_env_and_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("pw");
        std::fs::write(&file, "s3cret\n").unwrap();
        assert_eq!(resolve(&SecretRef::file(file)).unwrap(), "s3cret");
        let missing = resolve(&SecretRef::env("FIELDLINE_TEST_SURELY_UNSET")).unwrap_err();
        assert!(missing.to_string().contains("FIELDLINE_TEST_SURELY_UNSET"));
        let gone = resolve(&SecretRef::file("/nonexistent/pw")).unwrap_err();
        assert!(gone.to_string().contains("/nonexistent/pw"));
    }

    #[test]
    fn secrets_compare_whole() {
        assert!(same_secret(b"s3cret", b"s3cret"));
        assert!(!same_secret(b"s3cres", b"s3cret"));
        assert!(!same_secret(b"s3cre", b"s3cret"));
        assert!(!same_secret(b"", b"s3cret"));
    }
}
