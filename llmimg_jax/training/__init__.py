"""Distributed training runtime: mesh, sharding rules, train state, the training loop, checkpoints."""
