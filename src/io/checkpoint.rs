//! Model checkpoints as safetensors with TransformerLens state-dict keys and shapes, so
//! `model.load_state_dict(safetensors.torch.load_file(path), strict=True)` works in TransformerLens.
//! The model config (and the task, when known) travel as JSON in the metadata.

use crate::error::{Error, Result};
use crate::models::transformer::Transformer;
use crate::models::Model;
use crate::tasks::TaskInfo;
use safetensors::tensor::Dtype;
use std::collections::HashMap;
use std::io::Write;
use std::path::Path;

/// Metadata key of the model config (JSON, `HookedTransformerConfig` fields).
pub const META_MODEL: &str = "toylens.model";
/// Metadata key of the task description (JSON), when known.
pub const META_TASK: &str = "toylens.task";
/// Metadata key of the model kind (`toy_mlp`, `superposition`, `linear`); absent for the transformer.
pub const META_ARCH: &str = "toylens.arch";
/// The experiment a run's checkpoint was trained in (its config as JSON), recorded once.
pub const META_EXPERIMENT: &str = "toylens.experiment";

/// A loaded checkpoint.
pub struct Checkpoint {
    pub model: Box<dyn Model>,
    pub task: Option<TaskInfo>,
    pub metadata: HashMap<String, String>,
}

/// Write `bytes` to `path` so that a crash at any moment leaves either the old file or the new one:
/// a temporary file in the same directory, flushed to disk, then renamed over the target.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .ok_or_else(|| Error::Input(format!("{}: not a file path", path.display())))?;
    let tmp = dir.join(format!(
        ".{}.tmp-{}",
        name.to_string_lossy(),
        std::process::id()
    ));
    let res = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        // Make the rename itself durable.
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
        Ok(())
    })();
    res.map_err(|e: std::io::Error| {
        let _ = std::fs::remove_file(&tmp);
        Error::io(path, e)
    })
}

/// One tensor to write: name, dtype (safetensors spelling), shape, little-endian bytes.
pub struct RawTensor {
    pub name: String,
    pub dtype: &'static str,
    pub shape: Vec<usize>,
    pub bytes: Vec<u8>,
}

/// The safetensors layout (8-byte header length, JSON header padded to 8 bytes, data), written with
/// sorted keys so that equal checkpoints are equal bytes (the `safetensors` crate takes its metadata
/// as a `HashMap`, whose order changes from process to process).
pub fn serialize(
    mut tensors: Vec<RawTensor>,
    metadata: &std::collections::BTreeMap<String, String>,
) -> Vec<u8> {
    tensors.sort_by(|a, b| a.name.cmp(&b.name));
    let mut header = serde_json::Map::new();
    if !metadata.is_empty() {
        header.insert(
            "__metadata__".into(),
            serde_json::to_value(metadata).expect("metadata"),
        );
    }
    let mut offset = 0usize;
    for t in &tensors {
        let end = offset + t.bytes.len();
        header.insert(
            t.name.clone(),
            serde_json::json!({"dtype": t.dtype, "shape": t.shape, "data_offsets": [offset, end]}),
        );
        offset = end;
    }
    // serde_json's Map is sorted (BTreeMap) without the preserve_order feature.
    let mut h = serde_json::to_vec(&serde_json::Value::Object(header)).expect("header");
    while h.len() % 8 != 0 {
        h.push(b' ');
    }
    let mut out = Vec::with_capacity(8 + h.len() + offset);
    out.extend_from_slice(&(h.len() as u64).to_le_bytes());
    out.extend_from_slice(&h);
    for t in &tensors {
        out.extend_from_slice(&t.bytes);
    }
    out
}

/// Atomic writes ([`write_atomic`]) on a thread of their own, in the order they were handed over:
/// training passes a checkpoint's bytes and goes on with its next step while the file is written
/// and synced (the syncs took ~7% of a 3000-step ToyMLP run's wall time). Files queue up to
/// [`BackgroundWrites::QUEUED_BYTES`] (and always one, whatever its size): log-spaced
/// checkpoints come every step early in a run, and a queue of two files made the step wait on
/// the previous file's sync. A failed write stops the thread; the error comes back from the next
/// [`BackgroundWrites::write`] or from [`BackgroundWrites::finish`], which waits for every write.
/// Dropping it waits too.
pub struct BackgroundWrites {
    to_worker: Option<std::sync::mpsc::Sender<(std::path::PathBuf, Vec<u8>)>>,
    worker: Option<std::thread::JoinHandle<Result<()>>>,
    queue: std::sync::Arc<WriteQueue>,
    max_queued_bytes: usize,
}

