//! [`Schedule`]: a cron expression in a time zone, and the mapping from its wall clock times to instants
//! across clock changes (the rules are in the parent module's documentation).

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Duration, NaiveDate, NaiveDateTime, Offset, SubsecRound, TimeZone, Utc};
use chrono_tz::Tz;
use croner::Cron;
use croner::parser::{CronParser, Seconds, Year};

use super::ScheduleError;

/// The zone schedules are read in unless the config names another.
pub const DEFAULT_TIMEZONE: Tz = chrono_tz::Europe::London;

/// How far apart the offset is sampled when looking for a clock change. Real zones change their offset
/// at most a few times a year and never twice within this span, so a change cannot hide between samples.
const TRANSITION_PROBE: Duration = Duration::hours(6);

/// Bound on the search steps of one [`Schedule::next_after`]; each step passes a clock change or a
/// repeated wall time, so real schedules need a handful.
const MAX_SEARCH_STEPS: usize = 100_000;

/// Reads an IANA zone name such as `Europe/London`.
pub fn parse_timezone(name: &str) -> Result<Tz, ScheduleError> {
    name.trim().parse::<Tz>().map_err(|_| ScheduleError::UnknownTimezone { name: name.to_owned() })
}

/// Which clock-change rule a schedule follows; see the module documentation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScheduleKind {
    /// Seconds, minute and hour are explicit: once per intended local time.
    WallClock,
    /// Seconds, minute or hour is a wildcard (or a step over one): every real matching instant.
    RealTime,
}

/// A parsed cron expression in a time zone.
#[derive(Debug, Clone)]
pub struct Schedule {
    expr: String,
    tz: Tz,
    cron: Cron,
    kind: ScheduleKind,
}

impl Schedule {
    /// Parses a croner expression: 5 fields (`minute hour day-of-month month day-of-week`) or 6 with
    /// seconds first. Names (`MON`, `JAN`), `L`, `W`, `#` and `@daily`-style nicknames work as in croner;
    /// when both day fields are restricted a day matching either one fires, as in Vixie cron.
    pub fn parse(expr: &str, tz: Tz) -> Result<Self, ScheduleError> {
        let invalid = |reason: String| ScheduleError::InvalidExpression { expr: expr.to_owned(), reason };
        let trimmed = expr.trim();
        let fields = trimmed.split_whitespace().count();
        if !trimmed.starts_with('@') && !(5..=6).contains(&fields) {
            return Err(invalid(format!("it has {fields} fields")));
        }
        let cron = CronParser::builder()
            .seconds(Seconds::Optional)
            .year(Year::Disallowed)
            .build()
            .parse(trimmed)
            .map_err(|e| invalid(e.to_string()))?;

        let pattern = &cron.pattern;
        let kind = if pattern.seconds.from_wildcard || pattern.minutes.from_wildcard || pattern.hours.from_wildcard {
            ScheduleKind::RealTime
        } else {
            ScheduleKind::WallClock
        };

        // croner gives up after searching a few years of calendar; a pattern with no date at all (30 February)
        // is a config mistake better reported at start than as a job that silently never runs.
        let reference = NaiveDate::from_ymd_opt(2000, 1, 1).and_then(|d| d.and_hms_opt(0, 0, 0));
        if let Some(reference) = reference
            && cron.find_next_occurrence(&reference, true).is_err()
        {
            return Err(ScheduleError::NeverFires { expr: expr.to_owned() });
        }

        Ok(Self { expr: trimmed.to_owned(), tz, cron, kind })
    }

    /// The same expression read in another zone (a config's schedules are parsed before its
    /// `[schedule] timezone` is known, then moved into it).
    #[must_use]
    pub fn in_timezone(mut self, tz: Tz) -> Self {
        self.tz = tz;
        self
    }

    /// The expression as written (trimmed).
    pub fn expression(&self) -> &str {
        &self.expr
    }

    /// The zone the expression is read in.
    pub fn timezone(&self) -> Tz {
        self.tz
    }

    /// Which clock-change rule applies.
    pub fn kind(&self) -> ScheduleKind {
        self.kind
    }

