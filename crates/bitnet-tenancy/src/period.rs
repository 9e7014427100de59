//! Budget periods (UTC calendar days, Monday weeks, months) and civil-date arithmetic.

use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};

/// How often a token budget starts again (UTC).
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Period {
    /// Every day at 00:00 UTC.
    Daily,
    /// Every Monday at 00:00 UTC.
    Weekly,
    /// The first of every month at 00:00 UTC.
    Monthly,
    /// Never: a lifetime budget.
    Total,
}

impl Period {
    /// The name.
    pub fn as_str(self) -> &'static str {
        match self {
            Period::Daily => "daily",
            Period::Weekly => "weekly",
            Period::Monthly => "monthly",
            Period::Total => "total",
        }
    }

    /// Parses `daily|weekly|monthly|total`.
    pub fn parse(s: &str) -> Result<Period> {
        match s {
            "daily" => Ok(Period::Daily),
            "weekly" => Ok(Period::Weekly),
            "monthly" => Ok(Period::Monthly),
            "total" => Ok(Period::Total),
            other => Err(Error::invalid(
                "budget_period",
                format!(
                    "unknown budget period {other:?}: expected daily, weekly, monthly or total"
                ),
            )),
        }
    }

    /// `(start, end)` in Unix milliseconds of the period holding `now_ms` (`end` is
    /// `i64::MAX` for [`Period::Total`]).
    pub fn window(self, now_ms: i64) -> (i64, i64) {
        const DAY: i64 = 86_400_000;
        let day = now_ms.div_euclid(DAY);
        match self {
            Period::Daily => (day * DAY, (day + 1) * DAY),
            Period::Weekly => {
                // 1970-01-01 was a Thursday: Monday-based weeks start 3 days later.
                let w = (day - 4).div_euclid(7);
                ((w * 7 + 4) * DAY, (w * 7 + 11) * DAY)
            }
            Period::Monthly => {
                let (y, m, _) = civil_from_days(day);
                let start = days_from_civil(y, m, 1);
                let (ny, nm) = if m == 12 { (y + 1, 1) } else { (y, m + 1) };
                (start * DAY, days_from_civil(ny, nm, 1) * DAY)
            }
            Period::Total => (0, i64::MAX),
        }
    }
}

/// `(year, month, day)` of a day count since 1970-01-01 (Howard Hinnant's algorithm).
pub fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// Day count since 1970-01-01 of a civil date.
pub fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = i64::from(m);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}
