//! `mythos demo`: a guided tour on a private daemon with simulated providers.
//!
//! The tour never touches the user's daemon, state, config or API keys: it starts its own
//! `mythosd --simulate` on a socket in a fresh temp dir, with the XDG directories pointed into
//! that dir and every provider variable removed, and removes it all at the end (also on
//! Ctrl-C or failure). `mythos chat --demo` uses the same private daemon.

use std::io::{self, IsTerminal};
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use mythos_protocol::{
    BreakerState, ChatRequest, Encoding, Request, Response, SimFault, StartupLine, StreamEvent,
};
use tokio::process::Child;

use super::{print, status, stream_failure, unexpected, why, Globals};
use crate::connection::{connect_with_retry, Connection, Target};
use crate::error::{Failure, EXIT_INTERRUPTED, EXIT_OK};
use crate::launcher::{daemon_command, find_daemon, spawn_and_wait, start_failure, Started};
use crate::render::{fmt_duration_ms, status_text, PrinterOptions, StreamPrinter, Style};
use crate::stream::{self, Ended, Outcome, Turn};

/// Variables that would point the private daemon at the user's world, besides the keys
/// ([`mythos_protocol::PROVIDER_KEY_VARIABLES`]).
const SCRUB: [&str; 12] = [
    "GEMINI_BASE_URL",
    "MYTHOS_GEMINI_MODEL",
    "ANTHROPIC_BASE_URL",
    "DEEPSEEK_BASE_URL",
    "OPENAI_BASE_URL",
    "MYTHOS_ANTHROPIC_MODEL",
    "MYTHOS_DEEPSEEK_MODEL",
    "MYTHOS_OPENAI_MODEL",
    "MYTHOS_SOCKET",
    "MYTHOS_CONFIG",
    "MYTHOS_STATE_DIR",
    // Under systemd, a private daemon must not report readiness as if it were the service.
    "NOTIFY_SOCKET",
];

/// The simulated providers' names, used when the status report does not say better.
const SIM_ANTHROPIC: &str = "sim-anthropic";
const SIM_DEEPSEEK: &str = "sim-deepseek";

/// A `mythosd --simulate` of our own, in a temp dir removed on drop.
pub struct PrivateDaemon {
    dir: PathBuf,
    child: Option<Child>,
    target: Target,
}

impl PrivateDaemon {
    /// Start it and wait until it is ready.
    pub async fn start(encodings: &[Encoding]) -> Result<PrivateDaemon, Failure> {
        let bin = find_daemon()?;
        let dir = make_temp_dir()?;
        let socket = dir.join("demo.sock");
        // From here on, dropping `daemon` cleans up whatever exists.
        let mut daemon = PrivateDaemon {
            target: Target {
                socket: socket.clone(),
                encodings: encodings.to_vec(),
                daemon_env: Vec::new(),
            },
            dir,
            child: None,
        };
        let mut cmd = daemon_command(&bin);
        cmd.arg("--simulate").arg("--socket").arg(&socket);
        // If this process dies without cleaning up (its terminal closed), the daemon notices,
        // shuts down and removes the temp dir itself.
        cmd.arg("--owner-pid")
            .arg(std::process::id().to_string())
            .arg("--remove-dir")
            .arg(&daemon.dir);
        for var in mythos_protocol::PROVIDER_KEY_VARIABLES.iter().chain(&SCRUB) {
            cmd.env_remove(var);
        }
        // A private daemon serves its one client over the socket: it must not take (or fight
        // the user's daemon for) the HTTP port.
        cmd.env("MYTHOS_HTTP_LISTEN", "off");
        cmd.env("XDG_STATE_HOME", daemon.dir.join("state"))
            .env("XDG_CONFIG_HOME", daemon.dir.join("config"))
            .env("XDG_RUNTIME_DIR", daemon.dir.join("run"))
            // Stopped when we drop it, or (if we die first) by its `--owner-pid` watch.
            .kill_on_drop(true);
        // Its own process group: a Ctrl-C that cancels an answer in `chat --demo` must not
        // stop the demo's daemon too (the chat then started a daemon of the user's own on the
        // demo socket, with the user's keys, under the demo's banner).
        #[cfg(unix)]
        cmd.process_group(0);
        let (started, child) = spawn_and_wait(cmd, &bin).await?;
        daemon.child = Some(child);
        match started {
            Started::Line(StartupLine::Ready(_)) => Ok(daemon),
            other => Err(start_failure(other, &bin, &socket)),
        }
    }

    /// Where it listens.
    pub fn target(&self) -> &Target {
        &self.target
    }

    /// Connect to it.
    pub async fn connect(&self) -> Result<Connection, Failure> {
        connect_with_retry(&self.target, Duration::from_secs(3))
            .await
            .map_err(|e| e.into_failure(&self.target))
    }

    /// Shut it down in order (it saves its state and removes its socket), then remove the
    /// temp dir.
    pub async fn stop(mut self) {
        if let Ok(mut conn) = Connection::connect(&self.target).await {
            let _ = conn.call(Request::Shutdown).await;
        }
        if let Some(mut child) = self.child.take() {
            if tokio::time::timeout(Duration::from_secs(10), child.wait())
                .await
                .is_err()
            {
                let _ = child.kill().await;
            }
        }
        // Drop removes the directory.
    }
}