    /// The first fire strictly after `t`, or `None` if the schedule has no further fire that croner can
    /// find. Fires are whole seconds.
    pub fn next_after(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        // Inclusive lower bound of the search: the first whole second after `t`.
        let mut from = t.trunc_subsecs(0) + Duration::seconds(1);
        for _ in 0..MAX_SEARCH_STEPS {
            // Within one stretch of constant offset, wall time and instant move together, so the first
            // matching wall time at or after `from`'s is the first fire, unless the offset changes first.
            let offset = self.offset_at(from);
            let wall_from = from.naive_utc() + offset;
            let wall = self.next_wall_at_or_after(wall_from)?;
            let candidate = Utc.from_utc_datetime(&(wall - offset));

            match self.next_transition(from, candidate) {
                None => {
                    if self.kind == ScheduleKind::WallClock && self.is_repeated_wall_time(candidate) {
                        // Second occurrence of a repeated local time: it already fired (or was due) at the
                        // first occurrence.
                        from = candidate + Duration::seconds(1);
                        continue;
                    }
                    return Some(candidate);
                }
                Some(change) => {
                    let new_offset = self.offset_at(change);
                    if self.kind == ScheduleKind::WallClock && new_offset > offset {
                        // Clocks went forward: wall times in [change + offset, change + new_offset) never
                        // happen. `wall` is the first match at or after the gap's start; if it lies inside
                        // the gap the schedule is due at the jump itself.
                        let gap_end = change.naive_utc() + new_offset;
                        if wall < gap_end {
                            return Some(change);
                        }
                    }
                    // Carry on in the next stretch. After clocks go back, its first wall times repeat ones
                    // already seen; real-time schedules fire on them again, wall-clock ones skip them above.
                    from = change;
                }
            }
        }
        None
    }

    /// The fires after `t` in order (a convenience for tests, `connector status` and dry runs).
    pub fn fires_after(&self, t: DateTime<Utc>) -> impl Iterator<Item = DateTime<Utc>> + '_ {
        let mut last = t;
        std::iter::from_fn(move || {
            let next = self.next_after(last)?;
            last = next;
            Some(next)
        })
    }

    fn offset_at(&self, t: DateTime<Utc>) -> Duration {
        let seconds = self.tz.offset_from_utc_datetime(&t.naive_utc()).fix().local_minus_utc();
        Duration::seconds(i64::from(seconds))
    }

    fn next_wall_at_or_after(&self, wall: NaiveDateTime) -> Option<NaiveDateTime> {
        self.cron.find_next_occurrence(&wall, true).ok()
    }

    /// The first whole second in `(from, until]` whose offset differs from `from`'s.
    fn next_transition(&self, from: DateTime<Utc>, until: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let offset = self.offset_at(from);
        let mut low = from;
        while low < until {
            let high = (low + TRANSITION_PROBE).min(until);
            if self.offset_at(high) != offset {
                // Invariant: `low` has the old offset, `high` the new one.
                let mut high = high;
                while high - low > Duration::seconds(1) {
                    let mid = low + Duration::seconds((high - low).num_seconds() / 2);
                    if self.offset_at(mid) == offset {
                        low = mid;
                    } else {
                        high = mid;
                    }
                }
                return Some(high);
            }
            low = high;
        }
        None
    }

    /// Whether `t` is the later of the two instants of a local time that happens twice.
    fn is_repeated_wall_time(&self, t: DateTime<Utc>) -> bool {
        let wall = t.naive_utc() + self.offset_at(t);
        let resolved = self.tz.from_local_datetime(&wall);
        matches!(resolved, chrono::LocalResult::Ambiguous(..))
            && resolved.earliest().map(|e| e.with_timezone(&Utc)) != Some(t)
    }
}

impl fmt::Display for Schedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.expr, self.tz.name())
    }
}

/// Parses in [`DEFAULT_TIMEZONE`].
impl FromStr for Schedule {
    type Err = ScheduleError;

    fn from_str(expr: &str) -> Result<Self, Self::Err> {
        Self::parse(expr, DEFAULT_TIMEZONE)
    }
}

/// A config value: the expression is parsed (and refused) as the file is read, in [`DEFAULT_TIMEZONE`]
/// until [`Schedule::in_timezone`] moves it into the config's zone.
impl<'de> serde::Deserialize<'de> for Schedule {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let expr = <String as serde::Deserialize>::deserialize(deserializer)?;
        Self::parse(&expr, DEFAULT_TIMEZONE).map_err(serde::de::Error::custom)
    }
}

/// Reads an IANA zone name in a config file (`[schedule] timezone`), refusing an unknown one.
pub fn deserialize_timezone<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Tz, D::Error> {
    let name = <String as serde::Deserialize>::deserialize(deserializer)?;
    parse_timezone(&name).map_err(serde::de::Error::custom)
}

#[cfg(test)]
mod tests {
    use std::str::FromStr;

    use chrono::{DateTime, Duration, TimeZone, Utc};
    use chrono_tz::Tz;

    use super::*;

    fn utc(y: i32, mo: u32, d: u32, h: u32, mi: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(y, mo, d, h, mi, 0).unwrap()
    }

    /// Fires in `[from, until)`, as `HH:MM` UTC on `from`'s calendar (or `MM-DD HH:MM` when asked).
    fn fires(expr: &str, from: DateTime<Utc>, until: DateTime<Utc>) -> Vec<String> {
        let schedule = Schedule::from_str(expr).unwrap();
        schedule
            .fires_after(from - Duration::seconds(1))
            .take_while(|t| *t < until)
            .map(|t| t.format("%m-%d %H:%M").to_string())
            .collect()
    }

