"""Benchmarks against peer libraries and scaling figures: `python -m llmimg_jax.bench [--quick]`.

One module per row family (diffusion train step and sampling vs diffusers, LM sampling vs transformers, GAN
generation, scaling on simulated devices); `report.py` renders the one table and `benchmarks/RESULTS.md`.
Peer libraries (torch, diffusers, transformers) are imported only inside the functions that need them.
"""
