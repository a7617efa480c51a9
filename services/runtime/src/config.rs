//! Loading the line document for a service, with every problem reported at once.

use std::path::Path;

use fieldline_core::config::LineConfig;

/// Reads and validates the line document at `path`.
pub fn load(path: &Path) -> crate::Result<LineConfig> {
    Ok(LineConfig::load(path)?)
}
