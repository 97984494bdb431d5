//! Reaching mythosd: connect to its socket, say hello, exchange frames, and start the daemon
//! when nothing listens.
//!
//! Readiness is always observed, never guessed: a daemon we start tells us on its stdout when
//! its socket accepts connections (`--notify-stdout`), and a daemon started by someone else is
//! ready once a hello succeeds.

use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use interprocess::local_socket::tokio::Stream;
use interprocess::local_socket::traits::tokio::Stream as _;
use interprocess::local_socket::traits::StreamCommon as _;
use mythos_protocol::codec::{CodecError, FrameCodec};
use mythos_protocol::{
    Encoding, Hello, HelloReply, Request, RequestId, Response, MAX_FRAME_LEN, MAX_HELLO_LEN,
    PROTOCOL_VERSION,
};
use tokio_util::codec::Framed;

use crate::error::{Failure, EXIT_INCOMPATIBLE};
use crate::launcher::start_and_connect;

/// This client's build, sent in the hello and shown on a version mismatch.
pub const BUILD: &str = env!("CARGO_PKG_VERSION");

/// How long a daemon may take to answer the hello.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a non-stream request (status, why, ...) may take to be answered.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// Where the daemon is and how to talk to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// Socket path (a pipe name on Windows).
    pub socket: PathBuf,
    /// Encodings offered in the hello, most preferred first.
    pub encodings: Vec<Encoding>,
    /// Variables a daemon started for this target gets besides this process's own (a
    /// restart's: the old daemon's, see `commands::daemon`).
    pub daemon_env: Vec<(std::ffi::OsString, std::ffi::OsString)>,
}

/// Why connecting (without starting anything) failed.
#[derive(Debug)]
pub enum ConnectError {
    /// Nothing listens on the socket: it does not exist or refuses connections.
    NotRunning,
    /// The socket exists but connecting failed otherwise (permissions, ...).
    Io(io::Error),
    /// A daemon answered, but speaks another protocol version.
    Incompatible {
        /// Its build.
        build: String,
        /// Its protocol version.
        protocol: u32,
        /// Its explanation.
        reason: String,
        /// Its process id, if the OS tells us the peer of a local socket.
        pid: Option<u32>,
    },
    /// Something answered, but the hello did not complete.
    Handshake(String),
    /// The daemon took the connection and never answered the hello: it hangs (stopped with
    /// SIGSTOP, deadlocked). `mythos daemon stop` and `restart` end it by signal.
    Unresponsive {
        /// Its process id, if the OS tells us the peer of a local socket.
        pid: Option<u32>,
    },
    /// The socket, its directory or the process serving it is not this user's: nothing is
    /// sent to it. (Unix; a named pipe's security is the OS's.)
    #[cfg_attr(not(unix), allow(dead_code))]
    Untrusted(String),
}

impl ConnectError {
    /// The message to show for this error.
    pub fn into_failure(self, target: &Target) -> Failure {
        match self {
            ConnectError::NotRunning => Failure::new(format!(
                "mythosd is not running on {}",
                target.socket.display()
            ))
            .hint("`mythos daemon start` starts it"),
            ConnectError::Io(e) => Failure::new(format!(
                "cannot connect to mythosd at {}: {e}",
                target.socket.display()
            ))
            .hint("check the socket path (--socket or MYTHOS_SOCKET) and its permissions"),
            // Same protocol, yet refused (an encoding we cannot speak, say): the reason is all
            // there is to tell.
            ConnectError::Incompatible {
                build,
                protocol,
                reason,
                ..
            } if protocol == PROTOCOL_VERSION => {
                Failure::new(format!("mythosd {build} refused this client: {reason}"))
                    .code(EXIT_INCOMPATIBLE)
            }
            ConnectError::Incompatible {
                build, protocol, ..
            } => Failure::new(format!(
                "mythosd {build} is running (protocol {protocol}); this client is {BUILD} \
                 (protocol {PROTOCOL_VERSION}). Run `mythos daemon restart`."
            ))
            .code(EXIT_INCOMPATIBLE),
            ConnectError::Untrusted(why) => Failure::new(format!(
                "refusing to talk to {}: {why}",
                target.socket.display()
            ))
            .hint(
                "another user may be posing as mythosd: remove that socket or its directory, or \
                 point MYTHOS_SOCKET (or XDG_RUNTIME_DIR) at a directory only you can write",
            ),
            ConnectError::Unresponsive { pid } => Failure::new(format!(
                "mythosd{} at {} does not answer (no reply to the hello within {} s)",
                pid.map_or_else(String::new, |p| format!(" (pid {p})")),
                target.socket.display(),
                HELLO_TIMEOUT.as_secs()
            ))
            .hint(match pid {
                Some(_) => "`mythos daemon restart` ends it and starts a new one",
                None => "end the mythosd process, then run the command again",
            }),
            ConnectError::Handshake(why) => Failure::new(format!(
                "protocol error talking to {}: {why}",
                target.socket.display()
            ))
            .hint(
                "is a mythosd of this version listening there? `mythos daemon restart` replaces it",
            ),
        }
    }
}

