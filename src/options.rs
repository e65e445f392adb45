//! The Genesys-style options file: `[section]` headers, `key=value` lines
//! and bare flag keys, as in Info Mart's configuration.
//!
//! A `[kafka-<cluster>]` section configures one Kafka cluster: its
//! `g:topic:<topic>=<MAPPING>` lines bind topics to mappings, other `g:`
//! keys are martmap's own settings, and every other key is a native Kafka
//! client option, kept verbatim and in order for the consumer. Parsing
//! collects every syntax error with its span; [`OptionsFile::clusters`] and
//! [`check_mappings`] check the meaning. Values are never logged here.

use miette::{Diagnostic, SourceSpan};
use thiserror::Error;

use crate::diagnostic::suggest;

/// The `g:` options martmap knows, besides `g:topic:<topic>`: the batching
/// of each bound topic. A batch is one database transaction; it is written
/// when it holds `g:batch-size` messages or `g:batch-timeout-ms` after the
/// last write, whichever comes first.
pub const G_OPTIONS: &[&str] = &["g:batch-size", "g:batch-timeout-ms"];

/// Messages per batch unless `g:batch-size` says otherwise.
pub const DEFAULT_BATCH_SIZE: usize = 1000;

/// Longest wait of a partial batch unless `g:batch-timeout-ms` says otherwise.
pub const DEFAULT_BATCH_TIMEOUT_MS: u64 = 1000;

/// Client options martmap sets unless the section does.
pub const CLIENT_DEFAULTS: &[(&str, &str)] =
    &[("group.id", "martmap"), ("auto.offset.reset", "earliest")];

/// Client options martmap sets itself: offsets are stored in the database
/// with the rows, and `run --once` needs end-of-partition events.
pub const CLIENT_MANAGED: &[(&str, &str)] = &[
    ("enable.auto.commit", "false"),
    ("enable.auto.offset.store", "false"),
    ("enable.partition.eof", "true"),
];

/// Whether a client option holds a secret that must never be shown.
pub fn is_secret(key: &str) -> bool {
    let key = key.to_ascii_lowercase();
    key.contains("password")
        || key == "sasl.jaas.config"
        || key.starts_with("ssl.key")
        || key.contains("secret")
}

/// Options with the values of secrets replaced, for logs and `--print-options`.
pub fn redacted(options: &[(String, String)]) -> Vec<(String, String)> {
    options
        .iter()
        .map(|(key, value)| {
            let shown = if is_secret(key) {
                "[redacted]".to_owned()
            } else {
                value.clone()
            };
            (key.clone(), shown)
        })
        .collect()
}

