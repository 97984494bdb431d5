//! The canned answers: deterministic, and a function of the prompt alone.

/// The full answer to `prompt`, whichever simulated provider gives it.
pub fn answer_for(prompt: &str) -> String {
    let prompt = prompt.trim();
    let mut short: String = prompt.chars().take(60).collect();
    if short.len() < prompt.len() {
        short.push('…');
    }
    format!(
        "This is a simulated answer to \"{short}\". mythos sends each request to the healthiest \
         provider, retries brief failures with backoff, and cools down a provider that keeps \
         failing. When a stream breaks in the middle of an answer, the next provider is asked to \
         continue exactly where the text stopped, so nothing is lost and nothing is repeated."
    )
}

/// The answer to `prompt` as JSON that matches `schema`: every string is the canned answer,
/// every other value the first the schema allows. Deterministic, so a continuation on another
/// simulated provider extends it exactly.
pub fn json_answer_for(prompt: &str, schema: &serde_json::Value) -> String {
    let text = answer_for(prompt);
    sample(schema, &text, 0).to_string()
}

fn sample(schema: &serde_json::Value, text: &str, depth: usize) -> serde_json::Value {
    use serde_json::{json, Map, Value};
    if depth > 8 {
        return Value::Null;
    }
    if let Some(first) = schema["enum"].as_array().and_then(|e| e.first()) {
        return first.clone();
    }
    if let Some(c) = schema.get("const") {
        return c.clone();
    }
    for union in ["anyOf", "oneOf"] {
        if let Some(first) = schema[union].as_array().and_then(|e| e.first()) {
            return sample(first, text, depth + 1);
        }
    }
    let ty = match &schema["type"] {
        Value::String(t) => Some(t.as_str()),
        Value::Array(ts) => ts.iter().filter_map(Value::as_str).find(|t| *t != "null"),
        _ => None,
    };
    let props = schema["properties"].as_object();
    match ty {
        Some("object") | None if props.is_some() => {
            let mut out = Map::new();
            for (k, v) in props.into_iter().flatten() {
                out.insert(k.clone(), sample(v, text, depth + 1));
            }
            Value::Object(out)
        }
        Some("object") => json!({ "answer": text }),
        Some("array") => json!([sample(&schema["items"], text, depth + 1)]),
        Some("integer") => json!(text.len()),
        Some("number") => json!(0.5),
        Some("boolean") => json!(true),
        Some("null") => Value::Null,
        _ => json!(text),
    }
}

/// Token-like pieces of `answer`: each word with the whitespace before it. Concatenated they
/// give back `answer` exactly.
pub fn chunk_answer(answer: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut prev_space = true;
    for (i, c) in answer.char_indices() {
        let space = c.is_whitespace();
        // A new piece starts where whitespace follows a word.
        if space && !prev_space && i > start {
            out.push(&answer[start..i]);
            start = i;
        }
        prev_space = space;
    }
    if start < answer.len() {
        out.push(&answer[start..]);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deterministic_and_lossless() {
        let a = answer_for("  hello  ");
        assert_eq!(a, answer_for("hello"));
        assert_ne!(a, answer_for("other"));
        let chunks = chunk_answer(&a);
        assert!(chunks.len() > 40);
        assert_eq!(chunks.concat(), a);
        assert!(chunks[1].starts_with(' '));
        assert_eq!(chunk_answer("  a b"), ["  a", " b"]);
        let schema = serde_json::json!({"type": "object", "properties": {
            "n": {"type": "integer"}, "kind": {"enum": ["a", "b"]},
            "tags": {"type": "array", "items": {"type": "string"}},
            "maybe": {"type": ["null", "boolean"]}, "inner": {"type": "object"}}});
        let j: serde_json::Value = serde_json::from_str(&json_answer_for("hi", &schema)).unwrap();
        assert_eq!(j["kind"], "a");
        assert_eq!(j["tags"][0], answer_for("hi"));
        assert_eq!(j["maybe"], true);
        assert_eq!(j["inner"]["answer"], answer_for("hi"));
        assert_eq!(
            json_answer_for("hi", &schema),
            json_answer_for(" hi ", &schema)
        );
        let long = "é".repeat(100);
        assert!(answer_for(&long).contains('…'));
    }
}
