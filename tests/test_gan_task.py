"""The GAN task: frozen-group updates in the runtime, gradients into the LM, `llmimg train` with exact resume,
sharded losses equal to single-device ones, one-step generation."""

import json
import os
import textwrap

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from llmimg_jax.config import base_config, load_config
from llmimg_jax.errors import UserError
from llmimg_jax.training.mesh import make_mesh
from llmimg_jax.training.state import init_state, state_spec
from llmimg_jax.training.step import make_train_step
from llmimg_jax.training.task import Phase, Task, make_task
from tests.helpers import run_with_devices

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(REPO, "configs", "shapes_gan.py")


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    """One Shapes build (256 examples) shared by the tests of this file."""
    return str(tmp_path_factory.mktemp("data"))


def _tiny(**overrides):
    config = load_config(CONFIG + ":tiny")
    for key, value in overrides.items():
        section, name = key.split("__")
        config[section][name] = value
    return config


# --- the runtime extension: a phase's "updates" replace frozen groups -------------------------------------------

def _buffer_task(update_group="buf"):
    """w is trained; buf (frozen) becomes 0.5 * buf + mean(x) in phase "a"; phase "b" reports the buf it sees."""
    def init(rng):
        return {"w": jnp.zeros((2,)), "buf": jnp.ones((2,))}

    def loss_a(params, batch, rng, step):
        loss = jnp.sum((params["w"] - jnp.mean(batch["x"], 0)) ** 2)
        return loss, {"updates": {update_group: 0.5 * params["buf"] + jnp.mean(batch["x"], 0)}}

    def loss_b(params, batch, rng, step):
        return 0.0 * jnp.sum(params["w"]), {"seen": params["buf"][0]}

    return Task(init=init, phases=(Phase(("w",), loss_a, "a"), Phase(("w",), loss_b, "b")),
                batches=lambda start, mesh: iter(()))


def test_phase_updates_replace_frozen_group_and_nonfinite_steps_discard_them():
    config = base_config()
    config.train.update(dict(steps=10, lr=0.1, warmup_steps=0))
    task = _buffer_task()
    spec = state_spec(task, config, make_mesh(config.mesh))
    state = init_state(task, config, spec)
    step = make_train_step(task, config, spec)
    assert "buf" not in state["opt"]  # still frozen: no optimizer state
    rng = np.random.default_rng(0)
    buf = np.ones(2)
    for k in range(4):
        x = rng.standard_normal((4, 2)).astype(np.float32)
        if k == 2:
            x[0, 0] = np.nan  # a non-finite step: its update must be dropped with everything else
        state, metrics = step(state, {"x": jnp.asarray(x)})
        if k != 2:
            buf = 0.5 * buf + x.astype(np.float64).mean(0)
        np.testing.assert_allclose(np.asarray(state["params"]["buf"]), buf, rtol=1e-6)
        if k != 2:  # the later phase sees this step's update
            np.testing.assert_allclose(float(metrics["b/seen"]), buf[0], rtol=1e-6)
        assert "updates" not in metrics and "a/updates" not in metrics
    assert int(state["skipped"]) == 1


def test_phase_updates_to_a_trained_group_are_refused():
    config = base_config()
    task = _buffer_task(update_group="w")
    spec = state_spec(task, config, make_mesh(config.mesh))
    step = make_train_step(task, config, spec)
    with pytest.raises(ValueError, match="not a frozen group"):
        step(init_state(task, config, spec), {"x": jnp.ones((4, 2))})


