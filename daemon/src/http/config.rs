//! `[http]`: where the front end listens and how model names hint the task.

use std::net::SocketAddr;

use mythos_protocol::TaskKind;
use serde::Deserialize;

/// The port the front end listens on unless configured otherwise. Fixed, so that
/// `ANTHROPIC_BASE_URL=http://127.0.0.1:7626` written once in a shell profile keeps working.
pub const DEFAULT_PORT: u16 = 7626;

/// Environment variable that overrides `[http] listen` (`off` turns the front end off). The
/// tests set `127.0.0.1:0` to get a free port each.
pub const LISTEN_ENV: &str = "MYTHOS_HTTP_LISTEN";

/// The HTTP front end's settings.
#[derive(Debug, Clone, PartialEq)]
pub struct HttpConfig {
    /// Serve HTTP at all.
    pub enabled: bool,
    /// Address to bind.
    pub listen: SocketAddr,
    /// Bind a non-loopback address. Off by default: the front end spends the user's provider
    /// quota for anyone who has the token, and a token crosses a network in clear text.
    pub allow_remote: bool,
    /// Glob patterns (`*` wildcards, case-insensitive): a model name that matches one asks for
    /// background work (cheap and fast beats best).
    pub background_models: Vec<String>,
    /// The task of a model name that matches no pattern and no alias.
    pub default_task: TaskKind,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            enabled: true,
            listen: SocketAddr::from(([127, 0, 0, 1], DEFAULT_PORT)),
            allow_remote: false,
            background_models: ["*haiku*", "*mini*", "*nano*", "*flash*", "*lite*"]
                .map(String::from)
                .to_vec(),
            // The clients of an HTTP front end are coding agents.
            default_task: TaskKind::Code,
        }
    }
}

/// `[http]` as written in the file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct FileHttp {
    pub enabled: Option<bool>,
    pub listen: Option<String>,
    pub allow_remote: Option<bool>,
    pub background_models: Option<Vec<String>>,
    pub default_task: Option<TaskKind>,
}

impl FileHttp {
    /// The settings, with `env` (the `MYTHOS_HTTP_LISTEN` lookup) taking precedence. An error
    /// names the key and says what is wrong; the caller adds the line.
    pub(crate) fn resolve(
        &self,
        env: Option<String>,
    ) -> Result<HttpConfig, (&'static str, String)> {
        let d = HttpConfig::default();
        let mut enabled = self.enabled.unwrap_or(d.enabled);
        let mut listen_text = self.listen.clone();
        if let Some(v) = env {
            if v.eq_ignore_ascii_case("off") {
                enabled = false;
            } else {
                listen_text = Some(v);
            }
        }
        let listen = match listen_text {
            Some(text) => parse_listen(&text).map_err(|e| ("listen", e))?,
            None => d.listen,
        };
        let allow_remote = self.allow_remote.unwrap_or(false);
        if enabled && !listen.ip().is_loopback() && !allow_remote {
            return Err((
                "listen",
                format!(
                    "= \"{listen}\" is not a loopback address; the front end serves anyone who \
                     can reach it with the token, so set `allow_remote = true` to mean it"
                ),
            ));
        }
        let background_models = self
            .background_models
            .clone()
            .unwrap_or(d.background_models);
        if let Some(p) = background_models
            .iter()
            .find(|p| p.is_empty() || p.len() > 200)
        {
            return Err((
                "background_models",
                format!("has a pattern of {} characters: 1 to 200", p.len()),
            ));
        }
        Ok(HttpConfig {
            enabled,
            listen,
            allow_remote,
            background_models,
            default_task: self.default_task.unwrap_or(d.default_task),
        })
    }
}

/// `127.0.0.1:7626`, `[::1]:7626`, `localhost:7626` or a bare port.
fn parse_listen(text: &str) -> Result<SocketAddr, String> {
    let text = text.trim();
    if let Ok(port) = text.parse::<u16>() {
        return Ok(SocketAddr::from(([127, 0, 0, 1], port)));
    }
    if let Some(port) = text.strip_prefix("localhost:") {
        if let Ok(port) = port.parse::<u16>() {
            return Ok(SocketAddr::from(([127, 0, 0, 1], port)));
        }
    }
    text.parse::<SocketAddr>().map_err(|_| {
        format!("= \"{text}\" is not an address: write it as 127.0.0.1:{DEFAULT_PORT}")
    })
}

/// Whether `name` matches the glob `pattern` (`*` matches any run of characters), ignoring
/// case.
pub fn glob_match(pattern: &str, name: &str) -> bool {
    let p = pattern.to_ascii_lowercase();
    let n = name.to_ascii_lowercase();
    let parts: Vec<&str> = p.split('*').collect();
    if parts.len() == 1 {
        return p == n;
    }
    let (first, last) = (parts[0], parts[parts.len() - 1]);
    if !n.starts_with(first) || n.len() < first.len() + last.len() || !n.ends_with(last) {
        return false;
    }
    let mut rest = &n[first.len()..n.len() - last.len()];
    for mid in &parts[1..parts.len() - 1] {
        match rest.find(mid) {
            Some(at) => rest = &rest[at + mid.len()..],
            None => return false,
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        assert!(glob_match("*haiku*", "claude-haiku-4-5-20251001"));
        assert!(glob_match("*HAIKU*", "claude-3-5-haiku"));
        assert!(!glob_match("*haiku*", "claude-sonnet-4-5"));
        assert!(glob_match("gpt-*-mini", "gpt-4.1-mini"));
        assert!(!glob_match("gpt-*-mini", "gpt-4.1-mini-x"));
        assert!(glob_match("exact", "EXACT"));
        assert!(!glob_match("a*a", "a"));
        assert!(glob_match("*", ""));
    }

    #[test]
    fn listen_addresses() {
        let f = FileHttp::default();
        assert_eq!(f.resolve(None).unwrap().listen.port(), DEFAULT_PORT);
        let c = f.resolve(Some("127.0.0.1:0".into())).unwrap();
        assert_eq!(c.listen.port(), 0);
        assert!(!f.resolve(Some("off".into())).unwrap().enabled);
        let remote = FileHttp {
            listen: Some("0.0.0.0:80".into()),
            ..FileHttp::default()
        };
        let (key, why) = remote.resolve(None).unwrap_err();
        assert_eq!(key, "listen");
        assert!(why.contains("allow_remote"), "{why}");
        let forced = FileHttp {
            listen: Some("0.0.0.0:80".into()),
            allow_remote: Some(true),
            ..FileHttp::default()
        };
        assert!(forced.resolve(None).is_ok());
        let bad = FileHttp {
            listen: Some("here".into()),
            ..FileHttp::default()
        };
        assert!(bad.resolve(None).unwrap_err().1.contains("not an address"));
        assert_eq!(parse_listen("9000").unwrap().to_string(), "127.0.0.1:9000");
        assert_eq!(parse_listen("[::1]:9").unwrap().to_string(), "[::1]:9");
    }
}
