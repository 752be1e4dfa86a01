//! A direct reader for the lines Felix writes: one pass over the bytes that fills the same
//! [`RawFlow`] serde_json would, without serde's per-token dispatch.
//!
//! It reads a strict subset of JSON: strings without escapes, integers without a fraction or
//! an exponent, nesting at most [`MAX_DEPTH`] deep, each known key at most once. Anything
//! outside that subset, valid or not, makes it give up (`None`) and the line is read again by
//! serde_json, which then decides every rejection and names its reason. So on what it
//! accepts it must agree with serde_json exactly: the differential property test below
//! holds it to that.

use std::borrow::Cow;

use super::{RawFlow, RawLabels, RawPolicies, StrOrNum, Text};

/// Values nested deeper than this are left to serde_json, so the scanner's recursion stays
/// shallow.
const MAX_DEPTH: u32 = 16;

/// Reads one line as a Calico record, or `None` when serde_json must read it.
pub(super) fn read(text: &str) -> Option<RawFlow<'_>> {
    let mut scanner = Scanner {
        text,
        bytes: text.as_bytes(),
        at: 0,
    };
    scanner.whitespace();
    let flow = scanner.flow()?;
    scanner.whitespace();
    (scanner.at == scanner.bytes.len()).then_some(flow)
}

/// Bytes that end the fast scan of a string: the closing quote, an escape, or a control
/// character (which JSON forbids unescaped).
const STRING_STOP: [bool; 256] = {
    let mut table = [false; 256];
    let mut byte = 0;
    while byte < 0x20 {
        table[byte] = true;
        byte += 1;
    }
    table[b'"' as usize] = true;
    table[b'\\' as usize] = true;
    table
};

/// Where the fast scan of a string's contents stops ([`STRING_STOP`]), eight bytes at a time.
fn string_stop(bytes: &[u8]) -> Option<usize> {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let mut at = 0;
    while let Some(chunk) = bytes.get(at..at + 8) {
        let word = u64::from_le_bytes(chunk.try_into().expect("eight bytes"));
        let quote = word ^ (ONES * u64::from(b'"'));
        let escape = word ^ (ONES * u64::from(b'\\'));
        // The high bit of a byte is set for a byte below 0x20 (`word - 0x20` borrows) or a
        // zero after an xor (a quote or a backslash). A borrow can also flag bytes above the
        // first flagged one, never below it, so the lowest flag is exact.
        let stops = (word.wrapping_sub(ONES * 0x20) & !word
            | quote.wrapping_sub(ONES) & !quote
            | escape.wrapping_sub(ONES) & !escape)
            & HIGH;
        if stops != 0 {
            return Some(at + stops.trailing_zeros() as usize / 8);
        }
        at += 8;
    }
    let rest = bytes[at..]
        .iter()
        .position(|&byte| STRING_STOP[usize::from(byte)])?;
    Some(at + rest)
}

/// The keys read into [`RawFlow`], one bit each for the duplicate check (serde's derive
/// refuses a known key given twice; unknown keys may repeat).
#[derive(Clone, Copy)]
enum Key {
    StartTime,
    EndTime,
    Proto,
    Action,
    Reporter,
    SourceIp,
    SourcePort,
    SourceName,
    SourceNameAggr,
    SourceNamespace,
    SourceType,
    SourceLabels,
    DestIp,
    DestPort,
    DestName,
    DestNameAggr,
    DestNamespace,
    DestType,
    DestLabels,
    DestServiceNamespace,
    DestServiceName,
    DestServicePort,
    DestServicePortNum,
    DestDomains,
    Policies,
    BytesIn,
    BytesOut,
    PacketsIn,
    PacketsOut,
    NumFlows,
    NumFlowsStarted,
    NumFlowsCompleted,
    ProcessName,
    ProcessId,
    ProcessArgs,
    Host,
}

