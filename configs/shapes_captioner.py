"""The captioner: a conv image encoder + GPT-2 (prefix-conditioned) trained to describe Shapes images.

    llmimg train --config configs/shapes_captioner.py --workdir W          # default: 11 minutes on one CPU core,
                                                                            # 99.6 % exact match (500 val. images)
    llmimg train --config configs/shapes_captioner.py:tiny --workdir W     # tests: seconds
    llmimg train --config configs/shapes_captioner.py --workdir W --config.text.lm_workdir=LM_W   # start from an LM
"""

from llmimg_jax.config import base_config
from llmimg_jax.text.captioner_task import default_captioner_config
from llmimg_jax.text.lm_task import default_lm_config


def get_config(arg=None):
    config = base_config()
    config.task = "captioner"
    config.lm = default_lm_config()          # the LM when trained from scratch (no text.lm_workdir / hf_dir)
    config.captioner = default_captioner_config()
    config.text.vocab_size = 512             # Shapes text has a few dozen words
    config.lm.update(dict(preset="tiny", n_layer=4, n_embd=128, n_head=4, max_length=64))
    config.train.update(dict(steps=2000, batch_size=32, lr=1e-3, warmup_steps=100, weight_decay=0.01,
                             ema_decay=0.99, checkpoint_every=500, log_every=50, eval_every=1000, sample_every=0))
    if arg == "tiny":
        config.data.update(dict(shapes_num_train=256, shapes_num_validation=32, shapes_num_test=32))
        config.lm.update(dict(n_layer=2, n_embd=32, n_head=2, max_length=64))
        config.captioner.update(dict(num_prefix=4, channels=(8, 16), strides=(2, 2), hidden=64, eval_num=8))
        config.train.update(dict(steps=20, batch_size=8, lr=3e-3, warmup_steps=2, checkpoint_every=10, log_every=5,
                                 eval_every=0, sample_every=0))
    elif arg == "quickstart":
        # `llmimg quickstart --captioner`: the default model and budget, measured by the quickstart's report.
        config.train.update(dict(eval_every=0, checkpoint_every=1000))
    elif arg is not None:
        raise ValueError(f"unknown variant '{arg}'; use configs/shapes_captioner.py, "
                         "configs/shapes_captioner.py:tiny or configs/shapes_captioner.py:quickstart")
    return config
