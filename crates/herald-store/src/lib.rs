//! The embedded durable engine: channel history, stream positions (offset and epoch) and
//! idempotency keys in a redb file, so that a restart — graceful or `kill -9` — is invisible to
//! clients: offsets continue, the epoch stays, recovery returns what they missed.
//!
//! Publishes that arrive together share one commit (group commit). A publication becomes visible
//! to history and is delivered to subscribers only after its commit, in offset order per
//! channel, so an acknowledged publish is never lost and a subscriber never sees one that a crash
//! could take back. Reads are served from an in-memory index ([`MemoryBroker`]) rebuilt from the
//! file at start.

mod record;

use async_trait::async_trait;
use herald_core::protocol::{ClientInfo, Publication};
use herald_server::engine::memory::MemoryBroker;
use herald_server::engine::{
    Broker, BrokerEventHandler, EngineError, HistoryFilter, HistoryPage, PublishOptions, PublishOutcome,
    StreamPosition, IDEMPOTENCY_WINDOW,
};
use record::{IdempotencyRecord, StoredPublication, StreamRecord};
use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::oneshot;

const PUBLICATIONS: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("publications");
const STREAMS: TableDefinition<&str, &[u8]> = TableDefinition::new("streams");
const IDEMPOTENCY: TableDefinition<(&str, &str), &[u8]> = TableDefinition::new("idempotency");
/// (user, channel) -> the last position the user acknowledged.
const CURSORS: TableDefinition<(&str, &str), &[u8]> = TableDefinition::new("cursors");

/// Most publishes committed together.
const MAX_BATCH: usize = 4096;
/// How often expired publications and idempotency keys are removed from the file, by default.
pub const SWEEP_EVERY: Duration = Duration::from_secs(10);
/// Most expired publications one sweep removes, so a sweep never holds up commits for long.
const SWEEP_LIMIT: usize = 10_000;
/// A commit this slow is logged: every publish in it waited that long to be delivered.
const SLOW_COMMIT: Duration = Duration::from_millis(250);
/// When a sweep hit its limit, the next one comes this soon.
const SWEEP_AGAIN: Duration = Duration::from_millis(100);

/// When commits reach the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fsync {
    /// Every commit is durable before the publish is answered.
    Always,
    /// Commits are flushed at this period; a crash may lose up to one period of publishes.
    Interval(Duration),
}

#[derive(Debug, Clone)]
pub struct StoreOptions {
    pub data_dir: PathBuf,
    pub fsync: Fsync,
    pub sweep_every: Duration,
}

impl StoreOptions {
    /// From the `storage` section of the configuration.
    pub fn from_config(storage: &herald_server::Config) -> Self {
        let s = &storage.storage;
        let fsync = if s.fsync == "interval" { Fsync::Interval(s.fsync_interval) } else { Fsync::Always };
        Self { data_dir: PathBuf::from(&s.data_dir), fsync, sweep_every: SWEEP_EVERY }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot create the data directory {path}: {source}")]
    DataDir { path: String, source: std::io::Error },
    #[error("cannot open the store {path}: {reason}")]
    Open { path: String, reason: String },
}

fn unix_millis() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

struct PendingPublish {
    channel: String,
    publication: Publication,
    position: StreamPosition,
    options: PublishOptions,
    done: oneshot::Sender<Result<StreamPosition, EngineError>>,
}

enum WriteItem {
    Publish(Box<PendingPublish>),
    RemoveHistory { channel: String, done: oneshot::Sender<Result<(), EngineError>> },
    Cursor { user: String, channel: String, position: StreamPosition, done: oneshot::Sender<Result<(), EngineError>> },
}

/// What opening the store found, for the start-up log.
#[derive(Debug, Default, Clone)]
pub struct Recovered {
    pub streams: usize,
    pub publications: usize,
    /// The file was unreadable and was moved aside: every stream starts a new epoch.
    pub moved_aside: Option<PathBuf>,
    /// Streams with a damaged record: they start a new epoch (clients learn `recovered: false`).
    pub damaged_streams: usize,
}

pub struct DurableBroker {
    memory: Arc<MemoryBroker>,
    sweeps: Arc<std::sync::atomic::AtomicU64>,
    writer: mpsc::Sender<WriteItem>,
    recovered: Recovered,
}

impl DurableBroker {
    /// Opens (or creates) the store in `options.data_dir` and rebuilds the in-memory index.
    pub fn open(options: StoreOptions) -> Result<Self, StoreError> {
        std::fs::create_dir_all(&options.data_dir)
            .map_err(|source| StoreError::DataDir { path: options.data_dir.display().to_string(), source })?;
        let path = options.data_dir.join("herald.redb");
        let (db, moved_aside) = open_or_set_aside(&path)?;
        let memory = Arc::new(MemoryBroker::new());
        let mut recovered =
            load(&db, &memory).map_err(|reason| StoreError::Open { path: path.display().to_string(), reason })?;
        recovered.moved_aside = moved_aside;
        let (writer, items) = mpsc::channel();
        let writer_memory = memory.clone();
        let sweeps = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let writer_sweeps = sweeps.clone();
        let (fsync, sweep_every) = (options.fsync, options.sweep_every);
        std::thread::Builder::new()
            .name("herald-store-writer".into())
            .spawn(move || write_loop(db, items, writer_memory, fsync, sweep_every, writer_sweeps))
            .map_err(|e| StoreError::Open { path: path.display().to_string(), reason: e.to_string() })?;
        Ok(Self { memory, sweeps, writer, recovered })
    }