#[derive(Debug, Error, Diagnostic)]
pub enum OptionsError {
    #[error("invalid line: {message}")]
    #[diagnostic(
        code(martmap::options::syntax),
        help(
            "lines are `[section]`, `key=value`, a bare `key`, or comments starting with `#` or `;`"
        )
    )]
    Syntax {
        message: String,
        #[label("here")]
        span: SourceSpan,
    },

    #[error("option `{key}` is set twice in section [{section}]")]
    #[diagnostic(
        code(martmap::options::duplicate_key),
        help("keep one of the two lines")
    )]
    DuplicateKey {
        key: String,
        section: String,
        #[label("set again")]
        span: SourceSpan,
        #[label("first set here")]
        first: SourceSpan,
    },

    #[error("section [{section}] has no `bootstrap.servers`")]
    #[diagnostic(
        code(martmap::options::missing_bootstrap),
        help("add `bootstrap.servers=host1:9092,host2:9092` to the section")
    )]
    MissingBootstrap {
        section: String,
        #[label("Kafka cluster without brokers")]
        span: SourceSpan,
    },

    #[error("unknown martmap option `{key}`")]
    #[diagnostic(code(martmap::options::unknown_option))]
    UnknownOption {
        key: String,
        #[label("not a g: option")]
        span: SourceSpan,
        #[help]
        help: Option<String>,
    },

    #[error("`{key}` needs a value")]
    #[diagnostic(code(martmap::options::missing_value), help("write `{key}=<value>`"))]
    MissingValue {
        key: String,
        #[label("no value")]
        span: SourceSpan,
    },

    #[error("no topic is bound to a mapping")]
    #[diagnostic(
        code(martmap::options::no_bindings),
        help(
            "add a line `g:topic:<topic>=<MAPPING>` to a `[kafka-<cluster>]` section, e.g. `g:topic:all-cobrowse-historical=COBROWSE`"
        )
    )]
    NoBindings {
        #[label("no g:topic line in this file")]
        span: SourceSpan,
    },

    #[error("topic `{topic}` is bound to mapping `{mapping}`, which does not exist")]
    #[diagnostic(code(martmap::options::unknown_mapping))]
    UnknownMapping {
        topic: String,
        mapping: String,
        #[label("no such mapping")]
        span: SourceSpan,
        #[help]
        help: Option<String>,
    },

    #[error("unknown time zone `{zone}`")]
    #[diagnostic(code(martmap::options::unknown_time_zone))]
    UnknownTimeZone {
        zone: String,
        #[label("not an IANA time zone")]
        span: SourceSpan,
        #[help]
        help: Option<String>,
    },

    #[error("unknown option `{key}` in [agg-feature]")]
    #[diagnostic(
        code(martmap::options::unknown_agg_feature_option),
        help("[agg-feature] holds bare flags `enable-<feature>`, e.g. `enable-cobrowse`")
    )]
    UnknownAggFeatureOption {
        key: String,
        #[label("not `enable-<feature>`")]
        span: SourceSpan,
    },

    #[error("`{key}` is a bare flag")]
    #[diagnostic(
        code(martmap::options::flag_with_value),
        help("write `{key}` alone to enable the feature; remove the line to disable it")
    )]
    FlagWithValue {
        key: String,
        #[label("no value expected")]
        span: SourceSpan,
    },

    #[error("no aggregate has feature `{feature}`")]
    #[diagnostic(code(martmap::options::unknown_feature))]
    UnknownFeature {
        feature: String,
        #[label("no aggregate file names this feature")]
        span: SourceSpan,
        #[help]
        help: Option<String>,
    },

    #[error("unknown option `{key}` in [date-time]")]
    #[diagnostic(code(martmap::options::unknown_date_time_option))]
    UnknownDateTimeOption {
        key: String,
        #[label("not a [date-time] option")]
        span: SourceSpan,
        #[help]
        help: Option<String>,
    },

    #[error("`date-time-min-days-ahead` ({min}) is more than `date-time-max-days-ahead` ({max})")]
    #[diagnostic(
        code(martmap::options::days_ahead),
        help("the calendar is extended when fewer than min days remain, up to max days ahead")
    )]
    DaysAhead {
        min: u64,
        max: u64,
        #[label("more than the max")]
        span: SourceSpan,
    },

    #[error("`{key}` must be a whole number from 1 to {max}")]
    #[diagnostic(code(martmap::options::invalid_number))]
    InvalidNumber {
        key: String,
        max: u64,
        #[label("not a number in range")]
        span: SourceSpan,
    },

    #[error("`{key}` is managed by martmap")]
    #[diagnostic(
        code(martmap::options::managed_option),
        help(
            "martmap stores offsets in the database with the rows, so it sets {key}={value} itself; remove the line"
        )
    )]
    ManagedOption {
        key: String,
        value: String,
        #[label("set by martmap")]
        span: SourceSpan,
    },

    #[error("topic `{topic}` is bound twice in section [{section}]")]
    #[diagnostic(
        code(martmap::options::duplicate_topic),
        help("a topic is loaded by one mapping per cluster")
    )]
    DuplicateTopic {
        topic: String,
        section: String,
        #[label("bound again")]
        span: SourceSpan,
    },
}

/// A parsed options file: sections in file order.
#[derive(Debug, Clone, Default)]
pub struct OptionsFile {
    pub sections: Vec<Section>,
}

#[derive(Debug, Clone)]
pub struct Section {
    pub name: String,
    pub span: SourceSpan,
    pub entries: Vec<Entry>,
}

