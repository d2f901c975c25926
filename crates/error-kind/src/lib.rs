//! The kinds of failure berth's crates report.
//!
//! Every crate keeps its own error types (what failed, at which step, on which path); each of them also
//! answers [`Kinded::kind`], and only that kind decides the gRPC status code the daemon returns. The mapping
//! itself lives in one place, at the daemon's edge (`src/error.rs`), so no crate under `crates/` knows gRPC
//! or CRI.

/// What kind of failure an error is, from the caller's point of view.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// The object asked for does not exist.
    NotFound,
    /// An object with that name or id already exists.
    AlreadyExists,
    /// The request itself is wrong and retrying it unchanged cannot help.
    InvalidArgument,
    /// The object is in a state that does not allow the operation.
    FailedPrecondition,
    /// A dependency (registry, plugin, the daemon itself while starting) cannot be reached now; retry later.
    Unavailable,
    /// The operation ran out of time.
    DeadlineExceeded,
    /// A limit was reached (disk, memory, process count).
    ResourceExhausted,
    /// berth does not do this (yet).
    Unimplemented,
    /// A failure of berth or the host that the caller cannot fix.
    Internal,
}

/// An error that knows its [`ErrorKind`].
pub trait Kinded {
    fn kind(&self) -> ErrorKind;
}

impl ErrorKind {
    /// The kind an I/O error most plausibly means when it comes from the host rather than from a request.
    pub fn of_io(err: &std::io::Error) -> ErrorKind {
        use std::io::ErrorKind as Io;
        match err.kind() {
            Io::NotFound => ErrorKind::NotFound,
            Io::AlreadyExists => ErrorKind::AlreadyExists,
            Io::TimedOut => ErrorKind::DeadlineExceeded,
            Io::StorageFull | Io::QuotaExceeded | Io::OutOfMemory => ErrorKind::ResourceExhausted,
            Io::ConnectionRefused | Io::ConnectionReset | Io::NotConnected => ErrorKind::Unavailable,
            _ => ErrorKind::Internal,
        }
    }
}

impl ErrorKind {
    /// The kind of an I/O error on berth's own files (its state, a pod's files, a bundle): a full disk or
    /// quota is ResourceExhausted, which kubelet retries; anything else is a failure of berth or the host.
    /// Unlike [`ErrorKind::of_io`], a missing file here never means the object asked for does not exist.
    pub fn of_own_io(err: &std::io::Error) -> ErrorKind {
        match ErrorKind::of_io(err) {
            ErrorKind::ResourceExhausted => ErrorKind::ResourceExhausted,
            _ => ErrorKind::Internal,
        }
    }
}

/// An error and its causes on one line, outermost first (`a: b: c`), for logs and error messages.
pub fn chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn io_errors_map_to_the_kind_a_caller_can_act_on() {
        let cases = [
            (std::io::ErrorKind::NotFound, ErrorKind::NotFound),
            (std::io::ErrorKind::StorageFull, ErrorKind::ResourceExhausted),
            (std::io::ErrorKind::ConnectionRefused, ErrorKind::Unavailable),
            (std::io::ErrorKind::PermissionDenied, ErrorKind::Internal),
        ];
        for (io, want) in cases {
            assert_eq!(ErrorKind::of_io(&std::io::Error::from(io)), want, "{io:?}");
        }
    }
}
