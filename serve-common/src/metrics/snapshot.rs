//! A process's metrics as values (what travels between processes), their
//! sum across processes, and their rendering in the Prometheus text
//! format (with `metrics-exporter-prometheus`' writers).

use std::collections::BTreeMap;

use indexmap::IndexMap;
use metrics::{Key, Label};
use metrics_exporter_prometheus::formatting::{
    sanitize_metric_name, write_help_line, write_metric_line, write_type_line,
};
use metrics_exporter_prometheus::LabelSet;
use serde::{Deserialize, Serialize};

/// A metric's name and labels (in the order they were given).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub(crate) struct Series {
    pub(crate) name: String,
    pub(crate) labels: Vec<(String, String)>,
}

impl Series {
    pub(crate) fn new(name: &str, labels: &[(&str, &str)]) -> Self {
        Self {
            name: name.to_owned(),
            labels: labels
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        }
    }

    pub(crate) fn of_key(key: &Key) -> Self {
        Self {
            name: key.name().to_owned(),
            labels: key
                .labels()
                .map(|l| (l.key().to_owned(), l.value().to_owned()))
                .collect(),
        }
    }

    fn with_label(&self, key: &str, value: &str) -> Self {
        let mut labels: Vec<_> = self
            .labels
            .iter()
            .filter(|(k, _)| k != key)
            .cloned()
            .collect();
        labels.push((key.to_owned(), value.to_owned()));
        Self {
            name: self.name.clone(),
            labels,
        }
    }

    fn label_set(&self) -> LabelSet {
        let labels: Vec<Label> = self
            .labels
            .iter()
            .map(|(k, v)| Label::new(k.clone(), v.clone()))
            .collect();
        LabelSet::from_key_and_global(
            &Key::from_parts(self.name.clone(), labels),
            &IndexMap::new(),
        )
    }
}

/// A fixed-bucket histogram's values: a count per bucket (not cumulative;
/// the last is `+Inf`) and the sum.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub(crate) struct HistogramData {
    pub(crate) bounds: Vec<f64>,
    pub(crate) counts: Vec<u64>,
    pub(crate) sum: f64,
}

/// The values of a process's metrics (or of several processes' summed).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub(crate) struct Snapshot {
    pub(crate) counters: BTreeMap<Series, u64>,
    pub(crate) gauges: BTreeMap<Series, f64>,
    pub(crate) histograms: BTreeMap<Series, HistogramData>,
    /// Descriptions by metric name (`# HELP`).
    pub(crate) help: BTreeMap<String, String>,
    /// Histograms whose processes disagree on the buckets (after a change
    /// of `metrics.buckets`, say): left out of a sum, whatever the order
    /// the processes' values came in.
    #[serde(skip)]
    conflicts: std::collections::BTreeSet<Series>,
}

impl Snapshot {
    pub(crate) fn counter(&mut self, name: &str, labels: &[(&str, &str)], value: u64) {
        self.counters.insert(Series::new(name, labels), value);
    }

    pub(crate) fn gauge(&mut self, name: &str, labels: &[(&str, &str)], value: f64) {
        self.gauges.insert(Series::new(name, labels), value);
    }

    pub(crate) fn describe(&mut self, name: &str, help: &str) {
        self.help.insert(name.to_owned(), help.to_owned());
    }

    /// Adds `other`'s counters and histograms to these (a histogram whose
    /// buckets differ from the ones summed so far is left out of the sum
    /// altogether, with a DEBUG line), and its descriptions.
    pub(crate) fn add_sums(&mut self, other: &Snapshot) {
        for (series, value) in &other.counters {
            let total = self.counters.entry(series.clone()).or_default();
            *total = total.saturating_add(*value);
        }
        for (series, data) in &other.histograms {
            if self.conflicts.contains(series) {
                continue;
            }
            match self.histograms.get_mut(series) {
                None => {
                    self.histograms.insert(series.clone(), data.clone());
                }
                Some(total) if total.bounds == data.bounds => {
                    for (sum, count) in total.counts.iter_mut().zip(&data.counts) {
                        *sum = sum.saturating_add(*count);
                    }
                    total.sum += data.sum;
                }
                Some(_) => {
                    tracing::debug!(
                        metric = %series.name,
                        "the processes' histograms have other buckets: left out of the sum"
                    );
                    self.histograms.remove(series);
                    self.conflicts.insert(series.clone());
                }
            }
        }
        self.add_help(other);
    }

