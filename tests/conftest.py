"""Test session setup: 8 fake CPU devices (multi-device code runs on a laptop) and a shared cache.

XLA_FLAGS must be set before jax is first imported, so it happens here at collection time.
JAXLLM_CACHE defaults to the user's cache so real corpora fetched once are reused across runs.
"""
import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
