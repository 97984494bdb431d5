//! `mythos chat`: an interactive conversation.
//!
//! On a terminal, lines are edited with rustyline and kept in `history.txt` in the state dir.
//! When stdin is not a terminal, lines are read as they come, with no prompt, banner or
//! history, so that a script can pipe a conversation through (one message per line).
//!
//! The conversation keeps the user's messages and the daemon's complete answers. A question
//! whose answer did not complete (Ctrl-C, an error) is dropped together with its partial
//! answer, so the conversation never holds an unanswered question; rustyline's history still
//! has it one ↑ away.

use std::io::{self, BufRead, IsTerminal};
use std::path::PathBuf;

use mythos_protocol::{
    BreakerState, ChatRequest, Message, Pin, Request, Response, Role, SimFault, StatusReport,
    StreamEvent, TaskKind,
};
use rustyline::error::ReadlineError;
use rustyline::history::DefaultHistory;
use rustyline::{Behavior, Config, Editor};
use tokio::runtime::Runtime;

use super::demo::PrivateDaemon;
use super::{eprint_line, print, status, stream_failure, unexpected, Globals};
use crate::connection::{Connection, Target};
use crate::error::{Failure, EXIT_FAILURE, EXIT_OK, EXIT_USAGE};
use crate::render::{status_text, PrinterOptions, StreamPrinter, Style};
use crate::stream::{self, Ended, Outcome};
use crate::typeahead::{Quiet, Typed, TypedAhead};

/// What `mythos chat` was asked.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ChatOptions {
    /// Start pinned to this provider.
    pub provider: Option<String>,
    /// Task kind of every message.
    pub task: TaskKind,
    /// Chat with a private simulated daemon.
    pub demo: bool,
    /// Show thinking text, dimmed.
    pub show_thinking: bool,
    /// Print answers as they are, without Markdown rendering.
    pub raw: bool,
}

/// Run the chat.
pub fn run(rt: &Runtime, g: &Globals, opts: ChatOptions) -> Result<u8, Failure> {
    if !opts.demo {
        return repl(rt, g.target.clone(), opts);
    }
    let daemon = rt.block_on(PrivateDaemon::start(&g.target.encodings))?;
    let result = repl(rt, daemon.target().clone(), opts);
    rt.block_on(daemon.stop());
    result
}

// ---------------------------------------------------------------------------------------------
// Conversation bookkeeping

/// The messages sent with every request: complete exchanges, plus the question in flight.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Conversation {
    messages: Vec<Message>,
    /// The last question that got no answer (an error, Ctrl-C): what `/retry` asks again.
    unanswered: Option<String>,
}

impl Conversation {
    /// The user asks `text`.
    pub fn push_user(&mut self, text: &str) {
        self.unanswered = None;
        self.messages.push(Message::text(Role::User, text));
    }

    /// The answer to the pending question completed with `text`. An empty answer cannot be
    /// sent back to providers, so the exchange is dropped; returns whether it was kept.
    pub fn answer(&mut self, text: &str) -> bool {
        if text.is_empty() {
            self.abandon();
            return false;
        }
        self.messages.push(Message::text(Role::Assistant, text));
        true
    }

    /// The pending question got no complete answer: forget it.
    pub fn abandon(&mut self) {
        if self.messages.last().is_some_and(|m| m.role == Role::User) {
            self.unanswered = self.messages.pop().map(|m| m.joined_text());
        }
    }

    /// Forget everything.
    pub fn clear(&mut self) {
        self.messages.clear();
        self.unanswered = None;
    }

    /// The messages, oldest first.
    pub fn messages(&self) -> &[Message] {
        &self.messages
    }

    /// What `/retry` asks: the question that just went unanswered, else the last exchange's
    /// question (its answer taken back).
    pub fn take_last_question(&mut self) -> Option<String> {
        if let Some(q) = self.unanswered.take() {
            return Some(q);
        }
        if self
            .messages
            .last()
            .is_some_and(|m| m.role == Role::Assistant)
        {
            self.messages.pop();
        }
        match self.messages.last() {
            Some(m) if m.role == Role::User => self.messages.pop().map(|m| m.joined_text()),
            _ => None,
        }
    }

    /// The last answer.
    pub fn last_answer(&self) -> Option<String> {
        self.messages
            .iter()
            .rev()
            .find(|m| m.role == Role::Assistant)
            .map(Message::joined_text)
    }

    /// The conversation as Markdown, for `/save`.
    pub fn markdown(&self) -> String {
        let mut out = String::from("# mythos chat\n");
        for m in &self.messages {
            let who = match m.role {
                Role::User => "You",
                Role::Assistant => "Assistant",
            };
            out.push_str(&format!("\n## {who}\n\n{}\n", m.joined_text().trim_end()));
        }
        out
    }
}

