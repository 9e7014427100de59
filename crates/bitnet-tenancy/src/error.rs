//! Errors of the tenancy layer.

use std::path::PathBuf;

/// Errors of the store, the limiter and the usage journal.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Connecting to the database failed.
    #[error("connecting to the database {url}: {source}")]
    Connect {
        /// The URL, with any password removed.
        url: String,
        /// The cause.
        source: sqlx::Error,
    },
    /// A database statement failed.
    #[error("database: {what}: {source}")]
    Db {
        /// What was being done.
        what: String,
        /// The cause.
        source: sqlx::Error,
    },
    /// A stored value does not parse.
    #[error("database: {what}: {detail}")]
    Corrupt {
        /// Which table/column.
        what: String,
        /// What is wrong.
        detail: String,
    },
    /// Redis failed.
    #[error("redis {what}: {source}")]
    Redis {
        /// What was being done.
        what: String,
        /// The cause.
        source: redis::RedisError,
    },
    /// The usage journal could not be read or written.
    #[error("usage journal {path}: {source}")]
    Journal {
        /// The journal file or folder.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// Bad input: the message names the field.
    #[error("{field}: {message}")]
    Invalid {
        /// The field or parameter.
        field: String,
        /// What is wrong.
        message: String,
    },
    /// No such tenant or key.
    #[error("{what} {id:?} not found")]
    NotFound {
        /// "tenant" or "key".
        what: &'static str,
        /// The id or name asked for.
        id: String,
    },
    /// A unique name is taken.
    #[error("{what} {id:?} already exists")]
    Conflict {
        /// "tenant".
        what: &'static str,
        /// The name.
        id: String,
    },
}

impl Error {
    /// An [`Error::Invalid`].
    pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        Error::Invalid {
            field: field.into(),
            message: message.into(),
        }
    }

    /// The row of `what` `id`, or [`Error::NotFound`].
    pub(crate) fn found<T>(row: Option<T>, what: &'static str, id: &str) -> Result<T> {
        row.ok_or_else(|| Error::NotFound {
            what,
            id: id.to_string(),
        })
    }

    pub(crate) fn db(what: impl Into<String>) -> impl FnOnce(sqlx::Error) -> Error {
        let what = what.into();
        move |source| Error::Db { what, source }
    }

    pub(crate) fn redis(what: impl Into<String>) -> impl FnOnce(redis::RedisError) -> Error {
        let what = what.into();
        move |source| Error::Redis { what, source }
    }
}

/// Result with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// `url` without its password (for messages and logs).
pub fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let userinfo = &url[s + 3..at];
            match userinfo.find(':') {
                Some(c) => format!("{}{}:***{}", &url[..s + 3], &userinfo[..c], &url[at..]),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
}