/// One `key=value` line, or a bare `key` (a flag) with no value.
#[derive(Debug, Clone)]
pub struct Entry {
    pub key: String,
    pub key_span: SourceSpan,
    pub value: Option<String>,
    pub value_span: SourceSpan,
}

impl Entry {
    /// The entry's value; a bare key or an empty value where one is
    /// needed is an error.
    fn required_value(&self) -> Result<&str, OptionsError> {
        self.value
            .as_deref()
            .filter(|value| !value.is_empty())
            .ok_or_else(|| OptionsError::MissingValue {
                key: self.key.clone(),
                span: self.key_span,
            })
    }

    /// The value as a whole number from 1 to `max`.
    fn number(&self, value: &str, max: u64) -> Result<u64, OptionsError> {
        value
            .parse::<u64>()
            .ok()
            .filter(|n| (1..=max).contains(n))
            .ok_or(OptionsError::InvalidNumber {
                key: self.key.clone(),
                max,
                span: self.value_span,
            })
    }
}

/// The `[date-time]` section, Info Mart's calendar options: the IANA zone
/// of the calendar's local attributes and how far ahead it is filled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DateTimeOptions {
    pub zone: chrono_tz::Tz,
    /// Extend the calendar when fewer days than this remain.
    pub min_days_ahead: u64,
    /// How far ahead the calendar is filled.
    pub max_days_ahead: u64,
}

/// The `[date-time]` options and their defaults (Info Mart's).
pub const DATE_TIME_OPTIONS: &[&str] = &[
    "date-time-tz",
    "date-time-min-days-ahead",
    "date-time-max-days-ahead",
];

impl Default for DateTimeOptions {
    fn default() -> Self {
        DateTimeOptions {
            zone: chrono_tz::UTC,
            min_days_ahead: 183,
            max_days_ahead: 366,
        }
    }
}

/// One `[kafka-<cluster>]` section, resolved.
#[derive(Debug, Clone)]
pub struct KafkaCluster {
    /// The cluster name: the section name without `kafka-`.
    pub name: String,
    pub topics: Vec<TopicBinding>,
    /// Native client options, verbatim and in file order (`bootstrap.servers` included).
    pub client: Vec<(String, String)>,
    /// `g:batch-size`: messages per batch (one transaction).
    pub batch_size: usize,
    /// `g:batch-timeout-ms`: longest wait of a partial batch.
    pub batch_timeout_ms: u64,
}

/// `g:topic:<topic>=<MAPPING>`.
#[derive(Debug, Clone)]
pub struct TopicBinding {
    pub topic: String,
    pub mapping: String,
    pub mapping_span: SourceSpan,
}

impl OptionsFile {
    /// Parses the whole file, reporting every malformed line.
    pub fn parse(text: &str) -> Result<OptionsFile, Vec<OptionsError>> {
        let mut file = OptionsFile::default();
        let mut errors = Vec::new();
        let mut offset = 0;
        for raw_line in text.split_inclusive('\n') {
            let line_start = offset;
            offset += raw_line.len();
            let line = raw_line.trim_end_matches(['\n', '\r']);
            let trimmed = line.trim();
            if trimmed.is_empty() || trimmed.starts_with('#') || trimmed.starts_with(';') {
                continue;
            }
            let start = line_start + (line.len() - line.trim_start().len());
            let span = |from: usize, len: usize| SourceSpan::from((start + from, len));
            if let Some(header) = trimmed.strip_prefix('[') {
                match header.strip_suffix(']').map(str::trim) {
                    Some(name) if !name.is_empty() => file.sections.push(Section {
                        name: name.to_owned(),
                        span: span(0, trimmed.len()),
                        entries: Vec::new(),
                    }),
                    _ => errors.push(OptionsError::Syntax {
                        message: "a section header is `[name]`".into(),
                        span: span(0, trimmed.len()),
                    }),
                }
                continue;
            }
            let Some(section) = file.sections.last_mut() else {
                errors.push(OptionsError::Syntax {
                    message: "an option before any `[section]` header".into(),
                    span: span(0, trimmed.len()),
                });
                continue;
            };
            let (key, value) = match trimmed.split_once('=') {
                Some((key, value)) => (key.trim_end(), Some(value.trim_start())),
                None => (trimmed, None),
            };
            if key.is_empty() {
                errors.push(OptionsError::Syntax {
                    message: "an option without a key".into(),
                    span: span(0, 1),
                });
                continue;
            }
            let value_from = value.map_or(trimmed.len(), |value| trimmed.len() - value.len());
            let entry = Entry {
                key: key.to_owned(),
                key_span: span(0, key.len()),
                value: value.map(str::to_owned),
                value_span: span(value_from, trimmed.len() - value_from),
            };
            if let Some(first) = section.entries.iter().find(|e| e.key == entry.key) {
                errors.push(OptionsError::DuplicateKey {
                    key: entry.key.clone(),
                    section: section.name.clone(),
                    span: entry.key_span,
                    first: first.key_span,
                });
                continue;
            }
            section.entries.push(entry);
        }
        if errors.is_empty() {
            Ok(file)
        } else {
            Err(errors)
        }
    }

