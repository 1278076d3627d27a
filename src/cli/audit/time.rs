//! Times as CloudTrail writes them (RFC 3339, `2026-12-01T16:30:00Z`) and as `--since` /
//! `--until` take them (also a bare date): a small parser, because a date crate would be a
//! heavy dependency for one format.

/// A point in time: seconds since the Unix epoch (UTC) and nanoseconds; orders correctly.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp {
    /// Whole seconds since 1970-01-01T00:00:00Z.
    pub secs: i64,
    /// Nanoseconds past `secs`.
    pub nanos: u32,
}

/// Seconds in a day.
const DAY: i64 = 86_400;

/// Days from 1970-01-01 to `y-m-d` in the proleptic Gregorian calendar (H. Hinnant's
/// `days_from_civil`).
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = i64::from(m);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Whether `y` is a leap year.
fn leap(y: i64) -> bool {
    (y % 4 == 0 && y % 100 != 0) || y % 400 == 0
}

/// Exactly `n` ASCII digits at the start of `s`, and the rest.
fn digits(s: &str, n: usize) -> Option<(u32, &str)> {
    let head = s.get(..n)?;
    if !head.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some((head.parse().ok()?, &s[n..]))
}

/// `s` starting with `c`: the rest.
fn expect(s: &str, c: char) -> Option<&str> {
    s.strip_prefix(c)
}

/// `YYYY-MM-DD` at the start of `s`: days since the epoch, and the rest.
fn date(s: &str) -> Option<(i64, &str)> {
    let (y, s) = digits(s, 4)?;
    let (m, s) = digits(expect(s, '-')?, 2)?;
    let (d, s) = digits(expect(s, '-')?, 2)?;
    let y = i64::from(y);
    let month_days = [
        31,
        if leap(y) { 29 } else { 28 },
        31,
        30,
        31,
        30,
        31,
        31,
        30,
        31,
        30,
        31,
    ];
    let max = *month_days.get(usize::try_from(m).ok()?.checked_sub(1)?)?;
    if d == 0 || d > max {
        return None;
    }
    Some((days_from_civil(y, m, d), s))
}

impl Timestamp {
    /// Parse RFC 3339 (`2026-12-01T16:30:00Z`, `2026-12-01T16:30:00.123+02:00`, `t` or a space
    /// for `T`, `z` for `Z`); `None` when it is not one.
    pub fn parse_rfc3339(s: &str) -> Option<Timestamp> {
        let (days, s) = date(s)?;
        let s = s
            .strip_prefix('T')
            .or_else(|| s.strip_prefix('t'))
            .or_else(|| s.strip_prefix(' '))?;
        let (h, s) = digits(s, 2)?;
        let (mi, s) = digits(expect(s, ':')?, 2)?;
        let (sec, mut s) = digits(expect(s, ':')?, 2)?;
        // 60: a leap second, which CloudTrail never writes but RFC 3339 allows.
        if h > 23 || mi > 59 || sec > 60 {
            return None;
        }
        let mut nanos = 0u32;
        if let Some(frac) = s.strip_prefix('.') {
            let n = frac.bytes().take_while(u8::is_ascii_digit).count();
            if n == 0 {
                return None;
            }
            for (i, b) in frac.bytes().take(n).enumerate() {
                if i < 9 {
                    nanos = nanos * 10 + u32::from(b - b'0');
                }
            }
            nanos *= 10u32.pow(9u32.saturating_sub(u32::try_from(n).ok()?));
            s = &frac[n..];
        }
        let offset = match s {
            "Z" | "z" => 0,
            _ => {
                let sign = match s.as_bytes().first()? {
                    b'+' => 1,
                    b'-' => -1,
                    _ => return None,
                };
                let (oh, rest) = digits(&s[1..], 2)?;
                let (om, rest) = digits(expect(rest, ':')?, 2)?;
                if !rest.is_empty() || oh > 23 || om > 59 {
                    return None;
                }
                sign * (i64::from(oh) * 3600 + i64::from(om) * 60)
            }
        };
        let secs = days * DAY + i64::from(h) * 3600 + i64::from(mi) * 60 + i64::from(sec) - offset;
        Some(Timestamp { secs, nanos })
    }

    /// A command-line bound: RFC 3339, or a date `YYYY-MM-DD` (midnight UTC; `end_of_day`
    /// makes it the next midnight, so `--until 2026-12-01` includes that whole day). The
    /// returned bound is exclusive when `end_of_day` is set for a date, inclusive otherwise;
    /// see `Window`.
    pub fn parse_arg(s: &str) -> Option<(Timestamp, bool)> {
        if let Some(t) = Timestamp::parse_rfc3339(s) {
            return Some((t, false));
        }
        match date(s)? {
            (days, "") => Some((
                Timestamp {
                    secs: days * DAY,
                    nanos: 0,
                },
                true,
            )),
            _ => None,
        }
    }
}