    pub fn recovered(&self) -> &Recovered {
        &self.recovered
    }

    /// How many expiry sweeps have been committed.
    pub fn sweeps(&self) -> u64 {
        self.sweeps.load(std::sync::atomic::Ordering::Acquire)
    }
}

/// A file redb cannot open as a database is moved aside (never deleted) and a new one started;
/// its streams then get new epochs, so clients learn `recovered: false` instead of wrong data.
fn open_or_set_aside(path: &Path) -> Result<(Database, Option<PathBuf>), StoreError> {
    let shown = || path.display().to_string();
    match Database::create(path) {
        Ok(db) => Ok((db, None)),
        Err(redb::DatabaseError::DatabaseAlreadyOpen) => {
            Err(StoreError::Open { path: shown(), reason: "another Herald process has it open".into() })
        }
        Err(error) => {
            let aside = path.with_extension(format!("corrupt-{}", unix_millis()));
            tracing::error!(%error, file = %shown(), moved_to = %aside.display(), "store unreadable; moving it aside and starting a new one");
            std::fs::rename(path, &aside).map_err(|e| StoreError::Open {
                path: shown(),
                reason: format!("{error}; moving it aside failed: {e}"),
            })?;
            let db = Database::create(path).map_err(|e| StoreError::Open { path: shown(), reason: e.to_string() })?;
            Ok((db, Some(aside)))
        }
    }
}

/// Rebuilds streams, retained publications and idempotency keys from the file.
fn load(db: &Database, memory: &MemoryBroker) -> Result<Recovered, String> {
    let txn = db.begin_write().map_err(|e| e.to_string())?;
    // Creating the tables here lets the read below find them on a new file.
    for table in [
        txn.open_table(STREAMS).map(|_| ()),
        txn.open_table(PUBLICATIONS).map(|_| ()),
        txn.open_table(IDEMPOTENCY).map(|_| ()),
        txn.open_table(CURSORS).map(|_| ()),
    ] {
        table.map_err(|e| e.to_string())?;
    }
    txn.commit().map_err(|e| e.to_string())?;

    let read = db.begin_read().map_err(|e| e.to_string())?;
    let streams = read.open_table(STREAMS).map_err(|e| e.to_string())?;
    let publications = read.open_table(PUBLICATIONS).map_err(|e| e.to_string())?;
    let idempotency = read.open_table(IDEMPOTENCY).map_err(|e| e.to_string())?;
    let now_ms = unix_millis();
    let now = Instant::now();
    let mut recovered = Recovered::default();
    for entry in streams.iter().map_err(|e| e.to_string())? {
        let (channel, value) = entry.map_err(|e| e.to_string())?;
        let channel = channel.value().to_owned();
        // A damaged record never becomes wrong data: the stream keeps counting but under a new
        // epoch, so clients are told `recovered: false` and resynchronize.
        let stream: StreamRecord = match serde_json::from_slice(value.value()) {
            Ok(stream) => stream,
            Err(error) => {
                tracing::error!(%channel, %error, "damaged stream record; the stream starts a new epoch");
                recovered.damaged_streams += 1;
                continue;
            }
        };
        let mut retained = Vec::new();
        let mut damaged = false;
        for entry in
            publications.range((channel.as_str(), 0)..=(channel.as_str(), u64::MAX)).map_err(|e| e.to_string())?
        {
            let (_, value) = entry.map_err(|e| e.to_string())?;
            let stored: StoredPublication = match serde_json::from_slice(value.value()) {
                Ok(stored) => stored,
                Err(error) => {
                    tracing::error!(%channel, %error, "damaged publication record; the stream starts a new epoch");
                    damaged = true;
                    break;
                }
            };
            if stored.expires_ms <= now_ms {
                continue;
            }
            let expires = now + Duration::from_millis(stored.expires_ms - now_ms);
            retained.push((expires, Arc::new(stored.into_publication())));
        }
        recovered.streams += 1;
        if damaged {
            recovered.damaged_streams += 1;
            memory.restore(&channel, herald_server::engine::memory::new_epoch(), stream.top, Vec::new());
            continue;
        }
        recovered.publications += retained.len();
        memory.restore(&channel, stream.epoch, stream.top, retained);
    }
    let cursors = read.open_table(CURSORS).map_err(|e| e.to_string())?;
    for entry in cursors.iter().map_err(|e| e.to_string())? {
        let (key, value) = entry.map_err(|e| e.to_string())?;
        let (user, channel) = key.value();
        let record: record::CursorRecord = serde_json::from_slice(value.value()).map_err(|e| e.to_string())?;
        memory.set_cursor(user, channel, StreamPosition { offset: record.offset, epoch: record.epoch });
    }
    for entry in idempotency.iter().map_err(|e| e.to_string())? {
        let (key, value) = entry.map_err(|e| e.to_string())?;
        let (channel, idempotency_key) = key.value();
        let record: IdempotencyRecord = serde_json::from_slice(value.value()).map_err(|e| e.to_string())?;
        if record.expires_ms > now_ms {
            let position = StreamPosition { offset: record.offset, epoch: record.epoch };
            memory.remember(
                channel,
                idempotency_key,
                position,
                now + Duration::from_millis(record.expires_ms - now_ms),
            );
        }
    }
    Ok(recovered)
}

/// The single writer: takes what is queued, commits it in one transaction, then makes it visible
/// and answers the publishers, in queue (= offset) order.
fn write_loop(
    db: Database,
    items: mpsc::Receiver<WriteItem>,
    memory: Arc<MemoryBroker>,
    fsync: Fsync,
    sweep_every: Duration,
    sweeps: Arc<std::sync::atomic::AtomicU64>,
) {
    let mut last_sweep = Instant::now();
    let mut last_flush = Instant::now();
    let mut unflushed = false;
    loop {
        let wait = match fsync {
            Fsync::Interval(period) if unflushed => period.saturating_sub(last_flush.elapsed()),
            _ => sweep_every.saturating_sub(last_sweep.elapsed()),
        };
        let first = match items.recv_timeout(wait) {
            Ok(item) => Some(item),
            Err(mpsc::RecvTimeoutError::Timeout) => None,
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        };
        let mut batch: Vec<WriteItem> = first.into_iter().collect();
        while batch.len() < MAX_BATCH {
            match items.try_recv() {
                Ok(item) => batch.push(item),
                Err(_) => break,
            }
        }
        let sweep = last_sweep.elapsed() >= sweep_every;
        let flush_due = matches!(fsync, Fsync::Interval(period) if unflushed && last_flush.elapsed() >= period);
        if batch.is_empty() && !sweep && !flush_due {
            continue;
        }
        let durable = match fsync {
            Fsync::Always => true,
            Fsync::Interval(period) => last_flush.elapsed() >= period,
        };
        let started = Instant::now();
        let outcome = commit(&db, &batch, sweep, durable);
        let took = started.elapsed();
        // Every publish of the batch waited this long before it could fan out: the store's
        // share of publish-to-delivery latency, and where a slow disk shows.
        metrics::histogram!("herald_store_commit_seconds", "durable" => if durable { "yes" } else { "no" })
            .record(took.as_secs_f64());
        if took >= SLOW_COMMIT {
            tracing::warn!(took_ms = took.as_millis() as u64, items = batch.len(), sweep, durable, "slow store commit");
        }
        if sweep {
            last_sweep = Instant::now();
            // More expired than one sweep takes: come back soon rather than stall one commit.
            if let Ok(true) = outcome {
                let sooner = sweep_every.saturating_sub(SWEEP_AGAIN);
                last_sweep = last_sweep.checked_sub(sooner).unwrap_or(last_sweep);
            }
            if outcome.is_ok() {
                sweeps.fetch_add(1, std::sync::atomic::Ordering::Release);
            }
        }
        let outcome = outcome.map(|_| ());
        if durable {
            last_flush = Instant::now();
            unflushed = false;
        } else if !batch.is_empty() {
            unflushed = true;
        }
        finish(batch, outcome, &memory);
    }
    // The broker is gone: flush whatever a non-durable commit left.
    if unflushed {
        let _ = commit(&db, &[], false, true);
    }
}

/// Writes a batch (and, with `sweep`, removes up to [`SWEEP_LIMIT`] expired publications). Returns
/// whether expired publications remain for another sweep.
fn commit(db: &Database, batch: &[WriteItem], sweep: bool, durable: bool) -> Result<bool, String> {
    let mut more_expired = false;
    let mut txn = db.begin_write().map_err(|e| e.to_string())?;
    txn.set_durability(if durable { Durability::Immediate } else { Durability::None }).map_err(|e| e.to_string())?;
    {
        let mut publications = txn.open_table(PUBLICATIONS).map_err(|e| e.to_string())?;
        let mut streams = txn.open_table(STREAMS).map_err(|e| e.to_string())?;
        let mut idempotency = txn.open_table(IDEMPOTENCY).map_err(|e| e.to_string())?;
        let mut cursors = txn.open_table(CURSORS).map_err(|e| e.to_string())?;
        let now_ms = unix_millis();
        for item in batch {
            match item {
                WriteItem::Publish(pending) => {
                    let PendingPublish { channel, publication, position, options, .. } = pending.as_ref();
                    let expires_ms = now_ms + options.history_ttl.as_millis() as u64;
                    let stored = StoredPublication::from_publication(publication, expires_ms);
                    let bytes = serde_json::to_vec(&stored).map_err(|e| e.to_string())?;
                    publications
                        .insert((channel.as_str(), position.offset), bytes.as_slice())
                        .map_err(|e| e.to_string())?;
                    let stream = StreamRecord { epoch: position.epoch.clone(), top: position.offset };
                    let bytes = serde_json::to_vec(&stream).map_err(|e| e.to_string())?;
                    streams.insert(channel.as_str(), bytes.as_slice()).map_err(|e| e.to_string())?;
                    // history_size bounds the file: older offsets of the channel go now.
                    if position.offset > options.history_size as u64 {
                        let keep_from = position.offset - options.history_size as u64 + 1;
                        publications
                            .retain_in((channel.as_str(), 0)..(channel.as_str(), keep_from), |_, _| false)
                            .map_err(|e| e.to_string())?;
                    }
                    if let Some(key) = &options.idempotency_key {
                        let record = IdempotencyRecord {
                            expires_ms: now_ms + IDEMPOTENCY_WINDOW.as_millis() as u64,
                            offset: position.offset,
                            epoch: position.epoch.clone(),
                        };
                        let bytes = serde_json::to_vec(&record).map_err(|e| e.to_string())?;
                        idempotency
                            .insert((channel.as_str(), key.as_str()), bytes.as_slice())
                            .map_err(|e| e.to_string())?;
                    }
                }
                WriteItem::RemoveHistory { channel, .. } => {
                    publications
                        .retain_in((channel.as_str(), 0)..=(channel.as_str(), u64::MAX), |_, _| false)
                        .map_err(|e| e.to_string())?;
                }
                WriteItem::Cursor { user, channel, position, .. } => {
                    let record = record::CursorRecord { offset: position.offset, epoch: position.epoch.clone() };
                    let bytes = serde_json::to_vec(&record).map_err(|e| e.to_string())?;
                    cursors.insert((user.as_str(), channel.as_str()), bytes.as_slice()).map_err(|e| e.to_string())?;
                }
            }
        }
        if sweep {
            // A channel's publications expire oldest first, so each channel's sweep reads only
            // its expired head and stops at the first live one: no full scan under the writer.
            let channels: Vec<String> = streams
                .iter()
                .map_err(|e| e.to_string())?
                .filter_map(|entry| entry.ok().map(|(channel, _)| channel.value().to_owned()))
                .collect();
            let mut budget = SWEEP_LIMIT;
            for channel in &channels {
                if budget == 0 {
                    more_expired = true;
                    break;
                }
                let mut expired_up_to = None;
                for entry in publications
                    .range((channel.as_str(), 0)..=(channel.as_str(), u64::MAX))
                    .map_err(|e| e.to_string())?
                {
                    let (key, value) = entry.map_err(|e| e.to_string())?;
                    let live =
                        serde_json::from_slice::<record::Expiry>(value.value()).map_or(true, |e| e.expires_ms > now_ms);
                    if live {
                        break;
                    }
                    if budget == 0 {
                        more_expired = true;
                        break;
                    }
                    budget -= 1;
                    expired_up_to = Some(key.value().1);
                }
                if let Some(last) = expired_up_to {
                    publications
                        .retain_in((channel.as_str(), 0)..=(channel.as_str(), last), |_, _| false)
                        .map_err(|e| e.to_string())?;
                }
            }
            idempotency
                .retain(|_, value| {
                    serde_json::from_slice::<record::Expiry>(value).map_or(true, |e| e.expires_ms > now_ms)
                })
                .map_err(|e| e.to_string())?;
        }
    }
    txn.commit().map_err(|e| e.to_string())?;
    Ok(more_expired)
}

fn finish(batch: Vec<WriteItem>, outcome: Result<(), String>, memory: &MemoryBroker) {
    if let Err(reason) = &outcome {
        tracing::error!(%reason, publishes = batch.len(), "store commit failed; the publishes are refused");
    }
    // A commit's publications of one channel are queued in order and delivered together, and
    // each publisher is answered once its publication went out.
    let mut published = Vec::new();
    let mut channels = std::collections::HashSet::new();
    for item in batch {
        match item {
            WriteItem::Publish(pending) => {
                let PendingPublish { channel, publication, position, options, done } = *pending;
                let answer = match &outcome {
                    Ok(()) => {
                        let delivered = memory.deliver_reserved(&channel, publication, &options);
                        if let (Ok(()), Some(key)) = (&delivered, &options.idempotency_key) {
                            memory.remember(&channel, key, position.clone(), Instant::now() + IDEMPOTENCY_WINDOW);
                        }
                        delivered.map(|()| position)
                    }
                    Err(reason) => Err(EngineError::Internal(format!("store commit failed: {reason}"))),
                };
                if answer.is_ok() {
                    channels.insert(channel);
                }
                published.push((done, answer));
            }
            WriteItem::Cursor { user, channel, position, done } => {
                let answer = match &outcome {
                    Ok(()) => {
                        memory.set_cursor(&user, &channel, position);
                        Ok(())
                    }
                    Err(reason) => Err(EngineError::Internal(reason.clone())),
                };
                let _ = done.send(answer);
            }
            WriteItem::RemoveHistory { channel, done } => {
                let answer = match &outcome {
                    Ok(()) => Ok(()),
                    Err(reason) => Err(EngineError::Internal(reason.clone())),
                };
                if answer.is_ok() {
                    memory.clear_history(&channel);
                }
                let _ = done.send(answer);
            }
        }
    }
    for channel in &channels {
        // Fails only without a registered handler, which deliver_reserved reported already.
        let _ = memory.flush(channel);
    }
    for (done, answer) in published {
        let _ = done.send(answer);
    }
}

#[async_trait]
impl Broker for DurableBroker {
    fn register_handler(&self, handler: Arc<dyn BrokerEventHandler>) {
        self.memory.register_handler(handler);
    }

