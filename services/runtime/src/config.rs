//! Reading the line document a service runs: the file, then every problem in it at once.

use std::path::Path;

use fieldline_core::config::{ConfigErrors, LineConfig};

/// Reads and validates the line document at `path`. Relative paths in it (plugin scripts)
/// are taken from the file's folder.
pub fn load(path: &Path) -> Result<LineConfig, ConfigErrors> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| ConfigErrors::one("", format!("cannot read {}: {e}", path.display())))?;
    let mut config = LineConfig::from_yaml(&text)?;
    config.base_dir = path.parent().map(Path::to_path_buf);
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_file_is_one_problem_naming_it() {
        let errors = load(Path::new("/nonexistent/line.yaml")).unwrap_err();
        assert_eq!(errors.0.len(), 1);
        assert!(
            errors.0[0]
                .message
                .starts_with("cannot read /nonexistent/line.yaml"),
            "{errors}"
        );
    }

    #[test]
    fn plugin_paths_start_at_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("line.yaml");
        std::fs::write(
            &path,
            "line: l\ndevices:\n  - { name: d, type: t, protocol: modbus-tcp, endpoint: \"127.0.0.1:502\", tags: [ { name: a, address: \"holding:0\", type: u16 } ] }\n",
        )
        .unwrap();
        assert_eq!(load(&path).unwrap().base_dir.as_deref(), Some(dir.path()));
    }
}
