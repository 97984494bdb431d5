//! `mythos chat` as a user at a terminal runs it: the real binary on a pseudo-terminal, with
//! its private demo daemon (`--demo`, simulated providers), typed at and read back through a
//! small model of the screen, so a test sees what the user sees (wrapped rows, lines erased
//! and re-drawn) rather than the bytes that drew it.

#![cfg(unix)]

use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use mythos_tests::TestEnv;

/// The simulated providers' answer to `question` (their text is fixed).
fn sim_answer(question: &str) -> String {
    format!(
        "This is a simulated answer to \"{question}\". mythos sends each request to the \
         healthiest provider, retries brief failures with backoff, and cools down a provider \
         that keeps failing. When a stream breaks in the middle of an answer, the next provider \
         is asked to continue exactly where the text stopped, so nothing is lost and nothing is \
         repeated."
    )
}

/// What a terminal `cols` wide shows: printable text with auto-wrap, `\r`, `\n`, cursor up and
/// down, erase to the end of the line or screen; colours and modes are ignored.
struct Screen {
    cols: usize,
    rows: Vec<Vec<char>>,
    row: usize,
    col: usize,
    /// The last column was written: the next character goes to the next row (as xterm does).
    pending_wrap: bool,
}

impl Screen {
    fn new(cols: usize) -> Screen {
        Screen {
            cols,
            rows: vec![Vec::new()],
            row: 0,
            col: 0,
            pending_wrap: false,
        }
    }

    fn line_mut(&mut self) -> &mut Vec<char> {
        while self.rows.len() <= self.row {
            self.rows.push(Vec::new());
        }
        &mut self.rows[self.row]
    }

    fn feed(&mut self, bytes: &[u8]) {
        let text = String::from_utf8_lossy(bytes);
        let mut chars = text.chars().peekable();
        while let Some(c) = chars.next() {
            match c {
                '\r' => {
                    self.col = 0;
                    self.pending_wrap = false;
                }
                '\n' => {
                    self.row += 1;
                    self.pending_wrap = false;
                    self.line_mut();
                }
                '\x07' => {}
                '\x1b' => match chars.next() {
                    Some('[') => {
                        let mut params = String::new();
                        let mut end = ' ';
                        for p in chars.by_ref() {
                            if p.is_ascii_alphabetic() || p == '~' {
                                end = p;
                                break;
                            }
                            params.push(p);
                        }
                        let n = params
                            .trim_start_matches('?')
                            .parse::<usize>()
                            .unwrap_or(1)
                            .max(1);
                        self.pending_wrap = false;
                        match end {
                            'A' => self.row = self.row.saturating_sub(n),
                            'B' => self.row += n,
                            'C' => self.col = (self.col + n).min(self.cols - 1),
                            'D' => self.col = self.col.saturating_sub(n),
                            'K' => {
                                let col = self.col;
                                self.line_mut().truncate(col);
                            }
                            'J' => {
                                let col = self.col;
                                self.line_mut().truncate(col);
                                self.rows.truncate(self.row + 1);
                            }
                            _ => {}
                        }
                    }
                    // An OSC string, up to BEL or ST.
                    Some(']') => {
                        while let Some(p) = chars.next() {
                            if p == '\x07' || (p == '\x1b' && chars.next_if_eq(&'\\').is_some()) {
                                break;
                            }
                        }
                    }
                    _ => {}
                },
                c if c.is_control() => {}
                c => {
                    if self.pending_wrap {
                        self.row += 1;
                        self.col = 0;
                        self.pending_wrap = false;
                    }
                    let col = self.col;
                    let line = self.line_mut();
                    while line.len() < col {
                        line.push(' ');
                    }
                    if line.len() == col {
                        line.push(c);
                    } else {
                        line[col] = c;
                    }
                    if self.col + 1 == self.cols {
                        self.pending_wrap = true;
                    } else {
                        self.col += 1;
                    }
                }
            }
        }
    }

    /// The rows, without trailing blanks.
    fn lines(&self) -> Vec<String> {
        self.rows
            .iter()
            .map(|r| r.iter().collect::<String>().trim_end().to_string())
            .collect()
    }
}

/// `mythos chat` running on a pseudo-terminal.
struct Tty {
    master: std::fs::File,
    child: Child,
    /// Everything read so far.
    output: Vec<u8>,
    cols: usize,
    /// Its environment (socket, state, config).
    env: TestEnv,
}

