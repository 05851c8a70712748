//! The StatsD / DogStatsD line parser: one line in, a borrowed [`Line`] or a [`Malformed`]
//! reason out. No allocation; every value is checked here, so what the receiver merges is
//! always well formed.
//!
//! ```text
//! <name>:<value>[:<value>...]|<type>[|@<rate>][|#<tag>,<tag>...][|c:<container>][|T<unix secs>]
//! _e{<title len>,<text len>}:...   (an event: counted, skipped)
//! _sc|<name>|<status>...            (a service check: counted, skipped)
//! ```
//!
//! Types: `c` counter, `g` gauge (a value written with a sign, `+3` or `-2`, changes the
//! gauge by that much, as in Etsy StatsD), `ms` timer, `h` histogram, `d` distribution,
//! `s` set. Several values separated by `:` (DogStatsD protocol 1.1) are several samples.
//! The container field (`|c:`), the timestamp (`|T`) and fields this parser does not know
//! that start with a letter (newer DogStatsD extensions such as `|e:` or `|card:`) are
//! accepted and ignored; see docs/configuration.md, `[statsd]`.

/// A metric type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// `c`: a count; with a sample rate each value stands for `1 / rate` of them.
    Counter,
    /// `g`: a gauge.
    Gauge,
    /// `ms`: a duration in milliseconds.
    Timer,
    /// `h`: a histogram sample.
    Histogram,
    /// `d`: a distribution sample (the same as `h` here: both are kept whole).
    Distribution,
    /// `s`: a set member; the period publishes how many distinct members it saw.
    Set,
}

impl Kind {
    /// One byte naming the kind (part of the receiver's series key).
    pub fn tag(self) -> u8 {
        match self {
            Kind::Counter => b'c',
            Kind::Gauge => b'g',
            Kind::Timer => b'm',
            Kind::Histogram => b'h',
            Kind::Distribution => b'd',
            Kind::Set => b's',
        }
    }
}

/// One metric line, borrowed from the packet.
#[derive(Debug, Clone, PartialEq)]
pub struct Metric<'a> {
    /// The metric name as sent.
    pub name: &'a str,
    /// Its type.
    pub kind: Kind,
    /// The first value (0 for a set, whose member is [`Metric::member`]).
    pub first: f64,
    /// Further `:`-separated values, already checked (empty for most lines).
    pub rest: &'a str,
    /// A gauge value written with a sign: a change, not a level.
    pub delta: bool,
    /// The set member as sent.
    pub member: &'a str,
    /// The sample rate, in (0, 1]; 1 when absent.
    pub rate: f64,
    /// The tags after `#`, comma separated, as sent (empty when none).
    pub tags: &'a str,
}

impl Metric<'_> {
    /// Every value of the line, in order.
    pub fn values(&self) -> impl Iterator<Item = f64> + '_ {
        std::iter::once(self.first).chain(
            self.rest
                .split(':')
                .filter(|s| !s.is_empty())
                .filter_map(|s| parse_value(s).map(|(v, _)| v)),
        )
    }
}

/// What one line is.
#[derive(Debug, Clone, PartialEq)]
pub enum Line<'a> {
    /// A metric sample (or several).
    Metric(Metric<'a>),
    /// A DogStatsD event (`_e{`): counted and skipped.
    Event,
    /// A DogStatsD service check (`_sc|`): counted and skipped.
    ServiceCheck,
}

/// Why a line was refused; [`Malformed::reason`] is its counter label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Malformed {
    /// No `:` between name and value.
    MissingValue,
    /// The name is empty.
    EmptyName,
    /// No `|type` after the value.
    MissingType,
    /// The type is not one of c, g, ms, h, d, s.
    UnknownType,
    /// A value is not a finite number.
    BadValue,
    /// `@rate` is not a number in (0, 1].
    BadSampleRate,
    /// A field is empty or unknown and does not start with a letter, or `|T` is not a
    /// number.
    BadField,
    /// A counter, timer, histogram or distribution value is negative (a gauge may be).
    NegativeValue,
}

