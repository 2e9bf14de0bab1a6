//! The local executor: up to `jobs` worker processes at once, each running one run of the sweep
//! (`toylens --threads T sweep --task DIR N`) with the cores divided between them.
//!
//! Workers are processes, not threads: a run that aborts or runs out of memory takes only itself
//! down, and each has its own thread pool. A worker dies with the runner (Linux's parent-death
//! signal), so a killed sweep leaves no orphans training behind it; the same command then resumes.

use super::{load, run_dir, state, summary, Multirun, RunState, ERROR, LOG};
use crate::error::{Error, Result};
use crate::io::checkpoint::write_atomic;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// How often a running sweep rewrites `summary.csv`.
const SUMMARY_EVERY: Duration = Duration::from_secs(5);

/// The exit code of a worker that found its run locked by another process.
pub const EXIT_RUNNING_ELSEWHERE: i32 = 3;

/// How many runs at once, and threads each.
#[derive(Clone, Debug, PartialEq)]
pub struct Workers {
    pub jobs: usize,
    pub threads: usize,
    /// Why, in words.
    pub why: String,
}

/// The default division of `cores` between `todo` runs: one single-threaded run per core, because
/// runs in parallel scale perfectly while one run's threads do not. Measured on 2 cores (README,
/// docs/PERFORMANCE.md), two one-thread runs at once took 0.59–0.87 of the time of one two-thread
/// run after another, for every size tried, from grokking-tiny (0.3 MB of weights and optimizer
/// state) to a 1024-wide digits model (134 MB). Fewer runs, with the spare cores as threads, when
/// fewer runs are left than there are cores or when memory holds fewer runs (the largest run's
/// [`crate::config::Experiment::memory_estimate`] against MemAvailable). `jobs` given: that many
/// runs, the cores shared between them.
pub fn plan_workers(
    m: &Multirun,
    todo: usize,
    cores: usize,
    jobs: Option<usize>,
    available_memory: Option<f64>,
) -> Workers {
    let cores = cores.max(1);
    if let Some(j) = jobs {
        let j = j.max(1);
        return Workers {
            jobs: j,
            threads: (cores / j).max(1),
            why: format!("--jobs {j}"),
        };
    }
    // The largest run decides (the axes may change the model's size).
    let mut total_bytes = 0.0f64;
    for r in &m.runs {
        if let Ok(exp) = m.config(r).and_then(|c| c.resolve()) {
            total_bytes = total_bytes.max(exp.memory_estimate().iter().map(|p| p.1).sum());
        }
    }
    let by_memory = available_memory
        .filter(|_| total_bytes > 0.0)
        .map(|a| ((a / total_bytes).floor() as usize).max(1))
        .unwrap_or(usize::MAX);
    let mut jobs = cores.min(todo.max(1));
    let mut why = "one single-threaded run per core".to_string();
    if by_memory < jobs {
        jobs = by_memory;
        why = format!(
            "memory holds {by_memory} run(s) of about {:.1} GB at once",
            total_bytes / 1e9
        );
    }
    if jobs == todo && todo < cores {
        why = format!("{todo} run(s) to do, the cores shared between them");
    }
    Workers {
        jobs,
        threads: (cores / jobs).max(1),
        why,
    }
}

