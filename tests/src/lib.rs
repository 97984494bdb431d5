//! Shared harness for the end-to-end tests and the benchmark.
//!
//! Every test owns a temp dir holding its config, socket, state and logs, starts the real
//! `mythosd` binary on it, and learns that the daemon is ready from the daemon itself (the
//! `--notify-stdout` line), never from a sleep. Mock providers are the daemon's own simulated
//! providers, started in the test process on 127.0.0.1:0 so tests can script their faults.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use interprocess::local_socket::tokio::Stream;
use interprocess::local_socket::traits::tokio::Stream as _;
use interprocess::local_socket::{GenericFilePath, ToFsName};
use mythos_protocol::codec::FrameCodec;
use mythos_protocol::{
    ChatRequest, Encoding, Hello, HelloReply, Request, Response, StreamEvent, MAX_FRAME_LEN,
    MAX_HELLO_LEN,
};
use mythosd::sim::{Flavor, SimOptions, SimProvider};
use tokio_util::codec::Framed;

/// Directory holding the workspace's built binaries (`target/debug` or `target/release`).
pub fn bin_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        // The test executable lives in target/<profile>/deps/.
        let exe = std::env::current_exe().expect("current exe");
        let dir = exe
            .parent()
            .and_then(|d| {
                if d.ends_with("deps") {
                    d.parent()
                } else {
                    Some(d)
                }
            })
            .expect("target dir")
            .to_path_buf();
        // Make sure both binaries exist and are current: cargo test does not build the bins of
        // other packages. A no-op build takes a fraction of a second. Outside cargo (a copied
        // bench binary, say), binaries that are already there are used as they are.
        let present = ["mythosd", "mythos"].iter().all(|b| {
            dir.join(format!("{b}{}", std::env::consts::EXE_SUFFIX))
                .exists()
        });
        if std::env::var_os("CARGO").is_some() || !present {
            let release = dir.ends_with("release");
            let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
            let manifest = concat!(env!("CARGO_MANIFEST_DIR"), "/../Cargo.toml");
            let mut cmd = Command::new(cargo);
            cmd.args(["build", "-q", "--manifest-path", manifest])
                .args(["-p", "mythosd", "-p", "mythos", "--bins"]);
            // Cargo gives a test process its package's variables (CARGO_MANIFEST_DIR...);
            // ring's build script watches CARGO_MANIFEST_DIR, so passing them on made every
            // test run rebuild the TLS stack (10-20 s per test binary).
            for (k, _) in std::env::vars_os() {
                let k = k.to_string_lossy();
                if k.starts_with("CARGO_PKG_")
                    || k.starts_with("CARGO_BIN_")
                    || [
                        "CARGO_MANIFEST_DIR",
                        "CARGO_MANIFEST_PATH",
                        "CARGO_CRATE_NAME",
                        "CARGO_PRIMARY_PACKAGE",
                        "CARGO_TARGET_TMPDIR",
                        "OUT_DIR",
                    ]
                    .contains(&k.as_ref())
                {
                    cmd.env_remove(k.as_ref());
                }
            }
            if release {
                cmd.arg("--release");
            }
            let status = cmd.status().expect("run cargo build");
            assert!(status.success(), "building the binaries failed");
        }
        dir
    })
}

/// Path of a workspace binary.
pub fn bin(name: &str) -> PathBuf {
    bin_dir().join(format!("{name}{}", std::env::consts::EXE_SUFFIX))
}

/// Environment variables that must not leak from the developer's shell into a test daemon,
/// besides the keys ([`mythos_protocol::PROVIDER_KEY_VARIABLES`]).
const SCRUB: [&str; 13] = [
    "GEMINI_BASE_URL",
    "MYTHOS_GEMINI_MODEL",
    "MYTHOS_HTTP_LISTEN",
    "ANTHROPIC_BASE_URL",
    "DEEPSEEK_BASE_URL",
    "OPENAI_BASE_URL",
    "MYTHOS_SOCKET",
    "MYTHOS_CONFIG",
    "MYTHOS_STATE_DIR",
    "MYTHOS_ANTHROPIC_MODEL",
    "MYTHOS_DEEPSEEK_MODEL",
    "MYTHOS_OPENAI_MODEL",
    "NOTIFY_SOCKET",
];

/// One test's private world: temp dir, socket, state, config and environment.
pub struct TestEnv {
    /// The temp dir (deleted on drop).
    pub dir: tempfile::TempDir,
    /// Socket path.
    pub socket: PathBuf,
    /// State dir.
    pub state: PathBuf,
    /// Config file path (may not exist).
    pub config: PathBuf,
    /// Extra environment for both binaries.
    pub vars: Vec<(String, String)>,
}