impl Malformed {
    /// The `reason` label this refusal is counted under.
    pub fn reason(self) -> &'static str {
        match self {
            Malformed::MissingValue => "missing_value",
            Malformed::EmptyName => "empty_name",
            Malformed::MissingType => "missing_type",
            Malformed::UnknownType => "unknown_type",
            Malformed::BadValue => "bad_value",
            Malformed::BadSampleRate => "bad_sample_rate",
            Malformed::BadField => "bad_field",
            Malformed::NegativeValue => "negative_value",
        }
    }

    /// Every reason, for registering their counters up front.
    pub const ALL: [Malformed; 8] = [
        Malformed::MissingValue,
        Malformed::EmptyName,
        Malformed::MissingType,
        Malformed::UnknownType,
        Malformed::BadValue,
        Malformed::BadSampleRate,
        Malformed::BadField,
        Malformed::NegativeValue,
    ];

    /// What the sender should fix.
    pub fn explain(self) -> &'static str {
        match self {
            Malformed::MissingValue => "expected name:value|type",
            Malformed::EmptyName => "the metric name is empty",
            Malformed::MissingType => "expected |type after the value (c, g, ms, h, d or s)",
            Malformed::UnknownType => "the type is not c, g, ms, h, d or s",
            Malformed::BadValue => "a value is not a finite number",
            Malformed::BadSampleRate => "the sample rate must be @r with 0 < r <= 1",
            Malformed::BadField => "a |field is empty or not understood (|T must be a number)",
            Malformed::NegativeValue => {
                "counters, timers, histograms and distributions take values >= 0"
            }
        }
    }
}

/// A number and whether it was written with a sign.
fn parse_value(s: &str) -> Option<(f64, bool)> {
    let signed = s.starts_with(['+', '-']);
    // `f64::from_str` takes "inf" and "nan": refused below.
    let v: f64 = s.parse().ok()?;
    v.is_finite().then_some((v, signed))
}

/// Parses one line (without its newline; a trailing `\r` is ignored). `None` for an empty
/// line.
pub fn parse_line(line: &str) -> Option<Result<Line<'_>, Malformed>> {
    let line = line.strip_suffix('\r').unwrap_or(line);
    if line.is_empty() {
        return None;
    }
    if line.starts_with("_e{") {
        return Some(Ok(Line::Event));
    }
    if line.starts_with("_sc|") {
        return Some(Ok(Line::ServiceCheck));
    }
    Some(parse_metric(line).map(Line::Metric))
}

fn parse_metric(line: &str) -> Result<Metric<'_>, Malformed> {
    let (name, rest) = line.split_once(':').ok_or(Malformed::MissingValue)?;
    if name.is_empty() {
        return Err(Malformed::EmptyName);
    }
    let (values, rest) = rest.split_once('|').ok_or(Malformed::MissingType)?;
    let (ty, fields) = match rest.split_once('|') {
        Some((t, f)) => (t, Some(f)),
        None => (rest, None),
    };
    let kind = match ty {
        "c" => Kind::Counter,
        "g" => Kind::Gauge,
        "ms" => Kind::Timer,
        "h" => Kind::Histogram,
        "d" => Kind::Distribution,
        "s" => Kind::Set,
        _ => return Err(Malformed::UnknownType),
    };
    let mut m = Metric {
        name,
        kind,
        first: 0.0,
        rest: "",
        delta: false,
        member: "",
        rate: 1.0,
        tags: "",
    };
    if kind == Kind::Set {
        if values.is_empty() {
            return Err(Malformed::BadValue);
        }
        m.member = values;
    } else {
        let (first, more) = match values.split_once(':') {
            Some((f, r)) => (f, r),
            None => (values, ""),
        };
        let (v, signed) = parse_value(first).ok_or(Malformed::BadValue)?;
        m.first = v;
        m.delta = kind == Kind::Gauge && signed;
        let negative_allowed = kind == Kind::Gauge;
        if v < 0.0 && !negative_allowed {
            return Err(Malformed::NegativeValue);
        }
        for s in more.split(':').filter(|_| !more.is_empty()) {
            let (v, signed) = parse_value(s).ok_or(Malformed::BadValue)?;
            if (v < 0.0 && !negative_allowed) || (kind == Kind::Gauge && signed != m.delta) {
                // A gauge line mixing levels and changes has no single meaning.
                return Err(if v < 0.0 && !negative_allowed {
                    Malformed::NegativeValue
                } else {
                    Malformed::BadValue
                });
            }
        }
        m.rest = more;
    }
    if let Some(fields) = fields {
        for f in fields.split('|') {
            let b = f.as_bytes();
            match b.first() {
                Some(b'@') => {
                    let r: f64 = f[1..].parse().map_err(|_| Malformed::BadSampleRate)?;
                    if !(r > 0.0 && r <= 1.0) {
                        return Err(Malformed::BadSampleRate);
                    }
                    m.rate = r;
                }
                Some(b'#') => m.tags = &f[1..],
                Some(b'T') => {
                    if f.len() < 2 || !b[1..].iter().all(u8::is_ascii_digit) {
                        return Err(Malformed::BadField);
                    }
                }
                Some(c) if c.is_ascii_alphabetic() => {} // |c:container, |e:..., |card:...
                _ => return Err(Malformed::BadField),
            }
        }
    }
    Ok(m)
}

