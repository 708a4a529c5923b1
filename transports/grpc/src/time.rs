//! RFC 3339 ⇄ milliseconds since the Unix epoch, for `RequestMetadata.timestamp` (the core
//! carries text, the proto a number). Small and dependency-free: civil-date arithmetic after
//! Howard Hinnant's `days_from_civil` / `civil_from_days`.

use std::time::{SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch now (0 if the clock is before 1970).
pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

fn digits(s: &[u8]) -> Option<i64> {
    if s.is_empty() || !s.iter().all(u8::is_ascii_digit) {
        return None;
    }
    s.iter().try_fold(0i64, |acc, b| {
        acc.checked_mul(10)?.checked_add(i64::from(b - b'0'))
    })
}

/// Milliseconds for an RFC 3339 timestamp (`2025-01-01T00:00:00Z`, fractions and offsets
/// allowed) or a plain decimal millisecond count; `None` for anything else or before 1970.
pub(crate) fn parse_timestamp_ms(text: &str) -> Option<u64> {
    let s = text.trim().as_bytes();
    if s.len() <= 20 && !s.is_empty() && s.iter().all(u8::is_ascii_digit) {
        return u64::try_from(digits(s)?).ok();
    }
    if s.len() < 20 {
        return None;
    }
    let fixed = |at: usize, c: u8| s.get(at) == Some(&c);
    if !(fixed(4, b'-') && fixed(7, b'-') && fixed(13, b':') && fixed(16, b':')) {
        return None;
    }
    if !matches!(s[10], b'T' | b't' | b' ') {
        return None;
    }
    let (year, month, day) = (digits(&s[0..4])?, digits(&s[5..7])?, digits(&s[8..10])?);
    let (hour, minute, second) = (
        digits(&s[11..13])?,
        digits(&s[14..16])?,
        digits(&s[17..19])?,
    );
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || hour > 23 || minute > 59 {
        return None;
    }
    if second > 60 {
        return None;
    }
    let mut rest = &s[19..];
    let mut millis = 0i64;
    if rest.first() == Some(&b'.') {
        let frac_len = rest[1..].iter().take_while(|b| b.is_ascii_digit()).count();
        if frac_len == 0 {
            return None;
        }
        let frac = &rest[1..=frac_len];
        for (i, b) in frac.iter().take(3).enumerate() {
            millis += i64::from(b - b'0') * [100, 10, 1][i];
        }
        rest = &rest[1 + frac_len..];
    }
    let offset_minutes = match rest {
        [b'Z' | b'z'] => 0,
        [sign @ (b'+' | b'-'), h1, h2, b':', m1, m2] => {
            let h = digits(&[*h1, *h2])?;
            let m = digits(&[*m1, *m2])?;
            if h > 23 || m > 59 {
                return None;
            }
            let total = h * 60 + m;
            if *sign == b'-' { -total } else { total }
        }
        _ => return None,
    };
    let days = days_from_civil(year, month, day);
    let secs = days * 86_400 + hour * 3_600 + minute * 60 + second - offset_minutes * 60;
    u64::try_from(secs.checked_mul(1_000)?.checked_add(millis)?).ok()
}

/// RFC 3339 in UTC with milliseconds (`2025-01-01T00:00:00.000Z`); `""` for 0 (unset).
pub(crate) fn format_timestamp_ms(ms: u64) -> String {
    if ms == 0 {
        return String::new();
    }
    let Ok(ms) = i64::try_from(ms) else {
        return ms.to_string();
    };
    let (secs, millis) = (ms.div_euclid(1_000), ms.rem_euclid(1_000));
    let (days, sod) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let (y, m, d) = civil_from_days(days);
    if y > 9999 {
        return ms.to_string();
    }
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{millis:03}Z",
        sod / 3_600,
        sod % 3_600 / 60,
        sod % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_formats() {
        assert_eq!(
            parse_timestamp_ms("2025-01-01T00:00:00Z"),
            Some(1_735_689_600_000)
        );
        assert_eq!(
            parse_timestamp_ms("2025-01-01T01:00:00.250+01:00"),
            Some(1_735_689_600_250)
        );
        assert_eq!(parse_timestamp_ms("1735689600000"), Some(1_735_689_600_000));
        assert_eq!(parse_timestamp_ms("1969-12-31T23:59:59Z"), None);
        assert_eq!(parse_timestamp_ms("yesterday"), None);
        assert_eq!(parse_timestamp_ms(""), None);
        assert_eq!(
            format_timestamp_ms(1_735_689_600_250),
            "2025-01-01T00:00:00.250Z"
        );
        assert_eq!(format_timestamp_ms(0), "");
        for ms in [1u64, 951_782_400_000, 1_735_689_600_000, 4_102_444_799_999] {
            assert_eq!(parse_timestamp_ms(&format_timestamp_ms(ms)), Some(ms));
        }
    }
}
