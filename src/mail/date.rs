//! Date headers as seconds since the epoch.
//!
//! Read the way Python's `email.utils.parsedate_tz` reads them — what the original Raindrop,
//! and most archives of mail, were built on: RFC 5322 dates and the older and looser forms real
//! mail carries (`01 Jan 2001 00:01+0000`, two-digit years, asctime's `Tue Jan  2 03:04:05
//! 2001`, RFC 850's `02-Jan-01`, dates before 1970). `mailparse::dateparse` is not used: it
//! refuses those, and reads text that is no date at all ("yesterday") as the epoch.

/// The date's seconds since the epoch (UTC), if it is a date.
pub fn parse(text: &str) -> Option<i64> {
    loose(text)
}

const MONTHS: [&str; 24] = [
    "jan",
    "feb",
    "mar",
    "apr",
    "may",
    "jun",
    "jul",
    "aug",
    "sep",
    "oct",
    "nov",
    "dec",
    "january",
    "february",
    "march",
    "april",
    "may",
    "june",
    "july",
    "august",
    "september",
    "october",
    "november",
    "december",
];
const DAYS: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];

/// Zones by name, as `+hhmm` numbers.
fn zone(name: &str) -> Option<i64> {
    Some(match name {
        "UT" | "UTC" | "GMT" | "Z" => 0,
        "AST" | "EDT" => -400,
        "ADT" => -300,
        "EST" | "CDT" => -500,
        "CST" | "MDT" => -600,
        "MST" | "PDT" => -700,
        "PST" => -800,
        _ => return None,
    })
}

fn month(token: &str) -> Option<i64> {
    let lower = token.to_ascii_lowercase();
    MONTHS.iter().position(|m| *m == lower).map(|i| (i % 12) as i64 + 1)
}

/// Python's `_parsedate_tz`, step by step (its comments name the forms each step is for).
fn loose(text: &str) -> Option<i64> {
    let mut data: Vec<String> = text.split_whitespace().map(str::to_string).collect();
    let first = data.first()?.clone();
    // A day name (with or without its comma) is skipped; "Tue,02 Jan" loses "Tue,".
    if first.ends_with(',') || DAYS.contains(&first.to_ascii_lowercase().as_str()) {
        data.remove(0);
    } else if let Some(i) = first.rfind(',') {
        data[0] = first[i + 1..].to_string();
    }
    // RFC 850: "02-Jan-01 03:04:05 GMT".
    if data.len() == 3 {
        let stuff: Vec<String> = data[0].split('-').map(str::to_string).collect();
        if stuff.len() == 3 {
            data = stuff.into_iter().chain(data[1..].iter().cloned()).collect();
        }
    }
    // A zone glued to the time ("00:01+0000"), or none at all.
    if data.len() == 4 {
        let s = data[3].clone();
        match s.find('+').or_else(|| s.find('-')).filter(|&i| i > 0) {
            Some(i) => {
                data[3] = s[..i].to_string();
                data.push(s[i..].to_string());
            }
            None => data.push(String::new()),
        }
    }
    if data.len() < 5 {
        return None;
    }
    let [mut dd, mut mm, mut yy, mut tm, mut tz] = <[String; 5]>::try_from(data[..5].to_vec()).ok()?;
    if dd.is_empty() || mm.is_empty() || yy.is_empty() {
        return None;
    }
    // "Jan 2 2001": the month first.
    if month(&mm).is_none() {
        std::mem::swap(&mut dd, &mut mm);
    }
    let mon = month(&mm)?;
    let dd = dd.strip_suffix(',').unwrap_or(&dd);
    // asctime: "Jan 2 03:04:05 2001" has the time where the year is.
    if yy.find(':').is_some_and(|i| i > 0) {
        std::mem::swap(&mut yy, &mut tm);
    }
    if let Some(stripped) = yy.strip_suffix(',') {
        yy = stripped.to_string();
        if yy.is_empty() {
            return None;
        }
    }
    if !yy.starts_with(|c: char| c.is_ascii_digit()) {
        std::mem::swap(&mut yy, &mut tz);
    }
    let (hour, minute, second) = clock(tm.strip_suffix(',').unwrap_or(&tm))?;
    let (mut year, day) = (yy.parse::<i64>().ok()?, dd.parse::<i64>().ok()?);
    if year < 100 {
        year += if year > 68 { 1900 } else { 2000 };
    }
    // Python's calendar.timegm refuses years past 9999 (and a header's numbers can be anything).
    if !(1..=9999).contains(&year) || [day, hour, minute, second].iter().any(|v| !(-1_000_000..=1_000_000).contains(v)) {
        return None;
    }
    // Every term is bounded above, so none of this can overflow.
    Some(days_from_civil(year, mon, day) * 86_400 + hour * 3600 + minute * 60 + second - zone_offset(&tz))
}

