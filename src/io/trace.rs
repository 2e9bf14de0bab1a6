//! The optimizer trace of a run, `trace.npy`: one record per traced step, per tensor its gradient
//! norm, update norm, weight norm, ε share and largest update-to-weight ratio, beside the step's
//! loss and learning rate. A NumPy structured array (`np.load` reads it; `trace.json` names the
//! tensors), appended to as training goes: the header's record count is rewritten in place at each
//! flush, and a resumed run keeps the records up to its checkpoint, so a killed and resumed run
//! ends with the same bytes as an uninterrupted one.

use crate::engine::adamw::UpdateStats;
use crate::error::{Error, Result};
use crate::io::checkpoint::write_atomic;
use serde::{Deserialize, Serialize};
use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

pub const TRACE_NPY: &str = "trace.npy";
pub const TRACE_JSON: &str = "trace.json";

/// The per-tensor fields of a record, in file order, with what each holds.
pub const FIELDS: [(&str, &str); 5] = [
    ("grad_norm", "‖g‖ of the gradient the update took"),
    (
        "update_norm",
        "‖Δw‖ of the change the update made (weight decay included)",
    ),
    ("weight_norm", "‖w‖ after the update"),
    (
        "eps_share",
        "share of trainable entries whose bias-corrected √v̂ is below Adam's ε (and not 0: never a gradient)",
    ),
    (
        "max_update_ratio",
        "largest |Δw|/|w| over entries nonzero before the update",
    ),
];

/// `trace.json`: what the records hold.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TraceInfo {
    pub format: u32,
    /// Tensor names, in the order of each per-tensor field's entries.
    pub tensors: Vec<String>,
    /// Steps between records (`train.trace_every`).
    pub every: u64,
    /// Each field's meaning.
    pub fields: std::collections::BTreeMap<String, String>,
}

impl TraceInfo {
    pub fn new(tensors: Vec<String>, every: u64) -> Self {
        let mut fields: std::collections::BTreeMap<String, String> = FIELDS
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        fields.insert("step".into(), "the update's step (counting from 1)".into());
        fields.insert(
            "loss".into(),
            "the loss of the step's training batch".into(),
        );
        fields.insert("lr".into(), "the learning rate of the step".into());
        TraceInfo {
            format: 1,
            tensors,
            every,
            fields,
        }
    }

    fn record_bytes(&self) -> usize {
        8 * 3 + 4 * FIELDS.len() * self.tensors.len()
    }
}

/// One traced step.
#[derive(Clone, Debug, PartialEq)]
pub struct TraceRecord<'a> {
    pub step: u64,
    pub loss: f64,
    pub lr: f64,
    pub tensors: &'a [UpdateStats],
}

impl TraceRecord<'_> {
    fn encode(&self, out: &mut Vec<u8>) {
        out.extend(self.step.to_le_bytes());
        out.extend(self.loss.to_le_bytes());
        out.extend(self.lr.to_le_bytes());
        let per: [fn(&UpdateStats) -> f32; 5] = [
            |s| s.grad_sq.sqrt() as f32,
            |s| s.update_sq.sqrt() as f32,
            |s| s.weight_sq.sqrt() as f32,
            |s| {
                if s.entries == 0 {
                    0.0
                } else {
                    (s.below_eps as f64 / s.entries as f64) as f32
                }
            },
            |s| s.max_ratio,
        ];
        for f in per {
            for s in self.tensors {
                out.extend(f(s).to_le_bytes());
            }
        }
    }
}

/// The npy header for `n` records, padded to `len` bytes when given (else to the width that any
/// record count fits in later).
fn npy_header(info: &TraceInfo, n: u64, len: Option<usize>) -> Vec<u8> {
    let t = info.tensors.len();
    let mut descr = String::from("[('step', '<u8'), ('loss', '<f8'), ('lr', '<f8')");
    for (f, _) in FIELDS {
        descr += &format!(", ('{f}', '<f4', ({t},))");
    }
    descr.push(']');
    let dict = format!("{{'descr': {descr}, 'fortran_order': False, 'shape': ({n},), }}");
    // Magic (6), version (2), header length (2), the dict, spaces, '\n': a multiple of 64 in all,
    // with room for a record count of 20 digits.
    let total = len.unwrap_or_else(|| (10 + dict.len() + 21 + 1).div_ceil(64) * 64);
    let mut h = b"\x93NUMPY\x01\x00".to_vec();
    h.extend(((total - 10) as u16).to_le_bytes());
    h.extend(dict.as_bytes());
    h.resize(total - 1, b' ');
    h.push(b'\n');
    h
}

/// Appends records to a run's trace.
pub struct TraceWriter {
    file: std::fs::File,
    path: PathBuf,
    info: TraceInfo,
    header_len: usize,
    records: u64,
    pending: Vec<u8>,
}

impl TraceWriter {
    /// The trace of `dir` holding the records of steps up to `keep_until` that it holds already
    /// (none for a new run), written atomically, then open to append.
    pub fn create(dir: &Path, info: TraceInfo, keep_until: u64) -> Result<Self> {
        let path = dir.join(TRACE_NPY);
        let header = npy_header(&info, 0, None);
        let header_len = header.len();
        let rec = info.record_bytes();
        let mut kept = Vec::new();
        if keep_until > 0 {
            if let Some(old) = read_info(dir)?.filter(|o| o.tensors == info.tensors) {
                let bytes = std::fs::read(&path).map_err(|e| Error::io(&path, e))?;
                let start = header_len_of(&bytes, &old).ok_or_else(|| not_a_trace(&path))?;
                for r in bytes[start..].chunks_exact(old.record_bytes()) {
                    let step = u64::from_le_bytes(r[..8].try_into().expect("8 bytes"));
                    if step > keep_until {
                        break;
                    }
                    kept.extend_from_slice(r);
                }
            }
        }
        let records = (kept.len() / rec) as u64;
        let mut bytes = npy_header(&info, records, Some(header_len));
        bytes.extend(kept);
        write_atomic(&path, &bytes)?;
        write_atomic(
            &dir.join(TRACE_JSON),
            serde_json::to_string_pretty(&info)
                .expect("trace json")
                .as_bytes(),
        )?;
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .map_err(|e| Error::io(&path, e))?;
        file.seek(SeekFrom::End(0))
            .map_err(|e| Error::io(&path, e))?;
        Ok(TraceWriter {
            file,
            path,
            info,
            header_len,
            records,
            pending: Vec::new(),
        })
    }

