//! The daemon's life: socket safety, one daemon per socket, ordered shutdown, state that
//! survives a restart, config errors that say where, the newcomer's paths.

// Unix sockets, signals, uids and file modes: these cases are Unix's.
#![cfg(unix)]

use std::os::unix::fs::PermissionsExt;

use mythos_protocol::{BreakerState, ChatRequest, SimFault, StreamEvent};
use mythos_tests::{Daemon, Mocks, RawClient, TestEnv};
use mythosd::sim::answer_for;

#[test]
fn socket_is_private_and_removed_on_sigterm() {
    let env = TestEnv::new();
    let daemon = env.start_daemon(&["--simulate"]);
    let sock_mode = std::fs::metadata(&env.socket).unwrap().permissions().mode();
    let dir_mode = std::fs::metadata(env.socket.parent().unwrap())
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(sock_mode & 0o777, 0o600, "socket {sock_mode:o}");
    assert_eq!(dir_mode & 0o777, 0o700, "dir {dir_mode:o}");
    let status = daemon.stop();
    assert!(status.success(), "{status:?}");
    assert!(!env.socket.exists(), "socket removed on shutdown");
}

#[test]
fn one_daemon_per_socket_and_stale_sockets_are_reclaimed() {
    let env = TestEnv::new();
    // A stale socket file left by a crashed daemon: bound once, never removed.
    std::fs::create_dir_all(env.socket.parent().unwrap()).unwrap();
    std::fs::set_permissions(
        env.socket.parent().unwrap(),
        std::fs::Permissions::from_mode(0o700),
    )
    .unwrap();
    drop(std::os::unix::net::UnixListener::bind(&env.socket).unwrap());
    assert!(env.socket.exists());
    let daemon = env.start_daemon(&["--simulate"]);

    // A second daemon on the same socket refuses and leaves the first one alone.
    let out = std::process::Command::new(mythos_tests::bin("mythosd"))
        .args(["--simulate", "--notify-stdout", "--socket"])
        .arg(&env.socket)
        .arg("--state-dir")
        .arg(&env.state)
        .output()
        .unwrap();
    assert!(matches!(
        mythos_protocol::StartupLine::parse(&String::from_utf8_lossy(&out.stdout)),
        Some(mythos_protocol::StartupLine::AlreadyRunning(_))
    ));
    // Not a success: a script that starts one learns it did not (it exited 0).
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    let status = env.mythos(&["status"]);
    assert!(
        status.status.success(),
        "{}",
        String::from_utf8_lossy(&status.stderr)
    );
    drop(daemon);
}

/// A second daemon on another socket but the same state directory (a hand-started one beside
/// the service) serves, but leaves the first one's database alone and says why in its status.
#[tokio::test]
async fn a_second_daemon_on_the_same_state_leaves_it_to_the_first() {
    let env = TestEnv::new();
    let first = env.start_daemon(&["--simulate"]);
    let address = env.http();
    let other = env.socket.with_file_name("second.sock");
    let second = env.start_daemon(&["--simulate", "--socket", other.to_str().unwrap()]);
    let notes = RawClient::connect(&other).await.status().await.notes;
    assert!(
        notes
            .iter()
            .any(|n| n.contains("running without saved state")
                && n.contains("in use by another mythosd (pid")),
        "{notes:?}"
    );
    // The first one still has it, and agents are still sent to its front end.
    let notes = env.connect().await.status().await.notes;
    assert!(
        !notes.iter().any(|n| n.contains("saved state")),
        "{notes:?}"
    );
    assert_eq!(env.http(), address);
    drop(second);
    assert_eq!(env.http(), address, "the second one's exit left it alone");
    // A daemon started the moment the first stops gets the state (it is let go before the
    // socket), and says nothing about running without it.
    assert!(first.stop().success());
    let third = env.start_daemon(&["--simulate"]);
    let notes = env.connect().await.status().await.notes;
    assert!(
        !notes.iter().any(|n| n.contains("saved state")),
        "{notes:?}"
    );
    drop(third);
}

