//! Messages a client sends after the hello.

use serde::{Deserialize, Serialize};

/// Client-chosen id of a chat stream, unique among the streams open on one connection.
pub type RequestId = u64;

/// A message from client to daemon.
// Nearly every request is a `Chat`: boxing it would add an allocation to the common case to
// shrink the rare ones, which live for one decode each.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Request {
    /// Start a streamed chat completion. Answered by [`crate::Response::Event`]s with its id.
    Chat(ChatRequest),
    /// Stop a stream started on this connection.
    Cancel {
        /// The [`ChatRequest::id`] to stop.
        id: RequestId,
    },
    /// Ask for [`crate::Response::Status`].
    Status,
    /// Ask the daemon to shut down gracefully. Answered by [`crate::Response::Ok`].
    Shutdown,
    /// Close a provider's circuit breaker by hand. Answered by `Ok` or `Error`.
    Reset {
        /// Provider name as shown by `status`.
        provider: String,
    },
    /// Explain a routing decision. Answered by [`crate::Response::Why`].
    Why {
        /// A record id from [`crate::StreamEvent::Done`]; `None` means the most recent request.
        record: Option<u64>,
    },
    /// Token and cost totals by provider and day. Answered by [`crate::Response::Usage`].
    Usage {
        /// How many days back, today included.
        days: u32,
    },
    /// Queue faults on a simulated provider (demo and tests only; refused for real providers).
    SimInject {
        /// A simulated provider's name.
        provider: String,
        /// Served to the next requests in order, one each.
        #[serde(deserialize_with = "crate::budget::vec")]
        faults: Vec<SimFault>,
    },
    /// Where the HTTP front end listens and its token. Answered by
    /// [`crate::Response::Http`].
    Http,
    /// Read the config file again, as `SIGHUP` does (the only way on Windows). Answered by
    /// [`crate::Response::Ok`] once the new config is in force, or by
    /// [`crate::Response::Error`] saying why it was refused (the old config stays).
    Reload,
}

/// A streamed chat request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChatRequest {
    /// Chosen by the client; echoed on every event of this stream.
    pub id: RequestId,
    /// The conversation so far, oldest first, ending with the user's turn.
    #[serde(deserialize_with = "crate::budget::vec")]
    pub messages: Vec<Message>,
    /// Optional system prompt.
    #[serde(default)]
    pub system: Option<String>,
    /// What the request is for; shapes how providers are scored.
    #[serde(default)]
    pub task: TaskKind,
    /// Send to exactly this provider (and/or model), with no fallback.
    #[serde(default)]
    pub pin: Option<Pin>,
    /// Upper bound on output tokens; the daemon's default when absent.
    #[serde(default)]
    pub max_tokens: Option<u32>,
    /// Sampling temperature; the provider's default when absent.
    #[serde(default)]
    pub temperature: Option<f32>,
    /// Tools the model may call.
    #[serde(default, deserialize_with = "crate::budget::vec")]
    pub tools: Vec<ToolSpec>,
    /// Everything else a provider API can say about generation (stop sequences, tool choice,
    /// thinking, prompt caching). The HTTP front end fills it from the agent's request; each
    /// adapter maps what its API has and drops the rest.
    #[serde(default)]
    pub options: ChatOptions,
}

