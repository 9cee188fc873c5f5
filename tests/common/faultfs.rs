//! A mounted `nexus-faultfs` (the power-cut and slow-disk injector) for the tests.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::eventually;

/// A mounted `nexus-faultfs`; unmounted when dropped.
pub struct FaultFs {
    child: Child,
    pub mount: PathBuf,
    _dirs: tempfile::TempDir,
}

impl FaultFs {
    pub fn mount() -> FaultFs {
        Self::mount_with_delay(2_000)
    }

    /// `fsync_delay_ms`: how long each fsync waits while the disk is slow.
    pub fn mount_with_delay(fsync_delay_ms: u64) -> FaultFs {
        let dirs = tempfile::tempdir().unwrap();
        let (backing, mount) = (dirs.path().join("backing"), dirs.path().join("mnt"));
        std::fs::create_dir(&backing).unwrap();
        std::fs::create_dir(&mount).unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_nexus-faultfs"))
            .arg(&backing)
            .arg(&mount)
            .arg(fsync_delay_ms.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(
            line.trim(),
            "mounted",
            "nexus-faultfs did not mount (root and /dev/fuse are needed)"
        );
        FaultFs {
            child,
            mount,
            _dirs: dirs,
        }
    }

    /// The power cut: every write not fsync'd since it was made is gone.
    pub fn cut_power(&self) {
        signal(self.child.id(), libc::SIGUSR1);
        // The cut is done once a read shows it: poll a file written unsynced just before.
        let probe = self.mount.join(".probe");
        std::fs::write(&probe, b"unsynced").unwrap();
        signal(self.child.id(), libc::SIGUSR1);
        assert!(
            eventually(Duration::from_secs(5), || {
                std::fs::read(&probe).is_ok_and(|b| b.is_empty())
            }),
            "the power cut did not happen"
        );
    }
}

impl FaultFs {
    /// Slow disk on or off: while on, each fsync first waits the delay.
    pub fn toggle_slow(&self) {
        signal(self.child.id(), libc::SIGUSR2);
    }
}

impl Drop for FaultFs {
    fn drop(&mut self) {
        signal(self.child.id(), libc::SIGTERM);
        let _ = self.child.wait();
    }
}

pub fn signal(pid: u32, sig: i32) {
    assert_eq!(unsafe { libc::kill(pid as i32, sig) }, 0);
}
