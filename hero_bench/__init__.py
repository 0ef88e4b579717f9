"""hero-bench: HERO and its baselines, benchmarked with Ray Tune and W&B."""

__version__ = "0.1.0"
