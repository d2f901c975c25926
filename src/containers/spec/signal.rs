//! The stop signal of a container, as a number: the CRI's `stop_signal`, else the image's `StopSignal`,
//! else SIGTERM.

use std::str::FromStr;

use crate::cri::v1 as cri;

/// The real-time signal range as glibc (and so Docker, containerd and the images written for them) numbers
/// it: `SIGRTMIN` is 34 because glibc keeps 32 and 33 for itself.
const SIGRTMIN: i32 = 34;
const SIGRTMAX: i32 = 64;

/// A signal by name (`SIGTERM`, `TERM`, `sigterm`, `SIGRTMIN+3`, `SIGRTMAX-2`) or number.
pub(crate) fn parse(text: &str) -> Option<i32> {
    let text = text.trim();
    if let Ok(number) = text.parse::<i32>() {
        return (1..=SIGRTMAX).contains(&number).then_some(number);
    }
    let upper = text.to_ascii_uppercase();
    let name = if upper.starts_with("SIG") { upper } else { format!("SIG{upper}") };
    let offset = |rest: &str| -> Option<i32> { if rest.is_empty() { Some(0) } else { rest.parse::<i32>().ok() } };
    if let Some(rest) = name.strip_prefix("SIGRTMIN") {
        let n = SIGRTMIN + offset(rest.strip_prefix('+').unwrap_or(rest))?;
        return (SIGRTMIN..=SIGRTMAX).contains(&n).then_some(n);
    }
    if let Some(rest) = name.strip_prefix("SIGRTMAX") {
        let n = SIGRTMAX - offset(rest.strip_prefix('-').unwrap_or(rest))?;
        return (SIGRTMIN..=SIGRTMAX).contains(&n).then_some(n);
    }
    let name = match name.as_str() {
        "SIGCLD" => "SIGCHLD",
        "SIGPOLL" => "SIGIO",
        "SIGIOT" => "SIGABRT",
        other => other,
    };
    nix::sys::signal::Signal::from_str(name).ok().map(|s| s as i32)
}

/// The CRI enum's value as a signal number; None for RUNTIME_DEFAULT and unknown values.
fn from_cri(value: i32) -> Option<i32> {
    let signal = cri::Signal::try_from(value).ok().filter(|s| *s != cri::Signal::RuntimeDefault)?;
    // The enum's names are the signals' (`SIGRTMINPLUS1`, `SIGRTMAXMINUS14`), spelled for protobuf.
    let name = signal.as_str_name().replace("PLUS", "+").replace("MINUS", "-");
    parse(&name)
}

/// The signal StopContainer sends first. An image StopSignal berth cannot read falls back to SIGTERM with a
/// warning rather than failing the container (containerd fails later, at stop time).
pub(crate) fn stop_signal(config_signal: i32, image_signal: &str) -> i32 {
    if let Some(signal) = from_cri(config_signal) {
        return signal;
    }
    if !image_signal.is_empty() {
        match parse(image_signal) {
            Some(signal) => return signal,
            None => tracing::warn!(stop_signal = image_signal, "unknown StopSignal in the image config; using SIGTERM"),
        }
    }
    nix::libc::SIGTERM
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_numbers_and_realtime_offsets_parse() {
        assert_eq!(parse("SIGTERM"), Some(15));
        assert_eq!(parse("term"), Some(15));
        assert_eq!(parse("9"), Some(9));
        assert_eq!(parse("SIGRTMIN"), Some(34));
        assert_eq!(parse("SIGRTMIN+3"), Some(37));
        assert_eq!(parse("RTMAX-1"), Some(63));
        assert_eq!(parse("SIGCLD"), Some(nix::libc::SIGCHLD));
        assert_eq!(parse("SIGPWR"), Some(nix::libc::SIGPWR));
        assert_eq!(parse("SIGNOPE"), None);
        assert_eq!(parse("0"), None);
        assert_eq!(parse("65"), None);
    }

    #[test]
    fn every_cri_signal_maps_to_a_number() {
        for value in 1..=65 {
            assert!(from_cri(value).is_some(), "CRI signal {value}");
        }
        assert_eq!(from_cri(cri::Signal::Sigrtminplus1 as i32), Some(35));
        assert_eq!(from_cri(cri::Signal::Sigrtmaxminus1 as i32), Some(63));
        assert_eq!(from_cri(cri::Signal::Sigrtmax as i32), Some(64));
        assert_eq!(from_cri(0), None);
    }

    #[test]
    fn stop_signal_prefers_the_config_then_the_image_then_sigterm() {
        assert_eq!(stop_signal(cri::Signal::Sigusr1 as i32, "SIGQUIT"), nix::libc::SIGUSR1);
        assert_eq!(stop_signal(0, "SIGQUIT"), nix::libc::SIGQUIT);
        assert_eq!(stop_signal(0, ""), nix::libc::SIGTERM);
        assert_eq!(stop_signal(0, "SIGBOGUS"), nix::libc::SIGTERM);
    }
}
