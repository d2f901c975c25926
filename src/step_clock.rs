//! Where an operation's wall-clock time goes, step by step: RunPodSandbox, CreateContainer, RemoveContainer
//! and RemovePodSandbox log their steps at debug in one line (`steps = "lookup=0.21 intent=0.40 ..."`,
//! milliseconds), which the benchmarks' breakdowns read (`BERTH_BENCH_BREAKDOWN=1 hack/bench/runp.sh`) and
//! an operator can read when a node is slow. A step is the time since the previous one ended, so the steps
//! add up to the whole.

use std::fmt;
use std::time::{Duration, Instant};

#[derive(Debug)]
pub struct StepClock {
    began: Instant,
    last: Instant,
    steps: Vec<(&'static str, Duration)>,
}

impl StepClock {
    pub fn start() -> Self {
        let now = Instant::now();
        StepClock { began: now, last: now, steps: Vec::with_capacity(12) }
    }

    /// Ends the step called `name`: the time since the previous step ended (or since the start).
    pub fn lap(&mut self, name: &'static str) {
        let now = Instant::now();
        self.steps.push((name, now - self.last));
        self.last = now;
    }

    /// The time since the start.
    pub fn elapsed(&self) -> Duration {
        self.began.elapsed()
    }
}

impl fmt::Display for StepClock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (index, (name, took)) in self.steps.iter().enumerate() {
            let separator = if index == 0 { "" } else { " " };
            write!(f, "{separator}{name}={:.2}", took.as_secs_f64() * 1000.0)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_are_laps_that_add_up_to_the_whole() {
        let mut clock = StepClock::start();
        std::thread::sleep(Duration::from_millis(3));
        clock.lap("first");
        clock.lap("second");
        let text = clock.to_string();
        let parsed: Vec<(&str, f64)> = text
            .split(' ')
            .map(|pair| {
                let (name, ms) = pair.split_once('=').expect("name=ms");
                (name, ms.parse().expect("milliseconds"))
            })
            .collect();
        assert_eq!(parsed.iter().map(|(name, _)| *name).collect::<Vec<_>>(), ["first", "second"]);
        assert!(parsed[0].1 >= 3.0, "the first step includes the sleep: {text}");
        assert!(parsed[1].1 < parsed[0].1, "the second step is only its own time: {text}");
        let sum: f64 = parsed.iter().map(|(_, ms)| ms).sum();
        assert!(sum <= clock.elapsed().as_secs_f64() * 1000.0 + 0.01);
    }
}