/// An open, greeted connection to mythosd.
pub struct Connection {
    framed: Framed<Stream, FrameCodec<Response, Request>>,
    /// The daemon's build, from its hello.
    pub daemon_build: String,
    /// The daemon's process id, when the OS reports the socket's peer.
    pub daemon_pid: Option<u32>,
    next_id: RequestId,
    broken: bool,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("daemon_build", &self.daemon_build)
            .field("broken", &self.broken)
            .finish_non_exhaustive()
    }
}

/// Open the socket, without any hello.
pub async fn open(socket: &Path) -> io::Result<Stream> {
    #[cfg(unix)]
    let name = {
        use interprocess::local_socket::{GenericFilePath, ToFsName};
        socket.to_fs_name::<GenericFilePath>()?
    };
    #[cfg(windows)]
    let name = {
        use interprocess::local_socket::{GenericNamespaced, ToNsName};
        socket
            .as_os_str()
            .to_string_lossy()
            .into_owned()
            .to_ns_name::<GenericNamespaced>()?
    };
    Stream::connect(name).await
}

/// Check, before connecting, that the socket and its directory are this user's: another user
/// who made the (shared, fallback) directory first could otherwise serve a fake daemon and read
/// every prompt. A missing socket is fine (nothing listens; starting a daemon checks again).
#[cfg(unix)]
pub fn check_socket_path(socket: &Path) -> Result<(), ConnectError> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    // SAFETY: getuid has no preconditions.
    let uid = unsafe { libc::getuid() };
    let meta = match std::fs::symlink_metadata(socket) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(ConnectError::Io(e)),
    };
    if !meta.file_type().is_socket() {
        return Err(ConnectError::Untrusted("it is not a socket".into()));
    }
    if meta.uid() != uid {
        return Err(ConnectError::Untrusted(format!(
            "the socket belongs to uid {}, not to you (uid {uid})",
            meta.uid()
        )));
    }
    let dir = socket.parent().unwrap_or(Path::new("."));
    let dm = std::fs::metadata(dir).map_err(ConnectError::Io)?;
    if dm.uid() != uid && dm.uid() != 0 {
        return Err(ConnectError::Untrusted(format!(
            "its directory {} belongs to uid {}, not to you (uid {uid})",
            dir.display(),
            dm.uid()
        )));
    }
    // Writable by others without the sticky bit: anyone could swap the socket.
    if dm.mode() & 0o022 != 0 && dm.mode() & 0o1000 == 0 {
        return Err(ConnectError::Untrusted(format!(
            "its directory {} is writable by other users",
            dir.display()
        )));
    }
    Ok(())
}

/// Check, after connecting and before sending anything, that the process on the other end runs
/// as this user.
#[cfg(unix)]
fn check_peer(stream: &Stream) -> Result<(), ConnectError> {
    // SAFETY: getuid has no preconditions.
    let uid = unsafe { libc::getuid() };
    match stream.peer_creds().ok().and_then(|c| c.euid()) {
        Some(peer) if peer != uid => Err(ConnectError::Untrusted(format!(
            "the process serving it runs as uid {peer}, not as you (uid {uid})"
        ))),
        _ => Ok(()),
    }
}

/// Whether a connect error means that no daemon listens (as opposed to one we cannot reach).
pub fn nothing_listens(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused
    )
}

