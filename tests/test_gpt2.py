"""GPT-2 model: presets, logical axis names, scan/remat/bf16 options, padding, KV-cache decode, sharded loss."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from llmimg_jax.errors import UserError
from llmimg_jax.text.gpt2 import (GPT2, gpt2_config, init_cache, init_params, logical_specs, stack_layers,
                                  unstack_layers)
from tests.helpers import run_with_devices

NAMES = {"vocab", "embed", "heads", "kv", "mlp", "pos", "norm"}


@pytest.fixture(scope="module")
def tiny():
    model = GPT2(gpt2_config("tiny", vocab_size=100))
    return model, init_params(model, jax.random.key(0))


def _ids(batch=2, length=10, seed=1, vocab=100):
    return jax.random.randint(jax.random.key(seed), (batch, length), 0, vocab)


def _count(model):
    shapes = jax.eval_shape(lambda: init_params(model, jax.random.key(0)))
    return sum(int(np.prod(s.shape)) for s in jax.tree.leaves(shapes))


@pytest.mark.parametrize("preset", ["gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl"])
def test_preset_sizes(preset):
    cfg = gpt2_config(preset)
    V, P, E, L = cfg.vocab_size, cfg.n_positions, cfg.n_embd, cfg.n_layer
    expected = V * E + P * E + L * (12 * E * E + 13 * E) + 2 * E  # tied head: no extra V*E
    assert _count(GPT2(cfg)) == expected
    if preset == "gpt2":
        assert expected == 124_439_808  # the published GPT-2 small count


def test_config_errors():
    with pytest.raises(UserError, match="preset"):
        gpt2_config("gpt5")
    with pytest.raises(UserError, match="n_layers"):
        gpt2_config("tiny", n_layers=3)
    with pytest.raises(UserError, match="divisible"):
        gpt2_config("tiny", n_head=5)
    assert gpt2_config("tiny", vocab_size=321, n_layer=3).vocab_size == 321


@pytest.mark.parametrize("scan", [False, True])
def test_every_param_has_logical_names(scan):
    model = GPT2(gpt2_config("tiny", vocab_size=100, scan_layers=scan))
    specs = logical_specs(model)
    shapes = jax.eval_shape(lambda: init_params(model, jax.random.key(0)))
    flat_specs = jax.tree_util.tree_leaves_with_path(specs, is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec))
    flat_shapes = jax.tree.leaves(shapes)
    assert len(flat_specs) == len(flat_shapes) > 0
    for (path, spec), shape in zip(flat_specs, flat_shapes):
        names = tuple(spec)
        assert len(names) == len(shape.shape), path
        if scan and "h" in jax.tree_util.keystr(path):
            assert names[0] == "layers"
            names = names[1:]
        assert set(names) <= NAMES, (path, names)
    assert tuple(specs["wte"]["embedding"]) == ("vocab", "embed")
    h = specs["h"] if scan else specs["h_0"]
    assert tuple(h["attn"]["query"]["kernel"])[-3:] == ("embed", "heads", "kv")
    assert tuple(h["attn"]["c_proj"]["kernel"])[-3:] == ("heads", "kv", "embed")


def test_scan_and_remat_match_plain(tiny):
    model, params = tiny
    ids = _ids()
    mask = jnp.array([[1] * 10, [1] * 7 + [0] * 3])

    def loss(m, p):
        logits = m.apply({"params": p}, ids, mask)
        return jnp.mean(jax.nn.logsumexp(logits, -1) - jnp.take_along_axis(logits, ids[..., None], -1)[..., 0])

    ref_logits = model.apply({"params": params}, ids, mask)
    ref_grads = jax.jit(jax.grad(lambda p: loss(model, p)))(params)
    for scan, remat in [(True, False), (False, True), (True, True)]:
        m = GPT2(dataclasses.replace(model.config, scan_layers=scan, remat=remat))
        p = stack_layers(params, 2) if scan else params
        np.testing.assert_allclose(jax.jit(m.apply)({"params": p}, ids, mask), ref_logits, atol=1e-5)
        grads = jax.jit(jax.grad(lambda q, m=m: loss(m, q)))(p)
        grads = unstack_layers(grads, 2) if scan else grads
        for g, r in zip(jax.tree.leaves(grads), jax.tree.leaves(ref_grads)):
            np.testing.assert_allclose(g, r, atol=1e-6)


def test_left_padding_does_not_change_logits(tiny):
    model, params = tiny
    ids = _ids(1, 7)
    ref = model.apply({"params": params}, ids)
    padded = jnp.concatenate([jnp.full((1, 3), 5), ids], 1)
    mask = jnp.array([[0, 0, 0] + [1] * 7])
    out = model.apply({"params": params}, padded, mask)
    np.testing.assert_allclose(out[:, 3:], ref, atol=1e-5)
    assert np.isfinite(np.asarray(out)).all()  # padding queries attend to nothing but stay finite


@pytest.mark.parametrize("scan", [False, True])
def test_kv_cache_decode_matches_full_forward(tiny, scan):
    model, params = tiny
    if scan:
        model, params = GPT2(dataclasses.replace(model.config, scan_layers=True)), stack_layers(params, 2)
    ids = _ids(2, 10)
    mask = jnp.array([[0, 0] + [1] * 8, [1] * 10])  # left-padded row 0
    ref = model.apply({"params": params}, ids, mask)
    step = jax.jit(lambda c, i, m: model.apply({"params": params, "cache": c}, i, m, decode=True, mutable=["cache"]))
    out, v = step(init_cache(model, 2, 12), ids[:, :6], mask[:, :6])  # prefill, then one token at a time
    outs = [out]
    for t in range(6, 10):
        out, v = step(v["cache"], ids[:, t:t + 1], mask[:, t:t + 1])
        outs.append(out)
    got = jnp.concatenate(outs, 1)
    np.testing.assert_allclose(got[0, 2:], ref[0, 2:], atol=1e-5)
    np.testing.assert_allclose(got[1], ref[1], atol=1e-5)
    assert int(v["cache"]["index"]) == 10


def test_hidden_states_layout(tiny):
    model, params = tiny
    ids = _ids()
    logits, hidden = model.apply({"params": params}, ids, output_hidden_states=True)
    assert hidden.shape == (3, 2, 10, 64)
    emb = params["wte"]["embedding"][ids] + params["wpe"]["embedding"][jnp.arange(10)]
    np.testing.assert_allclose(hidden[0], emb, atol=1e-6)
    np.testing.assert_allclose(hidden[-1] @ params["wte"]["embedding"].T, logits, atol=1e-4)  # after ln_f


def test_bf16_compute_keeps_float32_params(tiny):
    model, params = tiny
    m16 = GPT2(dataclasses.replace(model.config, dtype="bfloat16"))
    p16 = init_params(m16, jax.random.key(0))
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(p16))
    ids = _ids()
    ref = model.apply({"params": params}, ids)
    out = jax.jit(m16.apply)({"params": params}, ids)
    assert out.dtype == jnp.float32
    assert float(jnp.max(jnp.abs(out - ref))) < 0.05 * float(jnp.max(jnp.abs(ref)))


def test_dropout_only_when_not_deterministic(tiny):
    model, params = tiny
    m = GPT2(dataclasses.replace(model.config, dropout=0.5))
    ids = _ids()
    ref = model.apply({"params": params}, ids)
    np.testing.assert_allclose(m.apply({"params": params}, ids), ref, atol=1e-6)
    noisy = m.apply({"params": params}, ids, deterministic=False, rngs={"dropout": jax.random.key(3)})
    assert float(jnp.max(jnp.abs(noisy - ref))) > 1e-2


def test_too_long_input_is_user_error(tiny):
    model, params = tiny
    with pytest.raises(UserError, match="n_positions"):
        model.apply({"params": params}, jnp.zeros((1, 129), jnp.int32))
    with pytest.raises(UserError, match="n_positions"):
        init_cache(model, 1, 200)


def test_sharded_loss_equals_single_device():
    result = run_with_devices("""
        import json
        import flax.linen as nn
        import jax, jax.numpy as jnp, numpy as np
        from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
        from llmimg_jax.text.gpt2 import GPT2, gpt2_config, init_params, logical_specs

        model = GPT2(gpt2_config("tiny", vocab_size=100))
        ids = jax.random.randint(jax.random.key(1), (4, 16), 0, 100)

        def loss_fn(p, ids):
            logits = model.apply({"params": p}, ids[:, :-1])
            logp = jax.nn.log_softmax(logits, -1)
            return -jnp.mean(jnp.take_along_axis(logp, ids[:, 1:, None], -1))

        mesh = Mesh(np.array(jax.devices()).reshape(1, 4, 2), ("data", "fsdp", "tensor"))
        rules = (("batch", ("data", "fsdp")), ("vocab", "tensor"), ("embed", "fsdp"), ("mlp", "tensor"),
                 ("heads", "tensor"), ("kv", None), ("norm", None), ("pos", None), ("layers", None))
        with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
            shardings = nn.logical_to_mesh_sharding(logical_specs(model), mesh, rules)
            # initialised directly into its shardings, as the runtime does
            sharded_params = jax.jit(lambda: init_params(model, jax.random.key(0)), out_shardings=shardings)()
            ids_s = jax.device_put(ids, NamedSharding(mesh, P(("data", "fsdp"))))
            loss = jax.jit(loss_fn, in_shardings=(shardings, NamedSharding(mesh, P(("data", "fsdp")))),
                           out_shardings=NamedSharding(mesh, P()))(sharded_params, ids_s)
        single = float(jax.jit(loss_fn)(jax.device_get(sharded_params), jax.device_get(ids)))
        wte = sharded_params["wte"]["embedding"].sharding.spec
        fc = sharded_params["h_0"]["mlp"]["c_fc"]["kernel"]
        print(json.dumps({"single": single, "sharded": float(loss), "wte": list(map(str, wte)),
                          "fc_shard": list(fc.addressable_shards[0].data.shape)}))
    """)
    assert result["wte"] == ["tensor", "fsdp"]
    assert result["fc_shard"] == [64 // 4, 256 // 2]  # really split over fsdp x tensor
    assert abs(result["single"] - result["sharded"]) < 1e-5


def test_sharded_gradients_equal_single_device():
    """LM-loss gradients (parameters and a prefix of embeddings, whose width is split over tensor as a projection's
    output would be) on mesh (data=2, fsdp=2, tensor=2) equal one device's. Without kernels gathered over the batch
    axes at use, XLA swapped the middle batch shards in the backward pass (training/sharding.py)."""
    result = run_with_devices("""
        import json
        import flax.linen as nn
        import jax, jax.numpy as jnp, numpy as np
        from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
        from llmimg_jax.text.gpt2 import GPT2, gpt2_config, init_params
        from llmimg_jax.training.config import DEFAULT_SHARDING_RULES
        from llmimg_jax.training.sharding import param_shardings

        rules = DEFAULT_SHARDING_RULES + (("layers", None),)
        mesh = Mesh(np.array(jax.devices()).reshape(2, 2, 2), ("data", "fsdp", "tensor"))
        ids = jax.random.randint(jax.random.key(1), (8, 7), 0, 100)
        prefix = jax.random.normal(jax.random.key(2), (8, 3, 64))
        batch = NamedSharding(mesh, P(("data", "fsdp")))
        prefix_sharding = NamedSharding(mesh, P(("data", "fsdp"), None, "tensor"))
        out = {}
        for scan in (False, True):
            model = GPT2(gpt2_config("tiny", vocab_size=100, scan_layers=scan))

            def loss_fn(p, prefix, ids):
                logp = jax.nn.log_softmax(model.apply({"params": p}, ids[:, :-1], prefix_embeds=prefix), -1)
                return -jnp.mean(jnp.take_along_axis(logp, ids[:, 1:, None], -1))

            grad_fn = jax.value_and_grad(loss_fn, argnums=(0, 1))
            params = init_params(model, jax.random.key(0))
            want_loss, want = jax.jit(grad_fn)(params, prefix, ids)
            boxed = jax.eval_shape(lambda: model.init(jax.random.key(0), ids))["params"]
            shardings = param_shardings(boxed, mesh, rules)
            with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
                loss, got = jax.jit(grad_fn, in_shardings=(shardings, prefix_sharding, batch),
                                    out_shardings=(None, (shardings, prefix_sharding)))(
                    jax.device_put(params, shardings), jax.device_put(prefix, prefix_sharding),
                    jax.device_put(ids, batch))
            leaves = lambda tree: jax.tree.leaves(tree)
            fc = got[0]["h"]["mlp"]["c_fc"]["kernel"] if scan else got[0]["h_0"]["mlp"]["c_fc"]["kernel"]
            out[str(scan)] = {
                "loss": abs(float(loss) - float(want_loss)),
                "params": max(float(jnp.abs(a - b).max()) for a, b in zip(leaves(got[0]), leaves(want[0]))),
                "params_max": max(float(jnp.abs(g).max()) for g in leaves(want[0])),
                "prefix": float(jnp.abs(got[1] - want[1]).max()), "prefix_max": float(jnp.abs(want[1]).max()),
                "fc_spec": [str(s) for s in fc.sharding.spec]}
        print(json.dumps(out))
    """)
    for scan, r in result.items():
        assert r["fc_spec"][-2:] == ["fsdp", "tensor"], (scan, r)  # the kernels really are split both ways
        assert r["loss"] < 1e-5, (scan, r)
        assert r["params"] <= 1e-5 * r["params_max"], (scan, r)
        assert r["prefix"] <= 1e-5 * r["prefix_max"], (scan, r)
