use super::*;
use serde_json::value::RawValue;
use support::Collect;

mod support {
    use super::*;
    use std::sync::Mutex;

    /// Records what the broker delivers, in order.
    #[derive(Default)]
    pub struct Collect(pub Mutex<Vec<(String, u64)>>);

    impl BrokerEventHandler for Collect {
        fn handle_publication(&self, channel: &str, publication: Arc<Publication>) {
            self.0.lock().unwrap().push((channel.to_owned(), publication.offset));
        }
        fn handle_join(&self, _: &str, _: &ClientInfo) {}
        fn handle_leave(&self, _: &str, _: &ClientInfo) {}
        fn handle_resubscribe(&self, _: &str) {}
    }
}

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("herald-store-{name}-{}-{}", std::process::id(), unix_millis()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

fn publication(n: u64) -> Publication {
    Publication {
        data: Arc::from(RawValue::from_string(format!("{{\"n\":{n}}}")).unwrap()),
        info: None,
        offset: 0,
        tags: Default::default(),
        time: unix_millis(),
        meta: None,
    }
}

fn kept(size: usize) -> PublishOptions {
    PublishOptions { history_size: size, history_ttl: Duration::from_secs(300), ..Default::default() }
}

fn open(dir: &Path, fsync: Fsync) -> (DurableBroker, Arc<Collect>) {
    let broker =
        DurableBroker::open(StoreOptions { data_dir: dir.to_owned(), fsync, sweep_every: SWEEP_EVERY }).unwrap();
    let collect = Arc::new(Collect::default());
    broker.register_handler(collect.clone());
    (broker, collect)
}

#[tokio::test]
async fn history_positions_and_idempotency_survive_reopening() {
    let dir = temp_dir("reopen");
    let epoch = {
        let (broker, collect) = open(&dir, Fsync::Always);
        for n in 1..=5 {
            broker.publish("c", publication(n), &kept(3)).await.unwrap();
        }
        let keyed = PublishOptions { idempotency_key: Some("k".into()), ..kept(3) };
        let first = broker.publish("c", publication(6), &keyed).await.unwrap();
        assert_eq!(first.position.offset, 6);
        assert_eq!(collect.0.lock().unwrap().len(), 6, "delivered after commit");
        let cursor = StreamPosition { offset: 5, epoch: first.position.epoch.clone() };
        broker.save_cursor("u1", "c", &cursor).await.unwrap();
        first.position.epoch
    };
    // The writer thread of the first broker has exited once its sender dropped; the file is
    // closed when the thread ends. Wait for that, bounded.
    let (broker, collect) = {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            match DurableBroker::open(StoreOptions {
                data_dir: dir.clone(),
                fsync: Fsync::Always,
                sweep_every: SWEEP_EVERY,
            }) {
                Ok(broker) => {
                    let collect = Arc::new(Collect::default());
                    broker.register_handler(collect.clone());
                    break (broker, collect);
                }
                Err(e) => {
                    assert!(Instant::now() < deadline, "store did not reopen: {e}");
                    tokio::task::yield_now().await;
                }
            }
        }
    };
    assert_eq!(broker.recovered().streams, 1);
    let page = broker.history("c", &HistoryFilter::default()).await.unwrap();
    assert_eq!(page.position, StreamPosition { offset: 6, epoch: epoch.clone() });
    let offsets: Vec<u64> = page.publications.iter().map(|p| p.offset).collect();
    assert_eq!(offsets, vec![4, 5, 6], "history_size 3 kept across the restart");
    let next = broker.publish("c", publication(7), &kept(3)).await.unwrap();
    assert_eq!(next.position, StreamPosition { offset: 7, epoch: epoch.clone() });
    assert_eq!(broker.cursor("u1", "c").await.unwrap(), Some(StreamPosition { offset: 5, epoch: epoch.clone() }));
    let keyed = PublishOptions { idempotency_key: Some("k".into()), ..kept(3) };
    let repeat = broker.publish("c", publication(6), &keyed).await.unwrap();
    assert!(repeat.deduplicated, "idempotency key remembered across the restart");
    assert_eq!(collect.0.lock().unwrap().len(), 1);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn concurrent_publishes_are_delivered_in_offset_order() {
    let dir = temp_dir("order");
    let (broker, collect) = open(&dir, Fsync::Interval(Duration::from_millis(50)));
    let broker = Arc::new(broker);
    let mut tasks = Vec::new();
    for t in 0..8u64 {
        let broker = broker.clone();
        tasks.push(tokio::spawn(async move {
            for n in 0..50 {
                broker.publish("c", publication(t * 100 + n), &kept(1000)).await.unwrap();
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let delivered: Vec<u64> = collect.0.lock().unwrap().iter().map(|(_, o)| *o).collect();
    assert_eq!(delivered, (1..=400).collect::<Vec<u64>>());
    let _ = std::fs::remove_dir_all(&dir);
}

/// What `orders_on_first_poll` promises: publishes started in one order and finished in
/// another take the offsets of the order they started in.
#[tokio::test]
async fn a_publish_takes_its_place_when_first_polled() {
    let dir = temp_dir("first-poll");
    let (broker, _collect) = open(&dir, Fsync::Always);
    assert!(broker.orders_on_first_poll());
    let options = kept(10);
    let mut publishes: Vec<_> = (1..=3).map(|n| broker.publish("c", publication(n), &options)).collect();
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    for publish in &mut publishes {
        let _ = publish.as_mut().poll(&mut cx);
    }
    let mut offsets = Vec::new();
    for publish in publishes.into_iter().rev() {
        offsets.push(publish.await.unwrap().position.offset);
    }
    assert_eq!(offsets, [3, 2, 1], "each publish has the offset of the order it started in");
    let page = broker.history("c", &HistoryFilter { since: None, limit: Some(10), reverse: false }).await.unwrap();
    let data: Vec<String> = page.publications.iter().map(|p| p.data.get().to_owned()).collect();
    assert_eq!(data, ["{\"n\":1}", "{\"n\":2}", "{\"n\":3}"]);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn an_unreadable_file_is_moved_aside_and_streams_start_a_new_epoch() {
    let dir = temp_dir("corrupt");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("herald.redb"), b"this is not a redb file at all, just garbage bytes").unwrap();
    let (broker, _) = open(&dir, Fsync::Always);
    let aside = broker.recovered().moved_aside.clone().expect("moved aside");
    assert!(aside.exists());
    let outcome = broker.publish("c", publication(1), &kept(10)).await.unwrap();
    assert_eq!(outcome.position.offset, 1);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn remove_history_keeps_the_position() {
    let dir = temp_dir("remove");
    let (broker, _) = open(&dir, Fsync::Always);
    for n in 1..=3 {
        broker.publish("c", publication(n), &kept(10)).await.unwrap();
    }
    broker.remove_history("c").await.unwrap();
    let page = broker.history("c", &HistoryFilter::default()).await.unwrap();
    assert!(page.publications.is_empty());
    assert_eq!(page.position.offset, 3);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn the_sweep_removes_expired_publications_from_the_file() {
    let dir = temp_dir("sweep");
    let options = StoreOptions { data_dir: dir.clone(), fsync: Fsync::Always, sweep_every: Duration::from_millis(50) };
    let broker = DurableBroker::open(options.clone()).unwrap();
    broker.register_handler(Arc::new(Collect::default()));
    let short = PublishOptions { history_size: 10, history_ttl: Duration::from_millis(1), ..Default::default() };
    for n in 1..=3 {
        broker.publish("short", publication(n), &short).await.unwrap();
    }
    for n in 1..=2 {
        broker.publish("long", publication(n), &kept(10)).await.unwrap();
    }
    // Two sweeps after the publishes: at least one ran after every short one expired.
    let start = broker.sweeps();
    let deadline = Instant::now() + Duration::from_secs(5);
    while broker.sweeps() < start + 2 {
        assert!(Instant::now() < deadline, "no sweep ran");
        tokio::task::yield_now().await;
    }
    drop(broker);
    let db = loop {
        match Database::create(dir.join("herald.redb")) {
            Ok(db) => break db,
            Err(_) => {
                assert!(Instant::now() < deadline + Duration::from_secs(5), "store never closed");
                tokio::task::yield_now().await;
            }
        }
    };
    let read = db.begin_read().unwrap();
    let table = read.open_table(PUBLICATIONS).unwrap();
    let keys: Vec<(String, u64)> = table
        .iter()
        .unwrap()
        .map(|entry| {
            let (key, _) = entry.unwrap();
            let (channel, offset) = key.value();
            (channel.to_owned(), offset)
        })
        .collect();
    assert_eq!(keys, vec![("long".to_owned(), 1), ("long".to_owned(), 2)]);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn a_damaged_record_gives_its_stream_a_new_epoch_and_the_server_starts() {
    let dir = temp_dir("damaged");
    let epoch = {
        let (broker, _) = open(&dir, Fsync::Always);
        for n in 1..=3 {
            broker.publish("c", publication(n), &kept(10)).await.unwrap();
        }
        broker.publish("ok", publication(1), &kept(10)).await.unwrap().position.epoch
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    // Damage one publication record of channel c directly in the file.
    loop {
        match Database::create(dir.join("herald.redb")) {
            Ok(db) => {
                let txn = db.begin_write().unwrap();
                txn.open_table(PUBLICATIONS).unwrap().insert(("c", 2), b"{not json".as_slice()).unwrap();
                txn.commit().unwrap();
                break;
            }
            Err(_) => {
                assert!(Instant::now() < deadline, "store never closed");
                tokio::task::yield_now().await;
            }
        }
    }
    let (broker, _) = open(&dir, Fsync::Always);
    assert_eq!(broker.recovered().damaged_streams, 1);
    let damaged = broker.history("c", &HistoryFilter::default()).await.unwrap();
    assert!(damaged.publications.is_empty(), "nothing doubtful is served");
    assert_eq!(damaged.position.offset, 3, "offsets keep counting");
    let recover =
        HistoryFilter { since: Some(StreamPosition { offset: 1, epoch: "old".into() }), ..Default::default() };
    assert!(!broker.history("c", &recover).await.unwrap().since_available);
    let intact = broker.history("ok", &HistoryFilter::default()).await.unwrap();
    assert_eq!(intact.position.epoch, epoch, "other streams keep their epoch");
    assert_eq!(intact.publications.len(), 1);
    let _ = std::fs::remove_dir_all(&dir);
}
