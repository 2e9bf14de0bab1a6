//! Your own data: a task whose examples are arrays in files, as numpy or safetensors writes them.
//!
//! A set (train or test) is a `.npz` or `.safetensors` file holding the arrays `inputs` and
//! `targets`, or a directory holding `inputs.npy` and `targets.npy`:
//! - tokens: integer `inputs [n, pos]`, and integer `targets`, either one label per example `[n]`
//!   (predicted at the last position) or one per position `[n, pos]` as TransformerLens's are, -1
//!   where no loss is taken (the same positions in every example);
//! - vectors: real `inputs [n, n_in]` and real `targets [n, n_out]` (or `[n]`), squared error.
//!
//! The test set is a file of its own, or `test_fraction` of the training file's examples drawn by
//! the seed. Vocabularies are inferred (the largest token + 1) unless given, and checked. Bad data
//! is an error naming the file, the array and the first bad index; nothing is trained or written.

use super::{Footprint, Task, TaskData, TaskSection};
use crate::batch::{Batch, DenseBatch, TaskIo, TokenBatch};
use crate::engine::rng::Rng;
use crate::error::{Error, Result};
use ndarray::{Array2, Axis};
use serde::{Deserialize, Deserializer, Serialize};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// `data:` of `task: files`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FilesSection {
    /// The training set: a `.npz` or `.safetensors` file with arrays `inputs` and `targets`, or a
    /// directory with `inputs.npy` and `targets.npy`. Recorded as an absolute path.
    #[serde(deserialize_with = "absolute")]
    pub train: String,
    /// The test set, the same way; null: `test_fraction` of the training set's examples.
    #[serde(default, deserialize_with = "absolute_or_null")]
    pub test: Option<String>,
    /// The share of the training file held out as the test set when `test` is null.
    #[serde(default = "default_test_fraction")]
    pub test_fraction: f64,
    /// Input vocabulary; null: the largest input token + 1 (tokens only).
    #[serde(default)]
    pub d_vocab: Option<usize>,
    /// Output classes; null: the largest target + 1 (tokens only).
    #[serde(default)]
    pub d_vocab_out: Option<usize>,
    /// Seed of the held-out split and the minibatch order; null means the top-level `seed`.
    #[serde(default)]
    pub seed: Option<u64>,
}

fn default_test_fraction() -> f64 {
    0.2
}

/// A relative path made absolute against the current directory, so that a run resumed, a sweep's
/// worker or a Slurm task elsewhere reads the same file.
fn absolute<'de, D: Deserializer<'de>>(d: D) -> std::result::Result<String, D::Error> {
    let s = String::deserialize(d)?;
    Ok(absolute_path(&s))
}

fn absolute_or_null<'de, D: Deserializer<'de>>(
    d: D,
) -> std::result::Result<Option<String>, D::Error> {
    Ok(Option::<String>::deserialize(d)?.map(|s| absolute_path(&s)))
}

fn absolute_path(s: &str) -> String {
    let p = Path::new(s);
    if p.is_absolute() || s.is_empty() {
        return s.to_string();
    }
    std::env::current_dir()
        .map(|d| d.join(p).to_string_lossy().into_owned())
        .unwrap_or_else(|_| s.to_string())
}

/// Examples of one set, checked.
#[derive(Clone, Debug)]
enum Examples {
    Tokens(TokenBatch),
    Vectors(DenseBatch),
}

impl Examples {
    fn len(&self) -> usize {
        match self {
            Examples::Tokens(b) => b.tokens.nrows(),
            Examples::Vectors(b) => b.x.nrows(),
        }
    }
    fn batch(&self) -> Batch {
        match self {
            Examples::Tokens(b) => Batch::Tokens(b.clone()),
            Examples::Vectors(b) => Batch::Dense(b.clone()),
        }
    }
}

