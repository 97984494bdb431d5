//! State that outlives the process: provider health and per-request records, in SQLite.
//!
//! One thread owns the connection. Everyone else talks to it through a channel, so writes never
//! run on the async runtime's threads and are batched: a request record waits up to
//! [`WRITE_WINDOW`] for others, and all of them go into one transaction. Health saves and reads
//! (`why`, `usage`) end that wait at once; reads see every write queued before them and get
//! their answer on a oneshot.

use std::path::{Path, PathBuf};
use std::sync::mpsc as std_mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use mythos_protocol::{RequestRecord, UsageReport, UsageRow};
use rusqlite::{params, Connection, OptionalExtension};
use tokio::sync::oneshot;

use crate::router::health::SavedHealth;
use crate::router::RecordSink;

/// Schema version in `PRAGMA user_version`. Migrations go in [`migrate`].
const SCHEMA_VERSION: i64 = 2;

/// How long a write waits for the other daemon's transaction to end. Two daemons share the
/// database for a moment at a restart (the old one writes the records of the streams it
/// finishes while the new one serves): SQLite's own lock serialises their transactions, each
/// a few milliseconds long.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Request records older than this are deleted, at start-up and then every
/// [`PRUNE_EVERY`] while requests are written (`why` and `usage` look back less).
pub const RECORD_DAYS: u64 = 90;

/// How often a running daemon deletes records past [`RECORD_DAYS`]: a service that is never
/// restarted would otherwise keep every request it ever served.
const PRUNE_EVERY: Duration = Duration::from_secs(3600);

/// Why the state database could not be used.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// SQLite refused it.
    #[error("state database {path}: {source}")]
    Sqlite {
        /// The database file.
        path: PathBuf,
        /// What SQLite said.
        source: rusqlite::Error,
    },
    /// Another daemon writes it (started with another socket but the same state directory).
    #[error(
        "state database {path} is in use by another mythosd{}; give each daemon its own \
         MYTHOS_STATE_DIR",
        holder.map(|p| format!(" (pid {p})")).unwrap_or_default()
    )]
    InUse {
        /// The database file.
        path: PathBuf,
        /// The other daemon's pid, as its lock file says.
        holder: Option<u32>,
    },
    /// The lock file beside it cannot be opened or locked.
    #[error("state database {path}: cannot lock {}: {source}", lock_path(path).display())]
    Lock {
        /// The database file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

impl StateError {
    /// The file is not a database, or a corrupt one (as opposed to, say, a permission error).
    fn is_unreadable(&self) -> bool {
        matches!(
            self,
            StateError::Sqlite {
                source: rusqlite::Error::SqliteFailure(e, _),
                ..
            } if matches!(
                e.code,
                rusqlite::ErrorCode::NotADatabase | rusqlite::ErrorCode::DatabaseCorrupt
            )
        )
    }
}

/// The lock file of the database at `path`: `state.db.lock`.
fn lock_path(path: &Path) -> PathBuf {
    PathBuf::from(format!("{}.lock", path.display()))
}

/// Take the database's lock for this process: two daemons writing one database (one started
/// with another socket but the same state directory) overwrote each other's health and reused
/// each other's record ids. The lock is the OS's (`flock`, `LockFileEx`): it is gone with the
/// process, however that ends. The file holds the owner's pid, for the other one's message.
fn lock(path: &Path) -> Result<std::fs::File, StateError> {
    use std::io::{Read, Seek, Write};
    let lock_err = |source| StateError::Lock {
        path: path.to_path_buf(),
        source,
    };
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(lock_path(path))
        .map_err(lock_err)?;
    match file.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => {
            let mut text = String::new();
            let _ = (&file).take(32).read_to_string(&mut text);
            return Err(StateError::InUse {
                path: path.to_path_buf(),
                holder: text.trim().parse().ok(),
            });
        }
        Err(std::fs::TryLockError::Error(e)) => return Err(lock_err(e)),
    }
    let wrote = file
        .set_len(0)
        .and_then(|_| file.rewind())
        .and_then(|_| write!(file, "{}", std::process::id()));
    wrote.map_err(lock_err)?;
    Ok(file)
}

enum Cmd {
    Record(Box<RequestRecord>),
    SaveHealth(Vec<SavedHealth>),
    Why(Option<u64>, oneshot::Sender<Option<RequestRecord>>),
    Usage(u32, oneshot::Sender<UsageReport>),
    Flush(oneshot::Sender<()>),
    /// From now on, records are written as soon as they come (the daemon is stopping).
    NoWait,
    /// Write what is queued, close the database and let go of its lock, then answer.
    Close(oneshot::Sender<()>),
    /// Write what is queued, this health and the first record id the next daemon may use, then
    /// let go of the lock file (the connection stays open) and answer.
    HandOver {
        health: Vec<SavedHealth>,
        next_record: u64,
        ack: oneshot::Sender<()>,
    },
    /// Take the lock file back if nobody took the state since the hand-over; answer whether
    /// it was.
    Reclaim(oneshot::Sender<bool>),
}

impl Cmd {
    /// A request record may wait for company (see [`WRITE_WINDOW`]): nobody waits for it, and
    /// a crash that loses the last moment of history costs little. Everything else goes at
    /// once: a read is awaited, and health (a pause, a breaker trip) must be on disk before a
    /// `kill -9` a moment later.
    fn may_wait(&self) -> bool {
        matches!(self, Cmd::Record(_))
    }
}

/// How long a request record waits for more before its transaction is committed. A
/// transaction costs about ten system calls (the WAL's writes, SQLite's file locks) whatever it
/// holds: once per request, that was a measurable share of the daemon's CPU at concurrency 1
/// (`strace -c`: 2,044 `pwrite64` and 2,502 `fcntl` in 3 s of the bench). A crash loses at
/// most this much of the request history.
pub const WRITE_WINDOW: Duration = Duration::from_millis(100);

/// The most commands in one transaction.
const MAX_BATCH: usize = 1024;