/// The last fenced code block of `text` (what `/copy` copies), or the whole text if it has
/// none.
pub fn last_code_block(text: &str) -> String {
    let mut blocks: Vec<String> = Vec::new();
    let mut current: Option<(String, String)> = None;
    for line in text.lines() {
        let trimmed = line.trim_start();
        match &mut current {
            None => {
                if trimmed.starts_with("```") || trimmed.starts_with("~~~") {
                    current = Some((trimmed[..3].to_string(), String::new()));
                }
            }
            Some((fence, body)) => {
                if trimmed.starts_with(fence.as_str()) && trimmed.trim_end() == fence.as_str() {
                    blocks.push(std::mem::take(body));
                    current = None;
                } else {
                    body.push_str(line);
                    body.push('\n');
                }
            }
        }
    }
    // An unclosed fence still counts: the answer may end inside one.
    if let Some((_, body)) = current {
        blocks.push(body);
    }
    blocks.pop().unwrap_or_else(|| text.to_string())
}

/// Put `text` on the clipboard with the first clipboard tool this system has.
fn copy_to_clipboard(text: &str) -> Result<&'static str, String> {
    use std::io::Write as _;
    let tools: &[(&str, &[&str])] = &[
        ("pbcopy", &[]),
        ("wl-copy", &[]),
        ("xclip", &["-selection", "clipboard"]),
        ("xsel", &["--clipboard", "--input"]),
        ("clip.exe", &[]),
    ];
    for (tool, args) in tools {
        let child = std::process::Command::new(tool)
            .args(*args)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn();
        let Ok(mut child) = child else { continue };
        if let Some(mut stdin) = child.stdin.take() {
            let _ = stdin.write_all(text.as_bytes());
        }
        return match child.wait() {
            Ok(s) if s.success() => Ok(tool),
            Ok(s) => Err(format!("{tool} failed ({s})")),
            Err(e) => Err(format!("{tool} failed: {e}")),
        };
    }
    Err("no clipboard tool found (pbcopy, wl-copy, xclip, xsel or clip.exe)".into())
}

// ---------------------------------------------------------------------------------------------
// Input

/// One line typed by the user, as the REPL understands it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    /// Nothing (a blank line).
    Empty,
    /// A message for the model.
    Message(String),
    /// `/exit`, `/quit`.
    Exit,
    /// `/help`, `/?`.
    Help,
    /// `/provider NAME` pins, `/provider` shows the pin.
    Provider(Option<String>),
    /// `/auto`: unpin.
    Auto,
    /// `/task KIND`.
    Task(Option<TaskKind>),
    /// `/status`.
    Status,
    /// `/clear`.
    Clear,
    /// `/fault PROVIDER FAULT`: inject a fault into a simulated provider.
    Fault(String, String),
    /// `/copy`: the last answer's last code block to the clipboard.
    Copy,
    /// `/save FILE`: the conversation as Markdown.
    Save(Option<String>),
    /// `/retry`: ask the last question again.
    Retry,
    /// A command given the wrong arguments: what to say.
    Usage(String),
    /// Any other `/word`.
    Unknown(String),
}

/// Understand one line. A line starting with `//` sends the rest, starting with `/`, as a
/// message.
pub fn parse_input(line: &str) -> Input {
    let line = line.trim();
    if line.is_empty() {
        return Input::Empty;
    }
    if let Some(literal) = line.strip_prefix("//") {
        return Input::Message(format!("/{literal}"));
    }
    let Some(command) = line.strip_prefix('/') else {
        return Input::Message(line.to_string());
    };
    let mut words = command.split_whitespace();
    let name = words.next().unwrap_or("");
    let rest: Vec<&str> = words.collect();
    match (name, rest.as_slice()) {
        ("exit" | "quit" | "q", _) => Input::Exit,
        ("help" | "?", _) => Input::Help,
        ("provider" | "p", []) => Input::Provider(None),
        ("provider" | "p", [p, ..]) => Input::Provider(Some((*p).to_string())),
        ("auto", _) => Input::Auto,
        ("task", [k, ..]) => match parse_task(k) {
            Some(kind) => Input::Task(Some(kind)),
            None => Input::Usage(format!(
                "unknown task {k}; choose chat, code, analysis or background"
            )),
        },
        ("task", []) => Input::Task(None),
        ("status", _) => Input::Status,
        ("clear", _) => Input::Clear,
        ("fault", [p, f, ..]) => Input::Fault((*p).to_string(), (*f).to_string()),
        ("fault", _) => Input::Usage(
            "/fault needs a provider and a fault, e.g. /fault sim-anthropic 429 (/help lists them)"
                .into(),
        ),
        ("copy", _) => Input::Copy,
        ("save", []) => Input::Save(None),
        ("save", _) => Input::Save(Some(command["save".len()..].trim().to_string())),
        ("retry", _) => Input::Retry,
        // A path ("/etc/hosts what is this?") is never a command: it is a question.
        (name, _) if name.contains('/') => Input::Message(line.to_string()),
        _ => Input::Unknown(line.to_string()),
    }
}

fn parse_task(s: &str) -> Option<TaskKind> {
    match s {
        "chat" => Some(TaskKind::Chat),
        "code" => Some(TaskKind::Code),
        "analysis" => Some(TaskKind::Analysis),
        "background" => Some(TaskKind::Background),
        _ => None,
    }
}