/// The task: its section and both sets, read and checked.
#[derive(Debug)]
pub struct FilesTask {
    pub section: FilesSection,
    pub seed: u64,
    train: Batch,
    test: Batch,
    io: TaskIo,
    bytes: f64,
    /// CRC-32C of the files read (train, then test).
    checksum: String,
}

impl TaskSection for FilesSection {
    const NAME: &'static str = "files";
    fn configure(self, seed: u64) -> Result<Arc<dyn Task>> {
        let seed = self.seed.unwrap_or(seed);
        let (whole, mut checksum) = read_set(Path::new(&self.train))?;
        // Checked whole first, so that an error's index is the file's.
        let (train, test) = match &self.test {
            Some(t) => {
                let (test, crc) = read_set(Path::new(t))?;
                checksum = format!("{checksum}/{crc}");
                (whole, test)
            }
            None => {
                check_together(&self, &whole, &whole)?;
                let f = self.test_fraction;
                if !(f > 0.0 && f < 1.0) {
                    return Err(Error::config(
                        "data.test_fraction",
                        format!("must be strictly between 0 and 1 (got {f})"),
                    ));
                }
                split(&whole, f, seed, &self.train)?
            }
        };
        let io = check_together(&self, &train, &test)?;
        let bytes = (train.len() + test.len()) as f64 * example_bytes(&train);
        Ok(Arc::new(FilesTask {
            section: self,
            seed,
            train: train.batch(),
            test: test.batch(),
            io,
            bytes,
            checksum,
        }))
    }
}

fn example_bytes(e: &Examples) -> f64 {
    match e {
        Examples::Tokens(b) => 4.0 * (b.tokens.ncols() + b.targets.ncols()) as f64,
        Examples::Vectors(b) => 4.0 * (b.x.ncols() + b.y.as_ref().map_or(0, |y| y.ncols())) as f64,
    }
}

/// Hold out `fraction` of `whole` (a seeded shuffle; the rest keeps its file order).
fn split(whole: &Examples, fraction: f64, seed: u64, file: &str) -> Result<(Examples, Examples)> {
    let n = whole.len();
    let n_test = ((n as f64) * fraction).round() as usize;
    if n_test == 0 || n_test == n {
        return Err(Error::format(
            file,
            format!(
                "{n} examples cannot be split with data.test_fraction={fraction}: give a test file (data.test) or more examples"
            ),
        ));
    }
    let mut order: Vec<usize> = (0..n).collect();
    Rng::new(seed ^ 0x7E57_0000_0000_0007).shuffle(&mut order);
    let mut test: Vec<usize> = order[..n_test].to_vec();
    let mut train: Vec<usize> = order[n_test..].to_vec();
    test.sort_unstable();
    train.sort_unstable();
    let pick = |rows: &[usize]| match whole {
        Examples::Tokens(b) => Examples::Tokens(TokenBatch {
            tokens: b.tokens.select(Axis(0), rows),
            loss_pos: b.loss_pos.clone(),
            targets: b.targets.select(Axis(0), rows),
        }),
        Examples::Vectors(b) => Examples::Vectors(DenseBatch {
            x: b.x.select(Axis(0), rows),
            y: b.y.as_ref().map(|y| y.select(Axis(0), rows)),
        }),
    };
    Ok((pick(&train), pick(&test)))
}