impl TestEnv {
    /// A fresh environment.
    pub fn new() -> TestEnv {
        let dir = tempfile::Builder::new()
            .prefix("mythos-e2e")
            .tempdir()
            .expect("temp dir");
        let run = dir.path().join("run").join("mythos");
        TestEnv {
            socket: run.join("mythosd.sock"),
            state: dir.path().join("state"),
            config: dir.path().join("config.toml"),
            vars: Vec::new(),
            dir,
        }
    }

    /// Add an environment variable.
    pub fn var(&mut self, k: &str, v: impl Into<String>) -> &mut Self {
        self.vars.push((k.to_string(), v.into()));
        self
    }

    /// Write the config file.
    pub fn write_config(&self, text: &str) {
        std::fs::write(&self.config, text).expect("write config");
    }

    fn apply(&self, cmd: &mut Command) {
        for k in mythos_protocol::PROVIDER_KEY_VARIABLES.iter().chain(&SCRUB) {
            cmd.env_remove(k);
        }
        cmd.env("XDG_RUNTIME_DIR", self.dir.path().join("run"))
            .env("XDG_STATE_HOME", self.dir.path().join("xdg-state"))
            .env("XDG_CONFIG_HOME", self.dir.path().join("xdg-config"))
            .env("MYTHOS_SOCKET", &self.socket)
            .env("MYTHOS_STATE_DIR", &self.state)
            .env("MYTHOS_CONFIG", &self.config)
            // A free port each: tests run side by side, and the developer's own daemon may
            // hold the default one.
            .env("MYTHOS_HTTP_LISTEN", "127.0.0.1:0")
            .env("NO_COLOR", "1");
        for (k, v) in &self.vars {
            cmd.env(k, v);
        }
    }

    /// A command for a workspace binary with this environment applied.
    pub fn command(&self, name: &str) -> Command {
        let mut cmd = Command::new(bin(name));
        self.apply(&mut cmd);
        cmd
    }

    /// Start `mythosd` with extra arguments and wait for its readiness line.
    pub fn start_daemon(&self, args: &[&str]) -> Daemon {
        self.start_daemon_with(args, |_| {})
    }

