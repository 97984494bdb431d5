//! `mythos`: the command-line client of the mythos routing daemon.
//!
//! This file holds the command-line definitions and the dispatch only; each command lives in
//! `commands/`, the socket and the daemon's start-up in `connection.rs`, and everything shown
//! to the user in `render.rs`.
//!
//! Exit status: 0 success; 1 failure (request failed, daemon unreachable or unable to start);
//! 2 bad usage, or the running daemon speaks another protocol version; 3 `daemon status` found
//! no daemon; 130 interrupted.

mod commands;
mod connection;
mod error;
mod launcher;
mod render;
mod stream;
mod typeahead;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand, ValueEnum};
use mythos_protocol::{Encoding, TaskKind};

use commands::ask::AskOptions;
use commands::chat::ChatOptions;
use commands::daemon::Action;
use commands::why::{parse_record, RecordSel};
use commands::Globals;
use connection::Target;
use error::Failure;

/// Route LLM requests across providers through the local mythosd daemon.
///
/// Every command starts mythosd if it is not running (except `daemon stop` and
/// `daemon status`). With no API key set, the daemon runs on simulated providers.
#[derive(Debug, Parser)]
#[command(name = "mythos", version, propagate_version = true)]
struct Cli {
    /// Socket of the daemon [default: $XDG_RUNTIME_DIR/mythos/mythosd.sock].
    #[arg(long, global = true, env = "MYTHOS_SOCKET", value_name = "PATH")]
    socket: Option<PathBuf>,

