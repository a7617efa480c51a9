//! Names of lines, devices and tags, and the tag path that joins them.

use std::fmt;

/// Why a name is not acceptable.
pub fn name_problem(name: &str) -> Option<String> {
    if name.is_empty() {
        return Some("must not be empty".into());
    }
    if name.len() > 63 {
        return Some(format!(
            "is {} characters long, at most 63 are allowed",
            name.len()
        ));
    }
    if let Some(bad) = name
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_' || *c == '-'))
    {
        return Some(format!(
            "{name:?} contains {bad:?}; names use only a-z, 0-9, '_' and '-'"
        ));
    }
    None
}

/// `{line}/{device}/{tag}`, the address of a tag across the whole plant.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TagPath {
    pub line: String,
    pub device: String,
    pub tag: String,
}

impl TagPath {
    pub fn new(line: impl Into<String>, device: impl Into<String>, tag: impl Into<String>) -> Self {
        Self {
            line: line.into(),
            device: device.into(),
            tag: tag.into(),
        }
    }

    /// Parses `line/device/tag`, checking each name.
    pub fn parse(path: &str) -> crate::Result<Self> {
        let parts: Vec<&str> = path.split('/').collect();
        let [line, device, tag] = parts.as_slice() else {
            return Err(crate::Error::Parse(format!(
                "tag path {path:?} is not of the form line/device/tag"
            )));
        };
        for (what, name) in [("line", line), ("device", device), ("tag", tag)] {
            if let Some(problem) = name_problem(name) {
                return Err(crate::Error::Parse(format!(
                    "tag path {path:?}: {what} name {problem}"
                )));
            }
        }
        Ok(Self::new(*line, *device, *tag))
    }
}

impl fmt::Display for TagPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}/{}", self.line, self.device, self.tag)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_plant_style_names() {
        for ok in ["packaging-1", "filler", "tank_2", "a"] {
            assert_eq!(name_problem(ok), None, "{ok}");
        }
    }

    #[test]
    fn rejects_what_would_break_topics_or_paths() {
        for bad in [
            "",
            "Filler",
            "a/b",
            "a b",
            "+",
            "#",
            "temp.c",
            &"x".repeat(64),
        ] {
            assert!(name_problem(bad).is_some(), "{bad:?} should be rejected");
        }
    }

    #[test]
    fn tag_path_round_trips() {
        let p = TagPath::parse("packaging-1/filler/temperature").unwrap();
        assert_eq!(p, TagPath::new("packaging-1", "filler", "temperature"));
        assert_eq!(p.to_string(), "packaging-1/filler/temperature");
        assert!(TagPath::parse("a/b").is_err());
        assert!(TagPath::parse("a/B/c").is_err());
    }
}
