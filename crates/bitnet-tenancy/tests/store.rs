//! Keys, tenants, audit and usage on SQLite and on PostgreSQL (the same code).

mod common;

use bitnet_tenancy::keys::{hash_secret, SECRET_PREFIX};
use bitnet_tenancy::{Backend, KeyUpdate, NewKey, Period, Role, Store, UsageFilter, UsageRecord};

fn row(id: &str, key: &str, tenant: &str, ts: i64, p: i64, c: i64) -> UsageRecord {
    UsageRecord {
        request_id: id.into(),
        ts_ms: ts,
        tenant_id: tenant.into(),
        key_id: key.into(),
        model: "m,odel".into(),
        prompt_tokens: p,
        completion_tokens: c,
        ttft_ms: Some(5),
        duration_ms: 20,
        status: 200,
        finish_reason: "stop".into(),
        subject: None,
    }
}

async fn exercise(store: &Store) {
    // Tenants.
    let t = store.create_tenant("cli:test", "acme", None).await.unwrap();
    assert!(t.id.starts_with("ten_"));
    let e = store
        .create_tenant("cli:test", "acme", None)
        .await
        .unwrap_err();
    assert!(e.to_string().contains("already exists"), "{e}");
    assert_eq!(store.tenant("acme").await.unwrap(), t);
    assert_eq!(store.tenant(&t.id).await.unwrap(), t);
    assert!(store
        .tenant("nope")
        .await
        .unwrap_err()
        .to_string()
        .contains("not found"));

    // Keys: the secret is returned once and only its hash is stored.
    let (k, secret) = store
        .create_key(
            "cli:test",
            &NewKey {
                tenant: "acme".into(),
                role: Some(Role::User),
                models: vec!["tiny".into()],
                rpm: Some(10),
                budget_tokens: Some(1000),
                budget_period: Some(Period::Daily),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert!(secret.starts_with(SECRET_PREFIX) && secret.len() == SECRET_PREFIX.len() + 43);
    assert!(secret.starts_with(&k.prefix));
    let found = store.key_by_secret(&secret).await.unwrap().unwrap();
    assert_eq!(found, k);
    assert!(store
        .key_by_secret(&(secret.clone() + "x"))
        .await
        .unwrap()
        .is_none());
    assert!(k.allows_model("tiny") && !k.allows_model("other"));
    let bad = store
        .create_key(
            "cli:test",
            &NewKey {
                tenant: "acme".into(),
                rpm: Some(-1),
                ..Default::default()
            },
        )
        .await
        .unwrap_err();
    assert!(bad.to_string().starts_with("rpm:"), "{bad}");

    // Update, block, rotate, delete — each audited with before and after.
    let k2 = store
        .update_key(
            "key:admin",
            &k.id,
            &KeyUpdate {
                rpm: Some(None),
                tpm: Some(Some(500)),
                blocked: Some(true),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!((k2.rpm, k2.tpm, k2.blocked), (None, Some(500), true));
    assert_eq!(
        k2.unusable(bitnet_tenancy::now_ms()),
        Some("This API key is blocked")
    );
    let k3 = store
        .update_key(
            "key:admin",
            &k.id,
            &KeyUpdate {
                blocked: Some(false),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let (new, new_secret) = store.rotate_key("key:admin", &k.id, 60_000).await.unwrap();
    assert_ne!(new_secret, secret);
    assert_eq!(new.tpm, Some(500));
    let old = store.key_by_secret(&secret).await.unwrap().unwrap();
    assert_eq!(old.rotated_to.as_deref(), Some(new.id.as_str()));
    assert!(
        old.unusable(bitnet_tenancy::now_ms()).is_none(),
        "usable during the grace"
    );
    assert!(old.unusable(bitnet_tenancy::now_ms() + 61_000).is_some());
    assert!(store.rotate_key("key:admin", &k.id, 0).await.is_err());
    store.delete_key("key:admin", &new.id).await.unwrap();
    assert!(store.key_by_secret(&new_secret).await.unwrap().is_none());
    let audit = store.audit_log(100).await.unwrap();
    let actions: Vec<&str> = audit.iter().rev().map(|a| a.action.as_str()).collect();
    assert_eq!(
        actions,
        [
            "tenant.create",
            "key.create",
            "key.block",
            "key.unblock",
            "key.rotate",
            "key.create",
            "key.delete"
        ]
    );
    let block = audit.iter().find(|a| a.action == "key.block").unwrap();
    assert_eq!(block.actor, "key:admin");
    assert_eq!(block.before.as_ref().unwrap()["blocked"], false);
    assert_eq!(block.after.as_ref().unwrap()["blocked"], true);
    assert_eq!(block.after.as_ref().unwrap()["tpm"], 500);
    let _ = k3;

    // Nothing anywhere holds a secret in clear.
    let dump: Vec<String> = sqlx::query_scalar("SELECT secret_hash FROM api_keys")
        .fetch_all(&sqlx::AnyPool::clone(&pool_of(store)))
        .await
        .unwrap();
    assert!(dump.contains(&hash_secret(&secret)));
    for a in &audit {
        let s = format!("{:?}{:?}", a.before, a.after);
        assert!(!s.contains(&secret) && !s.contains(&new_secret));
    }

    // Usage: inserts skip repeats; aggregates count each request once.
    let day = 20_000 * 86_400_000i64; // 2024-10-04
    let mut rows = vec![
        row("r1", &k.id, &t.id, day + 1000, 10, 5),
        row("r2", &k.id, &t.id, day + 2000, 7, 3),
        row("r3", "key_other", &t.id, day + 86_400_000, 1, 1),
    ];
    // An SSO caller's row names the subject (the key is the tenant's shared policy key).
    rows[1].subject = Some("oidc:alice".into());
    assert_eq!(store.insert_usage(&rows).await.unwrap(), 3);
    assert_eq!(
        store.insert_usage(&rows).await.unwrap(),
        0,
        "replay is idempotent"
    );
    let all = store.usage(&UsageFilter::default()).await.unwrap();
    assert_eq!(all, rows);
    let mine = store
        .usage(&UsageFilter {
            key_id: Some(k.id.clone()),
            from_ms: Some(day),
            to_ms: Some(day + 1500),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(mine, rows[..1]);
    let alice = store
        .usage(&UsageFilter {
            subject: Some("oidc:alice".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(alice, rows[1..2]);
    let e = store
        .daily_usage(&UsageFilter {
            subject: Some("oidc:alice".into()),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert!(e.to_string().contains("subject"), "{e}");
    let daily = store.daily_usage(&UsageFilter::default()).await.unwrap();
    assert_eq!(daily.len(), 2);
    assert_eq!(daily[0].day, "2024-10-04");
    assert_eq!(
        (
            daily[0].requests,
            daily[0].prompt_tokens,
            daily[0].completion_tokens
        ),
        (2, 17, 8)
    );
    assert_eq!(store.tokens_since(&k.id, day + 1500).await.unwrap(), 10);
    // From midnight (budget periods) the sum comes from the daily aggregates: the same.
    assert_eq!(store.tokens_since(&k.id, day).await.unwrap(), 25);
    assert_eq!(
        store.tokens_since(&k.id, day + 86_400_000).await.unwrap(),
        0
    );
    assert_eq!(store.tokens_since("key_other", day).await.unwrap(), 2);
    let csv = bitnet_tenancy::usage::usage_csv(&all);
    assert!(
        csv.lines().nth(1).unwrap().contains(",\"m,odel\","),
        "{csv}"
    );
    assert_eq!(csv.lines().count(), 4);
    assert!(csv.lines().next().unwrap().ends_with(",subject"), "{csv}");
    assert!(
        csv.lines().nth(2).unwrap().ends_with(",oidc:alice"),
        "{csv}"
    );
    assert!(csv.lines().nth(1).unwrap().ends_with(",stop,"), "{csv}");

    // A batch mixing a stored row and new ones (a replay overlapping live rows): only the new
    // rows are stored and counted in the aggregates.
    // m3's subject needs JSON escapes (the batch travels as one JSON array to PostgreSQL).
    let mut mixed = vec![
        row("m1", "key_mixed", &t.id, day + 5000, 4, 2),
        rows[0].clone(),
        row("m2", "key_mixed", &t.id, day + 6000, 6, 1),
        row("m3", "key_mixed", &t.id, day + 7000, 1, 1),
    ];
    mixed[3].subject = Some("oidc:o'brien \"q\" \\ é\u{1}".into());
    assert_eq!(store.insert_usage(&mixed).await.unwrap(), 3);
    let m3 = store
        .usage(&UsageFilter {
            subject: mixed[3].subject.clone(),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(
        m3,
        vec![mixed[3].clone()],
        "text with escapes is stored as sent"
    );
    let daily = store
        .daily_usage(&UsageFilter {
            key_id: Some("key_mixed".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(
        (
            daily.len(),
            daily[0].requests,
            daily[0].prompt_tokens,
            daily[0].completion_tokens
        ),
        (1, 3, 11, 4)
    );
    assert_eq!(store.tokens_since(&k.id, day).await.unwrap(), 25, "r1 once");
}

fn pool_of(store: &Store) -> sqlx::AnyPool {
    store.pool().clone()
}

#[tokio::test]
async fn sqlite_store() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("sub/t.db").display());
    let store = Store::connect(&url, 4).await.unwrap();
    assert_eq!(store.backend(), Backend::Sqlite);
    exercise(&store).await;
    // Migrations run once: reopening keeps the data.
    store.close().await;
    let again = Store::connect(&url, 1).await.unwrap();
    assert_eq!(again.tenants().await.unwrap().len(), 1);
    let mode: String = sqlx::query_scalar("PRAGMA journal_mode")
        .fetch_one(again.pool())
        .await
        .unwrap();
    assert_eq!(mode, "wal");
    // The subject filter still uses its (partial: subject IS NOT NULL) index.
    let plan: Vec<String> =
        sqlx::query("EXPLAIN QUERY PLAN SELECT * FROM usage_log WHERE subject = 'x'")
            .fetch_all(again.pool())
            .await
            .unwrap()
            .iter()
            .map(|r| sqlx::Row::try_get::<String, _>(r, "detail").unwrap())
            .collect();
    assert!(
        plan.iter().any(|d| d.contains("usage_log_subject")),
        "{plan:?}"
    );
}

#[tokio::test]
async fn postgres_store() {
    let Some((url, guard)) = common::fresh_postgres().await else {
        return;
    };
    let store = Store::connect(&url, 4).await.unwrap();
    assert_eq!(store.backend(), Backend::Postgres);
    exercise(&store).await;
    // Replicas migrating at once do not race.
    let (a, b) = tokio::join!(Store::connect(&url, 1), Store::connect(&url, 1));
    a.unwrap().close().await;
    b.unwrap().close().await;
    store.close().await;
    guard.drop_now().await;
}

#[tokio::test]
async fn bad_urls_are_named() {
    let e = Store::connect("mysql://x/y", 1)
        .await
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains("database-url") && e.contains("mysql://x/y"),
        "{e}"
    );
    let e = Store::connect("postgres://u:secretpw@127.0.0.1:1/db", 1)
        .await
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("127.0.0.1:1") && !e.contains("secretpw"), "{e}");
}
