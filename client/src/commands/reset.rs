//! `mythos reset PROVIDER`: close a provider's circuit breaker by hand.

use mythos_protocol::{Request, Response};

use super::{print, unexpected, Globals};
use crate::connection::Connection;
use crate::error::{Failure, EXIT_OK};

/// Reset `provider`'s breaker.
pub async fn run(g: &Globals, provider: String) -> Result<u8, Failure> {
    let mut conn = Connection::connect_or_start(&g.target).await?;
    match conn
        .call(Request::Reset {
            provider: provider.clone(),
        })
        .await?
    {
        Response::Ok => {
            print(&format!("breaker of {provider} closed\n"))?;
            Ok(EXIT_OK)
        }
        other => Err(unexpected(other, "ok").hint("`mythos status` lists the provider names")),
    }
}