impl Tty {
    /// Start `mythos ARGS` on a terminal `cols` wide, with `vars` set.
    fn start(args: &[&str], cols: u16, vars: &[(&str, &str)]) -> Tty {
        Tty::start_in(TestEnv::new(), args, cols, vars)
    }

    /// [`Tty::start`] in `env`.
    fn start_in(env: TestEnv, args: &[&str], cols: u16, vars: &[(&str, &str)]) -> Tty {
        Tty::start_with(env, args, cols, vars, None)
    }

    /// [`Tty::start_in`], with stdout going to `stdout` instead of the terminal if given.
    fn start_with(
        env: TestEnv,
        args: &[&str],
        cols: u16,
        vars: &[(&str, &str)],
        stdout: Option<std::fs::File>,
    ) -> Tty {
        let (mut master, mut slave) = (0, 0);
        let size = libc::winsize {
            ws_row: 40,
            ws_col: cols,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: openpty fills the two descriptors; the name and termios may be null.
        let rc = unsafe {
            libc::openpty(
                &mut master,
                &mut slave,
                std::ptr::null_mut(),
                std::ptr::null(),
                &size,
            )
        };
        assert_eq!(rc, 0, "openpty: {}", std::io::Error::last_os_error());
        // SAFETY: fcntl on the descriptor just opened. Without close-on-exec the chat (and its
        // daemon) would hold the master open: a test that fails would leave them waiting on a
        // terminal that never hangs up.
        unsafe { libc::fcntl(master, libc::F_SETFD, libc::FD_CLOEXEC) };
        // SAFETY: both descriptors were just opened and are owned here alone.
        let (master, slave) =
            unsafe { (OwnedFd::from_raw_fd(master), OwnedFd::from_raw_fd(slave)) };
        let mut cmd = env.command("mythos");
        cmd.args(args)
            .env("TERM", "xterm-256color")
            .env("HOME", env.dir.path())
            .env_remove("NO_COLOR")
            .env_remove("COLUMNS")
            .stdin(Stdio::from(slave.try_clone().expect("dup")))
            .stdout(match stdout {
                Some(file) => Stdio::from(file),
                None => Stdio::from(slave.try_clone().expect("dup")),
            })
            .stderr(Stdio::from(slave));
        for (k, v) in vars {
            cmd.env(k, v);
        }
        // SAFETY: setsid and ioctl are async-signal-safe; they run in the child before exec,
        // making the terminal its controlling one (so that Ctrl-C is a SIGINT).
        unsafe {
            cmd.pre_exec(|| {
                if libc::setsid() < 0 || libc::ioctl(0, libc::TIOCSCTTY as _, 0) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd.spawn().expect("spawn mythos chat");
        Tty {
            master: std::fs::File::from(master),
            child,
            output: Vec::new(),
            cols: cols as usize,
            env,
        }
    }

    /// Read what is there, waiting up to `wait` for more.
    fn pump(&mut self, wait: Duration) -> bool {
        let mut fds = libc::pollfd {
            fd: self.master.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one pollfd we own.
        let n = unsafe { libc::poll(&mut fds, 1, wait.as_millis() as i32) };
        if n <= 0 {
            return false;
        }
        let mut buf = [0u8; 65536];
        match self.master.read(&mut buf) {
            Ok(n) if n > 0 => {
                self.output.extend_from_slice(&buf[..n]);
                true
            }
            _ => false,
        }
    }

    /// Wait until the output (from byte `from`) holds `needle`; returns the offset after it.
    fn wait_for(&mut self, from: usize, needle: &str, within: Duration) -> usize {
        let deadline = Instant::now() + within;
        loop {
            if let Some(i) = find(
                &self.output[from.min(self.output.len())..],
                needle.as_bytes(),
            ) {
                return from + i + needle.len();
            }
            assert!(
                Instant::now() < deadline,
                "no {needle:?} within {within:?}; the screen:\n{}",
                self.screen().join("\n")
            );
            self.pump(Duration::from_millis(100));
        }
    }

    /// Wait for the next prompt after byte `from`; returns the offset after it.
    fn prompt(&mut self, from: usize) -> usize {
        self.wait_for(from, "> ", Duration::from_secs(20))
    }

    /// Type `text`.
    fn type_text(&mut self, text: &str) {
        self.master
            .write_all(text.as_bytes())
            .expect("write to the terminal");
    }

    /// Type `line` and Enter, wait for the next prompt; returns the offsets of the line's
    /// output (from the Enter to the prompt).
    fn ask(&mut self, line: &str) -> (usize, usize) {
        let start = self.output.len();
        self.type_text(&format!("{line}\r"));
        let end = self.prompt(start);
        (start, end)
    }

    /// The screen the output so far draws.
    fn screen(&self) -> Vec<String> {
        let mut s = Screen::new(self.cols);
        s.feed(&self.output);
        s.lines()
    }

    /// Ctrl-D, and the exit status.
    fn quit(mut self) -> i32 {
        self.type_text("\x04");
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            self.pump(Duration::from_millis(50));
            if let Some(status) = self.child.try_wait().expect("wait") {
                return status.code().unwrap_or(-1);
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("mythos chat did not exit on Ctrl-D");
            }
        }
    }
}

impl Drop for Tty {
    fn drop(&mut self) {
        // A failed test: the chat must not outlive it.
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// A connection cut mid-answer, on a terminal: the notice breaks the answer's line and the
/// answer goes on below it. Both halves are wrapped at word boundaries like any other line;
/// the rest of the line after the notice used to be left as it streamed, one long line the
/// terminal folded mid-word ("so nothin" / "g is lost").
#[test]
fn an_answer_continued_after_a_notice_is_wrapped_at_word_boundaries() {
    let mut tty = Tty::start(&["chat", "--demo"], 80, &[]);
    tty.prompt(0);
    tty.ask("/fault sim-anthropic disconnect");
    tty.ask("tell me");
    let screen = tty.screen();
    let notice = screen
        .iter()
        .position(|l| l.starts_with("↪ sim-anthropic failed"))
        .unwrap_or_else(|| panic!("no reroute notice:\n{}", screen.join("\n")));
    let first = screen[..notice]
        .iter()
        .rposition(|l| l.starts_with("This is a simulated answer"))
        .expect("the answer's first row");
    let footer = screen[notice..]
        .iter()
        .position(|l| l.starts_with("[sim-"))
        .map(|i| notice + i)
        .expect("the footer");
    for row in &screen[first..footer] {
        assert!(row.chars().count() <= 80, "{row:?}");
    }
    // The notice may take two rows.
    let resumed = screen[notice..]
        .iter()
        .position(|l| l.ends_with("continuing on sim-deepseek"))
        .map(|i| notice + i + 1)
        .expect("the notice's end");
    let before = screen[first..notice].join(" ");
    let after = screen[resumed..footer].join(" ");
    // Every row ends at a word boundary: the rows, joined by spaces, are the answer.
    assert_eq!(
        format!("{before} {after}"),
        sim_answer("tell me"),
        "the screen:\n{}",
        screen.join("\n")
    );
    assert_eq!(tty.quit(), 0);
}

/// `mythos daemon restart` (here: a stop and a new daemon) in another terminal while the chat
/// waits at its prompt: the next command goes to the new daemon. `/status` used to fail once
/// with "lost the connection to mythosd (Broken pipe)" and a hint that it may have crashed.
#[test]
fn a_command_after_the_daemon_restarted_reaches_the_new_daemon() {
    let env = TestEnv::new();
    let daemon = env.start_daemon(&["--simulate"]);
    let mut tty = Tty::start_in(env, &["chat"], 100, &[]);
    tty.prompt(0);
    let (start, _) = tty.ask("/status");
    tty.wait_for(start, "sim-anthropic", Duration::from_secs(5));
    let pid = daemon.child.id();
    assert!(daemon.stop().success());
    let daemon = tty.env.start_daemon(&["--simulate"]);
    assert_ne!(daemon.child.id(), pid);
    for command in ["/status", "/provider sim-openai", "/fault sim-openai 500"] {
        let (start, end) = tty.ask(command);
        let shown = String::from_utf8_lossy(&tty.output[start..end]).into_owned();
        assert!(!shown.contains("lost the connection"), "{command}: {shown}");
    }
    let screen = tty.screen().join("\n");
    assert!(
        screen.contains(&format!("pid {}", daemon.child.id())),
        "{screen}"
    );
    assert!(screen.contains("pinned to sim-openai"), "{screen}");
    assert!(
        screen.contains("sim-openai will fail its next request"),
        "{screen}"
    );
    assert_eq!(tty.quit(), 0);
}

/// `mythos chat > answers.md`: the prompt and the typed line are on the terminal, the file
/// gets the answers without a prompt or an escape code. Rustyline wrote its prompt and echo to
/// stdout: the user typed blind and the file held `> `, the typed text and terminal modes.
#[test]
fn with_stdout_in_a_file_the_prompt_stays_on_the_terminal() {
    let env = TestEnv::new();
    let path = env.dir.path().join("answers.md");
    let file = std::fs::File::create(&path).expect("create answers.md");
    let mut tty = Tty::start_with(env, &["chat", "--demo"], 80, &[], Some(file));
    tty.prompt(0);
    let (start, _) = tty.ask("tell me");
    tty.wait_for(start, "tell me", Duration::from_secs(1));
    let text = std::fs::read_to_string(&path).expect("read answers.md");
    assert!(text.contains(&sim_answer("tell me")), "{text:?}");
    assert!(!text.contains('\x1b') && !text.contains("> "), "{text:?}");
    // The banner is for the person at the terminal, not for the file of answers.
    assert!(!text.contains("/help for commands"), "{text:?}");
    let shown = String::from_utf8_lossy(&tty.output).into_owned();
    assert!(shown.contains("/help for commands"), "{shown:?}");
    // So are what commands say: they went into the file.
    tty.ask("/help");
    tty.ask("/task code");
    tty.ask("/status");
    let text = std::fs::read_to_string(&path).expect("read answers.md");
    assert_eq!(text.trim(), sim_answer("tell me"), "{text:?}");
    let shown = String::from_utf8_lossy(&tty.output).into_owned();
    for said in ["/provider NAME", "task: code", "sim-deepseek"] {
        assert!(shown.contains(said), "{said}: {shown:?}");
    }
    assert_eq!(tty.quit(), 0);
}

/// `TERM=dumb` with stdout in a file: the prompt is on the terminal, not in the file
/// (rustyline, which cannot drive such a terminal, prompted on stdout).
#[test]
fn a_dumb_terminal_with_stdout_in_a_file_keeps_the_prompt_on_the_terminal() {
    let env = TestEnv::new();
    let path = env.dir.path().join("answers.md");
    let file = std::fs::File::create(&path).expect("create answers.md");
    let mut tty = Tty::start_with(
        env,
        &["chat", "--demo"],
        80,
        &[("TERM", "dumb")],
        Some(file),
    );
    tty.prompt(0);
    let (start, _) = tty.ask("tell me");
    tty.wait_for(start, "tell me", Duration::from_secs(1));
    let text = std::fs::read_to_string(&path).expect("read answers.md");
    assert_eq!(text.trim(), sim_answer("tell me"), "{text:?}");
    assert_eq!(tty.quit(), 0);
}

/// `TERM=dumb` (an Emacs shell buffer): no escape code in what the chat prints, and the
/// answer once. The rendered answer was erased and re-drawn with cursor movements, which a
/// dumb terminal shows as text, after the answer as streamed: the answer twice, with `^[[4A`.
#[test]
fn a_dumb_terminal_gets_plain_text() {
    let mut tty = Tty::start(&["chat", "--demo"], 80, &[("TERM", "dumb")]);
    tty.prompt(0);
    tty.ask("/fault sim-anthropic disconnect");
    let (start, end) = tty.ask("tell me");
    let shown = String::from_utf8_lossy(&tty.output[start..end]).into_owned();
    assert!(!shown.contains('\x1b'), "{shown:?}");
    assert_eq!(
        shown.matches("This is a simulated answer").count(),
        1,
        "{shown:?}"
    );
    assert_eq!(tty.quit(), 0);
}

/// `TERM=dumb` with stdout on the terminal: rustyline reads plain lines there and ignores the
/// text it is given to start a line with, so a line typed while an answer streamed is not held
/// back (it was taken from the terminal with the echo off and never seen again) but read and
/// answered as the plain source does. `DUMB` too: rustyline compares without case.
#[test]
fn a_dumb_terminal_loses_no_line_typed_during_an_answer() {
    for term in ["dumb", "DUMB"] {
        let mut tty = Tty::start(&["chat", "--demo"], 200, &[("TERM", term)]);
        tty.prompt(0);
        let start = tty.output.len();
        tty.type_text("tell me\r");
        tty.wait_for(start, "This is a simulated", Duration::from_secs(10));
        tty.type_text("second question\r");
        tty.wait_for(
            start,
            "simulated answer to \"second question\"",
            Duration::from_secs(20),
        );
        assert_eq!(tty.quit(), 0);
    }
}

/// A line typed with a leading space stays out of the history file, as in a shell (the editor
/// is set up for it, but the chat trimmed the line first and every line was kept).
#[test]
fn a_line_starting_with_a_space_stays_out_of_the_history() {
    let mut tty = Tty::start(&["chat", "--demo"], 80, &[]);
    tty.prompt(0);
    tty.ask("/task code");
    tty.ask(" /fault sim-secret-key 429");
    let history = tty.env.dir.path().join("xdg-state/mythos/history.txt");
    let kept = std::fs::read_to_string(&history).expect("read the history");
    assert!(kept.contains("/task code"), "{kept:?}");
    assert!(!kept.contains("sim-secret-key"), "{kept:?}");
    assert_eq!(tty.quit(), 0);
}

/// What is typed while an answer streams stays off the screen until the answer is done, then
/// waits in the editor at the prompt, lines and all, to be sent with Enter (a paste's line
/// breaks look like Enters: sent line by line, a pasted snippet was several questions). The
/// terminal echoed it into the middle of the answer, and of two lines typed ahead the second
/// was lost.
#[test]
fn what_is_typed_while_an_answer_streams_waits_in_the_editor() {
    let mut tty = Tty::start(&["chat", "--demo"], 200, &[]);
    tty.prompt(0);
    let start = tty.output.len();
    tty.type_text("tell me\r");
    // The answer has begun: type a line and the start of another before it ends.
    tty.wait_for(start, "This is a simulated", Duration::from_secs(10));
    tty.type_text("second question\r");
    tty.type_text("and a third");
    let at = tty.wait_for(start, "[sim-", Duration::from_secs(20));
    let at = tty.prompt(at);
    // Nothing was sent meanwhile; the answer on the screen is whole.
    tty.wait_for(at, "third", Duration::from_secs(5));
    tty.pump(Duration::from_millis(200));
    let screen = tty.screen();
    let first = screen
        .iter()
        .position(|l| l.starts_with("This is a simulated answer"))
        .expect("the answer");
    let footer = first
        + screen[first..]
            .iter()
            .position(|l| l.starts_with("[sim-"))
            .expect("its footer");
    assert_eq!(
        screen[first..footer].join(" "),
        sim_answer("tell me"),
        "the screen:\n{}",
        screen.join("\n")
    );
    assert_eq!(
        screen[footer + 1..],
        ["> second question", "and a third"],
        "the screen:\n{}",
        screen.join("\n")
    );
    // Enter sends it all, as one message.
    tty.type_text(" one\r");
    tty.wait_for(at, "and a third one\". mythos", Duration::from_secs(20));
    assert_eq!(tty.quit(), 0);
}

/// Ctrl-C during an answer cancels the answer, not what was typed meanwhile: it waits in the
/// editor as it would have after a finished answer. The terminal threw it away (its input is
/// flushed at an interrupt unless told not to).
#[test]
fn what_is_typed_ahead_survives_cancelling_the_answer() {
    let mut tty = Tty::start(&["chat", "--demo"], 200, &[]);
    tty.prompt(0);
    let start = tty.output.len();
    tty.type_text("tell me\r");
    tty.wait_for(start, "This is a simulated", Duration::from_secs(10));
    tty.type_text("second question\r");
    tty.type_text("half typed");
    tty.pump(Duration::from_millis(200));
    tty.type_text("\x03");
    let at = tty.wait_for(start, "cancelled", Duration::from_secs(10));
    let at = tty.prompt(at);
    tty.wait_for(at, "half typed", Duration::from_secs(5));
    tty.pump(Duration::from_millis(200));
    let screen = tty.screen();
    let prompt = screen
        .iter()
        .rposition(|l| l.starts_with("> second question"))
        .unwrap_or_else(|| panic!("the typed-ahead line at the prompt:\n{}", screen.join("\n")));
    assert_eq!(
        screen[prompt..],
        ["> second question", "half typed"],
        "the screen:\n{}",
        screen.join("\n")
    );
    tty.type_text("\r");
    tty.wait_for(at, "half typed\". mythos", Duration::from_secs(20));
    assert_eq!(tty.quit(), 0);
}

/// A paste that arrives line by line (over ssh) and is still arriving when the answer ends
/// waits in the editor whole: the lines that came after the prompt was back went to the editor
/// in raw mode, where each line break is Enter, and most of a 60-line paste was sent unseen.
#[test]
fn a_paste_still_arriving_when_the_answer_ends_waits_in_the_editor() {
    let mut tty = Tty::start(&["chat", "--demo"], 120, &[]);
    tty.prompt(0);
    let start = tty.output.len();
    tty.type_text("tell me\r");
    // Near the answer's end (it streams for about 1.7 s): the paste (1 s) goes on after it.
    tty.wait_for(start, "the next provider", Duration::from_secs(10));
    for i in 0..40 {
        tty.type_text(&format!("L{i:02}\r"));
        std::thread::sleep(Duration::from_millis(25));
    }
    let at = tty.wait_for(start, "[sim-", Duration::from_secs(20));
    tty.wait_for(at, "L39", Duration::from_secs(10));
    tty.pump(Duration::from_millis(500));
    let screen = tty.screen();
    let shown = screen.join("\n");
    assert_eq!(
        shown.matches("This is a simulated answer").count(),
        1,
        "a line was sent unseen:\n{shown}"
    );
    let footer = screen
        .iter()
        .position(|l| l.starts_with("[sim-"))
        .expect("the footer");
    let waiting: Vec<String> = (0..40).map(|i| format!("L{i:02}")).collect();
    let mut expected = vec![format!("> {}", waiting[0])];
    expected.extend(waiting[1..].iter().cloned());
    assert_eq!(screen[footer + 1..footer + 41], expected[..], "{shown}");
    // Ctrl-C clears the editor; Ctrl-D on the empty line then quits.
    tty.type_text("\x03");
    tty.prompt(tty.output.len());
    assert_eq!(tty.quit(), 0);
}

/// The chat killed while an answer streams (`kill`, a closed terminal, Ctrl-\) leaves the
/// terminal's echo on: it is off while an answer streams, no destructor runs on such a signal,
/// and under a shell that does not restore the terminal (dash) the user typed blind.
#[test]
fn killed_while_an_answer_streams_the_chat_leaves_the_echo_on() {
    for sig in [libc::SIGTERM, libc::SIGQUIT] {
        let mut tty = Tty::start(&["chat", "--demo"], 80, &[]);
        tty.prompt(0);
        let start = tty.output.len();
        tty.type_text("tell me\r");
        tty.wait_for(start, "This is a simulated", Duration::from_secs(10));
        // A line typed ahead: kept for the chat's next prompt (NOFLSH), it must not be left
        // for the shell to run once the chat is gone.
        tty.type_text("echo typed-ahead\r");
        tty.pump(Duration::from_millis(200));
        // SAFETY: ptsname_r writes the slave's path into a buffer owned here.
        let mut name = [0 as libc::c_char; 128];
        assert_eq!(
            unsafe { libc::ptsname_r(tty.master.as_raw_fd(), name.as_mut_ptr(), name.len()) },
            0
        );
        let slave_path = unsafe { std::ffi::CStr::from_ptr(name.as_ptr()) }
            .to_string_lossy()
            .into_owned();
        let slave = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&slave_path)
            .expect("the terminal");
        // SAFETY: kill has no memory-safety preconditions; the pid is our child's.
        unsafe { libc::kill(tty.child.id() as libc::pid_t, sig) };
        let status = tty.child.wait().expect("wait");
        assert!(!status.success(), "{sig}: {status:?}");
        let mut waiting: libc::c_int = 0;
        // SAFETY: FIONREAD writes one int.
        assert_eq!(
            unsafe { libc::ioctl(slave.as_raw_fd(), libc::FIONREAD as _, &mut waiting) },
            0
        );
        assert_eq!(
            waiting, 0,
            "signal {sig}: typed-ahead text left for the shell"
        );
        // SAFETY: tcgetattr on the terminal's master descriptor, into a termios owned here.
        let mut t: libc::termios = unsafe { std::mem::zeroed() };
        assert_eq!(
            unsafe { libc::tcgetattr(tty.master.as_raw_fd(), &mut t) },
            0
        );
        assert_ne!(
            t.c_lflag & libc::ECHO,
            0,
            "signal {sig}: the echo is left off"
        );
    }
}