    /// Start `mythosd` with its open-file limit (soft and hard) set to `nofile`.
    #[cfg(unix)]
    pub fn start_daemon_with_fd_limit(&self, args: &[&str], nofile: u64) -> Daemon {
        use std::os::unix::process::CommandExt;
        self.start_daemon_with(args, |cmd| {
            // SAFETY: setrlimit is async-signal-safe; it runs in the child between fork and exec.
            unsafe {
                cmd.pre_exec(move || {
                    let r = libc::rlimit {
                        rlim_cur: nofile as libc::rlim_t,
                        rlim_max: nofile as libc::rlim_t,
                    };
                    if libc::setrlimit(libc::RLIMIT_NOFILE, &r) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        })
    }

    /// Start `mythosd` after `tune` has had its say on the command.
    pub fn start_daemon_with(&self, args: &[&str], tune: impl FnOnce(&mut Command)) -> Daemon {
        let mut cmd = Command::new(bin("mythosd"));
        tune(&mut cmd);
        self.spawn_daemon(cmd, args, Duration::from_secs(20))
    }

    /// Start `mythosd` as the last argument of `wrapper` (the benchmark's
    /// `valgrind --tool=callgrind …`), waiting up to `ready_within` for it to be ready.
    pub fn start_daemon_under(
        &self,
        wrapper: &[String],
        args: &[&str],
        ready_within: Duration,
    ) -> Daemon {
        let mut cmd = Command::new(&wrapper[0]);
        cmd.args(&wrapper[1..]).arg(bin("mythosd"));
        self.spawn_daemon(cmd, args, ready_within)
    }

    fn spawn_daemon(&self, mut cmd: Command, args: &[&str], ready_within: Duration) -> Daemon {
        self.apply(&mut cmd);
        cmd.arg("--notify-stdout")
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        let mut child = cmd.spawn().expect("spawn mythosd");
        let line = read_line_with_timeout(&mut child, ready_within);
        assert!(
            matches!(
                mythos_protocol::StartupLine::parse(&line),
                Some(mythos_protocol::StartupLine::Ready(_))
            ),
            "mythosd did not start: {line:?}"
        );
        Daemon { child }
    }

    /// Run the `mythos` client to completion.
    pub fn mythos(&self, args: &[&str]) -> Output {
        self.mythos_with_stdin(args, "")
    }

    /// Run the `mythos` client with `stdin` as its standard input.
    pub fn mythos_with_stdin(&self, args: &[&str], stdin: &str) -> Output {
        use std::io::Write;
        let mut cmd = Command::new(bin("mythos"));
        self.apply(&mut cmd);
        cmd.args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn mythos");
        if let Some(mut input) = child.stdin.take() {
            let _ = input.write_all(stdin.as_bytes());
        }
        child.wait_with_output().expect("mythos output")
    }

    /// The running daemon's HTTP front end: its base URL (`http://127.0.0.1:PORT`, no `/v1`)
    /// and the local token, as the daemon wrote them into its state dir.
    pub fn http(&self) -> (String, String) {
        let read = |name: &str| {
            std::fs::read_to_string(self.state.join(name))
                .unwrap_or_else(|e| panic!("{name} in the state dir: {e}"))
                .trim()
                .to_string()
        };
        (
            format!("http://{}", read("http-address")),
            read("http-token"),
        )
    }

    /// Connect a raw protocol client.
    pub async fn connect(&self) -> RawClient {
        RawClient::connect(&self.socket).await
    }
}

impl Default for TestEnv {
    fn default() -> Self {
        Self::new()
    }
}

fn read_line_with_timeout(child: &mut Child, timeout: Duration) -> String {
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(stdout).read_line(&mut line);
        let _ = tx.send(line);
    });
    rx.recv_timeout(timeout)
        .unwrap_or_else(|_| "timeout".into())
        .trim()
        .to_string()
}

/// A running `mythosd`. Killed on drop if still running.
pub struct Daemon {
    /// The process.
    pub child: Child,
}

impl Daemon {
    /// Send a signal (Unix).
    #[cfg(unix)]
    pub fn signal(&self, sig: i32) {
        // SAFETY: kill with a valid pid and signal number has no memory-safety preconditions.
        unsafe {
            libc::kill(self.child.id() as i32, sig);
        }
    }

    /// Ask for a clean shutdown (SIGTERM; `mythos daemon stop`'s request elsewhere) and wait
    /// for the exit; returns the exit status.
    pub fn stop(mut self) -> std::process::ExitStatus {
        #[cfg(unix)]
        self.signal(libc::SIGTERM);
        #[cfg(not(unix))]
        {
            let _ = self.child.kill();
        }
        self.child.wait().expect("wait mythosd")
    }

