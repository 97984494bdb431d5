//! Binding the local socket safely.
//!
//! The order matters: take an exclusive lock on `<socket>.lock` (two daemons started at the same
//! moment serialise here, and the loser learns that another daemon owns the socket), then try to
//! connect to an existing socket file: if something answers, another daemon is alive and we
//! refuse; if the connection is refused, the file is stale and is removed. Only then bind, with
//! the directory at 0700 and the socket at 0600.

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};

use interprocess::local_socket::tokio::Listener;
use interprocess::local_socket::ListenerOptions;

/// Why the socket could not be bound.
#[derive(Debug, thiserror::Error)]
pub enum BindError {
    /// Another daemon serves this socket.
    #[error("another mythosd is already running on {0}")]
    AlreadyRunning(PathBuf),
    /// The directory or socket could not be created.
    #[error("cannot create socket {path}: {source}")]
    Io {
        /// The socket path.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
    /// The socket directory belongs to someone else or is open to others.
    #[error("refusing to use {path}: {why}")]
    Unsafe {
        /// The directory.
        path: PathBuf,
        /// What is wrong.
        why: String,
    },
}

/// The identity of the socket file we bound, to notice it being deleted or replaced. The
/// change time is part of it: a file made after ours was deleted may get its inode number back
/// (tmpfs hands it out again at once).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SocketId {
    dev: u64,
    ino: u64,
    ctime: (i64, i64),
}

impl SocketId {
    /// The identity of the file at `path` now, if any.
    pub fn of(path: &Path) -> Option<SocketId> {
        #[cfg(unix)]
        {
            use std::os::unix::fs::MetadataExt;
            let m = std::fs::symlink_metadata(path).ok()?;
            Some(SocketId {
                dev: m.dev(),
                ino: m.ino(),
                ctime: (m.ctime(), m.ctime_nsec()),
            })
        }
        #[cfg(not(unix))]
        {
            let _ = path;
            Some(SocketId {
                dev: 0,
                ino: 0,
                ctime: (0, 0),
            })
        }
    }
}

/// What the socket path holds now, against the file this daemon bound.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Holder {
    /// The very file bound, untouched.
    Ours,
    /// The same file, its metadata changed (a `chmod` or `chown` moves the change time): still
    /// ours, known by this identity from now on.
    OursChanged(SocketId),
    /// Nothing, or another file: nobody can reach this daemon by the path any more.
    Lost,
    /// Cannot tell yet (the file's listener did not answer in time, or could not take a
    /// connection just now): ask again later.
    Unknown,
}

/// Who holds the socket path now, given the identity `ours` of the file this daemon bound.
///
/// The change time is in the identity because tmpfs hands a deleted file's inode number out
/// again at once; but a `chmod` or `chown` moves it too, and a daemon that took that for a
/// replacement shut itself down a second after someone tightened or shared its socket (found
/// as a flaky CI test that chowns the socket). So an inode that is the same but changed is
/// asked directly: connect to the path and read the listener's process from the kernel's peer
/// credentials. Only a listener in this process makes the file ours.
pub async fn holder(path: &Path, ours: SocketId) -> Holder {
    let Some(now) = SocketId::of(path) else {
        return Holder::Lost;
    };
    if now == ours {
        return Holder::Ours;
    }
    if (now.dev, now.ino) != (ours.dev, ours.ino) {
        return Holder::Lost;
    }
    #[cfg(unix)]
    {
        let connect = tokio::net::UnixStream::connect(path);
        match tokio::time::timeout(std::time::Duration::from_secs(1), connect).await {
            Err(_) => Holder::Unknown,
            // The listener could not take one more connection just now (its accept queue full:
            // a burst of clients, or its accept loop backing off at the file limit), or this
            // process is out of descriptors: that says nothing of who listens. Taken for a lost
            // socket, either shut the daemon down. (macOS refuses a full queue with
            // `ECONNREFUSED`, which cannot be told from nobody listening.)
            Ok(Err(e))
                if e.kind() == io::ErrorKind::WouldBlock
                    || matches!(
                        e.raw_os_error(),
                        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
                    ) =>
            {
                Holder::Unknown
            }
            Ok(Err(_)) => Holder::Lost,
            Ok(Ok(stream)) => match stream.peer_cred().ok().and_then(|c| c.pid()) {
                Some(pid) if pid as u32 == std::process::id() => Holder::OursChanged(now),
                Some(_) => Holder::Lost,
                // A platform that does not say: the inode is the same, keep trusting it.
                None => Holder::OursChanged(now),
            },
        }
    }
    #[cfg(not(unix))]
    Holder::OursChanged(now)
}

/// A bound listener plus what keeps it ours.
pub struct Bound {
    /// The listener.
    pub listener: Listener,
    /// The socket path.
    pub path: PathBuf,
    /// The socket file as bound: only that file is ours to remove.
    pub id: Option<SocketId>,
    /// Held until the daemon hands over to the next one; the OS releases it if we die.
    pub lock: InstanceLock,
}

