"""Environment builders: each returns a TorchRL ``EnvBase`` with the paper's observation protocol."""
