//! Usage metering: rows recorded are stored; what a killed process left in the journal is
//! replayed once at the next start; a segment a live process holds is left alone.

use bitnet_tenancy::meter::SEGMENT_BYTES;
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
        // Row 3's needs JSON escapes (the writer reads rows back from the journal's JSON).
        subject: (i % 2 == 1).then(|| match i {
            3 => "oidc:\"q\" \\ é\u{1}".to_string(),
            _ => format!("oidc:user-{i}"),
        }),
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

/// A store and a meter journaling under a fresh folder (kept alive by the returned guard).
async fn open_meter(flush: Duration) -> (tempfile::TempDir, Store, std::path::PathBuf, Meter) {
    let d = tempfile::tempdir().unwrap();
    let s = store(d.path()).await;
    let jdir = d.path().join("journal");
    let m = Meter::open(s.clone(), &jdir, flush).await.unwrap();
    (d, s, jdir, m)
}

#[tokio::test]
async fn recorded_rows_are_stored_and_the_journal_emptied() {
    let (_d, s, jdir, m) = open_meter(Duration::from_millis(5)).await;
    for i in 0..2500 {
        m.record(&rec(i)).unwrap();
    }
    m.close(Duration::from_secs(30)).await;
    let rows = s.usage(&UsageFilter::default()).await.unwrap();
    assert_eq!(rows.len(), 2500);
    assert_eq!(rows[7], rec(7));
    assert_eq!(rows[3], rec(3));
    assert_eq!(
        journal_files(&jdir),
        0,
        "stored rows leave no journal behind"
    );
}

/// A backlog is stored batch after batch without waiting `flush` before each: the writer
/// used to sleep `flush` per batch of 1000, i.e. 40 s for these rows with a 2 s flush.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backlog_is_stored_without_a_flush_wait_per_batch() {
    let (_d, s, _jdir, m) = open_meter(Duration::from_secs(2)).await;
    let n = 20_000;
    for i in 0..n {
        m.record(&rec(i)).unwrap();
    }
    let all = UsageFilter {
        limit: Some(1_000_000),
        ..Default::default()
    };
    let start = std::time::Instant::now();
    loop {
        let stored = s.usage(&all).await.unwrap().len();
        if stored == n {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "{stored} of {n} rows stored after {:?}",
            start.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    m.close(Duration::from_secs(30)).await;
}

#[tokio::test]
async fn a_recorded_row_is_in_the_journal_file_before_record_returns() {
    // A long flush: nothing is stored while the file is read.
    let (_d, s, jdir, m) = open_meter(Duration::from_secs(600)).await;
    for i in 0..3 {
        m.record(&rec(i)).unwrap();
    }
    let files: Vec<_> = std::fs::read_dir(&jdir).unwrap().collect();
    assert_eq!(files.len(), 1);
    // Another reader of the file (as the next process would be) sees the rows at once.
    let bytes = std::fs::read(files[0].as_ref().unwrap().path()).unwrap();
    assert_eq!(bytes.len(), SEGMENT_BYTES, "the segment is reserved whole");
    let used = bytes.iter().position(|&b| b == 0).unwrap();
    assert!(bytes[used..].iter().all(|&b| b == 0), "the tail stays zero");
    let lines: Vec<UsageRecord> = bytes[..used]
        .split(|&b| b == b'\n')
        .filter(|l| !l.is_empty())
        .map(|l| serde_json::from_slice(l).unwrap())
        .collect();
    assert_eq!(lines, [rec(0), rec(1), rec(2)]);
    m.close(Duration::from_secs(30)).await;
    assert_eq!(s.usage(&UsageFilter::default()).await.unwrap().len(), 3);
}

#[tokio::test]
async fn segments_rotate_and_a_row_longer_than_a_segment_gets_its_own() {
    let (_d, s, jdir, m) = open_meter(Duration::from_millis(5)).await;
    let mut huge = rec(1);
    huge.request_id = "req-huge".into();
    huge.subject = Some(format!("oidc:{}", "x".repeat(SEGMENT_BYTES + 10)));
    // ~20 000 rows of ~250 bytes: past one 4 MiB segment.
    for i in 0..20_000 {
        m.record(&rec(i)).unwrap();
        if i == 10_000 {
            m.record(&huge).unwrap();
        }
    }
    m.close(Duration::from_secs(60)).await;
    let rows = s
        .usage(&UsageFilter {
            limit: Some(100_000),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(rows.len(), 20_001);
    assert!(rows.contains(&huge));
    assert_eq!(journal_files(&jdir), 0, "every segment deleted once stored");
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
    // The unused tail of a mapped segment: zero bytes up to the segment size.
    f.write_all(&vec![0u8; 64 << 10]).unwrap();
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
