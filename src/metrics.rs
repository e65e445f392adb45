//! What `martmap run --metrics-addr` serves: Prometheus text at `/metrics`
//! and the service's state at `/health`.
//!
//! Counters move when a batch commits, so they count what is in the
//! database, not what was read. Per topic: `martmap_messages_total`,
//! `martmap_rows_total`, `martmap_discards_total`, `martmap_batches_total`
//! and the `martmap_batch_duration_seconds` histogram (one database
//! transaction). Per partition: `martmap_consumer_lag`, the partition's high
//! watermark less the consumer's position. `martmap_kafka_broker_down` (per
//! topic) and `martmap_database_down` are 1 during an outage.

use crate::pipeline::DRIFT_SAMPLE;
use crate::source::kafka::Gap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

type Labels = Vec<(&'static str, String)>;

/// The registry and the metrics in it; shared by the consumers and the writer.
pub struct Metrics {
    registry: Registry,
    messages: Family<Labels, Counter>,
    rows: Family<Labels, Counter>,
    discards: Family<Labels, Counter>,
    batches: Family<Labels, Counter>,
    batch_duration: Family<Labels, Histogram, fn() -> Histogram>,
    lag: Family<Labels, Gauge>,
    broker_down: Family<Labels, Gauge>,
    database_down: Gauge,
    reloads: Family<Labels, Counter>,
    gaps: Family<Labels, Counter>,
    unread: Family<Labels, Counter>,
    /// Topics whose broker is down now, for /health.
    brokers_down: AtomicU64,
    database_is_down: AtomicBool,
}

fn batch_histogram() -> Histogram {
    // 1 ms to about 33 s.
    Histogram::new(exponential_buckets(0.001, 2.0, 16))
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("martmap");
        let messages = Family::<Labels, Counter>::default();
        let rows = Family::<Labels, Counter>::default();
        let discards = Family::<Labels, Counter>::default();
        let batches = Family::<Labels, Counter>::default();
        let batch_duration = Family::new_with_constructor(batch_histogram as fn() -> Histogram);
        let lag = Family::<Labels, Gauge>::default();
        let broker_down = Family::<Labels, Gauge>::default();
        let database_down = Gauge::default();
        let reloads = Family::<Labels, Counter>::default();
        let gaps = Family::<Labels, Counter>::default();
        let unread = Family::<Labels, Counter>::default();
        registry.register(
            "messages",
            "Messages committed to the database (loaded or discarded)",
            messages.clone(),
        );
        registry.register("rows", "Fact rows written", rows.clone());
        registry.register(
            "discards",
            "Messages discarded to CTL_DISCARD",
            discards.clone(),
        );
        registry.register("batches", "Batches committed", batches.clone());
        registry.register(
            "batch_duration_seconds",
            "Time to write and commit one batch",
            batch_duration.clone(),
        );
        registry.register(
            "consumer_lag",
            "Messages in the partition after the consumer's position",
            lag.clone(),
        );
        registry.register(
            "kafka_broker_down",
            "1 while the topic's brokers cannot be used",
            broker_down.clone(),
        );
        registry.register(
            "database_down",
            "1 while the database is unavailable",
            database_down.clone(),
        );
        registry.register(
            "config_reloads",
            "Configuration reloads of a running `run`, by result (applied, rejected)",
            reloads.clone(),
        );
        registry.register(
            "offset_gaps",
            "Partitions whose next offset the broker no longer had (kind retention: messages deleted before they were loaded; beyond-end: the topic recreated), by topic and kind",
            gaps.clone(),
        );
        registry.register(
            "unread_attribute_events",
            format!(
                "Sampled loaded events (one in {DRIFT_SAMPLE}) carrying an attribute path the mapping does not read, by topic and path (arrays as [*]; at most 100 paths per topic)"
            ),
            unread.clone(),
        );
        Metrics {
            registry,
            messages,
            rows,
            discards,
            batches,
            batch_duration,
            lag,
            broker_down,
            database_down,
            reloads,
            gaps,
            unread,
            brokers_down: AtomicU64::new(0),
            database_is_down: AtomicBool::new(false),
        }
    }

    /// A configuration reload: applied, or rejected (the running one kept).
    pub fn reload(&self, applied: bool) {
        let result = if applied { "applied" } else { "rejected" };
        self.reloads
            .get_or_create(&vec![("result", result.to_owned())])
            .inc();
    }

    /// An offset gap found in `topic`.
    pub fn gap(&self, topic: &str, gap: Gap) {
        let labels = vec![
            ("topic", topic.to_owned()),
            ("kind", gap.kind.as_str().to_owned()),
        ];
        self.gaps.get_or_create(&labels).inc();
    }

    /// A committed batch's sampled events carrying paths the mapping of
    /// `topic` does not read.
    pub fn unread(&self, topic: &str, unread: &[(String, u64)]) {
        for (path, events) in unread {
            let labels = vec![("topic", topic.to_owned()), ("path", path.clone())];
            self.unread.get_or_create(&labels).inc_by(*events);
        }
    }

    /// One batch of `topic` committed.
    pub fn batch(
        &self,
        topic: &str,
        messages: usize,
        rows: usize,
        discards: usize,
        took: Duration,
    ) {
        let labels = topic_labels(topic);
        self.messages.get_or_create(&labels).inc_by(messages as u64);
        self.rows.get_or_create(&labels).inc_by(rows as u64);
        self.discards.get_or_create(&labels).inc_by(discards as u64);
        self.batches.get_or_create(&labels).inc();
        self.batch_duration
            .get_or_create(&labels)
            .observe(took.as_secs_f64());
    }

    pub fn lag(&self, topic: &str, partition: i32, lag: i64) {
        let labels = vec![
            ("topic", topic.to_owned()),
            ("partition", partition.to_string()),
        ];
        self.lag.get_or_create(&labels).set(lag);
    }

    /// A partition this consumer no longer owns has no lag of its own.
    pub fn forget_lag(&self, topic: &str, partition: i32) {
        let labels = vec![
            ("topic", topic.to_owned()),
            ("partition", partition.to_string()),
        ];
        self.lag.remove(&labels);
    }

    pub fn broker_down(&self, topic: &str, down: bool) {
        let previous = self
            .broker_down
            .get_or_create(&topic_labels(topic))
            .set(i64::from(down));
        match (previous != 0, down) {
            (false, true) => {
                self.brokers_down.fetch_add(1, Ordering::SeqCst);
            }
            (true, false) => {
                self.brokers_down.fetch_sub(1, Ordering::SeqCst);
            }
            _ => {}
        }
    }

    pub fn database_down(&self, down: bool) {
        self.database_down.set(i64::from(down));
        self.database_is_down.store(down, Ordering::SeqCst);
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut text = String::new();
        encode(&mut text, &self.registry).expect("writing to a String cannot fail");
        text
    }

    /// `None` when healthy, else what is wrong.
    pub fn trouble(&self) -> Option<String> {
        let mut trouble = Vec::new();
        if self.brokers_down.load(Ordering::SeqCst) > 0 {
            trouble.push("kafka brokers down");
        }
        if self.database_is_down.load(Ordering::SeqCst) {
            trouble.push("database down");
        }
        (!trouble.is_empty()).then(|| trouble.join(", "))
    }
}