/// Bytes handed over and not yet on disk, with a signal each time a file lands.
#[derive(Default)]
struct WriteQueue {
    queued_bytes: std::sync::Mutex<usize>,
    landed: std::sync::Condvar,
}

impl BackgroundWrites {
    /// The most bytes waiting to be written before [`BackgroundWrites::write`] waits.
    pub const QUEUED_BYTES: usize = 256 << 20;

    pub fn new() -> Result<Self> {
        Self::with_queue_limit(Self::QUEUED_BYTES)
    }

    /// As [`BackgroundWrites::new`], with at most `max_queued_bytes` waiting (beyond one file).
    pub fn with_queue_limit(max_queued_bytes: usize) -> Result<Self> {
        let (tx, rx) = std::sync::mpsc::channel::<(std::path::PathBuf, Vec<u8>)>();
        let queue = std::sync::Arc::new(WriteQueue::default());
        let worker_queue = queue.clone();
        let worker = std::thread::Builder::new()
            .name("toylens-writes".into())
            .spawn(move || {
                for (path, bytes) in rx {
                    let written = write_atomic(&path, &bytes);
                    *worker_queue
                        .queued_bytes
                        .lock()
                        .unwrap_or_else(|e| e.into_inner()) -= bytes.len();
                    worker_queue.landed.notify_all();
                    written?;
                }
                Ok(())
            })
            .map_err(|e| Error::Input(format!("cannot start the checkpoint writer thread: {e}")))?;
        Ok(BackgroundWrites {
            to_worker: Some(tx),
            worker: Some(worker),
            queue,
            max_queued_bytes,
        })
    }

    /// Queue `bytes` for `path`, first waiting while the queue is full; an error is an earlier
    /// write's.
    pub fn write(&mut self, path: std::path::PathBuf, bytes: Vec<u8>) -> Result<()> {
        {
            let mut queued = self
                .queue
                .queued_bytes
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            while *queued > 0 && *queued + bytes.len() > self.max_queued_bytes {
                // A worker that stopped (on an error, or a panic) lands nothing more: the send
                // below then fails and reports why.
                if self.worker.as_ref().is_none_or(|w| w.is_finished()) {
                    break;
                }
                queued = self
                    .queue
                    .landed
                    .wait_timeout(queued, std::time::Duration::from_millis(100))
                    .unwrap_or_else(|e| e.into_inner())
                    .0;
            }
            *queued += bytes.len();
        }
        let sent = match &self.to_worker {
            Some(tx) => tx.send((path, bytes)).is_ok(),
            None => false,
        };
        if sent {
            Ok(())
        } else {
            // The worker stopped on an error (or `finish` ran): report what stopped it.
            self.finish()?;
            Err(Error::Input(
                "checkpoint writes were already finished".into(),
            ))
        }
    }

    /// Wait until every queued file is on disk; the first error, if a write failed.
    pub fn finish(&mut self) -> Result<()> {
        self.to_worker = None;
        match self.worker.take() {
            Some(w) => w.join().unwrap_or_else(|_| {
                Err(Error::Input("the checkpoint writer thread panicked".into()))
            }),
            None => Ok(()),
        }
    }
}

impl Drop for BackgroundWrites {
    fn drop(&mut self) {
        let _ = self.finish();
    }
}

/// Save `model` (and the task description, if any) atomically: its parameters under their names
/// and shapes, its buffers, and in the metadata its config (`toylens.model`), its kind
/// (`toylens.arch`; absent for the transformer, as TransformerLens-era files have it) and the task.
pub fn save(
    path: &Path,
    model: &dyn Model,
    task: Option<&TaskInfo>,
    extra: &HashMap<String, String>,
) -> Result<()> {
    write_atomic(path, &encode(model, task, extra))
}