/// Handle to the state thread. Cheap to clone.
#[derive(Clone)]
pub struct StateStore {
    tx: std_mpsc::Sender<Cmd>,
    /// The state thread, woken by a read so that it does not wait out [`WRITE_WINDOW`].
    thread: std::thread::Thread,
    /// Why the last write failed, while writes fail (a full disk): for `status`.
    trouble: Arc<Mutex<Option<String>>>,
}

/// Request records kept in memory while they cannot be written (a full disk), to be written
/// once they can; beyond this many the oldest are given up.
const MAX_UNSAVED: usize = 10_000;

impl Drop for StateStore {
    /// The last handle going away ends the thread's wait for more writes: the sender is
    /// dropped first, then the thread woken to find the channel closed.
    fn drop(&mut self) {
        let (closed, _) = std_mpsc::channel();
        drop(std::mem::replace(&mut self.tx, closed));
        self.thread.unpark();
    }
}

/// What was loaded at start-up.
pub struct Loaded {
    /// Saved provider health.
    pub health: Vec<SavedHealth>,
    /// Next free record id.
    pub next_record: u64,
}

impl StateStore {
    /// Open (or create) the database at `path` and start its thread.
    pub fn open(path: &Path) -> Result<(StateStore, Loaded, JoinHandle<()>), StateError> {
        Self::open_with(path, WRITE_WINDOW, PRUNE_EVERY, None, lock(path)?)
    }

    /// [`StateStore::open`], with writes waiting up to `window` for more and old records
    /// deleted every `prune_every`; `parked` hears each time the thread starts such a wait
    /// (tests).
    fn open_with(
        path: &Path,
        window: Duration,
        prune_every: Duration,
        parked: Option<std_mpsc::Sender<()>>,
        lock: std::fs::File,
    ) -> Result<(StateStore, Loaded, JoinHandle<()>), StateError> {
        let err = |source| StateError::Sqlite {
            path: path.to_path_buf(),
            source,
        };
        let conn = Connection::open(path).map_err(err)?;
        // Said here rather than left to rusqlite's default: the hand-over at a restart relies
        // on it (see [`StateStore::hand_over`]).
        conn.busy_timeout(BUSY_TIMEOUT).map_err(err)?;
        migrate(&conn).map_err(err)?;
        prune(&conn).map_err(err)?;
        let health = load_health(&conn).map_err(err)?;
        // Past the ids a daemon that handed the state over gave to the requests it still
        // finishes: their records come later.
        let next_record: u64 = conn
            .query_row(
                "SELECT MAX(COALESCE((SELECT MAX(id) FROM requests), 0) + 1,
                            COALESCE((SELECT value FROM meta WHERE key = 'next_record'), 1))",
                [],
                |r| r.get::<_, i64>(0),
            )
            .map_err(err)? as u64;
        let (tx, rx) = std_mpsc::channel();
        let trouble = Arc::new(Mutex::new(None));
        let seen = trouble.clone();
        let thread = std::thread::Builder::new()
            .name("mythosd-state".into())
            .spawn(move || {
                let closed = run(conn, rx, window, prune_every, parked, &lock, &seen);
                // Held until the last write is on disk and the database is closed.
                drop(lock);
                if let Some(ack) = closed {
                    let _ = ack.send(());
                }
            })
            .map_err(|e| err(rusqlite::Error::ToSqlConversionFailure(Box::new(e))))?;
        Ok((
            StateStore {
                tx,
                thread: thread.thread().clone(),
                trouble,
            },
            Loaded {
                health,
                next_record,
            },
            thread,
        ))
    }

    /// Open the database at `path`; if it is not a database or is corrupt, move it aside (it is
    /// kept, renamed) and start a fresh one. The note says what happened, for the log and
    /// `status`.
    pub fn open_or_recover(
        path: &Path,
    ) -> Result<(StateStore, Loaded, JoinHandle<()>, Option<String>), StateError> {
        // Locked before anything is read or moved aside; each attempt below holds a copy,
        // and the state thread keeps the last one.
        let lock = lock(path)?;
        let copy = || {
            lock.try_clone().map_err(|source| StateError::Lock {
                path: path.to_path_buf(),
                source,
            })
        };
        let empty = std::fs::metadata(path).is_ok_and(|m| m.len() == 0);
        match Self::open_with(path, WRITE_WINDOW, PRUNE_EVERY, None, copy()?) {
            Ok((s, l, t)) => {
                let note = empty.then(|| {
                    format!(
                        "the state database {} was an empty file: started fresh",
                        path.display()
                    )
                });
                Ok((s, l, t, note))
            }
            Err(e) if e.is_unreadable() => {
                let why = match &e {
                    StateError::Sqlite { source, .. } => source.to_string(),
                    other => other.to_string(),
                };
                let aside = PathBuf::from(format!(
                    "{}.corrupt-{}",
                    path.display(),
                    mythos_protocol::clock::now_unix_ms()
                ));
                let moved = std::fs::rename(path, &aside);
                for suffix in ["-wal", "-shm"] {
                    let side = PathBuf::from(format!("{}{suffix}", path.display()));
                    let _ = std::fs::rename(&side, format!("{}{suffix}", aside.display()));
                }
                if let Err(m) = moved {
                    return Err(StateError::Sqlite {
                        path: path.to_path_buf(),
                        source: rusqlite::Error::ToSqlConversionFailure(Box::new(m)),
                    });
                }
                let (s, l, t) = Self::open_with(path, WRITE_WINDOW, PRUNE_EVERY, None, copy()?)?;
                let note = format!(
                    "the state database was unreadable ({}): it was moved to {} and a fresh \
                     one started, so provider health and history start over",
                    why,
                    aside.display()
                );
                Ok((s, l, t, Some(note)))
            }
            Err(e) => Err(e),
        }
    }

    /// Queue a health snapshot for writing.
    pub fn save_health(&self, h: Vec<SavedHealth>) {
        let _ = self.ask(Cmd::SaveHealth(h));
    }

    /// A record by id, or the latest.
    pub async fn why(&self, id: Option<u64>) -> Option<RequestRecord> {
        let (tx, rx) = oneshot::channel();
        self.ask(Cmd::Why(id, tx)).ok()?;
        rx.await.ok().flatten()
    }

    /// Totals by day and provider for the last `days` days.
    pub async fn usage(&self, days: u32) -> UsageReport {
        let (tx, rx) = oneshot::channel();
        if self.ask(Cmd::Usage(days, tx)).is_err() {
            return UsageReport { rows: Vec::new() };
        }
        rx.await.unwrap_or(UsageReport { rows: Vec::new() })
    }

    /// Wait until everything queued so far is on disk.
    pub async fn flush(&self) {
        let (tx, rx) = oneshot::channel();
        if self.ask(Cmd::Flush(tx)).is_ok() {
            let _ = rx.await;
        }
    }

    /// Write records as soon as they come from now on: called at shutdown, so that a request
    /// ended by the shutdown itself does not wait for the window with the process about to
    /// exit.
    pub fn stop_waiting(&self) {
        let _ = self.ask(Cmd::NoWait);
    }

    /// Let another daemon take the state over while this one finishes its streams: write
    /// everything queued so far, `health` (the last this daemon saves: the next one loads it,
    /// then owns it) and `next_record`, the first record id this daemon did not give out; then
    /// let go of the lock file. Records go on being written, each at once, through the
    /// connection that stays open: SQLite's own lock (WAL, a busy timeout, transactions that
    /// take the write lock at their start) keeps the two daemons' transactions apart, and the
    /// next daemon numbers its records from `next_record` on, so no record of either replaces
    /// one of the other's.
    pub async fn hand_over(&self, health: Vec<SavedHealth>, next_record: u64) {
        let (ack, rx) = oneshot::channel();
        if self
            .ask(Cmd::HandOver {
                health,
                next_record,
                ack,
            })
            .is_ok()
        {
            let _ = rx.await;
        }
    }

    /// After [`StateStore::hand_over`]: take the lock back if no other daemon took the state
    /// meanwhile (a stop, not a restart). `true`: this daemon holds it again and may save
    /// health once more; `false`: another daemon holds it, or held it and saved health newer
    /// than this one's, which must not be overwritten.
    pub async fn reclaim(&self) -> bool {
        let (tx, rx) = oneshot::channel();
        if self.ask(Cmd::Reclaim(tx)).is_err() {
            return false;
        }
        rx.await.unwrap_or(false)
    }

    /// Write everything queued so far, close the database and release its lock, so that a
    /// daemon starting right after this one finds it free. Writes after this are dropped.
    pub async fn close(&self) {
        let (tx, rx) = oneshot::channel();
        if self.ask(Cmd::Close(tx)).is_ok() {
            let _ = rx.await;
        }
    }

    /// Send a command that must not wait, and end the thread's wait for more writes.
    fn ask(&self, cmd: Cmd) -> Result<(), std_mpsc::SendError<Cmd>> {
        self.tx.send(cmd)?;
        self.thread.unpark();
        Ok(())
    }
}