    /// The London local day 2026-03-29 (spring forward) runs 00:00 GMT .. 23:00 UTC.
    fn spring_day() -> (DateTime<Utc>, DateTime<Utc>) {
        (utc(2026, 3, 29, 0, 0), utc(2026, 3, 29, 23, 0))
    }

    /// The London local day 2026-10-25 (fall back) runs 23:00 UTC the day before .. 24:00 UTC.
    fn autumn_day() -> (DateTime<Utc>, DateTime<Utc>) {
        (utc(2026, 10, 24, 23, 0), utc(2026, 10, 26, 0, 0))
    }

    #[test]
    fn accepts_five_and_six_fields_and_reads_seconds_first() {
        let five = Schedule::from_str("30 1 * * *").unwrap();
        let six = Schedule::from_str("15 30 1 * * *").unwrap();
        let t = utc(2026, 1, 10, 12, 0);
        assert_eq!(five.next_after(t), Some(utc(2026, 1, 11, 1, 30)));
        assert_eq!(six.next_after(t), Some(utc(2026, 1, 11, 1, 30) + Duration::seconds(15)));
        assert_eq!(five.timezone(), chrono_tz::Europe::London);
    }

    #[test]
    fn errors_quote_the_expression_and_say_what_is_wrong() {
        let err = Schedule::from_str("30 1 * *").unwrap_err();
        let text = err.to_string();
        assert!(text.contains("\"30 1 * *\""), "{text}");
        assert!(text.contains("4 fields"), "{text}");

        let text = Schedule::from_str("61 * * * *").unwrap_err().to_string();
        assert!(text.contains("\"61 * * * *\"") && text.contains("out of bounds"), "{text}");

        // Six fields are read seconds first, so a trailing year lands in day-of-week and is refused.
        let err = Schedule::from_str("0 0 1 1 * 2027").unwrap_err();
        assert!(matches!(err, ScheduleError::InvalidExpression { .. }), "{err}");

        let err = Schedule::from_str("0 0 30 2 *").unwrap_err();
        assert_eq!(err, ScheduleError::NeverFires { expr: "0 0 30 2 *".into() });
    }

    #[test]
    fn timezone_names_are_checked() {
        assert_eq!(parse_timezone("Europe/London").unwrap(), chrono_tz::Europe::London);
        let text = parse_timezone("Europe/Lundon").unwrap_err().to_string();
        assert!(text.contains("\"Europe/Lundon\""), "{text}");
    }

    #[test]
    fn next_after_is_strictly_after() {
        let s = Schedule::from_str("0 9 * * *").unwrap();
        let nine = utc(2026, 1, 5, 9, 0);
        assert_eq!(s.next_after(nine - Duration::milliseconds(1)), Some(nine));
        assert_eq!(s.next_after(nine), Some(utc(2026, 1, 6, 9, 0)));
        assert_eq!(s.next_after(nine + Duration::milliseconds(500)), Some(utc(2026, 1, 6, 9, 0)));
    }

    #[test]
    fn classifies_wall_clock_and_real_time_schedules() {
        for expr in ["30 1 * * *", "0 9,17 * * MON-FRI", "0 1-3 * * *", "0 30 1 * * *"] {
            assert_eq!(Schedule::from_str(expr).unwrap().kind(), ScheduleKind::WallClock, "{expr}");
        }
        for expr in ["0 * * * *", "*/15 * * * *", "*/15 1 * * *", "0 */2 * * *", "* 30 1 * * *"] {
            assert_eq!(Schedule::from_str(expr).unwrap().kind(), ScheduleKind::RealTime, "{expr}");
        }
    }

    #[test]
    fn daily_in_the_skipped_hour_fires_once_when_the_clocks_jump() {
        let (from, until) = spring_day();
        assert_eq!(fires("30 1 * * *", from, until), ["03-29 01:00"]);
        // Midnight and 09:00 BST are unaffected.
        assert_eq!(fires("0 0 * * *", from, until), ["03-29 00:00"]);
        assert_eq!(fires("0 9 * * *", from, until), ["03-29 08:00"]);
        // Every skipped time of one schedule collapses into the single fire at the jump; 02:00 BST is
        // that same instant.
        assert_eq!(fires("0,30 1,2 * * *", from, until), ["03-29 01:00", "03-29 01:30"]);
    }

    #[test]
    fn daily_in_the_repeated_hour_fires_once_at_the_first_occurrence() {
        let (from, until) = autumn_day();
        assert_eq!(fires("30 1 * * *", from, until), ["10-25 00:30"]);
        assert_eq!(fires("0 9 * * *", from, until), ["10-25 09:00"]);
        assert_eq!(fires("0 1-3 * * *", from, until), ["10-25 00:00", "10-25 02:00", "10-25 03:00"]);
    }

