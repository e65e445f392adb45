//! Value conversions of DESIGN §2, as pure functions on JSON values:
//! strings (or integers as decimal text), integers, flags, timestamps (epoch
//! milliseconds or ISO-8601 with an offset) to epoch seconds and interval
//! keys, URL parts, and cutting text to a column's size.
//!
//! Values are serde_json_borrow's, whose strings borrow from the payload.
//! A JSON `null` never reaches these functions: the interpreter treats it as
//! absent. Each failure says what was expected; the caller adds the path.

use std::borrow::Cow;

use chrono::DateTime;
use serde_json_borrow::Value;

/// What a value should have been, for discard messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mismatch {
    pub expected: &'static str,
    /// The offending value, shortened for messages.
    pub found: String,
}

impl Mismatch {
    fn new(expected: &'static str, found: &Value) -> Self {
        Mismatch {
            expected,
            found: describe(found),
        }
    }
}

/// A string, or a JSON integer as its decimal text.
pub fn text<'v>(value: &'v Value) -> Result<Cow<'v, str>, Mismatch> {
    match value {
        Value::Str(text) => Ok(Cow::Borrowed(text)),
        Value::Number(number) if number.is_i64() || number.is_u64() => {
            Ok(Cow::Owned(number.to_string()))
        }
        _ => Err(Mismatch::new("a string", value)),
    }
}

/// A JSON number, fractions included, as its JSON text.
pub fn number(value: &Value) -> Result<String, Mismatch> {
    match value {
        Value::Number(number) => Ok(number.to_string()),
        _ => Err(Mismatch::new("a number", value)),
    }
}

/// A JSON integer that fits 64 bits.
pub fn int(value: &Value) -> Result<i64, Mismatch> {
    value
        .as_i64()
        .ok_or_else(|| Mismatch::new("an integer", value))
}

/// `true`/`false` or `0`/`1`, as 1/0.
pub fn flag(value: &Value) -> Result<i64, Mismatch> {
    match value {
        Value::Bool(flag) => Ok(i64::from(*flag)),
        Value::Number(_) => match value.as_i64() {
            Some(bit @ (0 | 1)) => Ok(bit),
            _ => Err(Mismatch::new("true, false, 0 or 1", value)),
        },
        _ => Err(Mismatch::new("true, false, 0 or 1", value)),
    }
}

const TIMESTAMP: &str = "epoch milliseconds or an ISO-8601 timestamp with offset";

/// Whole epoch seconds UTC (floor) of epoch milliseconds or an ISO-8601
/// timestamp with an offset.
pub fn epoch_seconds(value: &Value) -> Result<i64, Mismatch> {
    match value {
        Value::Number(_) => value
            .as_i64()
            .map(|millis| millis.div_euclid(1000))
            .ok_or_else(|| Mismatch::new(TIMESTAMP, value)),
        Value::Str(text) => parse_iso8601(text).ok_or_else(|| Mismatch::new(TIMESTAMP, value)),
        _ => Err(Mismatch::new(TIMESTAMP, value)),
    }
}

/// RFC 3339, plus the ISO-8601 forms producers also write: no seconds, or an
/// offset without a colon. A timestamp without an offset is not an instant.
pub fn parse_iso8601(text: &str) -> Option<i64> {
    if let Ok(instant) = DateTime::parse_from_rfc3339(text) {
        return Some(instant.timestamp());
    }
    // chrono's `%z` does not read `Z`; spell UTC out for the other forms.
    let text = match text.strip_suffix(['Z', 'z']) {
        Some(local) => format!("{local}+00:00"),
        None => text.to_owned(),
    };
    ["%Y-%m-%dT%H:%M:%S%.f%z", "%Y-%m-%dT%H:%M%z"]
        .iter()
        .find_map(|format| DateTime::parse_from_str(&text, format).ok())
        .map(|instant| instant.timestamp())
}

/// The start of the `interval`-second interval holding `seconds`.
pub fn interval_start(seconds: i64, interval: u32) -> i64 {
    let interval = i64::from(interval);
    seconds.div_euclid(interval) * interval
}

/// The parts of an absolute URL that DESIGN §2 derives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UrlParts {
    /// Lower case, without port or user info; absent for URLs without a host.
    pub host: Option<String>,
    /// `/` when empty.
    pub path: String,
    /// Without `?`; absent when empty.
    pub query: Option<String>,
}

