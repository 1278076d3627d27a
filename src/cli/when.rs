//! Times for people: Unix seconds as a UTC date, and a key's age.

/// Unix seconds as "2026-12-01 16:30:00 UTC".
pub fn utc(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rest = secs % 86_400;
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02} UTC",
        rest / 3600,
        rest / 60 % 60,
        rest % 60
    )
}

/// "made 2026-11-01 10:00:00 UTC, 30 d 6 h ago" for a key made at `made` (Unix seconds).
pub fn key_age(made: u64, now: u64) -> String {
    format!(
        "made {}, {} ago",
        utc(made),
        super::status::duration(now.saturating_sub(made))
    )
}

/// Days since 1970-01-01 as (year, month, day) of the proleptic Gregorian calendar (Howard
/// Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_are_utc_calendar_dates() {
        assert_eq!(utc(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(utc(1_796_083_200), "2026-12-01 00:00:00 UTC");
        assert_eq!(utc(951_782_400 + 3661), "2000-02-29 01:01:01 UTC");
        assert_eq!(
            key_age(1_796_083_200, 1_796_083_200 + 2 * 86_400 + 3600),
            "made 2026-12-01 00:00:00 UTC, 2 d 1 h ago"
        );
    }
}
