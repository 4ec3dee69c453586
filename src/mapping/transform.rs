//! Transforms: the cleaning steps a field's value goes through (UK dates, NHS numbers, postcodes, phones).
//!
//! Errors say what is wrong and what to do, but never repeat the value: they end up in logs and reports, and
//! the value may be personal data. The quarantine keeps the row itself.

use chrono::{NaiveDate, NaiveDateTime, NaiveTime, TimeZone};
use serde_json::Value;

use crate::validate::nhs;

/// The transforms a mapping may name, in `transform = ...`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transform {
    Trim,
    Upper,
    Lower,
    NhsNumber,
    UkDate,
    UkDateTime,
    Postcode,
    UkPhone,
    Email,
    Integer,
    Decimal,
    Boolean,
    /// A multi-line cell (an address) into a list of its lines; see [`split_lines`].
    SplitLines,
}

impl Transform {
    pub const NAMES: &'static [&'static str] = &[
        "trim",
        "upper",
        "lower",
        "nhs_number",
        "uk_date",
        "uk_datetime",
        "postcode",
        "uk_phone",
        "email",
        "integer",
        "decimal",
        "boolean",
        "split_lines",
    ];

    pub fn from_name(name: &str) -> Option<Self> {
        Some(match name {
            "trim" => Self::Trim,
            "upper" => Self::Upper,
            "lower" => Self::Lower,
            "nhs_number" => Self::NhsNumber,
            "uk_date" => Self::UkDate,
            "uk_datetime" => Self::UkDateTime,
            "postcode" => Self::Postcode,
            "uk_phone" => Self::UkPhone,
            "email" => Self::Email,
            "integer" => Self::Integer,
            "decimal" => Self::Decimal,
            "boolean" => Self::Boolean,
            "split_lines" => Self::SplitLines,
            _ => return None,
        })
    }

    /// The longest value this transform can make sense of, in characters: a value longer than this is not a
    /// date, code or number at all (a shifted column, a broken quote) and is refused before it is parsed.
    pub fn max_chars(self) -> Option<usize> {
        match self {
            Self::Trim | Self::Upper | Self::Lower | Self::SplitLines => None,
            Self::Postcode => Some(16),
            Self::NhsNumber | Self::UkPhone | Self::Integer | Self::Decimal | Self::Boolean => Some(32),
            Self::UkDate | Self::UkDateTime => Some(40),
            // RFC 5321's limit on an address.
            Self::Email => Some(254),
        }
    }

    /// Applies the transform to a present value. A list (made by `split_lines`) is transformed item by item.
    pub fn apply(self, value: Value) -> Result<Value, String> {
        if let Value::Array(items) = value {
            let mut out = Vec::with_capacity(items.len());
            for item in items {
                match self.apply(item)? {
                    Value::Array(more) => out.extend(more),
                    v => out.push(v),
                }
            }
            return Ok(Value::Array(out));
        }
        let text = match value {
            Value::String(s) => s,
            other => other.to_string(),
        };
        let s = text.trim();
        Ok(match self {
            Self::Trim => Value::String(s.split_whitespace().collect::<Vec<_>>().join(" ")),
            Self::Upper => Value::String(s.to_uppercase()),
            Self::Lower => Value::String(s.to_lowercase()),
            Self::NhsNumber => Value::String(nhs_number(s)?),
            Self::UkDate => Value::String(uk_date(s)?.format("%Y-%m-%d").to_string()),
            Self::UkDateTime => Value::String(uk_datetime(s)?),
            Self::Postcode => Value::String(postcode(s)?),
            Self::UkPhone => Value::String(uk_phone(s)?),
            Self::Email => Value::String(email(s)?),
            Self::Integer => Value::from(integer(s)?),
            Self::Decimal => decimal(s)?,
            Self::Boolean => Value::Bool(boolean(s)?),
            Self::SplitLines => Value::Array(split_lines(s).into_iter().map(Value::String).collect()),
        })
    }
}

