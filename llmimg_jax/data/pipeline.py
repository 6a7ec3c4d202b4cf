"""Deterministic, per-process, resumable batches.

The position in the data IS the training step. The data is an endless sequence of epochs; epoch e is a
permutation of the source drawn from (seed, e); global batch k covers stream positions [k*B, (k+1)*B). So a run
restarted at step k sees exactly the batches an uninterrupted run sees from step k, whatever the process count.
Process p of P reads only rows [p*B/P, (p+1)*B/P) of each global batch.
"""

from __future__ import annotations

import queue
import threading
from typing import Callable, Iterator, Sequence

import numpy as np

from llmimg_jax.errors import UserError

Preprocess = Callable[[dict, np.random.Generator], dict[str, np.ndarray]]

# Distinguishes the random streams drawn from one seed.
_PERMUTATION_STREAM = 0
_PREPROCESS_STREAM = 1
ORDER_VERSION = 1  # bump when the order of examples for a given state() changes


def default_image_preprocess(example: dict, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """uint8 image [S, S, 3] -> float32 `image` in [-1, 1]."""
    del rng  # no random augmentation
    return {"image": np.asarray(example["image"], np.float32) / 127.5 - 1.0}


class Pipeline:
    """Batches of `preprocess(source[i], rng)` in a fixed, seed-determined order (see the module docstring)."""

    def __init__(self, source, *, global_batch_size: int, seed: int, preprocess: Preprocess,
                 shuffle: bool = True, process_index: int | None = None, process_count: int | None = None,
                 prefetch: int = 2):
        if process_index is None or process_count is None:
            import jax

            process_index = jax.process_index() if process_index is None else process_index
            process_count = jax.process_count() if process_count is None else process_count
        if len(source) == 0:
            raise UserError("the data source is empty; check data.source and its split")
        if global_batch_size <= 0 or global_batch_size % process_count:
            raise UserError(f"global batch size {global_batch_size} must be a positive multiple of the process count "
                            f"{process_count}; change train.batch_size")
        if not 0 <= process_index < process_count:
            raise ValueError(f"process_index {process_index} not in [0, {process_count})")
        self.source = source
        self.global_batch_size = global_batch_size
        self.seed = int(seed) % 2**63  # SeedSequence needs a non-negative entropy
        self.preprocess = preprocess
        self.shuffle = shuffle
        self.process_index, self.process_count = process_index, process_count
        self.local_batch_size = global_batch_size // process_count
        self.prefetch = max(1, prefetch)
        self._num_examples = len(source)
        self._permutations: dict[int, np.ndarray] = {}  # a few recent epochs; batches are read in order
        self._lock = threading.Lock()  # the prefetch thread and the caller may both read batches

    def state(self) -> dict:
        """What a checkpoint stores next to the step so that a restart can check the position still means the same."""
        return {"order_version": ORDER_VERSION, "seed": self.seed, "global_batch_size": self.global_batch_size,
                "source_length": self._num_examples, "shuffle": bool(self.shuffle)}

    def check_state(self, saved: dict) -> None:
        """Raises UserError when a checkpoint's `state()` does not match this pipeline (resuming would be wrong)."""
        current = self.state()
        diff = [f"{k}: checkpoint {saved.get(k)!r} vs now {v!r}" for k, v in current.items() if saved.get(k) != v]
        if diff:
            raise UserError("the data pipeline differs from the checkpoint's (" + "; ".join(diff) +
                            "); restore the original data config or start a new workdir")

    def _permutation(self, epoch: int) -> np.ndarray:
        with self._lock:
            if epoch not in self._permutations:
                if len(self._permutations) >= 4:
                    self._permutations.pop(min(self._permutations))
                if self.shuffle:
                    rng = np.random.default_rng([self.seed, _PERMUTATION_STREAM, epoch])
                    self._permutations[epoch] = rng.permutation(self._num_examples)
                else:
                    self._permutations[epoch] = np.arange(self._num_examples)
            return self._permutations[epoch]

    def example_indices(self, step: int) -> list[tuple[int, int]]:
        """(epoch, source index) of this process's rows of global batch `step`."""
        start = step * self.global_batch_size + self.process_index * self.local_batch_size
        out = []
        for position in range(start, start + self.local_batch_size):
            epoch, offset = divmod(position, self._num_examples)
            out.append((epoch, int(self._permutation(epoch)[offset])))
        return out

    def local_batch(self, step: int) -> dict[str, np.ndarray]:
        """This process's rows of global batch `step`, stacked: each value is [B / process_count, ...]."""
        if step < 0:
            raise ValueError(f"step must be >= 0, got {step}")
        rows = []
        for epoch, index in self.example_indices(step):
            rng = np.random.default_rng([self.seed, _PREPROCESS_STREAM, epoch, index])
            rows.append(self.preprocess(self.source[index], rng))
        return {key: np.stack([row[key] for row in rows]) for key in rows[0]}

    def global_batches(self, start_step: int, mesh, batch_axes: Sequence[str] = ("data", "fsdp")) -> Iterator[dict]:
        """Global batches from `start_step` on, as jax.Arrays split over `batch_axes` of `mesh` (axes the mesh
        lacks are left out). Local batches are prepared `prefetch` ahead on a background thread."""
        import jax
        from jax.sharding import NamedSharding, PartitionSpec

        axes = tuple(a for a in batch_axes if a in mesh.axis_names)
        shards = int(np.prod([mesh.shape[a] for a in axes])) if axes else 1
        if self.global_batch_size % shards:
            raise UserError(f"global batch size {self.global_batch_size} is not divisible by the {shards} "
                            f"batch shards of mesh axes {axes}; change train.batch_size or the mesh")
        sharding = NamedSharding(mesh, PartitionSpec(axes if axes else None))
        # This process's devices must hold exactly the rows it reads, else processes would feed mismatched data.
        needed = set()
        for index in sharding.addressable_devices_indices_map((self.global_batch_size,)).values():
            needed.update(range(*index[0].indices(self.global_batch_size)))
        start = self.process_index * self.local_batch_size
        if needed != set(range(start, start + self.local_batch_size)):
            raise UserError(f"the mesh puts rows {min(needed)}..{max(needed)} of each batch on process "
                            f"{self.process_index}'s devices but it reads rows {start}..{start + self.local_batch_size - 1}"
                            "; lay the mesh out so each process's devices hold one contiguous block of the batch axes")
        for local in self._prefetched(start_step):
            yield {key: jax.make_array_from_process_local_data(sharding, value) for key, value in local.items()}

    def _prefetched(self, start_step: int) -> Iterator[dict[str, np.ndarray]]:
        """local_batch(start_step), local_batch(start_step + 1), ... computed on a background thread."""
        buffer: queue.Queue = queue.Queue(maxsize=self.prefetch)
        stop = threading.Event()

        def put(item) -> bool:
            while not stop.is_set():
                try:
                    buffer.put(item, timeout=0.1)
                    return True
                except queue.Full:
                    continue
            return False

        def produce():
            step = start_step
            try:
                while put((step, self.local_batch(step), None)):
                    step += 1
            except BaseException as e:  # handed to the consumer, which re-raises it
                put((step, None, e))

        thread = threading.Thread(target=produce, name="llmimg-data-prefetch", daemon=True)
        thread.start()
        try:
            while True:
                step, batch, error = buffer.get()
                if error is not None:
                    if hasattr(error, "add_note"):
                        error.add_note(f"(raised on the data thread while preparing batch {step})")
                    raise error  # the original type, so a UserError still reaches the user as one
                yield batch
        finally:
            stop.set()
            thread.join(timeout=10)