fn topic_labels(topic: &str) -> Labels {
    vec![("topic", topic.to_owned())]
}

/// Serves `/metrics` and `/health` on `listener` until the runtime stops.
/// `/health` answers 200 `ok`, or 503 naming what is down.
pub async fn serve(
    listener: tokio::net::TcpListener,
    metrics: Arc<Metrics>,
) -> std::io::Result<()> {
    use axum::http::{StatusCode, header};
    use axum::routing::get;
    let text = metrics.clone();
    let health = metrics;
    let app = axum::Router::new()
        .route(
            "/metrics",
            get(move || async move {
                (
                    [(
                        header::CONTENT_TYPE,
                        "text/plain; version=0.0.4; charset=utf-8",
                    )],
                    text.render(),
                )
            }),
        )
        .route(
            "/health",
            get(move || async move {
                match health.trouble() {
                    None => (StatusCode::OK, "ok\n".to_owned()),
                    Some(trouble) => (StatusCode::SERVICE_UNAVAILABLE, format!("{trouble}\n")),
                }
            }),
        );
    axum::serve(listener, app).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_show_per_topic_and_outages_in_health() {
        let metrics = Metrics::new();
        metrics.batch("t", 40, 200, 2, Duration::from_millis(12));
        metrics.batch("t", 10, 50, 0, Duration::from_millis(3));
        metrics.lag("t", 0, 7);
        let text = metrics.render();
        for line in [
            "martmap_messages_total{topic=\"t\"} 50",
            "martmap_rows_total{topic=\"t\"} 250",
            "martmap_discards_total{topic=\"t\"} 2",
            "martmap_batches_total{topic=\"t\"} 2",
            "martmap_batch_duration_seconds_count{topic=\"t\"} 2",
            "martmap_consumer_lag{topic=\"t\",partition=\"0\"} 7",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} not in:\n{text}");
        }
        assert_eq!(metrics.trouble(), None);
        metrics.broker_down("t", true);
        metrics.broker_down("t", true);
        metrics.database_down(true);
        assert_eq!(
            metrics.trouble().as_deref(),
            Some("kafka brokers down, database down")
        );
        metrics.broker_down("t", false);
        metrics.database_down(false);
        assert_eq!(metrics.trouble(), None);
    }
}
