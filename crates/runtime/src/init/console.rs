//! process.terminal: a pseudo-terminal from the container's own devpts, its master sent to the caller's
//! console socket (runc's `--console-socket` protocol: one SCM_RIGHTS message), its slave made the
//! container's controlling terminal and stdio.

use std::io::IoSlice;
use std::os::fd::{AsRawFd, OwnedFd};

use nix::fcntl::OFlag;
use nix::sys::socket::{ControlMessage, MsgFlags, sendmsg};
use oci_spec::runtime::Box as ConsoleSize;

use crate::error::{Result, RuntimeError};

nix::ioctl_write_int_bad!(set_controlling_terminal, libc::TIOCSCTTY);
nix::ioctl_write_ptr_bad!(set_window_size, libc::TIOCSWINSZ, libc::winsize);

pub(super) fn setup(socket: &OwnedFd, size: Option<&ConsoleSize>) -> Result<()> {
    let master = nix::pty::posix_openpt(OFlag::O_RDWR | OFlag::O_NOCTTY | OFlag::O_CLOEXEC)
        .map_err(RuntimeError::sys("open /dev/ptmx in the container"))?;
    nix::pty::grantpt(&master).map_err(RuntimeError::sys("grantpt"))?;
    nix::pty::unlockpt(&master).map_err(RuntimeError::sys("unlockpt"))?;
    let slave_name = nix::pty::ptsname_r(&master).map_err(RuntimeError::sys("ptsname"))?;
    let slave: OwnedFd =
        nix::fcntl::open(slave_name.as_str(), OFlag::O_RDWR | OFlag::O_NOCTTY, nix::sys::stat::Mode::empty())
            .map_err(RuntimeError::sys(format!("open {slave_name}")))?;
    if let Some(size) = size {
        let window =
            libc::winsize { ws_row: size.height() as u16, ws_col: size.width() as u16, ws_xpixel: 0, ws_ypixel: 0 };
        // SAFETY: the fd is an open terminal and `window` a valid winsize for the duration of the call.
        unsafe { set_window_size(slave.as_raw_fd(), &window) }.map_err(RuntimeError::sys("set the terminal size"))?;
    }
    let name = slave_name.as_bytes();
    let iov = [IoSlice::new(name)];
    let fds = [master.as_raw_fd()];
    sendmsg::<()>(socket.as_raw_fd(), &iov, &[ControlMessage::ScmRights(&fds)], MsgFlags::empty(), None)
        .map_err(RuntimeError::sys("send the terminal to the console socket"))?;
    drop(master);
    for target in 0..3 {
        let mut target_fd = super::unsafe_target(target);
        let result = nix::unistd::dup2(&slave, &mut target_fd);
        std::mem::forget(target_fd);
        result.map_err(RuntimeError::sys(format!("dup2 the terminal onto fd {target}")))?;
    }
    // SAFETY: fd 0 is the terminal just installed; TIOCSCTTY takes an int argument.
    unsafe { set_controlling_terminal(0, 0) }
        .map_err(RuntimeError::sys("make the terminal the controlling terminal"))?;
    Ok(())
}
