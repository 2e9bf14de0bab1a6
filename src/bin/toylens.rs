//! The `toylens` command line: parses arguments and calls the library.

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use std::path::PathBuf;
use toylens::analysis::llc::InitLoss;
use toylens::bench::{Switch, Workload};
use toylens::commands::{self, AnalyzeReport, KeyRule};
use toylens::models::mask::{PruneMethod, PruneScope};

#[derive(Parser)]
#[command(
    name = "toylens",
    version,
    about = "Mechanistic and developmental interpretability on small models and toy tasks"
)]
struct Cli {
    /// Worker threads (0 = one per core). Results do not depend on it.
    #[arg(long, global = true, default_value_t = 0)]
    threads: usize,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Train an experiment: `toylens train [PRESET] [key.sub=value ...]` (default preset: grokking).
    Train {
        /// A preset name or a YAML config file (`my_task.yaml`), and overrides such as `optim.weight_decay=0.5`.
        #[arg(value_name = "PRESET|KEY=VALUE")]
        args: Vec<String>,
        /// Run directory (default: runs/<preset>-<date>-<time>).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Continue the run in this directory from its newest checkpoint (overrides may change
        /// `train.*` only, for example a larger `train.steps`).
        #[arg(long, conflicts_with = "out")]
        resume: Option<PathBuf>,
        /// Overwrite an existing run directory.
        #[arg(long)]
        force: bool,
        /// No progress output.
        #[arg(long)]
        quiet: bool,
    },
    /// Many runs of one preset: `toylens sweep PRESET key=v1,v2 key2=range(1,9,2) seed=0,1,2
    /// fixed.key=v`. The cartesian product of the axes, one run directory per run under DIR (Hydra's
    /// layout: DIR/multirun.yaml, DIR/N/), run here (--jobs at once) or as a Slurm job array
    /// (--slurm). The same command again resumes: finished runs are skipped, interrupted ones continue
    /// from their last checkpoint, failed ones are tried again.
    Sweep {
        /// A preset name or YAML config file, axes (`key=v1,v2,...`, `key=range(start,stop[,step])`) and overrides for
        /// every run (`key=value`; quote values with commas: `key='a,b'`).
        #[arg(value_name = "PRESET|KEY=V1,V2|KEY=VALUE")]
        args: Vec<String>,
        /// The sweep's directory (default: multirun/<preset>-<hash of the arguments>, so the same
        /// command finds its sweep again).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Runs at once (default: one single-threaded run per core; see the README's rule).
        #[arg(long)]
        jobs: Option<usize>,
        /// Allow more than 1000 runs.
        #[arg(long)]
        yes: bool,
        /// Continue the sweep in DIR (locally, or with --slurm on the cluster).
        #[arg(long, value_name = "DIR")]
        resume: Option<PathBuf>,
        /// List DIR's runs: done, running, interrupted, failed, pending.
        #[arg(long, value_name = "DIR")]
        status: Option<PathBuf>,
        /// Write DIR/summary.csv and DIR/sweep.png and print the table.
        #[arg(long, value_name = "DIR")]
        summary: Option<PathBuf>,
        /// With --summary: the metrics to print and plot, comma-separated; `*` at the end matches
        /// any rest (`transition_step_*,final_test_loss_d*`). Default: every one that varies.
        #[arg(long, value_delimiter = ',', requires = "summary")]
        metrics: Vec<String>,
        /// Run run N of the sweep in DIR (what each worker and each Slurm array task does).
        #[arg(long, num_args = 2, value_names = ["DIR", "N"])]
        task: Option<Vec<String>>,
        /// Submit the sweep as a Slurm job array (DIR/sweep.sbatch) instead of running it here.
        #[arg(long)]
        slurm: bool,
        /// Slurm partition.
        #[arg(long, requires = "slurm")]
        partition: Option<String>,
        /// Slurm time limit per run (`30`, `2:00:00`).
        #[arg(long, requires = "slurm")]
        time: Option<String>,
        /// At most K array tasks at once.
        #[arg(long, requires = "slurm")]
        max_parallel: Option<usize>,
        /// Threads of each array task (default 1: small runs scale across tasks, not threads).
        #[arg(long, requires = "slurm")]
        cpus_per_task: Option<usize>,
        /// A further #SBATCH argument (repeatable): --sbatch=--mem=4G.
        #[arg(long = "sbatch", requires = "slurm", allow_hyphen_values = true)]
        sbatch: Vec<String>,
        /// With --slurm: write and print the script, do not submit it.
        #[arg(long, requires = "slurm")]
        dry_run: bool,
    },
    /// Redraw a run's loss curves from its metrics (loss.png, or loss.svg with --svg).
    Plot {
        run_dir: PathBuf,
        #[arg(long)]
        svg: bool,
    },
    /// Write RUN_DIR/report.html: a run's analysis in one offline, interactive page (modular
    /// addition, digits, ToyMLP or superposition), or a sweep's page (every run's curves and the
    /// summary) when RUN_DIR is a sweep.
    Report { run_dir: PathBuf },
    /// List the embedded presets.
    Presets,
    /// Print a preset with overrides applied, as the YAML a run would save.
    Config {
        preset: String,
        overrides: Vec<String>,
    },
    /// Convert a checkpoint of the original grokking code (.pth) into a toylens/TransformerLens
    /// safetensors file.
    Convert { input: PathBuf, output: PathBuf },
    /// Loss and accuracy of a modular-arithmetic model on all p² pairs (and train/test when the split
    /// is known), or of a run's model on any other task on its train and test sets. CHECKPOINT: a
    /// toylens .safetensors file or an original .pth.
    Eval {
        checkpoint: PathBuf,
        /// Print one JSON object.
        #[arg(long)]
        json: bool,
    },
    /// What a model has learned, by its kind. A modular-arithmetic transformer (toylens
    /// .safetensors or original .pth): key frequencies, full/restricted/excluded loss, Gini of W_E
    /// and W_L, sum of squared weights, neuron clusters; a digit adder: each digit's loss,
    /// accuracy and carry cases; a superposition model: each instance's feature geometry; any other
    /// task (your own data, regression): loss per loss position on the train and test sets, each
    /// head's mean attention, tensor norms. A run directory: the measures at every checkpoint
    /// (progress.csv for modular runs; the last checkpoint's for other tasks), pictures in
    /// RUN/analysis/.
    Analyze {
        target: PathBuf,
        /// Print one JSON object.
        #[arg(long)]
        json: bool,
        /// Write the pictures (PNG and SVG) here (for a run directory: default the run directory).
        #[arg(long)]
        out: Option<PathBuf>,
        /// How to choose the key frequencies: `wl` (the paper's rule, from W_L's Fourier norms) or
        /// `neurons` (frequencies whose neuron clusters hold ≥ 5% of the clustered neurons).
        #[arg(long, value_enum, default_value_t = KeyRule::WL)]
        key_rule: KeyRule,
    },
    /// Zero- and mean-ablate every MLP neuron and attention head of a transformer (on all pairs of
    /// a modular task, on the first 512 training examples of any other token task), or every
    /// hidden neuron of a ToyMLP; prints the units ranked by the loss when zeroed. With --out, also
    /// draws the ranking (and for a ToyMLP, activation heat maps of the top neurons).
    Ablate {
        checkpoint: PathBuf,
        /// Also draw the ranking (PNG and SVG) into this directory.
        #[arg(long)]
        out: Option<PathBuf>,
        /// Rows to print (all with --json).
        #[arg(long, default_value_t = 20)]
        top: usize,
        #[arg(long)]
        json: bool,
    },
    /// Circuit analysis of a transformer (a checkpoint, or a run's last one): direct logit
    /// attribution and the logit lens, activation patching of every block and head from clean into
    /// corrupted inputs beside attribution patching, path patching, composition and copying scores
    /// (raw and processed weights), head detectors, and layer 0's full circuits. Inputs come from
    /// the task (modular: random pairs with the first number changed; others: training examples,
    /// each corrupted into the next). Pictures and circuits.json go into RUN/analysis/circuits/.
    Circuits {
        target: PathBuf,
        /// Write the pictures and circuits.json here (a run's default: RUN/analysis/circuits/).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Clean examples patched.
        #[arg(long, default_value_t = toylens::commands::circuits::DEFAULT_EXAMPLES)]
        examples: usize,
        /// Seed of the inputs and their corruption.
        #[arg(long, default_value_t = 0)]
        seed: u64,
        #[arg(long)]
        json: bool,
    },
    /// Loss spikes of a run and where they come from: the spikes of a metric column by the run's
    /// train.spikes rule (a point above RATIO × the median of the WINDOW points before it), and for
    /// each, from the optimizer trace, which tensors' gradient and update norms rose first and by
    /// how much, whether Adam's ε regime was involved, and which loss columns carried the extra
    /// loss. Each spike's window is drawn into RUN/analysis/spikes/ with spikes.json.
    Spikes {
        run: PathBuf,
        /// A metric column, or trace.loss (every traced step's batch loss).
        #[arg(long)]
        column: Option<String>,
        /// A spike is a point above RATIO × the median of the window before it (the run's
        /// train.spikes.ratio by default).
        #[arg(long)]
        ratio: Option<f64>,
        /// Points in that window (the run's train.spikes.window by default).
        #[arg(long)]
        window: Option<usize>,
        /// Write the pictures and spikes.json here instead.
        #[arg(long)]
        out: Option<PathBuf>,
        #[arg(long)]
        json: bool,
    },
    /// The monitors train.monitors can name, with what each measures.
    Monitors,
    /// Activation patching on a modular-arithmetic model: run `a b =` (target) with the activation at
    /// HOOK taken from another input (source); prints the effect on the target's answer.
    Patch {
        checkpoint: PathBuf,
        /// Hook point, e.g. blocks.0.attn.hook_z.
        #[arg(long)]
        hook: String,
        /// Source input `a,b`.
        #[arg(long, value_parser = parse_pair)]
        source: (u32, u32),
        /// Target input `a,b`.
        #[arg(long, value_parser = parse_pair)]
        target: (u32, u32),
        /// Only this position (default: all).
        #[arg(long)]
        position: Option<usize>,
        /// Only this head (hooks with a head axis).
        #[arg(long)]
        head: Option<usize>,
        #[arg(long)]
        json: bool,
    },
    /// The local learning coefficient λ̂ by SGLD (as devinterp defines it) on the model's training
    /// data: one checkpoint, every checkpoint of a run (llc.csv, llc_trace.csv, llc.png into
    /// RUN/analysis/), or a calibration grid (--calibrate).
    Llc {
        target: PathBuf,
        /// Step size ε.
        #[arg(long, default_value_t = 1e-4, allow_negative_numbers = true)]
        lr: f64,
        /// Localization γ (the pull towards w*).
        #[arg(long, default_value_t = 100.0, allow_negative_numbers = true)]
        localization: f64,
        /// Inverse temperature nβ: `batch` (m / ln m, devinterp's default), `dataset` (n / ln n)
        /// or a number.
        #[arg(long, default_value = "batch", value_parser = toylens::analysis::llc::NBeta::parse)]
        nbeta: toylens::analysis::llc::NBeta,
        #[arg(long, default_value_t = 4)]
        chains: usize,
        #[arg(long, default_value_t = 200)]
        draws: usize,
        #[arg(long, default_value_t = 100)]
        burnin: usize,
        #[arg(long, default_value_t = 1)]
        steps_between_draws: usize,
        /// Minibatch size m (default 512, or the whole training set where that is smaller; a
        /// larger m given is an error).
        #[arg(long)]
        batch_size: Option<usize>,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// L(w*): `full` (the whole training set) or `minibatches` (devinterp's default: the mean
        /// over `chains` minibatches).
        #[arg(long, value_enum, default_value_t = InitLoss::Full)]
        init_loss: InitLoss,
        /// A grid of ε × nβ × γ instead of one estimate (values from --lrs, --nbetas, --localizations).
        #[arg(long)]
        calibrate: bool,
        #[arg(long, value_delimiter = ',', default_values_t = [1e-5, 1e-4, 1e-3])]
        lrs: Vec<f64>,
        #[arg(long, value_delimiter = ',', value_parser = toylens::analysis::llc::NBeta::parse, default_values = ["batch"])]
        nbetas: Vec<toylens::analysis::llc::NBeta>,
        #[arg(long, value_delimiter = ',', default_values_t = [100.0])]
        localizations: Vec<f64>,
        /// Sample only these components, every other weight held at w* (the weight-restricted
        /// LLC): parameter names, patterns with `*` (`blocks.1.*`) or heads
        /// (`blocks.L.attn.head.H`: its Q/K/V/O slices), comma-separated.
        #[arg(long, value_delimiter = ',')]
        restrict: Vec<String>,
        /// Each head's weight-restricted λ̂, one estimate per head (at the checkpoint, or at every
        /// checkpoint of a run: llc_heads.csv).
        #[arg(long, conflicts_with_all = ["restrict", "calibrate"])]
        per_head: bool,
        /// A pruning mask (safetensors of 0/1) whose dead weights stay exactly zero while sampling
        /// (default: a run directory's own mask.safetensors, a lottery ticket's).
        #[arg(long)]
        mask: Option<PathBuf>,
        /// The sampler: SGLD, RMSprop-preconditioned SGLD or SGNHT (devinterp's definitions).
        #[arg(long, value_enum, default_value_t = toylens::analysis::llc::Sampler::Sgld)]
        sampler: toylens::analysis::llc::Sampler,
        /// RMSprop-SGLD: the decay α of the running mean of squared gradients, in [0, 1).
        #[arg(long, default_value_t = 0.99, allow_negative_numbers = true)]
        rmsprop_alpha: f64,
        /// RMSprop-SGLD: eps in the preconditioner 1 / (√v + eps).
        #[arg(long, default_value_t = 0.1, allow_negative_numbers = true)]
        rmsprop_eps: f64,
        /// SGNHT: the diffusion factor A, in (0, 1). SGNHT as devinterp has it takes no
        /// localization: give --localization 0 to match it.
        #[arg(long, default_value_t = 0.01, allow_negative_numbers = true)]
        diffusion: f64,
        /// Sample on this named set of the task instead of the training set (the data-refined
        /// LLC); `--observe list` names the task's sets.
        #[arg(long)]
        sample_on: Option<String>,
        /// Record the loss on these named sets of the task at every draw: one λ̂ per set
        /// (comma-separated; `list` prints the task's sets).
        #[arg(long, value_delimiter = ',')]
        observe: Vec<String>,
        /// Examples of each observed set evaluated at a draw (default: the minibatch size).
        #[arg(long)]
        observe_examples: Option<usize>,
        /// For a run: only the checkpoints at these steps (comma-separated; default every one).
        #[arg(long, value_delimiter = ',')]
        at_steps: Vec<u64>,
        #[arg(long)]
        json: bool,
        /// Write traces and pictures here (for a run directory: default RUN/analysis/).
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Essential dynamics (Hoogland et al. 2024): a run's outputs on a fixed set at every
    /// checkpoint, projected on their principal components, with the trajectory's turns
    /// (dynamics.csv and dynamics.png into RUN/analysis/, beside λ̂ where `llc RUN` has run).
    Dynamics {
        run: PathBuf,
        /// The task's named set the outputs are on (`toylens llc CKPT --observe list` names them).
        #[arg(long, default_value = "test")]
        set: String,
        /// Its first N examples.
        #[arg(long, default_value_t = 64)]
        examples: usize,
        /// Principal components kept.
        #[arg(long, default_value_t = 3)]
        components: usize,
        /// The turn window, a fraction of the trajectory's length in (0, 0.5).
        #[arg(long, default_value_t = 0.1, allow_negative_numbers = true)]
        window: f64,
        /// The least turning angle of a turn, in degrees.
        #[arg(long, default_value_t = 45.0, allow_negative_numbers = true)]
        min_angle: f64,
        #[arg(long)]
        json: bool,
        /// Write dynamics.csv and dynamics.png here (default RUN/analysis/).
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// A pruning mask from a checkpoint's weights: remove the fraction S (in [0, 1)) of the chosen
    /// tensors' entries, by magnitude (the smallest |w|; equal ones in parameter order) or at random
    /// with the same per-tensor counts. Default tensors: every matrix but the positional embedding
    /// (embedding, attention, MLP, unembedding); biases and LayerNorm stay.
    Prune {
        checkpoint: PathBuf,
        #[arg(long)]
        sparsity: f64,
        /// `global` (one threshold over all chosen tensors) or `layer` (S of each).
        #[arg(long, value_enum, default_value_t = PruneScope::Global)]
        scope: PruneScope,
        /// Comma-separated parameter names (default: the matrices above).
        #[arg(long, value_delimiter = ',')]
        tensors: Vec<String>,
        #[arg(long, value_enum, default_value_t = PruneMethod::Magnitude)]
        method: PruneMethod,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// The mask file to write (safetensors of 0/1 by parameter name).
        #[arg(long)]
        out: PathBuf,
    },
    /// A lottery ticket from a run: the mask from its checkpoint at --from (a step or `final`),
    /// the weights rewound to step --rewind (default 0, the initialisation), trained with the run's
    /// config plus overrides (for example optim.weight_decay=0). --rounds R: iterative magnitude
    /// pruning.
    Ticket {
        run_dir: PathBuf,
        #[arg(long)]
        from: String,
        #[arg(long)]
        sparsity: f64,
        #[arg(long, default_value_t = 0)]
        rewind: u64,
        #[arg(long, default_value_t = 1)]
        rounds: usize,
        #[arg(long, value_enum, default_value_t = PruneScope::Global)]
        scope: PruneScope,
        #[arg(long, value_enum, default_value_t = PruneMethod::Magnitude)]
        method: PruneMethod,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// The ticket's run directory (default: RUN_DIR-ticket-<from>-s<S>).
        #[arg(long)]
        out: Option<PathBuf>,
        /// `norm`: instead of the ticket, the dense model rescaled at its rewind point to the
        /// ticket's weight norm (the norm control).
        #[arg(long, value_parser = ["norm"])]
        control: Option<String>,
        #[arg(long)]
        quiet: bool,
        /// Overrides of the run's config, `key=value`.
        overrides: Vec<String>,
    },
    /// List a checkpoint's hook points (TransformerLens names) with their shapes per example.
    Hooks { checkpoint: PathBuf },
    /// Time training steps of a benchmark workload (W1: Nanda's grokking step, full batch; W2: a
    /// ToyMLP step at batch 64; W3: a digits5 step; W4: an induction step; W5: an in-context regression step).
    Bench {
        /// `w1`, `w2`, `w3` (one step of the digits5 preset: batch 64, 18 tokens, d_model 512) or
        /// `w4` (one step of the induction preset: batch 64, 32 tokens, 2 attention-only layers).
        #[arg(long, value_enum, default_value_t = Workload::W1)]
        workload: Workload,
        /// Steps to run (the first one, warm-up, is not timed).
        #[arg(long, default_value_t = 50)]
        steps: usize,
        /// Seed of the initial weights.
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Write the initial weights here (init.safetensors), for the PyTorch side of bench/.
        #[arg(long)]
        out: Option<PathBuf>,
        /// Print one JSON object (with every step's loss).
        #[arg(long)]
        json: bool,
        /// Also measure the GEMM peak (a 2048³ product) and the step's share of it.
        #[arg(long)]
        peak: bool,
        /// W1 only: force layer 0's W_in fold `on` or `off` (the general path), to time one
        /// against the other on this machine; without it, W1 takes the fold, as training does.
        #[arg(long, value_enum)]
        w_in_fold: Option<Switch>,
        /// W1 and W3: trace every update (per-tensor norms, ε share, update ratio) as training
        /// does by default, to time what the trace costs.
        #[arg(long)]
        trace: bool,
    },
}

fn main() {
    // Exit quietly when stdout is closed early (`toylens ... | head`), like other Unix tools, instead
    // of panicking on the failed write.
    #[cfg(unix)]
    // SAFETY: restoring the default action of SIGPIPE before any thread starts.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    let cli = Cli::parse();
    use std::io::IsTerminal;
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false)
        .without_time()
        .init();
    toylens::engine::threads::init(cli.threads);
    if let Err(e) = toylens::engine::simd::level_from_env() {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
    if let Err(e) = run(cli.cmd) {
        // A toylens error's message already holds its cause (an I/O error's, say); others print
        // their chain of contexts.
        match e.downcast_ref::<toylens::Error>() {
            Some(t) => eprintln!("error: {t}"),
            None => eprintln!("error: {e:#}"),
        }
        std::process::exit(1);
    }
}

/// What `analyze` found on an induction run.
fn print_induction(
    phase: Option<&toylens::analysis::induction::PhaseChange>,
    heads: Option<&toylens::analysis::induction::InductionHeads>,
) {
    let Some(p) = phase else {
        println!(
            "no phase change: the loss on repeats never fell abruptly by 0.5 nats and a quarter of \
             its plateau (definition in `toylens::analysis::induction`)"
        );
        return;
    };
    println!(
        "phase change: loss on repeats {:.3} on the plateau → {:.3} at the end; a tenth of the fall \
         by step {}, half by {}, three quarters by {}",
        p.plateau, p.last, p.onset, p.middle, p.end
    );
    let Some(h) = heads else { return };
    let ((il, ih), s) = (h.induction_head, h.induction_score);
    println!(
        "induction head L{il}H{ih}: induction score {:.2} → {:.2} → {:.2} (onset, middle, end)",
        s.onset, s.middle, s.end
    );
    let s = h.copying_score;
    println!(
        "its copying score {:.2} → {:.2} → {:.2}",
        s.onset, s.middle, s.end
    );
    let Some(((pl, ph), s)) = h.previous_token_head else {
        return;
    };
    println!(
        "previous-token head L{pl}H{ph}: previous-token score {:.2} → {:.2} → {:.2}",
        s.onset, s.middle, s.end
    );
    let ks: Vec<String> = h
        .k_composition
        .iter()
        .map(|((l, hh), k)| format!("L{l}H{hh} {k:.3}"))
        .collect();
    println!(
        "K-composition of L{il}H{ih} with each earlier head at the end: {}",
        ks.join(", ")
    );
}

/// What `analyze` found on a task without analyses of its own.
fn print_generic_report(target: &std::path::Path, r: &toylens::analysis::generic::GenericReport) {
    println!("{}: a {} on {}", target.display(), r.arch, r.task);
    for (name, s) in [("train", &r.train), ("test", &r.test)] {
        let Some(s) = s else { continue };
        let accuracy = if s.accuracy.is_finite() {
            format!(
                "  accuracy {:.4}  all positions right {:.4}",
                s.accuracy, s.exact_match
            )
        } else {
            String::new()
        };
        println!(
            "  {name:5}  {} examples  loss {:.4e}{accuracy}",
            s.examples, s.loss
        );
        if s.per_position_loss.len() > 1 {
            let losses: Vec<String> = s
                .per_position_loss
                .iter()
                .map(|l| format!("{l:.2e}"))
                .collect();
            println!("         loss per loss position: {}", losses.join(" "));
        }
    }
    if !r.attention.is_empty() {
        println!("  heads (mean attention to the previous token / to position 0):");
        for h in &r.attention {
            println!(
                "    {}.{}  {:.3} / {:.3}",
                h.layer, h.head, h.previous_token, h.first_token
            );
        }
    }
    println!("  tensor norms:");
    for t in &r.tensor_norms {
        println!("    {:28} {:?}  {:.4}", t.name, t.shape, t.norm);
    }
}

/// Split `train` arguments into a preset name (the one without `=`) and overrides.
fn preset_and_overrides(args: &[String]) -> Result<(Option<String>, Vec<String>)> {
    let (presets, overrides): (Vec<&String>, Vec<&String>) =
        args.iter().partition(|a| !a.contains('='));
    if presets.len() > 1 {
        anyhow::bail!(
            "give one preset at most (got {})",
            presets
                .iter()
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    Ok((
        presets.first().map(|s| s.to_string()),
        overrides.into_iter().cloned().collect(),
    ))
}

/// A benchmark's initial weights into DIR (for the PyTorch side of bench/).
fn run_sweep_locally(
    dir: &std::path::Path,
    exe: &std::path::Path,
    jobs: Option<usize>,
) -> Result<()> {
    use toylens::sweep::{local::Event, RunState};
    let t0 = std::time::Instant::now();
    let mut skipped = 0;
    let worker = toylens::sweep::local::Worker::binary(exe);
    let report = toylens::sweep::local::run_local(dir, &worker, jobs, |e| match e {
        Event::Skipped(_) => skipped += 1,
        Event::Start(w, n) => {
            if skipped > 0 {
                println!("{skipped} run(s) finished before: skipped");
            }
            println!(
                "{n} run(s) to do: {} at once, {} thread(s) each ({})",
                w.jobs, w.threads, w.why
            );
        }
        Event::Started(_) => {}
        Event::Finished(id, st) => match st {
            RunState::Done => println!("run {id}: done ({:.0} s)", t0.elapsed().as_secs_f64()),
            RunState::Failed(msg) => println!("run {id}: FAILED: {msg}"),
            RunState::Running => println!("run {id}: another process is training it; left to it"),
            other => println!("run {id}: {}", other.label()),
        },
    })?;
    print_sweep_summary(dir, &[])?;
    println!(
        "{} run(s) done in {:.1} s",
        report.done,
        t0.elapsed().as_secs_f64()
    );
    if !report.failed.is_empty() {
        let ids: Vec<String> = report.failed.iter().map(|(i, _)| i.to_string()).collect();
        anyhow::bail!(
            "{} run(s) failed: {} (errors in DIR/N/error.txt; the same command tries them again)",
            report.failed.len(),
            ids.join(", ")
        );
    }
    if !report.elsewhere.is_empty() {
        anyhow::bail!(
            "{} run(s) are being trained by another process; not all runs are finished",
            report.elsewhere.len()
        );
    }
    Ok(())
}

fn print_sweep_status(dir: &std::path::Path) -> Result<()> {
    use toylens::sweep::RunState;
    let m = toylens::sweep::load(dir)?;
    let states = toylens::sweep::states(dir, &m);
    for (r, st) in m.runs.iter().zip(&states) {
        let detail = match st {
            RunState::Interrupted(s) => format!(" (checkpoint at step {s})"),
            RunState::Failed(msg) => format!(": {msg}"),
            _ => String::new(),
        };
        println!(
            "{:>4}  {:11}  {}{detail}",
            r.id,
            st.label(),
            r.overrides.join(" ")
        );
    }
    let count = |l: &str| states.iter().filter(|s| s.label() == l).count();
    println!(
        "{} runs: {} done, {} running, {} interrupted, {} failed, {} pending",
        states.len(),
        count("done"),
        count("running"),
        count("interrupted"),
        count("failed"),
        count("pending")
    );
    Ok(())
}

fn print_sweep_summary(dir: &std::path::Path, metrics: &[String]) -> Result<()> {
    let t = toylens::sweep::summary::write_for(dir)?;
    let g = toylens::sweep::figures::grid(&t, metrics);
    let mut cols: Vec<String> = g.metrics.iter().map(|&c| t.metrics[c].clone()).collect();
    cols.push("wall_seconds".into());
    print!("{}", t.text(&cols));
    println!("wrote {}", dir.join(toylens::sweep::SUMMARY_CSV).display());
    if let Some(p) = toylens::sweep::figures::draw(dir, &t, metrics)? {
        println!("wrote {}", p.display());
    }
    Ok(())
}

fn print_digits_report(r: &toylens::analysis::digits::CheckpointReport) {
    println!(
        "  {}-digit addition, {} evaluation examples",
        r.n_digits, r.n_eval
    );
    println!("  digit    loss    acc | loss: no carry  carry  cascade | no carry: p(naive) p(+1) p(-1) other | carry: p(naive) p(+1) p(-1) other | wrong  ±1 share");
    let f = |x: f64| {
        if x.is_finite() {
            format!("{x:.3}")
        } else {
            "-".into()
        }
    };
    for d in &r.digits {
        let o = |v: &[f64; 4]| {
            v.iter()
                .map(|&x| {
                    if x.is_finite() {
                        format!("{x:.3}")
                    } else {
                        "    -".into()
                    }
                })
                .collect::<Vec<_>>()
                .join(" ")
        };
        println!(
            "  10^{:<3} {:>7} {:>6} | {:>14} {:>6} {:>8} | {} | {} | {:>5} {:>6}",
            d.place,
            f(d.loss),
            f(d.acc),
            f(d.cases[0].loss),
            f(d.cases[1].loss),
            f(d.cases[2].loss),
            o(&d.offsets_no_carry),
            o(&d.offsets_carry),
            d.n_wrong,
            f(d.off_by_one_share)
        );
    }
    let places: Vec<String> = r
        .ablation
        .places
        .iter()
        .map(|p| format!("10^{p}"))
        .collect();
    println!(
        "  loss increase when zero-ablated (mean-ablated), per digit: {}",
        places.join(" ")
    );
    for c in &r.ablation.components {
        let cells: Vec<String> = c
            .zero
            .iter()
            .zip(&c.mean)
            .map(|(z, m)| format!("{z:>7.3} ({m:>6.3})"))
            .collect();
        println!("  {:8} {}", c.name, cells.join(" "));
    }
    for (l, heads) in r.attention.iter().enumerate() {
        for (h, a) in heads.iter().enumerate() {
            let tops: Vec<String> = a
                .iter()
                .zip(&r.digits)
                .map(|(row, d)| {
                    let k = (0..row.len()).fold(0, |b, i| if row[i] > row[b] { i } else { b });
                    format!("10^{}→{} {:.2}", d.place, r.positions[k], row[k])
                })
                .collect();
            println!("  L{l}H{h} attends most to: {}", tops.join(", "));
        }
    }
}

fn print_llc(what: &str, e: &toylens::analysis::llc::LlcEstimate) {
    let acceptance = if e.mean_acceptance.is_finite() {
        format!(", MALA acceptance {:.2}", e.mean_acceptance)
    } else {
        String::new()
    };
    println!(
        "{what}: λ̂ {:.4} ± {:.4} over {} chains ({}, nβ {:.3}, L(w*) {:.4e}{acceptance})",
        e.llc_mean,
        e.llc_std,
        e.llc_per_chain.len(),
        e.sampler.name(),
        e.nbeta,
        e.init_loss,
    );
    for o in &e.observed {
        println!(
            "  observed {}: λ̂ {:.4} ± {:.4} (L(w*) {:.4e})",
            o.set, o.llc_mean, o.llc_std, o.init_loss
        );
    }
    for w in &e.warnings {
        println!("  warning: {w}");
    }
}

fn parse_pair(s: &str) -> std::result::Result<(u32, u32), String> {
    let (a, b) = s
        .split_once(',')
        .ok_or_else(|| format!("`{s}`: expected a,b"))?;
    Ok((
        a.trim().parse().map_err(|e| format!("`{a}`: {e}"))?,
        b.trim().parse().map_err(|e| format!("`{b}`: {e}"))?,
    ))
}

fn run(cmd: Cmd) -> Result<()> {
    match cmd {
        Cmd::Train {
            args,
            out,
            resume,
            force,
            quiet,
        } => {
            let (preset, overrides) = preset_and_overrides(&args)?;
            let progress = if quiet {
                toylens::train::Progress::Quiet
            } else {
                toylens::train::Progress::Auto
            };
            let request = commands::train::TrainRequest {
                preset,
                overrides,
                out,
                resume,
                force,
            };
            let (dir, s) = request.run(progress, toylens::train::Control::default())?;
            let mut line = format!(
                "{}: {} steps in {:.1} s ({:.0} steps/s); train loss {:.3e}, test loss {:.3e}",
                dir.display(),
                s.steps,
                s.wall_seconds,
                s.steps_per_second,
                s.final_train_loss,
                s.final_test_loss,
            );
            if let Some(a) = s.final_test_acc {
                line += &format!(
                    ", test acc {a:.4}; grok step {}",
                    s.grok_step
                        .map(|g| g.to_string())
                        .unwrap_or_else(|| "none".into())
                );
            }
            if !s.monitor_seconds.is_empty() {
                let each: Vec<String> = s
                    .monitor_seconds
                    .iter()
                    .map(|(name, secs)| format!("{name} {secs:.1} s"))
                    .collect();
                line += &format!("; monitors: {}", each.join(", "));
            }
            if let Some(d) = &s.digit_transition_steps {
                let steps: Vec<String> = d
                    .iter()
                    .map(|s| s.map_or("-".into(), |s| s.to_string()))
                    .collect();
                line += &format!(
                    "; digit transition steps (most significant first, test loss < {:.3}): {}",
                    s.digit_transition_loss.unwrap_or_default(),
                    steps.join(" ")
                );
            }
            println!("{line}");
        }
        Cmd::Sweep {
            args,
            out,
            jobs,
            yes,
            resume,
            status,
            summary,
            metrics,
            task,
            slurm,
            partition,
            time,
            max_parallel,
            cpus_per_task,
            sbatch,
            dry_run,
        } => {
            let modes = [
                resume.is_some(),
                status.is_some(),
                summary.is_some(),
                task.is_some(),
            ];
            if modes.iter().filter(|&&m| m).count() > 1 {
                anyhow::bail!("give one of --resume, --status, --summary, --task");
            }
            if modes.iter().any(|&m| m) && !args.is_empty() {
                anyhow::bail!(
                    "--resume, --status, --summary and --task take the sweep's directory, not a preset or axes (got {})",
                    args.join(" ")
                );
            }
            if let Some(dir) = status {
                return print_sweep_status(&dir);
            }
            if let Some(dir) = summary {
                print_sweep_summary(&dir, &metrics)?;
                return Ok(());
            }
            if let Some(t) = task {
                let dir = PathBuf::from(&t[0]);
                let id: usize = t[1]
                    .parse()
                    .with_context(|| format!("--task {} {}: N is a run number", t[0], t[1]))?;
                use toylens::sweep::task::Outcome;
                match toylens::sweep::task::run_task(&dir, id, toylens::train::Progress::Auto)? {
                    Outcome::Trained(s) => println!(
                        "run {id}: {} steps in {:.1} s; train loss {:.3e}, test loss {:.3e}",
                        s.steps, s.wall_seconds, s.final_train_loss, s.final_test_loss
                    ),
                    Outcome::AlreadyDone => println!("run {id}: finished before; nothing to do"),
                    Outcome::RunningElsewhere => {
                        eprintln!("run {id}: another process is training it; nothing done");
                        std::process::exit(toylens::sweep::local::EXIT_RUNNING_ELSEWHERE);
                    }
                }
                return Ok(());
            }
            let dir = match resume {
                Some(dir) => {
                    toylens::sweep::load(&dir)?;
                    dir
                }
                None => {
                    let (preset, rest) = preset_and_overrides(&args)?;
                    let name = preset.unwrap_or_else(|| "grokking".to_string());
                    let m = toylens::sweep::plan(&name, &rest, yes)?;
                    let dir = out.unwrap_or_else(|| toylens::sweep::default_dir(&m));
                    toylens::sweep::create(&dir, &m)?;
                    println!(
                        "sweep {}: {} runs of {} ({})",
                        dir.display(),
                        m.runs.len(),
                        m.preset,
                        m.axes
                            .iter()
                            .map(|a| format!("{} × {}", a.values.len(), a.key))
                            .collect::<Vec<_>>()
                            .join(", ")
                    );
                    dir
                }
            };
            let exe = toylens::sweep::local::current_exe()?;
            if slurm {
                let opts = toylens::sweep::slurm::SlurmOptions {
                    partition,
                    time,
                    max_parallel,
                    cpus_per_task: cpus_per_task.unwrap_or(1),
                    extra: sbatch,
                };
                let p = toylens::sweep::slurm::prepare(&dir, &exe, &opts)?;
                if p.ids.is_empty() {
                    println!("every run is finished or running; nothing to submit");
                    return Ok(());
                }
                if dry_run {
                    println!(
                        "wrote {} (not submitted):\n{}",
                        p.script_path.display(),
                        p.script
                    );
                } else {
                    let job = toylens::sweep::slurm::submit(&p.script_path)?;
                    println!(
                        "submitted job array {job}: {} runs; follow with `toylens sweep --status {}`",
                        p.ids.len(),
                        dir.display()
                    );
                }
                return Ok(());
            }
            run_sweep_locally(&dir, &exe, jobs)?;
        }
        Cmd::Plot { run_dir, svg } => {
            for f in toylens::report::pictures::run_pictures(&run_dir, svg)? {
                println!("wrote {}", f.display());
            }
        }
        Cmd::Report { run_dir } => {
            let page = if toylens::sweep::is_sweep(&run_dir) {
                toylens::sweep::page::write(&run_dir)?
            } else {
                toylens::report::html::run_report(&run_dir)?
            };
            println!("wrote {}", page.display());
        }
        Cmd::Presets => {
            for p in toylens::config::PRESETS {
                println!("{:16} {}", p.name, p.about);
            }
        }
        Cmd::Config { preset, overrides } => {
            let cfg = toylens::config::resolve(&preset, &overrides)?;
            print!("{}", toylens::config::to_yaml(&cfg));
        }
        Cmd::Convert { input, output } => {
            let l = commands::convert(&input, &output)?;
            let t = l.transformer()?;
            println!(
                "wrote {} ({} parameters, {} layer(s), d_model {}, {})",
                output.display(),
                l.model
                    .trainable_ranges()
                    .iter()
                    .map(|r| r.len())
                    .sum::<usize>(),
                t.cfg.n_layers,
                t.cfg.d_model,
                commands::describe_task(l.task.as_ref())
            );
        }
        Cmd::Eval { checkpoint, json } => {
            let ev = commands::eval(&checkpoint)?;
            if json {
                let mut v = serde_json::Map::new();
                for (n, loss, acc) in &ev.sets {
                    v.insert(format!("loss_{n}"), serde_json::json!(loss));
                    v.insert(format!("acc_{n}"), serde_json::json!(acc));
                }
                println!("{}", serde_json::Value::Object(v));
            } else {
                println!("{}: {}", checkpoint.display(), ev.what);
                for (n, loss, acc) in &ev.sets {
                    let n = if *n == "all" { "all pairs" } else { n };
                    println!("  {n:11} loss {loss:.4e}  acc {acc:.4}");
                }
                if ev.sets.len() == 1 {
                    println!("  (train/test split unknown for this checkpoint)");
                }
                if let Some((a, b)) = ev.recorded {
                    println!(
                        "  recorded by the original run: train loss {a:.4e}, test loss {b:.4e}"
                    );
                }
            }
        }
        Cmd::Analyze {
            target,
            json,
            out,
            key_rule,
        } => match commands::analyze(&target, out.as_deref(), key_rule)? {
            AnalyzeReport::Run {
                rows,
                phases,
                files,
            } => {
                if json {
                    println!(
                        "{}",
                        serde_json::json!({"progress": rows, "phases": phases})
                    );
                    return Ok(());
                }
                println!(
                    "{}: {} checkpoints -> {}",
                    target.display(),
                    rows.len(),
                    files
                        .iter()
                        .map(|f| f.display().to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                );
                if let Some(ph) = phases {
                    let show = |s: Option<u64>| {
                        s.map(|s| s.to_string())
                            .unwrap_or_else(|| "not reached".into())
                    };
                    println!("  memorisation       steps 0-{}", ph.memorisation_end);
                    println!(
                        "  circuit formation  steps {}-{}",
                        ph.memorisation_end,
                        show(ph.cleanup_start)
                    );
                    println!(
                        "  cleanup            steps {}-{}",
                        show(ph.cleanup_start),
                        show(ph.cleanup_end)
                    );
                }
            }
            AnalyzeReport::Induction {
                phase,
                heads,
                last,
                files,
            } => {
                if let AnalyzeReport::Generic { files, .. } = last.as_ref() {
                    for f in files {
                        eprintln!("wrote {}", f.display());
                    }
                }
                for f in &files {
                    eprintln!("wrote {}", f.display());
                }
                if json {
                    let v = serde_json::json!({"phase_change": phase, "heads": heads});
                    println!("{v}");
                    return Ok(());
                }
                print_induction(phase.as_ref(), heads.as_ref());
            }
            AnalyzeReport::Generic { report, files } => {
                for f in &files {
                    eprintln!("wrote {}", f.display());
                }
                if json {
                    println!("{}", serde_json::to_string(&report)?);
                    return Ok(());
                }
                print_generic_report(&target, &report);
            }
            AnalyzeReport::Digits { report, files } => {
                for f in &files {
                    eprintln!("wrote {}", f.display());
                }
                if json {
                    println!("{}", serde_json::to_string(&report)?);
                    return Ok(());
                }
                println!("{}:", target.display());
                print_digits_report(&report);
            }
            AnalyzeReport::DigitsRun { rows, last, files } => {
                if json {
                    println!(
                        "{}",
                        serde_json::json!({"over_training": rows, "last_checkpoint": last})
                    );
                    return Ok(());
                }
                println!(
                    "{}: {} checkpoints -> {} files in {}",
                    target.display(),
                    rows.len(),
                    files.len(),
                    files
                        .first()
                        .and_then(|f| f.parent())
                        .map(|d| d.display().to_string())
                        .unwrap_or_default()
                );
                println!(
                        "first checkpoint with loss < {:.2} per case (no carry / carry / cascading carry):",
                        toylens::io::run::DIGIT_TRANSITION_LOSS
                    );
                let show = |s: Option<u64>| s.map_or("-".to_string(), |s| s.to_string());
                for (place, t) in toylens::analysis::digits::case_transitions(&rows) {
                    println!(
                        "  10^{place}: {:>6} {:>6} {:>6}",
                        show(t[0]),
                        show(t[1]),
                        show(t[2])
                    );
                }
                println!("last checkpoint (step {}):", rows.last().map_or(0, |r| r.0));
                print_digits_report(&last);
            }
            AnalyzeReport::Superposition {
                instances,
                n_features,
                n_hidden,
                files,
            } => {
                for f in &files {
                    eprintln!("wrote {}", f.display());
                }
                if json {
                    println!("{}", serde_json::json!({ "instances": instances }));
                    return Ok(());
                }
                println!(
                    "{}: {} instances, {n_features} features in {n_hidden} dimensions",
                    target.display(),
                    instances.len(),
                );
                println!(
                    "{:>9} {:>12} {:>12}  feature norms",
                    "p", "represented", "dims/feature"
                );
                for g in &instances {
                    let norms: Vec<String> = g.norms.iter().map(|n| format!("{n:.2}")).collect();
                    println!(
                        "{:>9.4} {:>12} {:>12.3}  {}",
                        g.feature_probability,
                        g.represented.len(),
                        g.dims_per_feature,
                        norms.join(" ")
                    );
                }
            }
            AnalyzeReport::Modular {
                op,
                analysis: a,
                neurons: nf,
                on_train_set,
                files,
            } => {
                if json {
                    let mut v = serde_json::to_value(&a)?;
                    v["neuron_clusters"] = serde_json::to_value(&nf.clusters)?;
                    v["key_frequency_rule"] =
                        serde_json::Value::String(toylens::error::choice_name(&key_rule));
                    println!("{v}");
                    return Ok(());
                }
                if let Some(dir) = &out {
                    println!("wrote {} pictures to {}", files.len(), dir.display());
                }
                let p = a.p;
                let sym = op.symbol();
                println!("{}: (a {sym} b) mod {p}", target.display());
                println!(
                    "  key frequencies        {:?}   (rule: {})",
                    a.key_frequencies,
                    toylens::error::choice_name(&key_rule)
                );
                println!("  loss (all pairs)       {:.4e}", a.loss_all);
                println!("  restricted loss        {:.4e}   (logits kept to the key frequencies of x {sym} y)", a.restricted_loss);
                println!(
                    "  excluded loss          {:.4e}   (key frequencies removed; on {})",
                    a.excluded_loss,
                    if on_train_set {
                        "the train set"
                    } else {
                        "all pairs"
                    }
                );
                for (k, l) in a.key_frequencies.iter().zip(&a.excluded_loss_per_frequency) {
                    println!("    without frequency {k:3}  {l:.4e}");
                }
                println!(
                    "  Gini of W_E, W_L       {:.3}, {:.3}",
                    a.gini_w_e, a.gini_w_l
                );
                println!("  sum of squared weights {:.1}", a.sum_sq_weights);
                let clustered: usize = nf.clusters.iter().map(|c| c.size).sum();
                println!(
                        "  neuron clusters        {clustered} of {} neurons by best frequency (share of variance ≥ {}):",
                        nf.share.len(),
                        toylens::analysis::neurons::CLUSTER_MIN_SHARE
                    );
                for c in &nf.clusters {
                    println!(
                        "    frequency {:3}: {:4} neurons, mean share {:.3}",
                        c.frequency, c.size, c.mean_share
                    );
                }
            }
        },
        Cmd::Ablate {
            checkpoint,
            out,
            top,
            json,
        } => {
            let r = commands::ablate(&checkpoint, out.as_deref())?;
            for f in &r.files {
                eprintln!("wrote {}", f.display());
            }
            if json {
                println!("{}", serde_json::to_string(&r)?);
            } else {
                println!(
                    "{}: loss {:.4e}, accuracy {:.4} with nothing ablated",
                    checkpoint.display(),
                    r.loss,
                    r.accuracy
                );
                println!(
                    "{:>8} {:>5} {:>5}  {:>11} {:>8}  {:>11} {:>8}",
                    "unit", "layer", "index", "zero loss", "zero acc", "mean loss", "mean acc"
                );
                for r in r.rows.iter().take(top) {
                    let unit = match r.unit {
                        toylens::analysis::ablation::Unit::Neuron => "neuron",
                        toylens::analysis::ablation::Unit::Head => "head",
                    };
                    println!(
                        "{unit:>8} {:>5} {:>5}  {:>11.4e} {:>8.4}  {:>11.4e} {:>8.4}",
                        r.layer, r.index, r.zero_loss, r.zero_acc, r.mean_loss, r.mean_acc
                    );
                }
            }
        }
        Cmd::Circuits {
            target,
            out,
            examples,
            seed,
            json,
        } => {
            let r = commands::circuits::CircuitsRequest {
                target,
                out,
                examples: Some(examples),
                seed,
            }
            .run()?;
            for f in &r.files {
                eprintln!("wrote {}", f.display());
            }
            if json {
                println!("{}", serde_json::to_string(&r.summary)?);
            } else {
                println!("{}", commands::circuits::describe(&r));
            }
        }
        Cmd::Spikes {
            run,
            column,
            ratio,
            window,
            out,
            json,
        } => {
            let r = commands::spikes::SpikesRequest {
                run,
                column,
                ratio,
                window,
                out,
            }
            .run()?;
            for f in &r.files {
                eprintln!("wrote {}", f.display());
            }
            if json {
                println!("{}", serde_json::to_string(&r.report)?);
            } else {
                print!("{}", toylens::analysis::spikes::describe(&r.report));
            }
        }
        Cmd::Monitors => {
            for m in toylens::train::monitors::MONITORS {
                println!("{:<10} {}", m.name, m.about);
            }
        }
        Cmd::Patch {
            checkpoint,
            hook,
            source,
            target,
            position,
            head,
            json,
        } => {
            let l = toylens::io::load_any(&checkpoint)?;
            let spec = toylens::hooks::PatchSpec { position, head };
            let e = toylens::analysis::patching::patch_pair(&l, &hook, source, target, spec)?;
            if json {
                println!("{}", serde_json::to_string(&e)?);
            } else {
                println!(
                    "patch {hook} from {},{} into {},{} (answer {}):",
                    source.0, source.1, target.0, target.1, e.correct
                );
                println!(
                    "  correct logit {:.4} -> {:.4}",
                    e.logit_before, e.logit_after
                );
                println!(
                    "  loss          {:.4e} -> {:.4e}",
                    e.loss_before, e.loss_after
                );
                println!("  prediction    {}", e.prediction_after);
            }
        }
        Cmd::Llc {
            target,
            lr,
            localization,
            nbeta,
            chains,
            draws,
            burnin,
            steps_between_draws,
            batch_size,
            seed,
            init_loss,
            calibrate,
            lrs,
            nbetas,
            localizations,
            restrict,
            per_head,
            mask,
            sampler,
            rmsprop_alpha,
            rmsprop_eps,
            diffusion,
            sample_on,
            observe,
            observe_examples,
            at_steps,
            json,
            out,
        } => {
            use toylens::analysis::llc::LlcConfig;
            if observe.iter().any(|o| o == "list") {
                for (name, about) in commands::llc_set_names(&target)? {
                    println!("{name:<16} {about}");
                }
                return Ok(());
            }
            let cfg = LlcConfig {
                at_steps,
                restrict,
                mask,
                sampler,
                rmsprop_alpha,
                rmsprop_eps,
                diffusion,
                sample_on,
                observe,
                observe_examples,
                lr,
                localization,
                nbeta,
                chains,
                draws,
                burnin,
                steps_between_draws,
                batch_size,
                seed,
                init_loss,
            };
            let t0 = std::time::Instant::now();
            let report = if calibrate {
                commands::llc_calibrate(
                    &target,
                    &cfg,
                    &lrs,
                    &nbetas,
                    &localizations,
                    out.as_deref(),
                )?
            } else {
                commands::llc(&target, &cfg, per_head, out.as_deref())?
            };
            let secs = t0.elapsed().as_secs_f64();
            match report {
                commands::LlcReport::Checkpoint {
                    estimate,
                    n_train,
                    files,
                } => {
                    if json {
                        let mut v = serde_json::to_value(&estimate)?;
                        v["n_train"] = n_train.into();
                        v["seconds"] = secs.into();
                        println!("{v}");
                    } else {
                        print_llc(&target.display().to_string(), &estimate);
                        println!("  {n_train} training examples, {secs:.1} s");
                    }
                    for f in files {
                        eprintln!("wrote {}", f.display());
                    }
                }
                commands::LlcReport::Run {
                    steps,
                    estimates,
                    n_train,
                    files,
                } => {
                    if json {
                        let rows: Vec<serde_json::Value> = steps
                            .iter()
                            .zip(&estimates)
                            .map(|(s, e)| serde_json::json!({"step": s, "llc_mean": e.llc_mean, "llc_std": e.llc_std, "init_loss": e.init_loss, "warnings": e.warnings}))
                            .collect();
                        println!(
                            "{}",
                            serde_json::json!({"checkpoints": rows, "n_train": n_train, "seconds": secs})
                        );
                    } else {
                        for (s, e) in steps.iter().zip(&estimates) {
                            print_llc(&format!("step {s:>7}"), e);
                        }
                        println!(
                            "  {} checkpoints, {n_train} training examples, {secs:.1} s",
                            steps.len()
                        );
                    }
                    for f in files {
                        eprintln!("wrote {}", f.display());
                    }
                }
                commands::LlcReport::Calibration {
                    cells,
                    n_train,
                    files,
                } => {
                    if json {
                        println!("{}", serde_json::to_value(&cells)?);
                    } else {
                        println!(
                            "{:>10} {:>10} {:>12} {:>10} {:>10} {:>10}  warnings",
                            "ε", "nβ", "γ", "λ̂", "std", "accept"
                        );
                        for c in &cells {
                            let e = &c.estimate;
                            println!(
                                "{:>10.1e} {:>10.3} {:>12} {:>10.4} {:>10.4} {:>10.2}  {}",
                                c.lr,
                                c.nbeta,
                                c.localization,
                                e.llc_mean,
                                e.llc_std,
                                e.mean_acceptance,
                                e.warnings.len()
                            );
                        }
                        println!("  {n_train} training examples, {secs:.1} s");
                    }
                    for f in files {
                        eprintln!("wrote {}", f.display());
                    }
                }
                commands::LlcReport::Heads {
                    steps,
                    heads,
                    estimates,
                    n_train,
                    files,
                } => {
                    if json {
                        let rows: Vec<serde_json::Value> = steps
                            .iter()
                            .zip(&estimates)
                            .map(|(s, row)| {
                                let per: serde_json::Map<String, serde_json::Value> = heads
                                    .iter()
                                    .zip(row)
                                    .map(|(h, e)| {
                                        let v = serde_json::json!({"llc_mean": e.llc_mean, "llc_std": e.llc_std, "warnings": e.warnings});
                                        (h.clone(), v)
                                    })
                                    .collect();
                                serde_json::json!({"step": s, "heads": per})
                            })
                            .collect();
                        println!(
                            "{}",
                            serde_json::json!({"checkpoints": rows, "n_train": n_train, "seconds": secs})
                        );
                    } else {
                        let run = target.is_dir();
                        for (s, row) in steps.iter().zip(&estimates) {
                            if run {
                                println!("step {s}:");
                            }
                            for (h, e) in heads.iter().zip(row) {
                                print_llc(&format!("  {h}"), e);
                            }
                        }
                        println!("  {n_train} training examples, {secs:.1} s");
                    }
                    for f in files {
                        eprintln!("wrote {}", f.display());
                    }
                }
            }
        }
        Cmd::Dynamics {
            run,
            set,
            examples,
            components,
            window,
            min_angle,
            json,
            out,
        } => {
            let cfg = toylens::analysis::dynamics::DynamicsConfig {
                components,
                window,
                min_angle,
                turn_components: components.min(3),
            };
            let t0 = std::time::Instant::now();
            let r = commands::dynamics(&run, (&set, examples), &cfg, Some(out.as_deref()))?;
            let d = &r.dynamics;
            if json {
                let mut v = serde_json::to_value(d)?;
                v["set"] = r.set.clone().into();
                v["examples"] = r.examples.into();
                v["seconds"] = t0.elapsed().as_secs_f64().into();
                println!("{v}");
            } else {
                println!(
                    "{} checkpoints, outputs on `{}` ({} examples, {} values each); explained: {}",
                    d.steps.len(),
                    r.set,
                    r.examples,
                    d.dims,
                    d.explained
                        .iter()
                        .enumerate()
                        .map(|(k, e)| format!("PC{} {:.1}%", k + 1, 100.0 * e))
                        .collect::<Vec<_>>()
                        .join(", ")
                );
                if d.turns.is_empty() {
                    println!("  no turn of {min_angle}° or more");
                }
                for t in &d.turns {
                    println!("  turn at step {} ({:.0}°)", t.step, t.angle);
                }
                println!("  {:.1} s", t0.elapsed().as_secs_f64());
            }
            for f in r.files {
                eprintln!("wrote {}", f.display());
            }
        }
        Cmd::Prune {
            checkpoint,
            sparsity,
            scope,
            tensors,
            method,
            seed,
            out,
        } => {
            let counts =
                commands::prune(&checkpoint, sparsity, scope, method, &tensors, seed, &out)?;
            println!("wrote {}", out.display());
            for c in counts {
                println!(
                    "  {:32} {:>9} of {:>9} live ({:.1}%)",
                    c.tensor,
                    c.live,
                    c.total,
                    100.0 * c.live as f64 / c.total.max(1) as f64
                );
            }
        }
        Cmd::Ticket {
            run_dir,
            from,
            sparsity,
            rewind,
            rounds,
            scope,
            method,
            seed,
            out,
            control,
            quiet,
            overrides,
        } => {
            let spec = commands::TicketSpec {
                run: run_dir,
                from: commands::checkpoint_step("--from", &from)?,
                sparsity,
                rewind,
                rounds,
                scope,
                method,
                seed,
                overrides,
                control,
            };
            let progress = if quiet {
                toylens::train::Progress::Quiet
            } else {
                toylens::train::Progress::Auto
            };
            let out = out.unwrap_or_else(|| spec.default_out());
            let s = commands::ticket(&spec, &out, progress)?;
            println!(
                "{}: {} steps, test loss {:.3e}, test acc {}; grok step {}",
                out.display(),
                s.steps,
                s.final_test_loss,
                s.final_test_acc.map_or("-".into(), |a| format!("{a:.4}")),
                s.grok_step.map_or("none".into(), |g| g.to_string())
            );
        }
        Cmd::Hooks { checkpoint } => {
            let l = toylens::io::load_any(&checkpoint)?;
            for (name, shape) in l.model.hook_shapes()? {
                println!("{name:40} {shape:?}");
            }
        }
        Cmd::Bench {
            workload,
            steps,
            seed,
            out,
            json,
            peak,
            w_in_fold,
            trace,
        } => {
            let r = toylens::bench::BenchRequest {
                workload,
                steps,
                seed,
                out,
                peak,
                w_in_fold,
                trace,
            }
            .run()?;
            if json {
                println!("{}", r.json);
            } else {
                print!("{}", r.text);
            }
        }
    }
    Ok(())
}
