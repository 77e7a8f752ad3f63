"""Code copied into non-uniform checkpoints so they load with ``trust_remote_code=True``."""