impl Connection {
    /// Connect and say hello; never starts a daemon.
    pub async fn connect(target: &Target) -> Result<Connection, ConnectError> {
        #[cfg(unix)]
        check_socket_path(&target.socket)?;
        let stream = match open(&target.socket).await {
            Ok(s) => s,
            Err(e) if nothing_listens(&e) => return Err(ConnectError::NotRunning),
            Err(e) => return Err(ConnectError::Io(e)),
        };
        #[cfg(unix)]
        check_peer(&stream)?;
        handshake(stream, &target.encodings).await
    }

    /// Connect, starting mythosd first if nothing listens on the socket.
    pub async fn connect_or_start(target: &Target) -> Result<Connection, Failure> {
        match Connection::connect(target).await {
            Ok(c) => Ok(c),
            Err(ConnectError::NotRunning) => start_and_connect(target).await,
            Err(e) => Err(e.into_failure(target)),
        }
    }

    /// A fresh request id for a chat stream on this connection.
    pub fn next_id(&mut self) -> RequestId {
        self.next_id += 1;
        self.next_id
    }

    /// Whether the connection failed and must be replaced.
    pub fn is_broken(&self) -> bool {
        self.broken
    }

    /// Notice that the daemon closed this idle connection (it was stopped or restarted since
    /// the last request), so that the next request goes to a new one instead of failing with
    /// "lost the connection". Events of abandoned streams still arriving are read and
    /// dropped; anything else makes the connection broken. Waits a millisecond at most: the
    /// runtime must turn once to learn that the socket was closed.
    pub async fn check_idle(&mut self) {
        loop {
            match tokio::time::timeout(Duration::from_millis(1), self.framed.next()).await {
                // Nothing to read: the daemon is there.
                Err(_) => return,
                Ok(Some(Ok(Response::Event { .. }))) => continue,
                Ok(_) => {
                    self.broken = true;
                    return;
                }
            }
        }
    }

    /// Mark the connection unusable (a stream was abandoned half-read).
    pub fn mark_broken(&mut self) {
        self.broken = true;
    }

    /// Send one request.
    pub async fn send(&mut self, req: Request) -> Result<(), Failure> {
        match self.framed.send(req).await {
            Ok(()) => Ok(()),
            Err(e) => {
                self.broken = true;
                Err(lost(Some(e)))
            }
        }
    }

    /// Receive the next response.
    pub async fn recv(&mut self) -> Result<Response, Failure> {
        match self.framed.next().await {
            Some(Ok(r)) => Ok(r),
            Some(Err(e)) => {
                self.broken = true;
                Err(lost(Some(e)))
            }
            None => {
                self.broken = true;
                Err(lost(None))
            }
        }
    }

    /// Send a non-stream request and wait for its answer (stream events in between, which can
    /// only belong to abandoned streams, are skipped).
    pub async fn call(&mut self, req: Request) -> Result<Response, Failure> {
        // Broken until the answer is read: a call dropped half way (Ctrl-C) leaves its answer
        // in the socket, and the next call would read it as its own.
        self.broken = true;
        self.send(req).await?;
        let answer = async {
            loop {
                match self.recv().await? {
                    Response::Event { .. } => continue,
                    other => return Ok(other),
                }
            }
        };
        match tokio::time::timeout(CALL_TIMEOUT, answer).await {
            Ok(r) => {
                self.broken = r.is_err();
                r
            }
            Err(_) => {
                self.broken = true;
                Err(Failure::new(format!(
                    "mythosd did not answer within {} s",
                    CALL_TIMEOUT.as_secs()
                ))
                .hint("it may be overloaded or stuck; `mythos daemon restart` replaces it"))
            }
        }
    }
}

/// The failure for a connection that broke under us.
fn lost(e: Option<CodecError>) -> Failure {
    let hint = format!(
        "mythosd may have stopped or crashed; its log is in {}",
        daemon_log_dir().display()
    );
    match e {
        None | Some(CodecError::Io(_)) => {
            let detail = match e {
                Some(CodecError::Io(io)) => format!(" ({io})"),
                _ => String::new(),
            };
            Failure::new(format!("lost the connection to mythosd{detail}")).hint(hint)
        }
        // Our own message was over the frame cap: the prompt is too large, versions are fine.
        Some(CodecError::FrameTooLarge { len, max }) => Failure::new(format!(
            "the request is {} MiB, over the {} MiB a message to mythosd may be",
            len.div_ceil(1 << 20),
            max >> 20
        ))
        .hint("send less: a shorter prompt or conversation (/clear in chat), or smaller files"),
        Some(e) => Failure::new(format!("protocol error talking to mythosd: {e}")).hint(
            "the daemon and this client may be different versions; try `mythos daemon restart`",
        ),
    }
}

