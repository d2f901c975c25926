//! Gives the heap's free pages back to the kernel while the daemon works, and once more when it goes quiet.
//!
//! glibc's allocator keeps what a thread freed for that thread's arena to reuse, and the daemon's tokio
//! workers and blocking threads get an arena each. After a burst of work (pods created and removed, an image
//! pulled) the daemon so holds megabytes of free heap as resident memory: with 50 pods created and removed,
//! 6.3 MiB anonymous of which 2.1 MB was in use (`malloc_stats`), 3.8 MiB after one `malloc_trim(0)`.
//! [`spawn_trimmer`] trims at most once per [`BUSY_PERIOD`] while RPCs finish (kubelet polls every second, so
//! a node's daemon is never idle for long), and once more when none has finished for [`QUIET`]: by then the
//! blocking threads that served the burst have exited (their keep-alive, [`BLOCKING_THREAD_KEEP_ALIVE`], is
//! shorter) and handed their cached blocks back, which no busy-time trim could return. A trim costs well
//! under a millisecond; it only unmaps free pages (madvise), nothing in use moves, and a page the allocator
//! needs again is faulted back in.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// RPCs finished since the daemon started (bumped by the RPC trace layer).
static FINISHED_RPCS: AtomicU64 = AtomicU64::new(0);

/// While RPCs keep finishing, at most one trim per this period.
const BUSY_PERIOD: Duration = Duration::from_secs(10);
/// After the last finished RPC, one more trim once this long has passed without another.
const QUIET: Duration = Duration::from_secs(5);

/// How long an idle blocking thread of the daemon's runtime waits for work before it exits (tokio's default
/// is 10 s). Shorter than [`QUIET`], so the quiet trim comes after the burst's threads are gone.
pub const BLOCKING_THREAD_KEEP_ALIVE: Duration = Duration::from_secs(2);
const _: () = assert!(BLOCKING_THREAD_KEEP_ALIVE.as_millis() < QUIET.as_millis());

/// Called once per finished RPC.
pub fn note_rpc_finished() {
    FINISHED_RPCS.fetch_add(1, Ordering::Relaxed);
}

/// When to trim, given how many RPCs have finished so far: the trimmer's decisions without its clock.
#[derive(Debug)]
struct TrimSchedule {
    /// While RPCs keep finishing, at most one trim per this period.
    busy_period: Duration,
    /// After the last finished RPC, one more trim once this long has passed without another.
    quiet: Duration,
    seen: u64,
    last_activity: Instant,
    last_trim: Instant,
    /// RPCs finished since the last quiet trim. A busy trim does not clear it: one right after the burst's
    /// last RPC comes before its blocking threads have exited.
    quiet_trim_due: bool,
}

impl TrimSchedule {
    fn new(busy_period: Duration, quiet: Duration, now: Instant, finished: u64) -> TrimSchedule {
        TrimSchedule { busy_period, quiet, seen: finished, last_activity: now, last_trim: now, quiet_trim_due: false }
    }

    /// Whether to trim now; `finished` is the count of finished RPCs at `now`.
    fn should_trim(&mut self, now: Instant, finished: u64) -> bool {
        if finished != self.seen {
            self.seen = finished;
            self.last_activity = now;
            self.quiet_trim_due = true;
            // Busy: keep resident memory from growing through a long burst, at the busy pace.
            if now.duration_since(self.last_trim) >= self.busy_period {
                self.last_trim = now;
                return true;
            }
            return false;
        }
        // Quiet since the last activity: the last trim of the burst.
        if self.quiet_trim_due && now.duration_since(self.last_activity) >= self.quiet {
            self.last_trim = now;
            self.quiet_trim_due = false;
            return true;
        }
        false
    }
}

/// How often the trimmer looks at the RPC count.
const TRIM_TICK: Duration = Duration::from_secs(1);

/// Runs [`TrimSchedule`] on the RPC count: trims every [`BUSY_PERIOD`] while RPCs finish and once after [`QUIET`].
pub fn spawn_trimmer() -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut schedule = TrimSchedule::new(BUSY_PERIOD, QUIET, Instant::now(), FINISHED_RPCS.load(Ordering::Relaxed));
        let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + TRIM_TICK, TRIM_TICK);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            if !schedule.should_trim(Instant::now(), FINISHED_RPCS.load(Ordering::Relaxed)) {
                continue;
            }
            // The resident figures cost two reads of /proc: only for a debug log that is on.
            if !tracing::enabled!(tracing::Level::DEBUG) {
                trim();
                continue;
            }
            let began = Instant::now();
            let before = resident_anonymous_kib();
            trim();
            let after = resident_anonymous_kib();
            tracing::debug!(
                before_kib = before,
                after_kib = after,
                took_us = began.elapsed().as_micros() as u64,
                "returned the heap's free pages"
            );
        }
    })
}

