//! The Slurm executor: `DIR/sweep.sbatch`, a job array with one task per unfinished run, each task
//! `toylens sweep --task DIR $SLURM_ARRAY_TASK_ID` (which resumes its run when Slurm requeues it).

use super::{load, run_dir, state, RunState};
use crate::error::{Error, Result};
use crate::io::checkpoint::write_atomic;
use std::path::{Path, PathBuf};

pub const SCRIPT: &str = "sweep.sbatch";

#[derive(Clone, Debug, Default)]
pub struct SlurmOptions {
    pub partition: Option<String>,
    /// `--time`, Slurm's syntax (`30`, `2:00:00`, `1-0`).
    pub time: Option<String>,
    /// At most this many tasks at once (`%K`).
    pub max_parallel: Option<usize>,
    /// Threads (and `--cpus-per-task`) of each task.
    pub cpus_per_task: usize,
    /// Further `#SBATCH` arguments, as given (`--mem=4G`, `--account=x`).
    pub extra: Vec<String>,
}

/// Array indices as Slurm's compact list: `0-3,5,7-9`.
pub fn array_spec(ids: &[usize]) -> String {
    let mut ids = ids.to_vec();
    ids.sort_unstable();
    ids.dedup();
    let mut parts = Vec::new();
    let mut i = 0;
    while i < ids.len() {
        let mut j = i;
        while j + 1 < ids.len() && ids[j + 1] == ids[j] + 1 {
            j += 1;
        }
        parts.push(if i == j {
            ids[i].to_string()
        } else {
            format!("{}-{}", ids[i], ids[j])
        });
        i = j + 1;
    }
    parts.join(",")
}

/// The batch script for runs `ids` of the sweep in `dir` (an absolute path), run by `exe`.
pub fn script(dir: &Path, exe: &Path, ids: &[usize], o: &SlurmOptions) -> Result<String> {
    let dir_s = shell_path(dir)?;
    let exe_s = shell_path(exe)?;
    let name = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "sweep".into());
    let mut array = array_spec(ids);
    if let Some(k) = o.max_parallel {
        array += &format!("%{k}");
    }
    let mut s = String::from("#!/bin/bash\n");
    s += "# Written by `toylens sweep --slurm`: one array task per run of the sweep in this folder.\n";
    s += &format!("#SBATCH --job-name=toylens-{}\n", sanitize(&name));
    s += &format!("#SBATCH --array={array}\n");
    s += &format!("#SBATCH --output={dir_s}/%a/slurm-%A_%a.out\n");
    s += &format!("#SBATCH --cpus-per-task={}\n", o.cpus_per_task.max(1));
    s += "#SBATCH --ntasks=1\n";
    // A preempted or failed-node task is put back in the queue; it resumes from its checkpoint.
    s += "#SBATCH --requeue\n";
    if let Some(p) = &o.partition {
        s += &format!("#SBATCH --partition={p}\n");
    }
    if let Some(t) = &o.time {
        s += &format!("#SBATCH --time={t}\n");
    }
    for a in &o.extra {
        if a.contains('\n') {
            return Err(Error::Input(format!("--sbatch `{a}`: no newlines")));
        }
        s += &format!("#SBATCH {a}\n");
    }
    s += &format!(
        "exec {exe_s} --threads \"${{SLURM_CPUS_PER_TASK:-{}}}\" sweep --task {dir_s} \"$SLURM_ARRAY_TASK_ID\"\n",
        o.cpus_per_task.max(1)
    );
    Ok(s)
}

/// A path that may appear unquoted in `#SBATCH` lines and the shell.
fn shell_path(p: &Path) -> Result<String> {
    let s = p.to_string_lossy().into_owned();
    if s.chars()
        .all(|c| c.is_ascii_alphanumeric() || "/._-+,@".contains(c))
    {
        Ok(s)
    } else {
        Err(Error::Input(format!(
            "{s}: for Slurm the path may hold letters, digits and / . _ - + , @ only"
        )))
    }
}

fn sanitize(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// What [`prepare`] wrote.
pub struct Prepared {
    pub script_path: PathBuf,
    pub script: String,
    /// The runs in the array (the unfinished ones).
    pub ids: Vec<usize>,
}

/// Write `DIR/sweep.sbatch` for the sweep's unfinished runs (none running).
pub fn prepare(dir: &Path, exe: &Path, o: &SlurmOptions) -> Result<Prepared> {
    let dir = std::path::absolute(dir).map_err(|e| Error::io(dir, e))?;
    let m = load(&dir)?;
    let ids: Vec<usize> = m
        .runs
        .iter()
        .map(|r| r.id)
        .filter(|&id| !matches!(state(&dir, id), RunState::Done | RunState::Running))
        .collect();
    for &id in &ids {
        let d = run_dir(&dir, id);
        std::fs::create_dir_all(&d).map_err(|e| Error::io(&d, e))?;
    }
    let text = script(&dir, exe, &ids, o)?;
    let path = dir.join(SCRIPT);
    write_atomic(&path, text.as_bytes())?;
    Ok(Prepared {
        script_path: path,
        script: text,
        ids,
    })
}

/// Submit a script with `sbatch --parsable`; returns the job id.
pub fn submit(script: &Path) -> Result<String> {
    let out = std::process::Command::new("sbatch")
        .arg("--parsable")
        .arg(script)
        .output()
        .map_err(|e| Error::Input(format!("cannot run sbatch: {e} (is Slurm installed here?)")))?;
    if !out.status.success() {
        return Err(Error::Input(format!(
            "sbatch {} failed ({}): {}",
            script.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    let id = String::from_utf8_lossy(&out.stdout).trim().to_string();
    Ok(id.split(';').next().unwrap_or("").to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn array_and_script() {
        assert_eq!(array_spec(&[0, 1, 2, 3, 5, 7, 8, 9]), "0-3,5,7-9");
        assert_eq!(array_spec(&[4]), "4");
        let o = SlurmOptions {
            partition: Some("gpu".into()),
            time: Some("1:00:00".into()),
            max_parallel: Some(4),
            cpus_per_task: 2,
            extra: vec!["--mem=4G".into()],
        };
        let s = script(
            Path::new("/s/sw"),
            Path::new("/bin/toylens"),
            &[0, 1, 2],
            &o,
        )
        .unwrap();
        for want in [
            "#SBATCH --array=0-2%4\n",
            "#SBATCH --output=/s/sw/%a/slurm-%A_%a.out\n",
            "#SBATCH --cpus-per-task=2\n",
            "#SBATCH --partition=gpu\n",
            "#SBATCH --time=1:00:00\n",
            "#SBATCH --mem=4G\n",
            "exec /bin/toylens --threads \"${SLURM_CPUS_PER_TASK:-2}\" sweep --task /s/sw \"$SLURM_ARRAY_TASK_ID\"\n",
        ] {
            assert!(s.contains(want), "{want} not in\n{s}");
        }
        assert!(script(Path::new("/a b"), Path::new("/t"), &[0], &o).is_err());
    }
}
