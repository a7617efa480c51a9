//! Reading a line document that may be wrong in many places at once, so `config check`
//! reports every problem in one pass: each with its path and line, and for a misspelt field
//! or value the nearest known one.
//!
//! serde stops at the first problem. So the document is read as plain YAML, and after each
//! problem the offending field is taken out (or, when the fault is a missing field, the
//! whole device set aside) and the document read again; whatever then parses is checked by
//! [`LineConfig::validate`] as well. A device is read whole before its `protocol` picks its
//! type, which hides the path inside it, so a device at fault is read again on its own.

use std::fmt;

use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_yaml::Value;

use super::{ConfigError, DeviceConfig, LineConfig};

/// One step of a path: a field of a map, or an element of a list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Segment {
    Key(String),
    Index(usize),
}

/// The segments of a path as serde_path_to_error and the checks write it:
/// `devices[0].tags[2].scale`.
pub(crate) fn segments(path: &str) -> Vec<Segment> {
    let mut out = Vec::new();
    for part in path.split('.').filter(|p| !p.is_empty()) {
        let (key, mut rest) = match part.find('[') {
            Some(i) => part.split_at(i),
            None => (part, ""),
        };
        if !key.is_empty() {
            out.push(Segment::Key(key.to_string()));
        }
        while let Some(close) = rest.find(']') {
            if let Ok(i) = rest[1..close].parse() {
                out.push(Segment::Index(i));
            }
            rest = &rest[close + 1..];
        }
    }
    out
}

fn format_path(segments: &[Segment]) -> String {
    let mut out = String::new();
    for s in segments {
        match s {
            Segment::Key(k) if out.is_empty() => out.push_str(k),
            Segment::Key(k) => {
                out.push('.');
                out.push_str(k);
            }
            Segment::Index(i) => out.push_str(&format!("[{i}]")),
        }
    }
    out
}

/// What to take out of a device so the rest of it can be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Repair {
    /// Drop the field at the path; its default stands in.
    RemoveField,
    /// Something it needs is missing: set the device aside.
    SetAside,
}

/// A problem found while reading one part of the document.
#[derive(Debug)]
pub(crate) struct ReadProblem {
    /// Relative to the part that was read.
    pub path: Vec<Segment>,
    pub message: String,
    pub repair: Repair,
}

impl ReadProblem {
    /// The first problem deserializing `value` as a `T` meets.
    pub(crate) fn first<T: serde::de::DeserializeOwned>(value: Value) -> Option<Self> {
        serde_path_to_error::deserialize::<_, T>(value)
            .err()
            .map(Self::from_error)
    }

    fn from_error(error: serde_path_to_error::Error<serde_yaml::Error>) -> Self {
        let path = segments(&error.path().to_string());
        let message = error.into_inner().to_string();
        let repair = match path.last() {
            _ if message.starts_with("missing field") => Repair::SetAside,
            Some(Segment::Key(_)) => Repair::RemoveField,
            _ => Repair::SetAside,
        };
        Self {
            path,
            message,
            repair,
        }
    }
}