/// The lines of a multi-line cell: split at CR LF, CR or LF, and at the two characters `\n` (backslash, n),
/// which some case systems write for a line break in CSV exports (no address or name holds a backslash).
/// Each line is trimmed and its inner runs of white space collapsed; blank lines are dropped.
pub fn split_lines(s: &str) -> Vec<String> {
    s.replace("\\r\\n", "\n")
        .replace("\\n", "\n")
        .replace("\r\n", "\n")
        .replace('\r', "\n")
        .split('\n')
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .filter(|l| !l.is_empty())
        .collect()
}

/// Normalises an NHS number and checks it.
pub fn nhs_number(s: &str) -> Result<String, String> {
    let compact: String = s.chars().filter(|c| !matches!(c, ' ' | '-' | '\u{a0}')).collect();
    let digits = if compact.contains(['e', 'E']) {
        from_scientific(&compact).ok_or_else(|| {
            "not a valid NHS number: Excel's scientific notation lost digits; re-export with the column formatted as text"
                .to_string()
        })?
    } else {
        compact.strip_suffix(".0").unwrap_or(&compact).to_string()
    };
    if !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err("not a valid NHS number: it must be 10 digits (spaces are fine); check the source record".into());
    }
    // Excel drops a leading zero from a number column.
    let digits = if digits.len() == 9 { format!("0{digits}") } else { digits };
    if digits.len() != 10 {
        return Err(format!("not a valid NHS number: it has {} digits, not 10; check the source record", digits.len()));
    }
    if !nhs::is_valid(&digits) {
        return Err(
            "not a valid NHS number: the Modulus 11 check digit does not match; check the number with the person or their GP"
                .into(),
        );
    }
    Ok(digits)
}

/// Reads `9.990000018E+09` back into its digits when no digit was lost.
fn from_scientific(s: &str) -> Option<String> {
    let (mantissa, exp) = s.split_once(['e', 'E'])?;
    let exp: usize = exp.trim_start_matches('+').parse().ok()?;
    let (int, frac) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    if int.len() != 1 || !int.bytes().chain(frac.bytes()).all(|b| b.is_ascii_digit()) {
        return None;
    }
    let significant = format!("{int}{frac}");
    // Fewer significant digits than the number has means Excel rounded them away.
    if significant.len() != exp + 1 {
        return None;
    }
    Some(significant)
}

const NOT_A_DATE: &str = "not a date: expected dd/mm/yyyy (for example 03/04/1987); correct the date in the export";

const MONTHS: [&str; 12] = ["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"];

/// Reads a date as UK partners write it (day first).
pub fn uk_date(s: &str) -> Result<NaiveDate, String> {
    let s = s.trim();
    // Whole-number text between 10000 and 99999 is an Excel serial date that lost its format.
    if s.len() == 5 && s.bytes().all(|b| b.is_ascii_digit()) {
        let serial: i64 = s.parse().map_err(|_| NOT_A_DATE.to_string())?;
        return NaiveDate::from_ymd_opt(1899, 12, 30)
            .and_then(|d| d.checked_add_signed(chrono::Duration::days(serial)))
            .ok_or_else(|| "not a date: an Excel serial number out of range; correct the date in the export".into());
    }
    // ISO (what XLSX cells and APIs give), possibly with a time.
    if s.len() >= 10 && s.as_bytes()[4] == b'-' {
        if s.len() > 10 && !matches!(s.as_bytes()[10], b'T' | b' ') {
            return Err("not a date: unexpected text after yyyy-mm-dd; correct the date in the export".into());
        }
        return s
            .get(..10)
            .and_then(|d| NaiveDate::parse_from_str(d, "%Y-%m-%d").ok())
            .ok_or_else(|| "not a date: expected yyyy-mm-dd or dd/mm/yyyy; correct the date in the export".into());
    }
    let parts: Vec<&str> = s.split(['/', '-', '.', ' ']).filter(|p| !p.is_empty()).collect();
    if parts.len() != 3 {
        return Err(NOT_A_DATE.into());
    }
    let day: u32 = parts[0]
        .parse()
        .map_err(|_| "not a date: the day is not a number; correct the date in the export".to_string())?;
    let month: u32 = match parts[1].parse() {
        Ok(m) => m,
        Err(_) => {
            let name = parts[1].to_ascii_lowercase();
            MONTHS.iter().position(|m| name.starts_with(m)).map(|i| i as u32 + 1).ok_or_else(|| {
                "not a date: the month is neither a number nor a month name; correct the date in the export".to_string()
            })?
        }
    };
    if parts[2].len() != 4 {
        return Err("not a date: the year must have four digits (two-digit years are ambiguous for dates of birth); re-export with four-digit years".into());
    }
    let year: i32 = parts[2]
        .parse()
        .map_err(|_| "not a date: the year is not a number; correct the date in the export".to_string())?;
    if month > 12 {
        return Err("not a date: month above 12, so probably month/day/year (US order); correct the date in the export to day/month/year".into());
    }
    NaiveDate::from_ymd_opt(year, month, day).ok_or_else(|| "not a date: no such day in that month (a 31st in a 30-day month, or 29 February outside a leap year); correct the date in the export".into())
}

