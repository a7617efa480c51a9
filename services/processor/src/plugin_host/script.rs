//! Rhai script plugins: a sandboxed engine per script, the script compiled once and swapped
//! when its file changes, and strict checking of what it returns.
//!
//! A script is run once per batch with two variables in scope:
//!
//! - `batch` (read-only): `#{ tags, quality, ts, device, line, sequence }`, where `tags` maps
//!   each tag of the batch (and each tag an earlier plugin derived) to its value, or `()` when
//!   the sample is Bad, and `quality` maps the same tags to `"good"`, `"uncertain:<reason>"` or
//!   `"bad:<reason>"`;
//! - `state`: a map that belongs to this script and this device and outlives the batch and any
//!   reload of the script.
//!
//! The script's value is a map from output tag to value (bool, integer, float or string; `()`
//! marks that output Bad), optionally with `events`: an array of `#{ kind, message, .. }`.
//! Returning `()` derives nothing for the batch. When a run fails, what it had already
//! changed in `state` is kept; every declared output of the batch is Bad.

use std::{
    fs,
    hash::{Hash, Hasher},
    path::{Path, PathBuf},
    sync::OnceLock,
    time::{Duration, Instant, SystemTime},
};

use fieldline_core::{
    Quality, Sample, SampleBatch, Value,
    plugin::{Context, EVENTS_KEY, ScriptPlugin as ScriptConfig},
};
use rhai::{
    AST, Array, Dynamic, Engine, EvalAltResult, ImmutableString, Map, Scope,
    packages::{Package, StandardPackage},
};

use super::{FailureKind, Failures, PluginStats};
use crate::{Error, Result};

const BATCH: &str = "batch";
const STATE: &str = "state";
/// Events one run may raise; more are refused, so a runaway script cannot flood the event log.
const MAX_EVENTS_PER_RUN: usize = 100;

/// The standard library every script gets: arithmetic, logic, strings, arrays, maps, maths
/// and time. It has no file, network or process access; built once and shared.
fn standard_library() -> rhai::Shared<rhai::Module> {
    static LIBRARY: OnceLock<rhai::Shared<rhai::Module>> = OnceLock::new();
    LIBRARY
        .get_or_init(|| StandardPackage::new().as_shared_module())
        .clone()
}

/// An engine that can only compute: no module loading, no `eval`, and limits on operations,
/// call depth, expression depth and the size of strings, arrays and maps.
fn sandbox(label: &str, max_operations: u64) -> Engine {
    // `new_raw` starts without the file module resolver and the stdout printer of
    // `Engine::new`; the standard library added back holds no I/O.
    let mut engine = Engine::new_raw();
    engine.register_global_module(standard_library());
    engine
        .set_max_operations(max_operations)
        .set_max_call_levels(32)
        .set_max_expr_depths(64, 32)
        .set_max_string_size(64 * 1024)
        .set_max_array_size(10_000)
        .set_max_map_size(10_000)
        .set_max_variables(1_000)
        .set_max_functions(256)
        .set_max_modules(0)
        .set_strict_variables(true);
    for symbol in ["eval", "import", "export"] {
        engine.disable_symbol(symbol);
    }
    let printer: std::sync::Arc<str> = label.into();
    let debugger = printer.clone();
    engine.on_print(move |text| tracing::debug!(plugin = %printer, "script print: {text}"));
    engine.on_debug(move |text, _, pos| {
        tracing::debug!(plugin = %debugger, position = %pos, "script debug: {text}");
    });
    engine
}

/// Compiles with `batch` and `state` known, so that strict variables catch a misspelt name at
/// load time. Both are plain variables here: as constants the optimiser would fold the
/// placeholder values into the script.
fn compile(engine: &Engine, source: &str) -> Result<AST, rhai::ParseError> {
    let mut scope = Scope::new();
    scope.push_dynamic(BATCH, Dynamic::from_map(Map::new()));
    scope.push_dynamic(STATE, Dynamic::from_map(Map::new()));
    engine.compile_with_scope(&scope, source)
}

fn content_hash(source: &str) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    source.hash(&mut h);
    h.finish()
}

/// What identifies one version of the script file without reading it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    modified: Option<SystemTime>,
    len: u64,
    /// The inode on Unix: a file replaced by rename (editors, mounted ConfigMaps) changes it
    /// even when time and length look the same.
    file_id: u64,
}

impl Stamp {
    fn of(path: &Path) -> std::io::Result<Stamp> {
        let meta = fs::metadata(path)?;
        Ok(Stamp {
            modified: meta.modified().ok(),
            len: meta.len(),
            file_id: file_id(&meta),
        })
    }
}

