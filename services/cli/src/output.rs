//! What the commands print: lines for people, or one JSON document per line (`--output
//! json`) for scripts. Printing stops quietly when the reader goes away (`fieldline watch |
//! head`): a broken pipe is the end of the output, not an error.

use std::io::Write;

/// How a command prints its data.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    /// Lines for people.
    #[default]
    Text,
    /// One JSON document per line.
    Json,
}

impl Output {
    /// Prints `text` or `json`, whichever this output is, as one line.
    pub fn emit(
        self,
        text: impl FnOnce() -> String,
        json: impl FnOnce() -> serde_json::Value,
    ) -> std::io::Result<()> {
        let line = match self {
            Output::Text => text(),
            Output::Json => json().to_string(),
        };
        let mut out = std::io::stdout().lock();
        writeln!(out, "{line}")?;
        out.flush()
    }
}

/// Prints `text` as it is.
pub fn print(text: &str) -> std::io::Result<()> {
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())?;
    out.flush()
}

/// Whether `error` is the reader of standard output having gone away.
pub fn is_broken_pipe(error: &anyhow::Error) -> bool {
    error.chain().any(|e| {
        e.downcast_ref::<std::io::Error>()
            .is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe)
    })
}
