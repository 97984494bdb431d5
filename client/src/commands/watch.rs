//! `mythos status --watch`: the status table redrawn in place every interval, until `q` or
//! Ctrl-C; one plain line per provider per refresh when stdout is not a terminal.

use std::io::{IsTerminal, Write};
use std::time::Duration;

use mythos_protocol::StatusReport;

use super::status::fetch;
use super::Globals;
use crate::connection::Connection;
use crate::error::{Failure, EXIT_OK};
use crate::render::{status_text, Style};

/// Clear the screen and go home; hide / show the cursor.
const CLEAR: &str = "\x1b[H\x1b[2J";
const HIDE_CURSOR: &str = "\x1b[?25l";
const SHOW_CURSOR: &str = "\x1b[?25h";

/// Watch until quit, or for `count` refreshes.
pub async fn run(g: &Globals, interval: Duration, count: Option<u64>) -> Result<u8, Failure> {
    let mut conn = Connection::connect_or_start(&g.target).await?;
    let tty = std::io::stdout().is_terminal();
    // Keys arrive one by one (no echo, no line buffering) while the view is up; the guard
    // restores the terminal however this ends.
    let _raw = tty.then(RawMode::enter).flatten();
    let (key_tx, mut keys) = tokio::sync::mpsc::channel::<u8>(8);
    // Keys come from a terminal only: stdin at its end (`</dev/null`, a pipe) is not a quit.
    let keyboard = tty && std::io::stdin().is_terminal();
    if keyboard {
        std::thread::spawn(move || {
            use std::io::Read;
            let mut stdin = std::io::stdin();
            let mut b = [0u8; 1];
            while let Ok(1) = stdin.read(&mut b) {
                if key_tx.blocking_send(b[0]).is_err() {
                    break;
                }
            }
        });
    }
    let mut out = std::io::stdout();
    if tty {
        let _ = write!(out, "{HIDE_CURSOR}");
    }
    let mut frames = 0u64;
    let result = loop {
        let report = match fetch(&mut conn).await {
            Ok(r) => r,
            Err(e) => break Err(e),
        };
        let frame = if tty {
            let footer = Style::stdout().dim(&format!(
                "refreshing every {} · q to quit",
                crate::render::fmt_duration_ms(interval.as_millis() as u64)
            ));
            // Raw mode: a bare \n would not return the carriage.
            format!(
                "{CLEAR}{}{}\n{footer}\n",
                status_text(&report, Style::stdout(), &crate::render::env_keys()),
                failovers_text(&report)
            )
            .replace('\n', "\r\n")
        } else {
            plain_lines(&report)
        };
        if out
            .write_all(frame.as_bytes())
            .and_then(|_| out.flush())
            .is_err()
        {
            // The reader went away (a closed pipe): nothing left to show.
            break Ok(EXIT_OK);
        }
        frames += 1;
        if count.is_some_and(|c| frames >= c) {
            break Ok(EXIT_OK);
        }
        let quit = tokio::select! {
            _ = tokio::time::sleep(interval) => false,
            key = keys.recv(), if keyboard => matches!(key, Some(b'q' | b'Q' | 3 | 4) | None),
            _ = tokio::signal::ctrl_c() => true,
        };
        if quit {
            break Ok(EXIT_OK);
        }
    };
    if tty {
        let _ = write!(out, "{SHOW_CURSOR}");
        let _ = out.flush();
    }
    result
}

/// The recent failovers, newest first, as lines under the table.
fn failovers_text(report: &StatusReport) -> String {
    if report.recent_failovers.is_empty() {
        return String::new();
    }
    let mut out = String::from("\nrecent failovers\n");
    for f in report.recent_failovers.iter().rev() {
        let (_, _, _, h, m, s) = mythos_protocol::clock::utc_civil((f.unix_ms / 1000) as i64);
        out.push_str(&format!(
            "  {h:02}:{m:02}:{s:02} UTC  {} -> {}  ({})\n",
            f.from, f.to, f.reason
        ));
    }
    out
}

/// One line per provider: time, name, state, score, in flight, quota left, cooldown.
fn plain_lines(report: &StatusReport) -> String {
    let now = crate::render::now_unix_ms();
    let (_, _, _, h, m, s) = mythos_protocol::clock::utc_civil((now / 1000) as i64);
    let mut out = String::new();
    for p in &report.providers {
        let quota = p
            .quotas
            .iter()
            // `input tokens` is two words: one field per line item, so `_`.
            .map(|q| format!("{}:{}", q.what.replace(' ', "_"), q.remaining))
            .collect::<Vec<_>>()
            .join(",");
        out.push_str(&format!(
            "{h:02}:{m:02}:{s:02} {} state={} score={:.1} in_flight={} quota={} cooldown_ms={}\n",
            p.name,
            // One word per field, so the lines split on spaces.
            p.state.as_str().replace(' ', "_"),
            p.score,
            p.in_flight,
            if quota.is_empty() { "-".into() } else { quota },
            p.cooldown_left_ms.map_or("-".into(), |c| c.to_string()),
        ));
    }
    out
}

/// The terminal in non-canonical, no-echo mode, restored on drop.
struct RawMode {
    #[cfg(unix)]
    saved: libc::termios,
}

impl RawMode {
    #[cfg(unix)]
    fn enter() -> Option<RawMode> {
        // SAFETY: tcgetattr/tcsetattr on fd 0 with a termios we own; failure leaves the
        // terminal as it was.
        unsafe {
            let mut t: libc::termios = std::mem::zeroed();
            if libc::tcgetattr(0, &mut t) != 0 {
                return None;
            }
            let saved = t;
            // Keys one at a time, unechoed; Ctrl-C arrives as a byte so the view can restore
            // the terminal before it goes.
            t.c_lflag &= !(libc::ICANON | libc::ECHO | libc::ISIG);
            t.c_cc[libc::VMIN] = 1;
            t.c_cc[libc::VTIME] = 0;
            if libc::tcsetattr(0, libc::TCSANOW, &t) != 0 {
                return None;
            }
            Some(RawMode { saved })
        }
    }

    #[cfg(not(unix))]
    fn enter() -> Option<RawMode> {
        None
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        #[cfg(unix)]
        // SAFETY: restores the attributes read in `enter`.
        unsafe {
            libc::tcsetattr(0, libc::TCSANOW, &self.saved);
        }
    }
}