#[cfg(unix)]
fn file_id(meta: &fs::Metadata) -> u64 {
    use std::os::unix::fs::MetadataExt;
    meta.ino()
}

#[cfg(not(unix))]
fn file_id(_: &fs::Metadata) -> u64 {
    0
}

/// Notices changes of the script file. It is checked on use, from `apply`, at most once per
/// `every`: the swap then happens between two batches by construction, with no lock, channel
/// or background task, and a stat per second costs nothing next to the batches in between.
#[derive(Debug)]
struct Watch {
    every: Duration,
    next: Instant,
    loaded: Stamp,
    loaded_hash: u64,
    /// A new version seen once; it is taken when the next check sees it unchanged.
    pending: Option<Stamp>,
    /// A version that did not compile, so it is reported once rather than on every check.
    failed_hash: Option<u64>,
    unreadable_reported: bool,
}

/// One script plugin: its engine, the compiled script in service and the watch on its file.
pub(super) struct ScriptPlugin {
    label: String,
    path: PathBuf,
    outputs: Vec<String>,
    engine: Engine,
    ast: AST,
    watch: Watch,
}

impl ScriptPlugin {
    /// Reads and compiles the script at `path` (the configured path made absolute).
    pub(super) fn load(
        config: &ScriptConfig,
        label: &str,
        path: &Path,
        reload_check: Duration,
    ) -> Result<Self> {
        let read_error = |source: std::io::Error| Error::ScriptRead {
            path: path.to_path_buf(),
            source,
        };
        // Stamp before reading: a change in between is then seen by the first check.
        let stamp = Stamp::of(path).map_err(read_error)?;
        let source = fs::read_to_string(path).map_err(read_error)?;
        let engine = sandbox(label, config.max_operations());
        let ast = compile(&engine, &source).map_err(|source| Error::ScriptCompile {
            path: path.to_path_buf(),
            source,
        })?;
        Ok(Self {
            label: label.to_string(),
            path: path.to_path_buf(),
            outputs: config.outputs.clone(),
            engine,
            ast,
            watch: Watch {
                every: reload_check,
                next: Instant::now() + reload_check,
                loaded: stamp,
                loaded_hash: content_hash(&source),
                pending: None,
                failed_hash: None,
                unreadable_reported: false,
            },
        })
    }

    /// Takes a changed script into service when it is due for a check; returns what went
    /// wrong when the change could not be taken (the running version then stays).
    pub(super) fn check_reload(&mut self, now: Instant, stats: &mut PluginStats) -> Option<String> {
        let watch = &mut self.watch;
        if now < watch.next {
            return None;
        }
        watch.next = now + watch.every;
        let stamp = match Stamp::of(&self.path) {
            Ok(stamp) => stamp,
            Err(e) => {
                if std::mem::replace(&mut watch.unreadable_reported, true) {
                    return None;
                }
                let detail = format!(
                    "cannot read {}: {e}; the running version stays",
                    self.path.display()
                );
                tracing::error!(plugin = %self.label, error = %detail, "plugin script unreadable");
                return Some(detail);
            }
        };
        watch.unreadable_reported = false;
        if stamp == watch.loaded {
            watch.pending = None;
            return None;
        }
        if watch.pending != Some(stamp) {
            watch.pending = Some(stamp);
            return None;
        }
        watch.pending = None;
        watch.loaded = stamp;
        let source = match fs::read_to_string(&self.path) {
            Ok(source) => source,
            Err(e) => {
                let detail = format!(
                    "cannot read {}: {e}; the running version stays",
                    self.path.display()
                );
                tracing::error!(plugin = %self.label, error = %detail, "plugin script unreadable");
                return Some(detail);
            }
        };
        let hash = content_hash(&source);
        if hash == watch.loaded_hash || Some(hash) == watch.failed_hash {
            return None;
        }
        match compile(&self.engine, &source) {
            Ok(ast) => {
                self.ast = ast;
                watch.loaded_hash = hash;
                watch.failed_hash = None;
                stats.reloads += 1;
                tracing::info!(plugin = %self.label, path = %self.path.display(), "plugin script reloaded");
                None
            }
            Err(e) => {
                watch.failed_hash = Some(hash);
                let detail = format!("changed script does not compile: {e}");
                tracing::error!(
                    plugin = %self.label,
                    path = %self.path.display(),
                    error = %e,
                    "changed plugin script does not compile; the previous version keeps running"
                );
                Some(detail)
            }
        }
    }

