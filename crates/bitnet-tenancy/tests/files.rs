//! File expiry on SQLite and PostgreSQL: an expired file is gone for the API at once (get,
//! list), its content stays readable for a batch still running on it, and the sweep deletes
//! expired files except the input of a batch that has not ended.

mod common;

use bitnet_tenancy::{now_ms, BatchState, Store};
use std::time::Duration;

async fn exercise(store: &Store) {
    let t = store.create_tenant("cli:test", "acme", None).await.unwrap();
    let (tid, key) = (t.id.as_str(), "key_x");
    let keep = store
        .create_file(None, tid, key, "keep.jsonl", "batch", "{}\n", None)
        .await
        .unwrap();
    assert_eq!(keep.expires_ms, None);
    let hour = store
        .create_file(
            None,
            tid,
            key,
            "hour.jsonl",
            "batch",
            "{}\n",
            Some(Duration::from_secs(3600)),
        )
        .await
        .unwrap();
    assert_eq!(hour.expires_ms, Some(hour.created_ms + 3_600_000));
    let short = Some(Duration::from_millis(1));
    let gone = store
        .create_file(None, tid, key, "gone.jsonl", "batch", "{}\n", short)
        .await
        .unwrap();
    let input = store
        .create_file(None, tid, key, "input.jsonl", "batch", "{\"a\":1}\n", short)
        .await
        .unwrap();
    let batch = store
        .create_batch(
            tid,
            key,
            "/v1/chat/completions",
            &input.id,
            86_400_000,
            1,
            None,
        )
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(20)).await;

    // Expired: not found and not listed; the running batch still reads its input.
    let e = store.file(tid, &gone.id).await.unwrap_err();
    assert!(e.to_string().contains(&gone.id), "{e}");
    let listed: Vec<String> = store
        .files(tid, None, 100)
        .await
        .unwrap()
        .into_iter()
        .map(|f| f.id)
        .collect();
    assert_eq!(listed.len(), 2, "{listed:?}");
    assert!(listed.contains(&keep.id) && listed.contains(&hour.id));
    assert_eq!(
        store.file_content(tid, &input.id).await.unwrap(),
        "{\"a\":1}\n"
    );

    // The sweep deletes `gone`, keeps the running batch's input, then takes it once it ended.
    assert_eq!(store.purge_expired_files(now_ms()).await.unwrap(), 1);
    assert!(store.file_content(tid, &gone.id).await.is_err());
    assert!(store.file_content(tid, &input.id).await.is_ok());
    store
        .set_batch_status(&batch.id, BatchState::Failed, None, None)
        .await
        .unwrap();
    assert_eq!(store.purge_expired_files(now_ms()).await.unwrap(), 1);
    assert!(store.file_content(tid, &input.id).await.is_err());
    // Files not yet expired stay, through any number of sweeps.
    assert_eq!(store.purge_expired_files(now_ms()).await.unwrap(), 0);
    assert!(store.file(tid, &hour.id).await.is_ok());
    assert!(store.file(tid, &keep.id).await.is_ok());
}

#[tokio::test]
async fn sqlite_files_expire() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("t.db").display());
    let store = Store::connect(&url, 2).await.unwrap();
    exercise(&store).await;
}

#[tokio::test]
async fn postgres_files_expire() {
    let Some((url, guard)) = common::fresh_postgres().await else {
        return;
    };
    let store = Store::connect(&url, 2).await.unwrap();
    exercise(&store).await;
    store.close().await;
    guard.drop_now().await;
}
