"""Networks: pixel encoder, SAC actor/critic, and the MLR predictive latent decoder with its heads."""