/// Reads and checks `text`, returning the document or every problem found in it.
pub(crate) fn read(text: &str) -> Result<LineConfig, Vec<ConfigError>> {
    let mut doc: Value = serde_yaml::from_str(text).map_err(|e| vec![syntax_error(&e)])?;
    // Devices still in `doc`, by their index in the text.
    let mut kept: Vec<usize> = match doc.get("devices").and_then(Value::as_sequence) {
        Some(devices) => (0..devices.len()).collect(),
        None => Vec::new(),
    };
    let mut set_aside_types = Vec::new();
    let mut set_aside = 0;
    let mut problems = Vec::new();
    // Each round takes a field or a device out, so this ends; the bound is a backstop.
    let mut rounds = 0;
    let config = loop {
        let error = match serde_path_to_error::deserialize::<_, LineConfig>(doc.clone()) {
            Ok(config) => break config,
            Err(error) => error,
        };
        rounds += 1;
        let mut problem = ReadProblem::from_error(error);
        let device = match problem.path.as_slice() {
            [Segment::Key(k), Segment::Index(j), ..] if k == "devices" => Some(*j),
            _ => None,
        };
        if let Some(j) = device {
            if problem.path.len() == 2
                && let Some(inner) =
                    device_at(&doc, j).and_then(|d| DeviceConfig::parse_problem(d.clone()))
            {
                problem.message = inner.message;
                problem.repair = inner.repair;
                problem.path.extend(inner.path);
            }
            if problem.path.get(2) == Some(&Segment::Key("protocol".into())) {
                // Without a known protocol nothing else in the device can be read.
                problem.repair = Repair::SetAside;
            }
        }
        let mut reported = problem.path.clone();
        if let Some(original) = device.and_then(|j| kept.get(j)) {
            reported[1] = Segment::Index(*original);
        }
        problems.push(ConfigError {
            path: format_path(&reported),
            message: with_suggestion(&problem.message),
            line: None,
        });
        let repaired = match (device, problem.repair) {
            (Some(j), Repair::SetAside) => {
                set_aside_types.extend(
                    device_at(&doc, j)
                        .and_then(|d| d.get("type"))
                        .and_then(Value::as_str)
                        .map(str::to_string),
                );
                if j < kept.len() {
                    kept.remove(j);
                }
                set_aside += 1;
                remove(&mut doc, &problem.path[..2])
            }
            (_, Repair::RemoveField) => remove(&mut doc, &problem.path),
            (None, Repair::SetAside) => false,
        };
        if !repaired || rounds >= 1000 {
            return Err(located(text, problems));
        }
    };
    if let Err(found) = config.validate() {
        for mut e in found {
            // Checks of the device list and of a device type need the devices that could
            // not be read; their problems are already reported.
            let needs_set_aside = (set_aside > 0 && e.path == "devices")
                || set_aside_types
                    .iter()
                    .any(|t| e.path.starts_with(&format!("device_types.{t}")));
            if needs_set_aside {
                continue;
            }
            e.path = renumber(&e.path, &kept);
            e.message = renumber(&e.message, &kept);
            problems.push(e);
        }
    }
    if problems.is_empty() {
        Ok(config)
    } else {
        Err(located(text, problems))
    }
}

fn device_at(doc: &Value, j: usize) -> Option<&Value> {
    doc.get("devices")?.as_sequence()?.get(j)
}

/// Takes the node at `path` out of `doc`; false when there is none.
fn remove(doc: &mut Value, path: &[Segment]) -> bool {
    let Some((last, parents)) = path.split_last() else {
        return false;
    };
    let mut node = doc;
    for s in parents {
        let next = match s {
            Segment::Key(k) => node.get_mut(k.as_str()),
            Segment::Index(i) => node.get_mut(*i),
        };
        match next {
            Some(n) => node = n,
            None => return false,
        }
    }
    match (last, node) {
        (Segment::Key(k), Value::Mapping(m)) => m.remove(k.as_str()).is_some(),
        (Segment::Index(i), Value::Sequence(s)) if *i < s.len() => {
            s.remove(*i);
            true
        }
        _ => false,
    }
}

/// `devices[j]` in a path or message of the devices still read, as the index in the text.
fn renumber(text: &str, kept: &[usize]) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find("devices[") {
        let (before, after) = rest.split_at(at + "devices[".len());
        out.push_str(before);
        let digits = after.bytes().take_while(u8::is_ascii_digit).count();
        match after[..digits]
            .parse::<usize>()
            .ok()
            .and_then(|j| kept.get(j))
        {
            Some(original) => out.push_str(&original.to_string()),
            None => out.push_str(&after[..digits]),
        }
        rest = &after[digits..];
    }
    out.push_str(rest);
    out
}

fn syntax_error(e: &serde_yaml::Error) -> ConfigError {
    let message = e.to_string();
    // serde_yaml prefixes a path when it has one ("devices: invalid type ...").
    let (path, message) = match message.split_once(": ") {
        Some((path, rest)) if !path.contains(' ') => (path.to_string(), rest.to_string()),
        _ => (String::new(), message),
    };
    ConfigError {
        path,
        message,
        line: e.location().map(|l| l.line()),
    }
}

/// `problems` with their lines, in the order of the document.
fn located(text: &str, mut problems: Vec<ConfigError>) -> Vec<ConfigError> {
    for p in &mut problems {
        if p.line.is_none() {
            p.line = line_of(text, &segments(&p.path));
        }
    }
    problems.sort_by_key(|p| p.line);
    problems
}