    /// The features `[agg-feature]` enables (`enable-<feature>`), and every
    /// problem there: a line that is not such a flag, a flag with a value,
    /// and, when the `known` features are given (those aggregate files
    /// declare), a feature no aggregate has.
    pub fn features(&self, known: Option<&[&str]>) -> (Vec<String>, Vec<OptionsError>) {
        let mut features = Vec::new();
        let mut errors = Vec::new();
        for section in self.sections.iter().filter(|s| s.name == "agg-feature") {
            for entry in &section.entries {
                let Some(feature) = entry.key.strip_prefix("enable-").filter(|f| !f.is_empty())
                else {
                    errors.push(OptionsError::UnknownAggFeatureOption {
                        key: entry.key.clone(),
                        span: entry.key_span,
                    });
                    continue;
                };
                if entry.value.is_some() {
                    errors.push(OptionsError::FlagWithValue {
                        key: entry.key.clone(),
                        span: entry.value_span,
                    });
                    continue;
                }
                if let Some(known) = known
                    && !known.contains(&feature)
                {
                    errors.push(OptionsError::UnknownFeature {
                        feature: feature.to_owned(),
                        span: entry.key_span,
                        help: suggest(feature, known.iter().copied()).or_else(|| {
                            Some(
                                "aggregate files (aggregates/*.yaml) name their `feature`; none is loaded"
                                    .into(),
                            )
                        }),
                    });
                    continue;
                }
                features.push(feature.to_owned());
            }
        }
        (features, errors)
    }

    /// The `[date-time]` section (defaults when there is none), and every
    /// problem in it: an unknown zone or option, a number out of range.
    pub fn date_time(&self) -> (DateTimeOptions, Vec<OptionsError>) {
        let mut options = DateTimeOptions::default();
        let mut errors = Vec::new();
        let mut min_span = None;
        for section in self.sections.iter().filter(|s| s.name == "date-time") {
            for entry in &section.entries {
                let value = match entry.required_value() {
                    Ok(value) => value,
                    Err(error) => {
                        errors.push(error);
                        continue;
                    }
                };
                let days = || entry.number(value, 3660);
                match entry.key.as_str() {
                    "date-time-tz" => match value.parse::<chrono_tz::Tz>() {
                        Ok(zone) => options.zone = zone,
                        Err(_) => errors.push(OptionsError::UnknownTimeZone {
                            zone: value.to_owned(),
                            span: entry.value_span,
                            help: suggest(value, chrono_tz::TZ_VARIANTS.iter().map(|z| z.name()))
                                .or_else(|| {
                                    Some("an IANA zone such as `America/New_York` or `UTC`".into())
                                }),
                        }),
                    },
                    "date-time-min-days-ahead" => match days() {
                        Ok(n) => {
                            options.min_days_ahead = n;
                            min_span = Some(entry.value_span);
                        }
                        Err(error) => errors.push(error),
                    },
                    "date-time-max-days-ahead" => match days() {
                        Ok(n) => options.max_days_ahead = n,
                        Err(error) => errors.push(error),
                    },
                    key => errors.push(OptionsError::UnknownDateTimeOption {
                        key: key.to_owned(),
                        span: entry.key_span,
                        help: suggest(key, DATE_TIME_OPTIONS.iter().copied()),
                    }),
                }
            }
        }
        if options.min_days_ahead > options.max_days_ahead {
            errors.push(OptionsError::DaysAhead {
                min: options.min_days_ahead,
                max: options.max_days_ahead,
                span: min_span.unwrap_or((0, 0).into()),
            });
        }
        (options, errors)
    }

