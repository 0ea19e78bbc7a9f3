"""The agents as LightningModules: SAC+MLR (DMC) and Rainbow+MLR (Atari-100k), on a shared base."""