/// The faults `/fault` knows, by the names a user would type.
pub fn parse_fault(s: &str) -> Option<SimFault> {
    Some(match s {
        "429" | "rate-limit" => SimFault::RateLimit {
            retry_after_ms: 60_000,
        },
        "529" | "overloaded" => SimFault::Overloaded,
        "500" => SimFault::Status { code: 500 },
        "401" => SimFault::Status { code: 401 },
        "disconnect" => SimFault::DisconnectAfter { tokens: 12 },
        "stall" => SimFault::StallAfter { tokens: 12 },
        "stall-first" => SimFault::StallBeforeFirstToken,
        "keepalive" => SimFault::KeepAliveOnly,
        "malformed" => SimFault::MalformedAfter { tokens: 12 },
        "error-event" => SimFault::ErrorEventAfter { tokens: 12 },
        _ => return None,
    })
}

const HELP: &str = "\
/provider NAME   send every message to NAME only, with no fallback
/provider        show the current pin
/auto            let mythos choose the provider again
/task KIND       chat, code, analysis or background
/status          provider health
/clear           start a new conversation
/retry           ask the last question again
/copy            copy the last answer's last code block (or all of it)
/save FILE       write the conversation to FILE as Markdown
/fault P FAULT   simulated providers only: make P fail on its next request
                 (429, 529, 500, 401, disconnect, stall, stall-first, keepalive,
                 malformed, error-event)
/exit            quit (or Ctrl-D)
//text           send a message that starts with /
Ctrl-C stops an answer; the question and the partial answer are dropped.
";

enum ReadLine {
    Line(String),
    Interrupted,
    Eof,
}

/// Where lines come from: rustyline on a terminal, plain stdin otherwise.
enum LineSource {
    Editor {
        editor: Box<Editor<(), DefaultHistory>>,
        history: Option<PathBuf>,
        /// What was typed while the last line was being answered, for the editor.
        ahead: TypedAhead,
        /// A terminal rustyline cannot drive (`TERM=dumb` with stdout on the terminal): it
        /// reads plain lines there and ignores the text given to start the line with, so what
        /// was typed ahead would be lost; nothing is held back, as for [`LineSource::Plain`].
        unsupported: bool,
    },
    /// Lines from stdin; `prompt`: shown on stderr first (a terminal rustyline does not
    /// support, such as `TERM=dumb`, with stdout in a file: rustyline would write its prompt
    /// into the file).
    Plain {
        stdin: io::StdinLock<'static>,
        prompt: bool,
    },
}

impl LineSource {
    fn new() -> LineSource {
        if !io::stdin().is_terminal() {
            return LineSource::plain(false);
        }
        // rustyline's list of terminals it cannot drive, compared as it does, without case (it
        // then reads plain lines and prompts on stdout).
        let unsupported = std::env::var("TERM").is_ok_and(|t| {
            ["dumb", "cons25", "emacs"]
                .iter()
                .any(|u| u.eq_ignore_ascii_case(&t))
        });
        if unsupported && !io::stdout().is_terminal() {
            return LineSource::plain(true);
        }
        // `mythos chat > answers.md`: the prompt and the line being typed belong on the
        // terminal (rustyline writes them to stdout, so the user typed blind and the file got
        // the prompts and their escape codes); the answers still go to stdout.
        let behavior = if io::stdout().is_terminal() {
            Behavior::Stdio
        } else {
            Behavior::PreferTerm
        };
        let config = Config::builder()
            .max_history_size(1000)
            .and_then(|b| b.history_ignore_dups(true))
            .map(|b| {
                b.history_ignore_space(true)
                    .auto_add_history(false)
                    .behavior(behavior)
                    .build()
            })
            .unwrap_or_default();
        let Ok(mut editor) = Editor::<(), DefaultHistory>::with_config(config) else {
            return LineSource::plain(false);
        };
        let dir = mythos_protocol::paths::state_dir();
        let history = std::fs::create_dir_all(&dir)
            .ok()
            .map(|()| dir.join("history.txt"));
        if let Some(path) = &history {
            // A missing file is the normal first run.
            let _ = editor.load_history(path);
        }
        LineSource::Editor {
            editor: Box::new(editor),
            history,
            ahead: TypedAhead::default(),
            unsupported,
        }
    }

    /// Lines from stdin, with a prompt on stderr if `prompt`.
    fn plain(prompt: bool) -> LineSource {
        LineSource::Plain {
            stdin: io::stdin().lock(),
            prompt,
        }
    }

    fn interactive(&self) -> bool {
        matches!(
            self,
            LineSource::Editor { .. } | LineSource::Plain { prompt: true, .. }
        )
    }

