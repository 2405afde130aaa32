//! The recorder behind the `metrics` facade: metrics-util's registry
//! (sharded maps, read-locked to find a handle) holding atomics, and
//! fixed-bucket histograms so that processes' histograms can be summed.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use metrics::{Counter, Gauge, Histogram, HistogramFn, Key, KeyName, Metadata, SharedString, Unit};
use metrics_util::registry::{Registry, Storage};
use parking_lot::RwLock;

use super::snapshot::{HistogramData, Series, Snapshot};

/// The default histogram buckets, in seconds (Prometheus' client defaults).
pub(crate) const DEFAULT_BUCKETS: [f64; 11] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// A histogram of fixed buckets: one atomic count per bucket (the last is
/// `+Inf`) and the sum, so recording takes no lock.
#[derive(Debug)]
pub(crate) struct Buckets {
    bounds: Arc<[f64]>,
    counts: Box<[AtomicU64]>,
    /// The sum of the values, as `f64` bits.
    sum: AtomicU64,
}

impl Buckets {
    fn new(bounds: Arc<[f64]>) -> Self {
        let counts = (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect();
        Self {
            bounds,
            counts,
            sum: AtomicU64::new(0f64.to_bits()),
        }
    }

    fn data(&self) -> HistogramData {
        HistogramData {
            bounds: self.bounds.to_vec(),
            counts: self
                .counts
                .iter()
                .map(|c| c.load(Ordering::Relaxed))
                .collect(),
            sum: f64::from_bits(self.sum.load(Ordering::Relaxed)),
        }
    }
}

impl HistogramFn for Buckets {
    fn record(&self, value: f64) {
        if value.is_nan() {
            return;
        }
        // The first bucket whose bound is at least the value (`le`).
        let index = self.bounds.partition_point(|bound| *bound < value);
        self.counts[index].fetch_add(1, Ordering::Relaxed);
        let _ = self
            .sum
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |bits| {
                Some((f64::from_bits(bits) + value).to_bits())
            });
    }
}

/// What the registry stores: atomics, and [`Buckets`].
#[derive(Debug)]
struct BucketStorage {
    bounds: Arc<[f64]>,
}

impl Storage<Key> for BucketStorage {
    type Counter = Arc<AtomicU64>;
    type Gauge = Arc<AtomicU64>;
    type Histogram = Arc<Buckets>;

    fn counter(&self, _: &Key) -> Self::Counter {
        Arc::new(AtomicU64::new(0))
    }

    fn gauge(&self, _: &Key) -> Self::Gauge {
        Arc::new(AtomicU64::new(0f64.to_bits()))
    }

    fn histogram(&self, _: &Key) -> Self::Histogram {
        Arc::new(Buckets::new(self.bounds.clone()))
    }
}

/// The recorder serve-common installs for the `metrics` facade (see
/// [`install`](super::install)): what the application's
/// `metrics::counter!`, `gauge!` and `histogram!` record lands in the
/// service's scrape beside serve-common's own metrics.
pub struct ServiceRecorder {
    registry: Registry<Key, BucketStorage>,
    help: RwLock<HashMap<String, String>>,
}

impl std::fmt::Debug for ServiceRecorder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceRecorder").finish_non_exhaustive()
    }
}

impl ServiceRecorder {
    /// A recorder whose histograms have these bucket bounds (sorted,
    /// finite; `+Inf` is implied).
    pub(crate) fn new(bounds: &[f64]) -> Self {
        Self {
            registry: Registry::new(BucketStorage {
                bounds: bounds.into(),
            }),
            help: RwLock::new(HashMap::new()),
        }
    }

    fn describe(&self, key: KeyName, description: SharedString) {
        if !description.is_empty() {
            self.help
                .write()
                .insert(key.as_str().to_owned(), description.into_owned());
        }
    }

    /// Everything recorded, as it is now.
    pub(crate) fn snapshot(&self) -> Snapshot {
        let mut snapshot = Snapshot::default();
        self.registry.visit_counters(|key, counter| {
            snapshot
                .counters
                .insert(Series::of_key(key), counter.load(Ordering::Relaxed));
        });
        self.registry.visit_gauges(|key, gauge| {
            snapshot.gauges.insert(
                Series::of_key(key),
                f64::from_bits(gauge.load(Ordering::Relaxed)),
            );
        });
        self.registry.visit_histograms(|key, histogram| {
            snapshot
                .histograms
                .insert(Series::of_key(key), histogram.data());
        });
        snapshot.help.extend(
            self.help
                .read()
                .iter()
                .map(|(name, help)| (name.clone(), help.clone())),
        );
        snapshot
    }
}

impl metrics::Recorder for ServiceRecorder {
    fn describe_counter(&self, key: KeyName, _: Option<Unit>, description: SharedString) {
        self.describe(key, description);
    }

    fn describe_gauge(&self, key: KeyName, _: Option<Unit>, description: SharedString) {
        self.describe(key, description);
    }

    fn describe_histogram(&self, key: KeyName, _: Option<Unit>, description: SharedString) {
        self.describe(key, description);
    }

    fn register_counter(&self, key: &Key, _: &Metadata<'_>) -> Counter {
        self.registry
            .get_or_create_counter(key, |counter| Counter::from_arc(counter.clone()))
    }

    fn register_gauge(&self, key: &Key, _: &Metadata<'_>) -> Gauge {
        self.registry
            .get_or_create_gauge(key, |gauge| Gauge::from_arc(gauge.clone()))
    }

    fn register_histogram(&self, key: &Key, _: &Metadata<'_>) -> Histogram {
        self.registry
            .get_or_create_histogram(key, |histogram| Histogram::from_arc(histogram.clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use metrics::Recorder as _;

    #[test]
    fn histogram_buckets_take_the_first_bound_at_least_the_value() {
        let recorder = ServiceRecorder::new(&[0.1, 1.0]);
        let key = Key::from_name("h");
        let metadata = Metadata::new("t", metrics::Level::INFO, None);
        let histogram = recorder.register_histogram(&key, &metadata);
        for value in [0.05, 0.1, 0.5, 1.0, 3.0, f64::NAN] {
            histogram.record(value);
        }
        let data = &recorder.snapshot().histograms[&Series::of_key(&key)];
        assert_eq!(data.counts, [2, 2, 1]);
        assert!((data.sum - 4.65).abs() < 1e-9);
    }
}
