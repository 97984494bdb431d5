//! Hostile clients and bad days, against the real binaries: each case states what a user needs
//! (the daemon stays up, other sessions go on, nothing leaks) and checks it.

// Unix sockets, signals, uids and file modes: these cases are Unix's.
#![cfg(unix)]

use std::time::Duration;

use mythos_protocol::{ChatRequest, ErrorKind, Request, Response, StreamEvent};
use mythos_tests::{files_under, text_of, Mocks, RawClient, TestEnv};
use mythosd::sim::answer_for;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A 14-byte frame whose string claims 32 TiB used to abort the daemon (and every stream with
/// it). Now it costs its sender the connection, and nobody else anything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frame_claiming_terabytes_drops_one_client_only() {
    let mocks = Mocks::start().await;
    mocks
        .anthropic
        .set_delays(Duration::from_millis(5), Duration::from_millis(20));
    let env = mocks.env();
    let _daemon = env.start_daemon(&[]);
    // Another session is mid-answer.
    let mut other = RawClient::connect(&env.socket).await;
    other
        .send(Request::Chat(ChatRequest::user_text(1, "keep streaming")))
        .await;
    for claim in [1u64 << 45, 1u64 << 63] {
        let mut c = RawClient::connect(&env.socket).await;
        let mut frame = vec![0u8, 0, 0, 10, 4, 253];
        frame.extend_from_slice(&claim.to_le_bytes());
        c.framed.get_mut().write_all(&frame).await.unwrap();
        match c.recv().await {
            Response::Error { kind, .. } => assert_eq!(kind, ErrorKind::Protocol),
            other => panic!("{other:?}"),
        }
        let mut rest = Vec::new();
        let _ = c.framed.get_mut().read_to_end(&mut rest).await;
    }
    // The other session's answer arrives whole.
    let mut events = Vec::new();
    loop {
        if let Response::Event { event, .. } = other.recv().await {
            let end = matches!(event, StreamEvent::Done(_) | StreamEvent::Error { .. });
            events.push(event);
            if end {
                break;
            }
        }
    }
    assert_eq!(text_of(&events), answer_for("keep streaming"));
    let mut c = RawClient::connect(&env.socket).await;
    assert!(!c.status().await.providers.is_empty());
}

/// A frame of tiny items (an empty text block is two bytes on the wire and a hundred in memory)
/// took a gigabyte per 16 MiB frame to decode: a few clients sending one each would have the
/// daemon killed for memory, every session with it. Now each costs its sender the connection
/// with a reason, and the daemon stays small.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_of_tiny_items_cost_their_senders_only() {
    use mythos_protocol::{codec::encode_payload, ContentBlock, Encoding, Message, Role};
    let mocks = Mocks::start().await;
    let env = mocks.env();
    let daemon = env.start_daemon(&[]);
    let mut req = ChatRequest::user_text(1, "");
    req.messages = vec![Message {
        role: Role::User,
        content: vec![
            ContentBlock::Text {
                text: String::new()
            };
            7_000_000
        ],
    }];
    let payload = encode_payload(Encoding::Bincode, &Request::Chat(req)).unwrap();
    assert!(payload.len() <= mythos_protocol::MAX_FRAME_LEN);
    let mut frame = (payload.len() as u32).to_be_bytes().to_vec();
    frame.extend_from_slice(&payload);
    let mut senders = Vec::new();
    for _ in 0..4 {
        let frame = frame.clone();
        let mut c = RawClient::connect(&env.socket).await;
        senders.push(tokio::spawn(async move {
            c.framed.get_mut().write_all(&frame).await.unwrap();
            match c.recv().await {
                Response::Error { kind, message } => {
                    assert_eq!(kind, ErrorKind::Protocol);
                    assert!(message.contains("too many items"), "{message}");
                }
                other => panic!("{other:?}"),
            }
        }));
    }
    for s in senders {
        s.await.unwrap();
    }
    // The peak of the daemon's resident memory: the four frames themselves and what one of
    // them decoded into before it was refused.
    if let Some(peak) = daemon.peak_rss_mib() {
        assert!(peak < 400, "the daemon peaked at {peak} MiB");
    }
    let mut c = RawClient::connect(&env.socket).await;
    assert!(!c.status().await.providers.is_empty());
    let mut c = RawClient::connect(&env.socket).await;
    let events = c.chat(ChatRequest::user_text(2, "still here")).await;
    assert_eq!(text_of(&events), answer_for("still here"));
}

