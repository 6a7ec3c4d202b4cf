"""Default `mesh`, `sharding_rules` and `train` sections of every training config."""

import ml_collections

# Logical axis name -> mesh axes (maxtext style). Names not listed are replicated; a dimension that its mesh
# axes do not divide evenly is replicated too.
DEFAULT_SHARDING_RULES = (
    ("batch", ("data", "fsdp")),
    ("vocab", "tensor"),
    ("embed", "fsdp"),
    ("mlp", "tensor"),
    ("heads", "tensor"),
    ("kv", None),
    ("conv_in", "fsdp"),
    ("conv_out", "tensor"),
    ("time", None),
    ("norm", None),
    ("pos", None),
)


def default_mesh_config() -> ml_collections.ConfigDict:
    # One of data/fsdp/tensor may be -1 (the rest of the devices). dcn_* split the mesh across slices/hosts.
    return ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1, dcn_data=1, dcn_fsdp=1, dcn_tensor=1))


def default_train_config() -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(dict(
        steps=1000,
        batch_size=32,            # global batch, over all processes
        grad_accum=1,             # micro-batches per step
        lr=3e-4,
        warmup_steps=100,
        lr_schedule="cosine",     # 'cosine' | 'constant'
        min_lr_ratio=0.1,
        b1=0.9,
        b2=0.999,
        weight_decay=0.0,
        grad_clip=1.0,
        compute_dtype="float32",  # 'bfloat16' for mixed precision; master weights stay float32
        ema_decay=0.999,
        ema_warmup=True,          # decay min(ema_decay, (1 + step) / (10 + step)): short runs get a useful average
        checkpoint_every=500,
        max_to_keep=3,
        log_every=50,
        eval_every=0,             # 0: never
        sample_every=0,           # 0: never
        nonfinite="stop",         # 'stop' | 'skip' (skipped steps are counted in the log)
        time_limit_minutes=0.0,   # > 0: the run ends within this many minutes of its start, its step count (at most
                                  # `steps`) fitted to the measured speed so that the schedule still ends (loop.py)
    ))