#[test]
fn two_clients_starting_the_daemon_at_once_get_one_daemon() {
    let env = TestEnv::new();
    let mut a1 = env.command("mythos");
    a1.args(["status", "--json"]);
    let mut a2 = env.command("mythos");
    a2.args(["status", "--json"]);
    let c1 = a1.stdout(std::process::Stdio::piped()).spawn().unwrap();
    let c2 = a2.stdout(std::process::Stdio::piped()).spawn().unwrap();
    let o1 = c1.wait_with_output().unwrap();
    let o2 = c2.wait_with_output().unwrap();
    assert!(o1.status.success() && o2.status.success());
    let p1: serde_json::Value = serde_json::from_slice(&o1.stdout).unwrap();
    let p2: serde_json::Value = serde_json::from_slice(&o2.stdout).unwrap();
    assert_eq!(p1["pid"], p2["pid"], "both talk to the same daemon");
    // Stop it.
    let out = env.mythos(&["daemon", "stop"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A daemon on mocks whose Anthropic provider answered 429 with a 10-minute Retry-After.
async fn anthropic_paused() -> (Mocks, TestEnv, Daemon, RawClient) {
    let mocks = Mocks::start().await;
    let env = mocks.env();
    let daemon = env.start_daemon(&[]);
    mocks.anthropic.inject([SimFault::RateLimit {
        retry_after_ms: 600_000,
    }]);
    let mut c = RawClient::connect(&env.socket).await;
    c.chat(ChatRequest::user_text(1, "trip it")).await;
    (mocks, env, daemon, c)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_keeps_the_pause() {
    let (mocks, env, daemon, c) = anthropic_paused().await;
    let a = &mocks.anthropic;
    drop(c);
    assert!(daemon.stop().success());

    let _daemon = env.start_daemon(&[]);
    let mut c = RawClient::connect(&env.socket).await;
    let s = c.status().await;
    let p = s.providers.iter().find(|p| p.name == "anthropic").unwrap();
    assert_eq!(p.state, BreakerState::RateLimited);
    assert!(p.cooldown_left_ms.unwrap() > 500_000);
    // A rate limit is a pause the provider asked for, not a fault.
    assert_eq!(p.failures, 0);
    assert!(p.note.contains("rate limited"), "{}", p.note);
    let ev = c.chat(ChatRequest::user_text(2, "after restart")).await;
    assert_eq!(mythos_tests::text_of(&ev), answer_for("after restart"));
    assert_eq!(
        a.stats().requests,
        1,
        "still cooling down after the restart"
    );
}

/// A daemon run as a service for months keeps two weeks of logs, not every day it ran.
#[test]
fn old_log_files_are_deleted() {
    let env = TestEnv::new();
    let logs = env.state.join("logs");
    std::fs::create_dir_all(&logs).unwrap();
    for day in 1..=30 {
        std::fs::write(logs.join(format!("mythosd.log.2026-01-{day:02}")), "old\n").unwrap();
    }
    // Not ours: left alone whatever its age.
    std::fs::write(logs.join("notes.txt"), "mine\n").unwrap();
    let daemon = env.start_daemon(&["--simulate"]);
    assert!(daemon.stop().success());
    let names: Vec<String> = std::fs::read_dir(&logs)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    let kept = names
        .iter()
        .filter(|n| n.starts_with("mythosd.log"))
        .count();
    assert!((1..=14).contains(&kept), "{kept} log files kept: {names:?}");
    assert!(names.iter().any(|n| n == "notes.txt"), "{names:?}");
}

#[test]
fn a_bad_config_file_names_the_file_line_and_field() {
    let env = TestEnv::new();
    env.write_config("[routing]\ncooldown_secs = 30\nretry_backof_ms = [1]\n");
    let out = env.mythos(&["status"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("config.toml"), "{err}");
    assert!(err.contains("line 3"), "{err}");
    assert!(err.contains("retry_backof_ms"), "{err}");
}

/// A config file a restart cannot mend ends the daemon with status 78, and the systemd unit
/// does not restart it on that status (nor on 3, another daemon on the socket): it was
/// restarted every 2 s until systemd gave up, saying "start request repeated too quickly"
/// instead of the file's error.
#[test]
fn a_bad_config_file_is_a_failure_the_unit_does_not_restart() {
    let env = TestEnv::new();
    env.write_config("[routing]\ncooldown_secs = \"soon\"\n");
    let out = env
        .command("mythosd")
        .arg("--notify-stdout")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(78), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("line 2"),
        "{out:?}"
    );
    let unit = include_str!("../../packaging/systemd/mythosd.service");
    assert!(
        unit.lines().any(|l| l == "RestartPreventExitStatus=3 78"),
        "{unit}"
    );
}

/// A log directory that cannot be written is said in `status`: the daemon a command started
/// has no stderr, so its one line about it reached nobody.
#[test]
fn status_says_when_the_logs_cannot_be_written() {
    let env = TestEnv::new();
    std::fs::create_dir_all(&env.state).unwrap();
    std::fs::write(env.state.join("logs"), b"not a directory").unwrap();
    let out = env.mythos(&["status"]);
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("cannot write logs in"), "{text}");
    env.mythos(&["daemon", "stop"]);
}

#[test]
fn with_no_keys_the_simulated_providers_answer() {
    let env = TestEnv::new();
    let out = env.mythos(&["ask", "hello mythos"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim_end(),
        answer_for("hello mythos")
    );
    let status = env.mythos(&["status", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(v["simulated"], true);
    let out = env.mythos(&["daemon", "stop"]);
    assert!(out.status.success());
}

/// The first `mythos` command starts the daemon from the shell it runs in; a key exported
/// after that is not the daemon's. `status` said "no API keys found: set ANTHROPIC_API_KEY"
/// with that very variable set: it now says the daemon was started without it.
#[test]
fn a_key_exported_after_the_daemon_started_is_named_in_status() {
    let env = TestEnv::new();
    let _daemon = env.start_daemon(&[]);
    let out = env
        .command("mythos")
        .env("ANTHROPIC_API_KEY", "sk-ant-exported-later-0123456789")
        .arg("status")
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("this shell has ANTHROPIC_API_KEY, but mythosd was started without it")
            && text.contains("mythos daemon restart"),
        "{text}"
    );
    assert!(!text.contains("no API keys found"), "{text}");
    assert!(!text.contains("exported-later"), "never the key: {text}");
    // Without the variable, the usual advice.
    let text = String::from_utf8(env.mythos(&["status"]).stdout).unwrap();
    assert!(text.contains("no API keys found"), "{text}");
}

/// `mythos ask --model NAME` for a model nobody serves was told "no provider matches `NAME`;
/// configured: sim-anthropic, ..." (provider names, for a model) and to see `mythos status`;
/// it now lists the models. `--max-tokens 0`, which real providers refuse, is a usage error.
#[test]
fn an_unknown_model_lists_the_models_and_zero_max_tokens_is_refused() {
    let env = TestEnv::new();
    let _daemon = env.start_daemon(&["--simulate"]);
    let out = env.mythos(&["ask", "--model", "gpt-nope", "hi"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("no provider is configured with model `gpt-nope`")
            && err.contains("sim-anthropic/claude-sim-1")
            && err.contains("mythos models"),
        "{err}"
    );
    let out = env.mythos(&["ask", "--provider", "nope", "hi"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no provider matches `nope`"), "{err}");
    let out = env.mythos(&["ask", "--max-tokens", "0", "hi"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
}

/// A prompt given as arguments that is not UTF-8 (`mythos ask "$(cat latin1.txt)"`) was
/// refused by the argument parser ("invalid UTF-8 was detected"), where the same bytes on
/// stdin are asked with U+FFFD in their place: arguments now are too.
#[test]
fn a_prompt_argument_that_is_not_utf8_is_asked() {
    use std::os::unix::ffi::OsStrExt;
    let env = TestEnv::new();
    let _daemon = env.start_daemon(&["--simulate"]);
    let out = env
        .command("mythos")
        .arg("ask")
        .arg(std::ffi::OsStr::from_bytes(b"caf\xe9 au lait"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim_end(),
        answer_for("caf\u{fffd} au lait")
    );
}

/// A daemon whose HTTP port another program holds serves its socket clients, as it should,
/// but only its log said that agents could not reach it: `status` and `/health` were silent,
/// and `mythos env` failed with "not listening". The reason is now a note in `status`.
#[test]
fn a_taken_http_port_is_said_in_status() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let mut env = TestEnv::new();
    env.var("MYTHOS_HTTP_LISTEN", addr.to_string());
    let _daemon = env.start_daemon(&["--simulate"]);
    let out = env.mythos(&["status"]);
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(&format!("note: the HTTP front end cannot listen on {addr}")),
        "{text}"
    );
    drop(taken);
}

#[test]
fn the_demo_shows_routing_and_failover() {
    let env = TestEnv::new();
    let out = env.mythos(&["demo"]);
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{all}");
    assert!(all.contains("sim-deepseek"), "{all}");
    assert!(all.contains("sim-anthropic"), "{all}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_config_and_keeps_health() {
    let (mocks, env, daemon, mut c) = anthropic_paused().await;
    let a = &mocks.anthropic;

    // Demote deepseek below openai and change its model; reload.
    env.write_config(
        "[[provider]]\nname = \"deepseek\"\npriority = 7\nmodel = \"deepseek-reasoner\"\n",
    );
    daemon.signal(libc::SIGHUP);
    // Observe the reload instead of sleeping for it.
    let mut reloaded = None;
    for _ in 0..200 {
        let s = c.status().await;
        let p = s
            .providers
            .iter()
            .find(|p| p.name == "deepseek")
            .cloned()
            .unwrap();
        if p.model == "deepseek-reasoner" {
            reloaded = Some(s);
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    let s = reloaded.expect("config reloaded after SIGHUP");
    assert_eq!(
        s.providers
            .iter()
            .find(|p| p.name == "deepseek")
            .unwrap()
            .priority,
        7
    );
    // Health carried over: anthropic is still paused.
    let p = s.providers.iter().find(|p| p.name == "anthropic").unwrap();
    assert_eq!(p.state, BreakerState::RateLimited);
    let ev = c.chat(ChatRequest::user_text(2, "after reload")).await;
    assert_eq!(mythos_tests::text_of(&ev), answer_for("after reload"));
    assert_eq!(a.stats().requests, 1);
    drop(daemon);
}

/// A user who edits the config, with no service manager to send `SIGHUP` for them (the
/// default set-up, and Windows), reloads it with one command and hears at once whether it took:
/// a file with a mistake is refused with its line, and the config before it stays in force.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mythos_daemon_reload_applies_the_config_or_says_why_not() {
    let (_mocks, env, daemon, mut c) = anthropic_paused().await;
    env.write_config(
        "[[provider]]\nname = \"deepseek\"\npriority = 7\nmodel = \"deepseek-reasoner\"\n",
    );
    let out = env.mythos(&["daemon", "reload"]);
    assert!(out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("config reloaded"));
    // In force when the command returns: no waiting for it.
    let s = c.status().await;
    let p = s.providers.iter().find(|p| p.name == "deepseek").unwrap();
    assert_eq!((p.model.as_str(), p.priority), ("deepseek-reasoner", 7));

    env.write_config("[[provider]]\nname = \"deepseek\"\npriority = \"high\"\n");
    let out = env.mythos(&["daemon", "reload"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("not reloaded") && err.contains("line 3") && err.contains("priority"),
        "{err}"
    );
    let s = c.status().await;
    let p = s.providers.iter().find(|p| p.name == "deepseek").unwrap();
    assert_eq!(p.model, "deepseek-reasoner", "the config before stays");
    let out = env.mythos(&["daemon", "status", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON on stdout");
    assert_eq!(v["running"], true, "{v}");
    drop(daemon);

    let out = env.mythos(&["daemon", "reload"]);
    assert_eq!(out.status.code(), Some(3), "no daemon: {out:?}");
    // A script asking for JSON gets JSON on stdout, not an empty string, with no daemon too.
    let out = env.mythos(&["daemon", "status", "--json"]);
    assert_eq!(out.status.code(), Some(3), "no daemon: {out:?}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON on stdout");
    assert_eq!(v["running"], false, "{v}");
}

/// Ctrl-C on `mythos ask` mid-answer stops the provider's generation (and its bill) and ends
/// the line with the usual exit status 130, instead of the process dying mid-line.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctrl_c_on_ask_cancels_the_request_and_ends_cleanly() {
    let mocks = Mocks::start().await;
    mocks.anthropic.set_delays(
        std::time::Duration::from_millis(5),
        std::time::Duration::from_millis(200),
    );
    let env = mocks.env();
    let _daemon = env.start_daemon(&[]);
    let child = env
        .command("mythos")
        .args(["ask", "tell me a long story"])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Whether the mock reaches a state within 5 s, looked at every 10 ms.
    let reaches = |state: fn(&mythosd::sim::SimStats) -> bool| {
        let sim = mocks.anthropic.clone();
        async move {
            for _ in 0..500 {
                if state(&sim.stats()) {
                    return true;
                }
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
            false
        }
    };
    assert!(reaches(|s| s.active == 1).await, "the answer never started");
    // SAFETY: kill(2) on our own child's pid.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGINT) };
    let out = tokio::task::spawn_blocking(move || child.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(out.status.code(), Some(130), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.is_empty() || text.ends_with('\n'), "{text:?}");
    assert!(
        reaches(|s| s.aborted == 1).await,
        "the provider went on generating"
    );
}

#[test]
fn an_unwritable_socket_path_is_a_clear_error() {
    let mut env = TestEnv::new();
    let blocker = env.dir.path().join("not-a-dir");
    std::fs::write(&blocker, b"").unwrap();
    env.socket = blocker.join("mythosd.sock");
    let out = env.mythos(&["status"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("not-a-dir"), "{err}");
    assert!(err.lines().count() <= 3, "short and clear: {err}");
}

/// Wait (observing, not sleeping blindly) until `cond` holds for the status report.
async fn status_until(
    c: &mut RawClient,
    cond: impl Fn(&mythos_protocol::StatusReport) -> bool,
) -> mythos_protocol::StatusReport {
    for _ in 0..500 {
        let s = c.status().await;
        if cond(&s) {
            return s;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    panic!("the status never changed as expected");
}

/// A reload keeps one sequence of record ids and leaves the simulated providers when the
/// config yields real ones; one that would fall back to them (the file with the keys was
/// deleted) is refused, and `status` says so. It used to switch a working daemon to simulated
/// answers (found by a chaos run).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_leaves_the_simulation_but_never_falls_back_to_it() {
    let mocks = Mocks::start().await;
    let env = TestEnv::new();
    let config = format!(
        "[[provider]]\nname = \"mock\"\napi = \"openai\"\nbase_url = \"{}\"\nmodel = \"m\"\n\
         api_key = \"key-openai\"\n",
        mocks.openai.base_url()
    );
    // No file and no key: the demo mode.
    let daemon = env.start_daemon(&[]);
    let mut c = RawClient::connect(&env.socket).await;
    let record = |ev: &[StreamEvent]| match ev.last() {
        Some(StreamEvent::Done(d)) => d.record,
        other => panic!("{other:?}"),
    };
    let s = status_until(&mut c, |s| s.simulated).await;
    assert!(s.providers.iter().all(|p| p.name.starts_with("sim-")));
    let ev = c.chat(ChatRequest::user_text(1, "one")).await;
    assert_eq!(mythos_tests::text_of(&ev), answer_for("one"));
    let first = record(&ev);
    env.write_config(&config);
    daemon.signal(libc::SIGHUP);
    status_until(&mut c, |s| !s.simulated && s.providers[0].name == "mock").await;
    let second = record(&c.chat(ChatRequest::user_text(2, "two")).await);
    // The config file goes away: the reload is refused, the mock stays.
    std::fs::remove_file(&env.config).unwrap();
    daemon.signal(libc::SIGHUP);
    let s = status_until(&mut c, |s| s.notes.iter().any(|n| n.contains("refused"))).await;
    assert!(!s.simulated && s.providers[0].name == "mock", "{s:?}");
    let third = record(&c.chat(ChatRequest::user_text(3, "three")).await);
    assert!(first < second && second < third, "{first} {second} {third}");
    // A good reload clears the note.
    env.write_config(&config);
    daemon.signal(libc::SIGHUP);
    status_until(&mut c, |s| s.notes.is_empty()).await;
    drop(daemon);
}

/// A piped conversation (`mythos chat < questions.txt`): `--provider` in other capitals pins
/// the provider as the config spells it, and a `/provider` naming none the daemon knows is an
/// error the exit status reports (it printed a remark, went on unpinned and exited 0).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn piped_chat_pins_by_any_capitals_and_fails_on_an_unknown_provider() {
    let mocks = Mocks::start().await;
    let env = mocks.env();
    let _daemon = env.start_daemon(&[]);
    let out = env.mythos_with_stdin(&["chat", "--provider", "DeepSeek"], "first question\n");
    assert!(out.status.success(), "{out:?}");
    assert_eq!(mocks.deepseek.requests().len(), 1, "{out:?}");
    assert_eq!(mocks.anthropic.requests().len(), 0);

    let out = env.mythos_with_stdin(&["chat"], "/provider nope\nsecond question\n");
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("no provider named nope") && err.contains("deepseek"),
        "{err}"
    );
    // The rest of the conversation is still answered.
    let answered = mocks.anthropic.requests().len() + mocks.deepseek.requests().len();
    assert_eq!(answered, 2, "{out:?}");
}

/// `mythos chat < questions.txt > answers.md`: each answer is a paragraph of its own. They ran
/// together on one line, the second glued to the first's last sentence.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn piped_chat_sets_answers_apart_with_a_blank_line() {
    let mocks = Mocks::start().await;
    let env = mocks.env();
    let _daemon = env.start_daemon(&[]);
    let out = env.mythos_with_stdin(&["chat"], "first question\nsecond question\n");
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    let answers: Vec<&str> = text.split("\n\n").collect();
    assert_eq!(answers.len(), 2, "{text:?}");
    assert!(
        answers
            .iter()
            .all(|a| !a.trim().is_empty() && !a.starts_with('\n')),
        "{text:?}"
    );
    assert!(text.ends_with('\n') && !text.ends_with("\n\n"), "{text:?}");
}

/// `/save ~/notes.md` writes under the home directory, as a shell reads the name (it failed
/// with "No such file or directory"), and a second save says it replaced the file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn save_reads_a_home_path_and_says_when_it_replaces() {
    let mocks = Mocks::start().await;
    let mut env = mocks.env();
    let home = env.dir.path().join("home");
    std::fs::create_dir_all(&home).unwrap();
    env.var("HOME", home.display().to_string());
    let _daemon = env.start_daemon(&[]);
    let out = env.mythos_with_stdin(
        &["chat"],
        "the question\n/save ~/notes.md\n/save ~/notes.md\n",
    );
    assert!(out.status.success(), "{out:?}");
    let said = String::from_utf8_lossy(&out.stdout);
    let saved: Vec<&str> = said.lines().filter(|l| l.starts_with("saved to")).collect();
    assert_eq!(
        saved,
        [
            "saved to ~/notes.md",
            "saved to ~/notes.md (the file there was replaced)"
        ],
        "{said}"
    );
    let notes = std::fs::read_to_string(home.join("notes.md")).expect("the file");
    assert!(notes.contains("the question"), "{notes}");
}

/// A piped conversation with a command written wrong (`/task cod`, `/fault` with an unknown
/// fault, a `/word` that is no command, `/save` where nothing can be written) ends with exit
/// status 1 and says why on stderr, while the rest is still answered: it exited 0, and a
/// script never learnt that its commands did nothing. A first word that is an existing path
/// (`/tmp …`) is a question, not an unknown command.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn piped_chat_fails_on_a_command_written_wrong_and_asks_about_a_path() {
    let mocks = Mocks::start().await;
    let env = mocks.env();
    let _daemon = env.start_daemon(&[]);
    let dir = env.dir.path().display().to_string();
    for (line, said) in [
        ("/task cod", "unknown task cod"),
        ("/fault anthropic nope", "unknown fault nope"),
        ("/frobnicate", "unknown command /frobnicate"),
        (
            "/save /nonexistent-dir/x.md",
            "cannot write /nonexistent-dir/x.md",
        ),
    ] {
        let before = mocks.anthropic.requests().len();
        let out = env.mythos_with_stdin(&["chat"], &format!("{line}\nthe question\n"));
        assert_eq!(out.status.code(), Some(1), "{line}: {out:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(said), "{line}: {err}");
        assert_eq!(
            mocks.anthropic.requests().len(),
            before + 1,
            "{line}: {out:?}"
        );
    }
    let before = mocks.anthropic.requests().len();
    let out = env.mythos_with_stdin(&["chat"], &format!("{dir} what is in here\n"));
    assert!(out.status.success(), "{out:?}");
    assert_eq!(mocks.anthropic.requests().len(), before + 1, "{out:?}");
    let asked = mocks
        .anthropic
        .requests()
        .last()
        .cloned()
        .expect("a request");
    assert!(
        asked.body.to_string().contains("what is in here"),
        "{}",
        asked.body
    );
}

/// `/fault` on a provider that a first `/fault … 429` paused says that the fault waits for
/// the pause to end: the chat said "will fail its next request" and the next answers came
/// from another provider without a sign of it, for the 60 s of the pause.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fault_for_a_paused_provider_says_it_waits_for_the_pause() {
    let env = TestEnv::new();
    let _daemon = env.start_daemon(&["--simulate"]);
    let out = env.mythos_with_stdin(
        &["chat"],
        "/fault sim-anthropic 429\nfirst question\n/fault sim-anthropic disconnect\n",
    );
    assert!(out.status.success(), "{out:?}");
    let said = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = said.lines().filter(|l| l.contains("will fail")).collect();
    assert_eq!(lines.len(), 2, "{said}");
    assert!(!lines[0].contains("pause"), "{said}");
    assert!(
        lines[1].contains("waits for the end of its pause") && lines[1].contains("rate limited"),
        "{said}"
    );
}

/// `/fault` on a provider the next message does not go to says which one it goes to: the
/// fault waited, armed, and the answers came cleanly from the first-ranked provider, as if the
/// command did nothing (found by a helper trying the demo).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fault_for_a_provider_not_first_in_line_says_who_is() {
    let env = TestEnv::new();
    let _daemon = env.start_daemon(&["--simulate"]);
    let out = env.mythos_with_stdin(
        &["chat"],
        "/fault sim-gemini 500\n/fault sim-anthropic 500\n",
    );
    assert!(out.status.success(), "{out:?}");
    let said = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = said.lines().filter(|l| l.contains("will fail")).collect();
    assert_eq!(lines.len(), 2, "{said}");
    assert!(lines[0].contains("sim-anthropic ranks first"), "{said}");
    assert!(!lines[1].contains("ranks first"), "{said}");
}

/// Mock providers whose `anthropic` streams an answer over seconds: long enough to stop a
/// daemon in the middle of it.
async fn slow_anthropic() -> Mocks {
    let mocks = Mocks::start().await;
    mocks.anthropic.set_delays(
        std::time::Duration::from_millis(5),
        std::time::Duration::from_millis(40),
    );
    mocks.anthropic.set_answer_repeat(2);
    mocks
}

/// A service manager restarts its daemon (`systemctl restart`; here the launchd agent, by its
/// label) while an answer streams: a client run meanwhile finds the old daemon refusing
/// connections, asks the manager for the next one (as the old daemon's lock file says to) and
/// is answered by it. It used to start a daemon of its own, which took the socket as the old
/// one exited: the manager's then failed as "already running", and the one left serving had
/// the shell's environment instead of the unit's keys (simulated providers where they were
/// missing).
#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_starts_a_managed_daemon_through_its_manager() {
    let mocks = slow_anthropic().await;
    let mut env = mocks.env();
    env.var("XPC_SERVICE_NAME", "dev.mythos.mythosd");
    let mut managed = env.start_daemon(&[]);
    let lock = mythos_protocol::paths::instance_lock_path(&env.socket);
    let marker = std::fs::read_to_string(&lock).unwrap();
    assert!(
        marker.starts_with("started-by: launchctl kickstart gui/"),
        "{marker:?}"
    );
    // A stand-in for launchd: it notes how it was asked and, running one instance of its
    // agent, starts the next daemon once the last one has let go of the socket.
    let bin = env.dir.path().join("manager-bin");
    std::fs::create_dir_all(&bin).unwrap();
    let log = env.dir.path().join("launchctl.log");
    let pid_file = env.dir.path().join("agent.pid");
    let script = format!(
        "#!/bin/sh\n\
         echo \"$@\" >> '{log}'\n\
         [ \"$1\" = kickstart ] || exit 1\n\
         while ! flock -n '{lock}' true; do sleep 0.05; done\n\
         XPC_SERVICE_NAME=dev.mythos.mythosd '{daemon}' < /dev/null > /dev/null 2>&1 &\n\
         echo $! > '{pid}'\n",
        log = log.display(),
        lock = lock.display(),
        daemon = mythos_tests::bin("mythosd").display(),
        pid = pid_file.display(),
    );
    let launchctl = bin.join("launchctl");
    std::fs::write(&launchctl, script).unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&launchctl, std::fs::Permissions::from_mode(0o755)).unwrap();
    }

    let stream = drain_with_a_long_answer(&env, &mocks, &managed).await;

    // A client of the user's shell, run during the drain.
    let mut ask = env.command("mythos");
    ask.env_remove("XPC_SERVICE_NAME")
        .env(
            "PATH",
            format!(
                "{}:{}",
                bin.display(),
                std::env::var("PATH").unwrap_or_default()
            ),
        )
        .args(["ask", "--provider", "deepseek", "asked during the restart"]);
    let out = tokio::task::spawn_blocking(move || ask.output())
        .await
        .unwrap()
        .unwrap();
    let events = stream.await.unwrap();
    let _ = tokio::task::spawn_blocking(move || managed.child.wait()).await;
    let agent: Option<libc::pid_t> = std::fs::read_to_string(&pid_file)
        .ok()
        .and_then(|p| p.trim().parse().ok());
    let marker = std::fs::read_to_string(&lock).unwrap_or_default();
    if let Some(pid) = agent {
        // SAFETY: as above; the pid is the stand-in manager's daemon, ours to stop.
        unsafe { libc::kill(pid, libc::SIGTERM) };
    }
    assert!(out.status.success(), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("asked during the restart"),
        "{out:?}"
    );
    let asked = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        asked.starts_with("kickstart gui/") && asked.contains("/dev.mythos.mythosd"),
        "the client did not ask the manager: {asked:?}"
    );
    assert!(agent.is_some(), "the manager started no daemon");
    // The daemon serving now is the manager's, not one the client started.
    assert!(marker.starts_with("started-by: launchctl"), "{marker:?}");
    assert!(
        events.iter().any(|e| matches!(e, StreamEvent::Done(_))),
        "{events:?}"
    );
}

/// A service manager restarts its daemon while an answer streams: an agent's HTTP request made
/// during the drain is not refused (it was, for up to the drain's 10 s, longer than the SDKs'
/// two quick retries); it waits, is reset when the old daemon exits (a connection error, which
/// the SDKs retry), and the retry is answered by the next daemon at the same port.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_managed_restart_keeps_the_http_port_listening() {
    use std::io::{Read, Write};
    use std::time::Duration;
    let mocks = slow_anthropic().await;
    let mut env = mocks.env();
    env.var("XPC_SERVICE_NAME", "dev.mythos.mythosd");
    let listen = fixed_http_address(&mut env);
    let mut managed = env.start_daemon(&[]);
    let (base, token) = env.http();
    let stream = drain_with_a_long_answer(&env, &mocks, &managed).await;

    // An agent's request during the drain.
    let body = serde_json::json!({"model": "deepseek", "max_tokens": 100,
        "messages": [{"role": "user", "content": "asked during the restart"}]})
    .to_string();
    let request = format!(
        "POST /v1/messages HTTP/1.1\r\nhost: {listen}\r\nx-api-key: {token}\r\n\
         content-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    let mut tcp = std::net::TcpStream::connect(&listen)
        .expect("the HTTP port refused a connection during the drain");
    tcp.write_all(request.as_bytes()).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let waited = tokio::task::spawn_blocking(move || {
        let mut got = Vec::new();
        let end = tcp.read_to_end(&mut got);
        (got, end.err().map(|e| e.kind()))
    });
    let status = tokio::task::spawn_blocking(move || managed.child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "{status:?}");
    let (got, end) = waited.await.unwrap();
    assert!(
        got.is_empty(),
        "the draining daemon answered: {:?}",
        String::from_utf8_lossy(&got)
    );
    assert_ne!(
        end,
        Some(std::io::ErrorKind::WouldBlock),
        "the request was still held 30 s on"
    );
    let events = stream.await.unwrap();
    assert!(
        events.iter().any(|e| matches!(e, StreamEvent::Done(_))),
        "{events:?}"
    );

    // The manager starts the next daemon; the SDK's retry is answered there.
    let _next = env.start_daemon(&[]);
    let resp = reqwest::Client::new()
        .post(format!("{base}/v1/messages"))
        .header("x-api-key", &token)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .expect("the retry");
    assert_eq!(resp.status(), 200);
    assert!(resp
        .text()
        .await
        .unwrap()
        .contains("asked during the restart"));
}

/// A long answer streaming from `daemon` (pinned to the slow Anthropic mock), which is then
/// sent SIGTERM, as launchd and systemd stop it; returns once its drain has begun (its socket
/// refuses connections), with the answer's events to come.
#[cfg(unix)]
async fn drain_with_a_long_answer(
    env: &TestEnv,
    mocks: &Mocks,
    daemon: &Daemon,
) -> tokio::task::JoinHandle<Vec<StreamEvent>> {
    use std::time::{Duration, Instant};
    let mut c = env.connect().await;
    let mut long = ChatRequest::user_text(1, "the long one");
    long.pin = Some(mythos_protocol::Pin {
        provider: Some("anthropic".into()),
        model: None,
    });
    let stream = tokio::spawn(async move { c.chat(long).await });
    let t0 = Instant::now();
    while mocks.anthropic.stats().requests < 1 {
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "the stream never began"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // SAFETY: kill has no memory-safety preconditions; the pid is our child's.
    unsafe { libc::kill(daemon.child.id() as libc::pid_t, libc::SIGTERM) };
    let t0 = Instant::now();
    while std::os::unix::net::UnixStream::connect(&env.socket).is_ok() {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "the drain never began"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stream
}

/// A free loopback address, set as the HTTP front end's for every daemon `env` starts (the
/// default port is fixed too): a restart's next daemon serves at the same address.
fn fixed_http_address(env: &mut TestEnv) -> String {
    let listen = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .to_string();
    env.var("MYTHOS_HTTP_LISTEN", listen.clone());
    listen
}

/// The record `id` as the daemon on `env`'s socket tells it.
async fn record(env: &TestEnv, id: u64) -> mythos_protocol::RequestRecord {
    let mut c = env.connect().await;
    c.send(mythos_protocol::Request::Why { record: Some(id) })
        .await;
    match c.recv().await {
        mythos_protocol::Response::Why(r) => *r,
        other => panic!("record {id}: {other:?}"),
    }
}

/// `mythos daemon restart` while long answers stream: the old daemon hands over at once (its
/// socket, lock, HTTP port, address file and state) and finishes them, while the new one
/// answers over the socket and over HTTP, at the same address. Before, the restart waited for
/// the old daemon to exit: agents' connections were refused for the length of the drain, more
/// than the SDKs' two retries cover.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_serves_at_once_while_the_old_daemon_finishes_its_streams() {
    use std::time::{Duration, Instant};
    // The answers the old daemon finishes take seconds; the new daemon's go to the others.
    let mocks = slow_anthropic().await;
    let mut env = mocks.env();
    // One fixed address for both daemons, as the default port is: the new one binds it while
    // the old one still streams an answer on a connection to it.
    let listen = fixed_http_address(&mut env);
    let mut old = env.start_daemon(&[]);
    let old_pid = old.child.id();
    let (base, token) = env.http();
    assert_eq!(base, format!("http://{listen}"));
    let http = reqwest::Client::new();
    let pinned = |id: u64, prompt: &str, provider: &str| {
        let mut req = ChatRequest::user_text(id, prompt);
        req.pin = Some(mythos_protocol::Pin {
            provider: Some(provider.into()),
            model: None,
        });
        req
    };

    // Through the old daemon: a long answer over the socket, another over HTTP.
    let mut c = env.connect().await;
    let long = pinned(1, "the long one", "anthropic");
    let socket_stream = tokio::spawn(async move {
        let events = c.chat(long).await;
        (events, Instant::now())
    });
    let post = http
        .post(format!("{base}/v1/messages"))
        .header("x-api-key", &token)
        .header("content-type", "application/json")
        .body(
            serde_json::json!({"model": "anthropic", "max_tokens": 4000, "stream": true,
                "messages": [{"role": "user", "content": "the long one"}]})
            .to_string(),
        );
    let http_stream = tokio::spawn(async move {
        let resp = post.send().await.expect("the HTTP stream");
        assert_eq!(resp.status(), 200);
        let record: u64 = resp.headers()["x-mythos-request"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        let body = resp.bytes().await.expect("the HTTP stream was cut");
        (
            String::from_utf8(body.to_vec()).unwrap(),
            record,
            Instant::now(),
        )
    });
    let t0 = Instant::now();
    while mocks.anthropic.stats().requests < 2 {
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "the streams never began"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let mut restart = env.command("mythos");
    restart.args(["daemon", "restart"]);
    let asked = Instant::now();
    let out = tokio::task::spawn_blocking(move || restart.output())
        .await
        .unwrap()
        .unwrap();
    let restarted = asked.elapsed();
    let said = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{said}{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // The new daemon answers over the socket and at the address it wrote, while the old one
    // still streams.
    let mut n = env.connect().await;
    let new_pid = n.status().await.pid;
    assert_ne!(new_pid, old_pid, "{said}");
    let fresh = n.chat(pinned(1, "a new one", "openai")).await;
    assert_eq!(mythos_tests::text_of(&fresh), answer_for("a new one"));
    let Some(StreamEvent::Done(fresh)) = fresh.last() else {
        panic!("{fresh:?}")
    };
    assert_eq!(env.http(), (base.clone(), token.clone()));
    let resp = http
        .post(format!("{base}/v1/chat/completions"))
        .header("authorization", format!("Bearer {token}"))
        .header("content-type", "application/json")
        .body(
            serde_json::json!({"model": "openai",
                "messages": [{"role": "user", "content": "over http"}]})
            .to_string(),
        )
        .send()
        .await
        .expect("the new daemon's front end");
    assert_eq!(resp.status(), 200);
    let answered = asked.elapsed();
    assert!(
        !socket_stream.is_finished() && !http_stream.is_finished(),
        "the new daemon answered only after the old one's streams ended ({answered:?} after \
         the restart was asked)"
    );
    assert!(said.contains("finishing the streams in flight"), "{said}");

    // The old daemon finishes both answers in full, then exits.
    let (events, socket_end) = socket_stream.await.unwrap();
    let whole = [answer_for("the long one"), answer_for("the long one")].join(" ");
    assert_eq!(mythos_tests::text_of(&events), whole);
    let Some(StreamEvent::Done(drained)) = events.last() else {
        panic!("{events:?}")
    };
    let (body, http_record, http_end) = http_stream.await.unwrap();
    assert!(body.contains("message_stop"), "{body}");
    assert!(!body.contains("event: error"), "{body}");
    old.exits("the old daemon").await;
    assert!(old.child.wait().unwrap().success());
    eprintln!(
        "restart returned after {restarted:?}, new answers by {answered:?}, old streams ended \
         after {:?} (socket) and {:?} (HTTP)",
        socket_end - asked,
        http_end - asked
    );

    // The new daemon still serves, its files intact, and the history has both daemons'
    // requests, none in another's place.
    assert!(
        env.socket.exists(),
        "the old daemon removed the new one's socket"
    );
    assert_eq!(env.connect().await.status().await.pid, new_pid);
    assert_eq!(
        env.http(),
        (base.clone(), token.clone()),
        "the old daemon removed the new one's address"
    );
    let health = http.get(format!("{base}/health")).send().await.unwrap();
    assert_eq!(health.status(), 200);
    let mut ids = vec![drained.record, http_record, fresh.record];
    for (id, provider) in [
        (drained.record, "anthropic"),
        (http_record, "anthropic"),
        (fresh.record, "openai"),
    ] {
        let r = record(&env, id).await;
        assert_eq!(r.provider.as_deref(), Some(provider), "record {id}: {r:?}");
    }
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), 3, "two requests share a record id");
    let out = env.mythos(&["daemon", "stop"]);
    assert!(out.status.success());
}

/// A daemon a service manager runs (here the launchd agent, by its label) keeps its socket
/// and lock while it finishes its streams: the manager starts the next daemon only once this
/// one has exited, and a client that found the socket gone meanwhile would start an unmanaged
/// daemon in its place (with the shell's keys), which the manager's would then find running.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_managed_daemon_keeps_its_socket_while_it_finishes_its_streams() {
    let mocks = slow_anthropic().await;
    let mut env = mocks.env();
    env.var("XPC_SERVICE_NAME", "dev.mythos.mythosd");
    let mut managed = env.start_daemon(&[]);
    let stream = drain_with_a_long_answer(&env, &mocks, &managed).await;
    assert!(
        managed.child.try_wait().unwrap().is_none(),
        "the daemon did not wait for its stream"
    );
    assert!(
        env.socket.exists(),
        "the socket file went before the daemon"
    );
    // Another daemon (not the agent) cannot start in its place meanwhile.
    let mut second = env.command("mythosd");
    second.env_remove("XPC_SERVICE_NAME");
    let out = tokio::task::spawn_blocking(move || second.output())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    let events = stream.await.unwrap();
    assert!(
        events.iter().any(|e| matches!(e, StreamEvent::Done(_))),
        "{events:?}"
    );
    let status = tokio::task::spawn_blocking(move || managed.child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "{status:?}");
    assert!(!env.socket.exists(), "the socket file is left behind");
}

/// A daemon that hangs (stopped with SIGSTOP, deadlocked) answers no hello: `mythos status`
/// says so and names the way out, and `mythos daemon restart` takes it, ending the old one by
/// signal and starting a new one. Before, status, stop and restart all failed, each pointing
/// at `restart` (found by a helper).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_daemon_is_ended_by_restart() {
    let mocks = Mocks::start().await;
    let env = mocks.env();
    let mut old = env.start_daemon(&[]);
    let old_pid = old.child.id();
    old.signal(libc::SIGSTOP);
    let run = |args: &'static [&'static str]| {
        let mut cmd = env.command("mythos");
        cmd.args(args);
        async move {
            tokio::task::spawn_blocking(move || cmd.output())
                .await
                .unwrap()
                .unwrap()
        }
    };
    let out = run(&["status"]).await;
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success());
    assert!(
        err.contains(&format!("pid {old_pid}"))
            && err.contains("does not answer")
            && err.contains("mythos daemon restart"),
        "{err}"
    );

    let t0 = std::time::Instant::now();
    let out = run(&["daemon", "restart"]).await;
    let took = t0.elapsed();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{said}");
    // One hello timeout (10 s) and the signal's grace (3 s), not two timeouts (it took 23 s).
    assert!(
        took < std::time::Duration::from_secs(20),
        "{took:?}: {said}"
    );
    let new_pid = env.connect().await.status().await.pid;
    assert_ne!(new_pid, old_pid, "{said}");
    // The old one is gone (reaped here: it was this test's child).
    let status = old.child.wait().expect("wait for the old daemon");
    assert!(!status.success(), "{status:?}");
}

/// `mythos daemon restart` from a shell without the keys (another terminal, an editor's task)
/// brings back the same providers: the new daemon keeps the old one's variables where the
/// shell lacks them. It switched to the simulated providers without a word, and agents got
/// "This is a simulated answer" (found by a helper). The shell's own values still win.
#[cfg(target_os = "linux")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_from_a_shell_without_the_keys_keeps_the_providers() {
    let mocks = Mocks::start().await;
    let env = mocks.env();
    let _old = env.start_daemon(&[]);
    let names = |report: &mythos_protocol::StatusReport| {
        let mut n: Vec<String> = report.providers.iter().map(|p| p.name.clone()).collect();
        n.sort();
        n
    };
    let before = env.connect().await.status().await;
    assert!(!before.simulated);

    let mut restart = env.command("mythos");
    restart.args(["daemon", "restart"]);
    for k in ["ANTHROPIC", "DEEPSEEK", "OPENAI"] {
        restart.env_remove(format!("{k}_API_KEY"));
        restart.env_remove(format!("{k}_BASE_URL"));
    }
    let out = tokio::task::spawn_blocking(move || restart.output())
        .await
        .unwrap()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let after = env.connect().await.status().await;
    assert_ne!(after.pid, before.pid);
    assert!(!after.simulated, "{:?}", names(&after));
    assert_eq!(names(&after), names(&before));
    // And it reaches the same mocks: an answer from one of them.
    let mut c = env.connect().await;
    let events = c.chat(ChatRequest::user_text(1, "still there?")).await;
    assert_eq!(mythos_tests::text_of(&events), answer_for("still there?"));
}