/// Reads a UK date with an optional time into a FHIR dateTime, with the Europe/London offset of that moment.
pub fn uk_datetime(s: &str) -> Result<String, String> {
    let s = s.trim();
    let (date_part, time_part) = if s.len() > 10 && s.as_bytes()[4] == b'-' && s.as_bytes()[10] == b'T' {
        (&s[..10], Some(&s[11..]))
    } else {
        match s.rsplit_once(' ') {
            Some((d, t)) if t.contains(':') => (d, Some(t)),
            _ => (s, None),
        }
    };
    let date = uk_date(date_part)?;
    let Some(t) = time_part else {
        return Ok(date.format("%Y-%m-%d").to_string());
    };
    let t = t.trim();
    // An API's timestamp with its own zone or offset is already unambiguous: keep its offset.
    if t.ends_with('Z') || t.contains('+') || t.chars().skip(1).any(|c| c == '-') {
        let full = format!("{}T{t}", date.format("%Y-%m-%d"));
        return chrono::DateTime::parse_from_rfc3339(&full)
            .map(|d| d.format("%Y-%m-%dT%H:%M:%S%:z").to_string())
            .map_err(|_| {
                "not a time: expected HH:MM, or an ISO 8601 time with its offset; correct the time in the export".into()
            });
    }
    let time = NaiveTime::parse_from_str(t, "%H:%M:%S")
        .or_else(|_| NaiveTime::parse_from_str(t, "%H:%M"))
        .map_err(|_| "not a time: expected HH:MM (24-hour clock); correct the time in the export".to_string())?;
    let local = NaiveDateTime::new(date, time);
    let zoned = match chrono_tz::Europe::London.from_local_datetime(&local) {
        chrono::LocalResult::Single(z) => z,
        // Clocks going back repeat an hour; the first (summer time) reading is taken so output is stable.
        chrono::LocalResult::Ambiguous(first, _) => first,
        chrono::LocalResult::None => {
            return Err("not a time that existed in the UK: the clocks went forward over it; check the record".into());
        }
    };
    Ok(zoned.format("%Y-%m-%dT%H:%M:%S%:z").to_string())
}