/// Where the daemon writes its logs (for hints).
pub fn daemon_log_dir() -> PathBuf {
    // MYTHOS_STATE_DIR is the daemon's own override of the state directory.
    std::env::var_os("MYTHOS_STATE_DIR")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(mythos_protocol::paths::state_dir)
        .join("logs")
}

/// The config file the daemon reads (for hints).
pub fn daemon_config_path() -> PathBuf {
    std::env::var_os("MYTHOS_CONFIG")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(mythos_protocol::paths::config_path)
}

async fn handshake(stream: Stream, encodings: &[Encoding]) -> Result<Connection, ConnectError> {
    // Ask the OS who is on the other end before the stream disappears into the codec; this is
    // what lets `mythos daemon stop` stop a daemon of another protocol version.
    let pid = stream
        .peer_creds()
        .ok()
        .and_then(|c| c.pid())
        // The pid type differs by platform (i32 on Unix, u32 on Windows).
        .and_then(
            #[allow(clippy::useless_conversion)]
            |p| u32::try_from(p).ok(),
        );
    let mut framed = Framed::new(
        stream,
        FrameCodec::<HelloReply, Hello>::new(Encoding::Json, MAX_HELLO_LEN),
    );
    let exchange = async {
        framed.send(Hello::new(BUILD, encodings.to_vec())).await?;
        framed.next().await.transpose()
    };
    let reply = match tokio::time::timeout(HELLO_TIMEOUT, exchange).await {
        Err(_) => return Err(ConnectError::Unresponsive { pid }),
        Ok(Err(e)) => return Err(ConnectError::Handshake(format!("hello failed: {e}"))),
        Ok(Ok(None)) => {
            return Err(ConnectError::Handshake(
                "the connection closed during the hello".into(),
            ))
        }
        Ok(Ok(Some(reply))) => reply,
    };
    match reply {
        HelloReply::Accepted {
            build, encoding, ..
        } => {
            if !encodings.contains(&encoding) {
                return Err(ConnectError::Handshake(format!(
                    "the daemon chose {encoding:?}, which this client did not offer"
                )));
            }
            Ok(Connection {
                framed: framed.map_codec(|_| FrameCodec::new(encoding, MAX_FRAME_LEN)),
                daemon_build: build,
                daemon_pid: pid,
                next_id: 0,
                broken: false,
            })
        }
        HelloReply::Incompatible {
            protocol,
            build,
            reason,
        } => Err(ConnectError::Incompatible {
            build,
            protocol,
            reason,
            pid,
        }),
    }
}

