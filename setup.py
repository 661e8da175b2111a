"""omni_ds: LLaMA-Omni-style speech-language model training on DeepSpeed.

torch is deliberately not pinned to a build here: install scripts install it first (TORCH_SPEC),
so GPU users keep their CUDA build and CPU machines get the CPU wheel.
"""
from setuptools import find_packages, setup

setup(
    name="omni_ds",
    version="0.1.0",
    description="Train LLaMA-Omni-style speech-language models on DeepSpeed",
    packages=find_packages(include=["omni_ds", "omni_ds.*"]),
    python_requires=">=3.10",
    install_requires=[
        "torch>=2.3",
        "transformers>=4.57,<6",
        "tokenizers>=0.21",
        "safetensors>=0.4",
        "deepspeed>=0.16",
        # transformers needs it for ZeRO-3 loading (HfDeepSpeedConfig) and for GGUF files
        "accelerate>=0.26",
        "datasets>=3.0",
        "soundfile>=0.12",
        "soxr>=0.3",
        "numpy>=1.24",
        "tqdm>=4.66",
        "tensorboard>=2.15",
    ],
    extras_require={
        # gguf: the GGUF -> HF conversion test of the real-small variant (a 118 kB wheel)
        # peft: the LoRA tests (stage 1 with lora.rank)
        "dev": ["pytest>=8", "scikit-learn>=1.3", "joblib>=1.3", "espeakng-loader==0.2.4", "gguf", "peft>=0.17"],
        # The demo data: eSpeak NG (bundled in a wheel) speaks the generated clips; the tiny
        # k-means is a scikit-learn model, as the released one is.
        "demo": ["espeakng-loader==0.2.4", "scikit-learn>=1.3", "joblib>=1.3"],
        # Reading the released joblib k-means (.bin; an allow-list unpickler, scikit-learn classes
        # as inert stand-ins, so scikit-learn itself is not needed); .npy centroids need neither.
        "units": ["joblib>=1.3"],
        # LoRA on the LLM in stage 1 (config section `lora`); QLoRA's 4-bit base also needs
        # bitsandbytes and a CUDA GPU.
        "lora": ["peft>=0.17"],
        "qlora": ["peft>=0.17", "bitsandbytes>=0.43"],
        # The reference fairseq path; fairseq 0.12.2 does not import on Python >= 3.11.
        "fairseq": ["fairseq-fixed==0.12.3.1; python_version>='3.11'",
                    "fairseq==0.12.2; python_version<'3.11'"],
        "wandb": ["wandb"],
    },
)