    /// The peak of its resident memory so far, in MiB (Linux's `VmHWM`; elsewhere `None`).
    pub fn peak_rss_mib(&self) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).ok()?;
        let kib: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())?;
        Some(kib >> 10)
    }

    /// Wait for the daemon to exit by itself, failing the test with `what` after 10 s.
    pub async fn exits(&mut self, what: &str) {
        let t0 = std::time::Instant::now();
        while self.child.try_wait().expect("try_wait").is_none() {
            assert!(
                t0.elapsed() < Duration::from_secs(10),
                "{what}: still running"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The daemon's `GET /metrics` text at `base` (its HTTP front end).
pub async fn metrics_text(http: &reqwest::Client, base: &str) -> String {
    let resp = http
        .get(format!("{base}/metrics"))
        .send()
        .await
        .expect("GET /metrics");
    assert_eq!(resp.status(), 200, "GET /metrics");
    resp.text().await.expect("the metrics' text")
}

/// A protocol client speaking frames directly.
pub struct RawClient {
    /// The framed connection after the hello.
    pub framed: Framed<Stream, FrameCodec<Response, Request>>,
}

/// Connect to `path` without any handshake.
pub async fn connect_raw(path: &Path) -> Stream {
    let name = path.to_fs_name::<GenericFilePath>().expect("socket name");
    Stream::connect(name).await.expect("connect")
}

impl RawClient {
    /// Connect and complete the hello with the given encoding.
    pub async fn connect_with(path: &Path, encoding: Encoding) -> RawClient {
        let stream = connect_raw(path).await;
        let mut hello = Framed::new(
            stream,
            FrameCodec::<HelloReply, Hello>::new(Encoding::Json, MAX_HELLO_LEN),
        );
        hello
            .send(Hello::new("test", vec![encoding]))
            .await
            .expect("send hello");
        match hello.next().await {
            Some(Ok(HelloReply::Accepted { encoding: e, .. })) => assert_eq!(e, encoding),
            other => panic!("hello refused: {other:?}"),
        }
        RawClient {
            framed: hello.map_codec(|_| FrameCodec::new(encoding, MAX_FRAME_LEN)),
        }
    }

    /// Connect with bincode frames.
    pub async fn connect(path: &Path) -> RawClient {
        Self::connect_with(path, Encoding::Bincode).await
    }

    /// Send a request.
    pub async fn send(&mut self, req: Request) {
        self.framed.send(req).await.expect("send");
    }

    /// Next response (panics after 30 s: a hung test should fail, not hang CI).
    pub async fn recv(&mut self) -> Response {
        match tokio::time::timeout(Duration::from_secs(30), self.framed.next()).await {
            Ok(Some(Ok(r))) => r,
            other => panic!("no response: {other:?}"),
        }
    }

    /// Run a chat request to its end; returns its events.
    pub async fn chat(&mut self, req: ChatRequest) -> Vec<StreamEvent> {
        let id = req.id;
        self.send(Request::Chat(req)).await;
        let mut events = Vec::new();
        loop {
            if let Response::Event { id: got, event } = self.recv().await {
                assert_eq!(got, id);
                let end = matches!(event, StreamEvent::Done(_) | StreamEvent::Error { .. });
                events.push(event);
                if end {
                    return events;
                }
            }
        }
    }

    /// Start a chat request and return once its first text arrives (the stream stays open).
    pub async fn start_until_first_token(&mut self, req: ChatRequest) {
        self.send(Request::Chat(req)).await;
        loop {
            if let Response::Event {
                event: StreamEvent::TextDelta { .. },
                ..
            } = self.recv().await
            {
                return;
            }
        }
    }

    /// Ask for the status report.
    pub async fn status(&mut self) -> mythos_protocol::StatusReport {
        self.send(Request::Status).await;
        match self.recv().await {
            Response::Status(s) => *s,
            other => panic!("expected status, got {other:?}"),
        }
    }
}

/// Every file below `dir` (none if it does not exist): for grepping state and logs.
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(files_under(&p));
        } else {
            out.push(p);
        }
    }
    out
}

/// The answer text of a finished stream (honouring restart events).
pub fn text_of(events: &[StreamEvent]) -> String {
    let mut s = String::new();
    for e in events {
        match e {
            StreamEvent::TextDelta { text } => s.push_str(text),
            StreamEvent::Rerouted {
                mode: mythos_protocol::RerouteMode::Restart,
                ..
            } => s.clear(),
            _ => {}
        }
    }
    s
}

/// Start a mock provider of `flavor` on loopback with fast, test-friendly delays.
pub async fn mock(name: &str, flavor: Flavor) -> SimProvider {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind mock");
    let mut opts = SimOptions::new(name, flavor);
    opts.first_token_delay = Duration::from_millis(5);
    opts.token_delay = Duration::from_millis(1);
    opts.expect_key = Some(format!("key-{name}"));
    SimProvider::start(listener, opts).await.expect("mock")
}

/// The three built-in providers' mocks: Anthropic, DeepSeek and OpenAI formats.
pub struct Mocks {
    /// Anthropic Messages format, key `key-anthropic`.
    pub anthropic: SimProvider,
    /// DeepSeek (OpenAI format with reasoning and keep-alives), key `key-deepseek`.
    pub deepseek: SimProvider,
    /// OpenAI Chat Completions format, key `key-openai`.
    pub openai: SimProvider,
}

impl Mocks {
    /// Start all three on loopback.
    pub async fn start() -> Mocks {
        Mocks {
            anthropic: mock("anthropic", Flavor::Anthropic).await,
            deepseek: mock("deepseek", Flavor::DeepSeek).await,
            openai: mock("openai", Flavor::OpenAi).await,
        }
    }

    /// A test environment whose built-in providers point at these mocks, the way a user points
    /// base URLs at a proxy.
    pub fn env(&self) -> TestEnv {
        let mut env = TestEnv::new();
        env.var("ANTHROPIC_API_KEY", "key-anthropic")
            .var("ANTHROPIC_BASE_URL", self.anthropic.base_url())
            .var("DEEPSEEK_API_KEY", "key-deepseek")
            .var("DEEPSEEK_BASE_URL", self.deepseek.base_url())
            .var("OPENAI_API_KEY", "key-openai")
            .var("OPENAI_BASE_URL", self.openai.base_url());
        env
    }
}
