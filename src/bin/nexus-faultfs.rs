//! nexus-faultfs: a test tool. A FUSE passthrough filesystem that keeps every write in
//! memory until the file is fsync'd, and drops what was not fsync'd on command: the power
//! cut Jepsen's LazyFS simulates, for the storage-fault tests.
//!
//! ```text
//! nexus-faultfs BACKING MOUNTPOINT [FSYNC_DELAY_MS]   # mounts; prints "mounted" when ready
//! kill -USR1 PID                        # power cut: unsynced writes vanish
//! kill -USR2 PID                        # slow disk on/off: each fsync first waits the delay
//! kill -RTMIN PID                       # full disk on/off: statfs reports no free space
//! kill -TERM PID                        # unmount and exit
//! ```
//!
//! The model: file data reaches BACKING only at fsync/fdatasync of that file. Creating,
//! renaming and deleting files and directories reach it at once (as if every directory
//! were synced), so a cut loses data, never names. Reads go to BACKING plus the unsynced
//! writes; the kernel caches nothing (direct I/O, no attribute caching), so after a cut
//! every reader sees only what was synced.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, UNIX_EPOCH};

use fuser::{
    FileAttr, FileType, Filesystem, MountOption, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory,
    ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite, Request, TimeOrNow,
};
use libc::{c_int, EIO, ENOENT};

const TTL: Duration = Duration::ZERO;
const ROOT: u64 = fuser::FUSE_ROOT_ID;

/// Writes to one file since its last fsync.
#[derive(Default)]
struct Unsynced {
    /// Written ranges, oldest first (a later one wins where they overlap).
    extents: Vec<(u64, Vec<u8>)>,
    /// The file's size as its writers see it.
    size: u64,
    /// The smallest size it was truncated to since the sync: backing bytes past it are gone.
    cut: Option<u64>,
}

#[derive(Default)]
struct Inner {
    paths: HashMap<u64, PathBuf>,
    inos: HashMap<PathBuf, u64>,
    next_ino: u64,
    unsynced: HashMap<u64, Unsynced>,
}

struct FaultFs {
    backing: PathBuf,
    inner: Arc<Mutex<Inner>>,
    /// While set, every fsync first waits `fsync_delay_ms` (a slow or stalled disk).
    slow: Arc<AtomicBool>,
    fsync_delay_ms: u64,
    /// While set, statfs reports no free space (writes still land: what a node sees as its
    /// disk fills, before the last blocks go).
    full: Arc<AtomicBool>,
}

fn errno(e: std::io::Error) -> c_int {
    e.raw_os_error().unwrap_or(EIO)
}

impl Inner {
    fn ino_for(&mut self, rel: &Path) -> u64 {
        if let Some(ino) = self.inos.get(rel) {
            return *ino;
        }
        self.next_ino += 1;
        let ino = self.next_ino;
        self.paths.insert(ino, rel.to_path_buf());
        self.inos.insert(rel.to_path_buf(), ino);
        ino
    }

    fn forget_path(&mut self, rel: &Path) {
        if let Some(ino) = self.inos.remove(rel) {
            self.paths.remove(&ino);
            self.unsynced.remove(&ino);
        }
    }
}

impl FaultFs {
    fn real(&self, rel: &Path) -> PathBuf {
        self.backing.join(rel)
    }

    fn rel(&self, ino: u64) -> Option<PathBuf> {
        let inner = self.inner.lock().unwrap();
        inner.paths.get(&ino).cloned()
    }

    fn child(&self, parent: u64, name: &OsStr) -> Option<PathBuf> {
        self.rel(parent).map(|p| p.join(name))
    }

    fn attr(&self, ino: u64, rel: &Path) -> std::io::Result<FileAttr> {
        let md = std::fs::symlink_metadata(self.real(rel))?;
        let kind = if md.is_dir() {
            FileType::Directory
        } else if md.file_type().is_symlink() {
            FileType::Symlink
        } else {
            FileType::RegularFile
        };
        let size = match self.inner.lock().unwrap().unsynced.get(&ino) {
            Some(u) => u.size,
            None => md.len(),
        };
        let t = |s: i64| UNIX_EPOCH + Duration::from_secs(s.max(0) as u64);
        Ok(FileAttr {
            ino,
            size,
            blocks: size.div_ceil(512),
            atime: t(md.atime()),
            mtime: t(md.mtime()),
            ctime: t(md.ctime()),
            crtime: t(md.ctime()),
            kind,
            perm: (md.mode() & 0o7777) as u16,
            nlink: md.nlink() as u32,
            uid: md.uid(),
            gid: md.gid(),
            rdev: 0,
            blksize: 4096,
            flags: 0,
        })
    }