    /// Runs the script on one batch for one device.
    pub(super) fn run(
        &self,
        shared: &mut Shared,
        view: &BatchView,
        state: &mut Dynamic,
        cx: &mut Context<'_>,
        failures: &mut Failures<'_>,
    ) {
        let scope = &mut shared.scope;
        scope.clear();
        scope.push_constant_dynamic(BATCH, view.map.clone());
        scope.push_dynamic(STATE, std::mem::take(state));
        let result = self.engine.eval_ast_with_scope::<Dynamic>(scope, &self.ast);
        // Drop the script's own `let`s so that `state` is the one pushed above.
        scope.rewind(2);
        if let Some(kept) = scope.get_mut(STATE) {
            *state = std::mem::take(kept);
        }
        scope.clear();
        match result {
            Err(e) => {
                let kind = match e.unwrap_inner() {
                    EvalAltResult::ErrorTooManyOperations(..)
                    | EvalAltResult::ErrorStackOverflow(..)
                    | EvalAltResult::ErrorDataTooLarge(..)
                    | EvalAltResult::ErrorTooManyVariables(..)
                    | EvalAltResult::ErrorTooManyModules(..)
                    | EvalAltResult::ErrorTerminated(..) => FailureKind::Limit,
                    _ => FailureKind::Script,
                };
                self.all_bad(cx, failures, kind, e.to_string());
            }
            Ok(value) => {
                let value = value.flatten();
                if value.is_unit() {
                    return;
                }
                if !value.is_map() {
                    let detail = format!(
                        "the script returned a {}, not a map of outputs",
                        value.type_name()
                    );
                    self.all_bad(cx, failures, FailureKind::Return, detail);
                    return;
                }
                if let Some(map) = value.try_cast::<Map>() {
                    self.take(map, cx, failures);
                }
            }
        }
    }

    fn all_bad(
        &self,
        cx: &mut Context<'_>,
        failures: &mut Failures<'_>,
        kind: FailureKind,
        detail: String,
    ) {
        for tag in &self.outputs {
            cx.bad(tag, detail.as_str());
        }
        failures.fail(kind, detail);
    }

    fn take(&self, map: Map, cx: &mut Context<'_>, failures: &mut Failures<'_>) {
        for (key, value) in map {
            if key == EVENTS_KEY {
                self.events(value, cx, failures);
                continue;
            }
            let Some(tag) = self.outputs.iter().find(|o| o.as_str() == key.as_str()) else {
                failures.fail(
                    FailureKind::UndeclaredOutput,
                    format!(
                        "the script returned {key:?}, which is not among its outputs {:?}; refused",
                        self.outputs
                    ),
                );
                continue;
            };
            match to_value(value) {
                Ok(Some(v)) => cx.good(tag, v),
                Ok(None) => cx.bad(tag, "the script gave () for it"),
                Err(problem) => {
                    let detail = format!("{tag}: {problem}");
                    cx.bad(tag, detail.as_str());
                    failures.fail(FailureKind::Return, detail);
                }
            }
        }
    }

    fn events(&self, value: Dynamic, cx: &mut Context<'_>, failures: &mut Failures<'_>) {
        let value = value.flatten();
        let type_name = value.type_name();
        let Some(events) = value.try_cast::<Array>() else {
            failures.fail(
                FailureKind::Event,
                format!("`events` is a {type_name}, not an array of maps"),
            );
            return;
        };
        if events.len() > MAX_EVENTS_PER_RUN {
            failures.fail(
                FailureKind::Event,
                format!(
                    "{} events in one run; the first {MAX_EVENTS_PER_RUN} are kept",
                    events.len()
                ),
            );
        }
        for (i, event) in events.into_iter().take(MAX_EVENTS_PER_RUN).enumerate() {
            match to_event(event) {
                Ok((kind, message, fields)) => cx.event(&kind, message, fields),
                Err(problem) => failures.fail(FailureKind::Event, format!("events[{i}] {problem}")),
            }
        }
    }
}

type EventParts = (String, String, Vec<(String, Value)>);

