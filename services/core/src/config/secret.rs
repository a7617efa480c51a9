//! References to secrets (passwords, tokens) that never appear in the document itself.
//! Reading them is I/O and lives in `fieldline-runtime`.

use std::path::PathBuf;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SecretRef {
    /// Name of an environment variable that holds the secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env: Option<String>,
    /// Path of a file whose contents (trailing newline removed) are the secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<PathBuf>,
}

impl SecretRef {
    pub fn env(var: impl Into<String>) -> Self {
        Self {
            env: Some(var.into()),
            file: None,
        }
    }

    pub fn file(path: impl Into<PathBuf>) -> Self {
        Self {
            env: None,
            file: Some(path.into()),
        }
    }

    /// Why the reference is unusable, if it is.
    pub fn problem(&self) -> Option<&'static str> {
        match (&self.env, &self.file) {
            (Some(_), Some(_)) => Some("set either env or file, not both"),
            (None, None) => Some("set env (a variable name) or file (a path)"),
            _ => None,
        }
    }
}
