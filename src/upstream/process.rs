//! Process groups of the programs some kinds run (`cli`, `lingma`): each is
//! started in a group of its own, so whatever it spawns goes with it.

use std::time::Duration;

use rustix::process::{kill_process_group, Pid, Signal};

/// Sends `signal` to process group `pgid`; false when the group is gone.
fn signal_group(pgid: i32, signal: Signal) -> bool {
    Pid::from_raw(pgid).is_some_and(|pid| kill_process_group(pid, signal).is_ok())
}

/// Kills process group `pgid` at once.
pub(crate) fn kill_group(pgid: i32) {
    signal_group(pgid, Signal::KILL);
}

/// Asks process group `pgid` to end (SIGTERM), and kills it after `grace`
/// if it was still there. On a thread of its own, so the grace period
/// never blocks the runtime.
pub(crate) fn end_group(pgid: i32, grace: Duration) {
    let spawned = std::thread::Builder::new()
        .name("end-group".into())
        .spawn(move || {
            if signal_group(pgid, Signal::TERM) {
                std::thread::sleep(grace);
                signal_group(pgid, Signal::KILL);
            }
        });
    if let Err(e) = spawned {
        tracing::warn!(error = %e, pgid, "cannot end a process group");
        kill_group(pgid);
    }
}