/// Why part of what a script returned was refused; the text goes into the failure's detail
/// (and the Bad sample of the output concerned).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
enum Refused {
    #[error("{0} is not a finite number")]
    NotFinite(f64),
    #[error("a {0} cannot be a tag value")]
    NotATagValue(&'static str),
    #[error("is a {0}, not a map with kind and message")]
    EventNotAMap(&'static str),
    #[error("has a {key} that is a {type_name}, not a string")]
    EventTextNotAString {
        key: String,
        type_name: &'static str,
    },
    #[error("field {key}: {source}")]
    EventField {
        key: String,
        #[source]
        source: Box<Refused>,
    },
    #[error("has an empty kind")]
    EventEmptyKind,
    #[error("needs both kind and message")]
    EventWithoutKindOrMessage,
}

fn to_event(event: Dynamic) -> Result<EventParts, Refused> {
    let event = event.flatten();
    let type_name = event.type_name();
    let Some(map) = event.try_cast::<Map>() else {
        return Err(Refused::EventNotAMap(type_name));
    };
    let mut kind = None;
    let mut message = None;
    let mut fields = Vec::new();
    for (key, value) in map {
        match key.as_str() {
            "kind" | "message" => {
                let text = value.into_immutable_string().map_err(|type_name| {
                    Refused::EventTextNotAString {
                        key: key.to_string(),
                        type_name,
                    }
                })?;
                if key == "kind" {
                    kind = Some(text.to_string());
                } else {
                    message = Some(text.to_string());
                }
            }
            _ => match to_value(value) {
                Ok(Some(v)) => fields.push((key.to_string(), v)),
                Ok(None) => {}
                Err(problem) => {
                    return Err(Refused::EventField {
                        key: key.to_string(),
                        source: Box::new(problem),
                    });
                }
            },
        }
    }
    match (kind, message) {
        (Some(kind), Some(message)) if !kind.is_empty() => Ok((kind, message, fields)),
        (Some(_), Some(_)) => Err(Refused::EventEmptyKind),
        _ => Err(Refused::EventWithoutKindOrMessage),
    }
}

/// A script value as a tag value; `None` for `()`.
fn to_value(value: Dynamic) -> Result<Option<Value>, Refused> {
    let value = value.flatten();
    if value.is_unit() {
        return Ok(None);
    }
    if let Ok(b) = value.as_bool() {
        return Ok(Some(Value::Bool(b)));
    }
    if let Ok(i) = value.as_int() {
        return Ok(Some(Value::I64(i)));
    }
    if let Ok(f) = value.as_float() {
        return if f.is_finite() {
            Ok(Some(Value::F64(f)))
        } else {
            Err(Refused::NotFinite(f))
        };
    }
    if let Ok(c) = value.as_char() {
        return Ok(Some(Value::String(c.to_string())));
    }
    let type_name = value.type_name();
    match value.into_immutable_string() {
        Ok(s) => Ok(Some(Value::String(s.to_string()))),
        Err(_) => Err(Refused::NotATagValue(type_name)),
    }
}

/// A tag value as a script value; `()` for a Bad sample.
fn to_dynamic(sample: &Sample) -> Dynamic {
    match (&sample.quality, &sample.value) {
        (Quality::Bad { .. }, _) | (_, None) => Dynamic::UNIT,
        (_, Some(Value::Bool(b))) => Dynamic::from_bool(*b),
        (_, Some(Value::I64(i))) => Dynamic::from_int(*i),
        // Scripts have 64-bit signed integers; a larger unsigned value becomes a float.
        (_, Some(Value::U64(u))) => match i64::try_from(*u) {
            Ok(i) => Dynamic::from_int(i),
            Err(_) => Dynamic::from_float(*u as f64),
        },
        (_, Some(Value::F64(f))) => Dynamic::from_float(*f),
        (_, Some(Value::String(s))) => Dynamic::from(ImmutableString::from(s.as_str())),
    }
}

/// The batch as scripts see it, built once per batch and shared by every script of the set.
pub(super) struct BatchView {
    map: Dynamic,
}

/// What the scripts of one plugin set share: the scope they run in (reused, so a run
/// allocates no scope) and the strings every batch repeats.
pub(super) struct Shared {
    scope: Scope<'static>,
    good: ImmutableString,
}

impl Shared {
    pub(super) fn new() -> Self {
        Self {
            scope: Scope::with_capacity(8),
            good: ImmutableString::from("good"),
        }
    }

    fn quality(&self, quality: &Quality) -> Dynamic {
        match quality {
            Quality::Good => Dynamic::from(self.good.clone()),
            other => Dynamic::from(ImmutableString::from(other.code())),
        }
    }

    pub(super) fn batch_view(&self, batch: &SampleBatch, ts: i64) -> BatchView {
        let mut tags = Map::new();
        let mut quality = Map::new();
        for sample in &batch.samples {
            tags.insert(sample.tag.as_str().into(), to_dynamic(sample));
            quality.insert(sample.tag.as_str().into(), self.quality(&sample.quality));
        }
        let mut map = Map::new();
        map.insert("tags".into(), Dynamic::from_map(tags));
        map.insert("quality".into(), Dynamic::from_map(quality));
        map.insert("ts".into(), Dynamic::from_int(ts));
        map.insert(
            "device".into(),
            Dynamic::from(ImmutableString::from(batch.device.as_str())),
        );
        map.insert(
            "line".into(),
            Dynamic::from(ImmutableString::from(batch.line.as_str())),
        );
        map.insert(
            "sequence".into(),
            Dynamic::from_int(i64::try_from(batch.sequence).unwrap_or(i64::MAX)),
        );
        BatchView {
            // Read-only inside the share: a shared value is constant only if what it holds is.
            map: Dynamic::from_map(map).into_read_only().into_shared(),
        }
    }

    /// Makes what a plugin derived visible to the scripts after it.
    pub(super) fn add_derived(&self, view: &mut BatchView, samples: &[Sample]) {
        if samples.is_empty() {
            return;
        }
        let Some(mut map) = view.map.write_lock::<Map>() else {
            return;
        };
        for (key, quality) in [("tags", false), ("quality", true)] {
            let Some(mut inner) = map.get_mut(key).and_then(|m| m.write_lock::<Map>()) else {
                continue;
            };
            for sample in samples {
                let value = if quality {
                    self.quality(&sample.quality)
                } else {
                    to_dynamic(sample)
                };
                inner.insert(sample.tag.as_str().into(), value);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn eval(source: &str) -> std::result::Result<Dynamic, String> {
        let engine = sandbox("test", 200_000);
        let ast = compile(&engine, source).map_err(|e| e.to_string())?;
        let mut scope = Scope::new();
        let mut tags = Map::new();
        tags.insert("t".into(), Dynamic::from_int(1));
        let mut batch = Map::new();
        batch.insert("tags".into(), Dynamic::from_map(tags));
        batch.insert("ts".into(), Dynamic::from_int(7));
        scope.push_constant_dynamic(
            BATCH,
            Dynamic::from_map(batch).into_read_only().into_shared(),
        );
        scope.push_dynamic(STATE, Dynamic::from_map(Map::new()));
        engine
            .eval_ast_with_scope::<Dynamic>(&mut scope, &ast)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn the_sandbox_refuses_eval_import_and_unknown_names() {
        for source in [
            r#"eval("1 + 1")"#,
            r#"import "os" as os; 1"#,
            "let x = 1; export x;",
            "nosuch + 1",
        ] {
            assert!(compile(&sandbox("t", 100), source).is_err(), "{source}");
        }
    }

    #[test]
    fn the_sandbox_stops_loops_deep_recursion_and_huge_data() {
        let e = eval("loop {}").unwrap_err();
        assert!(e.contains("Too many operations"), "{e}");
        let e = eval("fn f(n) { f(n + 1) } f(0)").unwrap_err();
        assert!(e.contains("Stack overflow"), "{e}");
        let e = eval(r#"let s = "x"; for i in 0..20 { s += s; } s"#).unwrap_err();
        assert!(e.contains("Length of string too large"), "{e}");
        let e = eval("let a = []; for i in 0..20000 { a.push(i); } a").unwrap_err();
        assert!(e.contains("Size of array/BLOB too large"), "{e}");
    }

    #[test]
    fn the_batch_is_read_only_but_copies_of_it_are_not() {
        for source in [
            "batch.ts = 1; 0",
            "batch.tags.t = 2; 0",
            "batch.tags.t += 2; 0",
            "batch.tags.clear(); 0",
            r#"batch.tags.remove("t"); 0"#,
            "batch = 3; 0",
        ] {
            let e = eval(source).unwrap_err();
            assert!(e.to_lowercase().contains("constant"), "{source}: {e}");
        }
        let copy = eval("let t = batch.tags; t.t += 1; t.t + batch.tags.t").unwrap();
        assert_eq!(copy.as_int(), Ok(3));
    }

    #[test]
    fn script_values_become_tag_values_or_say_why_not() {
        assert_eq!(to_value(Dynamic::from_int(3)), Ok(Some(Value::I64(3))));
        assert_eq!(
            to_value(Dynamic::from_float(0.5)),
            Ok(Some(Value::F64(0.5)))
        );
        assert_eq!(to_value(Dynamic::TRUE), Ok(Some(Value::Bool(true))));
        assert_eq!(
            to_value(Dynamic::from(ImmutableString::from("on"))),
            Ok(Some(Value::String("on".into())))
        );
        assert_eq!(to_value(Dynamic::UNIT), Ok(None));
        assert!(to_value(Dynamic::from_float(f64::INFINITY)).is_err());
        assert!(to_value(Dynamic::from_array(vec![])).is_err());
    }
}
