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

    /// Adds `other`'s counters and histograms to these (a histogram with
    /// other buckets is left out, with a DEBUG line), and its descriptions.
    pub(crate) fn add_sums(&mut self, other: &Snapshot) {
        for (series, value) in &other.counters {
            let total = self.counters.entry(series.clone()).or_default();
            *total = total.saturating_add(*value);
        }
        for (series, data) in &other.histograms {
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
                Some(_) => tracing::debug!(
                    metric = %series.name,
                    "a process's histogram has other buckets: left out of the sum"
                ),
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
        let family = |out: &mut String, name: &str, kind: &str, first: &mut Option<String>| {
            if first.as_deref() != Some(name) {
                if let Some(help) = self.help.get(name) {
                    write_help_line(out, name, None, None, help);
                }
                write_type_line(out, name, None, None, kind);
                *first = Some(name.to_owned());
            }
        };
        // Families in name order, whatever their type.
        let mut names: Vec<(&str, u8)> = Vec::new();
        names.extend(self.counters.keys().map(|s| (s.name.as_str(), 0)));
        names.extend(self.gauges.keys().map(|s| (s.name.as_str(), 1)));
        names.extend(self.histograms.keys().map(|s| (s.name.as_str(), 2)));
        names.sort_unstable();
        names.dedup();
        for (name, kind) in names {
            let mut written = None;
            let safe = sanitize_metric_name(name);
            match kind {
                0 => {
                    for (series, value) in self.range(&self.counters, name) {
                        family(&mut out, &safe, "counter", &mut written);
                        write_metric_line::<&str, _>(
                            &mut out,
                            &safe,
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
                        family(&mut out, &safe, "gauge", &mut written);
                        write_metric_line::<&str, _>(
                            &mut out,
                            &safe,
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
                        family(&mut out, &safe, "histogram", &mut written);
                        let labels = series.label_set();
                        let mut cumulative = 0u64;
                        for (bound, count) in data.bounds.iter().zip(&data.counts) {
                            cumulative += count;
                            write_metric_line(
                                &mut out,
                                &safe,
                                Some("bucket"),
                                &labels,
                                Some(("le", PromFloat(*bound))),
                                cumulative,
                                None,
                            );
                        }
                        let count: u64 = data.counts.iter().sum();
                        write_metric_line(
                            &mut out,
                            &safe,
                            Some("bucket"),
                            &labels,
                            Some(("le", "+Inf")),
                            count,
                            None,
                        );
                        write_metric_line::<&str, _>(
                            &mut out,
                            &safe,
                            Some("sum"),
                            &labels,
                            None,
                            PromFloat(data.sum),
                            None,
                        );
                        write_metric_line::<&str, _>(
                            &mut out,
                            &safe,
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
        out
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