/// Connect, retrying for `grace` while nothing listens or the hello fails (a daemon that just
/// reported `already-running` may still be binding, or be on its way out).
pub async fn connect_with_retry(
    target: &Target,
    grace: Duration,
) -> Result<Connection, ConnectError> {
    let deadline = Instant::now() + grace;
    let mut pause = Duration::from_millis(20);
    loop {
        match Connection::connect(target).await {
            Ok(c) => return Ok(c),
            Err(e @ ConnectError::Incompatible { .. }) => return Err(e),
            Err(e) if Instant::now() + pause > deadline => return Err(e),
            Err(_) => {
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_millis(250));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(unix)]
    use mythos_protocol::DoneInfo;

    /// A stand-in daemon on a real local socket: answers the hello as `reply` says, then
    /// plays `events` for the first chat request and answers `status` with an error.
    #[cfg(unix)]
    async fn fake_daemon(
        socket: PathBuf,
        accept: bool,
        events: Vec<mythos_protocol::StreamEvent>,
    ) -> tokio::task::JoinHandle<Option<Hello>> {
        use interprocess::local_socket::traits::tokio::Listener as _;
        use interprocess::local_socket::{GenericFilePath, ListenerOptions, ToFsName};
        let name = socket.as_path().to_fs_name::<GenericFilePath>().unwrap();
        let listener = ListenerOptions::new().name(name).create_tokio().unwrap();
        tokio::spawn(async move {
            let stream = listener.accept().await.ok()?;
            let mut framed = Framed::new(
                stream,
                FrameCodec::<Hello, HelloReply>::new(Encoding::Json, MAX_HELLO_LEN),
            );
            let hello = framed.next().await?.ok()?;
            if !accept {
                let reply = HelloReply::Incompatible {
                    protocol: 99,
                    build: "9.9.9".into(),
                    reason: "too new".into(),
                };
                framed.send(reply).await.ok()?;
                return Some(hello);
            }
            let encoding = hello.encodings[0];
            let reply = HelloReply::Accepted {
                protocol: PROTOCOL_VERSION,
                build: "fake".into(),
                encoding,
            };
            framed.send(reply).await.ok()?;
            let mut framed =
                framed.map_codec(|_| FrameCodec::<Request, Response>::new(encoding, MAX_FRAME_LEN));
            while let Some(Ok(req)) = framed.next().await {
                match req {
                    Request::Chat(c) => {
                        for event in events.clone() {
                            let ev = Response::Event { id: c.id, event };
                            framed.send(ev).await.ok()?;
                        }
                    }
                    _ => {
                        let err = Response::Error {
                            kind: mythos_protocol::ErrorKind::BadRequest,
                            message: "not here".into(),
                        };
                        framed.send(err).await.ok()?;
                    }
                }
            }
            Some(hello)
        })
    }

    /// A daemon on its way out (a restart's) refuses a request before any attempt of it was
    /// made, after it queued or at once: no provider saw it, and it is sent again to the next
    /// daemon (`NotDelivered`). `mythos ask` failed with "run the command again". A stream the
    /// daemon cut at its drain's deadline is not: a provider may have had (and billed) it.
    #[cfg(unix)]
    #[tokio::test]
    async fn a_request_refused_by_a_stopping_daemon_before_it_began_is_not_delivered() {
        use crate::stream::{self, Ended};
        use mythos_protocol::{ChatRequest, ErrorKind, StreamEvent};
        let refused = StreamEvent::Error {
            kind: ErrorKind::ShuttingDown,
            message: mythos_protocol::REFUSED_WHILE_STOPPING.into(),
            retry_at_unix_ms: None,
        };
        let queued = StreamEvent::Queued {
            reason: "a: rate limited for 4 s".into(),
            until_unix_ms: None,
            deadline_unix_ms: u64::MAX,
        };
        let started = StreamEvent::Started {
            provider: "a".into(),
            model: "m".into(),
            attempt: 1,
            record: 0,
            setup_us: 0,
        };
        // Cut by the drain's deadline: a provider may have had it, whatever came before.
        let cut = StreamEvent::Error {
            kind: ErrorKind::ShuttingDown,
            message: "mythosd is shutting down and could not finish this answer".into(),
            retry_at_unix_ms: None,
        };
        for (tag, events, delivered) in [
            ("at-once", vec![refused.clone()], false),
            ("queued", vec![queued, refused.clone()], false),
            ("begun", vec![started, refused.clone()], true),
            ("cut", vec![cut], true),
        ] {
            let (dir, socket) = scratch_socket(tag);
            let _daemon = fake_daemon(socket.clone(), true, events).await;
            let target = Target {
                socket,
                encodings: vec![Encoding::Bincode],
                daemon_env: Vec::new(),
            };
            let mut conn = Connection::connect(&target).await.unwrap();
            let id = conn.next_id();
            let mut sink = |_: RequestId, _: &StreamEvent| Ok(());
            let ended = stream::run(&mut conn, ChatRequest::user_text(id, "q"), false, &mut sink)
                .await
                .unwrap();
            assert_eq!(
                !matches!(ended, Ended::NotDelivered(_)),
                delivered,
                "{tag}: {ended:?}"
            );
            let _ = std::fs::remove_dir_all(dir);
        }
    }

    #[cfg(unix)]
    fn scratch_socket(tag: &str) -> (PathBuf, PathBuf) {
        let dir =
            std::env::temp_dir().join(format!("mythos-client-test-{}-{tag}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let socket = dir.join("d.sock");
        (dir, socket)
    }

    #[cfg(unix)]
    #[tokio::test]
    async fn a_stream_end_to_end_over_a_real_socket() {
        use crate::stream::{self, Ended, Outcome};
        use mythos_protocol::{ChatRequest, FinishReason, RerouteMode, StreamEvent, Usage};

        let (dir, socket) = scratch_socket("stream");
        let events = vec![
            StreamEvent::Started {
                provider: "a".into(),
                model: "m".into(),
                attempt: 1,
                record: 0,
                setup_us: 0,
            },
            StreamEvent::TextDelta {
                text: "Discarded".into(),
            },
            StreamEvent::Rerouted {
                from: "a".into(),
                to: "b".into(),
                reason: "cut off".into(),
                mode: RerouteMode::Restart,
            },
            StreamEvent::TextDelta {
                text: "Whole answer.".into(),
            },
            StreamEvent::Done(Box::new(DoneInfo {
                finish: FinishReason::Stop,
                usage: Usage::default(),
                cost_usd: 0.0,
                latency_ms: 5,
                provider: "b".into(),
                model: "m".into(),
                record: 9,
            })),
        ];
        let daemon = fake_daemon(socket.clone(), true, events.clone()).await;
        let target = Target {
            socket,
            encodings: vec![Encoding::Bincode, Encoding::Json],
            daemon_env: Vec::new(),
        };
        let mut conn = Connection::connect(&target).await.unwrap();
        assert_eq!(conn.daemon_build, "fake");
        assert_eq!(conn.daemon_pid, Some(std::process::id()));
        let id = conn.next_id();
        let mut seen = Vec::new();
        let mut sink = |got: RequestId, ev: &StreamEvent| {
            assert_eq!(got, id);
            seen.push(ev.clone());
            Ok(())
        };
        let ended = stream::run(&mut conn, ChatRequest::user_text(id, "q"), false, &mut sink)
            .await
            .unwrap();
        let Ended::Finished(turn) = ended else {
            panic!("{ended:?}")
        };
        assert_eq!(turn.text, "Whole answer.");
        assert!(matches!(
            turn.outcome,
            Some(Outcome::Done(DoneInfo { record: 9, .. }))
        ));
        assert_eq!(seen, events);

        // A non-stream request answered by an error becomes a failure with the daemon's words.
        let resp = conn.call(Request::Status).await.unwrap();
        assert!(matches!(resp, Response::Error { .. }));
        drop(conn);
        let hello = daemon.await.unwrap().unwrap();
        assert_eq!(hello.build, BUILD);
        assert_eq!(hello.encodings, [Encoding::Bincode, Encoding::Json]);
        let _ = std::fs::remove_dir_all(dir);
    }

    #[cfg(unix)]
    #[tokio::test]
    async fn an_incompatible_daemon_is_named_with_its_version() {
        let (dir, socket) = scratch_socket("incompatible");
        let daemon = fake_daemon(socket.clone(), false, Vec::new()).await;
        let target = Target {
            socket,
            encodings: vec![Encoding::Json],
            daemon_env: Vec::new(),
        };
        let err = Connection::connect(&target).await.unwrap_err();
        assert!(matches!(
            err,
            ConnectError::Incompatible { protocol: 99, .. }
        ));
        let f = err.into_failure(&target);
        assert_eq!(f.code, EXIT_INCOMPATIBLE);
        assert_eq!(
            f.message,
            format!(
                "mythosd 9.9.9 is running (protocol 99); this client is {BUILD} (protocol \
                 {PROTOCOL_VERSION}). Run `mythos daemon restart`."
            )
        );
        daemon.await.unwrap();
        // Nothing listens any more: the socket file is stale, which means "not running".
        assert!(matches!(
            Connection::connect(&target).await,
            Err(ConnectError::NotRunning)
        ));
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn refused_and_missing_mean_not_running() {
        assert!(nothing_listens(&io::Error::from(io::ErrorKind::NotFound)));
        assert!(nothing_listens(&io::Error::from(
            io::ErrorKind::ConnectionRefused
        )));
        assert!(!nothing_listens(&io::Error::from(
            io::ErrorKind::PermissionDenied
        )));
    }
}