/// How many arenas glibc may make. By default it makes one per thread that allocates while another holds
/// an arena, up to 8 per core; each keeps its own long-lived blocks and free fragments that a trim cannot give
/// back. After 100 pods created and removed the daemon held 13 thread arenas of 0.2 to 1 MiB each, resident.
/// Two arenas are enough for the daemon's allocation rate: its threads spend their time in syscalls.
const ARENAS: i32 = 2;

/// Caps the allocator's arenas at [`ARENAS`]; call before the runtime starts its threads.
pub fn limit_arenas() {
    // SAFETY: mallopt only sets an allocator parameter, under the allocator's own lock.
    let accepted = unsafe { nix::libc::mallopt(nix::libc::M_ARENA_MAX, ARENAS) };
    if accepted != 1 {
        tracing::debug!("the allocator refused M_ARENA_MAX={ARENAS}; it keeps one arena per busy thread");
    }
}

/// Returns the free pages of every arena to the kernel.
pub fn trim() {
    // SAFETY: malloc_trim only releases memory the allocator holds free; it takes each arena's lock itself.
    unsafe {
        nix::libc::malloc_trim(0);
    }
}

/// This process's resident anonymous memory (`RssAnon` in /proc/self/status), in KiB; 0 if unreadable.
pub fn resident_anonymous_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|line| line.strip_prefix("RssAnon:"))
                .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A schedule with a 10 s busy period and 4 s of quiet, asked at whole seconds after its start.
    struct Seconds {
        start: Instant,
        schedule: TrimSchedule,
    }

    impl Seconds {
        fn new() -> Seconds {
            let start = Instant::now();
            Seconds { start, schedule: TrimSchedule::new(Duration::from_secs(10), Duration::from_secs(4), start, 0) }
        }

        /// Whether the schedule trims `second` s after its start, with `finished` RPCs finished by then.
        fn trims(&mut self, second: u64, finished: u64) -> bool {
            self.schedule.should_trim(self.start + Duration::from_secs(second), finished)
        }
    }

    #[test]
    fn a_burst_is_trimmed_at_the_busy_pace_and_once_more_when_quiet() {
        let mut run = Seconds::new();
        // An idle daemon never trims.
        assert!(!run.trims(1, 0));
        assert!(!run.trims(30, 0));
        // A burst of 12 s with an RPC finishing every second: one trim per 10 s.
        let trims: Vec<u64> = (31..=42).filter(|&s| run.trims(s, s)).collect();
        assert_eq!(trims, vec![31, 41]);
        // Quiet from 42 on: nothing before 4 s have passed, then exactly one trim.
        assert!(!run.trims(45, 42));
        assert!(run.trims(46, 42));
        assert!(!run.trims(47, 42));
        assert!(!run.trims(100, 42));
    }

    /// Asks a new schedule at each (second, RPCs finished by then, whether it must trim), in order.
    fn expect(steps: &[(u64, u64, bool)]) {
        let mut run = Seconds::new();
        for &(second, finished, trim) in steps {
            assert_eq!(run.trims(second, finished), trim, "at {second} s with {finished} RPCs finished");
        }
    }

    #[test]
    fn a_busy_trim_right_after_the_last_rpc_still_gets_the_quiet_trim() {
        // A single RPC after a long idle time is trimmed at once, at the busy pace, and once more when quiet:
        // its blocking threads exit only after that first trim.
        expect(&[(60, 1, true), (63, 1, false), (64, 1, true), (90, 1, false)]);
    }

    #[test]
    fn rpcs_right_after_a_trim_get_their_quiet_trim() {
        // Finished 1 s after a trim: too soon for the busy pace, so they wait for the quiet trim.
        expect(&[(20, 1, true), (21, 2, false), (24, 2, false), (25, 2, true)]);
    }

    /// What a burst on another thread leaves behind: its arena keeps the freed blocks resident (one block
    /// still in use at the top keeps the arena from shrinking on its own); trimming gives them back.
    #[test]
    fn trimming_returns_what_a_burst_on_another_thread_freed() {
        const BLOCKS: usize = 16 * 1024;
        const BLOCK: usize = 2048;
        std::thread::spawn(|| {
            let mut blocks: Vec<Vec<u8>> = (0..BLOCKS).map(|i| vec![i as u8; BLOCK]).collect();
            let last = blocks.pop();
            drop(blocks);
            // Kept until the thread ends, so the arena's top stays in use.
            std::hint::black_box(&last);
            let freed = resident_anonymous_kib();
            trim();
            let trimmed = resident_anonymous_kib();
            assert!(freed > 0, "RssAnon must be readable");
            // 32 MiB were freed; most of it must leave the resident set.
            assert!(
                freed.saturating_sub(trimmed) > 16 * 1024,
                "RssAnon went from {freed} KiB to {trimmed} KiB after the trim"
            );
        })
        .join()
        .unwrap();
    }
}
