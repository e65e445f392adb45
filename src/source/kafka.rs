//! Kafka, through rdkafka (the only module that knows it): one consumer per
//! bound topic, in a consumer group, with the database as the source of
//! truth for progress.
//!
//! On every assignment the partitions are positioned at the offsets stored
//! with the rows (`Positions::stored`), and a partition without one where
//! `auto.offset.reset` says: offsets committed to Kafka are only a copy for
//! lag tools, never a starting point. A stored offset the broker no longer
//! has (retention deleted it first) is reported as a gap
//! (`Positions::gap`) and the partition taken at its earliest offset. Before partitions are revoked the
//! owner is asked to finish what it holds for them (`Positions::release`), so
//! a rebalance neither loses nor repeats a message. The caller drives
//! [`TopicConsumer::poll`] and decides what to do with each [`Polled`] item.

use std::sync::Mutex;
use std::time::Duration;

use rdkafka::config::ClientConfig;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message as _;
use rdkafka::types::RDKafkaRespErr;
use rdkafka::{ClientContext, Offset, TopicPartitionList};

use crate::pipeline::Message;

/// What the consumer needs from its owner at a rebalance.
pub trait Positions: Send + Sync {
    /// The next offsets stored for `topic`, by partition.
    fn stored(&self, topic: &str) -> Vec<(i32, i64)>;
    /// Called before partitions are taken away: everything read from them
    /// must be committed (or dropped unread) when this returns.
    fn release(&self);
    /// A partition's next offset is one the broker does not have (see
    /// [`Gap`]); consumption continues at `gap.to`.
    fn gap(&self, topic: &str, partition: i32, gap: Gap);
}

/// Why a partition's next offset is not one the broker has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GapKind {
    /// Below the earliest offset: retention deleted messages before they
    /// were loaded.
    Retention,
    /// Beyond the end of the partition: the topic was deleted and created
    /// again (or the log truncated), so its offsets start over.
    BeyondEnd,
}

impl GapKind {
    /// Its name in `CTL_KAFKA_GAP.KIND`, metrics and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            GapKind::Retention => "retention",
            GapKind::BeyondEnd => "beyond-end",
        }
    }
}

/// A jump in a partition's consumption: from the next offset martmap held
/// (`from`) to where it continues (`to`, the earliest offset the broker
/// has). For [`GapKind::Retention`] the messages `from..to` were never
/// loaded; for [`GapKind::BeyondEnd`] `to` is below `from`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gap {
    pub from: i64,
    pub to: i64,
    pub kind: GapKind,
}

/// Where a partition whose next offset is `next` continues, given the
/// broker's earliest offset and, when known, its end: at `next` while the
/// broker has it (or cannot say), else at the earliest offset, with the gap.
/// Never left to `auto.offset.reset`, which would jump silently.
pub fn start_offset(next: i64, earliest: Option<i64>, end: Option<i64>) -> (i64, Option<Gap>) {
    let (kind, to) = match (earliest, end) {
        (Some(low), _) if next < low => (GapKind::Retention, low),
        (low, Some(high)) if next > high => (GapKind::BeyondEnd, low.unwrap_or(0)),
        _ => return (next, None),
    };
    (
        to,
        Some(Gap {
            from: next,
            to,
            kind,
        }),
    )
}

/// How long a partition's watermarks are waited for.
const WATERMARKS: Duration = Duration::from_secs(10);

/// Where the partition's end is taken from when checking a position.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    /// Not checked: at assignment, the fetch at the position tells (a
    /// position beyond the end is out of range, see
    /// [`TopicConsumer::out_of_range`]). ListOffsets' end is not relied on
    /// there: some brokers answer it late (tansu's memory engine answers
    /// the start of the last record batch), which would look like a topic
    /// recreated under a correct position.
    Unchecked,
    /// ListOffsets' end, once the broker said the position is out of range.
    Listed,
}

/// The offset to take a partition at: `next`, or past a gap (reported to
/// `positions`). When the broker cannot say its watermarks, `next`.
fn position<P: Positions, C: Consumer<Context<P>>>(
    consumer: &C,
    positions: &P,
    (topic, partition): (&str, i32),
    next: i64,
    end: End,
) -> i64 {
    let (earliest, high) = match consumer.fetch_watermarks(topic, partition, WATERMARKS) {
        Ok((low, high)) => (Some(low), Some(high)),
        Err(error) => {
            tracing::debug!(topic, partition, %error, "cannot read the partition's watermarks");
            (None, None)
        }
    };
    let high = high.filter(|_| end == End::Listed);
    let (start, gap) = start_offset(next, earliest, high);
    if let Some(gap) = gap {
        positions.gap(topic, partition, gap);
    }
    start
}

