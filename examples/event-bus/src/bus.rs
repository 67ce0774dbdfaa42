//! A small in-process event bus: each handler runs in its own tokio task with its own bounded
//! queue, so a handler that is slow, stuck, fails or panics never delays or stops the others. A
//! handler whose queue is full misses the event (counted as `dropped`) instead of holding up the
//! publisher and with it every other handler. Shutdown closes the queues and waits until every
//! handler has processed what was queued before.

use futures_util::future::BoxFuture;
use futures_util::FutureExt;
use parking_lot::Mutex;
use serde::Serialize;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// Events queued per handler; beyond that the handler misses events (bounded memory).
const QUEUE_CAPACITY: usize = 8192;

pub type Handler<E> = Arc<dyn Fn(E) -> BoxFuture<'static, Result<(), String>> + Send + Sync>;

#[derive(Default)]
struct Counters {
    handled: AtomicU64,
    failed: AtomicU64,
    panicked: AtomicU64,
    dropped: AtomicU64,
    last_failure: Mutex<Option<String>>,
}

/// One handler's health, as `GET /app/handlers` shows it.
#[derive(Serialize)]
pub struct HandlerStatus {
    pub name: String,
    pub handled: u64,
    pub failed: u64,
    pub panicked: u64,
    pub dropped: u64,
    pub last_failure: Option<String>,
}

struct Registered<E> {
    name: String,
    queue: mpsc::Sender<E>,
    counters: Arc<Counters>,
}

/// `publish` after `shutdown` began.
#[derive(Debug)]
pub struct Closed;

impl std::fmt::Display for Closed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the event bus is shutting down")
    }
}

pub struct EventBus<E> {
    handlers: Mutex<Option<Vec<Registered<E>>>>,
    statuses: Mutex<Vec<(String, Arc<Counters>)>>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

impl<E: Clone + Send + 'static> EventBus<E> {
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            handlers: Mutex::new(Some(Vec::new())),
            statuses: Mutex::new(Vec::new()),
            tasks: Mutex::new(Vec::new()),
        })
    }

    /// Starts a handler task. A panic inside `handler` is caught and counted for that event; the
    /// task goes on with the next event.
    pub fn register<F, Fut>(&self, name: &str, handler: F)
    where
        F: Fn(E) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = Result<(), String>> + Send + 'static,
    {
        let handler: Handler<E> = Arc::new(move |event| handler(event).boxed());
        let (queue, mut events) = mpsc::channel::<E>(QUEUE_CAPACITY);
        let counters = Arc::new(Counters::default());
        let task_counters = counters.clone();
        let task_name = name.to_owned();
        let task = tokio::spawn(async move {
            while let Some(event) = events.recv().await {
                // The call itself is inside the guarded future too: a handler may panic before it
                // returns its future as well as while it runs.
                let outcome = AssertUnwindSafe(async { handler(event).await }).catch_unwind().await;
                let counters = &task_counters;
                match outcome {
                    Ok(Ok(())) => {
                        counters.handled.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(Err(error)) => {
                        counters.failed.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(handler = %task_name, %error, "event handler failed");
                        *counters.last_failure.lock() = Some(error);
                    }
                    Err(panic) => {
                        counters.panicked.fetch_add(1, Ordering::Relaxed);
                        let message = panic
                            .downcast_ref::<String>()
                            .cloned()
                            .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                            .unwrap_or_else(|| "panic".into());
                        tracing::error!(handler = %task_name, %message, "event handler panicked; it keeps running");
                        *counters.last_failure.lock() = Some(format!("panicked: {message}"));
                    }
                }
            }
        });
        self.statuses.lock().push((name.to_owned(), counters.clone()));
        self.tasks.lock().push(task);
        if let Some(handlers) = self.handlers.lock().as_mut() {
            handlers.push(Registered { name: name.to_owned(), queue, counters });
        }
    }

    /// Queues the event for every handler, without waiting for any of them.
    pub fn publish(&self, event: E) -> Result<(), Closed> {
        let handlers = self.handlers.lock();
        let handlers = handlers.as_ref().ok_or(Closed)?;
        for handler in handlers {
            match handler.queue.try_send(event.clone()) {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Full(_)) => {
                    handler.counters.dropped.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(handler = %handler.name, "handler queue full; event dropped for it");
                }
                Err(mpsc::error::TrySendError::Closed(_)) => {
                    tracing::error!(handler = %handler.name, "handler task is gone; event not delivered to it");
                }
            }
        }
        Ok(())
    }

    pub fn statuses(&self) -> Vec<HandlerStatus> {
        self.statuses
            .lock()
            .iter()
            .map(|(name, c)| HandlerStatus {
                name: name.clone(),
                handled: c.handled.load(Ordering::Relaxed),
                failed: c.failed.load(Ordering::Relaxed),
                panicked: c.panicked.load(Ordering::Relaxed),
                dropped: c.dropped.load(Ordering::Relaxed),
                last_failure: c.last_failure.lock().clone(),
            })
            .collect()
    }

    /// Events queued and not yet taken by their handlers.
    pub fn pending(&self) -> usize {
        self.handlers
            .lock()
            .as_ref()
            .map_or(0, |handlers| handlers.iter().map(|h| QUEUE_CAPACITY - h.queue.capacity()).sum())
    }

    /// Refuses new events, then waits (up to `timeout`) until every handler has processed the
    /// events queued before. Returns how many were still queued when it started.
    pub async fn shutdown(&self, timeout: Duration) -> usize {
        let pending = self.pending();
        // Dropping the senders ends each task's loop once its queue is empty.
        drop(self.handlers.lock().take());
        let tasks: Vec<JoinHandle<()>> = std::mem::take(&mut *self.tasks.lock());
        let drained = async {
            for task in tasks {
                let _ = task.await;
            }
        };
        if tokio::time::timeout(timeout, drained).await.is_err() {
            tracing::warn!("event bus: handlers did not drain within {timeout:?}");
        }
        pending
    }
}
