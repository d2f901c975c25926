//! Named crash points for the fault-injection tests (`e2e/faults.rs`): places between an intent berth
//! records and the fact that follows it, where a test kills the daemon with SIGKILL, as `kill -9` would, to
//! see that start-up and kubelet's retry finish or undo what the crash interrupted.
//!
//! They exist only in a build with the `failpoints` feature (`make test` builds the daemon under test with
//! it): a release build has neither the points nor the `fail` crate. There, `BERTH_CRASH_AT=point[,point]`
//! arms points at start-up, and `FAILPOINTS` gives any point one of fail-rs's own actions
//! (`point=sleep(5000)`, `point=pause`, `point=panic`).

/// A crash point: `crash_point!("run-pod-sandbox-after-intent")`. Nothing at all without `failpoints`.
macro_rules! crash_point {
    ($name:literal) => {
        #[cfg(feature = "failpoints")]
        fail::fail_point!($name);
    };
}
pub(crate) use crash_point;

/// Arms the points `BERTH_CRASH_AT` and `FAILPOINTS` name. Called once, first thing in `serve`.
#[cfg(feature = "failpoints")]
pub fn arm_from_env() {
    // The scenario lasts as long as the process (its guard only serializes scenarios within a process).
    std::mem::forget(fail::FailScenario::setup());
    let Ok(points) = std::env::var("BERTH_CRASH_AT") else { return };
    for point in points.split(',').filter(|p| !p.is_empty()) {
        let name = point.to_owned();
        let armed = fail::cfg_callback(point, move || {
            tracing::info!(point = %name, "crash point reached; killing the daemon (SIGKILL)");
            // SIGKILL, not exit: no destructor, no flush, no graceful shutdown, exactly as kill -9.
            let _ = nix::sys::signal::raise(nix::sys::signal::Signal::SIGKILL);
        });
        match armed {
            Ok(()) => tracing::warn!(point, "crash point armed (a test build; BERTH_CRASH_AT)"),
            Err(err) => tracing::warn!(point, error = %err, "cannot arm the crash point"),
        }
    }
}

/// Without the `failpoints` feature there is nothing to arm.
#[cfg(not(feature = "failpoints"))]
pub fn arm_from_env() {}
