//! `mythos status`: the daemon's view of every provider.

use mythos_protocol::{Request, Response, StatusReport};

use super::{print, print_json, unexpected, Globals};
use crate::connection::Connection;
use crate::error::{Failure, EXIT_OK};
use crate::render::{status_text, Style};

/// Show the status report (starting the daemon if needed).
pub async fn run(g: &Globals, json: bool) -> Result<u8, Failure> {
    let mut conn = Connection::connect_or_start(&g.target).await?;
    let report = fetch(&mut conn).await?;
    show(&report, json)?;
    Ok(EXIT_OK)
}

/// Ask for the status report.
pub async fn fetch(conn: &mut Connection) -> Result<StatusReport, Failure> {
    match conn.call(Request::Status).await? {
        Response::Status(report) => Ok(*report),
        other => Err(unexpected(other, "a status report")),
    }
}

/// `mythos models`: every configured provider's model with its limits and prices.
pub async fn models(g: &Globals, json: bool) -> Result<u8, Failure> {
    let mut conn = Connection::connect_or_start(&g.target).await?;
    let report = fetch(&mut conn).await?;
    if json {
        let models: Vec<_> = report
            .providers
            .iter()
            .map(|p| {
                serde_json::json!({
                    "id": format!("{}/{}", p.name, p.model),
                    "provider": p.name,
                    "model": p.model,
                    "api": p.api,
                    "limits": p.limits,
                })
            })
            .collect();
        print_json(&models)?;
    } else {
        print(&crate::render::models_text(&report, Style::stdout()))?;
    }
    Ok(EXIT_OK)
}

/// Print the report as a table, or as JSON.
pub fn show(report: &StatusReport, json: bool) -> Result<(), Failure> {
    if json {
        // `"running": true`, as `daemon status --json` says `false` with no daemon: a script
        // asks one field either way.
        let mut value = serde_json::to_value(report)
            .map_err(|e| Failure::new(format!("cannot encode JSON: {e}")))?;
        if let Some(map) = value.as_object_mut() {
            map.insert("running".into(), serde_json::Value::Bool(true));
        }
        print_json(&value)
    } else {
        print(&status_text(
            report,
            Style::stdout(),
            &crate::render::env_keys(),
        ))
    }
}
