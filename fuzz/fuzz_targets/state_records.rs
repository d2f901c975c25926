//! berth's own records as a crash, a full disk or an older version may leave them: a shim's `shim.json`, a
//! container's `exit.json` and the runtime's `state.json`. Each loads or is refused; none may panic.
#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;

use berth::shim::{Bootstrap, ExitRecord};
use berth_fuzz::{empty, scratch};
use berth_runtime::Status;
use berth_runtime::state::StateDir;
use libfuzzer_sys::fuzz_target;

fn top() -> &'static PathBuf {
    static TOP: OnceLock<PathBuf> = OnceLock::new();
    TOP.get_or_init(|| scratch("records"))
}

fuzz_target!(|data: &[u8]| {
    let Some((&selector, body)) = data.split_first() else { return };
    let top = top();
    match selector % 3 {
        0 => {
            std::fs::write(Bootstrap::path(top), body).unwrap();
            if let Ok(bootstrap) = Bootstrap::load(top) {
                let _ = bootstrap.is_alive();
            }
        }
        1 => {
            let path = ExitRecord::path(top, "c");
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, body).unwrap();
            let _ = ExitRecord::load(top, "c");
        }
        _ => {
            let dir = StateDir::new(top, "c");
            std::fs::create_dir_all(&dir.path).unwrap();
            std::fs::write(dir.state_file(), body).unwrap();
            if let Ok(state) = dir.load() {
                for status in [Status::Created, Status::Running, Status::Stopped] {
                    let _ = state.oci_state(status);
                }
                let _ = state.cgroup();
            }
        }
    }
    empty(top);
});
