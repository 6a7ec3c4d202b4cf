"""The Shapes probe: a small CNN trained on Shapes ground truth, whose penultimate features are the space of the
Fréchet distance (as Inception is for FID, but trained on this world).

Heads: per cell of the 3x3 grid, presence, shape, colour and size; and the background. Training draws fresh
random scenes and renders them (no data set build needed). `load_or_train_probe` caches the parameters
(flax msgpack plus a JSON of settings) and trains on demand.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import serialization

from llmimg_jax.data.shapes.render import check_image_size, render
from llmimg_jax.data.shapes.scene import Scene, ShapeObject, sample_scene
from llmimg_jax.data.shapes.spec import ALL_CELLS, BACKGROUNDS, COLOURS, MAX_OBJECTS, SHAPES, SIZES
from llmimg_jax.errors import UserError

COLOUR_NAMES, BACKGROUND_NAMES = tuple(COLOURS), tuple(BACKGROUNDS)
HEADS = {"presence": 2, "shape": len(SHAPES), "colour": len(COLOUR_NAMES), "size": len(SIZES)}  # per cell
VERSION = 1  # bump when the network or its training changes: cached parameters of other versions are retrained


def cell_window(image_size: int) -> int:
    """Side of the square window read for each cell: the widest cell span, ceil(S / 3). A narrower cell's window
    reaches one pixel into the next cell, which is always background (objects keep a 1-pixel margin)."""
    return -(-image_size // 3)


def _conv(ch: int, stride: int, name: str) -> nn.Conv:
    kernel_names = (None, None, "conv_in", "conv_out")
    return nn.Conv(ch, (3, 3), strides=stride, padding="SAME", name=name,
                   kernel_init=nn.with_logical_partitioning(nn.initializers.lecun_normal(), kernel_names),
                   bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("conv_out",)))


def _dense(n: int, names: tuple, name: str) -> nn.Dense:
    return nn.Dense(n, name=name, kernel_init=nn.with_logical_partitioning(nn.initializers.lecun_normal(), names),
                    bias_init=nn.with_logical_partitioning(nn.initializers.zeros, names[-1:]))


class ProbeNet(nn.Module):
    """One small CNN, shared by the 9 cells, reads each cell's window; the cells' features, concatenated, are the
    probe's features [B, 9 * cell_features]. Sharing the weights across cells gives 9 examples per image, which
    is what lets it train in a minute."""
    channels: tuple[int, ...] = (16, 32, 32)
    cell_features: int = 32

    @nn.compact
    def __call__(self, images: jax.Array) -> tuple[jax.Array, dict[str, jax.Array]]:
        b, s = images.shape[0], images.shape[1]
        w = cell_window(s)
        lows = [(c * s) // 3 for c in range(3)]
        x = jnp.stack([images[:, lows[r]:lows[r] + w, lows[c]:lows[c] + w] for r, c in ALL_CELLS], axis=1)
        x = x.reshape(b * len(ALL_CELLS), w, w, 3)
        # Larger images: the first convolution strides down to the ~11-pixel window of S = 32.
        first_stride = max(1, w // 11)
        x = nn.relu(_conv(self.channels[0], first_stride, "conv0")(x))
        for i, ch in enumerate(self.channels[1:], 1):  # each stage halves the window: 11 -> 6 -> 3
            x = nn.relu(_conv(ch, 2, f"conv{i}_down")(x))
            x = nn.relu(_conv(ch, 1, f"conv{i}")(x))
        x = x.reshape(x.shape[0], -1)
        cell_feats = nn.relu(_dense(self.cell_features, ("embed", "mlp"), "cell_features")(x))
        out = _dense(sum(HEADS.values()), ("mlp", None), "cell_heads")(cell_feats)
        out = out.reshape(b, len(ALL_CELLS), -1)
        logits, start = {}, 0
        for name, n in HEADS.items():
            logits[name] = out[..., start:start + n]
            start += n
        feats = cell_feats.reshape(b, -1)
        logits["background"] = _dense(len(BACKGROUND_NAMES), ("mlp", None), "background")(feats)
        return feats, logits


# ---- targets and data ----------------------------------------------------------------------------------------
def scene_targets(scenes: list[Scene]) -> dict[str, np.ndarray]:
    """int32 labels: presence/shape/colour/size [N, 9] (0 where a cell is empty) and background [N]."""
    n, c = len(scenes), len(ALL_CELLS)
    out = {name: np.zeros((n, c), np.int32) for name in HEADS}
    out["background"] = np.array([BACKGROUND_NAMES.index(s.background) for s in scenes], np.int32)
    for i, scene in enumerate(scenes):
        for obj in scene.objects:
            j = ALL_CELLS.index(obj.cell)
            out["presence"][i, j] = 1
            out["shape"][i, j] = SHAPES.index(obj.shape)
            out["colour"][i, j] = COLOUR_NAMES.index(obj.colour)
            out["size"][i, j] = SIZES.index(obj.size)
    return out


def random_scenes(num: int, image_size: int, rng: np.random.Generator) -> tuple[np.ndarray, list[Scene]]:
    """`num` random scenes and their uint8 renderings [num, S, S, 3]."""
    scenes = [sample_scene(rng) for _ in range(num)]
    return np.stack([render(s, image_size, rng) for s in scenes]), scenes


def to_model_input(images: np.ndarray) -> np.ndarray:
    """uint8 [N, S, S, 3] or float in [-1, 1] -> float32 in [-1, 1]."""
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[-1] != 3:
        raise UserError(f"expected images [N, S, S, 3], got shape {images.shape}; pass a batch of RGB images")
    if images.dtype == np.uint8:
        return images.astype(np.float32) / 127.5 - 1.0
    return np.clip(images.astype(np.float32), -1.0, 1.0)


# ---- training --------------------------------------------------------------------------------------------------
def probe_loss(logits: dict[str, jax.Array], targets: dict[str, jax.Array]) -> jax.Array:
    """Cross-entropy of presence and background, plus shape/colour/size on the occupied cells only."""
    ce = optax.softmax_cross_entropy_with_integer_labels
    present = targets["presence"].astype(jnp.float32)
    loss = ce(logits["presence"], targets["presence"]).mean() + ce(logits["background"], targets["background"]).mean()
    for name in ("shape", "colour", "size"):
        loss += (ce(logits[name], targets[name]) * present).sum() / jnp.maximum(present.sum(), 1.0)
    return loss


def train_probe(image_size: int = 32, steps: int = 500, seed: int = 0, batch: int = 64,
                learning_rate: float = 3e-3, log_every: int = 0) -> tuple[ProbeNet, Any]:
    """Trains the probe on freshly rendered random scenes; returns (model, params)."""
    check_image_size(image_size)
    if steps < 1 or batch < 1:
        raise UserError(f"probe training needs steps >= 1 and batch >= 1, got steps={steps}, batch={batch}")
    model = ProbeNet()
    rng = np.random.default_rng(seed)
    params = nn.unbox(model.init(jax.random.key(seed), jnp.zeros((1, image_size, image_size, 3)))["params"])
    schedule = optax.warmup_cosine_decay_schedule(0.0, learning_rate, min(50, steps // 10 + 1), steps)
    tx = optax.adam(schedule)
    opt_state = tx.init(params)

    @jax.jit
    def step(params, opt_state, images, targets):
        def loss_fn(p):
            return probe_loss(model.apply({"params": p}, images)[1], targets)
        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    for i in range(steps):
        images, scenes = random_scenes(batch, image_size, rng)
        params, opt_state, loss = step(params, opt_state, to_model_input(images), scene_targets(scenes))
        if log_every and (i + 1) % log_every == 0:
            print(f"probe step {i + 1}/{steps} loss {float(loss):.4f}", flush=True)
    return model, params


# ---- the trained probe ---------------------------------------------------------------------------------------------
@dataclasses.dataclass
class Probe:
    model: ProbeNet
    params: Any
    image_size: int
    batch: int = 256  # images per forward pass

    def __post_init__(self):
        self._apply = jax.jit(lambda p, x: self.model.apply({"params": p}, x))

    def _run(self, images: np.ndarray) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        x = to_model_input(images)
        if x.shape[1:3] != (self.image_size, self.image_size):
            raise UserError(f"the probe was trained at image size {self.image_size}, got images {x.shape[1:3]}; "
                            f"load the probe for image size {x.shape[1]}")
        feats, logits = [], []
        for start in range(0, len(x), self.batch):
            chunk = x[start:start + self.batch]
            # Pad to a full batch so that one compiled shape serves every call.
            padded = np.concatenate([chunk, np.zeros((self.batch - len(chunk), *chunk.shape[1:]), np.float32)])
            f, l = jax.device_get(self._apply(self.params, padded))
            feats.append(f[:len(chunk)])
            logits.append({k: v[:len(chunk)] for k, v in l.items()})
        return (np.concatenate(feats).astype(np.float64),
                {k: np.concatenate([l[k] for l in logits]) for k in logits[0]})

    def features(self, images: np.ndarray) -> np.ndarray:
        """Penultimate features [N, F] (float64) of uint8 or [-1, 1] float images [N, S, S, 3]."""
        return self._run(images)[0]

    def logits(self, images: np.ndarray) -> dict[str, np.ndarray]:
        """Head logits: presence/shape/colour/size [N, 9, K] and background [N, K] (`scene_targets`' layout)."""
        return self._run(images)[1]

    def predict_labels(self, images: np.ndarray) -> dict[str, np.ndarray]:
        """Arg-max labels in the layout of `scene_targets`."""
        return {k: v.argmax(-1) for k, v in self.logits(images).items()}

    def predict(self, images: np.ndarray) -> list[Scene | None]:
        """The scene read from each image; None where the probe sees no object or more than 3."""
        return labels_to_scenes(self.predict_labels(images))


def labels_to_scenes(labels: dict[str, np.ndarray]) -> list[Scene | None]:
    """Scenes from labels in the layout of `scene_targets`; None where no cell or more than 3 are occupied."""
    scenes = []
    for i in range(len(labels["background"])):
        objects = [ShapeObject(shape=SHAPES[labels["shape"][i, j]], colour=COLOUR_NAMES[labels["colour"][i, j]],
                               size=SIZES[labels["size"][i, j]], row=row, col=col)
                   for j, (row, col) in enumerate(ALL_CELLS) if labels["presence"][i, j]]
        ok = 1 <= len(objects) <= MAX_OBJECTS
        scenes.append(Scene(tuple(objects), BACKGROUND_NAMES[labels["background"][i]]) if ok else None)
    return scenes


def probe_accuracy(probe: Probe, images: np.ndarray, scenes: list[Scene]) -> dict[str, float]:
    """Per-attribute accuracy: presence per cell, shape/colour/size on occupied cells, background per image."""
    want, got = scene_targets(scenes), probe.predict_labels(images)
    present = want["presence"] == 1
    acc = {"presence": float(np.mean(got["presence"] == want["presence"])),
           "background": float(np.mean(got["background"] == want["background"]))}
    for name in ("shape", "colour", "size"):
        acc[name] = float(np.mean(got[name][present] == want[name][present]))
    return acc


# ---- cache -------------------------------------------------------------------------------------------------------
def default_cache_dir(image_size: int) -> str:
    root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(root, "llmimg_jax", "probe", f"s{image_size}")


def _write_atomic(path: str, data: bytes) -> None:
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def load_or_train_probe(cache_dir: str | None = None, image_size: int = 32, *, steps: int = 500, seed: int = 0,
                        batch: int = 64, verbose: bool = False) -> Probe:
    """The cached probe for `image_size` (in `cache_dir`, default ~/.cache/llmimg_jax/probe/s{S}); trained,
    checked on 500 held-out images and cached when missing or made with other settings."""
    check_image_size(image_size)
    cache_dir = cache_dir or default_cache_dir(image_size)
    settings = {"version": VERSION, "image_size": image_size, "steps": steps, "seed": seed, "batch": batch}
    params_path, settings_path = os.path.join(cache_dir, "params.msgpack"), os.path.join(cache_dir, "settings.json")
    model = ProbeNet()
    if os.path.isfile(settings_path) and os.path.isfile(params_path):
        with open(settings_path) as f:
            cached = json.load(f)
        if {k: cached.get(k) for k in settings} == settings:
            template = nn.unbox(jax.eval_shape(model.init, jax.random.key(0),
                                               jnp.zeros((1, image_size, image_size, 3)))["params"])
            template = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), template)
            with open(params_path, "rb") as f:
                params = serialization.from_bytes(template, f.read())
            return Probe(model, params, image_size)
    start = time.time()
    model, params = train_probe(image_size, steps, seed, batch, log_every=100 if verbose else 0)
    probe = Probe(model, params, image_size)
    # Validation images from seeds far from the training stream's.
    images, scenes = random_scenes(500, image_size, np.random.default_rng([seed, 10**6]))
    accuracy = probe_accuracy(probe, images, scenes)
    os.makedirs(cache_dir, exist_ok=True)
    _write_atomic(params_path, serialization.to_bytes(jax.device_get(params)))
    record = {**settings, "validation_accuracy": accuracy, "train_seconds": round(time.time() - start, 1)}
    _write_atomic(settings_path, (json.dumps(record, indent=2) + "\n").encode())
    if verbose:
        print(f"probe trained in {record['train_seconds']} s; validation accuracy {accuracy}", flush=True)
    return probe
