mod common;
use std::time::Instant;
use york_connector::store::*;
fn items(n: usize, v: &str) -> Vec<OutboxItem> {
    (0..n).map(|i| OutboxItem { destination: "cito".into(), key: ResourceKey::new("Observation", format!("o{i}")),
        patient: Some(format!("Patient/{}", i % 1000)), op: Op::Upsert, content_hash: format!("{v}{i}"), body: Some(format!("{{\"v\":\"{v}\"}}")) }).collect()
}
async fn run(url: &str, label: &str) {
    let s = Store::connect(url).await.unwrap();
    let now = chrono::Utc::now();
    let a = items(10_000, "a");
    let t = Instant::now(); let n = s.enqueue(&a, now).await.unwrap(); eprintln!("{label}: enqueue 10k new: {n} in {:?}", t.elapsed());
    let t = Instant::now(); let n = s.enqueue(&a, now).await.unwrap(); eprintln!("{label}: enqueue 10k unchanged: {n} in {:?}", t.elapsed());
    let t = Instant::now(); let mut done = 0;
    loop { let rows = s.lease("cito", "w", 100, std::time::Duration::from_secs(60), now).await.unwrap(); if rows.is_empty() { break; }
        for r in rows { let e = LedgerEntry { destination: "cito".into(), key: r.item.key.clone(), remote_id: r.item.key.id.clone(), version_id: None, content_hash: r.item.content_hash.clone(), linked: false, patient: r.item.patient.clone(), updated_at: now }; s.complete(&r, Some(&e)).await.unwrap(); done += 1; } }
    eprintln!("{label}: lease+complete {done} in {:?}", t.elapsed());
    let t = Instant::now(); let n = s.enqueue(&a, now).await.unwrap(); eprintln!("{label}: enqueue 10k unchanged vs ledger: {n} in {:?}", t.elapsed());
    let b = items(10_000, "b");
    let t = Instant::now(); let n = s.enqueue(&b, now).await.unwrap(); eprintln!("{label}: enqueue 10k changed: {n} in {:?}", t.elapsed());
}
#[tokio::test]
async fn timing() {
    let dir = common::TempDir::new("timing");
    run(&format!("sqlite://{}/s.db", dir.path().display()), "sqlite").await;
    let db = common::pg::TestDb::create().await;
    run(&db.url, "postgres").await;
}
