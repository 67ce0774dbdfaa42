//! Why redb: the store's two hot operations, measured against fjall (an LSM-tree engine, also
//! pure Rust) in one run. Appends: 100,000 publications of ~200 bytes over 10 channels, committed
//! durably in groups of 100 (as group commit does). Range reads: the newest 100 publications of a
//! channel, 2,000 times (as recovery and history do).
//!
//! Run: `cargo run --release -p herald-store --example store_compare`

use redb::{Database, Durability, ReadableDatabase, TableDefinition};
use std::time::{Duration, Instant};

const TABLE: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("publications");
const RECORDS: u64 = 100_000;
const GROUP: u64 = 100;
const CHANNELS: u64 = 10;
const READS: usize = 2_000;

fn channel(n: u64) -> String {
    format!("project:{}", n % CHANNELS)
}

fn value(n: u64) -> Vec<u8> {
    format!("{{\"expires_ms\":1,\"data\":{{\"n\":{n},\"pad\":\"{}\"}},\"offset\":{n},\"time\":0}}", "x".repeat(150))
        .into_bytes()
}

fn fjall_key(channel: &str, offset: u64) -> Vec<u8> {
    let mut key = channel.as_bytes().to_vec();
    key.push(0);
    key.extend_from_slice(&offset.to_be_bytes());
    key
}

fn redb_run(dir: &std::path::Path) -> Result<(Duration, Duration), Box<dyn std::error::Error>> {
    let db = Database::create(dir.join("bench.redb"))?;
    let started = Instant::now();
    for group in 0..RECORDS / GROUP {
        let mut txn = db.begin_write()?;
        txn.set_durability(Durability::Immediate)?;
        {
            let mut table = txn.open_table(TABLE)?;
            for n in group * GROUP..(group + 1) * GROUP {
                table.insert((channel(n).as_str(), n), value(n).as_slice())?;
            }
        }
        txn.commit()?;
    }
    let appends = started.elapsed();
    let started = Instant::now();
    let mut seen = 0usize;
    for i in 0..READS {
        let read = db.begin_read()?;
        let table = read.open_table(TABLE)?;
        let name = channel(i as u64);
        for entry in table.range((name.as_str(), 0)..=(name.as_str(), u64::MAX))?.rev().take(100) {
            seen += entry?.1.value().len();
        }
    }
    assert!(seen > 0);
    Ok((appends, started.elapsed()))
}

fn fjall_run(dir: &std::path::Path) -> Result<(Duration, Duration), Box<dyn std::error::Error>> {
    let db = fjall::Database::builder(dir.join("bench.fjall")).open()?;
    let keyspace = db.keyspace("publications", fjall::KeyspaceCreateOptions::default)?;
    let started = Instant::now();
    for group in 0..RECORDS / GROUP {
        let mut batch = db.batch();
        for n in group * GROUP..(group + 1) * GROUP {
            batch.insert(&keyspace, fjall_key(&channel(n), n), value(n));
        }
        batch.commit()?;
        db.persist(fjall::PersistMode::SyncAll)?;
    }
    let appends = started.elapsed();
    let started = Instant::now();
    let mut seen = 0usize;
    for i in 0..READS {
        let name = channel(i as u64);
        let range = fjall_key(&name, 0)..=fjall_key(&name, u64::MAX);
        for item in keyspace.range(range).rev().take(100) {
            seen += item.value()?.len();
        }
    }
    assert!(seen > 0);
    Ok((appends, started.elapsed()))
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = std::env::temp_dir().join(format!("herald-store-compare-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let (redb_appends, redb_reads) = redb_run(&dir)?;
    let (fjall_appends, fjall_reads) = fjall_run(&dir)?;
    let _ = std::fs::remove_dir_all(&dir);
    let per_second = |d: Duration, n: f64| n / d.as_secs_f64();
    println!("| engine | durable appends/s (groups of {GROUP}) | range reads/s (newest 100) |");
    println!("|---|---|---|");
    println!(
        "| redb 4 | {:.0} | {:.0} |",
        per_second(redb_appends, RECORDS as f64),
        per_second(redb_reads, READS as f64)
    );
    println!(
        "| fjall 3 | {:.0} | {:.0} |",
        per_second(fjall_appends, RECORDS as f64),
        per_second(fjall_reads, READS as f64)
    );
    Ok(())
}