impl StateStore {
    /// While writes fail (a full disk, a database gone read-only): why, and how many request
    /// records wait in memory; `None` once they are written again.
    pub fn trouble(&self) -> Option<String> {
        self.trouble
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

impl RecordSink for StateStore {
    fn record(&self, rec: RequestRecord) {
        let _ = self.tx.send(Cmd::Record(Box::new(rec)));
    }
}

fn migrate(conn: &Connection) -> rusqlite::Result<()> {
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    let version: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
    if version >= SCHEMA_VERSION {
        return Ok(());
    }
    // One transaction, taking the write lock at once: a daemon that handed the state over may
    // still write to it.
    let tx = rusqlite::Transaction::new_unchecked(conn, rusqlite::TransactionBehavior::Immediate)?;
    if version < 1 {
        tx.execute_batch(
            "CREATE TABLE IF NOT EXISTS health (
                 name TEXT PRIMARY KEY,
                 json TEXT NOT NULL
             );
             CREATE TABLE IF NOT EXISTS requests (
                 id INTEGER PRIMARY KEY,
                 unix_ms INTEGER NOT NULL,
                 day TEXT NOT NULL,
                 provider TEXT,
                 input_tokens INTEGER NOT NULL,
                 output_tokens INTEGER NOT NULL,
                 cost_usd REAL NOT NULL,
                 json TEXT NOT NULL
             );
             CREATE INDEX IF NOT EXISTS requests_day ON requests(day);",
        )?;
    }
    if version < 2 {
        // `next_record`: the first record id a daemon that handed the state over did not give
        // out (see `StateStore::hand_over`).
        tx.execute_batch(
            "CREATE TABLE IF NOT EXISTS meta (
                 key TEXT PRIMARY KEY,
                 value INTEGER NOT NULL
             );",
        )?;
    }
    tx.pragma_update(None, "user_version", SCHEMA_VERSION)?;
    tx.commit()
}

fn load_health(conn: &Connection) -> rusqlite::Result<Vec<SavedHealth>> {
    let mut stmt = conn.prepare("SELECT name, json FROM health")?;
    let rows = stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))?;
    let mut out = Vec::new();
    for row in rows {
        let (name, json) = row?;
        match serde_json::from_str::<SavedHealth>(&json) {
            Ok(h) => out.push(h),
            // A row we cannot read is dropped, not fatal: health relearns in minutes.
            Err(e) => {
                tracing::warn!(provider = %name, error = %e, "ignoring unreadable saved health")
            }
        }
    }
    Ok(out)
}