/// Generation options beyond the common core, in provider-neutral form.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ChatOptions {
    /// The system prompt as separate blocks, when the client sent blocks (each may carry a
    /// prompt-cache breakpoint). When non-empty, [`ChatRequest::system`] holds their joined text.
    #[serde(default, deserialize_with = "crate::budget::vec")]
    pub system_blocks: Vec<SystemBlock>,
    /// Sequences that end generation.
    #[serde(default, deserialize_with = "crate::budget::vec")]
    pub stop: Vec<String>,
    /// Nucleus sampling.
    #[serde(default)]
    pub top_p: Option<f32>,
    /// Whether and which tool the model must call.
    #[serde(default)]
    pub tool_choice: Option<ToolChoice>,
    /// Whether the model may call several tools in one turn (`None`: the provider's default).
    #[serde(default)]
    pub parallel_tool_calls: Option<bool>,
    /// Extended thinking / reasoning, if asked for.
    #[serde(default)]
    pub thinking: Option<Thinking>,
    /// An opaque end-user id for the provider's abuse monitoring (`metadata.user_id`, `user`).
    #[serde(default)]
    pub user: Option<String>,
    /// Prompt-cache breakpoints in `messages` (kept for Anthropic, dropped elsewhere).
    #[serde(default, deserialize_with = "crate::budget::vec")]
    pub cache_points: Vec<CachePoint>,
    /// With no `max_tokens`: let the answer run to the serving model's own output limit
    /// rather than the daemon's default (agents that send no limit, such as Codex, expect
    /// the whole answer). Quotas still reckon with the default.
    #[serde(default)]
    pub up_to_model_limit: bool,
    /// The answer must be JSON (structured output): OpenAI's `response_format`, the Responses
    /// API's `text.format`, Anthropic's `output_config.format`, Gemini's `responseSchema`.
    #[serde(default)]
    pub response_format: Option<ResponseFormat>,
    /// Anthropic beta features the client asked for (its `anthropic-beta` header: Claude
    /// Code's 1M-token context, interleaved thinking, context management), for Anthropic
    /// providers only.
    #[serde(default, deserialize_with = "crate::budget::vec")]
    pub anthropic_beta: Vec<String>,
    /// Anthropic's `context_management` (server-side clearing of old tool results and
    /// thinking, a beta), as JSON text, for Anthropic providers only.
    #[serde(default)]
    pub context_management: Option<String>,
    /// Anthropic server tools the client offered (`web_search_20250305`, `web_fetch_*`,
    /// `code_execution_*`: run by Anthropic, not by the client), each as JSON text, for
    /// Anthropic providers only.
    #[serde(default, deserialize_with = "crate::budget::vec")]
    pub server_tools: Vec<String>,
    /// Place prompt-cache breakpoints for providers that need them (Anthropic) when the client
    /// placed none: its API has no way to ask (Chat Completions, Responses, this protocol's
    /// chats), yet an agent resends its whole history every turn. A Messages client that
    /// sends no `cache_control` chose not to cache, and leaves this off.
    #[serde(default)]
    pub cache_automatically: bool,
    /// The client's own reasoning effort word (OpenAI's `reasoning_effort`, the Responses API's
    /// `reasoning.effort`: `none`, `minimal`, `low`, `medium`, `high`, `xhigh`), for
    /// OpenAI-format reasoning models that take it; [`ChatOptions::thinking`] has it as a
    /// budget for the others.
    #[serde(default)]
    pub reasoning_effort: Option<String>,
    /// Fields of the client's own API that have no provider-neutral form, passed on as sent to
    /// providers of that API only: Anthropic's `mcp_servers` and `container` (a request with
    /// either goes to an Anthropic provider, as for server tools) and `top_k`; OpenAI's `seed`,
    /// `frequency_penalty`, `presence_penalty` and `logit_bias`. Dropped, an MCP server's tools
    /// were silently missing and a pinned request lost its sampling settings.
    #[serde(default, deserialize_with = "crate::budget::vec")]
    pub native: Vec<NativeField>,
}

/// A top-level field of one provider API's request body, passed on as the client sent it (see
/// [`ChatOptions::native`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NativeField {
    /// The API it belongs to: `anthropic` or `openai`.
    pub api: String,
    /// The field's name.
    pub name: String,
    /// Its value, as JSON text (the binary encoding cannot carry a JSON tree).
    pub json: String,
}

impl NativeField {
    /// The field `name` of `api`, with its value as JSON text.
    pub fn new(api: &str, name: &str, json: impl Into<String>) -> Self {
        NativeField {
            api: api.into(),
            name: name.into(),
            json: json.into(),
        }
    }
}

/// The shape an answer must take.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ResponseFormat {
    /// One JSON object, of any shape (OpenAI's JSON mode).
    JsonObject,
    /// JSON that matches a schema.
    JsonSchema {
        /// The schema's name (OpenAI requires one; `response` when the client gave none).
        name: String,
        /// What the answer is for, which guides the model (OpenAI's `description`).
        #[serde(default)]
        description: Option<String>,
        /// The JSON Schema, as JSON text (the binary encoding cannot carry a JSON tree).
        schema_json: String,
        /// Whether the provider must follow the schema exactly (OpenAI's `strict`).
        #[serde(default)]
        strict: Option<bool>,
    },
}

/// One block of a system prompt.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SystemBlock {
    /// The text.
    pub text: String,
    /// A prompt-cache breakpoint ends here.
    #[serde(default)]
    pub cache: Option<CacheTtl>,
}

/// How long a prompt-cache entry lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CacheTtl {
    /// The default, five minutes.
    Default,
    /// One hour.
    Hour,
}

