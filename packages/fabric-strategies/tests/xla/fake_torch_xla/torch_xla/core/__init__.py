"""Fake ``torch_xla.core``."""
