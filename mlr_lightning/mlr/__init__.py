"""Mask-based Latent Reconstruction: cube masks, the two views, the decoder, the heads, the loss.

Both agents build their MLR loss from these pieces; nothing here knows about SAC or Rainbow.
"""