    /// The `[kafka-<cluster>]` sections, with every problem in them.
    pub fn clusters(&self) -> (Vec<KafkaCluster>, Vec<OptionsError>) {
        let mut clusters = Vec::new();
        let mut errors = Vec::new();
        for section in &self.sections {
            let Some(name) = section.name.strip_prefix("kafka-") else {
                continue;
            };
            let mut cluster = KafkaCluster {
                name: name.to_owned(),
                topics: Vec::new(),
                client: Vec::new(),
                batch_size: DEFAULT_BATCH_SIZE,
                batch_timeout_ms: DEFAULT_BATCH_TIMEOUT_MS,
            };
            for entry in &section.entries {
                let value = match entry.required_value() {
                    Ok(value) => value,
                    Err(error) => {
                        errors.push(error);
                        continue;
                    }
                };
                if let Some(topic) = entry.key.strip_prefix("g:topic:") {
                    if cluster.topics.iter().any(|binding| binding.topic == topic) {
                        errors.push(OptionsError::DuplicateTopic {
                            topic: topic.to_owned(),
                            section: section.name.clone(),
                            span: entry.key_span,
                        });
                    }
                    cluster.topics.push(TopicBinding {
                        topic: topic.to_owned(),
                        mapping: value.to_owned(),
                        mapping_span: entry.value_span,
                    });
                } else if entry.key.starts_with("g:") {
                    let number = |max: u64| entry.number(value, max);
                    if entry.key == "g:batch-size" {
                        match number(1_000_000) {
                            Ok(n) => cluster.batch_size = n as usize,
                            Err(error) => errors.push(error),
                        }
                    } else if entry.key == "g:batch-timeout-ms" {
                        match number(3_600_000) {
                            Ok(n) => cluster.batch_timeout_ms = n,
                            Err(error) => errors.push(error),
                        }
                    } else if !G_OPTIONS.contains(&entry.key.as_str()) {
                        // A misspelled `g:topic:<topic>` is compared with the
                        // key it was meant to be.
                        let as_topic = entry
                            .key
                            .splitn(3, ':')
                            .nth(2)
                            .map(|topic| format!("g:topic:{topic}"));
                        let known = G_OPTIONS.iter().copied().chain(as_topic.as_deref());
                        errors.push(OptionsError::UnknownOption {
                            key: entry.key.clone(),
                            span: entry.key_span,
                            help: suggest(&entry.key, known),
                        });
                    }
                } else if let Some((_, managed)) =
                    CLIENT_MANAGED.iter().find(|(key, _)| *key == entry.key)
                {
                    errors.push(OptionsError::ManagedOption {
                        key: entry.key.clone(),
                        value: (*managed).to_owned(),
                        span: entry.key_span,
                    });
                } else {
                    cluster.client.push((entry.key.clone(), value.to_owned()));
                }
            }
            if !cluster
                .client
                .iter()
                .any(|(key, _)| key == "bootstrap.servers")
            {
                errors.push(OptionsError::MissingBootstrap {
                    section: section.name.clone(),
                    span: section.span,
                });
            }
            clusters.push(cluster);
        }
        (clusters, errors)
    }
}

