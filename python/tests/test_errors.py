"""Bad input arrives as Python exceptions with the CLI's messages; a panic as RuntimeError."""

import numpy as np
import pytest

import toylens


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing.safetensors"):
        toylens.load(tmp_path / "nothing.safetensors")


def test_not_a_checkpoint(tmp_path):
    f = tmp_path / "junk.safetensors"
    f.write_bytes(b"not a checkpoint at all")
    with pytest.raises(ValueError, match="junk.safetensors"):
        toylens.load(f)


def test_unknown_override_key_names_it_and_suggests():
    with pytest.raises(ValueError, match=r"optim\.weight_decy.*weight_decay"):
        toylens.config("grokking-tiny", ["optim.weight_decy=0.5"])


def test_bad_override_value_names_the_key():
    with pytest.raises(ValueError, match=r"train\.steps"):
        toylens.config("grokking-tiny", {"train.steps": "many"})


def test_unknown_preset():
    with pytest.raises(ValueError, match="grokking-tiny"):
        toylens.config("grokking-tinny")


def test_existing_run_directory_is_not_overwritten(tiny_run):
    before = (tiny_run.dir / "final.safetensors").read_bytes()
    with pytest.raises(ValueError, match="force"):
        toylens.train("grokking-tiny", out=tiny_run.dir, progress=False)
    assert (tiny_run.dir / "final.safetensors").read_bytes() == before


def test_unknown_hook_name_suggests(tiny_run):
    m = tiny_run.load()
    with pytest.raises(KeyError, match="blocks.0.mlp.hook_post"):
        m.run_with_hooks([[1, 2, 23]], fwd_hooks=[("blocks.0.mlp.hook_pots", toylens.hooks.zero)])
    with pytest.raises(KeyError, match="hook_embed"):
        m.run_with_cache([[1, 2, 23]], names_filter=["hook_embd"])


def test_token_out_of_range(tiny_run):
    m = tiny_run.load()
    with pytest.raises(ValueError, match="24"):
        m([[1, 2, 24]])
    with pytest.raises(ValueError, match="-1"):
        m([[1, -1, 23]])


def test_wrong_input_shapes_and_types(tiny_run):
    m = tiny_run.load()
    with pytest.raises(ValueError, match="shape"):
        m(np.zeros((2, 3, 4), dtype=np.int64))
    with pytest.raises(TypeError, match="dtype"):
        m(np.array([["a", "b", "c"]]))


def test_replacement_of_the_wrong_shape(tiny_run):
    m = tiny_run.load()
    with pytest.raises(ValueError, match=r"hook `blocks.0.mlp.hook_post`.*\[5\]"):
        m.run_with_hooks([[1, 2, 23]], fwd_hooks=[("blocks.0.mlp.hook_post", lambda a, h: np.zeros(5))])


def test_exception_in_a_hook_is_raised_as_itself(tiny_run):
    m = tiny_run.load()

    class Mine(Exception):
        pass

    def bad(act, hook):
        raise Mine("from the hook")

    with pytest.raises(Mine, match="from the hook"):
        m.run_with_hooks([[1, 2, 23]], fwd_hooks=[("hook_embed", bad)])


def test_fwd_hooks_must_be_pairs_of_name_and_function(tiny_run):
    m = tiny_run.load()
    with pytest.raises(TypeError, match="pairs"):
        m.run_with_hooks([[1, 2, 23]], fwd_hooks=["hook_embed"])
    with pytest.raises(TypeError, match="not callable"):
        m.run_with_hooks([[1, 2, 23]], fwd_hooks=[("hook_embed", 3)])


def test_a_panic_is_a_runtime_error():
    with pytest.raises(RuntimeError, match="internal error in toylens.*a test panic"):
        toylens._toylens._panic_for_test()


def test_analysis_of_the_wrong_kind(tmp_path):
    run = toylens.train("toy-mlp", {"train.steps": 20}, out=tmp_path / "mlp", progress=False)
    with pytest.raises(ValueError, match="toy_mlp"):
        toylens.analyze(run.load().path)
    with pytest.raises(TypeError, match="toy_mlp"):
        run.load().to_transformer_lens()