    fn entry(&self, rel: &Path) -> std::io::Result<FileAttr> {
        let ino = self.inner.lock().unwrap().ino_for(rel);
        self.attr(ino, rel)
    }

    /// The file's bytes at `offset..offset + len` as its writers see them.
    fn read_at(&self, ino: u64, rel: &Path, offset: u64, len: usize) -> std::io::Result<Vec<u8>> {
        let inner = self.inner.lock().unwrap();
        let unsynced = inner.unsynced.get(&ino);
        let file = File::open(self.real(rel))?;
        let size = match unsynced {
            Some(u) => u.size,
            None => file.metadata()?.len(),
        };
        if offset >= size {
            return Ok(Vec::new());
        }
        let len = len.min((size - offset) as usize);
        let mut buf = vec![0u8; len];
        let mut got = 0;
        while got < len {
            let n = file.read_at(&mut buf[got..], offset + got as u64)?;
            if n == 0 {
                break;
            }
            got += n;
        }
        if let Some(u) = unsynced {
            if let Some(cut) = u.cut {
                let from = cut.saturating_sub(offset).min(len as u64) as usize;
                buf[from..].fill(0);
            }
            for (at, data) in &u.extents {
                let (start, end) = (*at, *at + data.len() as u64);
                let lo = start.max(offset);
                let hi = end.min(offset + len as u64);
                if lo < hi {
                    buf[(lo - offset) as usize..(hi - offset) as usize]
                        .copy_from_slice(&data[(lo - start) as usize..(hi - start) as usize]);
                }
            }
        }
        Ok(buf)
    }

    /// Makes the file's unsynced writes durable in the backing file.
    fn sync(&self, ino: u64, rel: &Path) -> std::io::Result<()> {
        let pending = self.inner.lock().unwrap().unsynced.remove(&ino);
        let file = OpenOptions::new().write(true).open(self.real(rel))?;
        if let Some(u) = pending {
            if let Some(cut) = u.cut {
                file.set_len(cut)?;
            }
            for (at, data) in &u.extents {
                file.write_all_at(data, *at)?;
            }
            file.set_len(u.size)?;
        }
        file.sync_data()
    }

    /// Removes a name at once (names are not held back), and what was unsynced with it.
    fn remove(
        &self,
        parent: u64,
        name: &OsStr,
        remove: fn(&Path) -> std::io::Result<()>,
        reply: ReplyEmpty,
    ) {
        let Some(rel) = self.child(parent, name) else {
            return reply.error(ENOENT);
        };
        match remove(&self.real(&rel)) {
            Ok(()) => {
                self.inner.lock().unwrap().forget_path(&rel);
                reply.ok()
            }
            Err(e) => reply.error(errno(e)),
        }
    }

    fn unsynced_mut<'a>(
        inner: &'a mut Inner,
        ino: u64,
        real: &Path,
    ) -> std::io::Result<&'a mut Unsynced> {
        match inner.unsynced.entry(ino) {
            std::collections::hash_map::Entry::Occupied(e) => Ok(e.into_mut()),
            std::collections::hash_map::Entry::Vacant(e) => Ok(e.insert(Unsynced {
                size: std::fs::metadata(real)?.len(),
                ..Default::default()
            })),
        }
    }
}

impl Filesystem for FaultFs {
    fn init(&mut self, _req: &Request<'_>, _config: &mut fuser::KernelConfig) -> Result<(), c_int> {
        self.inner
            .lock()
            .unwrap()
            .paths
            .insert(ROOT, PathBuf::new());
        self.inner.lock().unwrap().inos.insert(PathBuf::new(), ROOT);
        self.inner.lock().unwrap().next_ino = ROOT;
        Ok(())
    }