impl Key {
    fn of(name: &str) -> Option<Key> {
        Some(match name {
            "start_time" => Key::StartTime,
            "end_time" => Key::EndTime,
            "proto" => Key::Proto,
            "action" => Key::Action,
            "reporter" => Key::Reporter,
            "source_ip" => Key::SourceIp,
            "source_port" => Key::SourcePort,
            "source_name" => Key::SourceName,
            "source_name_aggr" => Key::SourceNameAggr,
            "source_namespace" => Key::SourceNamespace,
            "source_type" => Key::SourceType,
            "source_labels" => Key::SourceLabels,
            "dest_ip" => Key::DestIp,
            "dest_port" => Key::DestPort,
            "dest_name" => Key::DestName,
            "dest_name_aggr" => Key::DestNameAggr,
            "dest_namespace" => Key::DestNamespace,
            "dest_type" => Key::DestType,
            "dest_labels" => Key::DestLabels,
            "dest_service_namespace" => Key::DestServiceNamespace,
            "dest_service_name" => Key::DestServiceName,
            "dest_service_port" => Key::DestServicePort,
            "dest_service_port_num" => Key::DestServicePortNum,
            "dest_domains" => Key::DestDomains,
            "policies" => Key::Policies,
            "bytes_in" => Key::BytesIn,
            "bytes_out" => Key::BytesOut,
            "packets_in" => Key::PacketsIn,
            "packets_out" => Key::PacketsOut,
            "num_flows" => Key::NumFlows,
            "num_flows_started" => Key::NumFlowsStarted,
            "num_flows_completed" => Key::NumFlowsCompleted,
            "process_name" => Key::ProcessName,
            "process_id" => Key::ProcessId,
            "process_args" => Key::ProcessArgs,
            "host" => Key::Host,
            _ => return None,
        })
    }
}

/// Which keys of one object were read already.
#[derive(Default)]
struct Seen(u64);

impl Seen {
    /// `None` when `bit` was seen before.
    fn first(&mut self, bit: u32) -> Option<()> {
        let mask = 1 << bit;
        (self.0 & mask == 0).then(|| self.0 |= mask)
    }
}

