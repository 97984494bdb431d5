//! What is typed at the terminal while the chat is busy (an answer streaming): kept out of the
//! answer on the screen, and waiting in the editor at the next prompt.
//!
//! Between two prompts the terminal is in its ordinary (canonical) mode, where it echoes what
//! is typed: a question typed while an answer streamed appeared in the middle of the answer.
//! And rustyline reads the terminal 1,024 bytes at a time and drops what it read past the line
//! it returns (without its `buffer-redux` feature, gone from rustyline 19): of two lines typed
//! ahead, the second was lost. So while busy the echo is off, and before the next prompt the
//! complete lines typed meanwhile are taken here (canonical mode hands over one line per
//! `read`), leaving rustyline the line still being typed. All of it goes into the editor, to be
//! sent with Enter: nothing is sent unseen. A paste's line breaks and a typed Enter look the
//! same here, and a paste sent line by line was several questions.

/// How long no new line must come, once something was typed ahead, before the prompt is
/// back: a paste arriving line by line has shorter gaps.
#[cfg(unix)]
const PASTE_QUIET: std::time::Duration = std::time::Duration::from_millis(250);

/// The longest the prompt waits for a paste still arriving.
#[cfg(unix)]
const PASTE_MAX: std::time::Duration = std::time::Duration::from_secs(3);

/// Bytes typed on stdin and not read yet (a line not finished counts).
#[cfg(unix)]
fn pending_bytes() -> libc::c_int {
    let mut n: libc::c_int = 0;
    // SAFETY: FIONREAD writes one int into `n`; a failure leaves it 0.
    if unsafe { libc::ioctl(0, libc::FIONREAD as _, &mut n) } != 0 {
        return 0;
    }
    n
}

/// The echo put back when the chat is killed while it is off (`kill`, a closed terminal,
/// Ctrl-\\): no destructor runs then, and a shell that does not restore the terminal itself
/// (dash) left the user typing blind.
#[cfg(unix)]
mod on_signal {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Once, OnceLock};

    /// The terminal's settings with its echo on (the same at every hold).
    static SAVED: OnceLock<libc::termios> = OnceLock::new();
    /// And with it off, as a hold sets them (put back after a stop, Ctrl-Z then `fg`).
    static QUIET: OnceLock<libc::termios> = OnceLock::new();
    /// The echo is off now.
    static HELD: AtomicBool = AtomicBool::new(false);

    /// The echo is about to go off; `saved` has it on, `quiet` off.
    pub fn arm(saved: libc::termios, quiet: libc::termios) {
        let _ = SAVED.set(saved);
        let _ = QUIET.set(quiet);
        static HANDLERS: Once = Once::new();
        HANDLERS.call_once(|| {
            for sig in [libc::SIGTERM, libc::SIGHUP, libc::SIGQUIT, libc::SIGTSTP] {
                // SAFETY: the handler only loads atomics, calls tcflush and tcsetattr and
                // re-raises the signal's default action, all async-signal-safe.
                let _ = unsafe {
                    signal_hook::low_level::register(sig, move || {
                        if HELD.load(Ordering::Acquire) {
                            // What was typed ahead goes with the chat: kept (NOFLSH), the
                            // shell would read it next, as commands (found by a review).
                            libc::tcflush(0, libc::TCIFLUSH);
                            if let Some(t) = SAVED.get() {
                                libc::tcsetattr(0, libc::TCSANOW, t);
                            }
                        }
                        let _ = signal_hook::low_level::emulate_default_handler(sig);
                    })
                };
            }
            // Back from a stop (`fg`) while an answer streams: the echo off again.
            // SAFETY: as above.
            let _ = unsafe {
                signal_hook::low_level::register(libc::SIGCONT, || {
                    if HELD.load(Ordering::Acquire) {
                        if let Some(t) = QUIET.get() {
                            libc::tcsetattr(0, libc::TCSANOW, t);
                        }
                    }
                })
            };
        });
        HELD.store(true, Ordering::Release);
    }

    /// The echo is back.
    pub fn disarm() {
        HELD.store(false, Ordering::Release);
    }
}

/// What was typed ahead.
#[derive(Debug, Default)]
pub struct TypedAhead {
    /// The complete lines, as typed (each with its line break).
    text: String,
    /// Ctrl-D was typed on an empty line.
    eof: bool,
}

/// What to do with what was typed ahead.
#[derive(Debug, PartialEq, Eq)]
pub enum Typed {
    /// Put this in the editor.
    Text(String),
    /// Ctrl-D, with nothing typed before it: the chat ends.
    Eof,
}

impl TypedAhead {
    /// Take what was typed ahead, if anything.
    pub fn take(&mut self) -> Option<Typed> {
        let eof = std::mem::take(&mut self.eof);
        if !self.text.is_empty() {
            return Some(Typed::Text(std::mem::take(&mut self.text)));
        }
        eof.then_some(Typed::Eof)
    }

