//! Audit queries: filters from HTTP query parameters or CLI flags, validated with messages that
//! name the accepted format, turned into SQL; and the output formats (JSON, CSV, NDJSON, table).

use std::collections::HashMap;

use super::record::{AuditRecord, COLUMNS, Outcome};

pub const MAX_LIMIT: i64 = 1000;
pub const DEFAULT_LIMIT: i64 = 100;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Json,
    Csv,
    Ndjson,
    Table,
}

#[derive(Debug, Default, Clone)]
pub struct Filter {
    pub client: Option<String>,
    pub method: Option<String>,
    pub path_prefix: Option<String>,
    pub status: Option<i64>,
    pub outcome: Option<String>,
    pub since: Option<String>,
    pub until: Option<String>,
    pub request_id: Option<String>,
    /// Records after this id (the cursor of the previous page).
    pub after_id: Option<i64>,
    /// None: every matching record (streamed exports).
    pub limit: Option<i64>,
    /// Finalised records after this chain position, in chain order (a follow stream's cursor).
    pub after_seq: Option<i64>,
    /// Keep the answer open and send each record as it is finalised (`follow=true`).
    pub follow: bool,
}

/// One team's audited calls in one UTC hour (`hour` is `YYYY-MM-DDTHH`), and how many of them the
/// gateway refused.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct HourlyActivity {
    pub client: String,
    pub hour: String,
    pub calls: i64,
    pub refusals: i64,
}

/// Audited calls and refusals per team and UTC hour: the console's activity chart.
/// `hours` are `YYYY-MM-DDTHH` labels, oldest first; each team's counts follow them, zeros filled
/// in.
#[derive(Debug, serde::Serialize)]
pub struct Activity {
    pub hours: Vec<String>,
    pub teams: Vec<TeamActivity>,
}

#[derive(Debug, serde::Serialize)]
pub struct TeamActivity {
    pub client: String,
    pub calls: Vec<i64>,
    pub refusals: Vec<i64>,
}

impl Activity {
    /// An empty chart of the `hours` UTC hours that end with the one `now` falls in.
    pub fn empty(now: chrono::DateTime<chrono::Utc>, hours: i64) -> Self {
        let this_hour = now.timestamp() - now.timestamp().rem_euclid(3600);
        let hours = (0..hours)
            .map(|i| {
                chrono::DateTime::from_timestamp(this_hour - (hours - 1 - i) * 3600, 0)
                    .unwrap_or_default()
                    .format("%Y-%m-%dT%H")
                    .to_string()
            })
            .collect();
        Activity {
            hours,
            teams: Vec::new(),
        }
    }

    /// Where the chart's first hour starts, in the stored timestamps' form.
    pub fn since(&self) -> String {
        format!(
            "{}:00:00.000Z",
            self.hours.first().map_or("", String::as_str)
        )
    }

    /// Counts one team's hour; an hour outside the chart is left out.
    pub fn add(&mut self, row: HourlyActivity) {
        let Some(at) = self.hours.iter().position(|h| *h == row.hour) else {
            return;
        };
        let team = match self.teams.iter().position(|t| t.client == row.client) {
            Some(i) => &mut self.teams[i],
            None => {
                self.teams.push(TeamActivity {
                    client: row.client,
                    calls: vec![0; self.hours.len()],
                    refusals: vec![0; self.hours.len()],
                });
                self.teams.last_mut().expect("pushed")
            }
        };
        team.calls[at] += row.calls;
        team.refusals[at] += row.refusals;
    }
}

pub enum Bind {
    Text(String),
    Int(i64),
}