    fn read(&mut self, prompt: &str) -> Result<ReadLine, Failure> {
        match self {
            LineSource::Editor { editor, ahead, .. } => {
                // What was typed while the last answer streamed waits in the editor.
                let initial = match ahead.take() {
                    Some(Typed::Eof) => return Ok(ReadLine::Eof),
                    Some(Typed::Text(text)) => text,
                    None => String::new(),
                };
                match editor.readline_with_initial(prompt, (&initial, "")) {
                    Ok(line) => Ok(ReadLine::Line(line)),
                    Err(ReadlineError::Interrupted) => Ok(ReadLine::Interrupted),
                    Err(ReadlineError::Eof) => Ok(ReadLine::Eof),
                    Err(e) => Err(Failure::new(format!("cannot read input: {e}"))),
                }
            }
            LineSource::Plain { stdin, prompt: p } => {
                if *p {
                    use std::io::Write;
                    let mut err = io::stderr().lock();
                    // The prompt is a courtesy: a closed stderr must not end the chat.
                    let _ = write!(err, "{prompt}").and_then(|()| err.flush());
                }
                let mut line = String::new();
                match stdin.read_line(&mut line) {
                    Ok(0) => Ok(ReadLine::Eof),
                    Ok(_) => Ok(ReadLine::Line(
                        line.trim_end_matches(['\n', '\r']).to_string(),
                    )),
                    Err(e) => Err(Failure::new(format!("cannot read input: {e}"))),
                }
            }
        }
    }

    /// Keep what is typed from now on off the screen, for [`LineSource::resume`] to read:
    /// the chat is busy (an answer streams) and the terminal would echo it into the answer.
    fn quiet(&self) -> Option<Quiet> {
        // Only for the editor, which takes it back; plain lines (`TERM=dumb`) keep their echo.
        matches!(
            self,
            LineSource::Editor {
                unsupported: false,
                ..
            }
        )
        .then(Quiet::hold)
    }

    /// The chat is ready for the next line: take the lines typed meanwhile.
    fn resume(&mut self, quiet: Option<Quiet>) {
        if let (Some(q), LineSource::Editor { ahead, .. }) = (quiet, self) {
            q.release(ahead);
        }
    }

