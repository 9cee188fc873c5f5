//! Gives memory that sessions freed back to the OS while the node is idle.
//!
//! mimalloc (the allocator `nexus` runs with) returns a freed page to the OS only when the
//! thread that freed it later calls into the allocator and the page's purge delay has
//! passed. A session thread that falls idle after a login storm never does, so the storm's
//! buffers stayed in RSS. Each thread that serves sessions asks mimalloc to collect four
//! times a second. Purging at every free instead (`MIMALLOC_PURGE_DELAY=0`) cost about 10% of
//! task round trips (docs/benchmarks.md).

use std::cell::Cell;
use std::time::Duration;

const EVERY: Duration = Duration::from_millis(250);

/// Starts the periodic collection on this thread's actix runtime, once per thread.
pub fn collect_on_this_thread() {
    thread_local!(static STARTED: Cell<bool> = const { Cell::new(false) });
    if STARTED.with(|s| s.replace(true)) {
        return;
    }
    actix_rt::spawn(async {
        let mut tick = actix_rt::time::interval(EVERY);
        loop {
            tick.tick().await;
            // SAFETY: mi_collect only walks this thread's heap and the shared arenas; it
            // is safe to call at any time, and a no-op for memory mimalloc does not manage.
            unsafe { libmimalloc_sys::mi_collect(false) };
        }
    });
}