/// An audit filter that cannot be used, said with how to write it (the answer's 400 message).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BadFilter {
    #[error(
        "{name} = {value:?} is not a time: use RFC 3339 (e.g. 2026-11-23T10:00:00Z) or epoch \
         seconds"
    )]
    Time { name: String, value: String },
    #[error("path_prefix = {0:?} must start with /, e.g. /v1/users")]
    PathPrefix(String),
    #[error("status = {0:?} is not an HTTP status code, e.g. 201")]
    Status(String),
    #[error(
        "outcome = {0:?} is not one of pending, forwarded, rejected, upstream_error, gateway_error"
    )]
    Outcome(String),
    #[error("follow = {0:?} must be true or false")]
    Follow(String),
    #[error("cursor = {0:?} is not a cursor; pass the next_cursor of the previous page")]
    Cursor(String),
    #[error("limit = {0:?} must be a number from 1 to {MAX_LIMIT}")]
    Limit(String),
    #[error("format = {0:?} must be json, csv or ndjson")]
    Format(String),
    #[error(
        "unknown filter {0:?}; filters are client, method, path_prefix, status, outcome, since, \
         until, request_id, cursor, limit, format, follow"
    )]
    Unknown(String),
    #[error(
        "follow=true streams every record as it is finalised: use it with format=ndjson and \
         without limit"
    )]
    FollowNeedsNdjson,
}

/// Parses a time filter: RFC 3339 (any offset) or epoch seconds, normalised to the stored form.
pub fn parse_time(name: &str, value: &str) -> Result<String, BadFilter> {
    let parsed = match value.parse::<i64>() {
        Ok(secs) => chrono::DateTime::from_timestamp(secs, 0),
        Err(_) => chrono::DateTime::parse_from_rfc3339(value)
            .ok()
            .map(|t| t.with_timezone(&chrono::Utc)),
    };
    parsed
        .map(|t| t.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string())
        .ok_or_else(|| BadFilter::Time {
            name: name.to_string(),
            value: value.to_string(),
        })
}

impl Filter {
    /// From query parameters (HTTP) or `--name value` flags (CLI). Unknown names are refused.
    pub fn from_params(
        params: &HashMap<String, String>,
        paginate: bool,
    ) -> Result<(Self, Format), BadFilter> {
        let mut filter = Filter::default();
        let mut format = Format::Json;
        for (name, value) in params {
            let value = value.trim();
            match name.as_str() {
                "client" => filter.client = Some(value.into()),
                "method" => filter.method = Some(value.to_ascii_uppercase()),
                "path_prefix" if value.starts_with('/') => filter.path_prefix = Some(value.into()),
                "path_prefix" => return Err(BadFilter::PathPrefix(value.into())),
                "status" => {
                    filter.status = Some(
                        value
                            .parse::<u16>()
                            .map_err(|_| BadFilter::Status(value.into()))?
                            as i64,
                    )
                }
                "outcome" if Outcome::parse(value).is_some() => filter.outcome = Some(value.into()),
                "outcome" => return Err(BadFilter::Outcome(value.into())),
                "since" => filter.since = Some(parse_time("since", value)?),
                "until" => filter.until = Some(parse_time("until", value)?),
                "request_id" => filter.request_id = Some(value.into()),
                "follow" if paginate => {
                    filter.follow = match value {
                        "true" => true,
                        "false" => false,
                        _ => return Err(BadFilter::Follow(value.into())),
                    }
                }
                "cursor" => {
                    filter.after_id = Some(
                        value
                            .parse::<i64>()
                            .map_err(|_| BadFilter::Cursor(value.into()))?,
                    )
                }
                "limit" => {
                    let limit = value
                        .parse::<i64>()
                        .ok()
                        .filter(|l| (1..=MAX_LIMIT).contains(l));
                    filter.limit = Some(limit.ok_or_else(|| BadFilter::Limit(value.into()))?);
                }
                "format" => {
                    format = match value {
                        "json" => Format::Json,
                        "csv" => Format::Csv,
                        "ndjson" => Format::Ndjson,
                        "table" => Format::Table,
                        _ => return Err(BadFilter::Format(value.into())),
                    }
                }
                other => return Err(BadFilter::Unknown(other.into())),
            }
        }
        if filter.follow {
            if format != Format::Ndjson || filter.limit.is_some() {
                return Err(BadFilter::FollowNeedsNdjson);
            }
            // A follow stream runs in chain order: its cursor is the `seq` of the last record
            // received, so no record finalised later under a lower id is passed over.
            filter.after_seq = Some(filter.after_id.take().unwrap_or(0));
        }
        if paginate && filter.limit.is_none() && format == Format::Json {
            filter.limit = Some(DEFAULT_LIMIT);
        }
        Ok((filter, format))
    }