    fn remember(&mut self, line: &str) {
        if let LineSource::Editor {
            editor, history, ..
        } = self
        {
            if editor.add_history_entry(line).unwrap_or(false) {
                if let Some(path) = history {
                    // History is a convenience: a read-only state dir must not break the chat.
                    let _ = editor.append_history(path);
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The loop

struct Session<'a> {
    rt: &'a Runtime,
    target: Target,
    /// The private demo daemon's session: never start a daemon of the user's own in its place.
    demo: bool,
    conn: Option<Connection>,
    convo: Conversation,
    pin: Option<String>,
    task: TaskKind,
    show_thinking: bool,
    raw: bool,
    /// An answer was written to stdout already: in a file (`chat > answers.md`) the next one
    /// begins after a blank line, or the two ran together as one paragraph.
    answered: bool,
}

fn repl(rt: &Runtime, target: Target, opts: ChatOptions) -> Result<u8, Failure> {
    let conn = if opts.demo {
        rt.block_on(Connection::connect(&target))
            .map_err(|e| e.into_failure(&target))?
    } else {
        rt.block_on(Connection::connect_or_start(&target))?
    };
    let mut s = Session {
        rt,
        target,
        demo: opts.demo,
        conn: Some(conn),
        convo: Conversation::default(),
        pin: opts.provider,
        task: opts.task,
        show_thinking: opts.show_thinking,
        raw: opts.raw,
        answered: false,
    };
    if let Some(name) = s.pin.clone() {
        // A provider the daemon does not know is a mistake to say now, not a failure on every
        // line of a piped conversation.
        let report = rt.block_on(status::fetch(s.connection()?))?;
        match provider_named(&report, &name) {
            Some(found) => s.pin = Some(found),
            None => return Err(no_provider(&report, &name).code(EXIT_USAGE)),
        }
    }
    let mut input = LineSource::new();
    let interactive = input.interactive();
    if interactive {
        s.banner(opts.demo)?;
    }
    // Piped, a turn that failed makes the whole run fail (exit 1), as a script expects.
    let mut failed = false;
    loop {
        let prompt = match &s.pin {
            Some(p) => format!("[{p}]> "),
            None => "> ".to_string(),
        };
        let line = match input.read(&prompt)? {
            ReadLine::Line(l) => l,
            // Ctrl-C at the prompt: rustyline has cleared the line.
            ReadLine::Interrupted => continue,
            ReadLine::Eof => break,
        };
        let parsed = parse_input(&line);
        if parsed != Input::Empty {
            // Trimmed at the end only: a line typed with a leading space stays out of the
            // history file (history_ignore_space), as in a shell, for a line holding a secret.
            input.remember(line.trim_end());
        }
        let quiet = input.quiet();
        // A command written wrong: said at a terminal, where the user types it again; a
        // failure when piped, so that the script learns of it (exit status 1).
        let mistake = |text: &str| {
            if interactive {
                say(&format!("{text}\n"))
            } else {
                Err(Failure::new(text))
            }
        };
        // Failures inside the loop are reported and the chat goes on.
        let result = match parsed {
            Input::Empty => Ok(()),
            Input::Exit => break,
            Input::Help => say(HELP),
            Input::Provider(Some(p)) => s.pin_to(p),
            Input::Provider(None) => say(&match &s.pin {
                Some(p) => format!("pinned to {p}\n"),
                None => "not pinned: mythos chooses the provider\n".to_string(),
            }),
            Input::Auto => {
                s.pin = None;
                say("mythos chooses the provider again\n")
            }
            Input::Task(Some(k)) => {
                s.task = k;
                say(&format!("task: {}\n", k.as_str()))
            }
            Input::Task(None) => say(&format!(
                "task: {} (choose chat, code, analysis or background)\n",
                s.task.as_str()
            )),
            Input::Status => s.status(),
            Input::Clear => {
                s.convo.clear();
                say("conversation cleared\n")
            }
            Input::Fault(p, f) => match parse_fault(&f) {
                Some(fault) => s.fault(p, fault),
                None => mistake(&format!("unknown fault {f}; /help lists them")),
            },
            Input::Copy => match s.convo.last_answer() {
                None => say("nothing to copy yet\n"),
                Some(answer) => match copy_to_clipboard(&last_code_block(&answer)) {
                    Ok(tool) => say(&format!("copied (with {tool})\n")),
                    // To stderr: a chat whose output goes to a file keeps only the answers.
                    Err(e) => {
                        eprint_line(&format!("cannot copy: {e}"));
                        Ok(())
                    }
                },
            },
            Input::Save(None) => mistake("/save needs a file name"),
            Input::Save(Some(path)) => {
                // `~/notes.md` as a shell reads it; a file already there is said to be replaced
                // (both found by a helper: "No such file or directory", and a silent overwrite).
                let full = match path.strip_prefix("~/") {
                    Some(rest) => std::env::var_os("HOME")
                        .map(|home| std::path::Path::new(&home).join(rest))
                        .unwrap_or_else(|| path.clone().into()),
                    None => path.clone().into(),
                };
                let replaced = full.exists();
                match std::fs::write(&full, s.convo.markdown()) {
                    Ok(()) if replaced => {
                        say(&format!("saved to {path} (the file there was replaced)\n"))
                    }
                    Ok(()) => say(&format!("saved to {path}\n")),
                    Err(e) => Err(Failure::new(format!("cannot write {path}: {e}"))),
                }
            }
            Input::Retry => match s.convo.take_last_question() {
                Some(q) => s.turn(&q),
                None => say("nothing to retry yet\n"),
            },
            Input::Usage(text) => mistake(&text),
            // A path that exists ("/tmp what is here?") is a question, as one with a slash
            // inside its first word is (`parse_input`).
            Input::Unknown(c) if first_word_is_a_path(&c) => s.turn(c.trim()),
            Input::Unknown(c) => mistake(&format!(
                "unknown command {c}; /help lists them (//{} sends it as a message)",
                c.trim_start_matches('/')
            )),
            Input::Message(text) => s.turn(&text),
        };
        input.resume(quiet);
        if let Err(f) = result {
            if f.message.is_empty() {
                return Err(f);
            }
            f.report();
            failed = true;
        }
    }
    Ok(if failed && !interactive {
        EXIT_FAILURE
    } else {
        EXIT_OK
    })
}

/// Whether stdout is a file of answers beside a terminal (`mythos chat > answers.md`): what
/// is for the person typing then goes to the terminal, through stderr.
fn to_terminal_aside() -> bool {
    io::stdin().is_terminal() && !io::stdout().is_terminal()
}

/// The style of what [`say`] writes, for where it goes.
fn say_style() -> Style {
    if to_terminal_aside() {
        Style::stderr()
    } else {
        Style::stdout()
    }
}

/// What a command says (help, status, a pin, a mistake): on the terminal, not in a file of
/// answers.
fn say(text: &str) -> Result<(), Failure> {
    if to_terminal_aside() {
        // As `eprint_line`: a closed stderr must not end the chat (`eprint!` panics).
        use std::io::Write;
        let mut err = io::stderr().lock();
        let _ = err.write_all(text.as_bytes()).and_then(|()| err.flush());
        Ok(())
    } else {
        print(text)
    }
}

/// Whether the first word of `line` (a `/word` that is no command) names a file or directory.
fn first_word_is_a_path(line: &str) -> bool {
    line.split_whitespace()
        .next()
        .is_some_and(|w| std::path::Path::new(w).exists())
}

/// The daemon's own spelling of provider `name`. Names are compared without case, as the
/// config compares them: `--provider DeepSeek` and `/provider DeepSeek` pin `deepseek`.
fn provider_named(report: &StatusReport, name: &str) -> Option<String> {
    let ps = &report.providers;
    ps.iter()
        .find(|p| p.name == name)
        .or_else(|| ps.iter().find(|p| p.name.eq_ignore_ascii_case(name)))
        .map(|p| p.name.clone())
}

/// "No such provider", with the names there are.
fn no_provider(report: &StatusReport, name: &str) -> Failure {
    let names: Vec<&str> = report.providers.iter().map(|p| p.name.as_str()).collect();
    Failure::new(format!(
        "no provider named {name}; choose one of: {}",
        names.join(", ")
    ))
}

/// Run `fut` on `rt`, or stop at Ctrl-C. Once an answer has streamed, tokio's handler holds
/// SIGINT for good: a wait outside an answer (a daemon starting, a status call) would ignore
/// Ctrl-C for as long as it lasts.
fn interruptible<T, E: Into<Failure>>(
    rt: &Runtime,
    fut: impl std::future::Future<Output = Result<T, E>>,
) -> Result<T, Failure> {
    rt.block_on(async {
        tokio::select! {
            r = fut => r.map_err(Into::into),
            _ = tokio::signal::ctrl_c() => Err(Failure::new("interrupted")),
        }
    })
}

impl Session<'_> {
    /// The connection, reconnected (and the daemon restarted) if the last one broke.
    fn connection(&mut self) -> Result<&mut Connection, Failure> {
        if let Some(conn) = &mut self.conn {
            // `mythos daemon restart` in another terminal while the chat sat at its prompt:
            // /status, /provider and /fault go to the new daemon (they said "lost the
            // connection to mythosd ... may have crashed" once).
            self.rt.block_on(conn.check_idle());
        }
        if let Some(conn) = self.conn.take().filter(|c| !c.is_broken()) {
            return Ok(self.conn.insert(conn));
        }
        let conn = if self.demo {
            self.rt
                .block_on(Connection::connect(&self.target))
                .map_err(|_| {
                    Failure::new(
                        "the private demo daemon has stopped; run `mythos chat --demo` again",
                    )
                })?
        } else {
            interruptible(self.rt, Connection::connect_or_start(&self.target))?
        };
        Ok(self.conn.insert(conn))
    }

    fn banner(&mut self, demo: bool) -> Result<(), Failure> {
        let rt = self.rt;
        let conn = self.connection()?;
        let report = interruptible(rt, status::fetch(conn))?;
        // `mythos chat > answers.md`: the banner is for the person at the terminal, not for
        // the file that collects the answers.
        let style = say_style();
        let names: Vec<&str> = report.providers.iter().map(|p| p.name.as_str()).collect();
        let mut line = format!("mythos chat · {}", names.join(", "));
        if demo {
            line.push_str(" · private demo daemon");
        } else if report.simulated {
            match self.keys_here().as_slice() {
                [] => line.push_str(" · simulated (set an API key for real providers)"),
                keys => line.push_str(&format!(
                    " · simulated: mythosd was started without {} (`mythos daemon restart`)",
                    keys.join(", ")
                )),
            }
        }
        say(&format!(
            "{}\n{}\n",
            style.bold(&line),
            style.dim("/help for commands, Ctrl-D to quit")
        ))
    }

    /// Pin to `name` if the daemon knows such a provider.
    fn pin_to(&mut self, name: String) -> Result<(), Failure> {
        let rt = self.rt;
        let conn = self.connection()?;
        let report = interruptible(rt, status::fetch(conn))?;
        match provider_named(&report, &name) {
            Some(name) => {
                say(&format!("pinned to {name}: no fallback until /auto\n"))?;
                self.pin = Some(name);
                Ok(())
            }
            // A failure, not a remark: a piped conversation that meant to pin a provider
            // ends with exit status 1 (it went on unpinned and exited 0), and a terminal
            // shows it as an error and goes on.
            None => Err(no_provider(&report, &name)),
        }
    }

    fn status(&mut self) -> Result<(), Failure> {
        let rt = self.rt;
        let conn = self.connection()?;
        let report = interruptible(rt, status::fetch(conn))?;
        say(&status_text(&report, say_style(), &self.keys_here()))
    }

    /// The key variables of this shell the daemon may lack (none for the private demo daemon,
    /// which is never given them).
    fn keys_here(&self) -> Vec<&'static str> {
        if self.demo {
            Vec::new()
        } else {
            crate::render::env_keys()
        }
    }

    fn fault(&mut self, provider: String, fault: SimFault) -> Result<(), Failure> {
        let rt = self.rt;
        let conn = self.connection()?;
        let req = Request::SimInject {
            provider: provider.clone(),
            faults: vec![fault],
        };
        match interruptible(rt, conn.call(req))? {
            Response::Ok => {
                // A provider paused (by a 429 it was made to send, typically) gets no request
                // until the pause ends: said, or faults typed meanwhile seem to do nothing.
                let report = interruptible(rt, status::fetch(conn)).ok();
                let paused = report
                    .as_ref()
                    .and_then(|r| r.providers.iter().find(|p| p.name == provider))
                    .filter(|p| {
                        p.state != BreakerState::Closed
                            || p.cooldown_left_ms.is_some_and(|ms| ms > 0)
                    });
                // Nor does a fault on a provider the next message does not go to (another
                // ranks first): it waits, armed, and fires some time later (found by a helper).
                // A pinned chat sends the next message to its pin: that one is first.
                let pinned = self.pin.is_some();
                let first = report.as_ref().filter(|_| !pinned).and_then(|r| {
                    r.providers
                        .iter()
                        .find(|p| {
                            p.state == BreakerState::Closed
                                && p.cooldown_left_ms.is_none_or(|ms| ms == 0)
                        })
                        .filter(|p| p.name != provider)
                });
                match (paused, first) {
                    (Some(p), _) => say(&format!(
                        "{provider} will fail its next request, which waits for the end of its \
                         pause ({})\n",
                        p.note
                    )),
                    (None, Some(first)) => say(&format!(
                        "{provider} will fail its next request, when it gets one: {} ranks first \
                         now and takes the next message (`/fault {}` … to fail that one)\n",
                        first.name, first.name
                    )),
                    (None, None) => say(&format!("{provider} will fail its next request\n")),
                }
            }
            other => Err(unexpected(other, "ok")),
        }
    }

    /// Send the conversation plus `text`, stream the answer, keep it if it completes.
    fn turn(&mut self, text: &str) -> Result<(), Failure> {
        self.convo.push_user(text);
        let result = self.stream_answer();
        if !matches!(result, Ok(true)) {
            self.convo.abandon();
        }
        result.map(|_| ())
    }

    /// Returns whether the answer completed (and was added to the conversation).
    fn stream_answer(&mut self) -> Result<bool, Failure> {
        let rt = self.rt;
        let pin = self.pin.clone().map(|p| Pin {
            provider: Some(p),
            model: None,
        });
        let pinned = pin.is_some();
        let opts = PrinterOptions::for_terminal(self.show_thinking).raw(self.raw);
        // At a terminal the prompt and the footer set answers apart; in a file nothing did.
        if self.answered && !io::stdout().is_terminal() {
            print("\n")?;
        }
        // Also when this answer fails part way: what it printed stays in the file.
        self.answered = true;
        for attempt in 0..2 {
            let messages = self.convo.messages().to_vec();
            let task = self.task;
            let conn = self.connection()?;
            let req = ChatRequest {
                id: conn.next_id(),
                messages,
                system: None,
                task,
                pin: pin.clone(),
                max_tokens: None,
                temperature: None,
                tools: Vec::new(),
                // Each turn resends the conversation: Anthropic reads it from its cache.
                options: mythos_protocol::ChatOptions {
                    cache_automatically: true,
                    ..Default::default()
                },
            };
            let mut printer = StreamPrinter::new(io::stdout(), io::stderr(), opts);
            let ended = {
                let mut sink = |_id, ev: &StreamEvent| printer.event(ev);
                rt.block_on(stream::run(conn, req, true, &mut sink))
            };
            let turn = match ended {
                Ok(Ended::Finished(turn)) => turn,
                // The daemon went away while we were idle: start it again and resend once.
                Ok(Ended::NotDelivered(_)) if attempt == 0 => {
                    self.conn = None;
                    continue;
                }
                Ok(Ended::NotDelivered(f)) => {
                    self.conn = None;
                    return Err(f);
                }
                Ok(Ended::Interrupted) => {
                    printer.abandon()?;
                    let style = printer.side_style();
                    printer.note(&style.dim("(cancelled)"))?;
                    return Ok(false);
                }
                Err(f) => {
                    printer.abandon()?;
                    return Err(f);
                }
            };
            return match turn.outcome {
                Some(done @ Outcome::Done(_)) => {
                    printer.finish()?;
                    let style = printer.side_style();
                    printer.note(&style.dim(&done.footer().unwrap_or_default()))?;
                    let kept = self.convo.answer(&turn.text);
                    if !kept {
                        printer.note(&style.dim("(empty answer: not kept in the conversation)"))?;
                    }
                    Ok(kept)
                }
                Some(Outcome::Failed {
                    kind,
                    message,
                    retry_at_unix_ms,
                }) => {
                    printer.abandon()?;
                    Err(stream_failure(kind, &message, retry_at_unix_ms, pinned))
                }
                None => Err(Failure::new("the stream ended without an answer")),
            };
        }
        Err(Failure::new("could not deliver the message to mythosd"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stream::Turn;
    use mythos_protocol::{DoneInfo, FinishReason, RerouteMode, Usage};

    #[test]
    fn copy_takes_the_last_code_block_and_retry_the_last_question() {
        let answer = "Try:\n```rust\nfn a() {}\n```\nor\n```sh\nls -l\n```\ndone";
        assert_eq!(last_code_block(answer), "ls -l\n");
        assert_eq!(last_code_block("no code"), "no code");
        assert_eq!(last_code_block("```\nopen\n"), "open\n");
        let mut c = Conversation::default();
        c.push_user("q1");
        assert!(c.answer("a1"));
        c.push_user("q2");
        assert!(c.answer("a2"));
        assert_eq!(c.last_answer().as_deref(), Some("a2"));
        let md = c.markdown();
        assert!(
            md.contains("## You\n\nq2") && md.contains("## Assistant\n\na2"),
            "{md}"
        );
        assert_eq!(c.take_last_question().as_deref(), Some("q2"));
        assert_eq!(c.messages().len(), 2);
    }

    #[test]
    fn commands_and_messages() {
        assert_eq!(parse_input("  "), Input::Empty);
        assert_eq!(parse_input("hello"), Input::Message("hello".into()));
        assert_eq!(
            parse_input("//etc/passwd?"),
            Input::Message("/etc/passwd?".into())
        );
        assert_eq!(parse_input("/exit"), Input::Exit);
        assert_eq!(parse_input("/quit"), Input::Exit);
        assert_eq!(
            parse_input("/provider sim-deepseek"),
            Input::Provider(Some("sim-deepseek".into()))
        );
        assert_eq!(parse_input("/provider"), Input::Provider(None));
        assert_eq!(parse_input("/auto"), Input::Auto);
        assert_eq!(parse_input("/task code"), Input::Task(Some(TaskKind::Code)));
        assert_eq!(parse_input("/task"), Input::Task(None));
        // A command with wrong arguments says so; it is not an unknown command, nor silence.
        assert_eq!(
            parse_input("/task nonsense"),
            Input::Usage("unknown task nonsense; choose chat, code, analysis or background".into())
        );
        assert!(matches!(parse_input("/fault"), Input::Usage(_)));
        assert!(matches!(parse_input("/fault sim-openai"), Input::Usage(_)));
        // A path is a question, not an unknown command.
        assert_eq!(
            parse_input("/etc/hosts what is this?"),
            Input::Message("/etc/hosts what is this?".into())
        );
        assert_eq!(parse_input("/status"), Input::Status);
        assert_eq!(parse_input("/clear"), Input::Clear);
        assert_eq!(parse_input("/copy"), Input::Copy);
        assert_eq!(parse_input("/retry"), Input::Retry);
        assert_eq!(parse_input("/save"), Input::Save(None));
        assert_eq!(
            parse_input("/save my notes.md"),
            Input::Save(Some("my notes.md".into()))
        );
        assert_eq!(
            parse_input("/fault sim-anthropic 429"),
            Input::Fault("sim-anthropic".into(), "429".into())
        );
        assert_eq!(
            parse_input("/frobnicate"),
            Input::Unknown("/frobnicate".into())
        );
        assert!(matches!(
            parse_fault("429"),
            Some(SimFault::RateLimit { .. })
        ));
        assert_eq!(parse_fault("nope"), None);
    }

    fn play(events: &[StreamEvent]) -> Turn {
        let mut turn = Turn::default();
        for ev in events {
            turn.apply(ev);
        }
        turn
    }

    #[test]
    fn a_restarted_answer_enters_the_conversation_once() {
        let mut convo = Conversation::default();
        convo.push_user("what is 6 x 7?");
        let turn = play(&[
            StreamEvent::Started {
                provider: "a".into(),
                model: "m".into(),
                attempt: 1,
                record: 0,
                setup_us: 0,
            },
            StreamEvent::TextDelta {
                text: "It is forty".into(),
            },
            StreamEvent::Rerouted {
                from: "a".into(),
                to: "b".into(),
                reason: "tool call cut off".into(),
                mode: RerouteMode::Restart,
            },
            StreamEvent::TextDelta {
                text: "6 x 7 = 42.".into(),
            },
            StreamEvent::Done(Box::new(DoneInfo {
                finish: FinishReason::Stop,
                usage: Usage::default(),
                cost_usd: 0.0,
                latency_ms: 1,
                provider: "b".into(),
                model: "m".into(),
                record: 1,
            })),
        ]);
        assert!(convo.answer(&turn.text));
        assert_eq!(
            convo.messages(),
            &[
                Message::text(Role::User, "what is 6 x 7?"),
                Message::text(Role::Assistant, "6 x 7 = 42."),
            ]
        );
    }

    #[test]
    fn an_unfinished_answer_leaves_no_trace() {
        let mut convo = Conversation::default();
        convo.push_user("q1");
        assert!(convo.answer("a1"));
        convo.push_user("q2");
        // Ctrl-C or an error: the partial answer is not added, the question is dropped.
        convo.abandon();
        assert_eq!(convo.messages().len(), 2);
        // Abandoning with no pending question changes nothing.
        convo.abandon();
        assert_eq!(convo.messages().len(), 2);
        convo.push_user("q3");
        assert!(!convo.answer(""));
        assert_eq!(convo.messages().len(), 2);
        convo.clear();
        assert!(convo.messages().is_empty());
    }

    /// `/retry` after a failed question asks that question again, not the one before it (which
    /// it used to ask, dropping its answer).
    #[test]
    fn retry_asks_the_question_that_failed() {
        let mut convo = Conversation::default();
        convo.push_user("q1");
        assert!(convo.answer("a1"));
        convo.push_user("q2");
        convo.abandon();
        assert_eq!(convo.take_last_question().as_deref(), Some("q2"));
        assert_eq!(convo.messages().len(), 2, "q1 and a1 stay");
        // It fails again: still q2.
        convo.push_user("q2");
        convo.abandon();
        assert_eq!(convo.take_last_question().as_deref(), Some("q2"));
        // After an answer, /retry takes that exchange back.
        convo.push_user("q2");
        assert!(convo.answer("a2"));
        assert_eq!(convo.take_last_question().as_deref(), Some("q2"));
        assert_eq!(convo.messages().len(), 2);
    }
}
