"""`llmimg train`: train the model a config describes, resuming from the workdir's latest checkpoint."""

from __future__ import annotations

import argparse

from llmimg_jax.config import apply_overrides, load_config, save_config


def register(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser(
        "train",
        help="train a model (language model, diffusion, GAN, captioner) from a config",
        description="Train from a Python config; override any key with --config.KEY=VALUE. "
        "Re-running with the same workdir resumes from its latest checkpoint.",
    )
    p.add_argument("--config", required=True, help="configs/NAME.py or configs/NAME.py:VARIANT")
    p.add_argument("--workdir", required=True, help="where checkpoints, logs and samples go")
    multi = p.add_argument_group("multi-host (one process per host; omit on a single host)")
    multi.add_argument("--coordinator", help="HOST:PORT of process 0")
    multi.add_argument("--num-processes", type=int, help="number of processes in the job")
    multi.add_argument("--process-id", type=int, help="this process's index, 0..N-1")
    multi.add_argument("--distributed", action="store_true",
                       help="initialise from the cluster environment (TPU pod, SLURM) instead of the flags above")
    p.set_defaults(run=run, takes_overrides=True)


def run(args: argparse.Namespace) -> None:
    config = load_config(args.config)
    apply_overrides(config, args.overrides)
    # jax.distributed must be initialised before any other JAX call.
    from llmimg_jax.training import distributed

    distributed.initialize(args.coordinator, args.num_processes, args.process_id,
                           from_environment=args.distributed)
    import jax

    if jax.process_index() == 0:
        save_config(config, args.workdir)
    from llmimg_jax.training.main import train_main

    train_main(config, args.workdir)