    pub fn push(&mut self, r: &TraceRecord) {
        debug_assert_eq!(r.tensors.len(), self.info.tensors.len());
        r.encode(&mut self.pending);
        self.records += 1;
    }

    /// Write the pending records and the header's new count.
    pub fn flush(&mut self) -> Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let header = npy_header(&self.info, self.records, Some(self.header_len));
        let io = |e| Error::io(&self.path, e);
        self.file.write_all(&self.pending).map_err(io)?;
        self.pending.clear();
        self.file.seek(SeekFrom::Start(0)).map_err(io)?;
        self.file.write_all(&header).map_err(io)?;
        self.file.seek(SeekFrom::End(0)).map_err(io)?;
        Ok(())
    }
}

/// The length of an npy file's header (magic to the end of its dict).
/// Where the records of a trace file described by `info` start: None unless it is an npy v1 file
/// whole to the end of its header and its records' layout (the `descr`) is `info`'s.
fn header_len_of(bytes: &[u8], info: &TraceInfo) -> Option<usize> {
    if bytes.len() < 10 || &bytes[..6] != b"\x93NUMPY" || bytes[6] != 1 {
        return None;
    }
    let len = 10 + u16::from_le_bytes([bytes[8], bytes[9]]) as usize;
    let expected = npy_header(info, 0, Some(len));
    let descr_end = expected.windows(9).position(|w| w == b"'fortran_")?;
    (bytes.len() >= len && bytes[..descr_end] == expected[..descr_end]).then_some(len)
}

/// The record count of an npy header (its shape's one dimension).
fn record_count(header: &[u8]) -> Option<usize> {
    let key = b"'shape': (";
    let at = header.windows(key.len()).position(|w| w == key)? + key.len();
    let digits = header[at..]
        .iter()
        .take_while(|b| b.is_ascii_digit())
        .count();
    std::str::from_utf8(&header[at..at + digits])
        .ok()?
        .parse()
        .ok()
}

/// The error for a trace file that [`header_len_of`] does not take.
fn not_a_trace(path: &Path) -> Error {
    Error::format(
        path,
        format!("not a trace file with the record layout {TRACE_JSON} describes"),
    )
}

fn read_info(dir: &Path) -> Result<Option<TraceInfo>> {
    let p = dir.join(TRACE_JSON);
    match std::fs::read_to_string(&p) {
        Ok(s) => serde_json::from_str(&s)
            .map(Some)
            .map_err(|e| Error::format(&p, e.to_string())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::io(&p, e)),
    }
}

/// A run's trace, read back.
#[derive(Clone, Debug)]
pub struct Trace {
    pub info: TraceInfo,
    pub steps: Vec<u64>,
    pub loss: Vec<f64>,
    pub lr: Vec<f64>,
    /// Per field of [`FIELDS`], `[records][tensors]`.
    pub fields: Vec<ndarray::Array2<f32>>,
}

impl Trace {
    /// A per-tensor field by name (`grad_norm`, ...).
    pub fn field(&self, name: &str) -> Option<&ndarray::Array2<f32>> {
        FIELDS
            .iter()
            .position(|(f, _)| *f == name)
            .map(|i| &self.fields[i])
    }
}

/// The trace of run `dir` (None where it has none: traced with `train.trace_every: 0`, or trained
/// before traces). The records its header counts, as `np.load` reads them.
pub fn read(dir: &Path) -> Result<Option<Trace>> {
    let Some(info) = read_info(dir)? else {
        return Ok(None);
    };
    let path = dir.join(TRACE_NPY);
    let bytes = std::fs::read(&path).map_err(|e| Error::io(&path, e))?;
    let start = header_len_of(&bytes, &info).ok_or_else(|| not_a_trace(&path))?;
    let t = info.tensors.len();
    let rec = info.record_bytes();
    // The records the header counts, as np.load reads them (a kill between a flush's records and
    // its header leaves whole records past the count; the resume rewrites them).
    let counted = record_count(&bytes[..start]).ok_or_else(|| not_a_trace(&path))?;
    let n = ((bytes.len() - start) / rec).min(counted);
    let f64_at = |r: &[u8], o: usize| f64::from_le_bytes(r[o..o + 8].try_into().expect("8"));
    let mut out = Trace {
        steps: Vec::with_capacity(n),
        loss: Vec::with_capacity(n),
        lr: Vec::with_capacity(n),
        fields: vec![ndarray::Array2::zeros((n, t)); FIELDS.len()],
        info,
    };
    for (i, r) in bytes[start..].chunks_exact(rec).take(n).enumerate() {
        out.steps
            .push(u64::from_le_bytes(r[..8].try_into().expect("8")));
        out.loss.push(f64_at(r, 8));
        out.lr.push(f64_at(r, 16));
        for (f, a) in out.fields.iter_mut().enumerate() {
            for k in 0..t {
                let o = 24 + 4 * (f * t + k);
                a[[i, k]] = f32::from_le_bytes(r[o..o + 4].try_into().expect("4"));
            }
        }
    }
    Ok(Some(out))
}