/// A prompt-cache breakpoint after one content block.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct CachePoint {
    /// Index into [`ChatRequest::messages`].
    pub message: u32,
    /// Index into that message's content.
    pub block: u32,
    /// Its lifetime.
    pub ttl: CacheTtl,
}

/// Tool choice, in the union of the providers' terms.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ToolChoice {
    /// The model decides (Anthropic `auto`, OpenAI `auto`).
    Auto,
    /// The model must call some tool (Anthropic `any`, OpenAI `required`).
    Any,
    /// No tool call (Anthropic `none`, OpenAI `none`).
    None,
    /// This tool.
    Tool {
        /// Its name.
        name: String,
    },
}

/// Extended thinking (Anthropic) / reasoning effort (OpenAI).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Thinking {
    /// Token budget for thinking; `None` lets the model decide (Anthropic `adaptive`).
    #[serde(default)]
    pub budget_tokens: Option<u32>,
    /// Whether the client wants the thinking text shown (`display: "omitted"` says no).
    #[serde(default)]
    pub display: bool,
}

impl ChatRequest {
    /// A single-turn request with defaults everywhere.
    pub fn user_text(id: RequestId, text: impl Into<String>) -> Self {
        ChatRequest {
            id,
            messages: vec![Message::text(Role::User, text)],
            system: None,
            task: TaskKind::default(),
            pin: None,
            max_tokens: None,
            temperature: None,
            tools: Vec::new(),
            options: ChatOptions::default(),
        }
    }
}

/// Kind of work, used to weigh success, latency and cost differently.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskKind {
    /// Interactive chat: latency matters most.
    #[default]
    Chat,
    /// Code generation or editing: success matters most.
    Code,
    /// Long-form analysis: success matters most, latency little.
    Analysis,
    /// Background work: cost matters most.
    Background,
}

impl TaskKind {
    /// Lower-case name, as on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            TaskKind::Chat => "chat",
            TaskKind::Code => "code",
            TaskKind::Analysis => "analysis",
            TaskKind::Background => "background",
        }
    }
}

/// Deterministic routing: this provider and/or model only.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pin {
    /// Provider name; `None` means any provider configured with `model`.
    #[serde(default)]
    pub provider: Option<String>,
    /// Model override; `None` means the provider's configured model.
    #[serde(default)]
    pub model: Option<String>,
}

/// One turn of the conversation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    /// Who said it.
    pub role: Role,
    /// What was said.
    #[serde(deserialize_with = "crate::budget::vec")]
    pub content: Vec<ContentBlock>,
}

impl Message {
    /// A message holding one text block.
    pub fn text(role: Role, text: impl Into<String>) -> Self {
        Message {
            role,
            content: vec![ContentBlock::Text { text: text.into() }],
        }
    }

    /// The concatenated text blocks of this message.
    pub fn joined_text(&self) -> String {
        let mut out = String::new();
        for block in &self.content {
            if let ContentBlock::Text { text } = block {
                out.push_str(text);
            }
        }
        out
    }
}

/// Speaker of a [`Message`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// The human (or the agent acting for them), including tool results.
    User,
    /// The model.
    Assistant,
}

/// A piece of a message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ContentBlock {
    /// Plain text.
    Text {
        /// The text.
        text: String,
    },
    /// A tool call the assistant made.
    ToolUse {
        /// Call id, as the provider gave it.
        id: String,
        /// Tool name.
        name: String,
        /// Arguments as a JSON document (kept as text so any encoding can carry it).
        input_json: String,
    },
    /// The result of a tool call, sent back by the user side.
    ToolResult {
        /// The [`ContentBlock::ToolUse::id`] this answers.
        tool_use_id: String,
        /// Result text.
        content: String,
        /// Whether the tool failed.
        #[serde(default)]
        is_error: bool,
        /// Images the tool returned (screenshots, diagrams), after the text; and documents
        /// (a PDF that a file-reading tool read), told apart by [`ImageSource::is_document`].
        #[serde(default, deserialize_with = "crate::budget::vec")]
        images: Vec<ImageSource>,
    },
    /// An image the user attached.
    Image {
        /// Where its bytes are.
        source: ImageSource,
    },
    /// A document the user attached: a PDF, inline or at a URL. (A plain-text document is a
    /// [`ContentBlock::Text`].)
    Document {
        /// Where its bytes are.
        source: ImageSource,
        /// Its title or file name, when the client gave one.
        #[serde(default)]
        title: Option<String>,
    },
    /// The model's reasoning before it answered.
    Thinking {
        /// The reasoning text.
        text: String,
        /// Anthropic's signature over it. Only a block with a signature Anthropic made goes
        /// back to Anthropic; other providers get the text (or nothing).
        #[serde(default)]
        signature: Option<String>,
    },
    /// Anthropic thinking that was redacted: opaque, meaningful to Anthropic alone.
    RedactedThinking {
        /// The encrypted payload.
        data: String,
    },
    /// A block an Anthropic server tool made (see [`crate::StreamEvent::ServerBlock`]), sent
    /// back as it came: meaningful to Anthropic alone.
    ServerBlock {
        /// The block, JSON text.
        json: String,
    },
}