/// Both sets of one kind and width, within the vocabularies (given or inferred): the task's
/// inputs and outputs.
fn check_together(s: &FilesSection, train: &Examples, test: &Examples) -> Result<TaskIo> {
    let test_file = s.test.as_deref().unwrap_or(&s.train);
    match (train, test) {
        (Examples::Tokens(a), Examples::Tokens(b)) => {
            if a.tokens.ncols() != b.tokens.ncols() {
                return Err(Error::format(
                    test_file,
                    format!(
                        "inputs have {} positions, but the training set's have {}",
                        b.tokens.ncols(),
                        a.tokens.ncols()
                    ),
                ));
            }
            if a.loss_pos != b.loss_pos {
                return Err(Error::format(
                    test_file,
                    format!(
                        "targets are taken at positions {:?}, but the training set's at {:?}",
                        b.loss_pos, a.loss_pos
                    ),
                ));
            }
            let max_in = a.tokens.iter().chain(b.tokens.iter()).max().copied();
            let max_out = a.targets.iter().chain(b.targets.iter()).max().copied();
            let d_vocab = vocabulary(
                s.d_vocab,
                max_in,
                "data.d_vocab",
                &s.train,
                test_file,
                a,
                b,
                |t| &t.tokens,
                "inputs",
            )?;
            let d_vocab_out = vocabulary(
                s.d_vocab_out,
                max_out,
                "data.d_vocab_out",
                &s.train,
                test_file,
                a,
                b,
                |t| &t.targets,
                "targets",
            )?;
            Ok(TaskIo::Tokens {
                d_vocab,
                d_vocab_out,
                n_ctx: a.tokens.ncols(),
                pair_vocab: None,
            })
        }
        (Examples::Vectors(a), Examples::Vectors(b)) => {
            let width = |d: &DenseBatch| d.y.as_ref().map_or(0, |y| y.ncols());
            if a.x.ncols() != b.x.ncols() || width(a) != width(b) {
                return Err(Error::format(
                    test_file,
                    format!(
                        "inputs [n, {}] and targets [n, {}], but the training set's are [n, {}] and [n, {}]",
                        b.x.ncols(),
                        width(b),
                        a.x.ncols(),
                        width(a)
                    ),
                ));
            }
            for (k, v) in [
                ("data.d_vocab", s.d_vocab),
                ("data.d_vocab_out", s.d_vocab_out),
            ] {
                if v.is_some() {
                    return Err(Error::config(
                        k,
                        "real-valued data has no vocabulary: leave it null",
                    ));
                }
            }
            Ok(TaskIo::Vectors {
                n_in: a.x.ncols(),
                n_out: width(a),
            })
        }
        _ => Err(Error::format(
            test_file,
            "one set holds tokens and the other real numbers",
        )),
    }
}

/// A vocabulary given (every token checked below it) or inferred (the largest + 1).
#[allow(clippy::too_many_arguments)]
fn vocabulary(
    given: Option<usize>,
    max: Option<u32>,
    key: &str,
    train_file: &str,
    test_file: &str,
    train: &TokenBatch,
    test: &TokenBatch,
    array: fn(&TokenBatch) -> &Array2<u32>,
    name: &str,
) -> Result<usize> {
    let Some(v) = given else {
        return Ok(max.map_or(1, |m| m as usize + 1));
    };
    if v == 0 {
        return Err(Error::config(key, "must be at least 1 (got 0)"));
    }
    for (file, set) in [(train_file, train), (test_file, test)] {
        if let Some(((i, j), &t)) = array(set).indexed_iter().find(|(_, &t)| t as usize >= v) {
            return Err(Error::format(
                file,
                format!("{name}[{i}, {j}] = {t} is outside {key}={v} (0..{})", v - 1),
            ));
        }
    }
    Ok(v)
}

impl Task for FilesTask {
    fn io(&self) -> TaskIo {
        self.io.clone()
    }
    fn fresh_samples(&self) -> bool {
        false
    }
    fn make_data(&self, batch_size: Option<usize>) -> Result<Box<dyn TaskData>> {
        Ok(Box::new(super::FixedSets::new(
            self.train.clone(),
            self.test.clone(),
            batch_size,
            self.seed,
        )))
    }
    fn info(&self) -> Option<super::TaskInfo> {
        None
    }
    fn footprint(&self, batch_size: Option<usize>) -> Footprint {
        let largest = self.train.len().max(self.test.len());
        Footprint {
            examples_at_once: batch_size.unwrap_or(largest).max(largest) as f64,
            data_bytes: self.bytes,
        }
    }
    fn describe(&self) -> String {
        format!(
            "{} ({} training and {} test examples)",
            Path::new(&self.section.train)
                .file_name()
                .map_or_else(String::new, |f| f.to_string_lossy().into_owned()),
            self.train.len(),
            self.test.len()
        )
    }
    fn data_checksum(&self) -> Option<String> {
        Some(self.checksum.clone())
    }
    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}

