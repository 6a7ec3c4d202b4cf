"""Deterministic, resumable, per-process batching; global arrays on a simulated 8-device mesh."""

import numpy as np
import pytest

from llmimg_jax.data.pipeline import Pipeline, default_image_preprocess
from llmimg_jax.errors import UserError
from tests.helpers import run_with_devices

N = 10  # source length; with batch 4 an epoch ends in the middle of a batch


class ListSource:
    def __init__(self, n):
        self.examples = [{"image": np.full((4, 4, 3), 20 * i, np.uint8), "text": f"example {i}"} for i in range(n)]

    def __len__(self):
        return len(self.examples)

    def __getitem__(self, i):
        return self.examples[i]


def index_and_noise(example, rng):
    """Returns which example this was and a draw from its rng (so rng determinism is visible)."""
    return {"index": np.int32(int(example["text"].split()[1])), "noise": rng.random(3, dtype=np.float32)}


def make(seed=0, **kw):
    kw.setdefault("global_batch_size", 4)
    return Pipeline(ListSource(N), seed=seed, preprocess=index_and_noise, process_index=kw.pop("process_index", 0),
                    process_count=kw.pop("process_count", 1), **kw)


def stream(pipeline, steps):
    return np.concatenate([pipeline.local_batch(s)["index"] for s in steps])


def test_every_epoch_is_a_permutation_and_epochs_differ():
    indices = stream(make(), range(10))  # 40 positions = 4 epochs
    epochs = indices.reshape(4, N)
    for e in epochs:
        np.testing.assert_array_equal(np.sort(e), np.arange(N))
    assert len({tuple(e) for e in epochs}) == 4
    # shuffle=False reads the source in order, epoch after epoch.
    np.testing.assert_array_equal(stream(make(shuffle=False), range(5)), np.tile(np.arange(N), 2))


def test_restart_matches_uninterrupted_run_across_epoch_boundary():
    uninterrupted = make()
    batches = [uninterrupted.local_batch(s) for s in range(8)]
    for k in (2, 3, 5):  # batch 2 straddles epochs 0 and 1
        restarted = make()  # a fresh object, as after a restart
        for s in range(k, 8):
            b = restarted.local_batch(s)
            np.testing.assert_array_equal(b["index"], batches[s]["index"])
            np.testing.assert_array_equal(b["noise"], batches[s]["noise"])
    # The same example gets a different rng in a different epoch (augmentation varies by epoch).
    noise = {}
    for s in range(8):
        for e_i, n in zip(uninterrupted.example_indices(s), batches[s]["noise"]):
            noise[e_i] = n
    assert not np.allclose(noise[(0, 0)], noise[(1, 0)])


def test_prefetched_iteration_matches_local_batch():
    import jax
    from jax.sharding import Mesh

    mesh = Mesh(np.array(jax.devices()[:1]).reshape(1, 1), ("data", "fsdp"))
    pipeline = make()
    it = pipeline.global_batches(3, mesh)
    for s in range(3, 9):
        b = next(it)
        np.testing.assert_array_equal(np.asarray(b["index"]), pipeline.local_batch(s)["index"])
        np.testing.assert_allclose(np.asarray(b["noise"]), pipeline.local_batch(s)["noise"])
    it.close()


def test_two_processes_cover_each_epoch_once_without_overlap():
    p0, p1 = make(process_index=0, process_count=2), make(process_index=1, process_count=2)
    single = make()
    global_rows = []
    for s in range(10):
        a, b = p0.local_batch(s), p1.local_batch(s)
        assert a["index"].shape == (2,)
        rows = np.concatenate([a["index"], b["index"]])
        np.testing.assert_array_equal(rows, single.local_batch(s)["index"])  # process split changes nothing
        global_rows.append(rows)
    epochs = np.concatenate(global_rows).reshape(4, N)
    for e in epochs:
        np.testing.assert_array_equal(np.sort(e), np.arange(N))