/// Splits an absolute URL; anything else yields no parts.
pub fn url_parts(text: &str) -> Option<UrlParts> {
    let url = url::Url::parse(text).ok()?;
    let path = match url.path() {
        "" => "/".to_owned(),
        path => path.to_owned(),
    };
    Some(UrlParts {
        host: url.host_str().map(str::to_lowercase),
        path,
        query: url
            .query()
            .filter(|query| !query.is_empty())
            .map(str::to_owned),
    })
}

/// Cuts `text` to at most `max` characters, at a character boundary.
pub fn truncate(mut text: String, max: usize) -> String {
    if text.len() <= max {
        return text; // no more bytes than allowed characters
    }
    if let Some((cut, _)) = text.char_indices().nth(max) {
        text.truncate(cut);
    }
    text
}

/// A JSON value as it appears in messages, shortened to stay readable.
pub fn describe(value: &Value) -> String {
    let kind = match value {
        Value::Null => return "null".into(),
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::Str(_) => "string",
        Value::Array(_) => return "an array".into(),
        Value::Object(_) => return "an object".into(),
    };
    let mut shown = value.to_string();
    if shown.chars().count() > 40 {
        shown = format!("{}…", truncate(shown, 40));
    }
    format!("{kind} {shown}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn check<T: PartialEq + std::fmt::Debug>(
        convert: impl Fn(&Value) -> Result<T, Mismatch>,
        value: serde_json::Value,
        expected: Result<T, &str>,
    ) {
        let got = convert(&Value::from(&value))
            .map_err(|mismatch| format!("{} / {}", mismatch.expected, mismatch.found));
        assert_eq!(got, expected.map_err(str::to_owned), "{value}");
    }

    #[test]
    fn texts_accept_strings_and_integers() {
        let text = |value: &Value| text(value).map(Cow::into_owned);
        check(text, json!("abc"), Ok("abc".to_owned()));
        check(text, json!(123456789), Ok("123456789".to_owned()));
        check(text, json!(u64::MAX), Ok("18446744073709551615".to_owned()));
        check(text, json!(true), Err("a string / boolean true"));
        check(text, json!(1.5), Err("a string / number 1.5"));
    }

    #[test]
    fn numbers_accept_integers_and_fractions_only() {
        check(number, json!(1.5), Ok("1.5".to_owned()));
        check(number, json!(-42), Ok("-42".to_owned()));
        check(number, json!("1.5"), Err("a number / string \"1.5\""));
    }

    #[test]
    fn flags_accept_booleans_and_bits() {
        check(flag, json!(true), Ok(1));
        check(flag, json!(0), Ok(0));
        check(flag, json!(2), Err("true, false, 0 or 1 / number 2"));
        check(flag, json!("1"), Err("true, false, 0 or 1 / string \"1\""));
    }

    #[test]
    fn timestamps_are_floored_epoch_seconds() {
        check(
            epoch_seconds,
            json!(1_772_359_530_999_i64),
            Ok(1_772_359_530),
        );
        check(epoch_seconds, json!(-1), Ok(-1));
        check(
            epoch_seconds,
            json!("2026-03-01T10:15:30.123+02:00"),
            Ok(1_772_352_930),
        );
        check(
            epoch_seconds,
            json!("2026-03-01T08:15:30Z"),
            Ok(1_772_352_930),
        );
        check(
            epoch_seconds,
            json!("2026-03-01T13:45:30+0530"),
            Ok(1_772_352_930),
        );
        check(epoch_seconds, json!("2026-03-01T08:15Z"), Ok(1_772_352_900));
        let expected = "epoch milliseconds or an ISO-8601 timestamp with offset / string \"2026-03-01T08:15:30\"";
        check(epoch_seconds, json!("2026-03-01T08:15:30"), Err(expected));
        assert_eq!(interval_start(1_772_352_930, 900), 1_772_352_900); // 08:15:30 → 08:15:00
        assert_eq!(interval_start(-1, 900), -900);
    }

    #[test]
    fn url_parts_follow_design() {
        let parts = url_parts("https://user:pw@Shop.Example.COM:8443/a/b?x=1&y=2#frag").unwrap();
        assert_eq!(parts.host.as_deref(), Some("shop.example.com"));
        assert_eq!(parts.path, "/a/b");
        assert_eq!(parts.query.as_deref(), Some("x=1&y=2"));
        let bare = url_parts("https://example.com?#top").unwrap();
        assert_eq!((bare.path.as_str(), bare.query), ("/", None));
        assert_eq!(url_parts("/relative/path"), None);
    }

    #[test]
    fn truncation_keeps_whole_characters() {
        assert_eq!(truncate("héllo".into(), 2), "hé");
        assert_eq!(truncate("日本語テキスト".into(), 3), "日本語");
        assert_eq!(truncate("abc".into(), 5), "abc");
    }
}