/// An array as read: its shape and values, integers or reals.
#[derive(Clone, Debug)]
struct NumArray {
    shape: Vec<usize>,
    values: Values,
    dtype: String,
}

#[derive(Clone, Debug)]
enum Values {
    Int(Vec<i64>),
    Real(Vec<f64>),
}

/// The files a set is read from: the file, or a directory's `inputs.npy` and `targets.npy`.
fn set_files(path: &Path) -> Vec<PathBuf> {
    if path.is_dir() {
        vec![path.join("inputs.npy"), path.join("targets.npy")]
    } else {
        vec![path.to_path_buf()]
    }
}

/// A file as last seen: its path, length and modification time.
type FileKey = (PathBuf, u64, Option<std::time::SystemTime>);
/// Sets read recently, with their CRC-32C, by their files as last seen: a config is resolved
/// several times per command, and the files are read once.
type CacheEntry = (Vec<FileKey>, Arc<(Examples, String)>);
static READ: Mutex<Vec<CacheEntry>> = Mutex::new(Vec::new());

/// A set, checked, and the CRC-32C of its files' bytes (hex).
fn read_set(path: &Path) -> Result<(Examples, String)> {
    let files = set_files(path);
    let key = files
        .iter()
        .map(|f| {
            let m = std::fs::metadata(f).map_err(|e| Error::io(f, e))?;
            Ok((f.clone(), m.len(), m.modified().ok()))
        })
        .collect::<Result<Vec<FileKey>>>()?;
    if let Some(hit) = READ
        .lock()
        .ok()
        .and_then(|c| c.iter().find(|(k, _)| *k == key).map(|(_, e)| e.clone()))
    {
        return Ok((*hit).clone());
    }
    let bytes = files
        .iter()
        .map(|f| std::fs::read(f).map_err(|e| Error::io(f, e)))
        .collect::<Result<Vec<_>>>()?;
    let crc = bytes.iter().fold(0u32, |c, b| crc32c::crc32c_append(c, b));
    let (inputs, targets, names) = read_arrays(path, &files, bytes)?;
    let set = (
        examples(path, inputs, targets, names)?,
        format!("{crc:08x}"),
    );
    if let Ok(mut c) = READ.lock() {
        if c.len() >= 4 {
            c.remove(0);
        }
        c.push((key, Arc::new(set.clone())));
    }
    Ok(set)
}