/// The bytes [`save`] writes.
pub fn encode(
    model: &dyn Model,
    task: Option<&TaskInfo>,
    extra: &HashMap<String, String>,
) -> Vec<u8> {
    let mut meta: std::collections::BTreeMap<String, String> = extra.clone().into_iter().collect();
    meta.insert("format".into(), "pt".into());
    if model.arch() != "transformer" {
        meta.insert(META_ARCH.into(), model.arch().into());
    }
    meta.insert(META_MODEL.into(), model.config_json().to_string());
    if let Some(t) = task {
        meta.insert(
            META_TASK.into(),
            serde_json::to_string(t).expect("task json"),
        );
    }
    let params = model.params();
    let mut tensors: Vec<RawTensor> = model
        .tensors()
        .into_iter()
        .map(|t| RawTensor {
            bytes: params[t.range]
                .iter()
                .flat_map(|x| x.to_le_bytes())
                .collect(),
            name: t.name,
            dtype: "F32",
            shape: t.shape,
        })
        .collect();
    tensors.extend(model.buffers().into_iter().map(|b| RawTensor {
        name: b.name,
        dtype: b.dtype,
        shape: b.shape,
        bytes: b.bytes,
    }));
    serialize(tensors, &meta)
}

fn read(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| Error::io(path, e))
}

/// What a checkpoint's header says, read without its tensors.
#[derive(Clone, Debug)]
pub struct Header {
    /// The model kind (`transformer` when the file names none).
    pub arch: String,
    pub task: Option<TaskInfo>,
    pub metadata: HashMap<String, String>,
}

fn parse_task(path: &Path, metadata: &HashMap<String, String>) -> Result<Option<TaskInfo>> {
    metadata
        .get(META_TASK)
        .map(|t| {
            serde_json::from_str(t).map_err(|e| {
                Error::format(
                    path,
                    format!("metadata `{META_TASK}` is not a task description: {e}"),
                )
            })
        })
        .transpose()
}

/// The header of a safetensors checkpoint: its first 8 bytes give the header's length, and only
/// that much more is read.
pub fn peek(path: &Path) -> Result<Header> {
    use std::io::Read;
    let bad = |why: String| Error::format(path, format!("not a valid safetensors file ({why})"));
    let mut f = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut len = [0u8; 8];
    f.read_exact(&mut len)
        .map_err(|_| bad("shorter than its 8-byte header length".into()))?;
    let n = u64::from_le_bytes(len);
    let size = f.metadata().map_err(|e| Error::io(path, e))?.len();
    if n > size.saturating_sub(8) || n > 100 << 20 {
        return Err(bad(format!("a header of {n} bytes in a file of {size}")));
    }
    let mut h = vec![0u8; n as usize];
    f.read_exact(&mut h).map_err(|e| Error::io(path, e))?;
    let v: serde_json::Value =
        serde_json::from_slice(&h).map_err(|e| bad(format!("its header is not JSON: {e}")))?;
    let metadata: HashMap<String, String> = v
        .get("__metadata__")
        .and_then(|m| serde_json::from_value(m.clone()).ok())
        .unwrap_or_default();
    Ok(Header {
        arch: metadata
            .get(META_ARCH)
            .cloned()
            .unwrap_or_else(|| "transformer".into()),
        task: parse_task(path, &metadata)?,
        metadata,
    })
}

