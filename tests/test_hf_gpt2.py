"""Hugging Face interop against transformers (torch, CPU): import, export, greedy generation, workdir import."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from llmimg_jax.errors import UserError  # noqa: E402
from llmimg_jax.text.hf_gpt2 import export_hf_gpt2, import_hf_to_workdir, load_hf_gpt2, load_lm_workdir  # noqa: E402
from llmimg_jax.text.sampling import generate  # noqa: E402

VOCAB = 100


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    """A random tiny GPT2LMHeadModel saved with save_pretrained; every weight perturbed (LN and biases too)."""
    torch.manual_seed(0)
    config = transformers.GPT2Config(vocab_size=VOCAB, n_positions=64, n_embd=64, n_layer=2, n_head=4,
                                     resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=1,
                                     eos_token_id=2, pad_token_id=0)
    model = transformers.GPT2LMHeadModel(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    path = str(tmp_path_factory.mktemp("hf_gpt2"))
    model.save_pretrained(path)
    return path, model


def _torch_logits(model, ids, mask=None, position_ids=None):
    with torch.no_grad():
        out = model(torch.tensor(np.asarray(ids)), attention_mask=None if mask is None else torch.tensor(mask),
                    position_ids=None if position_ids is None else torch.tensor(position_ids),
                    output_hidden_states=True)
    return out.logits.numpy(), np.stack([h.numpy() for h in out.hidden_states])


def _ids(batch=3, length=12, seed=0):
    return np.random.default_rng(seed).integers(3, VOCAB, (batch, length))


def test_import_matches_torch_logits_and_hidden_states(hf_dir):
    path, hf = hf_dir
    assert os.path.isfile(os.path.join(path, "model.safetensors"))
    model, params = load_hf_gpt2(path)
    ids = _ids()
    ref_logits, ref_hidden = _torch_logits(hf, ids)
    logits, hidden = model.apply({"params": params}, jnp.asarray(ids), output_hidden_states=True)
    assert np.max(np.abs(np.asarray(logits) - ref_logits)) < 1e-4
    assert np.max(np.abs(np.asarray(hidden) - ref_hidden)) < 1e-4


def test_import_matches_torch_with_padding_mask(hf_dir):
    path, hf = hf_dir
    model, params = load_hf_gpt2(path)
    ids = _ids()
    lengths = np.array([12, 8, 5])
    right = (np.arange(12)[None] < lengths[:, None]).astype(np.int64)
    ref, _ = _torch_logits(hf, ids, right)
    ours = np.asarray(model.apply({"params": params}, jnp.asarray(ids), jnp.asarray(right)))
    valid = right.astype(bool)
    assert np.max(np.abs(ours[valid] - ref[valid])) < 1e-4
    # Left padding: HF needs position_ids counting real tokens (what its generate() passes); ours derives them.
    left = right[:, ::-1].copy()
    positions = np.maximum(np.cumsum(left, 1) - 1, 0)
    ref, _ = _torch_logits(hf, ids, left, positions)
    ours = np.asarray(model.apply({"params": params}, jnp.asarray(ids), jnp.asarray(left)))
    valid = left.astype(bool)
    assert np.max(np.abs(ours[valid] - ref[valid])) < 1e-4


def test_import_bare_key_layout_and_scan(hf_dir, tmp_path):
    path, hf = hf_dir
    hf.transformer.save_pretrained(str(tmp_path))  # GPT2Model: keys without the 'transformer.' prefix
    model, params = load_hf_gpt2(str(tmp_path), scan_layers=True)
    assert "h" in params and params["h"]["ln_1"]["scale"].shape == (2, 64)
    ids = _ids()
    ref, _ = _torch_logits(hf, ids)
    assert np.max(np.abs(np.asarray(model.apply({"params": params}, jnp.asarray(ids))) - ref)) < 1e-4


def test_import_bfloat16_checkpoint(hf_dir, tmp_path):
    path, hf = hf_dir
    model, params = load_hf_gpt2(path)
    transformers.GPT2LMHeadModel.from_pretrained(path, dtype=torch.bfloat16).save_pretrained(str(tmp_path))
    _, params16 = load_hf_gpt2(str(tmp_path))
    for a, b in zip(jax.tree.leaves(params16), jax.tree.leaves(params)):
        assert a.dtype == jnp.float32
        np.testing.assert_array_equal(a, np.asarray(jnp.asarray(b).astype(jnp.bfloat16).astype(jnp.float32)))


def test_export_loads_in_transformers(hf_dir, tmp_path):
    path, hf = hf_dir
    model, params = load_hf_gpt2(path)
    ids = _ids()
    ours = np.asarray(model.apply({"params": params}, jnp.asarray(ids)))
    out = str(tmp_path / "exported")
    export_hf_gpt2(model.config, params, out)
    reloaded = transformers.GPT2LMHeadModel.from_pretrained(out).eval()
    assert reloaded.lm_head.weight.data_ptr() == reloaded.transformer.wte.weight.data_ptr()  # tied
    ref, _ = _torch_logits(reloaded, ids)
    assert np.max(np.abs(ours - ref)) < 1e-4


def test_greedy_generation_matches_transformers(hf_dir):
    path, hf = hf_dir
    model, params = load_hf_gpt2(path)
    pad, n_new = 0, 10
    lengths = np.array([6, 4, 2])
    ids = _ids(3, 6, seed=3)
    mask = (np.arange(6)[None] >= (6 - lengths)[:, None]).astype(np.int64)  # left padding, as HF expects
    ids = np.where(mask > 0, ids, pad)

    def hf_generate(eos):
        with torch.no_grad():
            out = hf.generate(torch.tensor(ids), attention_mask=torch.tensor(mask), do_sample=False, num_beams=1,
                              max_new_tokens=n_new, pad_token_id=pad, eos_token_id=eos).numpy()[:, 6:]
        return np.pad(out, ((0, 0), (0, n_new - out.shape[1])), constant_values=pad)

    ours = generate(model, params, ids, mask, max_new_tokens=n_new, rng=jax.random.key(0), greedy=True,
                    eos_id=None, pad_id=pad)
    np.testing.assert_array_equal(np.asarray(ours), hf_generate(VOCAB + 7))  # an id never generated: no stop
    # Now stop on a token that row 0 produces mid-way, so EOS handling is compared too.
    eos = int(np.asarray(ours)[0, 3])
    ours = generate(model, params, ids, mask, max_new_tokens=n_new, rng=jax.random.key(0), greedy=True,
                    eos_id=eos, pad_id=pad)
    expected = hf_generate(eos)
    np.testing.assert_array_equal(np.asarray(ours), expected)
    assert (expected[0, 4:] == pad).all()


def test_bad_paths_and_unsupported_configs(hf_dir, tmp_path):
    path, _ = hf_dir
    with pytest.raises(UserError, match="not a Hugging Face model directory"):
        load_hf_gpt2(str(tmp_path / "missing"))
    with open(os.path.join(path, "config.json")) as f:
        config = json.load(f)
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(UserError, match="model.safetensors"):
        load_hf_gpt2(str(tmp_path))
    os.symlink(os.path.join(path, "model.safetensors"), tmp_path / "model.safetensors")
    for field, value in [("scale_attn_by_inverse_layer_idx", True), ("activation_function", "relu"),
                         ("n_inner", 100), ("tie_word_embeddings", False)]:
        (tmp_path / "config.json").write_text(json.dumps({**config, field: value}))
        with pytest.raises(UserError, match=field):
            load_hf_gpt2(str(tmp_path))


def test_extra_tensors_warn_with_count_buffers_do_not(hf_dir, tmp_path):
    import safetensors.numpy

    path, _ = hf_dir
    tensors = safetensors.numpy.load_file(os.path.join(path, "model.safetensors"))
    tensors["transformer.h.0.attn.bias"] = np.tril(np.ones((1, 1, 64, 64), np.float32))  # old causal-mask buffer
    tensors["score.weight"] = np.zeros((2, 64), np.float32)
    safetensors.numpy.save_file(tensors, str(tmp_path / "model.safetensors"), metadata={"format": "pt"})
    (tmp_path / "config.json").write_text(open(os.path.join(path, "config.json")).read())
    with pytest.warns(UserWarning, match=r"skipped 1 unknown tensor\(s\).*score.weight"):
        load_hf_gpt2(str(tmp_path))


def test_import_to_workdir_round_trip(hf_dir, tmp_path):
    path, _ = hf_dir
    model, params = load_hf_gpt2(path)
    workdir = str(tmp_path / "w")
    import_hf_to_workdir(path, workdir)
    assert os.path.isfile(os.path.join(workdir, "lm_config.json"))
    restored_model, restored = load_lm_workdir(workdir)
    assert restored_model.config == model.config
    for a, b in zip(jax.tree.leaves(restored), jax.tree.leaves(params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    with pytest.raises(UserError, match="already exists"):
        import_hf_to_workdir(path, workdir)