/// One item of the consumer's stream.
#[derive(Debug)]
pub enum Polled {
    Message(Message),
    /// The partition's end was reached (nothing more to read for now).
    End(i32),
    /// Nothing arrived within the poll timeout.
    Idle,
    /// A client error (the broker unreachable, say); librdkafka retries.
    Error(ClientError),
}

/// A client error: what it says about reaching the brokers, classified by
/// librdkafka's error codes, and its text with librdkafka's explanations.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientError {
    pub trouble: Option<Trouble>,
    pub text: String,
}

impl std::fmt::Display for ClientError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.text)
    }
}

/// Why the brokers cannot be reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trouble {
    /// No connection: refused, unresolvable, timed out, all brokers down.
    Unreachable,
    /// The same, on a connection configured for TLS, where a failed
    /// handshake (a TLS client against a plaintext port, say) surfaces as a
    /// transport failure too.
    UnreachableOverTls,
    /// The TLS layer reported an error.
    Tls,
    /// SASL authentication failed or was not offered.
    Authentication,
}

impl Trouble {
    /// What an operator should check, naming the options involved.
    pub fn advice(self) -> &'static str {
        match self {
            Trouble::Unreachable => "broker unreachable",
            Trouble::UnreachableOverTls => {
                "broker unreachable, or TLS with the broker failed; check security.protocol and the ssl.* options"
            }
            Trouble::Tls => {
                "TLS with the broker failed; check security.protocol and the ssl.* options"
            }
            Trouble::Authentication => {
                "authentication with the broker failed; check security.protocol and the sasl.* options"
            }
        }
    }

    /// The trouble that error codes seen together name, if any.
    pub fn of(codes: &[RDKafkaErrorCode], tls: bool) -> Option<Trouble> {
        use RDKafkaErrorCode as Code;
        let any = |wanted: &[Code]| codes.iter().any(|code| wanted.contains(code));
        if any(&[
            Code::Authentication,
            Code::SaslAuthenticationFailed,
            Code::UnsupportedSASLMechanism,
            Code::IllegalSASLState,
        ]) {
            Some(Trouble::Authentication)
        } else if any(&[Code::SSL]) {
            Some(Trouble::Tls)
        } else if any(&[
            Code::BrokerTransportFailure,
            Code::AllBrokersDown,
            Code::Resolve,
            Code::NetworkException,
        ]) {
            Some(if tls {
                Trouble::UnreachableOverTls
            } else {
                Trouble::Unreachable
            })
        } else {
            None
        }
    }
}

struct Context<P> {
    positions: P,
    /// Where a partition without a stored offset starts: the database is the
    /// truth for progress, so offsets committed to Kafka are not used.
    unstored: Offset,
    /// The partitions this consumer owns now, each with the next offset it
    /// reads (`None` until known: taken where `unstored` says, nothing read).
    assigned: Mutex<Vec<(i32, Option<i64>)>>,
    /// librdkafka's explanations of its errors since the last poll ("SASL
    /// SCRAM-SHA-256 mechanism handshake failed: ..."), which polled errors lack.
    reasons: Mutex<Vec<String>>,
    /// The codes of librdkafka's global errors since the last poll.
    codes: Mutex<Vec<RDKafkaErrorCode>>,
}