/// Normalises a UK postcode (`yo17hh` -> `YO1 7HH`).
pub fn postcode(s: &str) -> Result<String, String> {
    let compact: String = s.chars().filter(|c| !c.is_whitespace()).collect::<String>().to_uppercase();
    let b = compact.as_bytes();
    // ASCII first: the split below is by bytes (the fuzzer found "YO1 Ñ7HH" splitting a character).
    let valid = compact.is_ascii() && (5..=7).contains(&b.len()) && {
        let (outward, inward) = compact.split_at(b.len() - 3);
        let i = inward.as_bytes();
        let o = outward.as_bytes();
        i[0].is_ascii_digit()
            && i[1].is_ascii_alphabetic()
            && i[2].is_ascii_alphabetic()
            && o[0].is_ascii_alphabetic()
            && o.iter().all(u8::is_ascii_alphanumeric)
            && o.iter().any(u8::is_ascii_digit)
    };
    if !valid {
        return Err("not a UK postcode: expected the form YO1 7HH; check the address".into());
    }
    let (outward, inward) = compact.split_at(b.len() - 3);
    Ok(format!("{outward} {inward}"))
}

/// Normalises a UK phone number to national format without spaces.
pub fn uk_phone(s: &str) -> Result<String, String> {
    let mut digits: String = s.chars().filter(char::is_ascii_digit).collect();
    let international = s.trim_start().starts_with('+') || digits.starts_with("0044");
    if international {
        digits = digits.trim_start_matches("00").to_string();
        match digits.strip_prefix("44") {
            Some(rest) => digits = format!("0{}", rest.strip_prefix('0').unwrap_or(rest)),
            None => return Err("not a UK phone number: it has a foreign country code; correct the number in the export, or leave it out".into()),
        }
    }
    if s.chars().any(|c| c.is_ascii_alphabetic()) {
        return Err("not a phone number: it contains letters; correct the number in the export (a note belongs in another column)".into());
    }
    // Excel turns 07700 900123 into the number 7700900123.
    if digits.len() == 10 && matches!(digits.as_bytes()[0], b'1' | b'2' | b'3' | b'7' | b'8') {
        digits.insert(0, '0');
    }
    if !(10..=11).contains(&digits.len()) || !digits.starts_with('0') {
        return Err(
            "not a UK phone number: expected 10 or 11 digits starting with 0; correct the number in the export".into(),
        );
    }
    Ok(digits)
}

fn email(s: &str) -> Result<String, String> {
    let lower = s.to_lowercase();
    match lower.split_once('@') {
        Some((local, domain)) if !local.is_empty() && domain.contains('.') && !domain.contains('@') => Ok(lower),
        _ => Err("not an email address: it needs one @ and a domain; correct the address in the export".into()),
    }
}

fn integer(s: &str) -> Result<i64, String> {
    let t = s.strip_suffix(".0").unwrap_or(s);
    t.parse().map_err(|_| "not a whole number; correct the value in the export".to_string())
}

fn decimal(s: &str) -> Result<Value, String> {
    let n: f64 = s.parse().map_err(|_| "not a number; correct the value in the export".to_string())?;
    serde_json::Number::from_f64(n)
        .map(Value::Number)
        .ok_or_else(|| "not a finite number; correct the value in the export".into())
}