# --- the task ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("trainable", [True, False])
def test_g_loss_reaches_the_lm_only_when_trainable(trainable, data_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("LLMIMG_DATA_DIR", data_dir)
    config = _tiny(text__trainable=trainable)
    task = make_task(config, str(tmp_path))
    d_phase, g_phase = task.phases
    assert d_phase.groups == ("d",)
    assert g_phase.groups == (("g", "text") if trainable else ("g",))
    assert task.optimizer_overrides["d"] == {"b1": 0.0, "b2": 0.99, "lr": 4e-4}
    params = nn.unbox(task.init(jax.random.key(0)))
    assert set(params) == {"g", "d", "d_spectral", "text"}
    batch = jax.tree.map(jnp.asarray, next(task.batches(0, make_mesh(config.mesh))))

    @jax.jit
    def text_grads(text_params):
        return jax.grad(lambda t: g_phase.loss_fn({**params, "text": t}, batch, jax.random.key(1), 0)[0])(text_params)

    grads = text_grads(params["text"])
    norms = {jax.tree_util.keystr(k): float(jnp.max(jnp.abs(v))) for k, v in
             jax.tree_util.tree_leaves_with_path(grads)}
    if trainable:
        assert norms["['wte']['embedding']"] > 0  # reaches the token embeddings: through the whole LM
        assert sum(v > 0 for v in norms.values()) > len(norms) // 2, norms
    else:
        assert all(v == 0.0 for v in norms.values()), norms


@pytest.mark.parametrize("kinds", ["background", "background,colour"])
def test_hard_negatives_add_their_term_to_the_d_loss(data_dir, tmp_path, monkeypatch, kinds):
    """Real images with one word of their caption swapped count as fake: one of K captions per kind, valid where
    the caption changed, and from gan.hard_negative_start on the D loss grows by exactly that term."""
    monkeypatch.setenv("LLMIMG_DATA_DIR", data_dir)
    config = _tiny(gan__hard_negative_weight=1.0, gan__hard_negatives=kinds, gan__hard_negative_start=5)
    with_term, without = make_task(config, str(tmp_path)), make_task(_tiny(), str(tmp_path))
    params = nn.unbox(with_term.init(jax.random.key(0)))
    batch = jax.tree.map(jnp.asarray, next(with_term.batches(0, make_mesh(_tiny().mesh))))
    b, k = batch["ids"].shape[0], len(kinds.split(","))
    assert batch["neg_ids"].shape == (b, k, batch["ids"].shape[1]) and float(batch["neg_valid"].sum()) > 0
    changed = np.any(np.asarray(batch["neg_ids"]) != np.asarray(batch["ids"])[:, None], axis=2)
    np.testing.assert_array_equal(changed, np.asarray(batch["neg_valid"]) > 0)
    d_loss = jax.jit(lambda p, step: with_term.phases[0].loss_fn(p, batch, jax.random.key(1), step))
    plain = {k: v for k, v in batch.items() if not k.startswith("neg_")}
    loss0, metrics0 = jax.jit(lambda p: without.phases[0].loss_fn(p, plain, jax.random.key(1), 0))(params)
    assert "d_hard_negative" not in metrics0
    before, before_metrics = d_loss(params, jnp.int32(4))  # logged, not counted
    np.testing.assert_allclose(before, loss0, rtol=1e-5, atol=1e-6)
    loss, metrics = d_loss(params, jnp.int32(5))
    np.testing.assert_allclose(loss, loss0 + metrics["d_hard_negative"], rtol=1e-5, atol=1e-6)
    assert float(metrics["d_hard_negative"]) > 0
    np.testing.assert_allclose(before_metrics["d_hard_negative"], metrics["d_hard_negative"], rtol=1e-6)


def test_saturation_penalty_adds_its_term_to_the_g_loss(data_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("LLMIMG_DATA_DIR", data_dir)
    # A bound near 0 so that a freshly initialised G already has tanh inputs beyond it.
    with_term = make_task(_tiny(gan__saturation_weight=2.0, gan__saturation_bound=0.01), str(tmp_path))
    without = make_task(_tiny(), str(tmp_path))
    params = nn.unbox(with_term.init(jax.random.key(0)))
    batch = jax.tree.map(jnp.asarray, next(without.batches(0, make_mesh(_tiny().mesh))))
    g_loss = lambda task: jax.jit(lambda p: task.phases[1].loss_fn(p, batch, jax.random.key(1), 0))  # noqa: E731
    (loss, metrics), (loss0, metrics0) = g_loss(with_term)(params), g_loss(without)(params)
    assert "g_saturation" not in metrics0 and float(metrics["g_saturation"]) > 0
    np.testing.assert_allclose(loss, loss0 + 2.0 * metrics["g_saturation"], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("key, value, message", [
    ("r1_every", 0, "r1_every=0 must be >= 1"),
    ("saturation_weight", -1.0, "saturation_weight=-1.0 must be >= 0"),
    ("hard_negative_weight", -1.0, r"hard_negative_weight=-1.0 must be >= 0"),
    ("hard_negative_start", -1, "hard_negative_start=-1 must be >= 0"),
    ("hard_negatives", "background,shape", r"names \['shape'\]"),
    ("hard_negatives", " , ", "names nothing"),
])
def test_bad_gan_settings_are_refused_before_any_work(tmp_path, key, value, message):
    with pytest.raises(UserError, match=message):
        make_task(_tiny(**{f"gan__{key}": value}), str(tmp_path))


def test_a_saturation_penalty_needs_a_positive_bound(tmp_path):
    with pytest.raises(UserError, match="saturation_bound=0.0 must be > 0"):
        make_task(_tiny(gan__saturation_weight=1.0, gan__saturation_bound=0.0), str(tmp_path))


def _run(argv):
    from llmimg_jax.cli.main import main
    assert main(argv) == 0


def _state_arrays(workdir, step):
    from llmimg_jax.training.checkpoint import checkpoint_dir
    import orbax.checkpoint as ocp

    with ocp.PyTreeCheckpointer() as ckpt:
        tree = ckpt.restore(os.path.join(checkpoint_dir(str(workdir)), str(step), "state"))
    return {jax.tree_util.keystr(k): np.asarray(v) for k, v in jax.tree_util.tree_leaves_with_path(tree)}


@pytest.mark.slow
def test_tiny_trains_through_the_cli_and_resumes_exactly(data_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("LLMIMG_DATA_DIR", data_dir)
    work, straight = tmp_path / "w", tmp_path / "straight"
    _run(["train", "--config", CONFIG + ":tiny", "--workdir", str(work)])
    with open(work / "metrics.jsonl") as f:
        logged = [json.loads(line) for line in f]
    assert [m["step"] for m in logged] == [5, 10]
    for m in logged:
        assert all(np.isfinite(m[k]) for k in ("d/loss", "g/loss", "d/d_hinge", "g/g_hinge")), m
        assert m["skipped"] == 0
    assert sorted(os.listdir(work / "checkpoints")) == ["10", "5"]
    assert os.path.isfile(work / "samples" / "step_000010.png")

    capsys.readouterr()
    _run(["train", "--config", CONFIG + ":tiny", "--workdir", str(work), "--config.train.steps=12"])
    assert "resumed from" in capsys.readouterr().out
    with open(work / "metrics.jsonl") as f:
        assert json.loads(f.readlines()[-1])["step"] == 12
    _run(["train", "--config", CONFIG + ":tiny", "--workdir", str(straight), "--config.train.steps=12"])
    resumed, reference = _state_arrays(work, 12), _state_arrays(straight, 12)
    assert resumed.keys() == reference.keys()
    assert any("d_spectral" in k for k in resumed) and any("['ema']['g']" in k for k in resumed)
    for key in reference:  # D and G params, optimizer states, EMA and spectral-norm vectors
        np.testing.assert_array_equal(resumed[key], reference[key], err_msg=key)

    # The Python pipeline serves GAN workdirs too; diffusion-only options are refused.
    from llmimg_jax.pipeline import TextToImagePipeline

    from llmimg_jax.evaluation.probe import load_or_train_probe
    from llmimg_jax.evaluation.rerank import ProbeReranker

    # best_of's ranking needs any probe here (a barely trained one is quick): the pick must be one of the drawn.
    probe = load_or_train_probe(str(tmp_path / "probe"), 32, steps=3, batch=8)
    pipe = TextToImagePipeline.from_workdir(str(work), reranker=ProbeReranker(probe))
    out = pipe(["a red circle", "a blue square"], seed=3, num_images=2, truncation=0.8)
    assert len(out.images) == 4 and out.images[0].size == (32, 32) and out.expansions is None
    best = pipe(["a red circle", "a blue square"], seed=3, best_of=2, truncation=0.8)
    drawn = [np.asarray(im) for im in out.images]
    assert all(any(np.array_equal(np.asarray(im), d) for d in drawn[2 * i:2 * i + 2])
               for i, im in enumerate(best.images))
    with pytest.raises(UserError, match="--guidance apply to diffusion models"):
        pipe(["a red circle"], guidance=3.0)


@pytest.mark.slow
def test_sharded_losses_equal_single_device(data_dir, tmp_path, monkeypatch):
    """Phase losses and gradients (step 1: no R1 in the tiny config; G's include the trainable LM) on mesh (2, 2, 2)
    equal a float64 computation of the same step on one device, entry by entry; also the spectral-norm updates
    and the R1 term (step 0): input gradients through kernels sharded [fsdp, tensor] (see training/sharding.py)."""
    monkeypatch.setenv("LLMIMG_DATA_DIR", data_dir)
    out = run_with_devices(f"import sys, json; sys.path.insert(0, {REPO!r})\n" + textwrap.dedent(f"""
        import jax
        jax.config.update("jax_enable_x64", True)  # for the float64 reference only; the others stay float32
        import flax.linen as nn, jax.numpy as jnp, numpy as np, optax
        from llmimg_jax.config import load_config
        from llmimg_jax.training.mesh import make_mesh
        from llmimg_jax.training.state import init_state, state_spec
        from llmimg_jax.training.task import make_task

        def as_f64(tree):
            return jax.tree.map(lambda x: x.astype(jnp.float64) if jnp.issubdtype(x.dtype, jnp.floating) else x, tree)

        results, grads_of = {{}}, {{}}
        for name, sizes, devices, dtype in (("eight", dict(data=2, fsdp=2, tensor=2), None, "float32"),
                                             ("f64", dict(data=1), jax.devices()[:1], "float64")):
            config = load_config({CONFIG + ":tiny"!r})
            config.text.trainable = True
            config.train.compute_dtype = dtype
            task = make_task(config, {str(tmp_path)!r})
            config.mesh.update(sizes)
            mesh = make_mesh(config.mesh, devices)
            spec = state_spec(task, config, mesh)
            state = init_state(task, config, spec)
            params, batch, key = state["params"], next(task.batches(0, mesh)), jax.random.key(3)
            if dtype == "float64":
                params, batch = as_f64(params), as_f64(batch)
            with jax.set_mesh(mesh), nn.logical_axis_rules(config.sharding_rules):
                for phase in task.phases:
                    loss_of = lambda trained, phase=phase: phase.loss_fn({{**params, **trained}}, batch, key, 1)
                    (loss, metrics), grads = jax.jit(jax.value_and_grad(loss_of, has_aux=True))(
                        {{g: params[g] for g in phase.groups}})
                    results[f"{{name}}/{{phase.name}}"] = [float(loss), float(optax.tree.norm(grads))]
                    grads_of[name, phase.name] = [np.asarray(g, np.float64) for g in jax.tree.leaves(grads)]
                    if "updates" in metrics:
                        u = metrics["updates"]["d_spectral"]
                        results[f"{{name}}/u"] = np.concatenate([np.ravel(x) for x in jax.tree.leaves(u)]).tolist()
                d_phase = task.phases[0]
                results[f"{{name}}/r1"] = float(jax.jit(d_phase.loss_fn)(params, batch, key, 0)[1]["r1"])
            results[f"{{name}}/spec"] = str(params["d"]["block0"]["conv1"]["kernel"].sharding.spec)
        for phase in ("d", "g"):  # largest difference of any gradient entry from float64, over the largest entry
            reference = grads_of["f64", phase]
            largest = max(float(np.abs(b).max()) for b in reference)
            diff = max(float(np.abs(a - b).max()) for a, b in zip(grads_of["eight", phase], reference))
            results[f"grad/eight/{{phase}}"] = diff / largest
        print(json.dumps(results))
    """))
    assert "tensor" in out["eight/spec"] and "fsdp" in out["eight/spec"], out["eight/spec"]
    for phase in ("d", "g"):  # [loss, gradient norm]
        np.testing.assert_allclose(out[f"eight/{phase}"], out[f"f64/{phase}"], rtol=2e-5, err_msg=phase)
    np.testing.assert_allclose(out["eight/u"], out["f64/u"], atol=1e-5)
    assert out["f64/r1"] > 0
    np.testing.assert_allclose(out["eight/r1"], out["f64/r1"], rtol=1e-4)
    # Entry by entry against float64: the sharded step is as exact as float32 allows. (A float32 step on one device
    # is not the reference at this tolerance: its D gradients sat ~4e-5 of the largest entry away, the rounding of
    # its single long batch-and-pixel sums.)
    for phase in ("d", "g"):
        assert out[f"grad/eight/{phase}"] <= 1e-5, (phase, out[f"grad/eight/{phase}"])


def test_generate_is_deterministic_and_truncation_zero_ignores_z(data_dir, tmp_path, monkeypatch):
    from llmimg_jax.generator.gan.generate import GANGenerator, build_generator
    from llmimg_jax.generator.text_side import build_text_side

    monkeypatch.setenv("LLMIMG_DATA_DIR", data_dir)
    config = _tiny()
    text = build_text_side(config, str(tmp_path), lambda: ["a red circle", "a blue square on the left"])
    generator = build_generator(config)
    gen = GANGenerator(generator, text, config.gan, 32)
    width = text.model.config.n_embd
    g_params = generator.init(jax.random.key(0), jnp.zeros((1, generator.config.z_dim)), jnp.zeros((1, width)),
                              jnp.zeros((1, 4, width)), jnp.ones((1, 4), bool))["params"]
    t_params = text.init(jax.random.key(1))
    prompts = ["a red circle", "a blue square on the left", "a red circle"]
    a = gen.generate(g_params, t_params, prompts, seed=0)
    assert a.shape == (3, 32, 32, 3) and a.dtype == np.uint8
    np.testing.assert_array_equal(a, gen.generate(g_params, t_params, prompts, seed=0))
    assert not np.array_equal(a, gen.generate(g_params, t_params, prompts, seed=1))
    # psi = 0: each sample is its text's mean style (averaged over the same draws for every row), so equal
    # prompts give equal images while their z differ.
    t0 = gen.generate(g_params, t_params, prompts, seed=0, truncation=0.0)
    np.testing.assert_array_equal(t0[0], t0[2])
    assert not np.array_equal(a[0], a[2]) and not np.array_equal(t0[0], t0[1])
    with pytest.raises(UserError, match="truncation"):
        gen.generate(g_params, t_params, prompts, truncation=1.5)