/// librdkafka's own log lines and global errors repeat every few
/// milliseconds while a broker is away; the consumer loop reports outages
/// once (55-20049), so these stay at debug level.
impl<P: Positions> ClientContext for Context<P> {
    fn log(&self, level: RDKafkaLogLevel, facility: &str, message: &str) {
        tracing::debug!(target: "librdkafka", ?level, facility, message);
        // A broker connection's failure ("Connection setup timed out in
        // state SSL_HANDSHAKE") is only logged, not raised as an error.
        if facility == "FAIL" {
            self.explain(message);
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        tracing::debug!(target: "librdkafka", %error, reason);
        self.explain(reason);
        if let Some(code) = error.rdkafka_error_code() {
            let mut codes = self.codes.lock().unwrap_or_else(|e| e.into_inner());
            if codes.len() < 16 && !codes.contains(&code) {
                codes.push(code);
            }
        }
    }
}

impl<P: Positions> Context<P> {
    /// Places `partitions` of `topic` in `list` and `owned`: each at its
    /// stored next offset (or past a gap, see [`position`]), or where
    /// `unstored` says. The stored offsets are read once.
    fn take<C: Consumer<Self>>(
        &self,
        consumer: &C,
        topic: &str,
        partitions: impl Iterator<Item = i32>,
        list: &mut TopicPartitionList,
        owned: &mut Vec<(i32, Option<i64>)>,
    ) -> Result<(), KafkaError> {
        let stored = self.positions.stored(topic);
        for partition in partitions {
            let next = stored
                .iter()
                .find(|(stored, _)| *stored == partition)
                .map(|(_, next)| {
                    position(
                        consumer,
                        &self.positions,
                        (topic, partition),
                        *next,
                        End::Unchecked,
                    )
                });
            list.add_partition_offset(
                topic,
                partition,
                next.map_or(self.unstored, Offset::Offset),
            )?;
            owned.push((partition, next));
        }
        Ok(())
    }
}

impl<P> Context<P> {
    fn explain(&self, reason: &str) {
        let mut reasons = self.reasons.lock().unwrap_or_else(|e| e.into_inner());
        // "(after 2002ms in state ..., 1 identical error(s) suppressed)" varies.
        let reason = reason.split(" (after ").next().unwrap_or(reason);
        let reason = match reason.strip_prefix("[thrd:") {
            Some(rest) => rest.split_once("]: ").map_or(reason, |(_, text)| text),
            None => reason,
        };
        if reasons.len() < 4 && !reasons.iter().any(|known| known == reason) {
            reasons.push(reason.to_owned());
        }
    }
}

impl<P: Positions> ConsumerContext for Context<P> {
    fn rebalance(
        &self,
        consumer: &BaseConsumer<Self>,
        err: RDKafkaRespErr,
        tpl: &mut TopicPartitionList,
    ) {
        match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                let mut positioned = TopicPartitionList::new();
                let mut owned = Vec::new();
                let elements = tpl.elements();
                let mut topics: Vec<&str> = elements.iter().map(|e| e.topic()).collect();
                topics.sort_unstable();
                topics.dedup();
                for topic in topics {
                    let partitions = elements
                        .iter()
                        .filter(|e| e.topic() == topic)
                        .map(|e| e.partition());
                    if let Err(error) =
                        self.take(consumer, topic, partitions, &mut positioned, &mut owned)
                    {
                        tracing::error!(%error, topic, "cannot place the assigned partitions");
                    }
                }
                if let Err(error) = consumer.assign(&positioned) {
                    tracing::error!(%error, "cannot take the assigned partitions");
                }
                *self.assigned.lock().unwrap_or_else(|e| e.into_inner()) = owned;
            }
            _ => {
                self.positions.release();
                self.assigned
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .clear();
                if let Err(error) = consumer.unassign() {
                    tracing::error!(%error, "cannot give up the revoked partitions");
                }
            }
        }
    }
}

/// The client configuration as librdkafka holds it: every option is set on
/// a native configuration (which rejects unknown keys and bad values, as the
/// consumer would) and each value is read back from it.
pub fn effective_options(
    options: &[(String, String)],
) -> Result<Vec<(String, String)>, KafkaError> {
    let native = client_config(options).create_native_config()?;
    options
        .iter()
        .map(|(key, _)| Ok((key.clone(), native.get(key)?)))
        .collect()
}

fn client_config(options: &[(String, String)]) -> ClientConfig {
    let mut config = ClientConfig::new();
    for (key, value) in options {
        config.set(key, value);
    }
    config
}

/// A consumer of one topic.
pub struct TopicConsumer<P: Positions + 'static> {
    consumer: BaseConsumer<Context<P>>,
    topic: String,
    /// Without group membership: every partition is still to be assigned
    /// from the topic's metadata.
    unassigned: bool,
    /// Whether `security.protocol` asks for TLS.
    tls: bool,
}

/// How a consumer gets its partitions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Membership {
    /// As a member of the consumer group, sharing partitions with the other
    /// members (continuous `run`).
    Group,
    /// Every partition of the topic, assigned directly: no group to join,
    /// so members that crashed and the group's session timeout never delay
    /// it (one ETL cycle, `run --once`; the database holds the offsets).
    AllPartitions,
}

