//! Databases for the tests: a fresh SQLite file, and a fresh PostgreSQL database on the
//! server at `BITNET_TEST_POSTGRES` (default `postgres://postgres@127.0.0.1:5432/test`),
//! dropped afterwards. Without a server the PostgreSQL cases are skipped with a message,
//! unless `BITNET_REQUIRE_SERVICES=1` (CI), where they fail.
#![allow(dead_code)]

use sqlx::Connection;

pub fn require_services() -> bool {
    std::env::var("BITNET_REQUIRE_SERVICES").is_ok_and(|v| v == "1")
}

pub fn postgres_admin_url() -> String {
    std::env::var("BITNET_TEST_POSTGRES")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

pub fn redis_url() -> String {
    std::env::var("BITNET_TEST_REDIS").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

/// A fresh PostgreSQL database: `(url, guard that drops it)`, or `None` (skipped).
pub async fn fresh_postgres() -> Option<(String, PgDrop)> {
    sqlx::any::install_default_drivers();
    let admin = postgres_admin_url();
    let mut conn = match sqlx::AnyConnection::connect(&admin).await {
        Ok(c) => c,
        Err(e) => {
            if require_services() {
                panic!("PostgreSQL at {admin} is required (BITNET_REQUIRE_SERVICES=1): {e}");
            }
            eprintln!("SKIPPED: PostgreSQL not reachable at {admin}: {e}");
            return None;
        }
    };
    let name = format!("bitnet_test_{}", uuid::Uuid::new_v4().simple());
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&mut conn)
        .await
        .expect("CREATE DATABASE");
    let base = admin.rsplit_once('/').map(|(b, _)| b).unwrap_or(&admin);
    Some((format!("{base}/{name}"), PgDrop { admin, name }))
}

/// Drops the test database.
pub struct PgDrop {
    admin: String,
    name: String,
}

impl PgDrop {
    pub async fn drop_now(self) {
        if let Ok(mut c) = sqlx::AnyConnection::connect(&self.admin).await {
            let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                self.name
            )))
            .execute(&mut c)
            .await;
        }
    }
}

/// Redis reachable? (skips with a message, or panics under BITNET_REQUIRE_SERVICES=1)
pub async fn redis_available() -> Option<String> {
    let url = redis_url();
    let ok = match redis::Client::open(url.as_str()) {
        Ok(c) => c.get_multiplexed_async_connection().await.is_ok(),
        Err(_) => false,
    };
    if ok {
        Some(url)
    } else if require_services() {
        panic!("Redis at {url} is required (BITNET_REQUIRE_SERVICES=1)");
    } else {
        eprintln!("SKIPPED: Redis not reachable at {url}");
        None
    }
}
