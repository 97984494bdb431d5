//! `mythos token` and `mythos env claude|openai`: what an agent needs to reach the daemon's
//! HTTP front end. The daemon writes its token and bound address into its state directory;
//! these commands make sure it runs, then read them.

use mythos_protocol::{Request, Response};

use super::{print, Globals};
use crate::connection::Connection;
use crate::error::{Failure, EXIT_OK};

/// Which agent's variables to print.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavor {
    /// Claude Code and the Anthropic SDKs.
    Claude,
    /// Codex CLI, aider, opencode and the OpenAI SDKs.
    Openai,
}

/// The front end's base URL (no `/v1`) and token, from the daemon itself (starting it if
/// needed): whatever state directory or port it was started with, this is the one it serves.
async fn front_end(g: &Globals) -> Result<(String, String), Failure> {
    let mut conn = Connection::connect_or_start(&g.target).await?;
    match conn.call(Request::Http).await? {
        Response::Http {
            url: Some(url),
            token: Some(token),
        } => Ok((url, token)),
        Response::Http { .. } => Err(Failure::new("the daemon's HTTP front end is not listening")
            .hint(
                "it is off in [http] (enabled = false, or MYTHOS_HTTP_LISTEN=off), or its port \
                   was taken: see the daemon log",
            )),
        other => Err(super::unexpected(other, "the HTTP front end's address")),
    }
}

/// `mythos token`: print the local token.
pub async fn token(g: &Globals) -> Result<u8, Failure> {
    let (_, token) = front_end(g).await?;
    print(&format!("{token}\n"))?;
    Ok(EXIT_OK)
}

/// Shell lines that point an agent at `base` with `token`.
pub fn lines(flavor: Flavor, base: &str, token: &str) -> String {
    // Proxies configured for the internet must not see loopback traffic (or the token).
    let no_proxy = "export NO_PROXY=\"127.0.0.1,localhost${NO_PROXY:+,$NO_PROXY}\"\n";
    match flavor {
        Flavor::Claude => format!(
            "export ANTHROPIC_BASE_URL={base}\n\
             export ANTHROPIC_AUTH_TOKEN={token}\n\
             # Claude Code prefers an API key over the token: empty it in this shell.\n\
             export ANTHROPIC_API_KEY=\n\
             {no_proxy}"
        ),
        Flavor::Openai => format!(
            "export OPENAI_BASE_URL={base}/v1\n\
             export OPENAI_API_KEY={token}\n\
             {no_proxy}"
        ),
    }
}

/// `mythos env claude|openai`: print `export` lines for `eval "$(mythos env claude)"`.
pub async fn env(g: &Globals, flavor: Flavor) -> Result<u8, Failure> {
    let (base, token) = front_end(g).await?;
    print(&lines(flavor, &base, &token))?;
    Ok(EXIT_OK)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn export_lines() {
        let c = lines(Flavor::Claude, "http://127.0.0.1:7626", "mythos-ab");
        assert!(c.contains("export ANTHROPIC_BASE_URL=http://127.0.0.1:7626\n"));
        assert!(c.contains("export ANTHROPIC_AUTH_TOKEN=mythos-ab\n"));
        assert!(c.contains("export ANTHROPIC_API_KEY=\n"));
        assert!(c.contains("NO_PROXY"));
        let o = lines(Flavor::Openai, "http://127.0.0.1:7626", "mythos-ab");
        assert!(o.contains("export OPENAI_BASE_URL=http://127.0.0.1:7626/v1\n"));
        assert!(o.contains("export OPENAI_API_KEY=mythos-ab\n"));
    }
}
