"""omni_ds: train LLaMA-Omni-style speech-language models on DeepSpeed."""

__version__ = "0.1.0"