/// (inputs, targets, how the two are named in errors), from the bytes of `files`.
fn read_arrays(
    path: &Path,
    files: &[PathBuf],
    mut bytes: Vec<Vec<u8>>,
) -> Result<(NumArray, NumArray, [String; 2])> {
    if let [a, b] = files {
        let parse = |p: &Path, b: &[u8]| npy(b).map_err(|m| Error::format(p, m));
        return Ok((
            parse(a, &bytes[0])?,
            parse(b, &bytes[1])?,
            [a.display().to_string(), b.display().to_string()],
        ));
    }
    let bytes = bytes.swap_remove(0);
    let name = |a: &str| format!("{}: `{a}`", path.display());
    let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
    let (x, y) = match ext {
        "npz" => {
            let mut zip = zip::ZipArchive::new(std::io::Cursor::new(bytes))
                .map_err(|e| Error::format(path, format!("not a .npz (zip) file: {e}")))?;
            let mut get = |a: &str| -> Result<NumArray> {
                let mut f = zip.by_name(&format!("{a}.npy")).map_err(|_| {
                    Error::format(path, format!("has no array `{a}` (np.savez(file, inputs=..., targets=...))"))
                })?;
                let mut b = Vec::new();
                std::io::Read::read_to_end(&mut f, &mut b).map_err(|e| Error::io(path, e))?;
                npy(&b).map_err(|m| Error::format(path, format!("`{a}`: {m}")))
            };
            (get("inputs")?, get("targets")?)
        }
        "safetensors" => {
            let st = safetensors::SafeTensors::deserialize(&bytes)
                .map_err(|e| Error::format(path, format!("not a safetensors file: {e}")))?;
            let get = |a: &str| -> Result<NumArray> {
                let t = st.tensor(a).map_err(|_| {
                    Error::format(path, format!("has no tensor `{a}`"))
                })?;
                let dtype = format!("{:?}", t.dtype()).to_lowercase();
                decode(&dtype, t.shape().to_vec(), t.data(), true)
                    .map_err(|m| Error::format(path, format!("`{a}`: {m}")))
            };
            (get("inputs")?, get("targets")?)
        }
        _ => {
            return Err(Error::format(
                path,
                "a data set is a .npz or .safetensors file (arrays `inputs` and `targets`) or a directory with inputs.npy and targets.npy",
            ))
        }
    };
    Ok((x, y, [name("inputs"), name("targets")]))
}

/// A `.npy` file (format 1, 2 or 3; C order; little-endian integers, bools or reals).
fn npy(b: &[u8]) -> std::result::Result<NumArray, String> {
    if b.len() < 10 || &b[..6] != b"\x93NUMPY" {
        return Err("not a .npy file".into());
    }
    let (len, start) = match b[6] {
        1 => (u16::from_le_bytes([b[8], b[9]]) as usize, 10),
        2 | 3 if b.len() >= 12 => (u32::from_le_bytes([b[8], b[9], b[10], b[11]]) as usize, 12),
        v => return Err(format!("unknown .npy version {v}")),
    };
    let header = b
        .get(start..start + len)
        .and_then(|h| std::str::from_utf8(h).ok())
        .ok_or("a cut-off .npy header")?;
    let field = |k: &str| -> Option<&str> {
        let i = header.find(&format!("'{k}'"))? + k.len() + 2;
        Some(
            header[i..]
                .trim_start()
                .trim_start_matches(':')
                .trim_start(),
        )
    };
    let descr = field("descr")
        .and_then(|s| s.strip_prefix('\''))
        .and_then(|s| s.split('\'').next())
        .ok_or("no dtype in the .npy header")?;
    if field("fortran_order").is_some_and(|s| s.starts_with("True")) {
        return Err("is in Fortran order; save np.ascontiguousarray(a) instead".into());
    }
    let shape_text = field("shape")
        .and_then(|s| s.strip_prefix('('))
        .and_then(|s| s.split(')').next())
        .ok_or("no shape in the .npy header")?;
    let shape = shape_text
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.parse::<usize>()
                .map_err(|_| format!("a bad shape ({shape_text})"))
        })
        .collect::<std::result::Result<Vec<_>, _>>()?;
    let little = !descr.starts_with('>');
    let dtype = match &descr[1..] {
        "i1" => "i8",
        "i2" => "i16",
        "i4" => "i32",
        "i8" => "i64",
        "u1" => "u8",
        "u2" => "u16",
        "u4" => "u32",
        "u8" => "u64",
        "b1" => "bool",
        "f4" => "f32",
        "f8" => "f64",
        other => {
            return Err(format!(
                "has dtype {other}: toylens reads integers, bools and float32/float64"
            ))
        }
    };
    decode(dtype, shape, &b[start + len..], little)
}

