"""The data path: frame storage, uniform and prioritized replays, the collector stream, augmentation."""