/// The tags of a line: `(key, value)`, a tag without `:` has an empty value.
pub fn tags(raw: &str) -> impl Iterator<Item = (&str, &str)> {
    raw.split(',')
        .filter(|t| !t.is_empty())
        .map(|t| match t.split_once(':') {
            Some((k, v)) => (k, v),
            None => (t, ""),
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn metric(line: &str) -> Metric<'_> {
        match parse_line(line) {
            Some(Ok(Line::Metric(m))) => m,
            other => panic!("{line:?}: {other:?}"),
        }
    }

    fn refused(line: &str) -> Malformed {
        match parse_line(line) {
            Some(Err(e)) => e,
            other => panic!("{line:?} should be refused: {other:?}"),
        }
    }

    #[test]
    fn every_type_parses_with_its_value() {
        let m = metric("api.requests:3|c");
        assert_eq!(
            (m.name, m.kind, m.first, m.rate),
            ("api.requests", Kind::Counter, 3.0, 1.0)
        );
        assert_eq!(metric("t:12.5|ms").kind, Kind::Timer);
        assert_eq!(metric("h:1|h").kind, Kind::Histogram);
        assert_eq!(metric("d:1|d").kind, Kind::Distribution);
        let s = metric("users:alice|s");
        assert_eq!((s.kind, s.member), (Kind::Set, "alice"));
        let g = metric("q:-4|g");
        assert!(g.delta && g.first == -4.0);
        let g = metric("q:4|g");
        assert!(!g.delta && g.first == 4.0);
        assert!(metric("q:+4|g").delta);
    }

    #[test]
    fn rate_tags_container_and_timestamp_fields_are_read_or_ignored() {
        let m = metric("hits:1|c|@0.25|#route:/a,env:prod,canary|c:abc123|T1700000000");
        assert_eq!(m.rate, 0.25);
        assert_eq!(m.tags, "route:/a,env:prod,canary");
        let t: Vec<_> = tags(m.tags).collect();
        assert_eq!(t, vec![("route", "/a"), ("env", "prod"), ("canary", "")]);
        // Unknown lettered fields of newer DogStatsD versions are accepted.
        assert_eq!(metric("hits:1|c|e:it-abc|card:low").first, 1.0);
    }

    #[test]
    fn several_values_on_one_line_are_several_samples() {
        let m = metric("lat:1:2.5:3|d|#a:b");
        assert_eq!(m.values().collect::<Vec<_>>(), vec![1.0, 2.5, 3.0]);
    }

    #[test]
    fn events_and_service_checks_are_recognised() {
        assert_eq!(parse_line("_e{5,4}:title|text|#a:b"), Some(Ok(Line::Event)));
        assert_eq!(parse_line("_sc|db|0|#a:b"), Some(Ok(Line::ServiceCheck)));
        assert_eq!(parse_line(""), None);
        assert_eq!(parse_line("\r"), None);
    }

    #[test]
    fn malformed_lines_are_refused_with_the_reason_to_fix() {
        assert_eq!(refused("novalue"), Malformed::MissingValue);
        assert_eq!(refused(":1|c"), Malformed::EmptyName);
        assert_eq!(refused("a:1"), Malformed::MissingType);
        assert_eq!(refused("a:1|x"), Malformed::UnknownType);
        assert_eq!(refused("a:abc|c"), Malformed::BadValue);
        assert_eq!(refused("a:nan|g"), Malformed::BadValue);
        assert_eq!(refused("a:inf|ms"), Malformed::BadValue);
        assert_eq!(refused("a:|s"), Malformed::BadValue);
        assert_eq!(refused("a:1|c|@0"), Malformed::BadSampleRate);
        assert_eq!(refused("a:1|c|@1.5"), Malformed::BadSampleRate);
        assert_eq!(refused("a:1|c|@x"), Malformed::BadSampleRate);
        assert_eq!(refused("a:1|c||#x"), Malformed::BadField);
        assert_eq!(refused("a:1|c|Tsoon"), Malformed::BadField);
        assert_eq!(refused("a:-1|c"), Malformed::NegativeValue);
        assert_eq!(refused("a:1:-2|ms"), Malformed::NegativeValue);
        assert_eq!(refused("a:+1:2|g"), Malformed::BadValue);
    }

    proptest! {
        #[test]
        fn any_text_parses_or_is_refused_without_panicking(s in "\\PC{0,64}") {
            let _ = parse_line(&s);
        }

        #[test]
        fn a_well_formed_counter_line_round_trips(
            name in "[a-zA-Z][a-zA-Z0-9_.]{0,30}",
            v in 0u32..1_000_000,
            rate in 1u32..=100,
        ) {
            let line = format!("{name}:{v}|c|@{}", f64::from(rate) / 100.0);
            let m = metric(&line);
            prop_assert_eq!(m.name, name.as_str());
            prop_assert_eq!(m.first, f64::from(v));
            prop_assert_eq!(m.rate, f64::from(rate) / 100.0);
        }
    }
}
