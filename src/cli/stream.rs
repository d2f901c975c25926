//! What `berth exec` (without -s) and `berth attach` share once the RPC has returned a streaming URL: the
//! local terminal (raw mode while a tty session runs, its size at the start and on every SIGWINCH) and
//! the session itself, through `berth_streaming::client`.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd};

use berth_streaming::TerminalSize;
use berth_streaming::client::{self, CommandIo, Transport};
use nix::sys::termios::{self, SetArg, Termios};

/// `--transport`: SPDY by default, as crictl.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum TransportArg {
    #[default]
    Spdy,
    Websocket,
}

impl From<TransportArg> for Transport {
    fn from(arg: TransportArg) -> Transport {
        match arg {
            TransportArg::Spdy => Transport::Spdy,
            TransportArg::Websocket => Transport::WebSocket,
        }
    }
}

/// Runs the remote command behind `url` with this process's stdio and returns the exit code to leave with.
/// `stdin`, `tty` and stderr (`!tty`) must be what the Exec/Attach request asked for.
pub async fn run_command(url: &str, transport: TransportArg, stdin: bool, tty: bool) -> Result<u8, String> {
    let terminal_in = stdin && tty && nix::unistd::isatty(std::io::stdin().as_fd()).unwrap_or(false);
    // Raw mode only when our stdin is a terminal we forward: keys go to the remote tty unchanged (Ctrl-C
    // included), and the remote tty does the echoing. Restored when the guard drops, on every path.
    let _raw = if terminal_in { Some(RawMode::enter(std::io::stdin().as_fd())?) } else { None };
    let resize = tty.then(watch_window_size);
    let io = CommandIo {
        stdin: stdin.then(|| Box::new(tokio::io::stdin()) as _),
        stdout: Some(Box::new(tokio::io::stdout())),
        stderr: (!tty).then(|| Box::new(tokio::io::stderr()) as _),
        tty,
        resize,
    };
    let code = client::run_command(url, transport.into(), io).await.map_err(|err| crate::error::chain(&err))?;
    Ok(exit_code(code))
}

/// A process exit status is one byte; a code outside it (which no Linux process has) is still a failure.
pub fn exit_code(code: i32) -> u8 {
    u8::try_from(code).unwrap_or(1)
}

/// The terminal's attributes as they were; put back on drop.
struct RawMode {
    fd: std::os::fd::RawFd,
    saved: Termios,
}

impl RawMode {
    fn enter(fd: BorrowedFd<'_>) -> Result<RawMode, String> {
        let saved = termios::tcgetattr(fd).map_err(|err| format!("cannot read the terminal's attributes: {err}"))?;
        let mut raw = saved.clone();
        termios::cfmakeraw(&mut raw);
        termios::tcsetattr(fd, SetArg::TCSANOW, &raw).map_err(|err| format!("cannot set raw mode: {err}"))?;
        Ok(RawMode { fd: fd.as_raw_fd(), saved })
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        // SAFETY: the fd is this process's stdin, which stays open for the life of the process.
        let fd = unsafe { BorrowedFd::borrow_raw(self.fd) };
        let _ = termios::tcsetattr(fd, SetArg::TCSADRAIN, &self.saved);
    }
}

/// The size of the terminal on stdout (else stdin), if either is one.
fn window_size() -> Option<TerminalSize> {
    [std::io::stdout().as_raw_fd(), std::io::stdin().as_raw_fd()].into_iter().find_map(|fd| {
        let mut size = nix::libc::winsize { ws_row: 0, ws_col: 0, ws_xpixel: 0, ws_ypixel: 0 };
        // SAFETY: TIOCGWINSZ writes one `winsize` through the pointer, which points at a live local.
        let result = unsafe { nix::libc::ioctl(fd, nix::libc::TIOCGWINSZ, &mut size) };
        (result == 0 && size.ws_col > 0).then_some(TerminalSize { width: size.ws_col, height: size.ws_row })
    })
}

/// The window size now and after every SIGWINCH, for the session's resize stream.
fn watch_window_size() -> tokio::sync::mpsc::Receiver<TerminalSize> {
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tokio::spawn(async move {
        if let Some(size) = window_size()
            && tx.send(size).await.is_err()
        {
            return;
        }
        let Ok(mut winch) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::window_change()) else {
            return;
        };
        while winch.recv().await.is_some() {
            if let Some(size) = window_size()
                && tx.send(size).await.is_err()
            {
                return;
            }
        }
    });
    rx
}

#[cfg(test)]
mod tests {
    #[test]
    fn exit_codes_pass_through() {
        assert_eq!(super::exit_code(0), 0);
        assert_eq!(super::exit_code(3), 3);
        assert_eq!(super::exit_code(137), 137);
        assert_eq!(super::exit_code(-1), 1);
        assert_eq!(super::exit_code(256), 1);
    }
}
