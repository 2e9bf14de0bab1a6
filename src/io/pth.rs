//! PyTorch `.pth` files (`torch.save`'s zip format: `*/data.pkl` plus raw little-endian storages under
//! `*/data/`), read without Python, and the importer for the original grokking code's checkpoints
//! (progress-measures-paper), whose layout differs from TransformerLens'.

use super::pickle::{self, StorageDtype, TensorRef, Value};
use crate::error::{Error, Result};
use crate::models::transformer::{InitScheme, Transformer, TransformerConfig};
use crate::tasks::modular::{ModularTask, Op, Split};
use crate::tasks::TaskInfo;
use ndarray::{ArrayD, Ix2, Ix3, IxDyn};
use std::io::Read;
use std::path::{Path, PathBuf};

/// An opened `.pth` file: its unpickled object tree and access to tensor data.
pub struct PthFile {
    path: PathBuf,
    archive: zip::ZipArchive<std::io::Cursor<Vec<u8>>>,
    prefix: String,
    pub root: Value,
}

impl PthFile {
    pub fn open(path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        let mut archive = zip::ZipArchive::new(std::io::Cursor::new(bytes)).map_err(|e| {
            Error::format(path, format!("not a PyTorch zip checkpoint ({e}); truncated, or saved with the legacy format?"))
        })?;
        let pkl = archive
            .file_names()
            .filter_map(|n| n.ok().map(|n| n.into_owned()))
            .find(|n| n.ends_with("data.pkl") && n.matches('/').count() == 1)
            .ok_or_else(|| {
                Error::format(path, "no `data.pkl` in the archive: not a torch.save file")
            })?;
        let prefix = pkl.trim_end_matches("data.pkl").to_string();
        if let Ok(mut f) = archive.by_name(&format!("{prefix}byteorder")) {
            let mut s = String::new();
            let _ = f.read_to_string(&mut s);
            if s.trim() != "little" {
                return Err(Error::format(
                    path,
                    format!(
                        "storages are `{}`-endian; only little-endian is supported",
                        s.trim()
                    ),
                ));
            }
        }
        let mut data = Vec::new();
        archive
            .by_name(&pkl)
            .and_then(|mut f| f.read_to_end(&mut data).map_err(Into::into))
            .map_err(|e| Error::format(path, format!("cannot read `{pkl}`: {e}")))?;
        let root =
            pickle::parse(&data).map_err(|e| Error::format(path, format!("`{pkl}`: {e}")))?;
        Ok(PthFile {
            path: path.to_path_buf(),
            archive,
            prefix,
            root,
        })
    }

    /// The tensor's data as f32 (converted from its storage type), with its shape.
    pub fn tensor(&mut self, t: &TensorRef, what: &str) -> Result<ArrayD<f32>> {
        let name = format!("{}data/{}", self.prefix, t.key);
        let mut raw = Vec::new();
        self.archive
            .by_name(&name)
            .and_then(|mut f| f.read_to_end(&mut raw).map_err(Into::into))
            .map_err(|e| {
                Error::format(
                    &self.path,
                    format!("tensor `{what}`: cannot read storage `{name}`: {e}"),
                )
            })?;
        let es = t.dtype.size();
        let numel: usize = t.shape.iter().product();
        let extent = if numel == 0 {
            0
        } else {
            t.offset
                + t.shape
                    .iter()
                    .zip(&t.stride)
                    .map(|(n, s)| (n - 1) * s)
                    .sum::<usize>()
                + 1
        };
        if extent * es > raw.len() {
            return Err(Error::format(
                &self.path,
                format!(
                    "tensor `{what}` needs {} bytes of storage `{}` but it has {}: truncated file?",
                    extent * es,
                    t.key,
                    raw.len()
                ),
            ));
        }
        let get = |i: usize| -> f32 {
            let b = &raw[i * es..(i + 1) * es];
            match t.dtype {
                StorageDtype::F32 => f32::from_le_bytes(b.try_into().unwrap()),
                StorageDtype::F64 => f64::from_le_bytes(b.try_into().unwrap()) as f32,
                StorageDtype::F16 => f16_to_f32(u16::from_le_bytes(b.try_into().unwrap())),
                StorageDtype::BF16 => {
                    f32::from_bits(u32::from(u16::from_le_bytes(b.try_into().unwrap())) << 16)
                }
                StorageDtype::I64 => i64::from_le_bytes(b.try_into().unwrap()) as f32,
                StorageDtype::I32 => i32::from_le_bytes(b.try_into().unwrap()) as f32,
                StorageDtype::I16 => i16::from_le_bytes(b.try_into().unwrap()) as f32,
                StorageDtype::I8 => b[0] as i8 as f32,
                StorageDtype::U8 | StorageDtype::Bool => b[0] as f32,
            }
        };
        // Walk the indices in row-major order, reading through the strides.
        let nd = t.shape.len();
        let mut idx = vec![0usize; nd];
        let mut data = Vec::with_capacity(numel);
        for _ in 0..numel {
            data.push(get(
                t.offset + idx.iter().zip(&t.stride).map(|(i, s)| i * s).sum::<usize>()
            ));
            for ax in (0..nd).rev() {
                idx[ax] += 1;
                if idx[ax] < t.shape[ax] {
                    break;
                }
                idx[ax] = 0;
            }
        }
        Ok(ArrayD::from_shape_vec(IxDyn(&t.shape), data).expect("shape"))
    }
}