impl Drop for PrivateDaemon {
    fn drop(&mut self) {
        if let Some(child) = &mut self.child {
            let _ = child.start_kill();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A new private directory under the system temp dir.
fn make_temp_dir() -> Result<PathBuf, Failure> {
    let base = std::env::temp_dir();
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    for n in 0..100u32 {
        let dir = base.join(format!(
            "mythos-demo-{}-{:x}",
            std::process::id(),
            nanos.wrapping_add(n)
        ));
        // Mutated on Unix only (its mode).
        #[allow(unused_mut)]
        let mut builder = std::fs::DirBuilder::new();
        #[cfg(unix)]
        {
            use std::os::unix::fs::DirBuilderExt;
            builder.mode(0o700);
        }
        match builder.create(&dir) {
            Ok(()) => return Ok(dir),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => {
                return Err(Failure::new(format!(
                    "cannot create a temporary directory in {}: {e}",
                    base.display()
                )))
            }
        }
    }
    Err(Failure::new(format!(
        "cannot create a temporary directory in {}",
        base.display()
    )))
}

/// Run the tour.
pub async fn run(g: &Globals) -> Result<u8, Failure> {
    let style = Style::stdout();
    print(&format!(
        "{}\n{}\n",
        style.bold("mythos demo: a private mythosd on four simulated providers"),
        style.dim(
            "No API keys, no network: the simulators speak the real Anthropic and OpenAI \
             streaming formats, and faults are injected on cue."
        )
    ))?;
    let daemon = PrivateDaemon::start(&g.target.encodings).await?;
    let result = tokio::select! {
        r = tour(&daemon, style) => r,
        _ = tokio::signal::ctrl_c() => {
            // End the line the interrupted answer was on.
            let _ = print("\n");
            Err(Failure::silent(EXIT_INTERRUPTED))
        }
    };
    daemon.stop().await;
    if result.is_ok() {
        print(&format!(
            "\n{}\n{}\n",
            style.dim("The private daemon has been shut down and its files removed."),
            "Next: `mythos chat --demo` to chat with the simulators (try `/fault sim-anthropic \
             429`), or set ANTHROPIC_API_KEY, DEEPSEEK_API_KEY, OPENAI_API_KEY or GEMINI_API_KEY and run \
             `mythos chat`."
        ))?;
    }
    result
}

async fn tour(daemon: &PrivateDaemon, style: Style) -> Result<u8, Failure> {
    let mut conn = daemon.connect().await?;

    heading(style, "1/5", "A healthy request")?;
    let first = ask(
        &mut conn,
        style,
        "What does mythos do when a provider fails?",
    )
    .await?;
    let winner = first.turn.provider.clone().unwrap_or_default();
    say(
        style,
        &format!("{winner}, the best-scored provider, answered."),
    )?;

    // Fault the provider that would answer next, whatever the scores say.
    let report = status::fetch(&mut conn).await?;
    let primary = healthy(&report, &[]).unwrap_or_else(|| SIM_ANTHROPIC.to_string());
    heading(
        style,
        "2/5",
        &format!("{primary} starts answering 429 Too Many Requests, retry after 60 s"),
    )?;
    inject(
        &mut conn,
        &primary,
        SimFault::RateLimit {
            retry_after_ms: 60_000,
        },
    )
    .await?;
    let second = ask(&mut conn, style, "Why is a 429 not worth waiting for?").await?;
    match (second.turn.reroutes.first(), second.first_reroute) {
        (Some(r), Some(after)) => say(
            style,
            &format!(
                "mythos did not wait 60 s: it moved the request to {} {} after sending it, \
                 and {} is paused for the minute it asked for.",
                r.to,
                match after.as_millis() {
                    0 => "less than a millisecond".to_string(),
                    ms => fmt_duration_ms(ms as u64),
                },
                r.from
            ),
        )?,
        _ => say(style, "No reroute was needed this time.")?,
    }

    let report = status::fetch(&mut conn).await?;
    let next = healthy(&report, &[&primary]).unwrap_or_else(|| SIM_DEEPSEEK.to_string());
    heading(
        style,
        "3/5",
        &format!("{next} drops the connection after 12 tokens"),
    )?;
    inject(&mut conn, &next, SimFault::DisconnectAfter { tokens: 12 }).await?;
    let third = ask(
        &mut conn,
        style,
        "Explain mid-stream failover in two sentences.",
    )
    .await?;
    match third.turn.reroutes.first() {
        Some(r) if r.mode == mythos_protocol::RerouteMode::Continue => say(
            style,
            &format!(
                "The answer continued on {} exactly where {} stopped: nothing lost, nothing \
                 repeated.",
                r.to, r.from
            ),
        )?,
        Some(r) => say(
            style,
            &format!(
                "{} could not continue the answer, so it restarted it.",
                r.to
            ),
        )?,
        None => say(style, "No reroute was needed this time.")?,
    }

    let report = status::fetch(&mut conn).await?;
    let others: Vec<String> = report
        .providers
        .iter()
        .filter(|p| p.state == BreakerState::Closed)
        .map(|p| p.name.clone())
        .collect();
    heading(
        style,
        "4/5",
        &format!(
            "{} answer 429 too, retry after 3 s: nobody has capacity",
            others.join(" and ")
        ),
    )?;
    for p in &others {
        inject(
            &mut conn,
            p,
            SimFault::RateLimit {
                retry_after_ms: 3_000,
            },
        )
        .await?;
    }
    let t0 = Instant::now();
    let fourth = ask(
        &mut conn,
        style,
        "What happens when every provider is busy?",
    )
    .await?;
    say(
        style,
        &format!(
            "Instead of failing, the request waited in the queue, said why, and went out the \
             moment {} had room again ({} in all).",
            fourth.turn.provider.as_deref().unwrap_or("a provider"),
            fmt_duration_ms(t0.elapsed().as_millis() as u64)
        ),
    )?;

    heading(style, "5/5", "What the daemon learned")?;
    print(&format!("{}\n", style.dim("$ mythos status")))?;
    let report = status::fetch(&mut conn).await?;
    print(&status_text(&report, style, &[]))?;
    print(&format!("\n{}\n", style.dim("$ mythos why last")))?;
    let rec = why::fetch(&mut conn, why::RecordSel::Last).await?;
    print(&why::text(&rec, style))?;
    Ok(EXIT_OK)
}

/// The best provider in the report that is healthy and not in `except`.
fn healthy(report: &mythos_protocol::StatusReport, except: &[&str]) -> Option<String> {
    report
        .providers
        .iter()
        .find(|p| p.state == BreakerState::Closed && !except.contains(&p.name.as_str()))
        .map(|p| p.name.clone())
}

fn heading(style: Style, step: &str, title: &str) -> Result<(), Failure> {
    print(&format!(
        "\n{}\n",
        style.bold(&format!("── {step}  {title}"))
    ))
}

fn say(style: Style, text: &str) -> Result<(), Failure> {
    print(&format!("{}\n", style.cyan(&format!("→ {text}"))))
}

async fn inject(conn: &mut Connection, provider: &str, fault: SimFault) -> Result<(), Failure> {
    match conn
        .call(Request::SimInject {
            provider: provider.to_string(),
            faults: vec![fault],
        })
        .await?
    {
        Response::Ok => Ok(()),
        other => Err(unexpected(other, "ok")),
    }
}

/// One answered question of the tour.
struct Asked {
    turn: Turn,
    /// Time from sending the request to the first reroute.
    first_reroute: Option<Duration>,
}

async fn ask(conn: &mut Connection, style: Style, prompt: &str) -> Result<Asked, Failure> {
    print(&format!(
        "{}\n",
        style.dim(&format!("$ mythos ask {prompt:?}"))
    ))?;
    // Everything on stdout, streamed: this is a show, and it reads top to bottom.
    let mut printer = StreamPrinter::new(
        io::stdout(),
        io::stdout(),
        PrinterOptions {
            buffer_text: false,
            show_thinking: false,
            same_screen: true,
            side_style: style,
            live: io::stdout().is_terminal(),
            // The demo shows the stream as it arrives, seams and all.
            markdown: None,
        },
    );
    let req = ChatRequest::user_text(conn.next_id(), prompt);
    let sent = Instant::now();
    let mut first_reroute = None;
    let ended = {
        let mut sink = |_id, ev: &StreamEvent| {
            if matches!(ev, StreamEvent::Rerouted { .. }) && first_reroute.is_none() {
                first_reroute = Some(sent.elapsed());
            }
            printer.event(ev)
        };
        stream::run(conn, req, false, &mut sink).await?
    };
    let turn = match ended {
        Ended::Finished(turn) => turn,
        Ended::NotDelivered(f) => return Err(f),
        Ended::Interrupted => return Err(Failure::silent(EXIT_INTERRUPTED)),
    };
    match &turn.outcome {
        Some(done @ Outcome::Done(_)) => {
            printer.finish()?;
            printer.note(&style.dim(&done.footer().unwrap_or_default()))?;
        }
        Some(Outcome::Failed {
            kind,
            message,
            retry_at_unix_ms,
        }) => {
            printer.abandon()?;
            return Err(stream_failure(*kind, message, *retry_at_unix_ms, false));
        }
        None => return Err(Failure::new("the stream ended without an answer")),
    }
    Ok(Asked {
        turn,
        first_reroute,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn temp_dirs_are_fresh_private_and_removed() {
        let a = make_temp_dir().unwrap();
        let b = make_temp_dir().unwrap();
        assert_ne!(a, b);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&a).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o700);
        }
        let guard = PrivateDaemon {
            dir: a.clone(),
            child: None,
            target: Target {
                socket: a.join("demo.sock"),
                encodings: vec![Encoding::Bincode],
                daemon_env: Vec::new(),
            },
        };
        drop(guard);
        assert!(!a.exists());
        std::fs::remove_dir_all(b).unwrap();
    }
}