/// The line of the node at `path` in `text` (1-based), or of the nearest enclosing node
/// that exists. serde_yaml marks an error with the position of the node being read when it
/// arises, so a seed walks down the path and fails on arrival.
pub(crate) fn line_of(text: &str, path: &[Segment]) -> Option<usize> {
    let de = serde_yaml::Deserializer::from_str(text);
    match (Locate { path }).deserialize(de) {
        Ok(()) => None,
        Err(e) => e.location().map(|l| l.line()),
    }
}

struct Locate<'p> {
    path: &'p [Segment],
}

impl<'de> DeserializeSeed<'de> for Locate<'_> {
    type Value = ();

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Locate<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("the located node")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        if let Some((Segment::Key(key), rest)) = self.path.split_first() {
            while let Some(k) = map.next_key::<Value>()? {
                if k.as_str() == Some(key) {
                    return map.next_value_seed(Locate { path: rest });
                }
                map.next_value::<IgnoredAny>()?;
            }
        }
        Err(de::Error::custom("here"))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        if let Some((Segment::Index(index), rest)) = self.path.split_first() {
            for _ in 0..*index {
                if seq.next_element::<IgnoredAny>()?.is_none() {
                    return Err(de::Error::custom("here"));
                }
            }
            if seq.next_element_seed(Locate { path: rest })?.is_some() {
                return Ok(());
            }
        }
        Err(de::Error::custom("here"))
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<(), E> {
        Err(E::custom("here"))
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<(), E> {
        Err(E::custom("here"))
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<(), E> {
        Err(E::custom("here"))
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<(), E> {
        Err(E::custom("here"))
    }
    fn visit_str<E: de::Error>(self, _: &str) -> Result<(), E> {
        Err(E::custom("here"))
    }
    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        Err(E::custom("here"))
    }
}

/// `message` with the nearest known name added when it names an unknown field or variant.
fn with_suggestion(message: &str) -> String {
    let Some(rest) = message
        .strip_prefix("unknown field `")
        .or_else(|| message.strip_prefix("unknown variant `"))
    else {
        return message.to_string();
    };
    let Some((given, known)) = rest.split_once('`') else {
        return message.to_string();
    };
    let nearest = known
        .split('`')
        .skip(1)
        .step_by(2)
        .map(|name| (strsim::levenshtein(given, name), name))
        .filter(|(distance, name)| *distance <= 2.max(name.len() / 3))
        .min();
    match nearest {
        Some((_, name)) => {
            let what = message.split('`').next().unwrap_or("unknown ");
            format!("{what}`{given}`; did you mean `{name}`?")
        }
        None => message.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_split_into_keys_and_indices() {
        assert_eq!(
            segments("devices[0].tags[12].scale"),
            [
                Segment::Key("devices".into()),
                Segment::Index(0),
                Segment::Key("tags".into()),
                Segment::Index(12),
                Segment::Key("scale".into()),
            ]
        );
        assert_eq!(
            format_path(&segments("devices[0].tags[12].scale")),
            "devices[0].tags[12].scale"
        );
        assert!(segments(".").is_empty());
    }

    #[test]
    fn lines_are_found_by_path() {
        let text = "line: l\ndevices:\n  - name: a\n    tags:\n      - name: x\n        scale: 2\n";
        assert_eq!(line_of(text, &segments("line")), Some(1));
        assert_eq!(
            line_of(text, &segments("devices[0].tags[0].scale")),
            Some(6)
        );
        // A field that is not there: the nearest node that is.
        assert_eq!(line_of(text, &segments("devices[0].tags[0].unit")), Some(5));
    }

    #[test]
    fn misspelt_names_get_the_nearest_known_one() {
        assert_eq!(
            with_suggestion(
                "unknown field `pol_interval`, expected one of `name`, `poll_interval`, `tags`"
            ),
            "unknown field `pol_interval`; did you mean `poll_interval`?"
        );
        assert!(
            with_suggestion("unknown variant `modbus-tpc`, expected one of `modbus-tcp`, `opcua`")
                .ends_with("did you mean `modbus-tcp`?")
        );
        let far = "unknown field `colour`, expected `name` or `tags`";
        assert_eq!(with_suggestion(far), far);
    }

    #[test]
    fn devices_set_aside_keep_their_numbers() {
        assert_eq!(
            renumber("devices[1].name: is already devices[0]", &[0, 2]),
            "devices[2].name: is already devices[0]"
        );
    }
}