fn boolean(s: &str) -> Result<bool, String> {
    match s.to_ascii_lowercase().as_str() {
        "y" | "yes" | "true" | "1" | "t" => Ok(true),
        "n" | "no" | "false" | "0" | "f" => Ok(false),
        _ => Err("not yes or no: expected yes/no, y/n, true/false or 1/0; correct the answer in the export".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nhs_numbers_as_partners_send_them() {
        assert_eq!(nhs_number("999 000 0018").unwrap(), "9990000018");
        assert_eq!(nhs_number("999-000-0018").unwrap(), "9990000018");
        assert_eq!(nhs_number("9.990000018E+09").unwrap(), "9990000018");
        assert_eq!(nhs_number("9990000018.0").unwrap(), "9990000018");
        assert!(nhs_number("9.99E+09").unwrap_err().contains("lost digits"));
        assert!(nhs_number("9990000017").unwrap_err().contains("Modulus 11"));
        assert!(nhs_number("12345").unwrap_err().contains("5 digits"));
        assert!(nhs_number("not known").is_err());
        assert!(!nhs_number("9990000017").unwrap_err().contains("9990000017"), "errors never echo the value");
    }

    #[test]
    fn uk_dates() {
        let d = |s| uk_date(s).map(|d| d.to_string());
        assert_eq!(d("3/4/1987").unwrap(), "1987-04-03");
        assert_eq!(d("03/04/1987").unwrap(), "1987-04-03");
        assert_eq!(d("03-04-1987").unwrap(), "1987-04-03");
        assert_eq!(d("3 Apr 1987").unwrap(), "1987-04-03");
        assert_eq!(d("03-April-1987").unwrap(), "1987-04-03");
        assert_eq!(d("1987-04-03").unwrap(), "1987-04-03");
        assert_eq!(d("31870").unwrap(), "1987-04-03");
        assert!(d("3/4/87").unwrap_err().contains("four digits"));
        assert!(d("04/13/1987").unwrap_err().contains("US order"));
        assert!(d("31/02/1987").unwrap_err().contains("no such day"));
    }

    #[test]
    fn uk_datetimes_carry_the_london_offset() {
        assert_eq!(uk_datetime("28/03/2026 10:30").unwrap(), "2026-03-28T10:30:00+00:00");
        assert_eq!(uk_datetime("30/03/2026 10:30").unwrap(), "2026-03-30T10:30:00+01:00");
        assert_eq!(uk_datetime("2026-07-01T09:00:00").unwrap(), "2026-07-01T09:00:00+01:00");
        assert_eq!(uk_datetime("01/07/2026").unwrap(), "2026-07-01");
        assert!(uk_datetime("29/03/2026 01:30").unwrap_err().contains("clocks went forward"));
        assert_eq!(uk_datetime("25/10/2026 01:30").unwrap(), "2026-10-25T01:30:00+01:00");
        assert_eq!(uk_datetime("2026-07-01T08:00:00Z").unwrap(), "2026-07-01T08:00:00+00:00");
        assert_eq!(uk_datetime("2026-07-01T09:00:00+01:00").unwrap(), "2026-07-01T09:00:00+01:00");
        assert!(uk_date("1987-04-03junk").is_err());
    }

    #[test]
    fn split_lines_makes_one_entry_per_non_blank_line() {
        let lines = |s: &str| split_lines(s);
        assert_eq!(lines("12 Low Lane\nFlat 2"), ["12 Low Lane", "Flat 2"]);
        assert_eq!(lines("12 Low Lane\r\n\r\n  Flat 2  \rHeworth"), ["12 Low Lane", "Flat 2", "Heworth"]);
        assert_eq!(lines("12 Low Lane\\nFlat 2"), ["12 Low Lane", "Flat 2"], "the two characters \\n");
        assert_eq!(lines("One line"), ["One line"]);
        assert!(lines(" \n \r\n").is_empty());
        let v = Transform::SplitLines.apply(Value::String("a\nb".into())).unwrap();
        assert_eq!(v, serde_json::json!(["a", "b"]));
        assert_eq!(
            Transform::Upper.apply(v).unwrap(),
            serde_json::json!(["A", "B"]),
            "later transforms take each line"
        );
    }

    #[test]
    fn postcodes_and_phones() {
        assert_eq!(postcode("yo17hh").unwrap(), "YO1 7HH");
        assert_eq!(postcode(" YO10  5DD ").unwrap(), "YO10 5DD");
        assert!(postcode("York").is_err());
        assert!(postcode("YOÑ7HH").is_err() && postcode("ÑÑÑ").is_err(), "non-ASCII is refused, not a panic");
        assert!(uk_date("2024-01-0é").is_err() && uk_date("2024-é1-01").is_err());
        assert!(uk_datetime("03/04/1987 é:00").is_err());
        assert_eq!(uk_phone("7700900123").unwrap(), "07700900123");
        assert_eq!(uk_phone("+44 (0)7700 900123").unwrap(), "07700900123");
        assert_eq!(uk_phone("0113 496 0000").unwrap(), "01134960000");
        assert!(uk_phone("+33 1 23 45 67 89").is_err());
        assert!(uk_phone("123").is_err());
    }
}