    /// Adds `other`'s gauges, each with a `pid` label.
    pub(crate) fn add_gauges(&mut self, other: &Snapshot, pid: u32) {
        let pid = pid.to_string();
        for (series, value) in &other.gauges {
            self.gauges.insert(series.with_label("pid", &pid), *value);
        }
        self.add_help(other);
    }

    fn add_help(&mut self, other: &Snapshot) {
        for (name, help) in &other.help {
            self.help
                .entry(name.clone())
                .or_insert_with(|| help.clone());
        }
    }

    /// The Prometheus text exposition format (version 0.0.4), metrics in
    /// name order.
    pub(crate) fn render(&self) -> String {
        let mut out = String::with_capacity(
            64 * (self.counters.len() + self.gauges.len() + 12 * self.histograms.len()) + 256,
        );
        // One family per name as written (sanitized), in name order: the
        // raw names that sanitize to it, of one type (a name used with a
        // second type is left out, with a DEBUG line: two TYPE lines would
        // make Prometheus refuse the whole scrape).
        let mut families: BTreeMap<String, (u8, Vec<&str>)> = BTreeMap::new();
        let raw = self
            .counters
            .keys()
            .map(|s| (s.name.as_str(), 0))
            .chain(self.gauges.keys().map(|s| (s.name.as_str(), 1)))
            .chain(self.histograms.keys().map(|s| (s.name.as_str(), 2)));
        for (name, kind) in raw {
            let family = families
                .entry(sanitize_metric_name(name))
                .or_insert((kind, Vec::new()));
            if family.0 != kind {
                tracing::debug!(
                    metric = name,
                    "a metric name used with two types: the second is left out"
                );
            } else if family.1.last() != Some(&name) {
                family.1.push(name);
            }
        }
        for (safe, (kind, names)) in &families {
            let type_name = ["counter", "gauge", "histogram"][usize::from(*kind)];
            if let Some(help) = names.iter().find_map(|n| self.help.get(*n)) {
                write_help_line(&mut out, safe, None, None, help);
            }
            write_type_line(&mut out, safe, None, None, type_name);
            for name in names {
                self.render_series(&mut out, safe, name, *kind);
            }
        }
        out
    }

    fn render_series(&self, out: &mut String, safe: &str, name: &str, kind: u8) {
        let out = &mut *out;
        {
            match kind {
                0 => {
                    for (series, value) in self.range(&self.counters, name) {
                        write_metric_line::<&str, _>(
                            out,
                            safe,
                            None,
                            &series.label_set(),
                            None,
                            value,
                            None,
                        );
                    }
                }
                1 => {
                    for (series, value) in self.range(&self.gauges, name) {
                        write_metric_line::<&str, _>(
                            out,
                            safe,
                            None,
                            &series.label_set(),
                            None,
                            PromFloat(*value),
                            None,
                        );
                    }
                }
                _ => {
                    for (series, data) in self.range(&self.histograms, name) {
                        let labels = series.label_set();
                        let mut cumulative = 0u64;
                        for (bound, count) in data.bounds.iter().zip(&data.counts) {
                            cumulative = cumulative.saturating_add(*count);
                            write_metric_line(
                                out,
                                safe,
                                Some("bucket"),
                                &labels,
                                Some(("le", PromFloat(*bound))),
                                cumulative,
                                None,
                            );
                        }
                        let count = data.counts.iter().fold(0u64, |a, c| a.saturating_add(*c));
                        write_metric_line(
                            out,
                            safe,
                            Some("bucket"),
                            &labels,
                            Some(("le", "+Inf")),
                            count,
                            None,
                        );
                        write_metric_line::<&str, _>(
                            out,
                            safe,
                            Some("sum"),
                            &labels,
                            None,
                            PromFloat(data.sum),
                            None,
                        );
                        write_metric_line::<&str, _>(
                            out,
                            safe,
                            Some("count"),
                            &labels,
                            None,
                            count,
                            None,
                        );
                    }
                }
            }
        }
    }