/// Load a toylens checkpoint of any model kind, checking every tensor's presence, dtype, shape and
/// finiteness against the recorded config.
pub fn load(path: &Path) -> Result<Checkpoint> {
    let bytes = read(path)?;
    let invalid = |e: safetensors::SafeTensorError| {
        Error::format(
            path,
            format!("not a valid safetensors file ({e}); truncated or not a checkpoint?"),
        )
    };
    let (_, header) = safetensors::SafeTensors::read_metadata(&bytes).map_err(invalid)?;
    let st = safetensors::SafeTensors::deserialize(&bytes).map_err(invalid)?;
    let metadata: HashMap<String, String> = header.metadata().clone().unwrap_or_default();
    let arch = metadata
        .get(META_ARCH)
        .map(String::as_str)
        .unwrap_or("transformer");
    let kind = crate::models::kind(arch).map_err(|e| Error::format(path, e.to_string()))?;
    let cfg_json = metadata.get(META_MODEL).ok_or_else(|| {
        Error::format(
            path,
            format!(
                "no model config in the metadata (key `{META_MODEL}`): not a toylens checkpoint"
            ),
        )
    })?;
    let cfg: serde_json::Value = serde_json::from_str(cfg_json)
        .map_err(|e| Error::format(path, format!("metadata `{META_MODEL}` is not JSON: {e}")))?;
    let mut model = (kind.zeros)(&cfg)
        .map_err(|e| Error::format(path, format!("metadata `{META_MODEL}`: {e}")))?;
    let task = parse_task(path, &metadata)?;
    let specs = model.tensors();
    let buffers: Vec<String> = model.buffers().into_iter().map(|b| b.name).collect();
    let params = model.params_mut();
    for s in &specs {
        let t = st
            .tensor(&s.name)
            .map_err(|_| Error::format(path, format!("missing tensor `{}`", s.name)))?;
        if t.dtype() != Dtype::F32 {
            return Err(Error::format(
                path,
                format!(
                    "tensor `{}` has dtype {:?}, expected F32",
                    s.name,
                    t.dtype()
                ),
            ));
        }
        if t.shape() != s.shape.as_slice() {
            return Err(Error::format(
                path,
                format!(
                    "tensor `{}` has shape {:?}, expected {:?} for this model config",
                    s.name,
                    t.shape(),
                    s.shape
                ),
            ));
        }
        for (dst, src) in params[s.range.clone()]
            .iter_mut()
            .zip(t.data().chunks_exact(4))
        {
            *dst = f32::from_le_bytes([src[0], src[1], src[2], src[3]]);
        }
    }
    for name in st.names() {
        if !buffers.iter().any(|b| b == name) && !specs.iter().any(|s| s.name == name) {
            return Err(Error::format(
                path,
                format!("unexpected tensor `{name}` for this model config"),
            ));
        }
    }
    if let Some(name) = model.non_finite_tensor() {
        return Err(Error::format(
            path,
            format!("tensor `{name}` holds NaN or infinite values"),
        ));
    }
    Ok(Checkpoint {
        model,
        task,
        metadata,
    })
}

/// Load a transformer checkpoint (an error naming the kind for any other model).
pub fn load_transformer(path: &Path) -> Result<Transformer> {
    let ck = load(path)?;
    let t = ck
        .model
        .downcast::<Transformer>("a transformer")
        .map_err(|e| Error::format(path, e.to_string()))?;
    Ok(t.clone())
}

/// Arrays by tensor name.
pub type Arrays = HashMap<String, ndarray::ArrayD<f32>>;

/// Any safetensors file as f32 arrays by name (F32, F64, I64, I32, BOOL converted), with its metadata;
/// used for golden files and inspection.
pub fn read_arrays(path: &Path) -> Result<(Arrays, HashMap<String, String>)> {
    let bytes = read(path)?;
    let (_, header) = safetensors::SafeTensors::read_metadata(&bytes)
        .map_err(|e| Error::format(path, format!("not a valid safetensors file ({e})")))?;
    let st = safetensors::SafeTensors::deserialize(&bytes)
        .map_err(|e| Error::format(path, format!("not a valid safetensors file ({e})")))?;
    let mut out = HashMap::new();
    for (name, t) in st.tensors() {
        let d = t.data();
        let v: Vec<f32> = match t.dtype() {
            Dtype::F32 => d
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
                .collect(),
            Dtype::F64 => d
                .chunks_exact(8)
                .map(|c| f64::from_le_bytes(c.try_into().unwrap()) as f32)
                .collect(),
            Dtype::I64 => d
                .chunks_exact(8)
                .map(|c| i64::from_le_bytes(c.try_into().unwrap()) as f32)
                .collect(),
            Dtype::I32 => d
                .chunks_exact(4)
                .map(|c| i32::from_le_bytes(c.try_into().unwrap()) as f32)
                .collect(),
            Dtype::BOOL | Dtype::U8 => d.iter().map(|&b| b as f32).collect(),
            other => {
                return Err(Error::format(
                    path,
                    format!("tensor `{name}` has unsupported dtype {other:?}"),
                ))
            }
        };
        let a = ndarray::ArrayD::from_shape_vec(t.shape().to_vec(), v)
            .map_err(|e| Error::format(path, format!("tensor `{name}`: {e}")))?;
        out.insert(name, a);
    }
    Ok((out, header.metadata().clone().unwrap_or_default()))
}

