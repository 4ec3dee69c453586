//! Undoing a field's value map and transforms: a FHIR value back to the text the partner's export would hold,
//! chosen so that the forward transforms turn it into the same value again.

use chrono::{DateTime, NaiveDate, NaiveDateTime, Timelike};
use serde_json::Value;

use super::super::Field;
use super::super::transform::{self, Transform};
use super::matching::same;

/// Why a value has no text in the partner's layout.
#[derive(Debug, Clone)]
pub(super) enum Problem {
    /// No source code of the value map gives the value.
    NoCode { map: String, fallback: bool },
    /// A transform cannot be undone for this value (a date without its day, say).
    Transform(String),
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::NoCode { map, fallback: true } => write!(
                f,
                "the resource holds the [maps.{map}] fallback (\"*\"), which does not say what the partner's text was, and the partner's import requires a value; give the code its own entry in [maps.{map}]"
            ),
            Self::NoCode { map, fallback: false } => write!(
                f,
                "the resource's code is not a value of [maps.{map}], so the partner's layout has no text for it, and the partner's import requires a value; add the partner's wording for it to [maps.{map}]"
            ),
            Self::Transform(m) => f.write_str(m),
        }
    }
}

/// The partner texts that give a field's value, best first: one for a plain field; for a value map, every
/// code that gives the value, in file order (several may: DNA and "Did not attend" both give `cancelled`), so
/// that fields sharing the column can agree on one. None (an empty cell) when the field's default gives the
/// value back.
pub(super) fn field_texts(
    field: &Field,
    keys: Option<&[(String, Value)]>,
    value: &Value,
) -> Result<Vec<String>, Problem> {
    let texts: Vec<String> = match (&field.map, keys) {
        (Some(map), Some(keys)) => {
            let codes: Vec<String> = keys.iter().filter(|(_, v)| same(v, value)).map(|(k, _)| k.clone()).collect();
            if codes.is_empty() {
                if field.default.as_ref().is_some_and(|d| same(d, value)) {
                    return Ok(Vec::new());
                }
                let fallback = map.fallback.as_ref().is_some_and(|f| same(f, value));
                return Err(Problem::NoCode { map: map.name.clone(), fallback });
            }
            codes
        }
        _ => vec![plain(value)],
    };
    texts
        .into_iter()
        .map(|text| {
            field.transforms.iter().rev().try_fold(text, |t, tr| untransform(*tr, &t).map_err(Problem::Transform))
        })
        .filter(|t| !matches!(t, Ok(t) if t.is_empty()))
        .collect()
}

fn plain(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Undoes one transform. Cleaning transforms (trim, case, phone, postcode, NHS number) gave text the forward
/// transform accepts as it is.
pub(super) fn untransform(t: Transform, text: &str) -> Result<String, String> {
    Ok(match t {
        Transform::UkDate => uk_date(text)?,
        Transform::UkDateTime => uk_datetime(text)?,
        Transform::Boolean => match text.trim().to_ascii_lowercase().as_str() {
            "true" | "yes" | "y" | "1" | "t" => "Yes".into(),
            "false" | "no" | "n" | "0" | "f" => "No".into(),
            _ => return Err("not a yes/no value, which the field's boolean transform needs".into()),
        },
        Transform::Integer | Transform::Decimal => {
            if text.trim().parse::<f64>().is_err() {
                return Err("not a number, which the field's number transform needs".into());
            }
            text.trim().to_string()
        }
        // Refused when the reverse mapping loads; kept here so no list is ever written as one cell's text.
        Transform::SplitLines => {
            return Err("a field split into lines (split_lines) cannot be written back as one cell".into());
        }
        Transform::Trim
        | Transform::Upper
        | Transform::Lower
        | Transform::NhsNumber
        | Transform::Postcode
        | Transform::UkPhone
        | Transform::Email => text.to_string(),
    })
}

const NOT_A_DATE: &str = "not a full date (yyyy-mm-dd): the partner's layout needs day, month and year (dd/mm/yyyy), so a year or month alone cannot be written";

/// `2023-03-24` -> `24/03/2023`. A dateTime gives its date in UK time.
fn uk_date(text: &str) -> Result<String, String> {
    if let Ok(d) = NaiveDate::parse_from_str(text, "%Y-%m-%d") {
        return Ok(d.format("%d/%m/%Y").to_string());
    }
    let instant = DateTime::parse_from_rfc3339(text).map_err(|_| NOT_A_DATE.to_string())?;
    Ok(instant.with_timezone(&chrono_tz::Europe::London).format("%d/%m/%Y").to_string())
}

/// A FHIR dateTime -> `dd/mm/yyyy HH:MM` in UK local time of that instant (seconds only when not zero; a date
/// stays a date). In the hour the clocks go back, local time names two instants and the forward transform
/// takes the first; the second is written with its offset (`dd/mm/yyyy HH:MM:SS+00:00`), which the forward
/// transform keeps, so the instant is never changed.
fn uk_datetime(text: &str) -> Result<String, String> {
    if text.len() == 10 {
        return uk_date(text);
    }
    let local_text = |l: NaiveDateTime| {
        if l.second() == 0 { l.format("%d/%m/%Y %H:%M") } else { l.format("%d/%m/%Y %H:%M:%S") }.to_string()
    };
    let instant = match DateTime::parse_from_rfc3339(text) {
        Ok(i) => i,
        // FHIR wants an offset with a time; without one, it can only be local time.
        Err(_) => {
            return ["%Y-%m-%dT%H:%M:%S", "%Y-%m-%dT%H:%M"]
                .iter()
                .find_map(|f| NaiveDateTime::parse_from_str(text, f).ok())
                .map(local_text)
                .ok_or_else(|| NOT_A_DATE.replace("(yyyy-mm-dd)", "(yyyy-mm-ddThh:mm:ss+zz:zz)"));
        }
    };
    let local = local_text(instant.with_timezone(&chrono_tz::Europe::London).naive_local());
    let again = transform::uk_datetime(&local).ok().and_then(|f| DateTime::parse_from_rfc3339(&f).ok());
    if again.is_some_and(|a| a.timestamp() == instant.timestamp()) {
        Ok(local)
    } else {
        Ok(instant.format("%d/%m/%Y %H:%M:%S%:z").to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_go_back_to_uk_order() {
        assert_eq!(uk_date("1987-04-03").unwrap(), "03/04/1987");
        assert!(uk_date("1987-04").unwrap_err().contains("day, month and year"));
        assert_eq!(untransform(Transform::Boolean, "true").unwrap(), "Yes");
        assert_eq!(untransform(Transform::Boolean, "false").unwrap(), "No");
        assert!(untransform(Transform::Integer, "lots").is_err());
    }
}
