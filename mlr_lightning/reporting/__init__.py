"""Turning runs into results: comparison tables, the Atari table, latent analyses, plots, the paper's numbers."""
