//! Cron schedules: the five fields of crontab (minute, hour, day of month, month, day of
//! week), or six with seconds first; names, ranges, steps, lists, `L`, `W`, `#` and the
//! `@daily`-style aliases; Vixie semantics (when both day fields are restricted, a day
//! matches either). Times are computed in the trigger's IANA time zone: a time that a
//! spring-forward gap skips fires when the gap ends, and a time that a fall-back repeats
//! fires once, at its first occurrence.

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use croner::Cron;
use croner::parser::{CronParser, Seconds, Year};

/// Parses a schedule: five fields, six with seconds first, or an alias.
pub fn parse(text: &str) -> Result<Cron, croner::errors::CronError> {
    CronParser::builder()
        .seconds(Seconds::Optional)
        .year(Year::Disallowed)
        .build()
        .parse(text)
}

/// A schedule in its time zone.
#[derive(Debug, Clone)]
pub struct Schedule {
    cron: Cron,
    tz: Tz,
}

impl Schedule {
    /// The schedule of a trigger as validated by the loader; `timezone` defaults to UTC.
    pub fn new(schedule: &str, timezone: Option<&str>) -> Result<Schedule, String> {
        let cron =
            parse(schedule).map_err(|e| format!("invalid cron schedule {schedule:?}: {e}"))?;
        let tz = match timezone {
            None => Tz::UTC,
            Some(name) => name
                .parse::<Tz>()
                .map_err(|_| format!("unknown time zone {name:?}"))?,
        };
        Ok(Schedule { cron, tz })
    }

    /// The first scheduled time strictly after `t`.
    pub fn next_after(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.cron
            .find_next_occurrence(&t.with_timezone(&self.tz), false)
            .ok()
            .map(|d| d.with_timezone(&Utc))
    }

