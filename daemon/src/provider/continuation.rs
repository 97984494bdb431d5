//! How a fallback provider is asked to continue an answer another provider started.

/// The user turn appended after the partial assistant answer when the provider's API has no
/// assistant prefill (OpenAI-compatible endpoints). The simulated providers recognise it.
pub const CONTINUE_INSTRUCTION: &str = "Your previous answer was cut off by a network failure. \
Continue it from exactly where it stopped: do not repeat any of it, do not apologise or comment, \
output only the missing rest.";
