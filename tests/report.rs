//! The HTML report: self-contained and offline, and, in headless Chromium, every figure draws with no
//! script or console error. Without Chromium (Debian package `chromium`, which .ci/run installs) the
//! browser part is skipped with a printed reason, except in CI (`CI` set), where it fails.

use std::path::{Path, PathBuf};
use std::process::Command;

fn chromium() -> Option<PathBuf> {
    ["chromium", "chromium-browser", "google-chrome"]
        .iter()
        .find_map(|c| {
            let out = Command::new("sh")
                .args(["-c", &format!("command -v {c}")])
                .output()
                .ok()?;
            out.status
                .success()
                .then(|| PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()))
        })
}

fn toylens(args: &[&str], out: Option<&Path>) -> String {
    let mut c = Command::new(env!("CARGO_BIN_EXE_toylens"));
    c.args(args);
    if let Some(o) = out {
        c.arg("--out").arg(o);
    }
    let r = c.output().unwrap();
    assert!(
        r.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&r.stderr)
    );
    String::from_utf8_lossy(&r.stdout).into_owned()
}

#[test]
fn report_is_self_contained_and_every_figure_draws_in_a_browser() {
    let d = tempfile::tempdir().unwrap();
    let run = d.path().join("run");
    toylens(
        &[
            "train",
            "grokking-tiny",
            "train.steps=300",
            "train.checkpoint_every=100",
            "train.monitors=[progress, attention]",
            "--quiet",
        ],
        Some(&run),
    );
    toylens(&["report", run.to_str().unwrap()], None);
    let path = run.join("report.html");
    let html = std::fs::read_to_string(&path).unwrap();
    let plotly =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("assets/plotly.min.js"))
            .unwrap();
    assert!(html.contains(&plotly), "plotly.js is inlined whole");
    let page = html.replace(&plotly, "");
    for external in [
        "src=\"http",
        "href=\"http",
        "src='http",
        "<link",
        "url(http",
    ] {
        assert!(
            !page.contains(external),
            "the report loads `{external}`: it must work offline"
        );
    }
    let n_figures = html.matches("class=\"plot\"").count();
    // 8 of the modular page, 6 of the circuits section (1 layer, 3 positions: no path patching,
    // composition or detectors), 5 of watching training (the trace's two, spikes, two monitors).
    assert_eq!(n_figures, 19);
    for id in [
        "circuits-dla",
        "circuits-patch-blocks",
        "circuits-fourier",
        "trace_grad",
        "spikes",
        "monitor-progress",
        "monitor-attention",
    ] {
        assert!(html.contains(&format!("fig-{id}")), "no {id}");
    }
    draws_in_browser(&path, n_figures, d.path());
}

/// Every figure of the page at `path` draws in headless Chromium with no script or console error
/// and no network (skipped, with a printed reason, without Chromium).
fn draws_in_browser(path: &Path, n_figures: usize, tmp: &Path) {
    let Some(browser) = chromium() else {
        // In CI Chromium is required (.ci/run installs it): a missing browser fails there.
        assert!(
            std::env::var_os("CI").is_none(),
            "no chromium on PATH in CI (.ci/run installs Debian's chromium)"
        );
        eprintln!("skipped the browser check: no chromium on PATH (apt-get install chromium)");
        return;
    };
    let profile = tmp.join("profile");
    let out = Command::new(browser)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--virtual-time-budget=30000",
            "--dump-dom",
        ])
        // No host resolves: the page must not need the network.
        .arg("--host-resolver-rules=MAP * ~NOTFOUND")
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg(format!("file://{}", path.display()))
        .output()
        .unwrap();
    let dom = String::from_utf8_lossy(&out.stdout);
    // The status line is in the page for tests, hidden from readers (`<pre id="status" hidden="">`
    // once serialized).
    let status_tag = dom.split("<pre id=\"status\"").nth(1).unwrap_or("");
    assert!(
        status_tag
            .split('>')
            .next()
            .unwrap_or("")
            .contains("hidden"),
        "the status line is shown to the reader"
    );
    let status = status_tag
        .split_once('>')
        .and_then(|(_, s)| s.split('<').next())
        .unwrap_or("");
    let v: serde_json::Value = serde_json::from_str(status)
        .unwrap_or_else(|_| panic!("the page did not finish drawing; status `{status}`"));
    assert_eq!(v["figures"], n_figures);
    assert_eq!(v["drawn"], n_figures, "{v}");
    assert_eq!(
        v["errors"],
        serde_json::json!([]),
        "script or console errors: {v}"
    );
    assert!(
        dom.matches("main-svg").count() >= n_figures,
        "plotly drew its SVGs"
    );
}

