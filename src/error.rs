//! One error type for the library. Every variant names what was wrong (file, key, value) so the CLI
//! can print it as is.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A file that exists but whose contents are not what we expect.
    #[error("{path}: {msg}")]
    Format { path: PathBuf, msg: String },
    /// A configuration field with a bad value; `key` is its dotted path.
    #[error("config key `{key}`: {msg}")]
    Config { key: String, msg: String },
    #[error("unknown hook point `{name}`{}", suggestion_text(.suggestions))]
    UnknownHook {
        name: String,
        suggestions: Vec<String>,
    },
    /// A run stopped on request, after saving a checkpoint of the step it finished.
    #[error("stopped at step {step}; saved {}: resume to continue it exactly", .checkpoint.display())]
    Interrupted { step: u64, checkpoint: PathBuf },
    /// Bad input to a model call (tokens out of range, wrong shapes, ...).
    #[error("{0}")]
    Input(String),
}

fn suggestion_text(s: &[String]) -> String {
    if s.is_empty() {
        String::new()
    } else {
        format!("; did you mean {}?", s.join(", "))
    }
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }
    pub fn format(path: impl Into<PathBuf>, msg: impl Into<String>) -> Self {
        Error::Format {
            path: path.into(),
            msg: msg.into(),
        }
    }
    pub fn config(key: impl Into<String>, msg: impl Into<String>) -> Self {
        Error::Config {
            key: key.into(),
            msg: msg.into(),
        }
    }
}

/// Levenshtein distance, for "did you mean" suggestions.
pub fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    let mut cur = vec![0; b.len() + 1];
    for (i, ca) in a.chars().enumerate() {
        cur[0] = i + 1;
        for (j, &cb) in b.iter().enumerate() {
            let sub = prev[j] + usize::from(ca != cb);
            cur[j + 1] = sub.min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        std::mem::swap(&mut prev, &mut cur);
    }
    prev[b.len()]
}

/// The candidates closest to `name` (at most `n`, and only reasonably close ones).
pub fn closest<'a>(
    name: &str,
    candidates: impl IntoIterator<Item = &'a str>,
    n: usize,
) -> Vec<String> {
    let mut scored: Vec<(usize, &str)> = candidates
        .into_iter()
        .map(|c| (edit_distance(name, c), c))
        .filter(|(d, c)| *d <= (c.len().max(name.len()) / 2).max(2))
        .collect();
    scored.sort();
    scored
        .into_iter()
        .take(n)
        .map(|(_, c)| c.to_string())
        .collect()
}

/// `tree` deserialized as `T`; an error names the key as `prefix` + its path inside `tree`
/// (`source`, the file or preset, when the whole tree is wrong). Config sections of every task and
/// model kind are read through it.
pub fn typed_section<T: serde::de::DeserializeOwned>(
    tree: serde_json::Value,
    prefix: &str,
    source: &str,
) -> Result<T> {
    serde_path_to_error::deserialize::<_, T>(tree).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner().to_string();
        let key = match (prefix.is_empty(), path == ".") {
            (true, true) => source.to_string(),
            (true, false) => path,
            (false, true) => prefix.to_string(),
            (false, false) => format!("{prefix}.{path}"),
        };
        Error::config(key, inner)
    })
}

/// `section` typed as `T` and back, so that every field is present (defaults filled in); errors
/// name the key under `prefix`.
pub fn normalized<T: serde::de::DeserializeOwned + serde::Serialize>(
    section: serde_json::Value,
    prefix: &str,
    source: &str,
) -> Result<serde_json::Value> {
    let typed: T = typed_section(section, prefix, source)?;
    Ok(serde_json::to_value(typed).expect("a config section serialises"))
}

/// `value` as one of `T`'s choices (the names the command line takes); the error names `name` and
/// lists them. The binary (through clap) and the Python bindings read every enum this way.
pub fn choice<T: clap::ValueEnum>(name: &str, value: &str) -> Result<T> {
    T::from_str(value, false).map_err(|_| {
        let names: Vec<String> = T::value_variants()
            .iter()
            .filter_map(|v| v.to_possible_value().map(|p| p.get_name().to_string()))
            .collect();
        Error::Input(format!("{name}: `{value}` is one of {}", names.join(", ")))
    })
}

/// The name the command line gives `v` (`wl`, `layer`, ...).
pub fn choice_name<T: clap::ValueEnum>(v: &T) -> String {
    v.to_possible_value()
        .map(|p| p.get_name().to_string())
        .unwrap_or_default()
}