impl KafkaCluster {
    /// The effective client configuration: martmap's defaults (unless the
    /// section sets them), the section's native options verbatim and in
    /// order, then the options martmap manages.
    pub fn client_options(&self) -> Vec<(String, String)> {
        let mut options: Vec<(String, String)> = CLIENT_DEFAULTS
            .iter()
            .filter(|(key, _)| !self.client.iter().any(|(set, _)| set == key))
            .map(|(key, value)| ((*key).to_owned(), (*value).to_owned()))
            .collect();
        options.extend(self.client.iter().cloned());
        options.extend(
            CLIENT_MANAGED
                .iter()
                .map(|(key, value)| ((*key).to_owned(), (*value).to_owned())),
        );
        options
    }
}

/// Every topic binding that names a mapping not among `known`, or that
/// there is no binding at all (nothing to consume).
pub fn check_mappings(clusters: &[KafkaCluster], known: &[&str]) -> Vec<OptionsError> {
    if clusters.iter().all(|cluster| cluster.topics.is_empty()) {
        return vec![OptionsError::NoBindings {
            span: (0, 0).into(),
        }];
    }
    clusters
        .iter()
        .flat_map(|cluster| &cluster.topics)
        .filter(|binding| !known.contains(&binding.mapping.as_str()))
        .map(|binding| OptionsError::UnknownMapping {
            topic: binding.topic.clone(),
            mapping: binding.mapping.clone(),
            span: binding.mapping_span,
            help: suggest(&binding.mapping, known.iter().copied()),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const OPTIONS: &str = "\
# Info Mart options
[kafka-cobrowse]
bootstrap.servers=broker1:9092,broker2:9092
g:topic:all-cobrowse-historical=COBROWSE
security.protocol=SASL_SSL
sasl.password=se=cret

[agg-feature]
enable-cobrowse
";

    fn check_errors(text: &str, expected: &[&str]) {
        let messages: Vec<String> = match OptionsFile::parse(text) {
            Ok(file) => {
                let (clusters, mut errors) = file.clusters();
                errors.extend(check_mappings(&clusters, &["COBROWSE"]));
                errors.iter().map(ToString::to_string).collect()
            }
            Err(errors) => errors.iter().map(ToString::to_string).collect(),
        };
        assert_eq!(messages, expected);
    }

    /// The `[date-time]` options of `text`, or its problems.
    fn check_date_time(text: &str, expected: Result<(&str, u64, u64), &[&str]>) {
        let (options, errors) = OptionsFile::parse(text).unwrap().date_time();
        let got = if errors.is_empty() {
            Ok((
                options.zone.name().to_owned(),
                options.min_days_ahead,
                options.max_days_ahead,
            ))
        } else {
            Err(errors.iter().map(ToString::to_string).collect::<Vec<_>>())
        };
        let expected = expected
            .map(|(zone, min, max)| (zone.to_owned(), min, max))
            .map_err(|errors| errors.iter().map(|e| e.to_string()).collect::<Vec<_>>());
        assert_eq!(got, expected);
    }

    #[test]
    fn date_time_options_have_info_marts_defaults_and_are_checked() {
        check_date_time("[kafka-a]\nbootstrap.servers=b\n", Ok(("UTC", 183, 366)));
        check_date_time(
            "[date-time]\ndate-time-tz=Asia/Kathmandu\ndate-time-min-days-ahead=10\ndate-time-max-days-ahead=20\n",
            Ok(("Asia/Kathmandu", 10, 20)),
        );
        check_date_time(
            "[date-time]\ndate-time-tz=America/New_Yrok\ndate-time-max-days-ahead=0\ndate-time-mni-days-ahead=5\n",
            Err(&[
                "unknown time zone `America/New_Yrok`",
                "`date-time-max-days-ahead` must be a whole number from 1 to 3660",
                "unknown option `date-time-mni-days-ahead` in [date-time]",
            ]),
        );
        check_date_time(
            "[date-time]\ndate-time-min-days-ahead=400\n",
            Err(&[
                "`date-time-min-days-ahead` (400) is more than `date-time-max-days-ahead` (366)",
            ]),
        );
    }

    #[test]
    fn keeps_client_options_verbatim_and_in_order() {
        let file = OptionsFile::parse(OPTIONS).unwrap();
        let (clusters, errors) = file.clusters();
        assert!(errors.is_empty(), "{errors:?}");
        let [cluster] = clusters.as_slice() else {
            panic!("one cluster expected")
        };
        assert_eq!(cluster.name, "cobrowse");
        let client: Vec<(&str, &str)> = cluster
            .client
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        assert_eq!(
            client,
            [
                ("bootstrap.servers", "broker1:9092,broker2:9092"),
                ("security.protocol", "SASL_SSL"),
                ("sasl.password", "se=cret"),
            ]
        );
        assert_eq!(cluster.topics[0].topic, "all-cobrowse-historical");
        assert_eq!(cluster.topics[0].mapping, "COBROWSE");
        assert_eq!(
            &OPTIONS[cluster.topics[0].mapping_span.offset()..][..8],
            "COBROWSE"
        );
        let flags = &file.sections[1].entries[0];
        assert_eq!(
            (flags.key.as_str(), flags.value.as_deref()),
            ("enable-cobrowse", None)
        );
    }

    #[test]
    fn effective_options_add_defaults_and_hide_secrets() {
        let file = OptionsFile::parse(OPTIONS).unwrap();
        let (clusters, _) = file.clusters();
        let effective = redacted(&clusters[0].client_options());
        let shown: Vec<String> = effective.iter().map(|(k, v)| format!("{k}={v}")).collect();
        assert_eq!(
            shown,
            [
                "group.id=martmap",
                "auto.offset.reset=earliest",
                "bootstrap.servers=broker1:9092,broker2:9092",
                "security.protocol=SASL_SSL",
                "sasl.password=[redacted]",
                "enable.auto.commit=false",
                "enable.auto.offset.store=false",
                "enable.partition.eof=true",
            ]
        );
        assert!(
            is_secret("ssl.key.password")
                && is_secret("sasl.jaas.config")
                && !is_secret("sasl.username")
        );
    }

    #[test]
    fn batching_options_are_read_and_stay_out_of_the_client() {
        let file = OptionsFile::parse(
            "[kafka-a]\nbootstrap.servers=b:9092\ng:batch-size=250\ng:batch-timeout-ms=40\n",
        )
        .unwrap();
        let (clusters, errors) = file.clusters();
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(
            (clusters[0].batch_size, clusters[0].batch_timeout_ms),
            (250, 40)
        );
        assert!(
            clusters[0]
                .client_options()
                .iter()
                .all(|(key, _)| !key.starts_with("g:"))
        );
        let (defaults, _) = OptionsFile::parse(OPTIONS).unwrap().clusters();
        assert_eq!(
            (defaults[0].batch_size, defaults[0].batch_timeout_ms),
            (DEFAULT_BATCH_SIZE, DEFAULT_BATCH_TIMEOUT_MS)
        );
    }

    #[test]
    fn reports_every_problem() {
        check_errors(
            "key=value\n[x\n",
            &[
                "invalid line: an option before any `[section]` header",
                "invalid line: a section header is `[name]`",
            ],
        );
        check_errors(
            "[kafka-a]\ng:topic:t=COBROWS\ng:tpoic:u=COBROWSE\nsasl.username\n",
            &[
                "unknown martmap option `g:tpoic:u`",
                "`sasl.username` needs a value",
                "section [kafka-a] has no `bootstrap.servers`",
                "topic `t` is bound to mapping `COBROWS`, which does not exist",
            ],
        );
        check_errors(
            "[kafka-a]\nbootstrap.servers=b:9092\ng:batch-size=0\ng:batch-timeout-ms=soon\ng:batch-sise=5\n",
            &[
                "`g:batch-size` must be a whole number from 1 to 1000000",
                "`g:batch-timeout-ms` must be a whole number from 1 to 3600000",
                "unknown martmap option `g:batch-sise`",
                "no topic is bound to a mapping",
            ],
        );
        check_errors(
            "[kafka-a]\nbootstrap.servers=b:9092\ng:topic:t=COBROWSE\nenable.auto.commit=true\n",
            &["`enable.auto.commit` is managed by martmap"],
        );
    }
}