    /// Add what one canonical-mode read returned: a line ending in a newline, a line ended by
    /// Ctrl-D (no newline), or nothing (Ctrl-D on an empty line).
    #[cfg_attr(not(unix), allow(dead_code))]
    fn push_read(&mut self, bytes: &[u8]) {
        if self.eof {
            return;
        }
        if bytes.is_empty() {
            self.eof = true;
            return;
        }
        // Bracketed-paste markers, should a terminal send them in the moment the mode was on:
        // they are no part of the message.
        let text = String::from_utf8_lossy(bytes)
            .replace('\r', "")
            .replace("\x1b[200~", "")
            .replace("\x1b[201~", "");
        self.text.push_str(&text);
    }
}

/// The terminal's echo, off while this lives (on stdin, when it is a terminal in canonical
/// mode with echo on; otherwise this does nothing).
pub struct Quiet {
    #[cfg(unix)]
    saved: Option<libc::termios>,
}

impl Quiet {
    /// Turn the echo off.
    pub fn hold() -> Quiet {
        #[cfg(unix)]
        {
            // SAFETY: tcgetattr/tcsetattr on fd 0 with a termios owned here; a failure (stdin
            // not a terminal) leaves it untouched and this guard empty.
            unsafe {
                let mut t: libc::termios = std::mem::zeroed();
                if libc::isatty(0) != 1 || libc::tcgetattr(0, &mut t) != 0 {
                    return Quiet { saved: None };
                }
                if t.c_lflag & libc::ECHO == 0 || t.c_lflag & libc::ICANON == 0 {
                    return Quiet { saved: None };
                }
                let saved = t;
                // ISIG stays: Ctrl-C still interrupts the answer. NOFLSH: without it the
                // terminal throws away what was typed ahead when Ctrl-C comes (found by a
                // helper: a half-typed question gone after cancelling the answer).
                t.c_lflag &= !(libc::ECHO | libc::ECHONL);
                t.c_lflag |= libc::NOFLSH;
                on_signal::arm(saved, t);
                if libc::tcsetattr(0, libc::TCSANOW, &t) != 0 {
                    on_signal::disarm();
                    return Quiet { saved: None };
                }
                Quiet { saved: Some(saved) }
            }
        }
        #[cfg(not(unix))]
        Quiet {}
    }

    /// The complete lines typed while the echo was off, into `ahead`; then the echo is back.
    /// What is still being typed (no Enter yet) stays for the line editor.
    pub fn release(mut self, ahead: &mut TypedAhead) {
        #[cfg(unix)]
        if self.saved.is_some() {
            let mut buf = vec![0u8; 8192];
            // Once something was typed, more may be on its way: a paste that arrives line by
            // line (over ssh) and is still arriving as the answer ends. What came after the
            // prompt was back went to the editor in raw mode, where each line break is Enter:
            // most of a 60-line paste was sent unseen. So lines are taken until none has come
            // for a moment, within a bound.
            let started = std::time::Instant::now();
            loop {
                let typing = !ahead.text.is_empty() || pending_bytes() > 0;
                let wait = if !typing || started.elapsed() > PASTE_MAX {
                    0
                } else {
                    PASTE_QUIET.as_millis() as libc::c_int
                };
                let mut fds = libc::pollfd {
                    fd: 0,
                    events: libc::POLLIN,
                    revents: 0,
                };
                // SAFETY: one pollfd owned here. In canonical mode stdin is readable only once
                // a line is complete (or Ctrl-D was typed).
                let ready = unsafe { libc::poll(&mut fds, 1, wait) };
                if ready != 1 || fds.revents & libc::POLLIN == 0 {
                    break;
                }
                // SAFETY: reads into a buffer owned here, within its length; poll said a line
                // is there, so this does not block.
                let n = unsafe { libc::read(0, buf.as_mut_ptr().cast(), buf.len()) };
                let Ok(n) = usize::try_from(n) else { break };
                ahead.push_read(&buf[..n]);
                if n == 0 {
                    break;
                }
            }
        }
        // Nothing is held back where the echo cannot be turned off.
        #[cfg(not(unix))]
        let _ = ahead;
        self.restore();
    }

    fn restore(&mut self) {
        #[cfg(unix)]
        if let Some(saved) = self.saved.take() {
            // SAFETY: puts back the settings read in `hold`. TCSANOW: what was typed stays.
            unsafe { libc::tcsetattr(0, libc::TCSANOW, &saved) };
            on_signal::disarm();
        }
    }
}

impl Drop for Quiet {
    fn drop(&mut self) {
        // An error or a panic between hold and release must not leave the terminal mute.
        self.restore();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_kept_as_typed_and_the_end_only_alone() {
        let mut ahead = TypedAhead::default();
        ahead.push_read(b"second question\n");
        ahead.push_read(b"third\r\n");
        ahead.push_read(b"ended by ctrl-d");
        ahead.push_read(b"");
        ahead.push_read(b"after the end\n");
        assert_eq!(
            ahead.take(),
            Some(Typed::Text(
                "second question\nthird\nended by ctrl-d".into()
            ))
        );
        assert_eq!(ahead.take(), None);
        let mut ahead = TypedAhead::default();
        ahead.push_read(b"\x1b[200~pasted\n");
        ahead.push_read(b"lines\x1b[201~\n");
        assert_eq!(ahead.take(), Some(Typed::Text("pasted\nlines\n".into())));
        ahead.push_read(b"");
        assert_eq!(ahead.take(), Some(Typed::Eof));
    }
}
