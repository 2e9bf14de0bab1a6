"""Generate the TransformerLens golden files that `cargo test` (tests/parity.rs) compares against.

Needs torch and transformer-lens==3.9.0 (see bench/README.md for the install), and a built
`toylens` binary for the second part. Run from the repository root:

    python tests/golden/generate.py --toylens target/release/toylens

1. For a few small configs: a TransformerLens HookedTransformer with random weights (biases and LN
   parameters randomised too, so every path carries signal), a random token batch, its logits and
   every activation `run_with_cache` returns -> tests/golden/tl_<name>.safetensors.
2. A checkpoint written by toylens (the original grokked model, converted) loads into TransformerLens
   with strict=True; its logits on a batch -> tests/golden/tl_loads_toylens.safetensors. The Rust test
   rebuilds the same checkpoint and compares its own logits with these.
"""

import argparse
import json
import pathlib
import subprocess
import tempfile

import torch
from safetensors.torch import load_file, save_file
from transformer_lens import HookedTransformer, HookedTransformerConfig

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parent.parent
FIXTURE = ROOT.parent / "shared" / "fixtures" / "progress-measures" / "wd_10-1_mod_addition_loss_curve.pth"

# toylens config fields that TransformerLens does not have.
TOYLENS_ONLY = {"init", "attn_bias", "unembed_bias"}

CONFIGS = {
    "ln_gelu_2l": dict(n_layers=2, d_model=16, n_heads=2, d_head=8, d_mlp=40, d_vocab=13, d_vocab_out=11,
                       n_ctx=7, act_fn="gelu", normalization_type="LN", seed=1),
    "nanda_small": dict(n_layers=1, d_model=32, n_heads=4, d_head=8, d_mlp=64, d_vocab=18, d_vocab_out=18,
                        n_ctx=3, act_fn="relu", normalization_type=None, seed=2),
    "attn_only_3l": dict(n_layers=3, d_model=24, n_heads=3, d_head=6, d_mlp=None, d_vocab=10, n_ctx=6,
                         act_fn=None, normalization_type="LN", attn_only=True, seed=3),
    "gelu_new_ln": dict(n_layers=1, d_model=20, n_heads=5, d_head=4, d_mlp=24, d_vocab=9, n_ctx=5,
                        act_fn="gelu_new", normalization_type="LN", seed=4),
}


def tl_config(d):
    return HookedTransformerConfig(**{k: v for k, v in d.items() if k not in TOYLENS_ONLY})


def toylens_config(d):
    c = dict(attn_only=False, d_vocab_out=-1, d_mlp=None, act_fn=None, normalization_type=None)
    c.update(d)
    c.update(init="transformer_lens", attn_bias=True, unembed_bias=True, eps=1e-5, initializer_range=-1.0)
    return c


def golden_model(name, d):
    torch.manual_seed(d["seed"])
    model = HookedTransformer(tl_config(d))
    with torch.no_grad():
        for k, p in model.named_parameters():
            if ".b_" in k or k.endswith(".b") or k.endswith(".w"):
                p.add_(0.3 * torch.randn_like(p))
    gen = torch.Generator().manual_seed(100 + d["seed"])
    tokens = torch.randint(0, d["d_vocab"], (3, d["n_ctx"]), generator=gen)
    logits, cache = model.run_with_cache(tokens)
    out = {f"param.{k}": v.detach().contiguous() for k, v in model.state_dict().items()
           if not (k.endswith("attn.mask") or k.endswith("attn.IGNORE"))}
    out["tokens"] = tokens.to(torch.int64)
    out["logits"] = logits.detach().clone().contiguous()
    for k, v in cache.items():
        out[f"cache.{k}"] = v.detach().clone().contiguous()
    meta = {"toylens.model": json.dumps(toylens_config(d)), "generator": "transformer-lens 3.9.0"}
    path = HERE / f"tl_{name}.safetensors"
    save_file(out, str(path), metadata=meta)
    print(f"wrote {path.relative_to(ROOT)}: {len(cache)} cached activations")


def golden_loads_toylens(toylens):
    with tempfile.TemporaryDirectory() as tmp:
        ck = pathlib.Path(tmp) / "grokked.safetensors"
        subprocess.run([toylens, "convert", str(FIXTURE), str(ck)], check=True)
        sd = load_file(str(ck))
        from safetensors import safe_open
        with safe_open(str(ck), "pt") as f:
            meta = f.metadata()
        cfg = json.loads(meta["toylens.model"])
        model = HookedTransformer(tl_config(cfg))
        result = model.load_state_dict(sd, strict=True)
        print("TransformerLens load_state_dict(strict=True):", result)
    p = cfg["d_vocab"] - 1
    gen = torch.Generator().manual_seed(7)
    ab = torch.randint(0, p, (64, 2), generator=gen)
    tokens = torch.cat([ab, torch.full((64, 1), p)], dim=1)
    logits = model(tokens).detach()
    acc = (logits[:, -1, :p].argmax(-1) == (ab[:, 0] + ab[:, 1]) % p).float().mean().item()
    print(f"TransformerLens on the toylens checkpoint: accuracy {acc:.3f} on 64 random pairs")
    assert acc == 1.0, "the converted grokked model should be right on every pair"
    path = HERE / "tl_loads_toylens.safetensors"
    save_file({"tokens": tokens.to(torch.int64), "logits": logits.contiguous()}, str(path),
              metadata={"generator": "transformer-lens 3.9.0", "source": FIXTURE.name})
    print(f"wrote {path.relative_to(ROOT)}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--toylens", default=str(ROOT / "target" / "release" / "toylens"))
    args = ap.parse_args()
    torch.set_grad_enabled(False)
    for name, d in CONFIGS.items():
        golden_model(name, d)
    golden_loads_toylens(args.toylens)


if __name__ == "__main__":
    main()