#[test]
fn every_task_has_a_report_that_draws() {
    let d = tempfile::tempdir().unwrap();
    for (name, args, figures, words) in [
        (
            "digits",
            &[
                "digits3",
                "data.n_digits=2",
                "model.d_model=32",
                "model.n_heads=2",
                "model.d_head=16",
                "model.d_mlp=64",
                "train.steps=40",
                "data.n_eval=100",
            ][..],
            // 7 of its own, 6 of the circuits section (detectors, no composition: 1 layer), 3 of
            // watching training (the trace's two, spikes).
            16,
            "Each digit through the naive sum",
        ),
        (
            "toy",
            &[
                "toy-mlp",
                "data.p=23",
                "train.steps=100",
                "train.eval_every=20",
            ][..],
            7,
            "Which neurons matter",
        ),
        (
            "sp",
            &[
                "superposition",
                "data.n_instances=3",
                "train.batch_size=64",
                "train.steps=100",
            ][..],
            7,
            "Feature directions, per instance",
        ),
        (
            "induction",
            &[
                "induction",
                "train.steps=50",
                "train.eval_every=25",
                "data.n_eval=64",
            ][..],
            // Loss and accuracy, 3 of its own, the circuits section's 8 (2 layers), watching
            // training's 4 (the trace's two, spikes, the heads monitor).
            17,
            "In-context learning: attention on a repeated sequence",
        ),
    ] {
        let run = d.path().join(name);
        let mut a = vec!["train"];
        a.extend_from_slice(args);
        a.push("--quiet");
        toylens(&a, Some(&run));
        toylens(&["report", run.to_str().unwrap()], None);
        let path = run.join("report.html");
        let html = std::fs::read_to_string(&path).unwrap();
        assert_eq!(html.matches("class=\"plot\"").count(), figures, "{name}");
        assert!(html.contains(words), "{name}: no `{words}`");
        draws_in_browser(&path, figures, &d.path().join(format!("{name}-browser")));
    }
}

#[test]
fn a_sweep_has_a_page_with_every_run_and_the_table() {
    let d = tempfile::tempdir().unwrap();
    let sweep = d.path().join("sweep");
    let s = sweep.to_str().unwrap();
    toylens(
        &[
            "sweep",
            "grokking-tiny",
            "optim.weight_decay=0,1",
            "seed=0,1",
            "train.steps=200",
            "--out",
            s,
        ],
        None,
    );
    toylens(&["report", s], None);
    let path = sweep.join("report.html");
    let html = std::fs::read_to_string(&path).unwrap();
    assert!(html.contains("Sweep of grokking-tiny (4 of 4 runs done)"));
    assert_eq!(html.matches("class=\"plot\"").count(), 2);
    // The table: a row per run, with its axis values.
    assert_eq!(html.matches("<tr><td>").count(), 4);
    assert!(html.contains("<th>optim.weight_decay</th><th>seed</th><th>state</th>"));
    // Four curves, coloured by weight decay: two legend entries.
    assert!(html.contains("\"colour: optim.weight_decay\""));
    assert!(html.contains(
        "\"name\":[\"weight_decay=0\",\"weight_decay=0\",\"weight_decay=1\",\"weight_decay=1\"]"
    ));
    draws_in_browser(&path, 2, d.path());
}
