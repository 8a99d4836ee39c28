"""Byte-level BPE tokenizers: train our own, load OpenAI's, encode/decode through tiktoken."""
from jaxllm.tokenizer.core import PATTERNS, SPECIAL_TOKENS, Tokenizer
from jaxllm.tokenizer.pretrained import ENCODINGS, load_encoding, load_tokenizer
from jaxllm.tokenizer.train import TokenizerConfig, train_tokenizer

__all__ = ["PATTERNS", "SPECIAL_TOKENS", "Tokenizer", "ENCODINGS", "load_encoding", "load_tokenizer",
           "TokenizerConfig", "train_tokenizer"]
