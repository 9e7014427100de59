//! The limiter in process and in Redis: every limit, and a limit shared by "replicas"
//! (separate Redis connections) holding exactly under concurrency.

mod common;

use bitnet_tenancy::{Limiter, Limits, Verdict};

fn granted(v: &Verdict) -> bool {
    matches!(v, Verdict::Granted(_))
}

async fn exercise(l: &Limiter, key: &str) {
    // RPM.
    let rpm = Limits {
        rpm: Some(3),
        ..Default::default()
    };
    for i in 0..3 {
        let v = l
            .admit(&format!("{key}-rpm"), &rpm, 1, "", 1000)
            .await
            .unwrap();
        let Verdict::Granted(info) = v else {
            panic!("{v:?}")
        };
        assert_eq!(info.remaining_requests, Some(2 - i));
        assert!(info.reset_ms > 0 && info.reset_ms <= 60_000);
    }
    let v = l
        .admit(&format!("{key}-rpm"), &rpm, 1, "", 1000)
        .await
        .unwrap();
    assert!(
        matches!(v, Verdict::Requests(ref i) if i.remaining_requests == Some(0)),
        "{v:?}"
    );

    // TPM: prompts at admission, completions after.
    let tpm = Limits {
        tpm: Some(100),
        ..Default::default()
    };
    let k = format!("{key}-tpm");
    assert!(granted(&l.admit(&k, &tpm, 40, "", 1000).await.unwrap()));
    l.finish(&k, &tpm, 30, None).await.unwrap();
    assert!(granted(&l.admit(&k, &tpm, 30, "", 1000).await.unwrap()));
    let v = l.admit(&k, &tpm, 1, "", 1000).await.unwrap();
    assert!(
        matches!(v, Verdict::Tokens(ref i) if i.remaining_tokens == Some(0)),
        "{v:?}"
    );

    // A refund (the engine refused the request after admission) gives the prompt back.
    let k = format!("{key}-refund");
    assert!(granted(&l.admit(&k, &tpm, 80, "", 1000).await.unwrap()));
    assert!(!granted(&l.admit(&k, &tpm, 30, "", 1000).await.unwrap()));
    l.finish(&k, &tpm, -80, None).await.unwrap();
    assert!(granted(&l.admit(&k, &tpm, 90, "", 1000).await.unwrap()));

    // Parallel slots come back when a request finishes.
    let par = Limits {
        max_parallel: Some(2),
        ..Default::default()
    };
    let k = format!("{key}-par");
    assert!(granted(&l.admit(&k, &par, 1, "a", 60_000).await.unwrap()));
    assert!(granted(&l.admit(&k, &par, 1, "b", 60_000).await.unwrap()));
    assert!(matches!(
        l.admit(&k, &par, 1, "c", 60_000).await.unwrap(),
        Verdict::Parallel(_)
    ));
    l.finish(&k, &par, 0, Some("a")).await.unwrap();
    assert!(granted(&l.admit(&k, &par, 1, "c", 60_000).await.unwrap()));

    // Budgets: seeded once per period, then charged; spent → refused.
    let now = bitnet_tenancy::now_ms();
    let bud = Limits {
        budget: Some((100, now - 1000, now + 3_600_000)),
        ..Default::default()
    };
    let k = format!("{key}-bud");
    assert_eq!(
        l.admit(&k, &bud, 10, "", 1000).await.unwrap(),
        Verdict::SeedBudget
    );
    l.seed_budget(&k, &bud, 60).await.unwrap();
    l.seed_budget(&k, &bud, 0).await.unwrap(); // already set: kept
    assert!(granted(&l.admit(&k, &bud, 10, "", 1000).await.unwrap()));
    l.finish(&k, &bud, 30, None).await.unwrap();
    let v = l.admit(&k, &bud, 1, "", 1000).await.unwrap();
    assert!(matches!(v, Verdict::Budget(100, 100, _)), "{v:?}");
}

#[tokio::test]
async fn local_limits() {
    exercise(&Limiter::local(), "k").await;
}

#[tokio::test]
async fn redis_limits() {
    let Some(url) = common::redis_available().await else {
        return;
    };
    let prefix = format!("bitnet-test:{}", uuid::Uuid::new_v4().simple());
    let l = Limiter::redis(&url, &prefix).await.unwrap();
    exercise(&l, "k").await;
}

#[tokio::test]
async fn redis_limit_is_global_across_replicas() {
    let Some(url) = common::redis_available().await else {
        return;
    };
    let prefix = format!("bitnet-test:{}", uuid::Uuid::new_v4().simple());
    let mut replicas = Vec::new();
    for _ in 0..3 {
        replicas.push(std::sync::Arc::new(
            Limiter::redis(&url, &prefix).await.unwrap(),
        ));
    }
    let limits = Limits {
        rpm: Some(25),
        tpm: Some(1_000_000),
        ..Default::default()
    };
    let mut tasks = Vec::new();
    for i in 0..90 {
        let l = replicas[i % 3].clone();
        let limits = limits.clone();
        tasks.push(tokio::spawn(async move {
            granted(&l.admit("shared", &limits, 3, "", 1000).await.unwrap())
        }));
    }
    let mut admitted = 0;
    for t in tasks {
        admitted += usize::from(t.await.unwrap());
    }
    // All 90 run within one minute window unless it turns over mid-test (then ≤ 2 × 25).
    assert!((25..=50).contains(&admitted), "admitted {admitted}");
    if bitnet_tenancy::now_ms() % 60_000 > 5_000 {
        assert_eq!(admitted, 25);
    }
}
