"""Networks: the DMC pixel encoder and SAC actor/critic, the Rainbow network, inits and target updates."""