/// The lock on `<socket>.lock` that makes this daemon the one for its socket path.
pub struct InstanceLock(Option<File>);

impl InstanceLock {
    /// Let the next daemon take the socket path. Unlocked explicitly rather than by closing
    /// the file: the lock belongs to the open file, which a descriptor inherited by a child
    /// process would otherwise keep locked.
    pub fn release(self) {
        if let Some(file) = self.0 {
            let _ = file.unlock();
        }
    }
}

impl Bound {
    /// Remove the socket file (on clean shutdown, after the listener is dropped), if it is still
    /// the one bound (`id`). A daemon that stops because its file was deleted may find another
    /// daemon's file there by then: removing that one left the new daemon running unreachable,
    /// holding the lock, and every client failing for good (found by a chaos run: a runtime
    /// directory emptied while a client started a second daemon).
    pub fn remove_socket(path: &Path, id: Option<SocketId>) {
        #[cfg(unix)]
        if id.is_some() && SocketId::of(path) == id {
            let _ = std::fs::remove_file(path);
        }
        #[cfg(not(unix))]
        let _ = (path, id);
    }
}

/// Bind `path`, refusing if another daemon is alive there.
pub async fn bind(path: &Path) -> Result<Bound, BindError> {
    let io_err = |source| BindError::Io {
        path: path.to_path_buf(),
        source,
    };
    #[cfg(unix)]
    {
        use interprocess::local_socket::traits::tokio::Stream as _;
        use interprocess::local_socket::{GenericFilePath, ToFsName};
        use interprocess::os::unix::local_socket::ListenerOptionsExt;
        use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};

        let dir = path.parent().unwrap_or(Path::new("."));
        if !dir.exists() {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(io_err)?;
        }
        // SAFETY: getuid has no preconditions.
        let uid = unsafe { libc::getuid() };
        // A symbolic link in a shared directory (`$TMPDIR/mythos-UID` when there is no
        // XDG_RUNTIME_DIR) planted by another user would have us tighten, and put our socket
        // into, a directory of its choosing: only a link of our own is followed.
        let link = std::fs::symlink_metadata(dir).map_err(io_err)?;
        if link.file_type().is_symlink() && link.uid() != uid {
            return Err(BindError::Unsafe {
                path: dir.to_path_buf(),
                why: format!(
                    "a symbolic link made by uid {}, not by you (uid {uid})",
                    link.uid()
                ),
            });
        }
        let meta = std::fs::metadata(dir).map_err(io_err)?;
        if meta.uid() != uid {
            return Err(BindError::Unsafe {
                path: dir.to_path_buf(),
                why: format!("owned by uid {}, not by you (uid {uid})", meta.uid()),
            });
        }
        // Only tighten directories we own and that are ours alone by name; a shared parent
        // (like /tmp when MYTHOS_SOCKET points there) is left as it is.
        if meta.permissions().mode() & 0o077 != 0 && is_private_dir(dir) {
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
                .map_err(io_err)?;
        }

        let lock_path = lock_path(path);
        let lock = {
            use std::os::unix::fs::OpenOptionsExt;
            File::options()
                .create(true)
                .truncate(false)
                .write(true)
                .mode(0o600)
                .open(&lock_path)
                .map_err(io_err)?
        };
        // A lock file someone else made (in a shared directory) could be held by them to keep
        // us from starting: refuse it, and keep ours private.
        let lock_meta = lock.metadata().map_err(io_err)?;
        if lock_meta.uid() != uid {
            return Err(BindError::Unsafe {
                path: lock_path,
                why: format!("owned by uid {}, not by you (uid {uid})", lock_meta.uid()),
            });
        }
        if lock_meta.permissions().mode() & 0o077 != 0 {
            std::fs::set_permissions(&lock_path, std::fs::Permissions::from_mode(0o600))
                .map_err(io_err)?;
        }
        match lock.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(BindError::AlreadyRunning(path.to_path_buf()))
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(io_err(e)),
        }
        // How a client starts this daemon again if it finds none answering: through its
        // service manager, if one runs it; an empty file otherwise (what a managed daemon
        // wrote before is no longer true). A failure here only costs that advice.
        {
            use std::io::Write as _;
            let marker = crate::supervisor::restart_command()
                .and_then(|c| mythos_protocol::paths::managed_marker(&c))
                .unwrap_or_default();
            let _ = lock
                .set_len(0)
                .and_then(|()| (&lock).write_all(marker.as_bytes()));
        }

        if let Ok(meta) = std::fs::symlink_metadata(path) {
            use std::os::unix::fs::FileTypeExt;
            // Only ever remove a socket: a regular file or a symlink at this path is not a stale
            // socket of ours, and deleting it could destroy someone's data.
            if !meta.file_type().is_socket() {
                return Err(BindError::Unsafe {
                    path: path.to_path_buf(),
                    why: "something that is not a socket is at this path; move it away".into(),
                });
            }
            let name = path.to_fs_name::<GenericFilePath>().map_err(io_err)?;
            match interprocess::local_socket::tokio::Stream::connect(name).await {
                Ok(_) => return Err(BindError::AlreadyRunning(path.to_path_buf())),
                Err(_) => {
                    tracing::info!(path = %path.display(), "removing stale socket");
                    std::fs::remove_file(path).map_err(io_err)?;
                }
            }
        }
        let name = path.to_fs_name::<GenericFilePath>().map_err(io_err)?;
        // No name reclamation (interprocess unlinks the path when the listener is dropped,
        // whoever's file is there by then): `Bound::remove_socket` removes it if it is ours.
        let listener = match ListenerOptions::new()
            .name(name.clone())
            .reclaim_name(false)
            .mode(0o600)
            .create_tokio()
        {
            Ok(l) => l,
            Err(e) if e.kind() == io::ErrorKind::Unsupported => {
                // Platforms without fchmod-before-bind: bind, then tighten. The 0700 directory
                // keeps others out in the meantime.
                let l = ListenerOptions::new()
                    .name(name)
                    .reclaim_name(false)
                    .create_tokio()
                    .map_err(io_err)?;
                std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
                    .map_err(io_err)?;
                l
            }
            Err(e) => return Err(io_err(e)),
        };
        Ok(Bound {
            listener,
            path: path.to_path_buf(),
            id: SocketId::of(path),
            lock: InstanceLock(Some(lock)),
        })
    }
    #[cfg(windows)]
    {
        use interprocess::local_socket::{GenericNamespaced, ToNsName};
        let name = path
            .as_os_str()
            .to_string_lossy()
            .into_owned()
            .to_ns_name::<GenericNamespaced>()
            .map_err(io_err)?;
        let listener = match ListenerOptions::new().name(name).create_tokio() {
            Ok(l) => l,
            Err(e) if e.kind() == io::ErrorKind::AddrInUse => {
                return Err(BindError::AlreadyRunning(path.to_path_buf()))
            }
            Err(e) => return Err(io_err(e)),
        };
        Ok(Bound {
            listener,
            path: path.to_path_buf(),
            id: SocketId::of(path),
            lock: InstanceLock(None),
        })
    }
}

