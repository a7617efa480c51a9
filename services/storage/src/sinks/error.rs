//! How a sink write, connection or lookup failed. Each error keeps what caused it (the HTTP
//! client's or the database driver's error, the server's status and message) and says what
//! the caller does about it through [`SinkError::disposition`]: retry, refuse the data for
//! good, or stop because the settings can never work. [`SinkError::kind`] is its label in
//! `fieldline_storage_errors_total{sink, kind}`.

use std::time::Duration;

use reqwest::StatusCode;

/// What the caller does about a failed sink operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Disposition {
    /// The backend is down or busy; the same write may succeed later.
    Transient,
    /// The backend refused the data itself; retrying cannot help.
    Permanent,
    /// The sink is misconfigured.
    Config,
}

/// An error that storage passes on as it came, from code that reports it in its own type or
/// as text (a secret reference, the InfluxDB target, a stored quality code).
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// How a sink operation failed.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    // Configuration: the settings can never work.
    /// A setting (a secret, the InfluxDB target) is unusable.
    #[error("{setting}: {source}")]
    Setting {
        setting: &'static str,
        source: BoxError,
    },
    /// The HTTP client cannot be built from the settings.
    #[error("cannot build the InfluxDB client: {0}")]
    Client(#[source] reqwest::Error),
    /// The server refused the credentials (HTTP 401 or 403).
    #[error(
        "{target} refused to let Fieldline {action} (HTTP {status}: {message}); check {settings}"
    )]
    CredentialsRefused {
        /// Where the sink writes.
        target: String,
        /// What was refused: "write", "answer /ping", "create the database".
        action: &'static str,
        status: StatusCode,
        /// The server's explanation.
        message: String,
        /// Which settings hold the credentials.
        settings: &'static str,
    },
    /// `storage.sql.url` is not a URL sqlx can connect to.
    #[error("storage.sql.url: {0}")]
    SqlUrl(#[source] sqlx::Error),
    /// `storage.sql.url` names no supported database.
    #[error("storage.sql.url {url:?} must start with mysql://, mariadb:// or sqlite:")]
    SqlScheme {
        /// The URL, with any password masked.
        url: String,
    },
    /// A password is configured for a URL without a user.
    #[error("storage.sql.url needs a user (user@host) when a password is set")]
    SqlUser,

    // Transient: the same operation may succeed later.
    /// The InfluxDB server cannot be reached (connection refused, timeout, reset).
    #[error("InfluxDB at {base} unreachable: {source}")]
    Unreachable {
        base: String,
        source: reqwest::Error,
    },
    /// `CREATE DATABASE` answered an HTTP error.
    #[error("creating database {database:?} at {base}: HTTP {status}: {message}")]
    CreateDatabase {
        database: String,
        base: String,
        status: StatusCode,
        message: String,
    },
    /// `/ping` answered an HTTP error.
    #[error("{base}/ping answered HTTP {status}: {message}")]
    Ping {
        base: String,
        status: StatusCode,
        message: String,
    },
    /// The database or bucket, or the write API itself, is not there (HTTP 404).
    #[error("{target}: HTTP 404: {message}{hint}")]
    NotFound {
        target: String,
        message: String,
        /// Which API was expected at the URL, when the server has no such page.
        hint: &'static str,
    },
    /// The server asked to be left alone for a while (HTTP 429 or 503).
    #[error("{target} is busy (HTTP {status}{}): {message}", waited_note(*.waited))]
    Busy {
        target: String,
        status: StatusCode,
        /// How long the sink held the write back, as the server asked.
        waited: Option<Duration>,
        message: String,
    },
    /// Any other HTTP error answer.
    #[error("{target} answered HTTP {status}: {message}")]
    Status {
        target: String,
        status: StatusCode,
        message: String,
    },
    /// The write body could not be compressed.
    #[error("gzip: {0}")]
    Gzip(#[source] std::io::Error),
    /// The database server cannot be reached.
    #[error("cannot connect to {url}: {source}")]
    Connect {
        /// The URL, with any password masked.
        url: String,
        source: sqlx::Error,
    },
    /// The migrations could not be applied.
    #[error("migrating the database: {0}")]
    Migrate(#[source] sqlx::migrate::MigrateError),
    /// The database is busy (lock wait, deadlock, too many connections, disk full).
    #[error("database busy: {0}")]
    DatabaseBusy(#[source] sqlx::Error),
    /// The connection to the database failed (lost, pool exhausted, server gone).
    #[error("database unavailable: {0}")]
    DatabaseUnavailable(#[source] sqlx::Error),

    // Permanent: the data itself is refused.
    /// The database refused the statement for its data.
    #[error("database refused the write: {0}")]
    DatabaseRefused(#[source] sqlx::Error),
    /// A row was checked before writing and refused: a name too long, a number not finite.
    #[error("{place}: {problem}")]
    Invalid {
        /// Which row of the write, e.g. `alarm event 3 ("line-1", alarm "tank-hi", seq 7)`.
        place: String,
        problem: String,
    },
    /// A stored column could not be read as its type.
    #[error("reading {table}.{column}: {source}")]
    Column {
        table: String,
        column: String,
        source: sqlx::Error,
    },
    /// A stored column holds something its row type cannot represent.
    #[error("reading {table}.{column}: {problem}")]
    Unreadable {
        table: String,
        column: String,
        problem: String,
    },
}

fn waited_note(waited: Option<Duration>) -> String {
    waited
        .map(|w| format!(", waited {w:?} as asked"))
        .unwrap_or_default()
}

impl SinkError {
    /// Whether to retry, refuse the data, or give up on the settings.
    pub fn disposition(&self) -> Disposition {
        match self {
            SinkError::Setting { .. }
            | SinkError::Client(_)
            | SinkError::CredentialsRefused { .. }
            | SinkError::SqlUrl(_)
            | SinkError::SqlScheme { .. }
            | SinkError::SqlUser => Disposition::Config,
            SinkError::Unreachable { .. }
            | SinkError::CreateDatabase { .. }
            | SinkError::Ping { .. }
            | SinkError::NotFound { .. }
            | SinkError::Busy { .. }
            | SinkError::Status { .. }
            | SinkError::Gzip(_)
            | SinkError::Connect { .. }
            | SinkError::Migrate(_)
            | SinkError::DatabaseBusy(_)
            | SinkError::DatabaseUnavailable(_) => Disposition::Transient,
            SinkError::DatabaseRefused(_)
            | SinkError::Invalid { .. }
            | SinkError::Column { .. }
            | SinkError::Unreadable { .. } => Disposition::Permanent,
        }
    }

    /// True when the same operation may succeed later.
    pub fn is_transient(&self) -> bool {
        self.disposition() == Disposition::Transient
    }

    /// The `kind` label of this error in `errors_total`.
    pub fn kind(&self) -> &'static str {
        match self {
            SinkError::Setting { .. } => "setting",
            SinkError::Client(_) => "client",
            SinkError::CredentialsRefused { .. } => "credentials",
            SinkError::SqlUrl(_) | SinkError::SqlScheme { .. } | SinkError::SqlUser => "sql_url",
            SinkError::Unreachable { .. } => "unreachable",
            SinkError::CreateDatabase { .. } => "create_database",
            SinkError::Ping { .. } => "ping",
            SinkError::NotFound { .. } => "not_found",
            SinkError::Busy { .. } => "busy",
            SinkError::Status { .. } => "http_status",
            SinkError::Gzip(_) => "gzip",
            SinkError::Connect { .. } => "db_connect",
            SinkError::Migrate(_) => "db_migrate",
            SinkError::DatabaseBusy(_) => "db_busy",
            SinkError::DatabaseUnavailable(_) => "db_unavailable",
            SinkError::DatabaseRefused(_) => "db_refused",
            SinkError::Invalid { .. } => "invalid_row",
            SinkError::Column { .. } | SinkError::Unreadable { .. } => "unreadable_row",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_name_the_target_and_kinds_are_distinct() {
        let busy = SinkError::Busy {
            target: "bucket \"b\"".into(),
            status: StatusCode::TOO_MANY_REQUESTS,
            waited: Some(Duration::from_secs(2)),
            message: "slow down".into(),
        };
        assert_eq!(
            busy.to_string(),
            "bucket \"b\" is busy (HTTP 429 Too Many Requests, waited 2s as asked): slow down"
        );
        assert_eq!(busy.disposition(), Disposition::Transient);
        let not_found = SinkError::NotFound {
            target: "t".into(),
            message: "404 page not found".into(),
            hint: " (no InfluxDB v1 write API at this URL)",
        };
        assert_eq!(
            not_found.to_string(),
            "t: HTTP 404: 404 page not found (no InfluxDB v1 write API at this URL)"
        );
        let setting = SinkError::Setting {
            setting: "storage.influx.token",
            source: "environment variable T is not set or not UTF-8".into(),
        };
        assert_eq!(
            setting.to_string(),
            "storage.influx.token: environment variable T is not set or not UTF-8"
        );
        assert_eq!(setting.disposition(), Disposition::Config);
        assert!(std::error::Error::source(&setting).is_some());
        assert_ne!(busy.kind(), not_found.kind());
    }
}