/// Values of `dtype` (`i8` … `u64`, `bool`, `f32`, `f64`) from little-endian bytes.
fn decode(
    dtype: &str,
    shape: Vec<usize>,
    data: &[u8],
    little: bool,
) -> std::result::Result<NumArray, String> {
    if !little {
        return Err("is big-endian; save it little-endian (a.astype('<i8'), say)".into());
    }
    let n: usize = shape.iter().product();
    let width = match dtype {
        "i8" | "u8" | "bool" => 1,
        "i16" | "u16" | "f16" | "bf16" => 2,
        "i32" | "u32" | "f32" => 4,
        "i64" | "u64" | "f64" => 8,
        other => {
            return Err(format!(
                "has dtype {other}: toylens reads integers, bools and float32/float64"
            ))
        }
    };
    if data.len() < n * width {
        return Err(format!(
            "holds {} bytes, but its shape {shape:?} needs {}",
            data.len(),
            n * width
        ));
    }
    let chunks = data[..n * width].chunks_exact(width);
    let arr = |c: &[u8]| -> [u8; 8] {
        let mut a = [0u8; 8];
        a[..c.len()].copy_from_slice(c);
        a
    };
    let values = match dtype {
        "i8" => Values::Int(chunks.map(|c| c[0] as i8 as i64).collect()),
        "u8" | "bool" => Values::Int(chunks.map(|c| c[0] as i64).collect()),
        "i16" => Values::Int(
            chunks
                .map(|c| i16::from_le_bytes([c[0], c[1]]) as i64)
                .collect(),
        ),
        "u16" => Values::Int(
            chunks
                .map(|c| u16::from_le_bytes([c[0], c[1]]) as i64)
                .collect(),
        ),
        "i32" => Values::Int(
            chunks
                .map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]]) as i64)
                .collect(),
        ),
        "u32" => Values::Int(
            chunks
                .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]) as i64)
                .collect(),
        ),
        "i64" => Values::Int(chunks.map(|c| i64::from_le_bytes(arr(c))).collect()),
        "u64" => Values::Int(
            chunks
                .map(|c| u64::from_le_bytes(arr(c)).min(i64::MAX as u64) as i64)
                .collect(),
        ),
        "f32" => Values::Real(
            chunks
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]) as f64)
                .collect(),
        ),
        "f64" => Values::Real(chunks.map(|c| f64::from_le_bytes(arr(c))).collect()),
        other => {
            return Err(format!(
                "has dtype {other}: toylens reads integers, bools and float32/float64"
            ))
        }
    };
    Ok(NumArray {
        shape,
        values,
        dtype: dtype.to_string(),
    })
}

/// Row-major index of flat position `k` in `shape`, as numpy prints it (`[3, 1]`).
fn index(shape: &[usize], k: usize) -> String {
    let mut rest = k;
    let mut idx = vec![0; shape.len()];
    for (d, &s) in shape.iter().enumerate().rev() {
        idx[d] = rest % s.max(1);
        rest /= s.max(1);
    }
    format!("{idx:?}")
}

