//! The database: one sqlx `Any` pool over SQLite (default, a file in WAL mode) or PostgreSQL,
//! the same SQL and migrations for both.

use crate::error::{redact_url, Error, Result};
use sqlx::any::AnyPoolOptions;
use sqlx::Connection;
use sqlx::{AnyConnection, AnyPool};
use std::time::Duration;

/// Which database a [`Store`] talks to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// An embedded SQLite file.
    Sqlite,
    /// A PostgreSQL server.
    Postgres,
}

/// The migrations, in order: `(version, name, SQL)`.
const MIGRATIONS: &[(i64, &str, &str)] = &[
    (1, "init", include_str!("../migrations/0001_init.sql")),
    (
        2,
        "webhooks",
        include_str!("../migrations/0002_webhooks.sql"),
    ),
    (3, "batches", include_str!("../migrations/0003_batches.sql")),
    (
        4,
        "usage_subject",
        include_str!("../migrations/0004_usage_subject.sql"),
    ),
    (
        5,
        "file_expiry",
        include_str!("../migrations/0005_file_expiry.sql"),
    ),
    (
        6,
        "usage_subject_partial",
        include_str!("../migrations/0006_usage_subject_partial.sql"),
    ),
];

/// The tenancy database.
#[derive(Clone)]
pub struct Store {
    pub(crate) pool: AnyPool,
    backend: Backend,
}

/// A database URL from what a user typed: `postgres://…`, `sqlite://PATH` / `sqlite:PATH`,
/// or a bare file path (SQLite). SQLite files are created when missing.
pub fn normalize_url(url: &str) -> Result<(String, Backend)> {
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        return Ok((url.to_string(), Backend::Postgres));
    }
    let path = if let Some(p) = url.strip_prefix("sqlite://") {
        p
    } else if let Some(p) = url.strip_prefix("sqlite:") {
        p
    } else if url.contains("://") {
        return Err(Error::invalid(
            "database-url",
            format!(
                "unsupported database URL {}: use postgres://… or sqlite://PATH",
                redact_url(url)
            ),
        ));
    } else {
        url
    };
    if path.is_empty() {
        return Err(Error::invalid("database-url", "the SQLite path is empty"));
    }
    let (file, query) = match path.split_once('?') {
        Some((f, q)) => (f, Some(q)),
        None => (path, None),
    };
    if file != ":memory:" {
        if let Some(dir) = std::path::Path::new(file).parent() {
            if !dir.as_os_str().is_empty() && !dir.is_dir() {
                std::fs::create_dir_all(dir).map_err(|e| {
                    Error::invalid(
                        "database-url",
                        format!(
                            "creating the folder {} for the SQLite file: {e}",
                            dir.display()
                        ),
                    )
                })?;
            }
        }
    }
    let query = match query {
        Some(q) if q.contains("mode=") => q.to_string(),
        Some(q) => format!("{q}&mode=rwc"),
        None => "mode=rwc".to_string(),
    };
    Ok((format!("sqlite://{file}?{query}"), Backend::Sqlite))
}

impl Store {
    /// Connects and applies the migrations. `max_connections` bounds the pool.
    pub async fn connect(url: &str, max_connections: u32) -> Result<Store> {
        sqlx::any::install_default_drivers();
        let (url, backend) = normalize_url(url)?;
        let mut opts = AnyPoolOptions::new()
            .max_connections(max_connections.max(1))
            .acquire_timeout(Duration::from_secs(10));
        if backend == Backend::Sqlite {
            opts = opts.after_connect(|conn, _| {
                Box::pin(async move {
                    for pragma in [
                        "PRAGMA journal_mode = WAL",
                        "PRAGMA synchronous = NORMAL",
                        "PRAGMA busy_timeout = 10000",
                        "PRAGMA foreign_keys = ON",
                    ] {
                        sqlx::query(pragma).execute(&mut *conn).await?;
                    }
                    // The connection's worker thread now exists: below the request path.
                    crate::priority::lower_sqlite_workers();
                    Ok(())
                })
            });
        }
        // One plain connection first: a refused or misconfigured server fails at once, not
        // after the pool's acquire timeout.
        let probe = AnyConnection::connect(&url)
            .await
            .map_err(|source| Error::Connect {
                url: redact_url(&url),
                source,
            })?;
        let _ = probe.close().await;
        let pool = opts.connect(&url).await.map_err(|source| Error::Connect {
            url: redact_url(&url),
            source,
        })?;
        let store = Store { pool, backend };
        store.migrate().await?;
        Ok(store)
    }

    /// The pool (for queries this crate does not wrap).
    pub fn pool(&self) -> &AnyPool {
        &self.pool
    }

    /// The backend.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Applies the migrations not yet applied (PostgreSQL: under an advisory lock, so that
    /// replicas starting together do not race).
    async fn migrate(&self) -> Result<()> {
        let mut conn = self
            .pool
            .acquire()
            .await
            .map_err(Error::db("acquiring a connection for the migrations"))?;
        let conn: &mut AnyConnection = &mut conn;
        if self.backend == Backend::Postgres {
            sqlx::query("SELECT pg_advisory_lock(7266354301)")
                .execute(&mut *conn)
                .await
                .map_err(Error::db("taking the migration lock"))?;
        }
        let result = apply(conn).await;
        if self.backend == Backend::Postgres {
            sqlx::query("SELECT pg_advisory_unlock(7266354301)")
                .execute(&mut *conn)
                .await
                .map_err(Error::db("releasing the migration lock"))?;
        }
        result
    }

    /// Closes the pool.
    pub async fn close(&self) {
        self.pool.close().await;
    }
}

async fn apply(conn: &mut AnyConnection) -> Result<()> {
    sqlx::query(
        "CREATE TABLE IF NOT EXISTS schema_migrations \
         (version BIGINT PRIMARY KEY, name TEXT NOT NULL, applied_at BIGINT NOT NULL)",
    )
    .execute(&mut *conn)
    .await
    .map_err(Error::db("creating schema_migrations"))?;
    for &(version, name, sql) in MIGRATIONS {
        let done: Option<i64> =
            sqlx::query_scalar("SELECT version FROM schema_migrations WHERE version = $1")
                .bind(version)
                .fetch_optional(&mut *conn)
                .await
                .map_err(Error::db("reading schema_migrations"))?;
        if done.is_some() {
            continue;
        }
        let mut tx = conn
            .begin()
            .await
            .map_err(Error::db(format!("migration {version} ({name})")))?;
        // Comment lines out, then one statement per `;`.
        let code: String = sql
            .lines()
            .filter(|l| !l.trim_start().starts_with("--"))
            .map(|l| format!("{l}\n"))
            .collect();
        for stmt in code.split(';').map(str::trim).filter(|s| !s.is_empty()) {
            sqlx::query(sqlx::AssertSqlSafe(stmt.to_string()))
                .execute(&mut *tx)
                .await
                .map_err(Error::db(format!("migration {version} ({name})")))?;
        }
        sqlx::query(
            "INSERT INTO schema_migrations (version, name, applied_at) VALUES ($1, $2, $3)",
        )
        .bind(version)
        .bind(name)
        .bind(crate::now_ms())
        .execute(&mut *tx)
        .await
        .map_err(Error::db("recording a migration"))?;
        tx.commit().await.map_err(Error::db(format!(
            "committing migration {version} ({name})"
        )))?;
        tracing::info!("database migration {version} ({name}) applied");
    }
    Ok(())
}