    pub fn to_sql(&self, columns: &str) -> (String, Vec<Bind>) {
        let mut sql = format!("SELECT {columns} FROM audit_records WHERE 1 = 1");
        let mut binds = Vec::new();
        let mut push = |sql: &mut String, clause: &str, bind: Bind| {
            binds.push(bind);
            sql.push_str(&clause.replace('?', &format!("${}", binds.len())));
        };
        if let Some(v) = &self.client {
            push(&mut sql, " AND client = ?", Bind::Text(v.clone()));
        }
        if let Some(v) = &self.method {
            push(&mut sql, " AND method = ?", Bind::Text(v.clone()));
        }
        if let Some(v) = &self.path_prefix {
            push(
                &mut sql,
                " AND substr(path, 1, CAST(? AS INTEGER)",
                Bind::Int(v.len() as i64),
            );
            push(&mut sql, ") = ?", Bind::Text(v.clone()));
        }
        if let Some(v) = self.status {
            push(&mut sql, " AND status = ?", Bind::Int(v));
        }
        if let Some(v) = &self.outcome {
            push(&mut sql, " AND outcome = ?", Bind::Text(v.clone()));
        }
        if let Some(v) = &self.since {
            push(&mut sql, " AND ts >= ?", Bind::Text(v.clone()));
        }
        if let Some(v) = &self.until {
            push(&mut sql, " AND ts < ?", Bind::Text(v.clone()));
        }
        if let Some(v) = &self.request_id {
            push(&mut sql, " AND request_id = ?", Bind::Text(v.clone()));
        }
        if let Some(v) = self.after_id {
            push(&mut sql, " AND id > ?", Bind::Int(v));
        }
        if let Some(v) = self.after_seq {
            push(&mut sql, " AND seq IS NOT NULL AND seq > ?", Bind::Int(v));
            sql.push_str(" ORDER BY seq");
        } else {
            sql.push_str(" ORDER BY id");
        }
        if let Some(limit) = self.limit {
            // One more than asked, to know whether there is a next page.
            push(&mut sql, " LIMIT ?", Bind::Int(limit + 1));
        }
        (sql, binds)
    }
}

/// A record's cells in column order (`record::COLUMNS`): text as stored, numbers as written in
/// JSON, an absent value as an empty cell.
fn csv_fields(r: &AuditRecord) -> Vec<String> {
    let fields = serde_json::to_value(r).unwrap_or_default();
    COLUMNS
        .iter()
        .map(|(name, _)| match &fields[*name] {
            serde_json::Value::String(text) => text.clone(),
            serde_json::Value::Null => String::new(),
            serde_json::Value::Number(n) => match (n.as_i64(), n.as_f64()) {
                (Some(int), _) => int.to_string(),
                (None, Some(float)) => float.to_string(),
                (None, None) => n.to_string(),
            },
            other => other.to_string(),
        })
        .collect()
}

/// One CSV line (with the header when `header` is set).
pub fn csv_line(records: &[AuditRecord], header: bool) -> Vec<u8> {
    let mut writer = csv::Writer::from_writer(Vec::new());
    if header {
        let _ = writer.write_record(COLUMNS.iter().map(|(name, _)| name));
    }
    for r in records {
        let _ = writer.write_record(csv_fields(r).into_iter().map(spreadsheet_safe));
    }
    writer.into_inner().unwrap_or_default()
}

/// A cell a spreadsheet would run as a formula (it starts with `=`, `+`, `-`, `@`, a tab or a
/// carriage return) gets a leading `'`, as OWASP advises against CSV injection: a caller's path
/// or body must open as text in a reviewer's spreadsheet.
fn spreadsheet_safe(cell: String) -> String {
    match cell.as_bytes().first() {
        Some(b'=' | b'+' | b'-' | b'@' | b'\t' | b'\r') => format!("'{cell}"),
        _ => cell,
    }
}

