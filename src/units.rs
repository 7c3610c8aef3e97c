//! Durations (`"10s"`, `"1m30s"`, `"250ms"`) and sizes (`"256mb"`) as written in
//! agent.toml, manifests and desired-state documents.
//!
//! Sizes follow Redis's own convention, so that a size means the same in a spec as
//! in a `redis.conf`: `k`, `m`, `g` are powers of 1000 and `kb`, `mb`, `gb` powers of
//! 1024, case-insensitive; a bare number is bytes.

use std::time::Duration;

/// Parses a human duration such as `"10s"` or `"1m 30s"`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text.trim())
        .map_err(|e| format!("{text:?} is not a duration ({e}); write e.g. \"10s\" or \"2m\""))
}

/// Parses a size into bytes.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let bad = || format!("{text:?} is not a size; write e.g. \"256mb\", \"1gb\" or a number of bytes");
    let lower = text.trim().to_ascii_lowercase();
    let digits_end = lower.find(|c: char| !c.is_ascii_digit()).unwrap_or(lower.len());
    if digits_end == 0 {
        return Err(bad());
    }
    let number: u64 = lower[..digits_end].parse().map_err(|_| bad())?;
    let multiplier: u64 = match &lower[digits_end..] {
        "" | "b" => 1,
        "k" => 1000,
        "kb" => 1024,
        "m" => 1000 * 1000,
        "mb" => 1024 * 1024,
        "g" => 1000 * 1000 * 1000,
        "gb" => 1024 * 1024 * 1024,
        _ => return Err(bad()),
    };
    number
        .checked_mul(multiplier)
        .ok_or_else(|| format!("{text:?} is too large"))
}

/// Formats a duration for tables and messages: `1h2m`, `3m4s`, `5s`, `250ms`.
pub fn format_duration_short(d: Duration) -> String {
    let secs = d.as_secs();
    match secs {
        0 if d.is_zero() => "0s".to_string(),
        0 => format!("{}ms", d.as_millis()),
        1..=59 => format!("{secs}s"),
        60..=3599 => format!("{}m{}s", secs / 60, secs % 60),
        3600..=86399 => format!("{}h{}m", secs / 3600, (secs % 3600) / 60),
        _ => format!("{}d{}h", secs / 86400, (secs % 86400) / 3600),
    }
}

/// Sizes in binary units with one decimal: `1.5 GiB`.
pub fn format_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    // f64 loses precision only beyond 2^53 bytes, far below what one decimal shows.
    let mut value = bytes as f64 / 1024.0;
    let mut unit = UNITS[0];
    for next in &UNITS[1..] {
        if value < 1024.0 {
            break;
        }
        value /= 1024.0;
        unit = next;
    }
    format!("{value:.1} {unit}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn sizes_follow_redis_units() {
        assert_eq!(parse_size("256mb"), Ok(256 * 1024 * 1024));
        assert_eq!(parse_size("256MB"), Ok(256 * 1024 * 1024));
        assert_eq!(parse_size("1k"), Ok(1000));
        assert_eq!(parse_size("1kb"), Ok(1024));
        assert_eq!(parse_size("2g"), Ok(2_000_000_000));
        assert_eq!(parse_size("1gb"), Ok(1 << 30));
        assert_eq!(parse_size("1234"), Ok(1234));
        assert!(parse_size("").is_err());
        assert!(parse_size("mb").is_err());
        assert!(parse_size("-1mb").is_err());
        assert!(parse_size("1.5gb").is_err());
        assert!(parse_size("1tb").is_err());
        assert!(parse_size("99999999999999999999gb").is_err());
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("1m 30s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert!(parse_duration("10").is_err());
        assert!(parse_duration("soon").is_err());
    }

    #[test]
    fn short_format() {
        assert_eq!(format_duration_short(Duration::from_millis(250)), "250ms");
        assert_eq!(format_duration_short(Duration::ZERO), "0s");
        assert_eq!(format_duration_short(Duration::from_secs(59)), "59s");
        assert_eq!(format_duration_short(Duration::from_secs(61)), "1m1s");
        assert_eq!(format_duration_short(Duration::from_secs(3720)), "1h2m");
        assert_eq!(format_duration_short(Duration::from_secs(90000)), "1d1h");
    }

    proptest! {
        #[test]
        fn size_parser_never_panics(text in ".{0,40}") {
            let _ = parse_size(&text);
            let _ = parse_duration(&text);
        }

        #[test]
        fn sizes_round_trip(n in 0u64..1_000_000, unit in prop::sample::select(vec!["", "b", "k", "kb", "m", "mb", "g", "gb"])) {
            let parsed = parse_size(&format!("{n}{unit}")).unwrap();
            prop_assert!(parsed >= n);
            prop_assert_eq!(parsed % n.max(1), 0);
        }
    }

    #[test]
    fn sizes_in_binary_units() {
        assert_eq!(format_bytes(0), "0 B");
        assert_eq!(format_bytes(1023), "1023 B");
        assert_eq!(format_bytes(1536), "1.5 KiB");
        assert_eq!(format_bytes(3 << 30), "3.0 GiB");
        assert_eq!(format_bytes(u64::MAX), "16384.0 PiB");
    }
}