/// What the runner reports as it goes.
#[derive(Debug)]
pub enum Event<'a> {
    Start(&'a Workers, usize),
    Skipped(usize),
    Started(usize),
    Finished(usize, &'a RunState),
}

#[derive(Debug, Default)]
pub struct Report {
    pub done: usize,
    pub failed: Vec<(usize, String)>,
    /// Runs another process was training.
    pub elsewhere: Vec<usize>,
}

/// The command a worker runs: a program and what comes before `--threads T sweep --task DIR N`
/// (nothing for the `toylens` binary; `-m toylens._worker` for the Python interpreter).
#[derive(Clone, Debug)]
pub struct Worker {
    pub program: PathBuf,
    pub prefix: Vec<std::ffi::OsString>,
}

impl Worker {
    pub fn binary(exe: &Path) -> Self {
        Worker {
            program: exe.to_path_buf(),
            prefix: Vec::new(),
        }
    }
}

/// Run every unfinished run of the sweep in `dir` with worker processes; failed runs are tried
/// again. `summary.csv` is rewritten as runs finish (at most every few seconds) and at the end.
pub fn run_local(
    dir: &Path,
    worker: &Worker,
    jobs: Option<usize>,
    mut on_event: impl FnMut(Event),
) -> Result<Report> {
    let m = load(dir)?;
    let mut report = Report::default();
    let mut todo = Vec::new();
    for r in &m.runs {
        match state(dir, r.id) {
            RunState::Done => {
                report.done += 1;
                on_event(Event::Skipped(r.id));
            }
            _ => todo.push(r.id),
        }
    }
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let memory = crate::config::available_memory().map(|b| b as f64);
    let workers = plan_workers(&m, todo.len(), cores, jobs, memory);
    on_event(Event::Start(&workers, todo.len()));
    let mut queue = todo.into_iter();
    let mut running: Vec<(usize, Child)> = Vec::new();
    let mut last_summary = std::time::Instant::now();
    loop {
        while running.len() < workers.jobs {
            let Some(id) = queue.next() else { break };
            running.push((id, spawn(dir, worker, id, workers.threads)?));
            on_event(Event::Started(id));
        }
        if running.is_empty() {
            break;
        }
        let mut i = 0;
        let mut finished = false;
        while i < running.len() {
            let status = running[i]
                .1
                .try_wait()
                .map_err(|e| Error::Input(format!("waiting for run {}: {e}", running[i].0)))?;
            let Some(status) = status else {
                i += 1;
                continue;
            };
            let (id, _) = running.swap_remove(i);
            finished = true;
            let st = match status.code() {
                Some(EXIT_RUNNING_ELSEWHERE) => {
                    report.elsewhere.push(id);
                    RunState::Running
                }
                _ => match state(dir, id) {
                    RunState::Done => {
                        report.done += 1;
                        RunState::Done
                    }
                    RunState::Failed(msg) => {
                        report.failed.push((id, msg.clone()));
                        RunState::Failed(msg)
                    }
                    _ => {
                        // Killed, or it panicked before recording anything.
                        let log = run_dir(dir, id).join(LOG);
                        let msg = format!("the worker exited with {status}; see {}", log.display());
                        write_atomic(&run_dir(dir, id).join(ERROR), format!("{msg}\n").as_bytes())?;
                        report.failed.push((id, msg.clone()));
                        RunState::Failed(msg)
                    }
                },
            };
            on_event(Event::Finished(id, &st));
        }
        // The table re-reads every finished run: at most every few seconds, and once at the end.
        if finished && last_summary.elapsed() >= SUMMARY_EVERY {
            summary::write(dir, &m)?;
            last_summary = std::time::Instant::now();
        }
        if !finished {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    summary::write(dir, &m)?;
    Ok(report)
}

fn spawn(dir: &Path, worker: &Worker, id: usize, threads: usize) -> Result<Child> {
    let rdir = run_dir(dir, id);
    std::fs::create_dir_all(&rdir).map_err(|e| Error::io(&rdir, e))?;
    let log_path = rdir.join(LOG);
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .map_err(|e| Error::io(&log_path, e))?;
    let log2 = log.try_clone().map_err(|e| Error::io(&log_path, e))?;
    let mut cmd = Command::new(&worker.program);
    cmd.args(&worker.prefix)
        .arg("--threads")
        .arg(threads.to_string())
        .arg("sweep")
        .arg("--task")
        .arg(dir)
        .arg(id.to_string())
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log2);
    #[cfg(target_os = "linux")]
    {
        use std::os::unix::process::CommandExt;
        let parent = std::process::id() as libc::pid_t;
        // SAFETY: prctl and getppid are async-signal-safe; nothing else runs between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                // The runner died before prctl took effect.
                if libc::getppid() != parent {
                    libc::_exit(1);
                }
                Ok(())
            });
        }
    }
    cmd.spawn()
        .map_err(|e| Error::Input(format!("cannot start {}: {e}", worker.program.display())))
}

/// The `toylens` binary beside the running one: itself, or, for tests and the library, a path given.
pub fn current_exe() -> Result<PathBuf> {
    std::env::current_exe()
        .map_err(|e| Error::Input(format!("cannot find the toylens binary: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_core_per_run_unless_memory_or_the_runs_left_say_otherwise() {
        let m = super::super::plan("grokking-tiny", &["seed=0,1,2,3".into()], false).unwrap();
        let w = plan_workers(&m, 4, 2, None, None);
        assert_eq!((w.jobs, w.threads), (2, 1));
        assert_eq!(plan_workers(&m, 1, 2, None, None).threads, 2);
        assert_eq!(plan_workers(&m, 4, 8, Some(3), None).threads, 2);
        // Memory for one run only: one run on both cores.
        let w = plan_workers(&m, 4, 2, None, Some(1.0));
        assert_eq!((w.jobs, w.threads), (1, 2), "{}", w.why);
        // The largest run decides: memory for two of digits5 at d_model 1024, not for four.
        let big = super::super::plan(
            "digits5",
            &[
                "seed=0,1,2,3".into(),
                "model.d_model=256,1024".into(),
                "model.d_mlp=4096".into(),
            ],
            false,
        )
        .unwrap();
        let exp = big.config(&big.runs[1]).unwrap().resolve().unwrap();
        let one: f64 = exp.memory_estimate().iter().map(|p| p.1).sum();
        let w = plan_workers(&big, 8, 4, None, Some(2.5 * one));
        assert_eq!((w.jobs, w.threads), (2, 2), "{}", w.why);
    }
}