    fn range<'a, V>(
        &self,
        map: &'a BTreeMap<Series, V>,
        name: &'a str,
    ) -> impl Iterator<Item = (&'a Series, &'a V)> + 'a {
        let first = Series {
            name: name.to_owned(),
            labels: Vec::new(),
        };
        map.range(first..)
            .take_while(move |(series, _)| series.name == name)
    }
}

/// A float as the text format writes it (`+Inf`, `-Inf`, `NaN`).
struct PromFloat(f64);

impl std::fmt::Display for PromFloat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            v if v.is_nan() => f.write_str("NaN"),
            v if v == f64::INFINITY => f.write_str("+Inf"),
            v if v == f64::NEG_INFINITY => f.write_str("-Inf"),
            v => write!(f, "{v}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_family_per_written_name_and_one_type_each() {
        let mut snapshot = Snapshot::default();
        snapshot.counter("a.b", &[], 1);
        snapshot.counter("a_b", &[("x", "1")], 2);
        snapshot.gauge("a-b", &[], 3.0);
        snapshot.describe("a.b", "the a b");
        assert_eq!(
            snapshot.render(),
            "# HELP a_b the a b\n# TYPE a_b counter\na_b 1\na_b{x=\"1\"} 2\n"
        );
    }

    #[test]
    fn histograms_with_other_buckets_leave_the_sum_whatever_the_order() {
        let histogram = |bounds: Vec<f64>| {
            let mut snapshot = Snapshot::default();
            let counts = vec![1; bounds.len() + 1];
            snapshot.histograms.insert(
                Series::new("h", &[]),
                HistogramData {
                    bounds,
                    counts,
                    sum: 1.0,
                },
            );
            snapshot
        };
        let (one, two) = (histogram(vec![1.0]), histogram(vec![1.0, 2.0]));
        for order in [[&one, &two, &one], [&two, &one, &one]] {
            let mut total = Snapshot::default();
            for snapshot in order {
                total.add_sums(snapshot);
            }
            assert!(total.histograms.is_empty(), "{total:?}");
        }
    }

    #[test]
    fn sums_counters_and_histograms_and_labels_gauges_by_pid() {
        let mut one = Snapshot::default();
        one.counter("c_total", &[("a", "x")], 2);
        one.gauge("g", &[], 1.5);
        one.histograms.insert(
            Series::new("h_seconds", &[]),
            HistogramData {
                bounds: vec![0.1, 1.0],
                counts: vec![1, 0, 2],
                sum: 5.0,
            },
        );
        one.describe("c_total", "what c counts");
        let mut total = Snapshot::default();
        total.add_sums(&one);
        total.add_sums(&one);
        total.add_gauges(&one, 7);
        total.add_gauges(&one, 8);
        let text = total.render();
        assert_eq!(
            text,
            "# HELP c_total what c counts\n\
             # TYPE c_total counter\n\
             c_total{a=\"x\"} 4\n\
             # TYPE g gauge\n\
             g{pid=\"7\"} 1.5\n\
             g{pid=\"8\"} 1.5\n\
             # TYPE h_seconds histogram\n\
             h_seconds_bucket{le=\"0.1\"} 2\n\
             h_seconds_bucket{le=\"1\"} 2\n\
             h_seconds_bucket{le=\"+Inf\"} 6\n\
             h_seconds_sum 10\n\
             h_seconds_count 6\n"
        );
    }
}
