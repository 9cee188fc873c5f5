//! Free space under the data dir. Writes stop while it is below a reserve, so RocksDB never
//! meets a full disk: its error path for a failed write aborts in some builds, and a node
//! that exits on every full disk is a crash loop. They resume by themselves once space
//! returns.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// How often free space is read.
const PERIOD: Duration = Duration::from_millis(100);

#[derive(Default)]
struct Watched {
    low: AtomicBool,
    free: AtomicU64,
}

/// Whether the data dir's disk is below its reserve, kept current by a thread of its own.
/// The default guard never reports low (tests and tools without a data dir).
#[derive(Clone, Default)]
pub struct DiskGuard {
    watched: Arc<Watched>,
    dir: PathBuf,
    reserve: u64,
}

impl std::fmt::Debug for DiskGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DiskGuard")
            .field("dir", &self.dir)
            .field("reserve", &self.reserve)
            .field("low", &self.is_low())
            .finish()
    }
}

/// Bytes an unprivileged writer may still use on the filesystem holding `dir`.
pub fn free_bytes(dir: &Path) -> std::io::Result<u64> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(dir.as_os_str().as_bytes())
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: statvfs with a valid C string and a zeroed struct for it to fill.
    if unsafe { libc::statvfs(path.as_ptr(), &mut st) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(st.f_bavail as u64 * st.f_frsize as u64)
}

impl DiskGuard {
    /// Starts watching the disk of `dir`; the thread ends with the last clone of the guard.
    pub fn watch(dir: &Path, reserve: u64) -> DiskGuard {
        let guard = DiskGuard {
            watched: Arc::default(),
            dir: dir.to_path_buf(),
            reserve,
        };
        guard.refresh();
        let weak = Arc::downgrade(&guard.watched);
        let (dir, reserve) = (guard.dir.clone(), reserve);
        let spawned = std::thread::Builder::new()
            .name("disk-guard".into())
            .spawn(move || loop {
                std::thread::sleep(PERIOD);
                let Some(watched) = weak.upgrade() else {
                    return;
                };
                DiskGuard {
                    watched,
                    dir: dir.clone(),
                    reserve,
                }
                .refresh();
            });
        if let Err(e) = spawned {
            tracing::warn!("free disk space is not watched: {e}");
        }
        guard
    }

    fn refresh(&self) {
        let Ok(free) = free_bytes(&self.dir) else {
            return;
        };
        self.watched.free.store(free, Ordering::Relaxed);
        let low = free < self.reserve;
        if self.watched.low.swap(low, Ordering::Relaxed) != low {
            if low {
                tracing::error!("{}", self.refusal());
            } else {
                tracing::info!(
                    free_bytes = free,
                    "disk space is back above the reserve: writes resume"
                );
            }
        }
    }

    /// True while writes must wait for disk space.
    pub fn is_low(&self) -> bool {
        self.watched.low.load(Ordering::Relaxed)
    }

    /// What a refused write is told.
    pub fn refusal(&self) -> String {
        format!(
            "no space left for writes: {} bytes free on the disk of {}, below the reserve of \
             {} bytes (--disk-reserve-mb); writes are refused until space returns, reads go on",
            self.watched.free.load(Ordering::Relaxed),
            self.dir.display(),
            self.reserve
        )
    }

    /// Blocks until the disk of `dir` has the reserve free (a node started on a full disk
    /// waits instead of failing in a loop), saying so every 10 s.
    pub fn wait_for_space(dir: &Path, reserve: u64) {
        let mut said = None::<std::time::Instant>;
        loop {
            let free = free_bytes(dir).unwrap_or(u64::MAX);
            if free >= reserve {
                if said.is_some() {
                    tracing::info!(free_bytes = free, "disk space is back: starting");
                }
                return;
            }
            if said.is_none_or(|t| t.elapsed() >= Duration::from_secs(10)) {
                tracing::error!(
                    free_bytes = free,
                    reserve_bytes = reserve,
                    "waiting for disk space on {} before opening the data dir",
                    dir.display()
                );
                said = Some(std::time::Instant::now());
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}
