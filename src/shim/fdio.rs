//! Asynchronous reads and writes on the raw descriptors the shim holds for containers: pipe ends and pty
//! masters. They are not sockets or files tokio knows, so each is made non-blocking and registered with the
//! reactor through [`AsyncFd`].

use std::io;
use std::os::fd::{AsFd, OwnedFd};

use tokio::io::Interest;
use tokio::io::unix::AsyncFd;

/// Size of one read: a chunk of output is sent on as one message.
pub const CHUNK: usize = 32 * 1024;

fn registered(fd: OwnedFd, interest: Interest) -> io::Result<AsyncFd<OwnedFd>> {
    use nix::fcntl::{FcntlArg, OFlag, fcntl};
    let flags = OFlag::from_bits_truncate(fcntl(&fd, FcntlArg::F_GETFL).map_err(io::Error::from)?);
    fcntl(&fd, FcntlArg::F_SETFL(flags | OFlag::O_NONBLOCK)).map_err(io::Error::from)?;
    // SAFETY: `fd` is an OwnedFd moved into the AsyncFd: it stays open and is the same descriptor until the
    // AsyncFd drops it.
    unsafe { AsyncFd::register_with_interest(fd, interest) }.map_err(|e| e.into_parts().1)
}

/// The reading end of a pipe, or a pty master read for output.
pub struct FdReader(AsyncFd<OwnedFd>);

impl FdReader {
    pub fn new(fd: OwnedFd) -> io::Result<FdReader> {
        registered(fd, Interest::READABLE).map(FdReader)
    }

    /// The next bytes, or None at EOF. A pty master reports EIO once the last slave closes: that is its EOF,
    /// and any other read error ends the stream the same way.
    pub async fn read(&self, buffer: &mut [u8]) -> Option<usize> {
        loop {
            let Ok(mut guard) = self.0.readable().await else { return None };
            match guard.try_io(|fd| nix::unistd::read(fd.get_ref(), buffer).map_err(io::Error::from)) {
                Ok(Ok(0)) | Ok(Err(_)) => return None,
                Ok(Ok(n)) => return Some(n),
                Err(_would_block) => continue,
            }
        }
    }
}

/// The writing end of a container's stdin: a pipe, or (for a tty) a duplicate of the pty master.
pub struct FdWriter(AsyncFd<OwnedFd>);

impl FdWriter {
    pub fn new(fd: OwnedFd) -> io::Result<FdWriter> {
        registered(fd, Interest::WRITABLE).map(FdWriter)
    }

    pub async fn write_all(&self, mut data: &[u8]) -> io::Result<()> {
        while !data.is_empty() {
            let mut guard = self.0.writable().await?;
            match guard.try_io(|fd| nix::unistd::write(fd.get_ref(), data).map_err(io::Error::from)) {
                Ok(Ok(n)) => data = &data[n..],
                Ok(Err(err)) => return Err(err),
                Err(_would_block) => continue,
            }
        }
        Ok(())
    }

    pub fn fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.0.get_ref().as_fd()
    }
}

nix::ioctl_write_ptr_bad!(set_window_size, nix::libc::TIOCSWINSZ, nix::libc::winsize);

/// Sets the window size of the terminal behind `fd` (a pty master); the foreground process group gets
/// SIGWINCH from the kernel.
pub fn resize(fd: std::os::fd::BorrowedFd<'_>, width: u32, height: u32) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let size = nix::libc::winsize {
        ws_row: height.min(u16::MAX as u32) as u16,
        ws_col: width.min(u16::MAX as u32) as u16,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: `fd` is open for the duration of the call and `size` is a valid winsize it only reads.
    unsafe { set_window_size(fd.as_raw_fd(), &size) }.map(drop).map_err(io::Error::from)
}

/// Reads `fd` until EOF, handing each chunk to `sink`.
pub async fn read_all(fd: OwnedFd, mut sink: impl FnMut(&[u8])) {
    let Ok(reader) = FdReader::new(fd) else { return };
    let mut buffer = vec![0u8; CHUNK];
    while let Some(n) = reader.read(&mut buffer).await {
        sink(&buffer[..n]);
    }
}