/// Wait up to `window` for more commands after a request record: it ends early when anything
/// else is queued (its sender unparks this thread) or the batch is full. Records wake nobody: a
/// send to a receiver that is not blocked in `recv` is a queue push.
fn gather(
    rx: &std_mpsc::Receiver<Cmd>,
    batch: &mut Vec<Cmd>,
    window: Duration,
    parked: Option<&std_mpsc::Sender<()>>,
) {
    let deadline = Instant::now() + window;
    let mut seen = 0;
    loop {
        loop {
            match rx.try_recv() {
                Ok(cmd) => batch.push(cmd),
                Err(std_mpsc::TryRecvError::Empty) => break,
                // Every handle is gone (the daemon is stopping): nothing more will come.
                Err(std_mpsc::TryRecvError::Disconnected) => return,
            }
        }
        if batch[seen..].iter().any(|c| !c.may_wait()) || batch.len() >= MAX_BATCH {
            return;
        }
        seen = batch.len();
        let now = Instant::now();
        if now >= deadline {
            return;
        }
        if let Some(p) = parked {
            let _ = p.send(());
        }
        std::thread::park_timeout(deadline - now);
    }
}

/// Delete the records from before the day [`RECORD_DAYS`] ago began (by the indexed `day`
/// column: no scan of the table).
fn prune(conn: &Connection) -> rusqlite::Result<()> {
    let cutoff = mythos_protocol::clock::now_unix_ms().saturating_sub(RECORD_DAYS * 86_400_000);
    let pruned = conn.execute(
        "DELETE FROM requests WHERE day < ?1",
        params![utc_day(cutoff)],
    )?;
    if pruned > 0 {
        tracing::info!(pruned, days = RECORD_DAYS, "deleted old request records");
    }
    Ok(())
}

fn run(
    mut conn: Connection,
    rx: std_mpsc::Receiver<Cmd>,
    mut window: Duration,
    prune_every: Duration,
    parked: Option<std_mpsc::Sender<()>>,
    lock: &std::fs::File,
    trouble: &Mutex<Option<String>>,
) -> Option<oneshot::Sender<()>> {
    let mut closing = None;
    let mut pruned_at = Instant::now();
    // Records a failed write left unwritten, written with the next batch: a full disk lost
    // every record of its time, and nothing but the log said so (found by a helper).
    // Serialized once, when they come.
    let mut unsaved: Vec<(Box<RequestRecord>, String)> = Vec::new();
    let mut given_up = 0usize;
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        gather(&rx, &mut batch, window, parked.as_ref());
        // Writes first, then every other command is answered, whatever the writes did: a
        // failed write (a full disk) used to drop the batch's reads and the acks a restart
        // and a stop wait for (found by a review).
        let mut replies = Vec::new();
        let mut healths = Vec::new();
        let mut next_records = Vec::new();
        for cmd in batch {
            match cmd {
                Cmd::Record(rec) => {
                    let json = serde_json::to_string(&rec).unwrap_or_default();
                    unsaved.push((rec, json));
                }
                Cmd::SaveHealth(list) => healths.push(list),
                Cmd::HandOver {
                    health,
                    next_record,
                    ack,
                } => {
                    healths.push(health);
                    next_records.push(next_record);
                    replies.push(Cmd::HandOver {
                        health: Vec::new(),
                        next_record,
                        ack,
                    });
                }
                other => replies.push(other),
            }
        }
        if unsaved.len() > MAX_UNSAVED {
            let over = unsaved.len() - MAX_UNSAVED;
            given_up += over;
            unsaved.drain(..over);
        }
        let result = if unsaved.is_empty() {
            Ok(())
        } else {
            write(&mut conn, |tx| {
                unsaved
                    .iter()
                    .try_for_each(|(rec, json)| insert_record(tx, rec, json))
            })
        };
        if !healths.is_empty() || !next_records.is_empty() {
            let saved = write(&mut conn, |tx| {
                for list in healths {
                    save_health(tx, list)?;
                }
                for next_record in next_records {
                    tx.execute(
                        "INSERT INTO meta(key, value) VALUES ('next_record', ?1)
                         ON CONFLICT(key) DO UPDATE SET value = MAX(value, excluded.value)",
                        [next_record as i64],
                    )?;
                }
                Ok(())
            });
            if let Err(e) = saved {
                tracing::error!(error = %e, "cannot write provider health");
            }
        }
        {
            let mut trouble = trouble.lock().unwrap_or_else(|e| e.into_inner());
            match result {
                Ok(()) => {
                    if trouble.take().is_some() {
                        tracing::info!(records = unsaved.len(), "state written again");
                    }
                    unsaved.clear();
                    given_up = 0;
                }
                Err(e) => {
                    // Once when it starts, not at every batch: on a full disk the log would
                    // fill what little room is left.
                    if trouble.is_none() {
                        tracing::error!(error = %e, "cannot write state");
                    } else {
                        tracing::debug!(error = %e, "still cannot write state");
                    }
                    let lost = if given_up > 0 {
                        format!(", {given_up} older ones given up")
                    } else {
                        String::new()
                    };
                    *trouble = Some(format!(
                        "cannot save request records ({e}): {} kept in memory until it can{lost}",
                        unsaved.len()
                    ));
                }
            }
        }
        if pruned_at.elapsed() >= prune_every {
            pruned_at = Instant::now();
            if let Err(e) = prune(&conn) {
                tracing::warn!(error = %e, "cannot delete old request records");
            }
        }
        for cmd in replies {
            match cmd {
                Cmd::Why(id, reply) => {
                    let _ = reply.send(query_why(&conn, id).unwrap_or(None));
                }
                Cmd::Usage(days, reply) => {
                    let rows = query_usage(&conn, days).unwrap_or_default();
                    let _ = reply.send(UsageReport { rows });
                }
                Cmd::Flush(reply) => {
                    let _ = reply.send(());
                }
                Cmd::NoWait => window = Duration::ZERO,
                Cmd::Close(ack) => closing = Some(ack),
                Cmd::HandOver { ack, .. } => {
                    // Written (or failed, and logged): either way the next daemon must not
                    // wait for a process on its way out. Records come one by one from now
                    // on, with another daemon's beside them.
                    window = Duration::ZERO;
                    if let Err(e) = lock.unlock() {
                        tracing::warn!(error = %e, "cannot let go of the state database's lock");
                    }
                    let _ = ack.send(());
                }
                Cmd::Reclaim(reply) => {
                    let _ = reply.send(reclaim(lock));
                }
                Cmd::Record(_) | Cmd::SaveHealth(_) => {}
            }
        }
        if closing.is_some() {
            break;
        }
    }
    closing
}

