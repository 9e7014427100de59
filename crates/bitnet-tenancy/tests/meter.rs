//! Usage metering: rows recorded are stored; what a killed process left in the journal is
//! replayed once at the next start; a segment a live process holds is left alone.

use bitnet_tenancy::{Meter, Store, UsageFilter, UsageRecord};
use std::io::Write;
use std::time::Duration;

fn rec(i: usize) -> UsageRecord {
    UsageRecord {
        request_id: format!("req-{i}"),
        ts_ms: 1_700_000_000_000 + i as i64,
        tenant_id: "ten_a".into(),
        key_id: "key_a".into(),
        model: "tiny".into(),
        prompt_tokens: 3,
        completion_tokens: i as i64,
        ttft_ms: None,
        duration_ms: 1,
        status: 200,
        finish_reason: "length".into(),
        // Odd rows come from an SSO caller: the subject goes through the journal too.
        subject: (i % 2 == 1).then(|| format!("oidc:user-{i}")),
    }
}

async fn store(dir: &std::path::Path) -> Store {
    Store::connect(&format!("sqlite://{}", dir.join("t.db").display()), 4)
        .await
        .unwrap()
}

fn journal_files(dir: &std::path::Path) -> usize {
    std::fs::read_dir(dir).unwrap().count()
}

#[tokio::test]
async fn recorded_rows_are_stored_and_the_journal_emptied() {
    let d = tempfile::tempdir().unwrap();
    let s = store(d.path()).await;
    let jdir = d.path().join("journal");
    let m = Meter::open(s.clone(), &jdir, Duration::from_millis(5))
        .await
        .unwrap();
    for i in 0..2500 {
        m.record(rec(i)).unwrap();
    }
    m.close(Duration::from_secs(30)).await;
    let rows = s.usage(&UsageFilter::default()).await.unwrap();
    assert_eq!(rows.len(), 2500);
    assert_eq!(rows[7], rec(7));
    assert_eq!(
        journal_files(&jdir),
        0,
        "stored rows leave no journal behind"
    );
}

#[tokio::test]
async fn a_dead_process_journal_is_replayed_once() {
    let d = tempfile::tempdir().unwrap();
    let s = store(d.path()).await;
    let jdir = d.path().join("journal");
    std::fs::create_dir_all(&jdir).unwrap();
    // What a SIGKILLed server leaves: rows journaled, some already stored, a torn last line.
    s.insert_usage(&[rec(0), rec(1)]).await.unwrap();
    let mut f = std::fs::File::create(jdir.join("usage-1-1-0.jsonl")).unwrap();
    for i in 0..5 {
        writeln!(f, "{}", serde_json::to_string(&rec(i)).unwrap()).unwrap();
    }
    write!(f, "{{\"request_id\":\"torn").unwrap();
    drop(f);
    // A segment a live process holds (locked) is not touched.
    let live_path = jdir.join("usage-2-1-0.jsonl");
    let mut live = std::fs::File::create(&live_path).unwrap();
    writeln!(live, "{}", serde_json::to_string(&rec(99)).unwrap()).unwrap();
    live.try_lock().unwrap();

    let m = Meter::open(s.clone(), &jdir, Duration::ZERO).await.unwrap();
    let rows = s.usage(&UsageFilter::default()).await.unwrap();
    let ids: Vec<&str> = rows.iter().map(|r| r.request_id.as_str()).collect();
    assert_eq!(ids, ["req-0", "req-1", "req-2", "req-3", "req-4"]);
    assert!(!jdir.join("usage-1-1-0.jsonl").exists());
    assert!(live_path.exists());
    let daily = s.daily_usage(&UsageFilter::default()).await.unwrap();
    assert_eq!(
        daily[0].requests, 5,
        "replayed rows counted once in the aggregates"
    );
    m.close(Duration::from_secs(5)).await;
    drop(live);
}
