//! `mythos why`: explain a routing decision in words.

use mythos_protocol::{Request, RequestRecord, Response};

use super::{print, print_json, unexpected, Globals};
use crate::connection::Connection;
use crate::error::{Failure, EXIT_OK};
use crate::render::{clock, explain_why, now_unix_ms, Style};

/// Which record to explain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordSel {
    /// The most recent request.
    Last,
    /// A record id, as printed by `done` events.
    Id(u64),
}

/// Parse `last` or a record id (clap value parser).
pub fn parse_record(s: &str) -> Result<RecordSel, String> {
    if s.eq_ignore_ascii_case("last") {
        return Ok(RecordSel::Last);
    }
    s.trim_start_matches('#')
        .parse()
        .map(RecordSel::Id)
        .map_err(|_| format!("`{s}` is neither `last` nor a record number"))
}

/// Explain the record (starting the daemon if needed).
pub async fn run(g: &Globals, sel: RecordSel, json: bool) -> Result<u8, Failure> {
    let mut conn = Connection::connect_or_start(&g.target).await?;
    let rec = fetch(&mut conn, sel).await?;
    if json {
        print_json(&rec)?;
    } else {
        print(&text(&rec, Style::stdout()))?;
    }
    Ok(EXIT_OK)
}

/// Ask for a record.
pub async fn fetch(conn: &mut Connection, sel: RecordSel) -> Result<RequestRecord, Failure> {
    let record = match sel {
        RecordSel::Last => None,
        RecordSel::Id(id) => Some(id),
    };
    match conn.call(Request::Why { record }).await? {
        Response::Why(rec) => Ok(*rec),
        other => Err(unexpected(other, "a request record")),
    }
}

/// The explanation, with the request's time in local time.
pub fn text(rec: &RequestRecord, style: Style) -> String {
    explain_why(rec, &clock(rec.unix_ms, now_unix_ms()), style)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_selection() {
        assert_eq!(parse_record("last"), Ok(RecordSel::Last));
        assert_eq!(parse_record("LAST"), Ok(RecordSel::Last));
        assert_eq!(parse_record("42"), Ok(RecordSel::Id(42)));
        assert_eq!(parse_record("#42"), Ok(RecordSel::Id(42)));
        assert!(parse_record("yesterday").is_err());
    }
}