    #[test]
    fn lists_and_ranges_keep_once_per_local_time_where_croner_alone_would_not() {
        // croner calls `30 1,13` an interval job: alone it skips 01:30 in March and runs it twice in
        // October. Each intended local time fires once here.
        let (from, until) = spring_day();
        assert_eq!(fires("30 1,13 * * *", from, until), ["03-29 01:00", "03-29 12:30"]);
        let (from, until) = autumn_day();
        assert_eq!(fires("30 1,13 * * *", from, until), ["10-25 00:30", "10-25 13:30"]);

        // The same through croner's own time zone handling, to notice when croner changes (and this
        // correction could go).
        let cron = croner::Cron::from_str("30 1,13 * * *").unwrap();
        let mut t = autumn_day().0.with_timezone(&chrono_tz::Europe::London);
        let mut by_croner = Vec::new();
        loop {
            t = cron.find_next_occurrence(&t, false).unwrap();
            if t.with_timezone(&Utc) >= autumn_day().1 {
                break;
            }
            by_croner.push(t.with_timezone(&Utc).format("%H:%M").to_string());
        }
        assert_eq!(by_croner, ["00:30", "01:30", "13:30"]);
    }

    #[test]
    fn hourly_fires_every_real_hour() {
        let (from, until) = spring_day();
        let spring = fires("0 * * * *", from, until);
        assert_eq!(spring.len(), 23);
        assert_eq!(spring[..3], ["03-29 00:00", "03-29 01:00", "03-29 02:00"]);

        let (from, until) = autumn_day();
        let autumn = fires("0 * * * *", from, until);
        assert_eq!(autumn.len(), 25);
        // 01:00 BST (00:00 UTC) and 01:00 GMT (01:00 UTC) are both there.
        assert_eq!(autumn[..4], ["10-24 23:00", "10-25 00:00", "10-25 01:00", "10-25 02:00"]);
    }

    #[test]
    fn every_fifteen_minutes_is_every_real_quarter_hour() {
        for (from, until, hours) in [(spring_day().0, spring_day().1, 23), (autumn_day().0, autumn_day().1, 25)] {
            let all: Vec<_> = Schedule::from_str("*/15 * * * *")
                .unwrap()
                .fires_after(from - Duration::seconds(1))
                .take_while(|t| *t < until)
                .collect();
            assert_eq!(all.len(), hours * 4);
            assert!(all.windows(2).all(|w| w[1] - w[0] == Duration::minutes(15)));
        }
    }

    #[test]
    fn starting_inside_the_repeated_hour() {
        let daily = Schedule::from_str("30 1 * * *").unwrap();
        let hourly = Schedule::from_str("0 * * * *").unwrap();
        // 01:45 BST, after the daily run: the next is tomorrow, not 01:30 GMT.
        let t = utc(2026, 10, 25, 0, 45);
        assert_eq!(daily.next_after(t), Some(utc(2026, 10, 26, 1, 30)));
        assert_eq!(hourly.next_after(t), Some(utc(2026, 10, 25, 1, 0)));
        // 01:10 GMT: 01:30 BST has passed, 01:30 GMT is its repeat.
        let t = utc(2026, 10, 25, 1, 10);
        assert_eq!(daily.next_after(t), Some(utc(2026, 10, 26, 1, 30)));
        assert_eq!(hourly.next_after(t), Some(utc(2026, 10, 25, 2, 0)));
        // 00:10 BST: the run at 01:30 BST is still ahead.
        let t = utc(2026, 10, 24, 23, 10);
        assert_eq!(daily.next_after(t), Some(utc(2026, 10, 25, 0, 30)));
    }

    #[test]
    fn other_zones_and_far_fires() {
        let ny: Tz = parse_timezone("America/New_York").unwrap();
        // New York springs forward at 02:00 EST on 2026-03-08 (07:00 UTC).
        let s = Schedule::parse("30 2 * * *", ny).unwrap();
        assert_eq!(s.next_after(utc(2026, 3, 8, 0, 0)), Some(utc(2026, 3, 8, 7, 0)));
        // A yearly schedule crosses both London changes to land on the right offset.
        let s = Schedule::from_str("0 9 1 7 *").unwrap();
        assert_eq!(s.next_after(utc(2026, 8, 1, 0, 0)), Some(utc(2027, 7, 1, 8, 0)));
        let s = Schedule::from_str("0 0 29 2 *").unwrap();
        assert_eq!(s.next_after(utc(2026, 3, 1, 0, 0)), Some(utc(2028, 2, 29, 0, 0)));
    }
}