/// The `--since` / `--until` window: `since <= t` and `t <= until` (or `t < until` when
/// `--until` was a date, then its next midnight).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Window {
    since: Option<Timestamp>,
    until: Option<(Timestamp, bool)>,
}

/// What `--since` / `--until` accept, for error messages.
const FORMATS: &str = "an RFC 3339 time such as 2026-12-01T16:30:00Z, or a date such as 2026-12-01";

impl Window {
    /// The window from the command-line texts; a usage message when one does not parse.
    pub fn parse(since: Option<&str>, until: Option<&str>) -> Result<Window, String> {
        let bad = |flag: &str, v: &str| format!("{flag} {v}: not {FORMATS}");
        let since = match since {
            Some(s) => Some(Timestamp::parse_arg(s).ok_or_else(|| bad("--since", s))?.0),
            None => None,
        };
        let until = match until {
            Some(s) => {
                let (t, date) = Timestamp::parse_arg(s).ok_or_else(|| bad("--until", s))?;
                let t = if date {
                    Timestamp {
                        secs: t.secs + DAY,
                        nanos: 0,
                    }
                } else {
                    t
                };
                Some((t, date))
            }
            None => None,
        };
        if let (Some(s), Some((u, excl))) = (since, until) {
            if u < s || (excl && u == s) {
                return Err("--until is before --since: no event can match".into());
            }
        }
        Ok(Window { since, until })
    }

    /// Whether `t` falls in the window.
    pub fn contains(&self, t: Timestamp) -> bool {
        self.since.is_none_or(|s| t >= s)
            && self
                .until
                .is_none_or(|(u, exclusive)| if exclusive { t < u } else { t <= u })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(s: &str) -> Timestamp {
        Timestamp::parse_rfc3339(s).unwrap_or_else(|| panic!("{s} should parse"))
    }

    #[test]
    fn cloudtrail_times_parse_to_epoch_seconds() {
        assert_eq!(ts("1970-01-01T00:00:00Z").secs, 0);
        // date -u -d 2026-12-01T16:30:00Z +%s
        assert_eq!(ts("2026-12-01T16:30:00Z").secs, 1_796_142_600);
        assert_eq!(ts("2000-02-29T00:00:00Z").secs, 951_782_400);
        let t = ts("2026-12-01T16:30:00.25Z");
        assert_eq!((t.secs, t.nanos), (1_796_142_600, 250_000_000));
        assert_eq!(ts("2026-12-01T18:30:00+02:00"), ts("2026-12-01T16:30:00Z"));
        assert_eq!(ts("2026-12-01t16:30:00z"), ts("2026-12-01T16:30:00Z"));
        assert!(ts("2026-12-01T16:30:00.5Z") > ts("2026-12-01T16:30:00.25Z"));
    }

    #[test]
    fn malformed_times_are_rejected() {
        for bad in [
            "",
            "2026-12-01",
            "2026-13-01T00:00:00Z",
            "2026-02-29T00:00:00Z",
            "2026-12-01T24:00:00Z",
            "2026-12-01T16:30Z",
            "2026-12-01T16:30:00",
            "2026-12-01T16:30:00.Z",
            "2026-12-01T16:30:00+0200",
            "26-12-01T16:30:00Z",
            "2026-12-01T16:30:00Zjunk",
        ] {
            assert_eq!(Timestamp::parse_rfc3339(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn a_date_bound_covers_its_whole_day() {
        let w = Window::parse(Some("2026-12-01"), Some("2026-12-01")).expect("window");
        assert!(!w.contains(ts("2026-11-30T23:59:59Z")));
        assert!(w.contains(ts("2026-12-01T00:00:00Z")));
        assert!(w.contains(ts("2026-12-01T23:59:59.999Z")));
        assert!(!w.contains(ts("2026-12-02T00:00:00Z")));
    }

    #[test]
    fn a_time_bound_is_inclusive() {
        let w = Window::parse(Some("2026-12-01T10:00:00Z"), Some("2026-12-01T11:00:00Z"))
            .expect("window");
        assert!(w.contains(ts("2026-12-01T10:00:00Z")));
        assert!(w.contains(ts("2026-12-01T11:00:00Z")));
        assert!(!w.contains(ts("2026-12-01T11:00:00.001Z")));
        assert!(!w.contains(ts("2026-12-01T09:59:59Z")));
        assert!(Window::default().contains(ts("1999-01-01T00:00:00Z")));
    }

    #[test]
    fn bad_bounds_are_usage_errors() {
        assert!(Window::parse(Some("yesterday"), None).is_err());
        assert!(Window::parse(None, Some("2026-12-32")).is_err());
        assert!(Window::parse(Some("2026-12-02"), Some("2026-12-01")).is_err());
    }
}
