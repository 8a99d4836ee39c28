"""jaxllm: a JAX research framework for building a chat model end to end."""
__version__ = "0.1.0"