fn save_health(tx: &rusqlite::Transaction<'_>, list: Vec<SavedHealth>) -> rusqlite::Result<()> {
    let mut upsert = tx.prepare_cached(
        "INSERT INTO health(name, json) VALUES (?1, ?2)
         ON CONFLICT(name) DO UPDATE SET json = excluded.json",
    )?;
    for h in list {
        let json = serde_json::to_string(&h).unwrap_or_default();
        upsert.execute(params![h.name, json])?;
    }
    Ok(())
}

/// Lock `lock` again if it still names this process: a daemon that took the state writes its
/// own pid there (see [`lock`]), so another pid means one took it, even if it has gone again.
fn reclaim(lock: &std::fs::File) -> bool {
    use std::io::{Read, Seek};
    if lock.try_lock().is_err() {
        return false;
    }
    let mut text = String::new();
    let mut file = lock;
    let read = file
        .rewind()
        .and_then(|_| file.take(32).read_to_string(&mut text));
    if read.is_ok() && text.trim().parse::<u32>().ok() == Some(std::process::id()) {
        return true;
    }
    let _ = lock.unlock();
    false
}

/// Run `f` in a write transaction and commit it.
fn write(
    conn: &mut Connection,
    f: impl FnOnce(&rusqlite::Transaction<'_>) -> rusqlite::Result<()>,
) -> rusqlite::Result<()> {
    // The write lock at the start: with another daemon on the database (a restart's
    // hand-over), a deferred transaction that read first could not upgrade to write and would
    // fail at once instead of waiting out the busy timeout.
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    f(&tx)?;
    tx.commit()
}

fn insert_record(
    tx: &rusqlite::Transaction<'_>,
    rec: &RequestRecord,
    json: &str,
) -> rusqlite::Result<()> {
    // Prepared once per connection (rusqlite's statement cache), not once per record.
    let mut insert = tx.prepare_cached(
        "INSERT OR REPLACE INTO requests(id, unix_ms, day, provider, input_tokens, output_tokens,
                                         cost_usd, json)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
    )?;
    insert.execute(params![
        rec.id as i64,
        rec.unix_ms as i64,
        utc_day(rec.unix_ms),
        rec.provider,
        rec.usage.input_tokens as i64,
        rec.usage.output_tokens as i64,
        rec.cost_usd,
        json
    ])?;
    Ok(())
}

fn query_why(conn: &Connection, id: Option<u64>) -> rusqlite::Result<Option<RequestRecord>> {
    let json: Option<String> = match id {
        Some(id) => conn
            .query_row(
                "SELECT json FROM requests WHERE id = ?1",
                [id as i64],
                |r| r.get(0),
            )
            .optional()?,
        None => conn
            .query_row(
                "SELECT json FROM requests ORDER BY id DESC LIMIT 1",
                [],
                |r| r.get(0),
            )
            .optional()?,
    };
    Ok(json.and_then(|j| serde_json::from_str(&j).ok()))
}

fn query_usage(conn: &Connection, days: u32) -> rusqlite::Result<Vec<UsageRow>> {
    let now_ms = mythos_protocol::clock::now_unix_ms();
    let since = utc_day(now_ms.saturating_sub(u64::from(days.max(1) - 1) * 86_400_000));
    let mut stmt = conn.prepare(
        // Requests the client cancelled are no failure: counted as failed, a soak run's
        // 1,973 deliberate cancels showed as 2,195 failures beside 376 real ones.
        "SELECT day,
                COALESCE(provider, CASE json_extract(json, '$.error')
                                       WHEN 'cancelled' THEN '(cancelled)'
                                       ELSE '(failed)' END) AS who,
                COUNT(*), SUM(input_tokens), SUM(output_tokens), SUM(cost_usd),
                SUM(COALESCE(json_extract(json, '$.usage.cache_read_input_tokens'), 0)
                    + COALESCE(json_extract(json, '$.usage.cache_creation_input_tokens'), 0))
         FROM requests WHERE day >= ?1
         GROUP BY day, who ORDER BY day DESC, who",
    )?;
    let rows = stmt.query_map([since], |r| {
        Ok(UsageRow {
            day: r.get(0)?,
            provider: r.get(1)?,
            requests: r.get::<_, i64>(2)? as u64,
            input_tokens: r.get::<_, i64>(3)? as u64,
            output_tokens: r.get::<_, i64>(4)? as u64,
            cost_usd: r.get(5)?,
            cached_tokens: r.get::<_, i64>(6)? as u64,
        })
    })?;
    rows.collect()
}

