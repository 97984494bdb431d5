//! `mythos status --watch` driven in a pseudo-terminal, as a person runs it: frames redraw in
//! place, `q` quits, and the terminal is given back as it was. Piped, it prints plain lines.
#![cfg(unix)]

use std::io::{Read, Write};
use std::os::fd::{FromRawFd, OwnedFd};
use std::process::Stdio;
use std::time::{Duration, Instant};

use mythos_protocol::{ChatRequest, Request, SimFault, StreamEvent};
use mythos_tests::TestEnv;

/// A pseudo-terminal: (master, slave).
fn openpty() -> (OwnedFd, OwnedFd) {
    let (mut master, mut slave) = (0, 0);
    // SAFETY: openpty writes two new descriptors we then own; no name or settings passed.
    let r = unsafe {
        libc::openpty(
            &mut master,
            &mut slave,
            std::ptr::null_mut(),
            std::ptr::null(),
            std::ptr::null(),
        )
    };
    assert_eq!(r, 0, "openpty: {}", std::io::Error::last_os_error());
    // SAFETY: both are fresh descriptors owned by nobody else.
    unsafe { (OwnedFd::from_raw_fd(master), OwnedFd::from_raw_fd(slave)) }
}

/// Read from the master until `done(all)` or the deadline; everything read.
fn read_until(
    master: &mut std::fs::File,
    deadline: Instant,
    done: impl Fn(&str) -> bool,
) -> String {
    let mut all = Vec::new();
    let mut buf = [0u8; 4096];
    while Instant::now() < deadline {
        match master.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                all.extend_from_slice(&buf[..n]);
                if done(&String::from_utf8_lossy(&all)) {
                    break;
                }
            }
        }
    }
    String::from_utf8_lossy(&all).into_owned()
}

#[test]
fn watch_redraws_in_place_and_q_quits() {
    let env = TestEnv::new();
    let _daemon = env.start_daemon(&["--simulate"]);
    // One failover to show: the primary is overloaded once.
    tokio::runtime::Runtime::new().unwrap().block_on(async {
        let mut c = env.connect().await;
        c.send(Request::SimInject {
            provider: "sim-anthropic".into(),
            faults: vec![SimFault::Overloaded],
        })
        .await;
        c.recv().await;
        let events = c.chat(ChatRequest::user_text(1, "fail over")).await;
        assert!(
            matches!(events.last(), Some(StreamEvent::Done(_))),
            "{events:?}"
        );
    });
    let (master, slave) = openpty();
    let mut cmd = env.command("mythos");
    cmd.args(["status", "--watch", "--interval-ms", "200"])
        .stdin(Stdio::from(slave.try_clone().unwrap()))
        .stdout(Stdio::from(slave.try_clone().unwrap()))
        .stderr(Stdio::from(slave));
    let mut child = cmd.spawn().expect("spawn mythos");
    let mut master = std::fs::File::from(master);

    // Three frames, each starting with clear-and-home.
    let deadline = Instant::now() + Duration::from_secs(20);
    let seen = read_until(&mut master, deadline, |s| {
        s.matches("\x1b[H\x1b[2J").count() >= 3
    });
    assert!(seen.matches("\x1b[H\x1b[2J").count() >= 3, "{seen:?}");
    assert!(
        seen.contains("sim-anthropic") && seen.contains("q to quit"),
        "{seen:?}"
    );
    assert!(
        seen.contains("\x1b[?25l"),
        "the cursor is hidden while watching"
    );
    assert!(
        seen.contains("recent failovers")
            && seen.contains("sim-anthropic -> sim-deepseek  (overloaded)"),
        "{seen:?}"
    );

    master.write_all(b"q").unwrap();
    let rest = read_until(&mut master, Instant::now() + Duration::from_secs(10), |s| {
        s.contains("\x1b[?25h")
    });
    let t0 = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(t0.elapsed() < Duration::from_secs(10), "q did not quit");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success());
    assert!(
        rest.contains("\x1b[?25h"),
        "the cursor is shown again: {rest:?}"
    );
}

#[test]
fn watch_piped_prints_plain_lines() {
    let env = TestEnv::new();
    let _daemon = env.start_daemon(&["--simulate"]);
    let out = env.mythos(&["status", "--watch", "--interval-ms", "100", "--count", "2"]);
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        !text.contains('\x1b'),
        "no escape codes when piped: {text:?}"
    );
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 8, "4 providers x 2 refreshes: {text}");
    assert!(
        lines[0].contains("sim-anthropic state=healthy score="),
        "{text}"
    );

    // Once a provider announced quotas of several kinds (sim-anthropic: requests, input and
    // output tokens), each line still splits on spaces into its seven fields: `input
    // tokens:200000` made it eight and put a field without its `=`.
    let ask = env.mythos(&["ask", "--provider", "sim-anthropic", "hi"]);
    assert!(ask.status.success(), "{ask:?}");
    let out = env.mythos(&["status", "--watch", "--count", "1"]);
    let text = String::from_utf8(out.stdout).unwrap();
    let line = text
        .lines()
        .find(|l| l.contains("sim-anthropic"))
        .expect("a line for sim-anthropic");
    assert!(line.contains("input_tokens:"), "{line}");
    let fields: Vec<&str> = line.split(' ').collect();
    assert_eq!(fields.len(), 7, "{line}");
    assert!(fields[2..].iter().all(|f| f.contains('=')), "{line}");
}
