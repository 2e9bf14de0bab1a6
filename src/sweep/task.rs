//! One run of a sweep, as a worker process or a Slurm array task executes it.

use super::{load, run_dir, Multirun, ERROR, LOCK};
use crate::error::{Error, Result};
use crate::io::checkpoint::write_atomic;
use crate::io::run::{self, Summary};
use crate::train::{self, Progress};
use std::fs::File;
use std::path::Path;

/// What [`run_task`] did.
#[derive(Debug)]
pub enum Outcome {
    Trained(Summary),
    /// The run had finished before: nothing was done.
    AlreadyDone,
    /// Another process holds the run's lock: nothing was done.
    RunningElsewhere,
}

/// An exclusive `flock` on a run's lock file, released when dropped (or when the process dies,
/// however it dies).
pub struct RunLock {
    _file: File,
}

fn open_lock(run: &Path) -> Result<File> {
    let p = run.join(LOCK);
    std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&p)
        .map_err(|e| Error::io(&p, e))
}

/// Take the run's lock; `None` if another process holds it.
pub fn try_lock(run: &Path) -> Result<Option<RunLock>> {
    let file = open_lock(run)?;
    use std::os::fd::AsRawFd;
    // SAFETY: flock on a descriptor we own.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc == 0 {
        Ok(Some(RunLock { _file: file }))
    } else {
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
            Ok(None)
        } else {
            Err(Error::io(run.join(LOCK), e))
        }
    }
}

/// Whether some process holds the run's lock now.
pub fn lock_held(run: &Path) -> bool {
    if !run.join(LOCK).exists() {
        return false;
    }
    matches!(try_lock(run), Ok(None))
}

/// Run `id` of the sweep in `dir`: skip it if finished, resume it from its newest checkpoint if it
/// was interrupted, train it otherwise. A failure is also written to `DIR/N/error.txt` (and cleared
/// when the run is tried again).
pub fn run_task(dir: &Path, id: usize, progress: Progress) -> Result<Outcome> {
    let m = load(dir)?;
    let spec = m.run(id)?;
    let rdir = run_dir(dir, id);
    std::fs::create_dir_all(&rdir).map_err(|e| Error::io(&rdir, e))?;
    // `--status` probes the lock for an instant: try a few times before leaving the run to another.
    let mut lock = try_lock(&rdir)?;
    for _ in 0..10 {
        if lock.is_some() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
        lock = try_lock(&rdir)?;
    }
    let Some(_lock) = lock else {
        return Ok(Outcome::RunningElsewhere);
    };
    if rdir.join(run::SUMMARY).is_file() {
        return Ok(Outcome::AlreadyDone);
    }
    let _ = std::fs::remove_file(rdir.join(ERROR));
    match train_run(&m, spec, &rdir, progress) {
        Ok(s) => Ok(Outcome::Trained(s)),
        Err(e) => {
            write_atomic(&rdir.join(ERROR), format!("{e}\n").as_bytes())?;
            Err(e)
        }
    }
}

fn train_run(
    m: &Multirun,
    spec: &super::RunSpec,
    rdir: &Path,
    progress: Progress,
) -> Result<Summary> {
    let s = train::train_or_continue(&m.config(spec)?, rdir, progress)?;
    finish(rdir, s)
}

fn finish(rdir: &Path, s: Summary) -> Result<Summary> {
    crate::report::pictures::run_pictures(rdir, false)?;
    Ok(s)
}