impl<P: Positions + 'static> TopicConsumer<P> {
    /// Creates the consumer with the effective client options and takes
    /// `topic`'s partitions as `membership` says.
    pub fn new(
        options: &[(String, String)],
        topic: &str,
        positions: P,
        membership: Membership,
    ) -> Result<Self, KafkaError> {
        let reset = options
            .iter()
            .rev()
            .find(|(key, _)| key == "auto.offset.reset")
            .map(|(_, value)| value.to_ascii_lowercase());
        let unstored = match reset.as_deref() {
            Some("latest" | "largest" | "end") => Offset::End,
            Some("error") => Offset::Invalid,
            // earliest, smallest, beginning, and librdkafka's own default.
            _ => Offset::Beginning,
        };
        let context = Context {
            positions,
            unstored,
            assigned: Mutex::new(Vec::new()),
            reasons: Mutex::new(Vec::new()),
            codes: Mutex::new(Vec::new()),
        };
        // An offset out of range is martmap's to handle (a gap, recorded),
        // never librdkafka's to reset silently.
        let consumer: BaseConsumer<Context<P>> = client_config(options)
            .set("auto.offset.reset", "error")
            .create_with_context(context)?;
        if membership == Membership::Group {
            consumer.subscribe(&[topic])?;
        }
        Ok(TopicConsumer {
            consumer,
            topic: topic.to_owned(),
            unassigned: membership == Membership::AllPartitions,
            tls: options
                .iter()
                .rev()
                .find(|(key, _)| key == "security.protocol")
                .is_some_and(|(_, protocol)| protocol.to_ascii_lowercase().ends_with("ssl")),
        })
    }

    /// Assigns every partition of the topic at its stored offset, once the
    /// broker has answered with the topic's metadata.
    fn assign_all(&mut self, timeout: Duration) -> Result<(), KafkaError> {
        let metadata = self.consumer.fetch_metadata(Some(&self.topic), timeout)?;
        let Some(topic) = metadata.topics().iter().find(|t| t.name() == self.topic) else {
            return Err(KafkaError::MetadataFetch(
                RDKafkaErrorCode::UnknownTopicOrPartition,
            ));
        };
        if let Some(error) = topic.error() {
            return Err(KafkaError::MetadataFetch(error.into()));
        }
        let context = self.consumer.context();
        let mut list = TopicPartitionList::new();
        let mut owned = Vec::new();
        let partitions = topic.partitions().iter().map(|p| p.id());
        context.take(
            &self.consumer,
            &self.topic,
            partitions,
            &mut list,
            &mut owned,
        )?;
        self.consumer.assign(&list)?;
        owned.sort_unstable_by_key(|(partition, _)| *partition);
        *context.assigned.lock().unwrap_or_else(|e| e.into_inner()) = owned;
        self.unassigned = false;
        Ok(())
    }

    pub fn poll(&mut self, timeout: Duration) -> Polled {
        if self.unassigned {
            // The broker's answer may take longer than a poll's timeout.
            if let Err(error) = self.assign_all(timeout.max(Duration::from_secs(1))) {
                // Polling lets librdkafka report why the broker did not answer.
                let _ = self.consumer.poll(Duration::ZERO);
                let timed_out =
                    error.rdkafka_error_code() == Some(RDKafkaErrorCode::OperationTimedOut);
                if timed_out
                    && self
                        .consumer
                        .context()
                        .reasons
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .is_empty()
                {
                    // No answer yet, and no reason known: keep asking.
                    return Polled::Idle;
                }
                // An answer that says no (an unknown topic, say) comes at
                // once: ask again after the poll's timeout, not in a spin.
                if !timed_out {
                    std::thread::sleep(timeout);
                }
                return self.error(error);
            }
        }
        match self.consumer.poll(timeout) {
            None => Polled::Idle,
            Some(Ok(message)) => {
                self.read(message.partition(), message.offset());
                Polled::Message(Message {
                    source: self.topic.clone(),
                    partition: Some(message.partition()),
                    position: message.offset(),
                    key: message.key().map(<[u8]>::to_vec),
                    payload: message.payload().map(<[u8]>::to_vec).unwrap_or_default(),
                })
            }
            Some(Err(KafkaError::PartitionEOF(partition))) => Polled::End(partition),
            Some(Err(KafkaError::MessageConsumption(RDKafkaErrorCode::AutoOffsetReset))) => {
                self.out_of_range();
                Polled::Idle
            }
            Some(Err(error)) => self.error(error),
        }
    }

    /// Notes that `partition` was read up to `offset`.
    fn read(&self, partition: i32, offset: i64) {
        let context = self.consumer.context();
        let mut assigned = context.assigned.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((_, next)) = assigned.iter_mut().find(|(owned, _)| *owned == partition) {
            *next = Some(offset + 1);
        }
    }

    /// librdkafka found a partition's fetch position out of range and
    /// stopped it (`auto.offset.reset` is `error` for it; which partition
    /// it does not say): every owned partition is taken again at its next
    /// offset, or past the gap (recorded) where the broker no longer has it.
    fn out_of_range(&self) {
        let context = self.consumer.context();
        let owned = context
            .assigned
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let mut taken = Vec::with_capacity(owned.len());
        for (partition, next) in owned {
            let next = next.map(|next| {
                position(
                    &self.consumer,
                    &context.positions,
                    (&self.topic, partition),
                    next,
                    End::Listed,
                )
            });
            let offset = next.map_or(context.unstored, Offset::Offset);
            if let Err(error) = self
                .consumer
                .seek(&self.topic, partition, offset, WATERMARKS)
            {
                tracing::error!(topic = self.topic, partition, %error, "cannot take the partition again");
            }
            taken.push((partition, next));
        }
        *context.assigned.lock().unwrap_or_else(|e| e.into_inner()) = taken;
    }

    /// A client error, classified by its code and those of librdkafka's
    /// errors since the last one, with librdkafka's explanations.
    fn error(&self, error: KafkaError) -> Polled {
        let context = self.consumer.context();
        let reasons =
            std::mem::take(&mut *context.reasons.lock().unwrap_or_else(|e| e.into_inner()));
        let mut codes =
            std::mem::take(&mut *context.codes.lock().unwrap_or_else(|e| e.into_inner()));
        codes.extend(error.rdkafka_error_code());
        let text = if reasons.is_empty() {
            error.to_string()
        } else {
            format!("{error}: {}", reasons.join("; "))
        };
        Polled::Error(ClientError {
            trouble: Trouble::of(&codes, self.tls),
            text,
        })
    }

    /// The partitions owned now.
    pub fn assigned(&self) -> Vec<i32> {
        self.consumer
            .context()
            .assigned
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|(partition, _)| *partition)
            .collect()
    }

    /// Messages in `partition` after the consumer's position, from the high
    /// watermark of the latest fetch response; `None` before the first fetch.
    pub fn lag(&self, partition: i32) -> Option<i64> {
        // The high watermark librdkafka keeps from fetch responses (rdkafka
        // only offers a ListOffsets round trip, which tansu answers wrongly).
        let topic = std::ffi::CString::new(self.topic.as_str()).ok()?;
        let (mut low, mut high) = (-1_i64, -1_i64);
        // SAFETY: the client handle lives as long as `self.consumer`, the
        // topic is a NUL-terminated string that outlives the call, and
        // librdkafka writes only the two offsets it is given.
        let error = unsafe {
            rdkafka::bindings::rd_kafka_get_watermark_offsets(
                self.consumer.client().native_ptr(),
                topic.as_ptr(),
                partition,
                &mut low,
                &mut high,
            )
        };
        if error != RDKafkaRespErr::RD_KAFKA_RESP_ERR_NO_ERROR {
            return None;
        }
        let positions = self.consumer.position().ok()?;
        match positions.find_partition(&self.topic, partition)?.offset() {
            Offset::Offset(position) if high >= 0 => Some((high - position).max(0)),
            _ => None,
        }
    }

    /// Tells the group how far this consumer got (best effort, for lag
    /// tools: the database holds the offsets that count).
    pub fn commit(&self, offsets: &[(i32, i64)]) {
        let mut list = TopicPartitionList::new();
        for (partition, next) in offsets {
            let _ = list.add_partition_offset(&self.topic, *partition, Offset::Offset(*next));
        }
        if let Err(error) = self.consumer.commit(&list, CommitMode::Async) {
            tracing::debug!(%error, "offset commit to Kafka failed; the database holds the offsets");
        }
    }

    pub fn topic(&self) -> &str {
        &self.topic
    }
}