def test_seeds_give_different_orders():
    a, b = stream(make(seed=0), range(3)), stream(make(seed=1), range(3))
    assert not np.array_equal(a, b)
    np.testing.assert_array_equal(a, stream(make(seed=0), range(3)))


def test_bad_batch_size_and_state_check():
    with pytest.raises(UserError, match="multiple of the process count"):
        make(global_batch_size=5, process_count=2)
    saved = make().state()
    make().check_state(saved)
    with pytest.raises(UserError, match="seed"):
        make(seed=3).check_state(saved)
    with pytest.raises(UserError, match="source_length"):
        Pipeline(ListSource(N + 1), global_batch_size=4, seed=0, preprocess=index_and_noise, process_index=0,
                 process_count=1).check_state(saved)


def test_errors_on_the_prefetch_thread_reach_the_consumer():
    import jax
    from jax.sharding import Mesh

    def failing(example, rng):
        if example["text"] == "example 7":
            raise UserError("example 7 is broken")
        return index_and_noise(example, rng)

    mesh = Mesh(np.array(jax.devices()[:1]).reshape(1, 1), ("data", "fsdp"))
    pipeline = Pipeline(ListSource(N), global_batch_size=4, seed=0, preprocess=failing, shuffle=False,
                        process_index=0, process_count=1)
    it = pipeline.global_batches(0, mesh)
    next(it)  # positions 0..3
    with pytest.raises(UserError, match="example 7 is broken"):
        next(it)  # positions 4..7


def test_default_image_preprocess():
    image = np.array([[[0, 127, 255]]], np.uint8)
    out = default_image_preprocess({"image": image}, np.random.default_rng(0))["image"]
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, image.astype(np.float64) / 127.5 - 1.0, atol=1e-7)


def test_global_batches_on_8_devices():
    result = run_with_devices("""
        import json
        import jax, numpy as np
        from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
        from llmimg_jax.data.pipeline import Pipeline
        from tests.test_pipeline import ListSource, index_and_noise

        mesh = Mesh(np.array(jax.devices()).reshape(4, 2), ("data", "fsdp"))
        pipeline = Pipeline(ListSource(10), global_batch_size=16, seed=5, preprocess=index_and_noise)
        it = pipeline.global_batches(2, mesh)
        failures = []
        for step in (2, 3):
            batch = next(it)
            want = pipeline.local_batch(step)
            for key in ("index", "noise"):
                arr = batch[key]
                if not arr.sharding.is_equivalent_to(NamedSharding(mesh, P(("data", "fsdp"))), arr.ndim):
                    failures.append(f"{key} sharding {arr.sharding}")
                if arr.shape != want[key].shape or not np.array_equal(np.asarray(arr), want[key]):
                    failures.append(f"{key} values at step {step}")
                # The device at mesh position (d, f) holds rows [(2d + f) * 2, (2d + f) * 2 + 2).
                for d in range(4):
                    for f in range(2):
                        dev = mesh.devices[d, f]
                        shard = [s for s in arr.addressable_shards if s.device == dev][0]
                        r = (2 * d + f) * 2
                        if not np.array_equal(np.asarray(shard.data), want[key][r:r + 2]):
                            failures.append(f"{key} shard on mesh position ({d}, {f}) at step {step}")
        print(json.dumps({"failures": failures, "num_devices": len(jax.devices())}))
    """)
    assert result == {"failures": [], "num_devices": 8}


def test_global_batches_refuse_rows_the_mesh_does_not_give_this_process():
    import jax
    from jax.sharding import Mesh

    mesh = Mesh(np.array(jax.devices()[:1]).reshape(1, 1), ("data", "fsdp"))
    # Told it is process 1 of 2, but this process's device holds the whole batch.
    with pytest.raises(UserError, match="rows 0..3 of each batch on process 1's devices but it reads rows 2..3"):
        next(make(process_index=1, process_count=2).global_batches(0, mesh))