    /// Scheduled times in `(after, until]`, oldest first, at most `max` of them (the
    /// latest ones when there are more).
    pub fn between(
        &self,
        after: DateTime<Utc>,
        until: DateTime<Utc>,
        max: usize,
    ) -> Vec<DateTime<Utc>> {
        let mut out = std::collections::VecDeque::new();
        if max == 0 {
            return Vec::new();
        }
        // Walk back from `until`: the latest ones are the ones kept.
        let mut cursor = until.with_timezone(&self.tz);
        let mut inclusive = true;
        while let Ok(t) = self.cron.find_previous_occurrence(&cursor, inclusive) {
            let utc = t.with_timezone(&Utc);
            if utc <= after {
                break;
            }
            out.push_front(utc);
            if out.len() == max {
                break;
            }
            cursor = t;
            inclusive = false;
        }
        out.into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn utc(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn next_n(s: &Schedule, from: &str, n: usize) -> Vec<String> {
        let mut t = utc(from);
        (0..n)
            .map(|_| {
                t = s.next_after(t).unwrap();
                t.to_rfc3339()
            })
            .collect()
    }

    #[test]
    fn five_fields_fire_on_the_minute_in_utc() {
        let s = Schedule::new("*/15 9-10 * * 1-5", None).unwrap();
        // Friday 2027-01-08 10:50 -> 10:45 passed; Monday 09:00 next.
        assert_eq!(
            next_n(&s, "2027-01-08T10:40:00Z", 2),
            ["2027-01-08T10:45:00+00:00", "2027-01-11T09:00:00+00:00"]
        );
        // Strictly after: a time on the schedule is not its own next.
        assert_eq!(
            s.next_after(utc("2027-01-11T09:00:00Z")).unwrap(),
            utc("2027-01-11T09:15:00Z")
        );
    }

    #[test]
    fn six_fields_have_seconds_first() {
        let s = Schedule::new("*/20 * * * * *", None).unwrap();
        assert_eq!(
            next_n(&s, "2027-01-01T00:00:05Z", 3),
            [
                "2027-01-01T00:00:20+00:00",
                "2027-01-01T00:00:40+00:00",
                "2027-01-01T00:01:00+00:00"
            ]
        );
    }

    #[test]
    fn names_aliases_last_day_and_nth_weekday() {
        let s = Schedule::new("0 12 * jan,feb mon", None).unwrap();
        // Monday 2027-03-01 is in March: not matched; the next January Monday is.
        assert_eq!(
            next_n(&s, "2027-02-25T00:00:00Z", 1),
            ["2028-01-03T12:00:00+00:00"]
        );
        let daily = Schedule::new("@daily", None).unwrap();
        assert_eq!(
            next_n(&daily, "2027-05-05T13:00:00Z", 1),
            ["2027-05-06T00:00:00+00:00"]
        );
        let last = Schedule::new("0 0 L * *", None).unwrap();
        assert_eq!(
            next_n(&last, "2027-02-01T00:00:00Z", 2),
            ["2027-02-28T00:00:00+00:00", "2027-03-31T00:00:00+00:00"]
        );
        let second_tuesday = Schedule::new("0 8 * * 2#2", None).unwrap();
        assert_eq!(
            next_n(&second_tuesday, "2027-06-01T00:00:00Z", 2),
            ["2027-06-08T08:00:00+00:00", "2027-07-13T08:00:00+00:00"]
        );
    }

    #[test]
    fn both_day_fields_restricted_match_either_day() {
        // Vixie: the 13th of the month OR a Friday.
        let s = Schedule::new("0 0 13 * 5", None).unwrap();
        assert_eq!(
            next_n(&s, "2027-08-01T00:00:00Z", 4),
            [
                "2027-08-06T00:00:00+00:00", // Friday
                "2027-08-13T00:00:00+00:00", // the 13th (also a Friday)
                "2027-08-20T00:00:00+00:00",
                "2027-08-27T00:00:00+00:00"
            ]
        );
        let s = Schedule::new("0 0 1 * 1", None).unwrap();
        // Sunday 2027-08-01 is the 1st; Monday the 2nd is a Monday.
        assert_eq!(
            next_n(&s, "2027-07-31T12:00:00Z", 2),
            ["2027-08-01T00:00:00+00:00", "2027-08-02T00:00:00+00:00"]
        );
    }

    #[test]
    fn daylight_saving_gaps_fire_after_the_gap_and_repeats_fire_once() {
        let s = Schedule::new("30 2 * * *", Some("Europe/Berlin")).unwrap();
        // 2027-03-28: 02:00 CET jumps to 03:00 CEST; 02:30 does not exist and fires at
        // 03:00 CEST (01:00 UTC). The next day 02:30 CEST is 00:30 UTC.
        assert_eq!(
            next_n(&s, "2027-03-27T12:00:00Z", 3),
            [
                "2027-03-28T01:00:00+00:00",
                "2027-03-29T00:30:00+00:00",
                "2027-03-30T00:30:00+00:00"
            ]
        );
        // 2027-10-31: 03:00 CEST goes back to 02:00 CET; 02:30 happens twice and fires
        // once, at the first (00:30 UTC); the next is 02:30 CET of Nov 1 (01:30 UTC).
        assert_eq!(
            next_n(&s, "2027-10-30T12:00:00Z", 2),
            ["2027-10-31T00:30:00+00:00", "2027-11-01T01:30:00+00:00"]
        );
        // Hourly in the repeated hour: each UTC instant once.
        let hourly = Schedule::new("0 * * * *", Some("Europe/Berlin")).unwrap();
        let times = next_n(&hourly, "2027-10-30T23:30:00Z", 4);
        let unique: std::collections::BTreeSet<_> = times.iter().collect();
        assert_eq!(unique.len(), 4, "{times:?}");
        assert_eq!(
            Tz::UTC.from_utc_datetime(&utc(&times[0]).naive_utc()),
            utc("2027-10-31T00:00:00Z")
        );
    }

    #[test]
    fn missed_times_are_listed_oldest_first_and_bounded() {
        let s = Schedule::new("0 * * * *", None).unwrap();
        let all = s.between(
            utc("2027-01-01T00:00:00Z"),
            utc("2027-01-01T05:30:00Z"),
            100,
        );
        assert_eq!(all.len(), 5);
        assert_eq!(all[0], utc("2027-01-01T01:00:00Z"));
        assert_eq!(all[4], utc("2027-01-01T05:00:00Z"));
        let latest = s.between(utc("2027-01-01T00:00:00Z"), utc("2027-01-01T05:30:00Z"), 2);
        assert_eq!(
            latest,
            [utc("2027-01-01T04:00:00Z"), utc("2027-01-01T05:00:00Z")]
        );
        // `until` itself counts; `after` does not.
        let edge = s.between(utc("2027-01-01T01:00:00Z"), utc("2027-01-01T02:00:00Z"), 10);
        assert_eq!(edge, [utc("2027-01-01T02:00:00Z")]);
        assert!(
            s.between(utc("2027-01-01T00:10:00Z"), utc("2027-01-01T00:50:00Z"), 10)
                .is_empty()
        );
    }

    #[test]
    fn bad_schedules_and_zones_are_named() {
        assert!(
            Schedule::new("61 * * * *", None)
                .unwrap_err()
                .contains("61 * * * *")
        );
        assert!(
            Schedule::new("* * * * *", Some("Mars/Base"))
                .unwrap_err()
                .contains("Mars/Base")
        );
    }
}