/// A safetensors file's metadata (without reading its tensors).
pub fn metadata(path: &Path) -> Result<HashMap<String, String>> {
    let bytes = read(path)?;
    let (_, header) = safetensors::SafeTensors::read_metadata(&bytes)
        .map_err(|e| Error::format(path, format!("not a valid safetensors file ({e})")))?;
    Ok(header.metadata().clone().unwrap_or_default())
}

/// Write a pruning mask: every tensor of `model` as 0/1 (F32) in its shape.
pub fn save_mask(path: &Path, model: &dyn Model, mask: &crate::models::mask::Mask) -> Result<()> {
    let tensors = mask
        .to_arrays(model)
        .into_iter()
        .map(|(name, shape, v)| RawTensor {
            name,
            dtype: "F32",
            shape,
            bytes: v.iter().flat_map(|x| x.to_le_bytes()).collect(),
        })
        .collect();
    let mut meta = std::collections::BTreeMap::new();
    meta.insert("toylens.mask_of".to_string(), model.arch().to_string());
    write_atomic(path, &serialize(tensors, &meta))
}

/// A pruning mask for `model` from a safetensors file of 0/1 tensors by parameter name, and the
/// file's CRC-32C (what checkpoints record).
pub fn load_mask(path: &Path, model: &dyn Model) -> Result<(crate::models::mask::Mask, String)> {
    let bytes = read(path)?;
    let (arrays, _) = read_arrays(path)?;
    let mask = crate::models::mask::Mask::from_arrays(model, &arrays)
        .map_err(|e| Error::format(path, e.to_string()))?;
    Ok((mask, format!("{:08x}", crc32c::crc32c(&bytes))))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn background_writes_land_in_order_and_report_a_failed_one() {
        let tmp = tempfile::tempdir().unwrap();
        let mut w = BackgroundWrites::new().unwrap();
        let a = tmp.path().join("a.bin");
        // The same file twice: the later bytes win, as they would written in place.
        w.write(a.clone(), vec![1; 1000]).unwrap();
        w.write(a.clone(), vec![2; 10]).unwrap();
        w.write(tmp.path().join("b.bin"), vec![3; 5]).unwrap();
        w.finish().unwrap();
        assert_eq!(std::fs::read(&a).unwrap(), vec![2; 10]);
        assert_eq!(std::fs::read(tmp.path().join("b.bin")).unwrap(), vec![3; 5]);

        // With room for less than one file, each write waits for the one before it; all land.
        let mut w = BackgroundWrites::with_queue_limit(10).unwrap();
        for i in 0..20u8 {
            w.write(tmp.path().join(format!("q{}.bin", i % 3)), vec![i; 1000])
                .unwrap();
        }
        w.finish().unwrap();
        for (name, last) in [("q0.bin", 18u8), ("q1.bin", 19), ("q2.bin", 17)] {
            assert_eq!(
                std::fs::read(tmp.path().join(name)).unwrap(),
                vec![last; 1000]
            );
        }

        // A write into a missing directory fails on the worker; the error names the file and
        // comes back from a later call.
        let mut w = BackgroundWrites::new().unwrap();
        let bad = tmp.path().join("missing").join("c.bin");
        w.write(bad, vec![4; 5]).unwrap();
        let mut err = None;
        for _ in 0..100 {
            if let Err(e) = w.write(tmp.path().join("d.bin"), vec![5; 5]) {
                err = Some(e);
                break;
            }
        }
        let e = err.unwrap_or_else(|| w.finish().unwrap_err()).to_string();
        assert!(e.contains("c.bin"), "{e}");
        // The writes that succeeded left no temporary file behind.
        let names: Vec<_> = std::fs::read_dir(tmp.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert!(names.iter().all(|n| !n.contains(".tmp-")), "{names:?}");
    }
}