fn f16_to_f32(h: u16) -> f32 {
    let sign = u32::from(h >> 15) << 31;
    let exp = (h >> 10) & 0x1f;
    let man = u32::from(h & 0x3ff);
    let bits = match exp {
        0 if man == 0 => sign,
        0 => {
            // subnormal
            let mut e = -14i32;
            let mut m = man;
            while m & 0x400 == 0 {
                m <<= 1;
                e -= 1;
            }
            sign | (((e + 127) as u32) << 23) | ((m & 0x3ff) << 13)
        }
        0x1f => sign | 0x7f80_0000 | (man << 13),
        _ => sign | ((u32::from(exp) + 112) << 23) | (man << 13),
    };
    f32::from_bits(bits)
}

/// A model imported from the original grokking code, with what is known of its task.
pub struct ImportedGrokking {
    pub model: Transformer,
    pub task: TaskInfo,
    /// `train_loss` / `test_loss` as the original run recorded them, when present.
    pub recorded_train_loss: Option<f64>,
    pub recorded_test_loss: Option<f64>,
}

/// Import a checkpoint of the original grokking code (layout in the fixtures' README): transposes
/// into TransformerLens shapes, no biases on attention or unembedding, p+1 outputs as the original.
pub fn import_grokking(path: &Path) -> Result<ImportedGrokking> {
    let mut f = PthFile::open(path)?;
    let root = f.root.clone();
    let sd = match root.get("model") {
        Some(m) => m.clone(),
        None if root.get("embed.W_E").is_some() => root.clone(),
        None => {
            return Err(Error::format(
                path,
                "no `model` state dict (and no `embed.W_E` at the top level)",
            ))
        }
    };
    let mut tensors = std::collections::BTreeMap::new();
    for (k, v) in sd.entries() {
        match v {
            Value::Tensor(t) => {
                tensors.insert(k.to_string(), (t.clone(), f.tensor(t, k)?));
            }
            _ => {
                return Err(Error::format(
                    path,
                    format!("state dict entry `{k}` is not a tensor"),
                ))
            }
        }
    }
    let mut take = |k: &str, ndim: usize| -> Result<ArrayD<f32>> {
        let (_, a) = tensors
            .remove(k)
            .ok_or_else(|| Error::format(path, format!("missing tensor `{k}`")))?;
        if a.ndim() != ndim {
            return Err(Error::format(
                path,
                format!(
                    "tensor `{k}` has shape {:?}, expected {ndim} dimensions",
                    a.shape()
                ),
            ));
        }
        Ok(a)
    };
    let w_e = take("embed.W_E", 2)?; // [d_model, d_vocab]
    let w_pos = take("pos_embed.W_pos", 2)?; // [n_ctx, d_model]
    let w_u = take("unembed.W_U", 2)?; // [d_model, d_vocab_out]
    let (d_model, d_vocab) = (w_e.shape()[0], w_e.shape()[1]);
    let n_ctx = w_pos.shape()[0];
    let mut n_layers = 0;
    while sd.get(&format!("blocks.{n_layers}.attn.W_Q")).is_some() {
        n_layers += 1;
    }
    if n_layers == 0 {
        return Err(Error::format(path, "missing tensor `blocks.0.attn.W_Q`"));
    }
    let mut blocks = Vec::new();
    for l in 0..n_layers {
        let p = format!("blocks.{l}");
        let wq = take(&format!("{p}.attn.W_Q"), 3)?; // [H, dh, d]
        let wk = take(&format!("{p}.attn.W_K"), 3)?;
        let wv = take(&format!("{p}.attn.W_V"), 3)?;
        let wo = take(&format!("{p}.attn.W_O"), 2)?; // [d, H·dh]
        let w_in = take(&format!("{p}.mlp.W_in"), 2)?; // [d_mlp, d]
        let b_in = take(&format!("{p}.mlp.b_in"), 1)?;
        let w_out = take(&format!("{p}.mlp.W_out"), 2)?; // [d, d_mlp]
        let b_out = take(&format!("{p}.mlp.b_out"), 1)?;
        let _ = take(&format!("{p}.attn.mask"), 2); // a buffer; recomputed
        blocks.push((wq, wk, wv, wo, w_in, b_in, w_out, b_out));
    }
    if let Some(k) = tensors.keys().next() {
        return Err(Error::format(
            path,
            format!("unexpected tensor `{k}` (not in the original grokking model)"),
        ));
    }
    let (n_heads, d_head) = (blocks[0].0.shape()[0], blocks[0].0.shape()[1]);
    let d_mlp = blocks[0].4.shape()[0];
    let cfg = TransformerConfig {
        n_layers,
        d_model,
        n_heads,
        d_head,
        d_mlp: Some(d_mlp),
        d_vocab,
        d_vocab_out: w_u.shape()[1] as i64,
        n_ctx,
        init: InitScheme::Nanda,
        ..TransformerConfig::nanda(d_vocab - 1)
    };
    let mut model = Transformer::new(cfg)?;
    let shape_err = |k: &str, got: &[usize], want: &[usize]| {
        Error::format(
            path,
            format!("tensor `{k}` has shape {got:?}, expected {want:?} for this model"),
        )
    };
    let mut set = |name: &str, a: ArrayD<f32>| -> Result<()> {
        let spec = model.layout.find(name).expect("layout name").clone();
        if a.shape() != spec.shape.as_slice() {
            return Err(shape_err(name, a.shape(), &spec.shape));
        }
        let a = a.as_standard_layout();
        model.params[spec.range()].copy_from_slice(a.as_slice().expect("contiguous"));
        Ok(())
    };
    let t2 = |a: ArrayD<f32>| -> ArrayD<f32> {
        a.into_dimensionality::<Ix2>()
            .unwrap()
            .reversed_axes()
            .into_dyn()
    };
    let t3 = |a: ArrayD<f32>| -> ArrayD<f32> {
        let mut a = a.into_dimensionality::<Ix3>().unwrap();
        a.swap_axes(1, 2);
        a.into_dyn()
    };
    set("embed.W_E", t2(w_e))?;
    set("pos_embed.W_pos", w_pos)?;
    for (l, (wq, wk, wv, wo, w_in, b_in, w_out, b_out)) in blocks.into_iter().enumerate() {
        let p = format!("blocks.{l}");
        set(&format!("{p}.attn.W_Q"), t3(wq))?;
        set(&format!("{p}.attn.W_K"), t3(wk))?;
        set(&format!("{p}.attn.W_V"), t3(wv))?;
        // W_O[d, h·dh + j] → [h, j, d]
        let wo_t = t2(wo);
        if wo_t.shape() != [n_heads * d_head, d_model] {
            return Err(shape_err(
                &format!("{p}.attn.W_O"),
                wo_t.shape(),
                &[d_model, n_heads * d_head],
            ));
        }
        let wo_t = wo_t.as_standard_layout().into_owned();
        set(
            &format!("{p}.attn.W_O"),
            wo_t.into_shape_with_order(IxDyn(&[n_heads, d_head, d_model]))
                .unwrap(),
        )?;
        set(&format!("{p}.mlp.W_in"), t2(w_in))?;
        set(&format!("{p}.mlp.b_in"), b_in)?;
        set(&format!("{p}.mlp.W_out"), t2(w_out))?;
        set(&format!("{p}.mlp.b_out"), b_out)?;
    }
    set("unembed.W_U", w_u)?;

    let p = d_vocab - 1;
    let cfg = root.get("config");
    let op = match cfg.and_then(|c| c.get("fn_name")).and_then(Value::as_str) {
        None | Some("add") => Op::Add,
        Some("subtract") => Op::Sub,
        Some(other) => {
            return Err(Error::format(
                path,
                format!("config fn_name `{other}` is not supported (add, subtract)"),
            ))
        }
    };
    if let Some(cp) = cfg.and_then(|c| c.get("p")).and_then(Value::as_i64) {
        if cp as usize != p {
            return Err(Error::format(
                path,
                format!("config p = {cp} but the embedding has {d_vocab} tokens (p + 1 expected)"),
            ));
        }
    }
    let frac = cfg
        .and_then(|c| c.get("frac_train"))
        .and_then(Value::as_f64);
    let seed = cfg.and_then(|c| c.get("seed")).and_then(Value::as_i64);
    let task = match (frac, seed) {
        (Some(frac_train), Some(seed)) => TaskInfo::from_modular(&ModularTask {
            p,
            op,
            frac_train,
            seed: seed as u64,
            split: Split::Reference,
        }),
        _ => TaskInfo::Modular {
            p,
            op,
            frac_train: None,
            seed: None,
            split: None,
        },
    };
    let mut scalar = |k: &str| -> Result<Option<f64>> {
        Ok(match root.get(k) {
            Some(Value::Tensor(t)) if t.shape.iter().product::<usize>() == 1 => {
                f.tensor(t, k)?.iter().next().map(|&x| x as f64)
            }
            Some(v) => v.as_f64(),
            None => None,
        })
    };
    Ok(ImportedGrokking {
        recorded_train_loss: scalar("train_loss")?,
        recorded_test_loss: scalar("test_loss")?,
        model,
        task,
    })
}