    async fn subscribe(&self, channel: &str) -> Result<(), EngineError> {
        self.memory.subscribe(channel).await
    }

    async fn unsubscribe(&self, channel: &str) -> Result<(), EngineError> {
        self.memory.unsubscribe(channel).await
    }

    async fn publish(
        &self,
        channel: &str,
        mut publication: Publication,
        options: &PublishOptions,
    ) -> Result<PublishOutcome, EngineError> {
        if options.history_size == 0 {
            // Nothing to keep: delivered at once, as the memory engine does.
            return self.memory.publish(channel, publication, options).await;
        }
        if let Some(key) = &options.idempotency_key {
            if let Some(position) = self.memory.remembered(channel, key, Instant::now()) {
                return Ok(PublishOutcome { position, deduplicated: true });
            }
        }
        let (done, answer) = oneshot::channel();
        let sent = self.memory.reserve(channel, options, |position| {
            publication.offset = position.offset;
            self.writer
                .send(WriteItem::Publish(Box::new(PendingPublish {
                    channel: channel.to_owned(),
                    publication,
                    position: position.clone(),
                    options: options.clone(),
                    done,
                })))
                .is_ok()
        });
        if !sent {
            return Err(EngineError::Unavailable("store writer stopped".into()));
        }
        let position = answer.await.map_err(|_| EngineError::Unavailable("store writer stopped".into()))??;
        Ok(PublishOutcome { position, deduplicated: false })
    }

