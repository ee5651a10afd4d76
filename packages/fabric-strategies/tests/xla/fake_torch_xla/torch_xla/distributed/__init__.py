"""Fake ``torch_xla.distributed``."""