/// Every place a provider can put the key back into our words: a 400 body, an in-stream error
/// event, on every provider. None of it may reach the user, the logs or the state database.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_echoed_by_providers_never_leave_the_daemon() {
    use mythos_protocol::SimFault;
    let mocks = Mocks::start().await;
    let env = mocks.env();
    let daemon = env.start_daemon(&[]);
    let keys = ["key-anthropic", "key-deepseek", "key-openai"];
    let mut seen = String::new();
    for sim in [&mocks.anthropic, &mocks.deepseek, &mocks.openai] {
        sim.inject([SimFault::EchoKey { in_stream: true }]);
    }
    // In-stream echoes on every provider: the answer still arrives.
    let out = env.mythos(&["ask", "tell me a secret"]);
    seen.push_str(&String::from_utf8_lossy(&out.stdout));
    seen.push_str(&String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{seen}");
    // A 400 body that echoes the headers goes back to the user, scrubbed.
    for (name, sim) in [
        ("anthropic", &mocks.anthropic),
        ("deepseek", &mocks.deepseek),
        ("openai", &mocks.openai),
    ] {
        sim.inject([SimFault::EchoKey { in_stream: false }]);
        let out = env.mythos(&["ask", "--provider", name, "again"]);
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(err.contains("***"), "{err}");
        seen.push_str(&err);
    }
    for args in [
        &["status"][..],
        &["status", "--json"],
        &["why", "last"],
        &["why", "1"],
        &["usage"],
    ] {
        let out = env.mythos(args);
        seen.push_str(&String::from_utf8_lossy(&out.stdout));
        seen.push_str(&String::from_utf8_lossy(&out.stderr));
    }
    let mut c = RawClient::connect(&env.socket).await;
    seen.push_str(&format!("{:?}", c.status().await));
    drop(c);
    assert!(daemon.stop().success());
    for key in keys {
        assert!(!seen.contains(key), "{key} reached the user: {seen}");
    }
    for file in files_under(&env.state) {
        let bytes = std::fs::read(&file).unwrap_or_default();
        let text = String::from_utf8_lossy(&bytes);
        for key in keys {
            assert!(!text.contains(key), "{key} leaked into {}", file.display());
        }
    }
}

/// A continuing model that repeats the last words it saw, verbatim or with other capitals and
/// spacing, on each wire format: the user reads every word once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn continuations_that_repeat_the_tail_are_shown_once() {
    use mythos_protocol::SimFault;
    use mythosd::sim::SimContinuation;
    let mocks = Mocks::start().await;
    let env = mocks.env();
    let _daemon = env.start_daemon(&[]);
    let mut c = RawClient::connect(&env.socket).await;
    let cases = [
        (3, false, "repeats three words", 9),
        (2, true, "repeats two, shouting and spaced out", 9),
        (5, false, "repeats five", 9),
        // Cut after its first word, the answer is repeated from its start: "ThisThis is…"
        // reached clients in a chaos run.
        (3, false, "starts over after one word", 1),
        (2, true, "starts over after one word, shouting", 1),
    ];
    for (n, (words, vary, case, cut)) in cases.into_iter().enumerate() {
        for sim in [&mocks.anthropic, &mocks.deepseek, &mocks.openai] {
            sim.set_continuation(SimContinuation {
                repeat_words: words,
                vary,
            });
            // Whichever is asked first breaks after `cut` chunks; the next continues it.
            sim.inject([SimFault::DisconnectAfter { tokens: cut }]);
        }
        let prompt = format!("seam case {n}");
        let ev = c.chat(ChatRequest::user_text(n as u64 + 1, &prompt)).await;
        assert_eq!(text_of(&ev), answer_for(&prompt), "{case}");
        assert!(
            ev.iter().any(|e| matches!(e, StreamEvent::Rerouted { .. })),
            "{case}: no reroute happened"
        );
        for sim in [&mocks.anthropic, &mocks.deepseek, &mocks.openai] {
            // Faults not used by this case must not leak into the next.
            sim.clear_faults();
        }
    }
}

