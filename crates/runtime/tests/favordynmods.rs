//! The cgroup2 `favordynmods` option for real (root): turned off and on again by remounting the host's
//! cgroup2 mount, every other option kept, and the host left as it was found.

use berth_runtime::cgroups::favordynmods::{self, Favordynmods};

/// The cgroup2 mount's filesystem options, minus favordynmods.
fn other_options() -> Vec<String> {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let line = mountinfo.lines().find(|l| l.contains(" - cgroup2 ")).expect("a cgroup2 mount");
    let super_options = line.split(" - ").nth(1).unwrap().split(' ').nth(2).unwrap();
    super_options.split(',').filter(|o| *o != "favordynmods").map(str::to_owned).collect()
}

#[test]
fn favordynmods_is_turned_on_and_off_keeping_every_other_option() {
    let before = favordynmods::status().expect("status");
    assert_ne!(before, Favordynmods::Unsupported, "missing prerequisite: Linux 6.0+ with a cgroup2 mount");
    let options = other_options();

    favordynmods::disable().expect("disable");
    assert_eq!(favordynmods::status().unwrap(), Favordynmods::Off);
    assert!(favordynmods::enable().expect("enable"), "off, so enable remounts");
    assert_eq!(favordynmods::status().unwrap(), Favordynmods::On);
    assert!(!favordynmods::enable().expect("enable again"), "already on: nothing to do");
    assert_eq!(other_options(), options, "the other options of the mount are kept");

    if before == Favordynmods::Off {
        favordynmods::disable().expect("restore");
    }
    assert_eq!(favordynmods::status().unwrap(), before, "the host is left as it was");
}
