//! What the pod and container verbs share: crictl's list filters (`--label k=v`, name patterns, newest first,
//! `--latest`/`--last`), short IDs, "5 minutes ago", RFC 3339 times, and CRI enums printed by name.

use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::Value;

use crate::cri::v1::{ContainerState, MountPropagation, NamespaceMode, PodSandboxState, Protocol, Signal};

/// How many characters of an ID tables show, as crictl does.
const SHORT_ID_LEN: usize = 13;

/// `--label k=v` flags as a label selector.
pub fn parse_labels(flags: &[String]) -> Result<std::collections::HashMap<String, String>, String> {
    flags
        .iter()
        .map(|flag| match flag.split_once('=') {
            Some((key, value)) if !key.is_empty() && !value.contains('=') => Ok((key.to_owned(), value.to_owned())),
            _ => Err(format!("incorrectly specified label {flag:?}: want key=value")),
        })
        .collect()
}

/// Every pair of `selector` is in `labels`.
pub fn labels_match(
    labels: &std::collections::HashMap<String, String>,
    selector: &std::collections::HashMap<String, String>,
) -> bool {
    selector.iter().all(|(key, value)| labels.get(key) == Some(value))
}

/// The part of crictl's regular expressions `--name` and `--namespace` take that names need: literal
/// characters, `.`, the quantifiers `*`, `+`, `?`, the anchors `^` and `$`, and `\` escapes. Like a regular
/// expression, it matches anywhere in the text unless anchored.
#[derive(Debug, Clone, PartialEq)]
pub struct NamePattern {
    atoms: Vec<(Atom, Repeat)>,
    anchored_start: bool,
    anchored_end: bool,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Atom {
    Any,
    Char(char),
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Repeat {
    One,
    ZeroOrOne,
    ZeroOrMore,
    OneOrMore,
}

impl NamePattern {
    pub fn parse(pattern: &str) -> Result<NamePattern, String> {
        let mut chars = pattern.chars().peekable();
        let anchored_start = chars.next_if_eq(&'^').is_some();
        let mut atoms: Vec<(Atom, Repeat)> = Vec::new();
        let mut anchored_end = false;
        while let Some(c) = chars.next() {
            let atom = match c {
                '$' if chars.peek().is_none() => {
                    anchored_end = true;
                    break;
                }
                '.' => Atom::Any,
                '\\' => Atom::Char(chars.next().ok_or_else(|| format!("pattern {pattern:?} ends with \\"))?),
                '*' | '+' | '?' => {
                    let Some(last) = atoms.last_mut().filter(|(_, repeat)| *repeat == Repeat::One) else {
                        return Err(format!("pattern {pattern:?}: {c} repeats nothing"));
                    };
                    last.1 = match c {
                        '*' => Repeat::ZeroOrMore,
                        '+' => Repeat::OneOrMore,
                        _ => Repeat::ZeroOrOne,
                    };
                    continue;
                }
                '[' | ']' | '(' | ')' | '{' | '}' | '|' | '^' | '$' => {
                    return Err(format!(
                        "pattern {pattern:?}: only literal characters, ., *, +, ?, ^, $ and \\ escapes are supported"
                    ));
                }
                c => Atom::Char(c),
            };
            atoms.push((atom, Repeat::One));
        }
        Ok(NamePattern { atoms, anchored_start, anchored_end })
    }

    pub fn matches(&self, text: &str) -> bool {
        let text: Vec<char> = text.chars().collect();
        if self.anchored_start {
            return self.match_here(0, &text);
        }
        (0..=text.len()).any(|start| self.match_here(0, &text[start..]))
    }

    fn match_here(&self, atom: usize, text: &[char]) -> bool {
        let Some(&(current, repeat)) = self.atoms.get(atom) else {
            return !self.anchored_end || text.is_empty();
        };
        let fits = |c: &char| current == Atom::Any || current == Atom::Char(*c);
        let (min, max) = match repeat {
            Repeat::One => (1, 1),
            Repeat::ZeroOrOne => (0, 1),
            Repeat::ZeroOrMore => (0, usize::MAX),
            Repeat::OneOrMore => (1, usize::MAX),
        };
        let available = text.iter().take_while(|c| fits(c)).count().min(max);
        // Greedy, backing off one character at a time.
        (min..=available).rev().any(|taken| self.match_here(atom + 1, &text[taken..]))
    }
}

/// An optional `--name`/`--namespace` pattern: none matches everything.
pub fn optional_pattern(pattern: &Option<String>) -> Result<Option<NamePattern>, String> {
    pattern.as_deref().filter(|p| !p.is_empty()).map(NamePattern::parse).transpose()
}

pub fn pattern_matches(pattern: &Option<NamePattern>, text: &str) -> bool {
    pattern.as_ref().is_none_or(|pattern| pattern.matches(text))
}

/// How many of `count` items (newest first) `--latest` and `--last N` keep.
pub fn keep_count(count: usize, latest: bool, last: Option<usize>) -> usize {
    match (latest, last) {
        (true, _) => count.min(1),
        (false, Some(last)) if last > 0 => count.min(last),
        _ => count,
    }
}

/// The first 13 characters of an ID after `prefix` (`sha256:` for image IDs), unless `no_trunc`.
pub fn short_id(id: &str, prefix: &str, no_trunc: bool) -> String {
    if no_trunc {
        return id.to_owned();
    }
    id.strip_prefix(prefix).unwrap_or(id).chars().take(SHORT_ID_LEN).collect()
}

/// "5 minutes ago" for a CRI timestamp in nanoseconds, with docker's (go-units) wording.
pub fn ago(nanos: i64) -> String {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos() as i64).unwrap_or(0);
    human_duration(now.saturating_sub(nanos).max(0) as u64 / 1_000_000_000) + " ago"
}

fn human_duration(seconds: u64) -> String {
    let minutes = seconds / 60;
    let hours = (seconds + 1800) / 3600;
    match seconds {
        0 => "Less than a second".to_owned(),
        1 => "1 second".to_owned(),
        2..60 => format!("{seconds} seconds"),
        _ if minutes == 1 => "About a minute".to_owned(),
        _ if minutes < 60 => format!("{minutes} minutes"),
        _ if hours == 1 => "About an hour".to_owned(),
        _ if hours < 48 => format!("{hours} hours"),
        _ if hours < 24 * 7 * 2 => format!("{} days", hours / 24),
        _ if hours < 24 * 30 * 2 => format!("{} weeks", hours / 24 / 7),
        _ if hours < 24 * 365 * 2 => format!("{} months", hours / 24 / 30),
        _ => format!("{} years", hours / 24 / 365),
    }
}

/// A CRI timestamp (nanoseconds since the epoch) as RFC 3339 in UTC with trailing zeros of the fraction
/// dropped, the way crictl prints `createdAt`; 0 is Go's zero time, as crictl prints an unset one.
pub fn rfc3339(nanos: i64) -> String {
    if nanos == 0 {
        return "0001-01-01T00:00:00Z".to_owned();
    }
    let seconds = nanos.div_euclid(1_000_000_000);
    let fraction = nanos.rem_euclid(1_000_000_000);
    let (days, second_of_day) = (seconds.div_euclid(86_400), seconds.rem_euclid(86_400));
    let (year, month, day) = civil_from_days(days);
    let mut text = format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}",
        second_of_day / 3600,
        second_of_day / 60 % 60,
        second_of_day % 60
    );
    if fraction != 0 {
        text.push_str(format!(".{fraction:09}").trim_end_matches('0'));
    }
    text.push('Z');
    text
}

