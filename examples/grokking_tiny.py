# %% [markdown]
# # toylens from Python: train, look inside, ablate, compare with TransformerLens
#
# A notebook as a script (cells marked `# %%`; VS Code and Jupytext open it as a notebook).
# Needs `pip install ./python matplotlib`, and transformer-lens for the last cell.
#
#     python examples/grokking_tiny.py [OUT_DIR]

# %%
import pathlib
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

import toylens

OUT = pathlib.Path(sys.argv[1] if len(sys.argv) > 1 else "runs/example")
OUT.mkdir(parents=True, exist_ok=True)

# %% Train grokking-tiny: (a + b) mod 23, 70% of the pairs, a few seconds.
run = toylens.train("grokking-tiny", out=OUT / "run", force=True, progress=False)
print(run)
print({k: run.summary[k] for k in ("final_train_loss", "final_test_loss", "final_test_acc", "grok_step")})

# %% Every input at once, every activation cached (numpy, TransformerLens's names and shapes).
model = run.load()
p = model.task["p"]
a, b = np.meshgrid(np.arange(p), np.arange(p), indexing="ij")
tokens = np.stack([a.ravel(), b.ravel(), np.full(p * p, p)], axis=1)  # "a b =", all p² of them
logits, cache = model.run_with_cache(tokens)
answers = (tokens[:, 0] + tokens[:, 1]) % p


def loss(logits):
    last = logits[:, -1].astype(np.float64)
    last -= last.max(-1, keepdims=True)
    logp = last - np.log(np.exp(last).sum(-1, keepdims=True))
    return -logp[np.arange(len(answers)), answers].mean()


print(f"loss over all pairs {loss(logits):.3e}, accuracy {(logits[:, -1].argmax(-1) == answers).mean():.4f}")

# %% The attention pattern from "=" to a, per head, over all (a, b).
pattern = cache["blocks.0.attn.hook_pattern"]  # [batch, head, query, key]
n_heads = pattern.shape[1]
fig, axes = plt.subplots(1, n_heads + 1, figsize=(4 * (n_heads + 1), 3.6))
for h in range(n_heads):
    im = axes[h].imshow(pattern[:, h, -1, 0].reshape(p, p), cmap="viridis", vmin=0, vmax=1)
    axes[h].set(title=f"head {h}: attention '=' → a", xlabel="b", ylabel="a")
fig.colorbar(im, ax=axes[n_heads - 1])

# %% The MLP neuron whose activation at "=" varies most, over all (a, b): a wave in a + b.
post = cache["blocks.0.mlp.hook_post"][:, -1]  # [batch, d_mlp]
neuron = int(post.var(0).argmax())
im = axes[-1].imshow(post[:, neuron].reshape(p, p), cmap="RdBu_r")
axes[-1].set(title=f"neuron {neuron} at '='", xlabel="b", ylabel="a")
fig.colorbar(im, ax=axes[-1])
fig.tight_layout()
fig.savefig(OUT / "example.png", dpi=100)
print(f"wrote {OUT / 'example.png'}")

# %% Ablate that neuron with a Python hook (TransformerLens's convention: fn(activation, hook)).
def ablate_neuron(act, hook):
    act[:, :, neuron] = 0.0  # in place; returning a new array works too


ablated = model.run_with_hooks(tokens, fwd_hooks=[("blocks.0.mlp.hook_post", ablate_neuron)])
print(f"neuron {neuron} zeroed: loss {loss(logits):.3e} -> {loss(ablated):.3e}")
# The whole MLP, zeroed inside Rust (no Python call per forward pass):
no_mlp = model.run_with_hooks(tokens, fwd_hooks=[("blocks.0.mlp.hook_post", toylens.hooks.zero)])
print(f"MLP zeroed: loss {loss(no_mlp):.3e}")

# %% The same checkpoint in TransformerLens: the same logits.
try:
    import torch

    tl_model = model.to_transformer_lens()
except ImportError as e:
    print(f"skipping the TransformerLens comparison: {e}")
else:
    with torch.no_grad():
        tl_logits = tl_model(torch.from_numpy(tokens)).numpy()
    diff = np.abs(tl_logits - logits).max() / np.abs(tl_logits).max()
    print(f"{type(tl_model).__name__}: largest logit difference {diff:.1e} of the largest logit")
