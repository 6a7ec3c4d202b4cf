"""Evaluation: Shapes alignment scoring, the probe network and Fréchet distance, diversity, plots, reports."""
