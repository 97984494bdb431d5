//! Model names: `PROVIDER/MODEL` pins, the router's aliases, and every other name a hint.

use mythos_protocol::{Pin, TaskKind};
use serde_json::{json, Value};

use super::config::{glob_match, HttpConfig};
use crate::config::ProviderConfig;

/// The aliases that name a task outright.
pub const ALIASES: [(&str, TaskKind); 5] = [
    ("mythos", TaskKind::Chat),
    ("mythos/chat", TaskKind::Chat),
    ("mythos/code", TaskKind::Code),
    ("mythos/analysis", TaskKind::Analysis),
    ("mythos/background", TaskKind::Background),
];

/// What a model name asks of the router.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Choice {
    /// Deterministic routing, when the name is `PROVIDER/MODEL` (or a bare provider name).
    pub pin: Option<Pin>,
    /// The task the name hints.
    pub task: TaskKind,
}

/// Read `model` against the configured providers and patterns. Names the router has never seen
/// (`claude-opus-5-5`) are hints, never errors: an agent that sends its own model names gets
/// failover with no setting at all.
pub fn resolve<'a>(
    model: &str,
    providers: impl Iterator<Item = &'a ProviderConfig> + Clone,
    cfg: &HttpConfig,
) -> Choice {
    let model = model.trim();
    if let Some((_, task)) = ALIASES.iter().find(|(a, _)| a.eq_ignore_ascii_case(model)) {
        return Choice {
            pin: None,
            task: *task,
        };
    }
    if let Some((provider, m)) = model.split_once('/') {
        if let Some(p) = providers
            .clone()
            .find(|p| p.name.eq_ignore_ascii_case(provider))
        {
            return Choice {
                pin: Some(Pin {
                    provider: Some(p.name.clone()),
                    model: (!m.is_empty()).then(|| m.to_string()),
                }),
                task: hinted(m, cfg),
            };
        }
    }
    if let Some(p) = providers
        .clone()
        .find(|p| p.name.eq_ignore_ascii_case(model))
    {
        return Choice {
            pin: Some(Pin {
                provider: Some(p.name.clone()),
                model: None,
            }),
            task: cfg.default_task,
        };
    }
    Choice {
        pin: None,
        task: hinted(model, cfg),
    }
}

fn hinted(model: &str, cfg: &HttpConfig) -> TaskKind {
    if cfg.background_models.iter().any(|p| glob_match(p, model)) {
        TaskKind::Background
    } else {
        cfg.default_task
    }
}

/// `GET /v1/models`: the aliases, then `PROVIDER/MODEL` for each provider, each with its
/// context window. One list readable by both SDKs: OpenAI's `object`/`owned_by`/`created` and
/// Anthropic's `type`/`display_name`/`created_at` side by side.
pub fn list(providers: &[ProviderConfig]) -> Value {
    let widest = providers
        .iter()
        .filter_map(|p| p.context_window)
        .max()
        .unwrap_or(128_000);
    let mut data = Vec::new();
    let entry = |id: String, owner: &str, window: u64, display: String| {
        json!({
            "id": id,
            "object": "model",
            "type": "model",
            "created": 0,
            "created_at": "1970-01-01T00:00:00Z",
            "owned_by": owner,
            "display_name": display,
            "context_window": window,
        })
    };
    for (alias, task) in ALIASES {
        data.push(entry(
            alias.to_string(),
            "mythos",
            widest,
            format!("mythos router ({} task)", task.as_str()),
        ));
    }
    // In configured order: the router keeps a provider's place across reloads that reorder.
    let mut ordered: Vec<&ProviderConfig> = providers.iter().collect();
    ordered.sort_by_key(|p| p.priority);
    for p in ordered {
        data.push(entry(
            format!("{}/{}", p.name, p.model),
            &p.name,
            p.context_window.unwrap_or(128_000),
            format!("{} on {}", p.model, p.name),
        ));
    }
    let first = data.first().map(|d| d["id"].clone()).unwrap_or(Value::Null);
    let last = data.last().map(|d| d["id"].clone()).unwrap_or(Value::Null);
    json!({"object": "list", "data": data, "has_more": false, "first_id": first, "last_id": last})
}

/// One model by its id: an entry of [`list`], or for any other name (which the router takes
/// as a hint and serves, see [`resolve`]) an entry saying so, so that a tool that checks a
/// name before it uses it does not refuse one that works. `None` only for an empty name.
pub fn get(providers: &[ProviderConfig], id: &str) -> Option<Value> {
    if id.trim().is_empty() {
        return None;
    }
    let mut all = list(providers);
    let data = all.get_mut("data")?.as_array_mut()?;
    if let Some(at) = data.iter().position(|m| m["id"] == id) {
        return Some(data.swap_remove(at));
    }
    let window = providers
        .iter()
        .filter_map(|p| p.context_window)
        .max()
        .unwrap_or(128_000);
    Some(json!({
        "id": id,
        "object": "model",
        "type": "model",
        "created": 0,
        "created_at": "1970-01-01T00:00:00Z",
        "owned_by": "mythos",
        "display_name": format!("{id} (routed by mythos to the best provider)"),
        "context_window": window,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Api;

    fn providers() -> Vec<ProviderConfig> {
        vec![
            ProviderConfig::new("anthropic", Api::Anthropic, "http://a", "claude-sonnet-4-5"),
            ProviderConfig::new("deepseek", Api::Openai, "http://d", "deepseek-chat"),
        ]
    }

    #[test]
    fn names_pin_alias_or_hint() {
        let c = HttpConfig::default();
        let ps = providers();
        let pin = resolve("anthropic/claude-opus-4-1", ps.iter(), &c);
        assert_eq!(
            pin.pin,
            Some(Pin {
                provider: Some("anthropic".into()),
                model: Some("claude-opus-4-1".into())
            })
        );
        assert_eq!(resolve("deepseek", ps.iter(), &c).pin.unwrap().model, None);
        assert_eq!(
            resolve("mythos/background", ps.iter(), &c).task,
            TaskKind::Background
        );
        assert_eq!(resolve("mythos", ps.iter(), &c).task, TaskKind::Chat);
        // Names the router never saw are hints: no pin, no error.
        let opus = resolve("claude-opus-5-5", ps.iter(), &c);
        assert_eq!((opus.pin, opus.task), (None, TaskKind::Code));
        assert_eq!(
            resolve("claude-haiku-4-5-20251001", ps.iter(), &c).task,
            TaskKind::Background
        );
        assert_eq!(
            resolve("gpt-4o-mini", ps.iter(), &c).task,
            TaskKind::Background
        );
        // An unknown provider prefix is a name, not a pin (OpenRouter-style `openai/gpt-4o`).
        assert_eq!(resolve("openai/gpt-4o", ps.iter(), &c).pin, None);
    }

    #[test]
    fn list_has_aliases_and_pins() {
        let v = list(&providers());
        let ids: Vec<&str> = v["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d["id"].as_str().unwrap())
            .collect();
        assert!(ids.contains(&"mythos/code"));
        assert!(ids.contains(&"deepseek/deepseek-chat"));
        assert!(v["data"][0]["context_window"].as_u64().unwrap() > 0);
    }
}