    /// Speak JSON frames after the hello instead of bincode (debugging; also
    /// MYTHOS_ENCODING=json).
    #[arg(long, global = true, hide = true)]
    json_frames: bool,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Chat interactively (/help inside lists the commands).
    Chat(ChatArgs),
    /// Ask one question; the answer goes to stdout.
    ///
    /// On a terminal the answer streams. Otherwise it is written once complete, so a file or
    /// pipe never holds text the daemon discarded; use --json to follow a stream from a
    /// program. Reroute notices, the footer and errors go to stderr. Exit status: 0 when the
    /// answer completed, 1 when it failed.
    Ask(AskArgs),
    /// Show every provider's health, score and cooldown.
    Status {
        /// Print the status report as JSON.
        #[arg(long, conflicts_with = "watch")]
        json: bool,
        /// Redraw the view in place every interval until `q` or Ctrl-C (plain lines, one per
        /// provider, when stdout is not a terminal).
        #[arg(long, short)]
        watch: bool,
        /// Refresh interval of --watch, in milliseconds.
        #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(100..=60_000), requires = "watch")]
        interval_ms: u64,
        /// Stop --watch after this many refreshes.
        #[arg(long, requires = "watch")]
        count: Option<u64>,
    },
    /// Start, stop or inspect the daemon.
    Daemon {
        #[command(subcommand)]
        action: DaemonCommand,
    },
    /// Explain in words how a request was routed.
    Why {
        /// A record number (shown by `ask --json` in `done` events), or `last`.
        #[arg(default_value = "last", value_parser = parse_record, value_name = "RECORD|last")]
        record: RecordSel,
        /// Print the record as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Tokens and cost by day and provider.
    Usage {
        /// How many days back, today included.
        #[arg(long, default_value_t = 7, value_parser = clap::value_parser!(u32).range(1..))]
        days: u32,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Close a provider's circuit breaker by hand.
    Reset {
        /// Provider name, as shown by `mythos status`.
        provider: String,
    },
    /// A guided tour on a private daemon with simulated providers (no API keys needed).
    Demo,
    /// List every provider's model (usable as PROVIDER/MODEL), with context window, output
    /// limit and prices.
    Models {
        /// Print the list as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Print a shell completion script: `mythos completions bash > /etc/bash_completion.d/mythos`,
    /// `mythos completions zsh > "${fpath[1]}/_mythos"`, `mythos completions fish >
    /// ~/.config/fish/completions/mythos.fish`.
    Completions {
        /// The shell.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff): `mythos man > ~/.local/share/man/man1/mythos.1`.
    Man,
    /// Print the local token that agents present to the daemon's HTTP front end.
    Token,
    /// Print `export` lines that point an agent at the daemon:
    /// `eval "$(mythos env claude)"` for Claude Code, `eval "$(mythos env openai)"` for Codex
    /// CLI, aider, opencode and the OpenAI SDKs.
    Env {
        /// Which API the agent speaks.
        #[arg(value_enum)]
        agent: Agent,
    },
}

/// An agent family, by the API it speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Agent {
    /// Claude Code and the Anthropic SDKs (ANTHROPIC_BASE_URL, ANTHROPIC_AUTH_TOKEN).
    #[value(alias = "anthropic", alias = "claude-code")]
    Claude,
    /// Codex CLI, aider, opencode, the OpenAI SDKs (OPENAI_BASE_URL, OPENAI_API_KEY). Also
    /// taken by those agents' names: `mythos env codex` was answered "did you mean claude?"
    /// (found by a helper).
    #[value(alias = "codex", alias = "aider", alias = "opencode")]
    Openai,
}

#[derive(Debug, Subcommand)]
enum DaemonCommand {
    /// Start the daemon unless it is running.
    Start,
    /// Ask the daemon to shut down and wait until it has.
    Stop,
    /// Stop the daemon, then start it again (picks up new API keys and a new binary).
    Restart,
    /// Read the config file again without a restart (streams go on); says why if the new one is
    /// refused, and the old one then stays. Exit status 3 if no daemon runs.
    Reload,
    /// Show the daemon's status; exit status 3 if it is not running (never starts it).
    Status {
        /// Print the status report as JSON.
        #[arg(long)]
        json: bool,
    },
}

/// Kind of work, used to weigh success, latency and cost.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Task {
    /// Interactive chat: latency matters most.
    Chat,
    /// Code generation or editing: success matters most.
    Code,
    /// Long-form analysis: success matters most, latency little.
    Analysis,
    /// Background work: cost matters most.
    Background,
}

impl From<Task> for TaskKind {
    fn from(t: Task) -> TaskKind {
        match t {
            Task::Chat => TaskKind::Chat,
            Task::Code => TaskKind::Code,
            Task::Analysis => TaskKind::Analysis,
            Task::Background => TaskKind::Background,
        }
    }
}

#[derive(Debug, Args)]
struct ChatArgs {
    /// Send every message to this provider only, with no fallback (/auto undoes it).
    #[arg(long, value_name = "NAME")]
    provider: Option<String>,
    /// Kind of work.
    #[arg(long, value_enum, default_value_t = Task::Chat)]
    task: Task,
    /// Chat with a private daemon on simulated providers (no API keys needed).
    #[arg(long)]
    demo: bool,
    /// Show the model's thinking, dimmed.
    #[arg(long)]
    show_thinking: bool,
    /// Print answers as they are (no Markdown rendering; it is off anyway when not a terminal).
    #[arg(long)]
    raw: bool,
}

#[derive(Debug, Args)]
struct AskArgs {
    /// The prompt; read from stdin when absent or `-`.
    #[arg(value_name = "PROMPT")]
    // Bytes that are not UTF-8 (`"$(cat latin1.txt)"`) become U+FFFD, as on stdin, rather
    // than refusing the question.
    prompt: Vec<std::ffi::OsString>,
    /// Send to this provider only, with no fallback.
    #[arg(long, value_name = "NAME")]
    provider: Option<String>,
    /// Use this model (with --provider, or any provider configured with it).
    #[arg(long, value_name = "MODEL")]
    model: Option<String>,
    /// Kind of work.
    #[arg(long, value_enum, default_value_t = Task::Chat)]
    task: Task,
    /// System prompt.
    #[arg(long, value_name = "TEXT")]
    system: Option<String>,
    /// Upper bound on output tokens.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    max_tokens: Option<u32>,
    /// Print every stream event as one JSON object per line.
    #[arg(long)]
    json: bool,
    /// Print the footer line even when stderr is not a terminal.
    #[arg(long, short)]
    verbose: bool,
    /// Show the model's thinking, dimmed, on stderr.
    #[arg(long)]
    show_thinking: bool,
    /// Print the answer as it is (no Markdown rendering; it is off anyway when piped).
    #[arg(long)]
    raw: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let code = match run(cli) {
        Ok(code) => code,
        Err(failure) => failure.report(),
    };
    ExitCode::from(code)
}

fn run(cli: Cli) -> Result<u8, Failure> {
    let globals = Globals {
        target: Target {
            socket: cli
                .socket
                .clone()
                .unwrap_or_else(mythos_protocol::paths::socket_path),
            encodings: encodings(cli.json_frames)?,
            daemon_env: Vec::new(),
        },
    };
    // One thread is plenty for a client; the REPL blocks on it between turns.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Failure::new(format!("cannot start the async runtime: {e}")))?;
    let g = &globals;
    match cli.command {
        Command::Chat(a) => commands::chat::run(
            &rt,
            g,
            ChatOptions {
                provider: a.provider,
                task: a.task.into(),
                demo: a.demo,
                show_thinking: a.show_thinking,
                raw: a.raw,
            },
        ),
        Command::Ask(a) => rt.block_on(commands::ask::run(
            g,
            AskOptions {
                prompt: a
                    .prompt
                    .iter()
                    .map(|w| w.to_string_lossy().into_owned())
                    .collect(),
                provider: a.provider,
                model: a.model,
                task: a.task.into(),
                system: a.system,
                max_tokens: a.max_tokens,
                json: a.json,
                verbose: a.verbose,
                show_thinking: a.show_thinking,
                raw: a.raw,
            },
        )),
        Command::Status {
            watch: true,
            interval_ms,
            count,
            ..
        } => rt.block_on(commands::watch::run(
            g,
            std::time::Duration::from_millis(interval_ms),
            count,
        )),
        Command::Status { json, .. } => rt.block_on(commands::status::run(g, json)),
        Command::Daemon { action } => {
            let action = match action {
                DaemonCommand::Start => Action::Start,
                DaemonCommand::Stop => Action::Stop,
                DaemonCommand::Restart => Action::Restart,
                DaemonCommand::Reload => Action::Reload,
                DaemonCommand::Status { json } => Action::Status { json },
            };
            rt.block_on(commands::daemon::run(g, action))
        }
        Command::Why { record, json } => rt.block_on(commands::why::run(g, record, json)),
        Command::Usage { days, json } => rt.block_on(commands::usage::run(g, days, json)),
        Command::Reset { provider } => rt.block_on(commands::reset::run(g, provider)),
        Command::Demo => rt.block_on(commands::demo::run(g)),
        Command::Models { json } => rt.block_on(commands::status::models(g, json)),
        Command::Token => rt.block_on(commands::env::token(g)),
        Command::Completions { shell } => {
            let mut cmd = <Cli as clap::CommandFactory>::command();
            let mut out = Vec::new();
            clap_complete::generate(shell, &mut cmd, "mythos", &mut out);
            commands::print(&String::from_utf8_lossy(&out)).map(|_| error::EXIT_OK)
        }
        Command::Man => {
            let mut out = Vec::new();
            clap_mangen::Man::new(<Cli as clap::CommandFactory>::command())
                .render(&mut out)
                .map_err(|e| Failure::new(format!("cannot render the man page: {e}")))?;
            commands::print(&String::from_utf8_lossy(&out)).map(|_| error::EXIT_OK)
        }
        Command::Env { agent } => rt.block_on(commands::env::env(
            g,
            match agent {
                Agent::Claude => commands::env::Flavor::Claude,
                Agent::Openai => commands::env::Flavor::Openai,
            },
        )),
    }
}

/// The encodings to offer: bincode first (compact), JSON as the fallback; JSON only when asked.
fn encodings(json_frames: bool) -> Result<Vec<Encoding>, Failure> {
    let forced = match std::env::var("MYTHOS_ENCODING") {
        Ok(v) if v.is_empty() => None,
        Ok(v) if v.eq_ignore_ascii_case("json") => Some(Encoding::Json),
        Ok(v) if v.eq_ignore_ascii_case("bincode") => Some(Encoding::Bincode),
        Ok(v) => {
            return Err(Failure::new(format!(
                "MYTHOS_ENCODING={v:?}: expected `json` or `bincode`"
            ))
            .code(error::EXIT_USAGE))
        }
        Err(_) => None,
    };
    Ok(match (json_frames, forced) {
        (true, _) | (false, Some(Encoding::Json)) => vec![Encoding::Json],
        (false, Some(Encoding::Bincode)) => vec![Encoding::Bincode],
        (false, None) => vec![Encoding::Bincode, Encoding::Json],
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("mythos").chain(args.iter().copied()))
    }

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn ask_arguments() {
        let cli = parse(&[
            "ask",
            "--provider",
            "sim-deepseek",
            "--task",
            "code",
            "--max-tokens",
            "50",
            "--json",
            "what",
            "is",
            "this",
        ])
        .unwrap();
        let Command::Ask(a) = cli.command else {
            panic!("not ask")
        };
        assert_eq!(a.prompt, ["what", "is", "this"]);
        assert_eq!(a.provider.as_deref(), Some("sim-deepseek"));
        assert_eq!(a.task, Task::Code);
        assert_eq!(a.max_tokens, Some(50));
        assert!(a.json);
        let Command::Ask(a) = parse(&["ask"]).unwrap().command else {
            panic!("not ask")
        };
        assert!(a.prompt.is_empty());
        assert!(parse(&["ask", "--task", "poetry", "x"]).is_err());
    }

    #[test]
    fn global_socket_after_the_subcommand() {
        let cli = parse(&["status", "--socket", "/tmp/x.sock", "--json"]).unwrap();
        assert_eq!(cli.socket, Some(PathBuf::from("/tmp/x.sock")));
        assert!(matches!(cli.command, Command::Status { json: true, .. }));
        let cli = parse(&["--socket", "/tmp/y.sock", "daemon", "status"]).unwrap();
        assert_eq!(cli.socket, Some(PathBuf::from("/tmp/y.sock")));
    }

    #[test]
    fn why_usage_reset_daemon() {
        let cli = parse(&["why"]).unwrap();
        assert!(matches!(
            cli.command,
            Command::Why {
                record: RecordSel::Last,
                json: false
            }
        ));
        let cli = parse(&["why", "42", "--json"]).unwrap();
        assert!(matches!(
            cli.command,
            Command::Why {
                record: RecordSel::Id(42),
                json: true
            }
        ));
        assert!(parse(&["why", "soon"]).is_err());
        let cli = parse(&["usage", "--days", "30"]).unwrap();
        assert!(matches!(cli.command, Command::Usage { days: 30, .. }));
        assert!(parse(&["usage", "--days", "0"]).is_err());
        assert!(parse(&["reset"]).is_err());
        for (word, want) in [
            ("start", "Start"),
            ("stop", "Stop"),
            ("restart", "Restart"),
            ("reload", "Reload"),
            ("status", "Status"),
        ] {
            let cli = parse(&["daemon", word]).unwrap();
            assert!(format!("{:?}", cli.command).contains(want), "{word}");
        }
        assert!(parse(&["daemon"]).is_err());
    }

    #[test]
    fn chat_arguments() {
        let Command::Chat(a) = parse(&["chat", "--demo", "--task", "analysis"])
            .unwrap()
            .command
        else {
            panic!("not chat")
        };
        assert!(a.demo);
        assert_eq!(TaskKind::from(a.task), TaskKind::Analysis);
        assert!(parse(&["chat", "--json-frames"]).unwrap().json_frames);
    }

    #[test]
    fn completions_and_man_page_cover_every_command() {
        for shell in [
            clap_complete::Shell::Bash,
            clap_complete::Shell::Zsh,
            clap_complete::Shell::Fish,
        ] {
            let mut out = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "mythos", &mut out);
            let text = String::from_utf8(out).unwrap();
            for sub in ["chat", "ask", "models", "env", "token", "completions"] {
                assert!(text.contains(sub), "{shell:?} lacks {sub}");
            }
        }
        let mut out = Vec::new();
        clap_mangen::Man::new(Cli::command())
            .render(&mut out)
            .unwrap();
        let man = String::from_utf8(out).unwrap();
        assert!(man.contains(".TH mythos 1"));
        assert!(man.contains("models"));
    }

    #[test]
    fn encodings_offered() {
        assert_eq!(encodings(true).unwrap(), vec![Encoding::Json]);
    }
}