#[cfg(unix)]
fn lock_path(socket: &Path) -> PathBuf {
    mythos_protocol::paths::instance_lock_path(socket)
}

/// Whether `dir` is a directory mythos made for itself (its name starts with `mythos`).
#[cfg(unix)]
fn is_private_dir(dir: &Path) -> bool {
    dir.file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.starts_with("mythos"))
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;

    /// A daemon removes its own socket file, never one another daemon bound at the same path
    /// after its own was deleted.
    #[tokio::test]
    async fn only_the_socket_file_bound_is_removed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("run").join("mythosd.sock");
        let first = bind(&path).await.unwrap();
        let (first_path, first_id) = (first.path.clone(), first.id);
        // Its runtime directory is emptied, and a second daemon binds the path anew.
        std::fs::remove_file(&path).unwrap();
        std::fs::remove_file(lock_path(&path)).unwrap();
        // A file's change time moves in clock ticks (up to 10 ms), and tmpfs hands the deleted
        // inode number out again at once: a file made within the same tick looks the same.
        // (A client starting a daemon takes tens of milliseconds.)
        std::thread::sleep(std::time::Duration::from_millis(30));
        let second = bind(&path).await.unwrap();
        // The first stops: the file there is not its own.
        drop(first.listener);
        Bound::remove_socket(&first_path, first_id);
        assert!(path.exists(), "the second daemon's socket was removed");
        drop(second.listener);
        Bound::remove_socket(&second.path, second.id);
        assert!(!path.exists());
    }

    /// A listener of this process that cannot take one more connection just now (its accept
    /// queue full: a burst of clients, or its accept loop backing off at the file limit) is
    /// still this daemon's. After a `chmod`, the connect that asks was refused with `EAGAIN`,
    /// taken for a lost socket, and the daemon shut itself down, leaving the file behind.
    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn a_busy_listener_after_a_chmod_is_not_a_lost_socket() {
        use std::os::fd::AsRawFd;
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("mythosd.sock");
        let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
        // Its accept queue shrunk to one, and filled: nothing accepts.
        assert_eq!(unsafe { libc::listen(listener.as_raw_fd(), 0) }, 0);
        let mut queued = Vec::new();
        for _ in 0..8 {
            match tokio::net::UnixStream::connect(&path).await {
                Ok(s) => queued.push(s),
                Err(e) => {
                    assert_eq!(e.kind(), io::ErrorKind::WouldBlock, "{e}");
                    break;
                }
            }
        }
        let ours = SocketId::of(&path).unwrap();
        // The change time moves in clock ticks (see above).
        std::thread::sleep(std::time::Duration::from_millis(30));
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_ne!(
            SocketId::of(&path),
            Some(ours),
            "the chmod did not move the change time"
        );
        assert_ne!(holder(&path, ours).await, Holder::Lost);
        drop(queued);
    }
}
