//! `mythos usage`: tokens and cost by day and provider.

use mythos_protocol::{Request, Response};

use super::{print, print_json, unexpected, Globals};
use crate::connection::Connection;
use crate::error::{Failure, EXIT_OK};
use crate::render::{usage_text, Style};

/// Show the usage of the last `days` days, today included.
pub async fn run(g: &Globals, days: u32, json: bool) -> Result<u8, Failure> {
    let mut conn = Connection::connect_or_start(&g.target).await?;
    let report = match conn.call(Request::Usage { days }).await? {
        Response::Usage(report) => report,
        other => return Err(unexpected(other, "a usage report")),
    };
    if json {
        print_json(&report)?;
    } else {
        print(&usage_text(&report, days, Style::stdout()))?;
    }
    Ok(EXIT_OK)
}