struct Scanner<'a> {
    text: &'a str,
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Scanner<'a> {
    fn flow(&mut self) -> Option<RawFlow<'a>> {
        let mut flow = RawFlow::default();
        let mut seen = Seen::default();
        self.object(|scanner, name| {
            let Some(key) = Key::of(name) else {
                return scanner.skip(1);
            };
            seen.first(key as u32)?;
            match key {
                Key::StartTime => flow.start_time = scanner.or_null(Self::i64)?,
                Key::EndTime => flow.end_time = scanner.or_null(Self::i64)?,
                Key::Proto => flow.proto = scanner.or_null(Self::str_or_num)?,
                Key::Action => flow.action = scanner.or_null(Self::text)?,
                Key::Reporter => flow.reporter = scanner.or_null(Self::text)?,
                Key::SourceIp => flow.source_ip = scanner.or_null(Self::text)?,
                Key::SourcePort => flow.source_port = scanner.or_null(Self::u32)?,
                Key::SourceName => flow.source_name = scanner.or_null(Self::text)?,
                Key::SourceNameAggr => flow.source_name_aggr = scanner.or_null(Self::text)?,
                Key::SourceNamespace => flow.source_namespace = scanner.or_null(Self::text)?,
                Key::SourceType => flow.source_type = scanner.or_null(Self::text)?,
                Key::SourceLabels => flow.source_labels = scanner.labels()?,
                Key::DestIp => flow.dest_ip = scanner.or_null(Self::text)?,
                Key::DestPort => flow.dest_port = scanner.or_null(Self::u32)?,
                Key::DestName => flow.dest_name = scanner.or_null(Self::text)?,
                Key::DestNameAggr => flow.dest_name_aggr = scanner.or_null(Self::text)?,
                Key::DestNamespace => flow.dest_namespace = scanner.or_null(Self::text)?,
                Key::DestType => flow.dest_type = scanner.or_null(Self::text)?,
                Key::DestLabels => flow.dest_labels = scanner.labels()?,
                Key::DestServiceNamespace => {
                    flow.dest_service_namespace = scanner.or_null(Self::text)?
                }
                Key::DestServiceName => flow.dest_service_name = scanner.or_null(Self::text)?,
                Key::DestServicePort => {
                    flow.dest_service_port = scanner.or_null(Self::str_or_num)?
                }
                Key::DestServicePortNum => {
                    flow.dest_service_port_num = scanner.or_null(Self::u32)?
                }
                Key::DestDomains => flow.dest_domains = scanner.or_null(Self::texts)?,
                Key::Policies => flow.policies = scanner.or_null(Self::policies)?,
                Key::BytesIn => flow.bytes_in = scanner.or_null(Self::u64)?,
                Key::BytesOut => flow.bytes_out = scanner.or_null(Self::u64)?,
                Key::PacketsIn => flow.packets_in = scanner.or_null(Self::u64)?,
                Key::PacketsOut => flow.packets_out = scanner.or_null(Self::u64)?,
                Key::NumFlows => flow.num_flows = scanner.or_null(Self::u64)?,
                Key::NumFlowsStarted => flow.num_flows_started = scanner.or_null(Self::u64)?,
                Key::NumFlowsCompleted => flow.num_flows_completed = scanner.or_null(Self::u64)?,
                Key::ProcessName => flow.process_name = scanner.or_null(Self::text)?,
                Key::ProcessId => flow.process_id = scanner.or_null(Self::str_or_num)?,
                Key::ProcessArgs => flow.process_args = scanner.or_null(Self::texts)?,
                Key::Host => flow.host = scanner.or_null(Self::text)?,
            }
            Some(())
        })?;
        Some(flow)
    }

    /// `{"labels": [...]}`, `"-"`, `""` or null, as [`RawLabels`] reads them.
    fn labels(&mut self) -> Option<RawLabels> {
        match self.peek()? {
            b'n' => self.null().then_some(RawLabels(None)),
            b'"' => matches!(self.string()?, "-" | "").then_some(RawLabels(None)),
            b'{' => {
                let mut labels = None;
                let mut seen = Seen::default();
                self.object(|scanner, name| {
                    if name != "labels" {
                        return scanner.skip(2);
                    }
                    seen.first(0)?;
                    labels = scanner.or_null(Self::texts)?;
                    Some(())
                })?;
                Some(RawLabels(Some(labels.unwrap_or_default())))
            }
            _ => None,
        }
    }

    fn policies(&mut self) -> Option<RawPolicies> {
        let mut policies = RawPolicies::default();
        let mut seen = Seen::default();
        self.object(|scanner, name| match name {
            "enforced_policies" => {
                seen.first(0)?;
                policies.enforced_policies = scanner.or_null(Self::texts)?;
                Some(())
            }
            "all_policies" => {
                seen.first(1)?;
                policies.all_policies = scanner.or_null(Self::texts)?;
                Some(())
            }
            _ => scanner.skip(2),
        })?;
        Some(policies)
    }

    /// `null`, or what `read` reads.
    fn or_null<T>(&mut self, read: impl FnOnce(&mut Self) -> Option<T>) -> Option<Option<T>> {
        if self.null() {
            Some(None)
        } else {
            read(self).map(Some)
        }
    }

    fn text(&mut self) -> Option<Cow<'a, str>> {
        self.string().map(Cow::Borrowed)
    }

    /// A list of strings.
    fn texts(&mut self) -> Option<Vec<Text>> {
        let mut texts = Vec::new();
        self.array(|scanner| {
            texts.push(scanner.string()?.into());
            Some(())
        })?;
        Some(texts)
    }

    /// A string, or a non-negative integer kept as its digits (what `StrOrNum` makes of it).
    fn str_or_num(&mut self) -> Option<StrOrNum<'a>> {
        if self.peek()? == b'"' {
            return self.text().map(StrOrNum);
        }
        let start = self.at;
        self.unsigned(19)?;
        Some(StrOrNum(Cow::Borrowed(&self.text[start..self.at])))
    }

    fn i64(&mut self) -> Option<i64> {
        self.unsigned(18).map(|value| value as i64)
    }

    fn u64(&mut self) -> Option<u64> {
        self.unsigned(19)
    }

    fn u32(&mut self) -> Option<u32> {
        u32::try_from(self.unsigned(10)?).ok()
    }

    /// A non-negative integer of at most `max_digits` digits (so it cannot overflow).
    /// Negative numbers are left to serde_json.
    fn unsigned(&mut self, max_digits: usize) -> Option<u64> {
        let start = self.at;
        let mut value = 0u64;
        while let Some(&byte) = self.bytes.get(self.at) {
            if !byte.is_ascii_digit() {
                break;
            }
            value = value.wrapping_mul(10).wrapping_add(u64::from(byte - b'0'));
            self.at += 1;
        }
        // A fraction or an exponent after the digits is refused by the caller, which
        // expects a separator there.
        let digits = self.at - start;
        let leading_zero = digits > 1 && self.bytes[start] == b'0';
        (digits > 0 && digits <= max_digits && !leading_zero).then_some(value)
    }

    /// A string without escapes, the quotes consumed.
    fn string(&mut self) -> Option<&'a str> {
        if self.bytes.get(self.at) != Some(&b'"') {
            return None;
        }
        let start = self.at + 1;
        let end = start + string_stop(&self.bytes[start..])?;
        if self.bytes[end] != b'"' {
            return None;
        }
        self.at = end + 1;
        // Both ends are ASCII quotes, so both are character boundaries.
        Some(&self.text[start..end])
    }

    /// Any valid JSON value of the subset, validated and passed over.
    fn skip(&mut self, depth: u32) -> Option<()> {
        match self.peek()? {
            b'"' => self.string().map(drop),
            b'{' if depth < MAX_DEPTH => self.object(|scanner, _| scanner.skip(depth + 1)),
            b'[' if depth < MAX_DEPTH => self.array(|scanner| scanner.skip(depth + 1)),
            b't' => self.literal(b"true").then_some(()),
            b'f' => self.literal(b"false").then_some(()),
            b'n' => self.null().then_some(()),
            b'-' => {
                self.at += 1;
                self.unsigned(19).map(drop)
            }
            _ => self.unsigned(19).map(drop),
        }
    }

    /// An object, each entry's value read by `entry` (given the key).
    fn object(&mut self, mut entry: impl FnMut(&mut Self, &'a str) -> Option<()>) -> Option<()> {
        self.expect(b'{')?;
        self.whitespace();
        if self.peek()? == b'}' {
            self.at += 1;
            return Some(());
        }
        loop {
            let key = self.string()?;
            self.whitespace();
            self.expect(b':')?;
            self.whitespace();
            entry(self, key)?;
            if !self.more(b'}')? {
                return Some(());
            }
        }
    }

    /// An array, each element read by `element`.
    fn array(&mut self, mut element: impl FnMut(&mut Self) -> Option<()>) -> Option<()> {
        self.expect(b'[')?;
        self.whitespace();
        if self.peek()? == b']' {
            self.at += 1;
            return Some(());
        }
        loop {
            element(self)?;
            if !self.more(b']')? {
                return Some(());
            }
        }
    }

    /// After an element: `true` at a comma (consumed, with the whitespace after it), `false`
    /// at `close` (consumed).
    fn more(&mut self, close: u8) -> Option<bool> {
        self.whitespace();
        let byte = self.peek()?;
        self.at += 1;
        if byte == b',' {
            self.whitespace();
            Some(true)
        } else {
            (byte == close).then_some(false)
        }
    }

    fn null(&mut self) -> bool {
        self.literal(b"null")
    }

    fn literal(&mut self, word: &[u8]) -> bool {
        let found = self.bytes[self.at..].starts_with(word);
        if found {
            self.at += word.len();
        }
        found
    }

    fn expect(&mut self, byte: u8) -> Option<()> {
        (self.peek()? == byte).then(|| self.at += 1)
    }

    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.at).copied()
    }

    /// JSON's whitespace: space, tab, line feed, carriage return.
    fn whitespace(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.bytes.get(self.at) {
            self.at += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

    use proptest::prelude::*;
    use proptest::test_runner::{Config, TestRunner};

    use super::super::{parse_str, parse_str_with_serde_json as by_serde};
    use super::*;

    #[test]
    fn string_stop_finds_the_first_stop_byte_at_every_offset() {
        for length in 0..20 {
            for at in 0..=length {
                for byte in 0..=255u8 {
                    let mut bytes = vec![b'a'; length];
                    if at < length {
                        bytes[at] = byte;
                    }
                    // Bytes after the first stop must not change the answer.
                    bytes.extend_from_slice(b"\x01\"\\\xff");
                    let expected = bytes.iter().position(|&b| STRING_STOP[usize::from(b)]);
                    assert_eq!(string_stop(&bytes), expected, "{bytes:?}");
                }
            }
        }
        assert_eq!(string_stop(b"\xc3\xa9\xe6\x97\xa5\x7f"), None);
    }

    #[test]
    fn reads_every_line_felix_writes_as_serde_json_does() {
        let lines = include_str!("../../../deploy/local/flows.log");
        for line in lines.lines().chain([super::super::tests::EXAMPLE]) {
            let flow = read(line).unwrap_or_else(|| panic!("left to serde_json: {line}"));
            assert_eq!(flow.into_record(), by_serde(line), "{line}");
        }
    }

    /// Pieces of string contents, as JSON text: sentinels, field values, escapes (valid,
    /// invalid and lone surrogates), raw control characters, non-ASCII.
    const FRAGMENTS: &[&str] = &[
        "a",
        "app=web",
        "-",
        "*",
        "null",
        "pub",
        "pvt",
        "tcp",
        "udp",
        "17",
        "allow",
        "deny",
        "src",
        "dst",
        "fwd",
        "wep",
        "net",
        "10.0.0.1",
        "fd00::1",
        "10.0.0.300",
        "labels",
        "é",
        "日本",
        "\\\"",
        "\\\\",
        "\\n",
        "\\u00e9",
        "\\ud800",
        "\\ud83d\\ude00",
        "\\x",
        "\u{1}",
        "\u{1f}",
        "\t",
        "\u{7f}",
        " ",
        "=",
        "|",
        "{",
        "}",
        "[",
        ",",
        ":",
    ];

    /// Number texts at the edges of what each field type takes.
    const NUMBERS: &[&str] = &[
        "0",
        "7",
        "-0",
        "-7",
        "01",
        "00",
        "1.5",
        "1e3",
        "1E3",
        "1.",
        "-",
        "+1",
        "65535",
        "65536",
        "4294967295",
        "4294967296",
        "9223372036854775807",
        "9223372036854775808",
        "999999999999999999",
        "1000000000000000000",
        "18446744073709551615",
        "18446744073709551616",
        "123456789012345678901234567890",
    ];

    const KNOWN_KEYS: &[&str] = &[
        "start_time",
        "end_time",
        "proto",
        "action",
        "reporter",
        "source_ip",
        "source_port",
        "source_name",
        "source_name_aggr",
        "source_namespace",
        "source_type",
        "source_labels",
        "dest_ip",
        "dest_port",
        "dest_name",
        "dest_name_aggr",
        "dest_namespace",
        "dest_type",
        "dest_labels",
        "dest_service_namespace",
        "dest_service_name",
        "dest_service_port",
        "dest_service_port_num",
        "dest_domains",
        "policies",
        "bytes_in",
        "bytes_out",
        "packets_in",
        "packets_out",
        "num_flows",
        "num_flows_started",
        "num_flows_completed",
        "process_name",
        "process_id",
        "process_args",
        "host",
    ];

    /// Keys serde ignores, keys that only look known, and an escaped known key.
    const OTHER_KEYS: &[&str] = &[
        "pending_policies",
        "original_source_ips",
        "labels",
        "enforced_policies",
        "",
        "Start_time",
        "source_ip ",
        "source\\u005fip",
        "é",
    ];

    fn quoted(text: &str) -> String {
        format!("\"{text}\"")
    }

    fn string() -> impl Strategy<Value = String> {
        prop::collection::vec(prop::sample::select(FRAGMENTS), 0..4)
            .prop_map(|parts| quoted(&parts.concat()))
    }

    fn number() -> impl Strategy<Value = String> {
        prop_oneof![
            3 => prop::sample::select(NUMBERS).prop_map(str::to_owned),
            1 => any::<u64>().prop_map(|n| n.to_string()),
            1 => any::<i64>().prop_map(|n| n.to_string()),
            1 => (0u32..70_000).prop_map(|n| n.to_string()),
            1 => (4_294_967_290u64..4_294_967_300).prop_map(|n| n.to_string()),
            1 => (9_223_372_036_854_775_800u64..9_223_372_036_854_775_815).prop_map(|n| n.to_string()),
        ]
    }

    fn key() -> impl Strategy<Value = String> {
        prop_oneof![
            prop::sample::select(KNOWN_KEYS).prop_map(quoted),
            prop::sample::select(OTHER_KEYS).prop_map(quoted),
            string(),
        ]
    }

    /// Any JSON value (and near-JSON: literals cut short, trailing commas), nested at times
    /// deeper than the scanner reads.
    fn value() -> impl Strategy<Value = String> {
        let scalar = prop_oneof![
            Just("null".to_owned()),
            Just("true".to_owned()),
            Just("false".to_owned()),
            Just("nul".to_owned()),
            number(),
            string(),
        ];
        let nested = scalar.prop_recursive(20, 64, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4)
                    .prop_map(|items| format!("[{}]", items.join(","))),
                prop::collection::vec((key(), inner), 0..4).prop_map(|entries| {
                    let entries = entries.into_iter().map(|(k, v)| format!("{k}:{v}"));
                    format!("{{{}}}", entries.collect::<Vec<_>>().join(","))
                }),
                Just("[1,]".to_owned()),
                Just("{\"a\":1,}".to_owned()),
            ]
        });
        prop_oneof![4 => nested, 1 => deep()]
    }

    /// Arrays or objects nested within the scanner's limit, or past 128 levels.
    fn deep() -> impl Strategy<Value = String> {
        (prop_oneof![1usize..20, 120usize..140], any::<bool>()).prop_map(|(depth, arrays)| {
            match arrays {
                true => "[".repeat(depth) + &"]".repeat(depth),
                false => "{\"a\":".repeat(depth) + "1" + &"}".repeat(depth),
            }
        })
    }

    fn strings() -> impl Strategy<Value = String> {
        prop::collection::vec(prop_oneof![4 => string(), 1 => value()], 0..4)
            .prop_map(|items| format!("[{}]", items.join(",")))
    }

    /// Values shaped like the fields': lists of strings, label and policy objects.
    fn field_value() -> impl Strategy<Value = String> {
        prop_oneof![
            3 => string(),
            3 => number(),
            2 => Just("null".to_owned()),
            2 => strings(),
            2 => (strings(), prop::option::of(value())).prop_map(|(labels, other)| match other {
                Some(other) => format!("{{\"labels\":{labels},\"other\":{other}}}"),
                None => format!("{{\"labels\":{labels}}}"),
            }),
            2 => (strings(), strings(), strings()).prop_map(|(enforced, pending, all)| {
                format!("{{\"enforced_policies\":{enforced},\"pending_policies\":{pending},\"all_policies\":{all}}}")
            }),
            1 => Just("{\"labels\":null}".to_owned()),
            1 => Just("{\"enforced_policies\":[\"a\"],\"enforced_policies\":null}".to_owned()),
            1 => value(),
        ]
    }

    /// The required fields, mostly valid, so that many records get through.
    fn required() -> impl Strategy<Value = Vec<(String, String)>> {
        let pick =
            |values: &'static [&'static str]| prop::sample::select(values).prop_map(str::to_owned);
        (
            prop_oneof![9 => (0u32..2_000_000_000).prop_map(|n| n.to_string()), 1 => number()],
            prop_oneof![9 => (0u32..2_000_000_000).prop_map(|n| n.to_string()), 1 => number()],
            prop_oneof![
                pick(&[
                    "\"tcp\"", "\"udp\"", "\"icmp\"", "6", "17", "\"17\"", "\"warp\"", "-1", "1.0"
                ]),
                field_value()
            ],
            prop_oneof![4 => pick(&["\"allow\"", "\"deny\""]), 1 => field_value()],
            prop_oneof![4 => pick(&["\"src\"", "\"dst\"", "\"fwd\""]), 1 => field_value()],
        )
            .prop_map(|(start, end, proto, action, reporter)| {
                [
                    ("start_time", start),
                    ("end_time", end),
                    ("proto", proto),
                    ("action", action),
                    ("reporter", reporter),
                ]
                .into_iter()
                .map(|(key, value)| (quoted(key), value))
                .collect()
            })
    }

    /// A record: the required fields, others known and unknown (repeats included), in any
    /// order, with any whitespace (and, at times, characters JSON does not count as such).
    fn record() -> impl Strategy<Value = String> {
        let entry = (key(), field_value());
        let known = (
            prop::sample::select(KNOWN_KEYS).prop_map(quoted),
            field_value(),
        );
        let space =
            prop::sample::select(&["", "", "", " ", "\n", "\t", "\r", "\u{a0}", "\u{b}"][..]);
        (
            required(),
            prop::collection::vec(prop_oneof![known, entry], 0..12),
            prop::collection::vec(space, 64),
        )
            .prop_flat_map(|(required, others, spaces)| {
                let entries: Vec<_> = required.into_iter().chain(others).collect();
                (Just(entries).prop_shuffle(), Just(spaces))
            })
            .prop_map(|(entries, spaces)| {
                let mut space = spaces.iter().cycle();
                let mut text = format!("{}{{", space.next().unwrap());
                for (i, (key, value)) in entries.iter().enumerate() {
                    if i > 0 {
                        text.push(',');
                    }
                    let [a, b, c, d] = [(); 4].map(|()| space.next().unwrap());
                    text.push_str(&format!("{a}{key}{b}:{c}{value}{d}"));
                }
                text.push('}');
                text.push_str(space.next().unwrap());
                text
            })
    }

    /// A record as Felix writes it: every key at most once, values of the field's type
    /// (sentinels, IPv4 and IPv6 addresses, numbers up to the type's limit, nulls), unknown
    /// keys with values of any shape, JSON whitespace only.
    fn felix_record() -> impl Strategy<Value = (Vec<(String, String)>, &'static str)> {
        let clean = || {
            prop::collection::vec(prop::sample::select(&FRAGMENTS[..22]), 0..3)
                .prop_map(|parts| quoted(&parts.concat()))
        };
        let list = move || {
            prop::collection::vec(clean(), 0..4).prop_map(|items| format!("[{}]", items.join(",")))
        };
        let pick = |values: &'static [&'static str]| {
            prop::sample::select(values).prop_map(str::to_owned).boxed()
        };
        let typed = move |key: &str| -> BoxedStrategy<String> {
            let value = match key {
                "action" => return pick(&["\"allow\"", "\"deny\""]),
                "reporter" => return pick(&["\"src\"", "\"dst\"", "\"fwd\""]),
                "proto" => return pick(&["\"tcp\"", "\"udp\"", "6", "17", "\"icmp\"", "\"58\""]),
                "start_time" | "end_time" => {
                    return (0u64..4_000_000_000).prop_map(|n| n.to_string()).boxed()
                }
                "source_ip" | "dest_ip" => pick(&["\"10.0.0.1\"", "\"fd00::1\"", "\"-\"", "\"\""]),
                "source_type" | "dest_type" => {
                    pick(&["\"wep\"", "\"hep\"", "\"ns\"", "\"net\"", "\"x\""])
                }
                "source_labels" | "dest_labels" => prop_oneof![
                    list().prop_map(|labels| format!("{{\"labels\":{labels}}}")),
                    Just("\"-\"".to_owned()),
                ]
                .boxed(),
                "policies" => (list(), list())
                    .prop_map(|(enforced, pending)| {
                        format!(
                            "{{\"enforced_policies\":{enforced},\"pending_policies\":{pending}}}"
                        )
                    })
                    .boxed(),
                "dest_domains" | "process_args" => list().boxed(),
                "process_id" | "dest_service_port" => {
                    prop_oneof![clean(), (0u32..300).prop_map(|n| n.to_string())].boxed()
                }
                "source_port" | "dest_port" | "dest_service_port_num" => prop_oneof![
                    9 => (0u32..=65_535).prop_map(|n| n.to_string()),
                    1 => (0u64..=u64::from(u32::MAX)).prop_map(|n| n.to_string()),
                ]
                .boxed(),
                "bytes_in"
                | "bytes_out"
                | "packets_in"
                | "packets_out"
                | "num_flows"
                | "num_flows_started"
                | "num_flows_completed" => prop_oneof![
                    (0u64..1000).prop_map(|n| n.to_string()),
                    any::<u64>().prop_map(|n| (n % 10_000_000_000_000_000_000).to_string()),
                ]
                .boxed(),
                key if KNOWN_KEYS.contains(&key) => clean().boxed(),
                _ => value().boxed(),
            };
            prop_oneof![9 => value, 1 => Just("null".to_owned())].boxed()
        };
        let keys = prop::sample::subsequence(&KNOWN_KEYS[5..], 0..KNOWN_KEYS.len() - 5)
            .prop_map(|keys| {
                KNOWN_KEYS[..5]
                    .iter()
                    .copied()
                    .chain(keys)
                    .collect::<Vec<_>>()
            })
            .prop_shuffle();
        let unknown = prop::collection::vec(prop::sample::select(&OTHER_KEYS[..2]), 0..3);
        let space = prop::sample::select(&["", "", "", " ", "\n", "\t", "\r"][..]);
        (keys, unknown, space).prop_flat_map(move |(keys, unknown, space)| {
            let entries: Vec<_> = keys
                .into_iter()
                .chain(unknown)
                .map(|key| (Just(quoted(key)), typed(key)))
                .collect();
            (entries, Just(space))
        })
    }

    fn render(entries: Vec<(String, String)>, space: &str) -> String {
        let entries = entries
            .into_iter()
            .map(|(key, value)| format!("{key}:{space}{value}"));
        format!(
            "{space}{{{}}}{space}",
            entries.collect::<Vec<_>>().join(&format!(",{space}"))
        )
    }

    /// A record as Felix writes it with one thing wrong or odd: a value replaced by any
    /// value (numbers at the edges, hostile strings, other shapes, deep nesting), an unknown
    /// entry added, a known key given twice, the text cut short, or one character replaced
    /// or put in.
    fn felix_record_with_one_change() -> impl Strategy<Value = String> {
        let odd = prop_oneof![
            2 => number(),
            2 => string(),
            1 => prop::sample::select(FRAGMENTS).prop_map(quoted),
            1 => field_value(),
            1 => value(),
            2 => deep(),
        ];
        let unknown = prop::sample::select(&["\"x\"", "\"pending_policies\"", "\"\""][..]);
        let stray = prop::sample::select(
            &["{", "}", "[", "]", "\"", ",", ":", "\\", "0", "-", " ", "n"][..],
        );
        let at = any::<prop::sample::Index>();
        (felix_record(), odd, number(), unknown, stray, at, 0..6).prop_map(
            |((mut entries, space), odd, number, unknown, stray, at, change)| {
                let entry = at.index(entries.len());
                let numeric = entries[entry].1.starts_with(|c: char| c.is_ascii_digit());
                match change {
                    0 if numeric => entries[entry].1 = number,
                    0 => entries[entry].1 = odd,
                    1 => entries.insert(entry, (unknown.to_owned(), odd)),
                    2 => entries.push((entries[entry].0.clone(), odd)),
                    _ => {}
                }
                let mut text = render(entries, space);
                let byte = at.index(text.len());
                let byte = (0..=byte)
                    .rev()
                    .find(|&at| text.is_char_boundary(at))
                    .unwrap_or(0);
                match change {
                    3 => text.truncate(byte),
                    4 if byte < text.len() => {
                        let next = byte + text[byte..].chars().next().map_or(0, char::len_utf8);
                        text.replace_range(byte..next, stray);
                    }
                    4 | 5 => text.insert_str(byte, stray),
                    _ => {}
                }
                text
            },
        )
    }

    /// A record as Felix writes it, one with one change, or any JSON-like object.
    fn line() -> impl Strategy<Value = String> {
        prop_oneof![
            2 => felix_record().prop_map(|(entries, space)| render(entries, space)),
            6 => felix_record_with_one_change(),
            2 => record(),
        ]
    }

    /// The differential test: on every line the scanner reads, it yields exactly what
    /// serde_json yields (the record, or the rejection with its reason and detail); on every
    /// line, the parser as a whole answers as serde_json alone does.
    #[test]
    fn agrees_with_serde_json_on_generated_and_hostile_lines() {
        // Unoptimized, generating from these nested strategies needs more than a test
        // thread's stack.
        std::thread::Builder::new()
            .stack_size(64 << 20)
            .spawn(differential)
            .unwrap()
            .join()
            .unwrap();
    }

    fn differential() {
        let cases = 10_000;
        let mut runner = TestRunner::new(Config {
            cases,
            failure_persistence: None,
            ..Config::default()
        });
        let read_by_scanner = AtomicUsize::new(0);
        let records = AtomicUsize::new(0);
        let rejected = AtomicUsize::new(0);
        runner
            .run(&line(), |text| {
                let expected = by_serde(&text);
                if let Some(flow) = read(&text) {
                    read_by_scanner.fetch_add(1, Relaxed);
                    prop_assert_eq!(&flow.into_record(), &expected, "scanner on {}", text);
                }
                match &expected {
                    Ok(_) => records.fetch_add(1, Relaxed),
                    Err(_) => rejected.fetch_add(1, Relaxed),
                };
                prop_assert_eq!(parse_str(&text), expected, "parser on {}", text);
                Ok(())
            })
            .unwrap();
        let [read_by_scanner, records, rejected] =
            [read_by_scanner, records, rejected].map(AtomicUsize::into_inner);
        // Not vacuous: the scanner reads a good share, and both outcomes are common.
        let share = |count: usize| count * 100 / cases as usize;
        assert!(
            share(read_by_scanner) >= 10,
            "scanner read {read_by_scanner} of {cases}"
        );
        assert!(share(records) >= 10, "{records} records of {cases}");
        assert!(share(rejected) >= 10, "{rejected} rejections of {cases}");
    }
}