/// A compact table for people (CLI).
/// The column names above the lines of [`table_line`].
pub fn table_header() -> String {
    format!(
        "{:>6}  {:<24}  {:<14} {:<6} {:<40} {:>4}  {:<14} {}",
        "id", "time", "client", "method", "path", "status", "outcome", "request id"
    )
}

pub fn table_line(r: &AuditRecord) -> String {
    format!(
        "{:>6}  {:<24}  {:<14} {:<6} {:<40} {:>4}  {:<14} {}",
        r.id,
        r.ts,
        r.client,
        r.method,
        r.path,
        r.status
            .map(|s| s.to_string())
            .unwrap_or_else(|| "-".into()),
        r.outcome.as_str(),
        r.request_id
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_csv_line_has_every_column_in_order_and_opens_as_text_in_a_spreadsheet() {
        let record = AuditRecord {
            id: 7,
            ts: "2026-12-04T00:00:00.000Z".into(),
            client: "ops".into(),
            role: "operator".into(),
            method: "POST".into(),
            path: "/v1/compute/instances".into(),
            query: "=HYPERLINK(1)".into(),
            request_id: "r-1".into(),
            request_body: "{\"a\":1}".into(),
            status: Some(201),
            outcome: Outcome::Forwarded,
            duration_ms: Some(6.0),
            upstream_ms: Some(2.5),
            seq: Some(3),
            prev_hash: Some("p".into()),
            hash: None,
            ..AuditRecord::default()
        };
        let csv = String::from_utf8(csv_line(&[record], true)).unwrap();
        let mut lines = csv.lines();
        assert_eq!(
            lines.next().unwrap(),
            "id,ts,client,role,method,path,query,request_id,trace_id,client_ip,request_body,\
             status,outcome,response_body,duration_ms,upstream_ms,seq,prev_hash,hash"
        );
        assert_eq!(
            lines.next().unwrap(),
            "7,2026-12-04T00:00:00.000Z,ops,operator,POST,/v1/compute/instances,'=HYPERLINK(1),\
             r-1,,,\"{\"\"a\"\":1}\",201,forwarded,,6,2.5,3,p,"
        );
    }

    fn params(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn bad_filters_name_the_format() {
        for (name, value, needle) in [
            ("since", "yesterday", "RFC 3339"),
            ("until", "2026-13-01", "epoch seconds"),
            ("status", "abc", "HTTP status"),
            ("outcome", "ok", "forwarded"),
            ("limit", "5000", "1 to 1000"),
            ("format", "xml", "json, csv or ndjson"),
            ("path_prefix", "v1", "start with /"),
            ("colour", "red", "unknown filter"),
        ] {
            let err = Filter::from_params(&params(&[(name, value)]), true)
                .unwrap_err()
                .to_string();
            assert!(err.contains(needle), "{name}: {err}");
        }
        let follow_with_json = params(&[("follow", "true")]);
        assert_eq!(
            Filter::from_params(&follow_with_json, true).unwrap_err(),
            BadFilter::FollowNeedsNdjson
        );
    }

    #[test]
    fn times_are_normalised() {
        assert_eq!(
            parse_time("since", "0").unwrap(),
            "1970-01-01T00:00:00.000Z"
        );
        assert_eq!(
            parse_time("since", "2026-11-23T12:00:00+02:00").unwrap(),
            "2026-11-23T10:00:00.000Z"
        );
    }

    #[test]
    fn sql_numbers_its_placeholders() {
        let (filter, _) = Filter::from_params(
            &params(&[
                ("client", "a"),
                ("path_prefix", "/v1/users"),
                ("limit", "10"),
            ]),
            true,
        )
        .unwrap();
        let (sql, binds) = filter.to_sql("id");
        assert!(
            sql.contains("client = $1")
                && sql.contains("substr(path, 1, CAST($2 AS INTEGER)) = $3")
                && sql.ends_with("LIMIT $4"),
            "{sql}"
        );
        assert_eq!(binds.len(), 4);
    }
}