/// Connections that say hello and go quiet must not lock the user out, even past the
/// connection cap and with the file-descriptor limit at 256.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_and_a_low_fd_limit_do_not_lock_users_out() {
    let mocks = Mocks::start().await;
    let env = mocks.env();
    let daemon = env.start_daemon_with_fd_limit(&[], 256);
    let mut idle = Vec::new();
    for _ in 0..300 {
        idle.push(RawClient::connect(&env.socket).await);
    }
    let out = env.mythos(&["status"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = env.mythos(&["ask", "still there?"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim_end(),
        answer_for("still there?")
    );
    drop(idle);
    assert!(daemon.stop().success());
    // No flood of accept errors in the log.
    let log = read_logs(&env.state);
    assert!(log.matches("accept failed").count() <= 1, "{log}");
}

fn read_logs(state: &std::path::Path) -> String {
    files_under(&state.join("logs"))
        .into_iter()
        .map(|f| std::fs::read_to_string(f).unwrap_or_default())
        .collect()
}

/// A config value that would make every request fail or sleep forever is refused at start,
/// with its line.
#[test]
fn absurd_config_values_are_refused_with_their_line() {
    let env = TestEnv::new();
    env.write_config("[routing]\ncooldown_secs = 9223372036854775807\n");
    let out = env.mythos(&["status"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("line 2") && err.contains("cooldown_secs"),
        "{err}"
    );
}

/// Only a socket is ever removed at the socket path; anything else stays, and the daemon says
/// why it cannot start.
#[test]
fn a_file_at_the_socket_path_is_never_deleted() {
    let env = TestEnv::new();
    std::fs::create_dir_all(env.socket.parent().unwrap()).unwrap();
    std::fs::write(&env.socket, b"precious").unwrap();
    let out = env
        .command("mythosd")
        .args(["--simulate", "--notify-stdout"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let line = String::from_utf8_lossy(&out.stdout);
    assert!(line.contains("not a socket"), "{line}");
    assert_eq!(std::fs::read(&env.socket).unwrap(), b"precious");
}

/// A daemon whose socket file was deleted would be unreachable yet hold the lock: it shuts
/// down, and the next command starts a new one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_daemon_that_lost_its_socket_file_makes_way() {
    let env = TestEnv::new();
    let mut daemon = env.start_daemon(&["--simulate"]);
    std::fs::remove_file(&env.socket).unwrap();
    daemon.exits("the daemon").await;
    let out = env.mythos(&["status"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let _ = env.mythos(&["daemon", "stop"]);
}

/// Tightening or sharing the socket (`chmod`, `chown`) is not losing it: the daemon keeps
/// serving, and still removes its own file when it stops. (It took the moved change time for a
/// replacement and shut down a second later.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chmod_of_the_socket_does_not_stop_the_daemon() {
    use std::os::unix::fs::PermissionsExt;
    let env = TestEnv::new();
    let mut daemon = env.start_daemon(&["--simulate"]);
    std::fs::set_permissions(&env.socket, std::fs::Permissions::from_mode(0o660)).unwrap();
    // The daemon looks at its file once a second: past two looks.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert!(
        daemon.child.try_wait().unwrap().is_none(),
        "the daemon stopped"
    );
    let out = env.mythos(&["status"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(env.mythos(&["daemon", "stop"]).status.success());
    daemon.exits("the daemon").await;
    assert!(!env.socket.exists(), "its socket file was left behind");
}

/// A daemon whose socket path another daemon took over (its runtime directory emptied, a
/// client started a new one) stops, and leaves the new one's file alone, even when the new
/// file got the old one's inode number back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_daemon_whose_socket_was_taken_over_makes_way() {
    let env = TestEnv::new();
    let mut first = env.start_daemon(&["--simulate"]);
    std::fs::remove_file(&env.socket).unwrap();
    let mut lock = env.socket.clone().into_os_string();
    lock.push(".lock");
    let _ = std::fs::remove_file(&lock);
    let _second = env.start_daemon(&["--simulate"]);
    first.exits("the first daemon").await;
    let out = env.mythos(&["status"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(env.socket.exists());
    let _ = env.mythos(&["daemon", "stop"]);
}

/// A private daemon (`mythos demo`, `chat --demo`) dies with the process that started it, and
/// takes its temp dir with it, even when that process could not clean up (its terminal closed).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_private_daemon_dies_with_its_owner() {
    let env = TestEnv::new();
    let private = env.dir.path().join("private");
    std::fs::create_dir_all(&private).unwrap();
    let mut owner = std::process::Command::new("sleep")
        .arg("1")
        .spawn()
        .unwrap();
    let pid = owner.id().to_string();
    let mut daemon = env.start_daemon(&[
        "--simulate",
        "--owner-pid",
        &pid,
        "--remove-dir",
        private.to_str().unwrap(),
    ]);
    owner.wait().unwrap();
    daemon.exits("the daemon").await;
    assert!(!private.exists());
}

/// Another user must not be able to pose as the daemon (a socket or directory of theirs), nor
/// talk to it. Needs root for chown and setuid; the directory check runs for anyone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_users_can_neither_pose_as_the_daemon_nor_reach_it() {
    use std::os::unix::fs::PermissionsExt;
    let env = TestEnv::new();
    let _daemon = env.start_daemon(&["--simulate"]);
    let dir = env.socket.parent().unwrap().to_path_buf();
    let refused = |why: &str| {
        let out = env.mythos(&["status"]);
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(!out.status.success(), "{why}: {err}");
        assert!(err.contains("refusing to talk"), "{why}: {err}");
    };
    // A directory anyone can write to: the socket could be anyone's.
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
    refused("world-writable directory");
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();
    assert!(env.mythos(&["status"]).status.success());

    // SAFETY: getuid has no preconditions.
    if unsafe { libc::getuid() } != 0 {
        eprintln!("not root: the other-uid cases need chown and setuid");
        return;
    }
    let nobody = 65534;
    // A socket that belongs to someone else.
    std::os::unix::fs::lchown(&env.socket, Some(nobody), None).unwrap();
    refused("socket of another uid");
    std::os::unix::fs::lchown(&env.socket, Some(0), None).unwrap();

    // Another user who can reach the socket still gets nothing: the daemon checks the peer.
    for d in [env.dir.path(), dir.parent().unwrap(), &dir] {
        std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    std::fs::set_permissions(&env.socket, std::fs::Permissions::from_mode(0o666)).unwrap();
    let hello = br#"{"magic":"mythos","protocol":9,"build":"x","encodings":["json"]}"#;
    let script = format!(
        "import socket,struct,sys\ns=socket.socket(socket.AF_UNIX)\ns.connect({:?})\n\
         sys.stdout.write('connected ')\nh={:?}.encode()\n\
         try:\n  s.sendall(struct.pack('>I',len(h))+h)\nexcept OSError:\n  pass\n\
         s.settimeout(5)\nsys.stdout.write('got:'+repr(s.recv(100)))",
        env.socket.to_str().unwrap(),
        std::str::from_utf8(hello).unwrap()
    );
    use std::os::unix::process::CommandExt;
    match std::process::Command::new("python3")
        .args(["-c", &script])
        .uid(nobody)
        .output()
    {
        Ok(out) => {
            let said = String::from_utf8_lossy(&out.stdout);
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(said.contains("connected"), "could not even connect: {err}");
            assert!(
                said.contains("got:b''") || err.contains("ConnectionResetError"),
                "the daemon answered another user: {said} {err}"
            );
        }
        Err(e) => eprintln!("python3 is not available ({e}): peer check not exercised"),
    }
}

/// A pause or a trip is on disk within 100 ms: a `kill -9` right after does not lose it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_right_after_a_429_keeps_the_pause() {
    use mythos_protocol::{BreakerState, Request, SimFault};
    let mocks = Mocks::start().await;
    let env = mocks.env();
    for trial in 0..5 {
        let daemon = env.start_daemon(&[]);
        let mut c = RawClient::connect(&env.socket).await;
        mocks.anthropic.inject([SimFault::RateLimit {
            retry_after_ms: 600_000,
        }]);
        // Pinned, so the 429 comes straight back: the moment the client knows, 100 ms to go.
        let mut req = ChatRequest::user_text(1, "trip");
        req.pin = Some(mythos_protocol::Pin {
            provider: Some("anthropic".into()),
            model: None,
        });
        c.send(Request::Chat(req)).await;
        loop {
            if let Response::Event {
                event: StreamEvent::Error { .. },
                ..
            } = c.recv().await
            {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        daemon.signal(libc::SIGKILL);
        drop(daemon);
        let _daemon = env.start_daemon(&[]);
        let mut c = RawClient::connect(&env.socket).await;
        let s = c.status().await;
        let a = s.providers.iter().find(|p| p.name == "anthropic").unwrap();
        assert_eq!(a.state, BreakerState::RateLimited, "trial {trial}: {a:?}");
        drop(c);
        // Start the next trial from a healthy provider, with no daemon running.
        assert!(env.mythos(&["reset", "anthropic"]).status.success());
        let out = env.mythos(&["daemon", "stop"]);
        assert!(out.status.success(), "{out:?}");
    }
}

/// A corrupt state database is kept aside, a fresh one is started, and `status` says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_state_database_is_kept_aside_and_reported() {
    let env = TestEnv::new();
    std::fs::create_dir_all(&env.state).unwrap();
    std::fs::write(env.state.join("state.db"), b"not sqlite at all").unwrap();
    let _daemon = env.start_daemon(&["--simulate"]);
    let out = env.mythos(&["status"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    assert!(
        text.contains("note: the state database was unreadable"),
        "{text}"
    );
    let aside = std::fs::read_dir(&env.state)
        .unwrap()
        .flatten()
        .find(|e| e.file_name().to_string_lossy().contains("corrupt"))
        .expect("the old file, kept");
    assert_eq!(std::fs::read(aside.path()).unwrap(), b"not sqlite at all");
    // And it routes and records as usual.
    assert!(env.mythos(&["ask", "hello"]).status.success());
    assert!(env.mythos(&["why", "last"]).status.success());
}

/// A client that sends many requests and reads none of them (a hung editor, a script that
/// never reads) cannot take every provider stream from everybody else: one connection runs at
/// most 32 streams at once, so another session is answered at once, not after a queue timeout.
/// (That a stuck client's streams are given up after `CLIENT_READ_TIMEOUT` is tested with a
/// paused clock in the router's tests.) Nor can it hold up the daemon's shutdown.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_reads_does_not_starve_the_others() {
    let mocks = Mocks::start().await;
    // Long answers, so the stuck client's streams fill its socket and its channel and block.
    mocks.openai.set_answer_repeat(20);
    let env = TestEnv::new();
    env.write_config(&format!(
        "[routing]\nmax_queue_wait_ms = 30000\ndrain_timeout_secs = 1\n\
         [[provider]]\nname = \"only\"\napi = \"openai\"\nbase_url = \"{}\"\nmodel = \"m\"\n\
         api_key = \"key-openai\"\nmax_concurrent = 40\n",
        mocks.openai.base_url()
    ));
    let daemon = env.start_daemon(&[]);
    let mut stuck = RawClient::connect(&env.socket).await;
    for id in 1..=100 {
        stuck
            .send(Request::Chat(ChatRequest::user_text(id, "fill the pipe")))
            .await;
    }
    // Its 32 streams have reached the provider (the rest were refused) before the other
    // session asks.
    let t0 = std::time::Instant::now();
    while mocks.openai.stats().requests < 32 {
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "the stuck client's streams never opened"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let started = std::time::Instant::now();
    let mut other = RawClient::connect(&env.socket).await;
    let events = tokio::time::timeout(
        Duration::from_secs(20),
        other.chat(ChatRequest::user_text(1, "my turn")),
    )
    .await
    .expect("another session was kept waiting behind a client that reads nothing");
    assert!(
        matches!(events.last(), Some(StreamEvent::Done(_))),
        "{:?}",
        events.last()
    );
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "answered only after {:?}",
        started.elapsed()
    );
    // The daemon stops within its drain time (1 s here) and a little more, although this client
    // still reads nothing: its connection waited for room to queue a refusal, and its writer
    // for room in the socket, past the stop.
    let t0 = std::time::Instant::now();
    let status = tokio::task::spawn_blocking(move || daemon.stop())
        .await
        .unwrap();
    assert!(status.success(), "{status:?}");
    assert!(
        t0.elapsed() < Duration::from_secs(4),
        "stopped after {:?}",
        t0.elapsed()
    );
    drop(stuck);
}

/// Another user's symbolic link where the daemon would make its socket directory (a shared
/// `$TMPDIR` without XDG_RUNTIME_DIR) is refused: following it, the daemon tightened and used
/// a directory of that user's choosing.
#[test]
fn another_users_symlink_is_not_taken_for_the_socket_directory() {
    use std::os::unix::fs::PermissionsExt;
    // SAFETY: getuid has no preconditions.
    if unsafe { libc::getuid() } != 0 {
        eprintln!("not root: planting another user's link needs lchown");
        return;
    }
    let mut env = TestEnv::new();
    let victim = env.dir.path().join("victim");
    std::fs::create_dir(&victim).unwrap();
    std::fs::set_permissions(&victim, std::fs::Permissions::from_mode(0o755)).unwrap();
    let shared = env.dir.path().join("shared");
    std::fs::create_dir(&shared).unwrap();
    let link = shared.join("mythos-0");
    std::os::unix::fs::symlink(&victim, &link).unwrap();
    std::os::unix::fs::lchown(&link, Some(65534), None).unwrap();
    env.var("MYTHOS_SOCKET", link.join("mythosd.sock").to_str().unwrap());
    let out = env
        .command("mythosd")
        .arg("--simulate")
        .output()
        .expect("mythosd runs");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "started on another user's link: {err}"
    );
    assert!(err.contains("symbolic link"), "{err}");
    let mode = std::fs::metadata(&victim).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o755, "the linked directory was changed");
    assert_eq!(std::fs::read_dir(&victim).unwrap().count(), 0);
}

/// Large requests share one memory budget over both front ends (`[server]
/// max_request_memory_mib`, 16 MiB here): each could be held on its own, but 40 bodies of
/// 31 MB at once took the daemon to 2.3 GB. A request's bytes are held before they are read
/// and until it is answered; one that does not fit waits a moment, then gets a 503 with
/// `retry-after` in its API's error shape (the SDKs retry it), or an `overloaded` error on the
/// socket; small requests are answered meanwhile, and a large one goes once room frees.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_requests_share_a_memory_budget_and_small_ones_get_through() {
    use serde_json::{json, Value};
    const MIB: usize = 1 << 20;
    let mocks = Mocks::start().await;
    let env = mocks.env();
    env.write_config("[server]\nmax_request_memory_mib = 16\n");
    let daemon = env.start_daemon(&[]);
    let (base, token) = env.http();
    let addr = base.trim_start_matches("http://").to_string();
    let http = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap();
    let held_now = || {
        let (http, base) = (http.clone(), base.clone());
        async move {
            mythos_tests::metrics_text(&http, &base)
                .await
                .lines()
                .find_map(|l| l.strip_prefix("mythos_request_memory_bytes "))
                .and_then(|v| v.parse::<f64>().ok())
                .expect("mythos_request_memory_bytes") as usize
        }
    };
    let held_becomes = |want: usize| {
        let held_now = &held_now;
        async move {
            let t0 = std::time::Instant::now();
            loop {
                let now = held_now().await;
                if now == want {
                    return;
                }
                assert!(t0.elapsed() < Duration::from_secs(20), "{now} bytes held");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };

    // One HTTP client and one socket client each announce 6 MiB and send a little of it.
    let mut http_holder = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let head = format!(
        "POST /v1/messages HTTP/1.1\r\nHost: {addr}\r\nx-api-key: {token}\r\n\
         content-type: application/json\r\ncontent-length: {}\r\n\r\n",
        6 * MIB
    );
    http_holder.write_all(head.as_bytes()).await.unwrap();
    http_holder.write_all(&[b' '; 1024]).await.unwrap();
    let mut socket_holder = RawClient::connect(&env.socket).await;
    let mut partial = ((6 * MIB) as u32).to_be_bytes().to_vec();
    partial.extend_from_slice(&[0; 1024]);
    socket_holder
        .framed
        .get_mut()
        .write_all(&partial)
        .await
        .unwrap();
    held_becomes(12 * MIB).await;

    let large = |path: &'static str| {
        let (http, base, token) = (http.clone(), base.clone(), token.clone());
        async move {
            let text = "x".repeat(6 * MIB);
            let body = json!({"model": "mythos", "max_tokens": 64,
                              "messages": [{"role": "user", "content": text}]});
            let r = http
                .post(format!("{base}{path}"))
                .header("x-api-key", &token)
                .header("content-type", "application/json")
                .body(body.to_string())
                .send()
                .await
                .unwrap();
            let status = r.status().as_u16();
            let retry_after = r
                .headers()
                .get("retry-after")
                .map(|v| v.to_str().unwrap().to_string());
            let v: Value = serde_json::from_slice(&r.bytes().await.unwrap()).unwrap();
            (status, retry_after, v)
        }
    };
    let frame_of = |len: usize| {
        let socket = env.socket.clone();
        async move {
            let mut c = RawClient::connect(&socket).await;
            let mut frame = (len as u32).to_be_bytes().to_vec();
            frame.resize(4 + len, 0);
            c.framed.get_mut().write_all(&frame).await.unwrap();
            match c.recv().await {
                Response::Error { kind, message } => (kind, message),
                other => panic!("{other:?}"),
            }
        }
    };
    let small = async {
        let t0 = std::time::Instant::now();
        let r = http
            .post(format!("{base}/v1/messages"))
            .header("x-api-key", &token)
            .body(
                json!({"model": "mythos", "max_tokens": 64,
                       "messages": [{"role": "user", "content": "small one"}]})
                .to_string(),
            )
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let v: Value = serde_json::from_slice(&r.bytes().await.unwrap()).unwrap();
        assert_eq!(v["content"][0]["text"], answer_for("small one"));
        let mut c = RawClient::connect(&env.socket).await;
        let events = c
            .chat(ChatRequest::user_text(1, "small on the socket"))
            .await;
        assert_eq!(text_of(&events), answer_for("small on the socket"));
        t0.elapsed()
    };
    let (anthropic, openai, socket_busy, socket_too_large, small_took) = tokio::join!(
        large("/v1/messages"),
        large("/v1/chat/completions"),
        frame_of(6 * MIB),
        frame_of(15 * MIB),
        small,
    );
    let (status, retry_after, v) = anthropic;
    assert_eq!(status, 503, "{v}");
    assert_eq!(retry_after.as_deref(), Some("5"));
    assert_eq!(v["type"], "error");
    assert_eq!(v["error"]["type"], "overloaded_error", "{v}");
    let message = v["error"]["message"].as_str().unwrap();
    assert!(message.contains("max_request_memory_mib"), "{message}");
    let (status, retry_after, v) = openai;
    assert_eq!(status, 503, "{v}");
    assert!(retry_after.is_some());
    assert_eq!(v["error"]["code"], "overloaded", "{v}");
    assert_eq!(socket_busy.0, ErrorKind::Overloaded, "{}", socket_busy.1);
    assert_eq!(socket_too_large.0, ErrorKind::BadRequest);
    assert!(
        socket_too_large.1.contains("max_request_memory_mib"),
        "{}",
        socket_too_large.1
    );
    assert!(
        small_took < Duration::from_secs(4),
        "small requests waited {small_took:?} behind large ones"
    );
    // A body that could never fit is a 413, at once.
    let r = http
        .post(format!("{base}/v1/messages"))
        .header("x-api-key", &token)
        .body(vec![b' '; 15 * MIB])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
    let v: Value = serde_json::from_slice(&r.bytes().await.unwrap()).unwrap();
    assert_eq!(v["error"]["type"], "request_too_large", "{v}");

    // The holders leave; a large request waiting for room goes.
    held_becomes(12 * MIB).await;
    let counted = tokio::spawn(large("/v1/messages/count_tokens"));
    drop(http_holder);
    drop(socket_holder);
    let (status, _, v) = counted.await.unwrap();
    assert_eq!(status, 200, "{v}");
    assert!(v["input_tokens"].as_u64().unwrap() > 100_000, "{v}");
    held_becomes(0).await;

    // The daemon never grew far: what the budget holds and what it decoded.
    if let Some(peak) = daemon.peak_rss_mib() {
        assert!(peak < 200, "the daemon peaked at {peak} MiB");
    }
}

/// Idle TCP connections to the HTTP front end past the daemon's file-descriptor limit must not
/// lock an editor or agent out: a request made behind a few hundred of them is answered at once
/// (the connection cap, scaled to the limit, pushes idle ones out before descriptors run out),
/// and the log does not fill with accept errors.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_http_connections_past_the_fd_limit_do_not_lock_users_out() {
    let mocks = Mocks::start().await;
    let env = mocks.env();
    let daemon = env.start_daemon_with_fd_limit(&[], 256);
    let (base, token) = env.http();
    let addr = base.trim_start_matches("http://").to_string();
    // Connected by the kernel (the listener's backlog), never a byte sent: far more than the
    // daemon can hold open.
    let mut idle = Vec::new();
    for _ in 0..400 {
        idle.push(tokio::net::TcpStream::connect(&addr).await.unwrap());
    }
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let started = std::time::Instant::now();
    let reply = tokio::time::timeout(
        Duration::from_secs(30),
        http.post(format!("{base}/v1/chat/completions"))
            .bearer_auth(&token)
            .header("content-type", "application/json")
            .body(
                serde_json::json!({
                    "model": "mythos",
                    "messages": [{"role": "user", "content": "still there?"}],
                })
                .to_string(),
            )
            .send(),
    )
    .await
    .expect("the request was not answered within 30 s")
    .expect("request");
    let waited = started.elapsed();
    assert_eq!(reply.status(), 200);
    let body: serde_json::Value = serde_json::from_slice(&reply.bytes().await.unwrap()).unwrap();
    assert_eq!(
        body["choices"][0]["message"]["content"].as_str(),
        Some(answer_for("still there?").as_str())
    );
    assert!(
        waited < Duration::from_secs(3),
        "answered only after {waited:?} behind idle connections"
    );
    drop(idle);
    assert!(daemon.stop().success());
    let log = read_logs(&env.state);
    assert!(log.matches("HTTP accept failed").count() <= 1, "{log}");
}