/// The examples of a set, every value checked.
fn examples(path: &Path, x: NumArray, y: NumArray, [xn, yn]: [String; 2]) -> Result<Examples> {
    let bad = |msg: String| Error::format(path, msg);
    if x.shape.len() != 2 {
        return Err(bad(format!(
            "{xn} must be 2-D, [examples, positions] or [examples, features] (got shape {:?})",
            x.shape
        )));
    }
    let (n, width) = (x.shape[0], x.shape[1]);
    if n == 0 || width == 0 {
        return Err(bad(format!("{xn} is empty (shape {:?})", x.shape)));
    }
    if y.shape.first() != Some(&n) || y.shape.len() > 2 {
        return Err(bad(format!(
            "{yn} has shape {:?}; with {xn} of shape {:?} it must be [{n}] or [{n}, k]",
            y.shape, x.shape
        )));
    }
    match (x.values, y.values) {
        (Values::Int(xs), Values::Int(ys)) => {
            if let Some((k, &v)) = xs.iter().enumerate().find(|(_, &v)| !(0..=u32::MAX as i64).contains(&v)) {
                return Err(bad(format!("{xn}{} = {v} is not a token (0 or more)", index(&x.shape, k))));
            }
            if let Some((k, &v)) = ys.iter().enumerate().find(|(_, &v)| !(-1..=u32::MAX as i64).contains(&v)) {
                return Err(bad(format!("{yn}{} = {v} is not a class (0 or more; -1 for no loss)", index(&y.shape, k))));
            }
            let tokens = Array2::from_shape_vec((n, width), xs.iter().map(|&v| v as u32).collect())
                .expect("shape checked");
            let (loss_pos, targets) = if y.shape.len() == 1 {
                if let Some(k) = ys.iter().position(|&v| v < 0) {
                    return Err(bad(format!("{yn}[{k}] = -1: with one label per example, every example needs one")));
                }
                (vec![width - 1], Array2::from_shape_vec((n, 1), ys.iter().map(|&v| v as u32).collect()).expect("n labels"))
            } else {
                if y.shape[1] != width {
                    return Err(bad(format!(
                        "{yn} has {} positions but {xn} {width}: per-position targets are [examples, positions]",
                        y.shape[1]
                    )));
                }
                let taken = |row: &[i64]| -> Vec<usize> { (0..width).filter(|&j| row[j] >= 0).collect() };
                let loss_pos = taken(&ys[..width]);
                if loss_pos.is_empty() {
                    return Err(bad(format!("{yn}[0] is -1 everywhere: no position to take a loss at")));
                }
                if let Some(i) = (1..n).find(|&i| taken(&ys[i * width..(i + 1) * width]) != loss_pos) {
                    let j = (0..width)
                        .find(|&j| (ys[i * width + j] >= 0) != loss_pos.contains(&j))
                        .unwrap_or(0);
                    return Err(bad(format!(
                        "{yn}[{i}, {j}] = {}, but example 0 takes {} loss there: toylens takes the loss at the same positions in every example",
                        ys[i * width + j],
                        if loss_pos.contains(&j) { "a" } else { "no" }
                    )));
                }
                let t: Vec<u32> = (0..n)
                    .flat_map(|i| loss_pos.iter().map(move |&j| (i, j)))
                    .map(|(i, j)| ys[i * width + j] as u32)
                    .collect();
                let k = loss_pos.len();
                (loss_pos, Array2::from_shape_vec((n, k), t).expect("n × loss positions"))
            };
            Ok(Examples::Tokens(TokenBatch {
                tokens,
                loss_pos,
                targets,
            }))
        }
        (Values::Real(xs), Values::Real(ys)) => {
            for (name, shape, v) in [(&xn, &x.shape, &xs), (&yn, &y.shape, &ys)] {
                if let Some((k, v)) = v.iter().enumerate().find(|(_, v)| !v.is_finite()) {
                    return Err(bad(format!("{name}{} = {v}: real data must be finite", index(shape, k))));
                }
            }
            let out = if y.shape.len() == 1 { 1 } else { y.shape[1] };
            if out == 0 {
                return Err(bad(format!("{yn} is empty (shape {:?})", y.shape)));
            }
            Ok(Examples::Vectors(DenseBatch {
                x: Array2::from_shape_vec((n, width), xs.iter().map(|&v| v as f32).collect())
                    .expect("shape checked"),
                y: Some(
                    Array2::from_shape_vec((n, out), ys.iter().map(|&v| v as f32).collect())
                        .expect("shape checked"),
                ),
            }))
        }
        (Values::Int(_), Values::Real(_)) => Err(bad(format!(
            "{xn} are tokens ({}) but {yn} real ({}): token inputs take integer classes",
            x.dtype, y.dtype
        ))),
        (Values::Real(_), Values::Int(_)) => Err(bad(format!(
            "{xn} are real ({}) but {yn} integers ({}): real inputs take real targets (regression); tokens must be an integer dtype",
            x.dtype, y.dtype
        ))),
    }
}
