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
        let long = "é".repeat(100);
        assert!(answer_for(&long).contains('…'));
    }
}