pub use mythos_protocol::clock::utc_day;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::router::health::SavedBreaker;
    use mythos_protocol::{TaskKind, Usage};

    #[test]
    fn days() {
        assert_eq!(utc_day(0), "1970-01-01");
        assert_eq!(utc_day(1_795_996_800_000), "2026-11-30");
        assert_eq!(utc_day(951_782_400_000), "2000-02-29");
    }

    #[test]
    fn golden_saved_health_keeps_loading() {
        // Written by version 0.1.0. Never edit: add a new golden instead.
        let old = r#"{"name":"anthropic","success":0.42,"success_age_ms":1000,"ttft_ms":812.5,
            "ttft_age_ms":1000,"gap_ms":null,"gap_age_ms":null,"latency_ms":null,
            "latency_age_ms":null,"breaker":{"open":{"until_unix_ms":1900000000000,
            "cooldown_ms":300000}},"rate_limited_until_unix_ms":null,"requests":7,"failures":3,
            "consecutive_failures":2,"last_error":"rate_limited: 429","saved_unix_ms":1800000000000}"#;
        let h: SavedHealth = serde_json::from_str(old).unwrap();
        assert_eq!(
            h.breaker,
            SavedBreaker::Open {
                until_unix_ms: 1_900_000_000_000,
                cooldown_ms: 300_000
            }
        );
        assert!(!h.no_prefill);
    }

    #[tokio::test]
    async fn a_corrupt_database_is_moved_aside_and_started_fresh() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        std::fs::write(&path, b"this is not a database, it is a shopping list").unwrap();
        let (_store, loaded, _t, note) = StateStore::open_or_recover(&path).unwrap();
        assert_eq!(loaded.next_record, 1);
        let note = note.expect("a note");
        assert!(note.contains("moved to"), "{note}");
        let kept: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().contains("corrupt"))
            .collect();
        assert_eq!(kept.len(), 1);
        assert_eq!(
            std::fs::read(kept[0].path()).unwrap(),
            b"this is not a database, it is a shopping list"
        );
        // An empty file is said out loud too.
        let empty = dir.path().join("empty.db");
        std::fs::write(&empty, b"").unwrap();
        let (_s, _l, _t, note) = StateStore::open_or_recover(&empty).unwrap();
        assert!(note.unwrap().contains("empty"));
    }

    /// A second daemon on the same state directory is told who holds it, and neither the
    /// database nor the first daemon's lock is touched; once the first is gone, it opens.
    #[tokio::test]
    async fn a_second_daemon_on_the_same_database_is_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        let (store, _, thread, _) = StateStore::open_or_recover(&path).unwrap();
        for _ in 0..2 {
            let e = StateStore::open_or_recover(&path).err().expect("refused");
            assert!(
                matches!(e, StateError::InUse { holder: Some(p), .. } if p == std::process::id()),
                "{e:?}"
            );
            let text = e.to_string();
            assert!(text.contains("in use by another mythosd (pid"), "{text}");
            assert!(text.contains("MYTHOS_STATE_DIR"), "{text}");
        }
        // Still the first one's, and still written.
        store.record(record_with_id(7));
        store.flush().await;
        assert_eq!(store.why(None).await.map(|r| r.id), Some(7));
        drop(store);
        thread.join().unwrap();
        let (store, loaded, _t, _) = StateStore::open_or_recover(&path).unwrap();
        assert_eq!(loaded.next_record, 8);
        // A stopping daemon closes the database while handles to it still live (its tasks
        // wind down after): the next daemon opens it at once, with every write in it.
        store.record(record_with_id(8));
        store.close().await;
        let (_s, loaded, _t, _) = StateStore::open_or_recover(&path).unwrap();
        assert_eq!(loaded.next_record, 9);
        store.record(record_with_id(20));
        assert_eq!(
            store.why(None).await,
            None,
            "closed: nothing more is read or written"
        );
    }

    /// A restart's hand-over: the next daemon opens the state while this one still writes the
    /// records of the streams it finishes (ids 2 and 3 here), and numbers its own after them;
    /// neither replaces the other's. Once another daemon held it, the state is not taken back
    /// (its health is newer), even after that daemon is gone.
    #[tokio::test]
    async fn a_handed_over_state_is_shared_and_not_taken_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        let (old, _, _t, _) = StateStore::open_or_recover(&path).unwrap();
        old.record(record_with_id(1));
        old.hand_over(Vec::new(), 4).await;
        let (new, loaded, _t2, _) = StateStore::open_or_recover(&path).unwrap();
        assert_eq!(loaded.next_record, 4, "past the ids still in flight");
        // What the next daemon, another process, leaves in the lock file (this test is one
        // process: its own pid is there).
        std::fs::write(lock_path(&path), "4194305").unwrap();
        old.record(record_with_id(2));
        new.record(record_with_id(4));
        old.record(record_with_id(3));
        old.flush().await;
        for id in 1..=4 {
            assert_eq!(
                new.why(Some(id)).await.map(|r| r.id),
                Some(id),
                "record {id}"
            );
        }
        assert!(!old.reclaim().await, "taken from the daemon that holds it");
        new.close().await;
        assert!(
            !old.reclaim().await,
            "taken back after another daemon held it"
        );
        old.close().await;
        let (_s, loaded, _t3, _) = StateStore::open_or_recover(&path).unwrap();
        assert_eq!(loaded.next_record, 5);
    }

    /// A stop that no daemon followed takes the state back for its last health save, and
    /// holds it again until it closes.
    #[tokio::test]
    async fn a_state_nobody_took_is_taken_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        let (old, _, _t, _) = StateStore::open_or_recover(&path).unwrap();
        old.hand_over(Vec::new(), 1).await;
        assert!(old.reclaim().await);
        assert!(matches!(
            StateStore::open_or_recover(&path).err(),
            Some(StateError::InUse { .. })
        ));
        old.close().await;
        assert!(StateStore::open_or_recover(&path).is_ok());
    }

    #[tokio::test]
    async fn records_and_health_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        let (store, loaded, thread) = StateStore::open(&path).unwrap();
        assert_eq!(loaded.next_record, 1);
        let rec = RequestRecord {
            id: 5,
            unix_ms: 1_795_996_800_000,
            task: TaskKind::Code,
            pinned: None,
            candidates: vec![],
            attempts: vec![],
            provider: Some("deepseek".into()),
            usage: Usage {
                input_tokens: 10,
                output_tokens: 20,
                ..Usage::default()
            },
            cost_usd: 0.5,
            latency_ms: 9,
            error: None,
            queued_ms: 0,
        };
        store.record(rec.clone());
        store.save_health(vec![SavedHealth {
            name: "deepseek".into(),
            success: Some(1.0),
            success_age_ms: Some(0),
            ttft_ms: None,
            ttft_age_ms: None,
            gap_ms: None,
            gap_age_ms: None,
            latency_ms: None,
            latency_age_ms: None,
            breaker: SavedBreaker::Closed,
            rate_limited_until_unix_ms: None,
            requests: 1,
            failures: 0,
            consecutive_failures: 0,
            last_error: None,
            no_prefill: false,
            no_prefill_until_unix_ms: None,
            calls_streamed: vec!["deepseek-chat".into()],
            quota: None,
            success_counts: Some((1.0, 1.0)),
            saved_unix_ms: 1,
        }]);
        assert_eq!(store.why(None).await, Some(rec.clone()));
        assert_eq!(store.why(Some(5)).await, Some(rec));
        assert_eq!(store.why(Some(6)).await, None);
        drop(store);
        thread.join().unwrap();
        let (_store, loaded, _t) = StateStore::open(&path).unwrap();
        assert_eq!(loaded.next_record, 6);
        assert_eq!(loaded.health.len(), 1);
    }

    /// `mythos usage` counts the prompt read from or written to the cache beside the rest:
    /// most of a coding agent's prompt, which "input tokens" alone leaves out.
    #[tokio::test]
    async fn usage_counts_cached_tokens() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _, _thread) = StateStore::open(&dir.path().join("state.db")).unwrap();
        let now = mythos_protocol::clock::now_unix_ms();
        for (id, read, written) in [(1, 30_000, 2_000), (2, 50_000, 0)] {
            let mut rec = record_with_id(id);
            rec.unix_ms = now;
            rec.usage = Usage {
                input_tokens: 10,
                output_tokens: 20,
                cache_read_input_tokens: read,
                cache_creation_input_tokens: written,
                ..Usage::default()
            };
            store.record(rec);
        }
        let rows = store.usage(1).await.rows;
        assert_eq!(rows.len(), 1, "{rows:?}");
        assert_eq!(rows[0].input_tokens, 20);
        assert_eq!(rows[0].cached_tokens, 82_000);
    }

    /// A request the client cancelled is counted as cancelled, not as a failure.
    #[tokio::test]
    async fn usage_tells_cancelled_from_failed() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _, _thread) = StateStore::open(&dir.path().join("state.db")).unwrap();
        let now = mythos_protocol::clock::now_unix_ms();
        for (id, error) in [
            (1, Some(mythos_protocol::ErrorKind::Cancelled)),
            (2, Some(mythos_protocol::ErrorKind::Cancelled)),
            (3, Some(mythos_protocol::ErrorKind::ServerError)),
        ] {
            let mut rec = record_with_id(id);
            rec.unix_ms = now;
            rec.provider = None;
            rec.error = error;
            store.record(rec);
        }
        let rows = store.usage(1).await.rows;
        let count = |who: &str| rows.iter().find(|r| r.provider == who).map(|r| r.requests);
        assert_eq!(count("(cancelled)"), Some(2), "{rows:?}");
        assert_eq!(count("(failed)"), Some(1), "{rows:?}");
    }

    /// A daemon run as a service for months keeps [`RECORD_DAYS`] of history, not every
    /// request it ever served: old records go while it runs, not only at its next start.
    #[tokio::test]
    async fn records_past_the_kept_days_are_deleted_while_running() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        let (store, _, _thread) = StateStore::open_with(
            &path,
            Duration::ZERO,
            Duration::ZERO,
            None,
            lock(&path).unwrap(),
        )
        .unwrap();
        let now = mythos_protocol::clock::now_unix_ms();
        let mut old = record_with_id(1);
        old.unix_ms = now - (RECORD_DAYS + 2) * 86_400_000;
        store.record(old);
        assert_eq!(
            store.why(Some(1)).await.map(|r| r.id),
            None,
            "kept past its days"
        );
        let mut recent = record_with_id(2);
        recent.unix_ms = now - (RECORD_DAYS - 2) * 86_400_000;
        store.record(recent);
        assert_eq!(store.why(Some(2)).await.map(|r| r.id), Some(2));
    }

    /// Records that cannot be written (a full disk; here another writer holding the database
    /// past the busy timeout) are kept and written once writes work again, and meanwhile
    /// `trouble` says so for `status`: a full disk lost every record of its time and only the
    /// log said so (found by a helper).
    #[tokio::test]
    async fn records_that_cannot_be_written_wait_and_are_said_to() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        let (store, _, _thread) = StateStore::open_with(
            &path,
            Duration::ZERO,
            Duration::from_secs(3600),
            None,
            lock(&path).unwrap(),
        )
        .unwrap();
        let other = Connection::open(&path).unwrap();
        other.execute_batch("BEGIN IMMEDIATE").unwrap();
        store.record(record_with_id(1));
        let deadline = Instant::now() + BUSY_TIMEOUT * 3;
        let trouble = loop {
            if let Some(t) = store.trouble() {
                break t;
            }
            assert!(Instant::now() < deadline, "no trouble reported");
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        assert!(trouble.contains("1 kept in memory"), "{trouble}");
        other.execute_batch("COMMIT").unwrap();
        drop(other);
        store.record(record_with_id(2));
        assert_eq!(store.why(Some(1)).await.map(|r| r.id), Some(1));
        assert_eq!(store.why(Some(2)).await.map(|r| r.id), Some(2));
        assert_eq!(store.trouble(), None);
    }

    /// A database that is full (its page limit standing in for a full disk) with records
    /// waiting: reads, the hand-over a restart waits for and the close are still answered.
    /// A failed write returned before them, and the next daemon ran without saved state
    /// (found by a review).
    #[test]
    fn a_full_database_still_answers_every_command() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        let lockf = lock(&path).unwrap();
        let conn = Connection::open(&path).unwrap();
        migrate(&conn).unwrap();
        let pages: i64 = conn
            .pragma_query_value(None, "page_count", |r| r.get(0))
            .unwrap();
        conn.pragma_update(None, "max_page_count", pages + 3)
            .unwrap();
        let (tx, rx) = std_mpsc::channel();
        let trouble = Mutex::new(None);
        let thread = std::thread::spawn(move || {
            let closed = run(
                conn,
                rx,
                Duration::ZERO,
                Duration::from_secs(3600),
                None,
                &lockf,
                &trouble,
            );
            (closed, trouble.into_inner().unwrap())
        });
        for id in 1..=400 {
            let mut r = record_with_id(id);
            r.provider = Some("x".repeat(500));
            tx.send(Cmd::Record(Box::new(r))).unwrap();
        }
        let (why, answer) = oneshot::channel();
        tx.send(Cmd::Why(None, why)).unwrap();
        assert!(answer.blocking_recv().is_ok(), "the read was dropped");
        let (ack, acked) = oneshot::channel();
        tx.send(Cmd::HandOver {
            health: vec![],
            next_record: 999,
            ack,
        })
        .unwrap();
        assert!(acked.blocking_recv().is_ok(), "the hand-over was dropped");
        let (ack, _closed) = oneshot::channel();
        tx.send(Cmd::Close(ack)).unwrap();
        let (closed, trouble) = thread.join().unwrap();
        assert!(closed.is_some(), "the close was dropped");
        let trouble = trouble.expect("the failure is said");
        assert!(trouble.contains("kept in memory"), "{trouble}");
    }

    fn record_with_id(id: u64) -> RequestRecord {
        RequestRecord {
            id,
            unix_ms: 1_795_996_800_000,
            task: TaskKind::Code,
            pinned: None,
            candidates: vec![],
            attempts: vec![],
            provider: Some("deepseek".into()),
            usage: Usage::default(),
            cost_usd: 0.5,
            latency_ms: 9,
            error: None,
            queued_ms: 0,
        }
    }

    /// Writes wait for company before their transaction, but a read never waits that out: it
    /// is answered at once and sees every write queued before it. The last handle going away
    /// ends the wait too, with the writes kept. (With an hour's window, either mistake hangs
    /// the test until its timeout.)
    #[tokio::test]
    async fn a_read_or_the_end_cuts_the_wait_for_more_writes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        let hour = Duration::from_secs(3600);
        let (parked_tx, parked) = std_mpsc::channel();
        let (store, _, thread) =
            StateStore::open_with(&path, hour, hour, Some(parked_tx), lock(&path).unwrap())
                .unwrap();
        for id in 1..=3 {
            store.record(record_with_id(id));
        }
        // The thread is in its wait when the read comes.
        parked.recv().unwrap();
        let read = tokio::time::timeout(Duration::from_secs(60), store.why(Some(2)));
        let got = read.await.expect("the read waited for the write window");
        assert_eq!(got.map(|r| r.id), Some(2));
        store.record(record_with_id(4));
        parked.recv().unwrap();
        drop(store);
        let joined = tokio::task::spawn_blocking(move || thread.join());
        tokio::time::timeout(Duration::from_secs(60), joined)
            .await
            .expect("the state thread waited for the write window after the last handle")
            .unwrap()
            .unwrap();
        let (_store, loaded, _t) = StateStore::open(&path).unwrap();
        assert_eq!(loaded.next_record, 5, "the last write was lost");
    }

    /// Once the daemon stops, a record is written as soon as it comes: a request ended by the
    /// shutdown must not wait for company the process will not live to see.
    #[tokio::test]
    async fn after_stop_waiting_a_record_is_written_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        let hour = Duration::from_secs(3600);
        let (store, _, _thread) =
            StateStore::open_with(&path, hour, hour, None, lock(&path).unwrap()).unwrap();
        store.stop_waiting();
        // Taken in: the record below comes in a batch of its own.
        store.flush().await;
        store.record(record_with_id(7));
        // Seen by another connection to the file, with no read through the store.
        let other = Connection::open(&path).unwrap();
        let written = async {
            loop {
                let n: i64 = other
                    .query_row("SELECT COUNT(*) FROM requests WHERE id = 7", [], |r| {
                        r.get(0)
                    })
                    .unwrap_or(0);
                if n == 1 {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        };
        tokio::time::timeout(Duration::from_secs(60), written)
            .await
            .expect("the record waited for the write window after stop_waiting");
    }

    /// What writing a request record costs the state thread, with the statement prepared
    /// once (as [`insert_record`] does) and, for comparison, prepared per record as it was.
    /// A measurement, not a check:
    /// `cargo test -p mythosd --release --lib state::tests::record_write_cost -- --ignored --nocapture`
    #[test]
    #[ignore = "a measurement, not a check: run it in release mode with --nocapture"]
    fn record_write_cost() {
        let dir = tempfile::tempdir().unwrap();
        let mut conn = Connection::open(dir.path().join("state.db")).unwrap();
        migrate(&conn).unwrap();
        let n = 2000u64;
        let rec = record_with_id;
        let start = std::time::Instant::now();
        let tx = conn.transaction().unwrap();
        for id in 0..n {
            let r = rec(id);
            tx.execute(
                "INSERT OR REPLACE INTO requests(id, unix_ms, day, provider, input_tokens,
                                                 output_tokens, cost_usd, json)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                params![
                    r.id as i64,
                    r.unix_ms as i64,
                    utc_day(r.unix_ms),
                    r.provider,
                    0i64,
                    0i64,
                    r.cost_usd,
                    serde_json::to_string(&r).unwrap()
                ],
            )
            .unwrap();
        }
        tx.commit().unwrap();
        let prepared_each = start.elapsed().as_secs_f64() * 1e6 / n as f64;
        let start = std::time::Instant::now();
        let tx = conn.transaction().unwrap();
        for id in n..2 * n {
            let r = rec(id);
            insert_record(&tx, &r, &serde_json::to_string(&r).unwrap()).unwrap();
        }
        tx.commit().unwrap();
        let cached = start.elapsed().as_secs_f64() * 1e6 / n as f64;
        println!(
            "record write: {prepared_each:.1} µs prepared per record, {cached:.1} µs cached \
             ({n} records in one transaction)"
        );
    }
}