    /// The offset is reserved and the write queued before the only await (the commit).
    fn orders_on_first_poll(&self) -> bool {
        true
    }

    async fn publish_join(&self, channel: &str, info: &ClientInfo) -> Result<(), EngineError> {
        self.memory.publish_join(channel, info).await
    }

    async fn publish_leave(&self, channel: &str, info: &ClientInfo) -> Result<(), EngineError> {
        self.memory.publish_leave(channel, info).await
    }

    async fn history(&self, channel: &str, filter: &HistoryFilter) -> Result<HistoryPage, EngineError> {
        self.memory.history(channel, filter).await
    }

    async fn remove_history(&self, channel: &str) -> Result<(), EngineError> {
        let (done, answer) = oneshot::channel();
        self.writer
            .send(WriteItem::RemoveHistory { channel: channel.to_owned(), done })
            .map_err(|_| EngineError::Unavailable("store writer stopped".into()))?;
        answer.await.map_err(|_| EngineError::Unavailable("store writer stopped".into()))?
    }

    async fn save_cursor(&self, user: &str, channel: &str, position: &StreamPosition) -> Result<(), EngineError> {
        let (done, answer) = oneshot::channel();
        self.writer
            .send(WriteItem::Cursor {
                user: user.to_owned(),
                channel: channel.to_owned(),
                position: position.clone(),
                done,
            })
            .map_err(|_| EngineError::Unavailable("store writer stopped".into()))?;
        answer.await.map_err(|_| EngineError::Unavailable("store writer stopped".into()))?
    }

    async fn cursor(&self, user: &str, channel: &str) -> Result<Option<StreamPosition>, EngineError> {
        self.memory.cursor(user, channel).await
    }

    fn state(&self) -> herald_server::engine::EngineState {
        herald_server::engine::EngineState { engine: "redb", available: true, error: None }
    }
}

#[cfg(test)]
mod tests;
