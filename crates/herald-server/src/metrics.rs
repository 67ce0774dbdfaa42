//! Prometheus metrics. One recorder per process: several nodes in one process (tests, embedding)
//! share it, so their counters add up.

use metrics::{counter, gauge, histogram};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use std::sync::OnceLock;
use std::time::Duration;

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// Installs the process-wide recorder (once) and returns the handle that renders `/metrics`.
/// `None` when the embedding application installed its own recorder first.
pub fn install() -> Option<PrometheusHandle> {
    HANDLE
        .get_or_init(|| {
            let buckets = [0.0001, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5];
            let builder = PrometheusBuilder::new().set_buckets(&buckets).ok()?;
            let recorder = builder.build_recorder();
            let handle = recorder.handle();
            metrics::set_global_recorder(recorder).ok()?;
            Some(handle)
        })
        .clone()
}

pub fn connection_opened() {
    gauge!("herald_connections").increment(1.0);
    counter!("herald_connections_total").increment(1);
}

pub fn connection_closed() {
    gauge!("herald_connections").decrement(1.0);
}

pub fn subscription_added() {
    gauge!("herald_subscriptions").increment(1.0);
}

pub fn subscription_removed() {
    gauge!("herald_subscriptions").decrement(1.0);
}

pub fn publication(source: &'static str) {
    counter!("herald_publications_total", "source" => source).increment(1);
}

pub fn deliveries(count: usize) {
    counter!("herald_deliveries_total").increment(count as u64);
}

pub fn command(method: &'static str, elapsed: Duration) {
    histogram!("herald_command_duration_seconds", "method" => method).record(elapsed.as_secs_f64());
}

pub fn api_call(method: &'static str, elapsed: Duration) {
    histogram!("herald_api_duration_seconds", "method" => method).record(elapsed.as_secs_f64());
}

pub fn error(transport: &'static str, code: u32) {
    counter!("herald_errors_total", "transport" => transport, "code" => code.to_string()).increment(1);
}

pub fn disconnect(code: u16) {
    counter!("herald_disconnects_total", "code" => code.to_string()).increment(1);
}

/// Connections whose queue is backed up now (see `congestion`).
pub fn backed_up_connections(count: usize) {
    gauge!("herald_connections_backed_up").set(count as f64);
}

/// A publish waited for the server's queues to drain (see `congestion`).
pub fn publish_backpressure(waited: Duration) {
    counter!("herald_publish_backpressure_total").increment(1);
    histogram!("herald_publish_backpressure_seconds").record(waited.as_secs_f64());
}

pub fn slow_client() {
    counter!("herald_slow_clients_total").increment(1);
}

/// A publication a slow client will not receive live, by its priority and why.
pub fn shed(priority: herald_core::protocol::Priority, reason: &'static str) {
    counter!("herald_publications_shed_total", "priority" => priority.as_str(), "reason" => reason).increment(1);
}

pub fn bad_input(kind: &'static str) {
    counter!("herald_bad_input_total", "kind" => kind).increment(1);
}

pub fn ack_pending(delta: f64) {
    gauge!("herald_acks_pending").increment(delta);
}

pub fn acks(count: usize) {
    counter!("herald_acks_total").increment(count as u64);
}

pub fn ack_retry() {
    counter!("herald_ack_retries_total").increment(1);
}

pub fn ack_expired() {
    counter!("herald_ack_expired_total").increment(1);
}

/// A call failed because the engine (Redis) could not be reached.
pub fn engine_unavailable() {
    counter!("herald_engine_unavailable_errors_total").increment(1);
}

/// 1 while the engine can serve calls, 0 while it cannot; set when `/metrics` is read.
pub fn engine_state(state: &crate::engine::EngineState) {
    gauge!("herald_engine_available", "engine" => state.engine).set(if state.available { 1.0 } else { 0.0 });
}