    fn lookup(&mut self, _req: &Request<'_>, parent: u64, name: &OsStr, reply: ReplyEntry) {
        let Some(rel) = self.child(parent, name) else {
            return reply.error(ENOENT);
        };
        match self.entry(&rel) {
            Ok(attr) => reply.entry(&TTL, &attr, 0),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn getattr(&mut self, _req: &Request<'_>, ino: u64, _fh: Option<u64>, reply: ReplyAttr) {
        let Some(rel) = self.rel(ino) else {
            return reply.error(ENOENT);
        };
        match self.attr(ino, &rel) {
            Ok(attr) => reply.attr(&TTL, &attr),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn setattr(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        mode: Option<u32>,
        _uid: Option<u32>,
        _gid: Option<u32>,
        size: Option<u64>,
        _atime: Option<TimeOrNow>,
        _mtime: Option<TimeOrNow>,
        _ctime: Option<std::time::SystemTime>,
        _fh: Option<u64>,
        _crtime: Option<std::time::SystemTime>,
        _chgtime: Option<std::time::SystemTime>,
        _bkuptime: Option<std::time::SystemTime>,
        _flags: Option<u32>,
        reply: ReplyAttr,
    ) {
        let Some(rel) = self.rel(ino) else {
            return reply.error(ENOENT);
        };
        let real = self.real(&rel);
        if let Some(mode) = mode {
            if let Err(e) = std::fs::set_permissions(&real, PermissionsExt::from_mode(mode)) {
                return reply.error(errno(e));
            }
        }
        if let Some(size) = size {
            let mut inner = self.inner.lock().unwrap();
            match FaultFs::unsynced_mut(&mut inner, ino, &real) {
                Ok(u) => {
                    u.size = size;
                    u.cut = Some(u.cut.map_or(size, |c| c.min(size)));
                    for (at, data) in &mut u.extents {
                        data.truncate(size.saturating_sub(*at) as usize);
                    }
                    u.extents.retain(|(_, d)| !d.is_empty());
                }
                Err(e) => return reply.error(errno(e)),
            }
        }
        match self.attr(ino, &rel) {
            Ok(attr) => reply.attr(&TTL, &attr),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn mkdir(
        &mut self,
        _req: &Request<'_>,
        parent: u64,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        reply: ReplyEntry,
    ) {
        let Some(rel) = self.child(parent, name) else {
            return reply.error(ENOENT);
        };
        let made = std::fs::create_dir(self.real(&rel)).and_then(|()| {
            std::fs::set_permissions(self.real(&rel), PermissionsExt::from_mode(mode & 0o7777))
        });
        match made.and_then(|()| self.entry(&rel)) {
            Ok(attr) => reply.entry(&TTL, &attr, 0),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn unlink(&mut self, _req: &Request<'_>, parent: u64, name: &OsStr, reply: ReplyEmpty) {
        self.remove(parent, name, |p| std::fs::remove_file(p), reply)
    }

    fn rmdir(&mut self, _req: &Request<'_>, parent: u64, name: &OsStr, reply: ReplyEmpty) {
        self.remove(parent, name, |p| std::fs::remove_dir(p), reply)
    }

    fn rename(
        &mut self,
        _req: &Request<'_>,
        parent: u64,
        name: &OsStr,
        newparent: u64,
        newname: &OsStr,
        _flags: u32,
        reply: ReplyEmpty,
    ) {
        let (Some(from), Some(to)) = (self.child(parent, name), self.child(newparent, newname))
        else {
            return reply.error(ENOENT);
        };
        if let Err(e) = std::fs::rename(self.real(&from), self.real(&to)) {
            return reply.error(errno(e));
        }
        let mut inner = self.inner.lock().unwrap();
        inner.forget_path(&to);
        // The inode keeps its unsynced writes under its new name; children move along.
        let moved: Vec<(PathBuf, u64)> = inner
            .inos
            .iter()
            .filter(|(p, _)| p.starts_with(&from))
            .map(|(p, i)| (p.clone(), *i))
            .collect();
        for (old, ino) in moved {
            let below = old.strip_prefix(&from).expect("filtered by prefix");
            let new = if below.as_os_str().is_empty() {
                to.clone()
            } else {
                to.join(below)
            };
            inner.inos.remove(&old);
            inner.inos.insert(new.clone(), ino);
            inner.paths.insert(ino, new);
        }
        reply.ok()
    }

    fn open(&mut self, _req: &Request<'_>, ino: u64, _flags: i32, reply: ReplyOpen) {
        match self.rel(ino) {
            Some(_) => reply.opened(0, fuser::consts::FOPEN_DIRECT_IO),
            None => reply.error(ENOENT),
        }
    }

    fn read(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        _fh: u64,
        offset: i64,
        size: u32,
        _flags: i32,
        _lock_owner: Option<u64>,
        reply: ReplyData,
    ) {
        let Some(rel) = self.rel(ino) else {
            return reply.error(ENOENT);
        };
        match self.read_at(ino, &rel, offset.max(0) as u64, size as usize) {
            Ok(data) => reply.data(&data),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn write(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        _fh: u64,
        offset: i64,
        data: &[u8],
        _write_flags: u32,
        _flags: i32,
        _lock_owner: Option<u64>,
        reply: ReplyWrite,
    ) {
        let Some(rel) = self.rel(ino) else {
            return reply.error(ENOENT);
        };
        let real = self.real(&rel);
        let offset = offset.max(0) as u64;
        let mut inner = self.inner.lock().unwrap();
        match FaultFs::unsynced_mut(&mut inner, ino, &real) {
            Ok(u) => {
                // Appends (the WAL's pattern) grow the last extent instead of adding one.
                match u.extents.last_mut() {
                    Some((at, last)) if *at + last.len() as u64 == offset => {
                        last.extend_from_slice(data)
                    }
                    _ => u.extents.push((offset, data.to_vec())),
                }
                u.size = u.size.max(offset + data.len() as u64);
                reply.written(data.len() as u32)
            }
            Err(e) => reply.error(errno(e)),
        }
    }

    fn flush(&mut self, _req: &Request<'_>, _ino: u64, _fh: u64, _owner: u64, reply: ReplyEmpty) {
        reply.ok()
    }

    fn fsync(&mut self, _req: &Request<'_>, ino: u64, _fh: u64, _data: bool, reply: ReplyEmpty) {
        let Some(rel) = self.rel(ino) else {
            return reply.error(ENOENT);
        };
        if self.slow.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(self.fsync_delay_ms));
        }
        match self.sync(ino, &rel) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn readdir(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        _fh: u64,
        offset: i64,
        mut reply: ReplyDirectory,
    ) {
        let Some(rel) = self.rel(ino) else {
            return reply.error(ENOENT);
        };
        let entries = match std::fs::read_dir(self.real(&rel)) {
            Ok(rd) => rd,
            Err(e) => return reply.error(errno(e)),
        };
        let mut all = vec![
            (ino, FileType::Directory, ".".into()),
            (ino, FileType::Directory, "..".into()),
        ];
        for e in entries.flatten() {
            let kind = match e.file_type() {
                Ok(t) if t.is_dir() => FileType::Directory,
                _ => FileType::RegularFile,
            };
            let child = self.inner.lock().unwrap().ino_for(&rel.join(e.file_name()));
            all.push((child, kind, e.file_name()));
        }
        for (i, (child, kind, name)) in all.into_iter().enumerate().skip(offset as usize) {
            if reply.add(child, (i + 1) as i64, kind, name) {
                break;
            }
        }
        reply.ok()
    }

    fn fsyncdir(&mut self, _req: &Request<'_>, _ino: u64, _fh: u64, _d: bool, reply: ReplyEmpty) {
        reply.ok() // names reach the backing directory at once
    }

    fn statfs(&mut self, _req: &Request<'_>, _ino: u64, reply: ReplyStatfs) {
        let path = std::ffi::CString::new(self.backing.as_os_str().as_encoded_bytes())
            .expect("no NUL in the backing path");
        let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
        // SAFETY: statvfs with a valid C string and a zeroed struct to fill.
        if unsafe { libc::statvfs(path.as_ptr(), &mut st) } != 0 {
            return reply.error(EIO);
        }
        if self.full.load(Ordering::Relaxed) {
            st.f_bavail = 0;
            st.f_bfree = 0;
        }
        reply.statfs(
            st.f_blocks,
            st.f_bfree,
            st.f_bavail,
            st.f_files,
            st.f_ffree,
            st.f_bsize as u32,
            st.f_namemax as u32,
            st.f_frsize as u32,
        );
    }

    fn access(&mut self, _req: &Request<'_>, _ino: u64, _mask: i32, reply: ReplyEmpty) {
        reply.ok()
    }

    fn create(
        &mut self,
        _req: &Request<'_>,
        parent: u64,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let Some(rel) = self.child(parent, name) else {
            return reply.error(ENOENT);
        };
        let mut opts = OpenOptions::new();
        opts.write(true).create(true).mode(mode & 0o7777);
        if flags & libc::O_EXCL != 0 {
            opts.create_new(true);
        }
        if let Err(e) = opts.open(self.real(&rel)) {
            return reply.error(errno(e));
        }
        match self.entry(&rel) {
            Ok(attr) => reply.created(&TTL, &attr, 0, 0, fuser::consts::FOPEN_DIRECT_IO),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn fallocate(
        &mut self,
        _req: &Request<'_>,
        _ino: u64,
        _fh: u64,
        _offset: i64,
        _length: i64,
        _mode: i32,
        reply: ReplyEmpty,
    ) {
        // Preallocation changes no data; callers fall back to plain writes.
        reply.error(libc::EOPNOTSUPP)
    }
}

/// Blocks `signals` in this thread and those it starts, so that `sigwait` receives them.
fn block(signals: &[c_int]) -> libc::sigset_t {
    // SAFETY: plain signal-mask calls on a set built here.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for s in signals {
            libc::sigaddset(&mut set, *s);
        }
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        set
    }
}

fn main() -> std::process::ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let delay = args.get(3).map(|d| d.parse::<u64>());
    if !(3..=4).contains(&args.len()) || matches!(delay, Some(Err(_))) {
        eprintln!(
            "usage: nexus-faultfs BACKING MOUNTPOINT [FSYNC_DELAY_MS] (USR1: drop unsynced \
             writes; USR2: slow fsync on/off; TERM: unmount)"
        );
        return std::process::ExitCode::from(2);
    }
    let set = block(&[
        libc::SIGUSR1,
        libc::SIGUSR2,
        libc::SIGRTMIN(),
        libc::SIGTERM,
        libc::SIGINT,
    ]);
    let inner = Arc::new(Mutex::new(Inner::default()));
    let slow = Arc::new(AtomicBool::new(false));
    let full = Arc::new(AtomicBool::new(false));
    let fs = FaultFs {
        full: full.clone(),
        backing: PathBuf::from(&args[1]),
        inner: inner.clone(),
        slow: slow.clone(),
        fsync_delay_ms: delay.and_then(Result::ok).unwrap_or(2_000),
    };
    let options = [
        MountOption::FSName("nexus-faultfs".into()),
        MountOption::DefaultPermissions,
    ];
    let session = match fuser::spawn_mount2(fs, &args[2], &options) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("nexus-faultfs: cannot mount on {}: {e}", args[2]);
            return std::process::ExitCode::FAILURE;
        }
    };
    println!("mounted");
    loop {
        let mut sig: c_int = 0;
        // SAFETY: sigwait on the set blocked above.
        unsafe { libc::sigwait(&set, &mut sig) };
        if sig == libc::SIGUSR1 {
            let dropped: usize = {
                let mut inner = inner.lock().unwrap();
                let n = inner.unsynced.values().map(|u| u.extents.len()).sum();
                inner.unsynced.clear();
                n
            };
            eprintln!("nexus-faultfs: power cut, {dropped} unsynced writes dropped");
        } else if sig == libc::SIGRTMIN() {
            let was = full.fetch_xor(true, Ordering::Relaxed);
            eprintln!(
                "nexus-faultfs: full disk {}",
                if was { "off" } else { "on" }
            );
        } else if sig == libc::SIGUSR2 {
            let was = slow.fetch_xor(true, Ordering::Relaxed);
            eprintln!(
                "nexus-faultfs: slow fsync {}",
                if was { "off" } else { "on" }
            );
        } else {
            drop(session);
            return std::process::ExitCode::SUCCESS;
        }
    }
}