/// Where an image's (or a document's) bytes are.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ImageSource {
    /// Inline.
    Base64 {
        /// MIME type, e.g. `image/png`.
        media_type: String,
        /// The bytes, base64.
        data: String,
    },
    /// At a URL the provider fetches itself.
    Url {
        /// The URL (`https:` or `data:`).
        url: String,
    },
}

/// The media type of documents (as opposed to images) that providers read.
pub const PDF: &str = "application/pdf";

impl ImageSource {
    /// Its media type, when it is inline (base64, or a `data:` URL).
    pub fn media_type(&self) -> Option<&str> {
        match self {
            ImageSource::Base64 { media_type, .. } => Some(media_type),
            ImageSource::Url { url } => {
                let meta = url.strip_prefix("data:")?.split([',', ';']).next()?;
                (!meta.is_empty()).then_some(meta)
            }
        }
    }

    /// Whether it is a document (a PDF) rather than an image.
    pub fn is_document(&self) -> bool {
        self.media_type()
            .is_some_and(|m| m.eq_ignore_ascii_case(PDF))
    }
}

/// A tool the model may call.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ToolSpec {
    /// Tool name.
    pub name: String,
    /// What it does, for the model.
    #[serde(default)]
    pub description: String,
    /// JSON Schema of its arguments, as JSON text.
    pub input_schema_json: String,
}

/// A fault a simulated provider serves instead of (or in the middle of) a normal answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SimFault {
    /// HTTP 429 with `retry-after` (seconds, rounded up) and `retry-after-ms`.
    RateLimit {
        /// How long the provider asks callers to wait.
        retry_after_ms: u64,
    },
    /// HTTP 529 `overloaded_error` (Anthropic flavour) or 503 (OpenAI flavour).
    Overloaded,
    /// An HTTP error status with a JSON error body.
    Status {
        /// The status code, e.g. 500, 400, 401.
        code: u16,
    },
    /// Status 200 and the stream preamble (Anthropic `message_start`, OpenAI role chunk) are sent,
    /// then nothing at all (no token, no keep-alive) until the client leaves.
    StallBeforeFirstToken,
    /// Only SSE keep-alive comments, forever (DeepSeek under load).
    KeepAliveOnly,
    /// `tokens` chunks of the answer, then silence until the client leaves.
    StallAfter {
        /// Chunks sent before the stall.
        tokens: u32,
    },
    /// `tokens` chunks, then the TCP connection is dropped without a terminator.
    DisconnectAfter {
        /// Chunks sent before the drop.
        tokens: u32,
    },
    /// `tokens` chunks, then a `data:` line that is not valid JSON.
    MalformedAfter {
        /// Chunks sent before the garbage.
        tokens: u32,
    },
    /// `tokens` chunks, then an in-stream `overloaded_error` event after the 200.
    ErrorEventAfter {
        /// Chunks sent before the error event.
        tokens: u32,
    },
    /// An error that quotes the request's API key back, as careless servers and proxies do:
    /// in a `400` body, or (`in_stream`) in an error event after a few chunks of a `200`.
    EchoKey {
        /// In the stream rather than in an error response.
        in_stream: bool,
    },
    /// The whole answer with its finish reason and usage, then the connection is dropped
    /// before the stream's terminator (`[DONE]`, `message_stop`), as a proxy or a server that
    /// closes early does. The answer is whole: nothing should be asked again.
    CutBeforeTerminator,
    /// Overloaded (`529` Anthropic, `503` otherwise) with a `Retry-After`, as a server that
    /// knows when it will have room says.
    OverloadedFor {
        /// How long the provider asks callers to wait.
        retry_after_ms: u64,
    },
}