/// `hh:mm[:ss]` (or with dots, as some mailers write it).
fn clock(tm: &str) -> Option<(i64, i64, i64)> {
    let mut pieces: Vec<&str> = tm.split(':').collect();
    if pieces.len() == 1 && tm.contains('.') {
        pieces = tm.split('.').collect();
    }
    let (h, m, s) = match pieces[..] {
        [h, m] => (h, m, "0"),
        [h, m, s] => (h, m, s),
        _ => return None,
    };
    Some((h.parse().ok()?, m.parse().ok()?, s.parse().ok()?))
}

/// The zone's offset east of UTC in seconds. "-0000" means "the zone is unknown" (RFC 5322
/// §3.3), and a zone past ±24 hours or none at all is no zone: both read as UTC.
fn zone_offset(tz: &str) -> i64 {
    let tz = tz.to_ascii_uppercase();
    let offset = zone(&tz).or_else(|| tz.parse::<i64>().ok()).filter(|o| (-2400..=2400).contains(o)).unwrap_or(0);
    offset.signum() * ((offset.abs() / 100) * 3600 + (offset.abs() % 100) * 60)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm); a day
/// out of its month's range counts on into the next, as `calendar.timegm` does.
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::parse;

    #[test]
    fn rfc_5322_dates_and_their_obsolete_forms() {
        // RFC 5322 Appendix A.1.1 and A.5 (folding, comments), A.6.2 (obsolete: two-digit
        // year, a zone by name), §3.3's "-0000".
        assert_eq!(parse("Fri, 21 Nov 1997 09:55:06 -0600"), Some(880127706));
        assert_eq!(parse("Tue, 1 Jul 2003 10:52:37 +0200"), Some(1057049557));
        assert_eq!(
            parse("Thu,\r\n      13\r\n        Feb\r\n          1969\r\n      23:32\r\n               -0330 (Newfoundland Time)"),
            Some(-27_723_480)
        );
        assert_eq!(parse("21 Nov 97 09:55:06 GMT"), Some(880106106));
        assert_eq!(parse("Fri, 21 Nov 1997 09:55:06 -0000"), Some(880106106));
    }

    #[test]
    fn loose_dates_read_as_python_reads_them() {
        assert_eq!(parse("01 Jan 2001 00:01+0000"), Some(978307260));
        assert_eq!(parse("1 Jan 01 00:01 GMT"), Some(978307260));
        assert_eq!(parse("Tue Jan  2 03:04:05 2001"), Some(978404645));
        assert_eq!(parse("Jan 2 2001 03:04:05 EST"), Some(978422645));
        assert_eq!(parse("Tuesday, 02-Jan-01 03:04:05 GMT"), Some(978404645));
        assert_eq!(parse("2 January 2001 03.04.05 +0100"), Some(978401045));
        assert_eq!(parse("Mon,2 Jan 2001 03:04 +0000"), Some(978404640));
        assert_eq!(parse("yesterday"), None);
        assert_eq!(parse(""), None);
        assert_eq!(parse("2 Foo 2001 03:04:05"), None);
        assert_eq!(parse("Fri, 21 Nov 1997 09:55:06 ADT"), Some(880116906));
        assert_eq!(parse("Jan 2,, 03:04 69 GMT"), None);
    }

    #[test]
    fn huge_numbers_are_no_date_and_never_overflow() {
        assert_eq!(parse("1 Jan 2001 00:00 -9223372036854775808"), Some(978307200));
        assert_eq!(parse("1 Jan 2001 00:00 +9223372036854775807"), Some(978307200));
        for text in [
            "9223372036854775807 Jan 2001 00:00",
            "1 Jan 2001 9223372036854775807:00",
            "1 Jan 1000000000000 00:00",
            "1 Jan 99999999999999999999 00:00",
            "1 Jan 10000 00:00",
        ] {
            assert_eq!(parse(text), None, "{text}");
        }
    }
}