/// Days since 1970-01-01 to a proleptic Gregorian date (Howard Hinnant's `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z.rem_euclid(146_097);
    let year_of_era = (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let mp = (5 * day_of_year + 2) / 153;
    let day = (day_of_year - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// Which CRI enum a `state` field holds.
#[derive(Debug, Clone, Copy)]
pub enum StateKind {
    Pod,
    Container,
}

/// Rewrites the CRI enums of a serialized status or list (numbers, as prost keeps them) to their names, as
/// crictl prints them: `state`, namespace modes, mount propagation, port protocols and stop signals.
pub fn name_enums(value: &mut Value, kind: StateKind) {
    match value {
        Value::Object(map) => {
            for (key, field) in map.iter_mut() {
                let Some(number) = field.as_i64().and_then(|n| i32::try_from(n).ok()) else {
                    name_enums(field, kind);
                    continue;
                };
                let name = match (key.as_str(), kind) {
                    ("state", StateKind::Pod) => PodSandboxState::try_from(number).ok().map(|s| s.as_str_name()),
                    ("state", StateKind::Container) => ContainerState::try_from(number).ok().map(|s| s.as_str_name()),
                    ("network" | "pid" | "ipc", _) => NamespaceMode::try_from(number).ok().map(|m| m.as_str_name()),
                    ("propagation", _) => MountPropagation::try_from(number).ok().map(|p| p.as_str_name()),
                    ("protocol", _) => Protocol::try_from(number).ok().map(|p| p.as_str_name()),
                    ("stopSignal", _) => Signal::try_from(number).ok().map(|s| s.as_str_name()),
                    _ => None,
                };
                if let Some(name) = name {
                    *field = Value::String(name.to_owned());
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(|item| name_enums(item, kind)),
        _ => {}
    }
}

/// The `{"status": ..., "info": ...}` document `inspect` and `inspectp` print: the status with enums by
/// name and the timestamps in `times` as RFC 3339, and each verbose info value decoded from the JSON it
/// travels as (a value that is not JSON stays a string), beside it under its own key.
pub fn status_document(
    status: &impl serde::Serialize,
    kind: StateKind,
    times: &[&str],
    info: &std::collections::HashMap<String, String>,
) -> Result<Value, String> {
    let mut status = serde_json::to_value(status).map_err(|e| format!("cannot encode the status: {e}"))?;
    name_enums(&mut status, kind);
    for key in times {
        if let Some(field) = status.get_mut(*key) {
            let nanos = field.as_i64().unwrap_or(0);
            *field = Value::String(rfc3339(nanos));
        }
    }
    let mut document = serde_json::Map::new();
    document.insert("status".to_owned(), status);
    let mut keys: Vec<&String> = info.keys().collect();
    keys.sort();
    for key in keys {
        let text = &info[key];
        let value = serde_json::from_str(text).unwrap_or_else(|_| Value::String(text.clone()));
        document.insert(key.clone(), value);
    }
    Ok(Value::Object(document))
}

/// Prints `inspect`/`inspectp` documents: one alone, several as an array (crictl's shape), in JSON unless
/// YAML is asked for.
pub fn print_documents(format: super::OutputFormat, mut documents: Vec<Value>) -> Result<(), String> {
    let value = if documents.len() == 1 { documents.remove(0) } else { Value::Array(documents) };
    let format = if format == super::OutputFormat::Table { super::OutputFormat::Json } else { format };
    super::output::print(format, &value, |value| value.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_parse_as_key_value_and_select() {
        let selector = parse_labels(&["app=web".into(), "tier=".into()]).unwrap();
        assert_eq!(selector.len(), 2);
        assert_eq!(selector["tier"], "");
        assert!(parse_labels(&["novalue".into()]).is_err());
        assert!(parse_labels(&["=x".into()]).is_err());
        assert!(parse_labels(&["a=b=c".into()]).is_err());
        let labels = [("app".to_owned(), "web".to_owned()), ("tier".to_owned(), String::new())].into();
        assert!(labels_match(&labels, &selector));
        assert!(labels_match(&labels, &Default::default()));
        let other = [("app".to_owned(), "db".to_owned())].into();
        assert!(!labels_match(&labels, &other));
    }

    #[test]
    fn name_patterns_match_like_regular_expressions() {
        let matches = |pattern: &str, text: &str| NamePattern::parse(pattern).unwrap().matches(text);
        assert!(matches("web", "my-web-1"), "unanchored matches anywhere");
        assert!(matches("^web", "web-1"));
        assert!(!matches("^web", "my-web"));
        assert!(matches("web$", "my-web"));
        assert!(!matches("web$", "web-1"));
        assert!(matches("^w.b-.$", "web-1"));
        assert!(matches("^a.*z$", "abcz"));
        assert!(matches("^a.*z$", "az"));
        assert!(!matches("^a.+z$", "az"));
        assert!(matches("^colou?r$", "color"));
        assert!(matches("^colou?r$", "colour"));
        assert!(matches("^a\\.b$", "a.b"));
        assert!(!matches("^a\\.b$", "axb"));
        assert!(matches("", "anything"));
        assert!(NamePattern::parse("web|db").is_err());
        assert!(NamePattern::parse("*x").is_err());
        assert!(optional_pattern(&Some(String::new())).unwrap().is_none());
        assert!(pattern_matches(&None, "x"));
    }

    #[test]
    fn latest_and_last_keep_the_newest() {
        assert_eq!(keep_count(5, false, None), 5);
        assert_eq!(keep_count(5, true, None), 1);
        assert_eq!(keep_count(0, true, None), 0);
        assert_eq!(keep_count(5, false, Some(2)), 2);
        assert_eq!(keep_count(5, false, Some(0)), 5, "--last 0 is unlimited");
        assert_eq!(keep_count(1, false, Some(3)), 1);
    }

    #[test]
    fn ids_times_and_durations_print_as_crictl_does() {
        assert_eq!(short_id("0123456789abcdef", "", false), "0123456789abc");
        assert_eq!(short_id("sha256:0123456789abcdef", "sha256:", false), "0123456789abc");
        assert_eq!(short_id("sha256:0123456789abcdef", "sha256:", true), "sha256:0123456789abcdef");
        assert_eq!(rfc3339(0), "0001-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_700_000_000_123_456_789), "2023-11-14T22:13:20.123456789Z");
        assert_eq!(rfc3339(1_700_000_000_500_000_000), "2023-11-14T22:13:20.5Z");
        assert_eq!(rfc3339(951_782_400_000_000_000), "2000-02-29T00:00:00Z");
        assert_eq!(human_duration(0), "Less than a second");
        assert_eq!(human_duration(45), "45 seconds");
        assert_eq!(human_duration(90), "About a minute");
        assert_eq!(human_duration(600), "10 minutes");
        assert_eq!(human_duration(3700), "About an hour");
        assert_eq!(human_duration(5 * 3600), "5 hours");
        assert_eq!(human_duration(3 * 86_400), "3 days");
    }

    #[test]
    fn enums_print_by_name() {
        let mut value = serde_json::json!({
            "state": 1,
            "linux": {"namespaces": {"options": {"network": 2, "pid": 1, "ipc": 0}}},
            "mounts": [{"propagation": 2}],
            "portMappings": [{"protocol": 1}],
            "exitCode": 1,
        });
        name_enums(&mut value, StateKind::Container);
        assert_eq!(value["state"], "CONTAINER_RUNNING");
        assert_eq!(value["linux"]["namespaces"]["options"]["network"], "NODE");
        assert_eq!(value["linux"]["namespaces"]["options"]["pid"], "CONTAINER");
        assert_eq!(value["mounts"][0]["propagation"], "PROPAGATION_BIDIRECTIONAL");
        assert_eq!(value["portMappings"][0]["protocol"], "UDP");
        assert_eq!(value["exitCode"], 1, "other numbers stay numbers");
        let mut pod = serde_json::json!({"state": 1});
        name_enums(&mut pod, StateKind::Pod);
        assert_eq!(pod["state"], "SANDBOX_NOTREADY");
    }

    #[test]
    fn status_documents_decode_the_verbose_info() {
        let status = crate::cri::v1::PodSandboxStatus { id: "abc".into(), created_at: 1, ..Default::default() };
        let info = [("info".to_owned(), r#"{"pid": 7}"#.to_owned()), ("note".to_owned(), "plain".to_owned())].into();
        let document = status_document(&status, StateKind::Pod, &["createdAt"], &info).unwrap();
        assert_eq!(document["status"]["id"], "abc");
        assert_eq!(document["status"]["state"], "SANDBOX_READY");
        assert_eq!(document["status"]["createdAt"], "1970-01-01T00:00:00.000000001Z");
        assert_eq!(document["info"]["pid"], 7);
        assert_eq!(document["note"], "plain");
    }
}
