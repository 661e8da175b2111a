"""Checkpoint I/O: build from parts (stage 1), save/load the LLaMA-Omni folder layout.

Folder layout (what the released ICTNLP/Llama-3.1-8B-Omni has, and what we write):
  config.json     the LLM's config + LLaMA-Omni keys (+ an "omni_ds" block for our extras)
  model*.safetensors (+ model.safetensors.index.json when sharded) with LLaMA-Omni names:
      model.* / lm_head.*          the LLM, under its own Hugging Face names
      model.speech_projector.*     linear1 / linear2
      model.speech_encoder.*       the Whisper encoder under openai-whisper names
      speech_generator.*           the CTC decoder
  tokenizer files, generation_config.json, omni_ds_training.json (training metadata)
"""
from __future__ import annotations

import json
import logging
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Optional

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, WhisperConfig
from transformers import logging as hf_logging

from omni_ds.hf_compat import legacy_rope_keys, save_portable_tokenizer
from omni_ds.model.omni_config import OmniConfig
from omni_ds.model.omni_model import OmniSpeechModel
from omni_ds.model.speech_encoder import hf_to_openai_name, openai_to_hf_name
from omni_ds.precision import cast_parameters
from omni_ds.model.whisper_dims import (WhisperDimsError, check_against_weights, config_from_openai_checkpoint,
                                        config_from_published_size, config_from_saved, saved_dims)

log = logging.getLogger(__name__)
MAX_SHARD_BYTES = 5 * 1024**3
_ENCODER_INTERNAL = "speech_encoder.encoder."
_ENCODER_RELEASED = "model.speech_encoder."
# HF Whisper keys that the encoder does not need (decoder, lm head) are skipped on load.
_HF_WHISPER_ENCODER_PREFIXES = ("model.encoder.", "encoder.")


# ---- names ---------------------------------------------------------------------------------------
def to_release_name(name: str) -> str:
    """Internal parameter name -> LLaMA-Omni name."""
    if name.startswith("llm."):
        return name[len("llm."):]
    if name.startswith("speech_projector."):
        return "model." + name
    if name.startswith(_ENCODER_INTERNAL):
        return _ENCODER_RELEASED + hf_to_openai_name(name[len(_ENCODER_INTERNAL):])
    if name.startswith("speech_generator."):
        return name
    raise KeyError(f"parameter {name!r} has no LLaMA-Omni name")


def from_release_name(name: str) -> str:
    """LLaMA-Omni name -> internal parameter name."""
    if name.startswith("model.speech_projector."):
        return name[len("model."):]
    if name.startswith(_ENCODER_RELEASED):
        return _ENCODER_INTERNAL + openai_to_hf_name(name[len(_ENCODER_RELEASED):])
    if name.startswith("speech_generator."):
        return name
    return "llm." + name


def omni_state_dict(state_dict: dict[str, torch.Tensor], tie_word_embeddings: bool = False) -> dict:
    """Internal state dict -> LLaMA-Omni names; rotary caches and tied lm_head dropped."""
    out = {}
    for name, tensor in state_dict.items():
        if name.endswith("rotary_emb.inv_freq") or ".rotary_emb." in name:
            continue
        if tie_word_embeddings and name == "llm.lm_head.weight":
            continue   # tied to model.embed_tokens; safetensors refuses shared storage
        out[to_release_name(name)] = tensor
    return out


# ---- loading tensors into (possibly ZeRO-3 partitioned) modules ------------------------------------
@contextmanager
def _gathered(params: list[nn.Parameter]):
    """Gather ZeRO-3 partitioned parameters for an in-place write on rank 0; no-op otherwise."""
    if any(hasattr(p, "ds_id") for p in params):
        import deepspeed
        with deepspeed.zero.GatheredParameters(params, modifier_rank=0):
            yield
    else:
        yield


def load_into(module: nn.Module, state: dict[str, torch.Tensor], what: str, strict: bool = True) -> None:
    """Copy `state` (module-relative names) into `module`; names missing/unexpected are errors."""
    own = dict(module.named_parameters())
    own.update({n: b for n, b in module.named_buffers() if not n.endswith("inv_freq")})
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    if strict and (missing or unexpected):
        raise ValueError(f"{what}: missing weights {missing[:8]}{'...' if len(missing) > 8 else ''}, "
                         f"unexpected weights {unexpected[:8]}{'...' if len(unexpected) > 8 else ''}")
    with _gathered([p for p in own.values() if isinstance(p, nn.Parameter)]):
        with torch.no_grad():
            for name, tensor in state.items():
                target = own[name]
                if hasattr(target, "ds_shape") and tuple(target.ds_shape) != tuple(tensor.shape) or \
                        not hasattr(target, "ds_shape") and target.shape != tensor.shape:
                    raise ValueError(f"{what}: weight {name!r} has shape {tuple(tensor.shape)}, "
                                     f"the model expects {tuple(getattr(target, 'ds_shape', target.shape))}")
                target.data.copy_(tensor.to(target.dtype))


# ---- safetensors folders -----------------------------------------------------------------------------
def _safetensors_files(folder: Path) -> list[Path]:
    index = folder / "model.safetensors.index.json"
    if index.exists():
        names = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        return [folder / n for n in names]
    return sorted(folder.glob("*.safetensors"))


def read_tensors(folder: Path, select) -> dict[str, torch.Tensor]:
    """Tensors whose (file) name satisfies `select`, from every safetensors file of `folder`."""
    out = {}
    for f in _safetensors_files(folder):
        with safe_open(str(f), framework="pt") as st:
            for name in st.keys():
                if select(name):
                    out[name] = st.get_tensor(name)
    return out


def write_safetensors(state: dict[str, torch.Tensor], folder: Path, max_shard_bytes: int = MAX_SHARD_BYTES) -> None:
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for name in sorted(state):
        t = state[name].detach().to("cpu").contiguous()
        nbytes = t.numel() * t.element_size()
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][name] = t
        size += nbytes
    if len(shards) == 1:
        save_file(shards[0], str(folder / "model.safetensors"), metadata={"format": "pt"})
        return
    weight_map, total = {}, 0
    for i, shard in enumerate(shards):
        fname = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        save_file(shard, str(folder / fname), metadata={"format": "pt"})
        for name, t in shard.items():
            weight_map[name] = fname
            total += t.numel() * t.element_size()
    (folder / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))


# ---- the speech encoder ---------------------------------------------------------------------------------
def load_whisper_encoder_weights(path: str | Path) -> tuple[WhisperConfig, dict[str, torch.Tensor]]:
    """Encoder config + weights (transformers' encoder names) from an HF Whisper folder or an
    openai-whisper checkpoint (.pt, e.g. large-v3.pt as the official code loads). The dimensions
    come from the folder's config or the checkpoint's `dims`, checked against the weights."""
    path = Path(path)
    if path.is_dir():
        config = WhisperConfig.from_pretrained(str(path))
        state = read_tensors(path, lambda n: n.startswith(_HF_WHISPER_ENCODER_PREFIXES))
        if not state:
            raise FileNotFoundError(f"{path}: no Whisper encoder weights (model.encoder.* / encoder.*) "
                                    "in its safetensors files")
        state = {n.split("encoder.", 1)[1]: t for n, t in state.items()}
        check_against_weights(config, {hf_to_openai_name(n): t for n, t in state.items()}, f"{path}/config.json")
        return config, state
    if path.suffix == ".pt":
        dims, raw = _read_openai_checkpoint(path)
        config = config_from_openai_checkpoint(dims, raw, str(path))
        return config, {openai_to_hf_name(n): t for n, t in raw.items()}
    raise FileNotFoundError(f"speech encoder {path}: expected a Hugging Face Whisper folder or an "
                            "openai-whisper .pt checkpoint")


def _read_openai_checkpoint(path: Path) -> tuple[Any, dict[str, torch.Tensor]]:
    """(dims, encoder weights under openai-whisper names) of an openai-whisper checkpoint.
    They are plain dicts of tensors: weights_only loading suffices; mmap avoids reading the
    decoder half of large-v3.pt into memory."""
    ckpt = torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)
    if not isinstance(ckpt, dict) or "model_state_dict" not in ckpt:
        raise ValueError(f"{path}: not an openai-whisper checkpoint (no 'model_state_dict')")
    raw = {n[len("encoder."):]: t for n, t in ckpt["model_state_dict"].items() if n.startswith("encoder.")}
    return ckpt.get("dims"), raw


def _inline_encoder_config(folder: Path, raw_config: dict, state: dict[str, torch.Tensor]) -> WhisperConfig:
    """Dimensions of an encoder stored inside a LLaMA-Omni folder: the omni_ds block when we wrote
    the folder; else the openai-whisper checkpoint config['speech_encoder'] names, as the official
    loader builds the encoder from it; else the published Whisper size these weights match."""
    source = f"{folder}/config.json"
    ours = raw_config.get("omni_ds", {})
    if "speech_encoder_config" in ours:
        return config_from_saved(ours["speech_encoder_config"], state, f"{source} (omni_ds.speech_encoder_config)")
    try:
        pt = _resolve(folder, raw_config.get("speech_encoder"))
    except FileNotFoundError:
        pt = None
    if pt is not None and pt.suffix == ".pt":
        return config_from_openai_checkpoint(_read_openai_checkpoint(pt)[0], state, str(pt))
    return config_from_published_size(state, source)


# ---- public API ----------------------------------------------------------------------------------------------
def build_from_parts(whisper_path: str | Path, llm_path: str | Path, omni_config: OmniConfig,
                     tokenizer_path: str | Path | None = None, dtype: torch.dtype = torch.float32,
                     attn_implementation: str = "sdpa", quantization=None):
    """Stage 1 start: a Whisper folder (or .pt) + a causal-LM folder (+ tokenizer) -> model.

    Under ZeRO-3 create an HfDeepSpeedConfig first, so transformers' from_pretrained partitions
    the LLM while loading; the speech parts are built whole (deepspeed.initialize partitions them).
    `quantization`: a transformers quantization config for the LLM (QLoRA's 4-bit base, on this
    process's CUDA device).
    """
    whisper_config, enc_state = load_whisper_encoder_weights(whisper_path)
    llm = _load_llm(llm_path, dtype, attn_implementation, quantization=quantization)
    omni_config = omni_config.replace(speech_encoder=str(whisper_path))
    model = OmniSpeechModel(omni_config, whisper_config, llm)
    cast_parameters(model, dtype)
    load_into(model.speech_encoder.encoder, enc_state, f"speech encoder from {whisper_path}")
    return model, load_tokenizer(tokenizer_path or llm_path)


def resolve_attn_implementation(name: str) -> str:
    """"auto": flash-attention 2 when installed and a CUDA GPU is present, else PyTorch SDPA."""
    if name != "auto":
        return name
    try:
        import flash_attn  # noqa: F401
        return "flash_attention_2" if torch.cuda.is_available() else "sdpa"
    except ImportError:
        return "sdpa"


def _load_llm(path, dtype, attn_implementation, config=None, quantization=None):
    attn_implementation = resolve_attn_implementation(attn_implementation)
    quiet = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()   # LLaMA-Omni folders hold non-LLM weights: expected "unused"
    extra = {}
    if quantization is not None:       # bitsandbytes quantizes while placing the weights on the GPU
        extra = {"quantization_config": quantization, "device_map": {"": int(os.environ.get("LOCAL_RANK", 0))}}
    try:
        return AutoModelForCausalLM.from_pretrained(str(path), config=config, dtype=dtype,
                                                    attn_implementation=attn_implementation, **extra)
    finally:
        hf_logging.set_verbosity(quiet)


def _ensure_pad_token(tokenizer) -> None:
    """Llama-3 has no pad token; use <|finetune_right_pad_id|> as the official inference does
    (id 128004), else fall back to the end-of-sequence token."""
    if tokenizer.pad_token_id is None:
        pad = "<|finetune_right_pad_id|>"
        if pad in tokenizer.get_vocab():
            tokenizer.pad_token = pad
        else:
            tokenizer.pad_token = tokenizer.eos_token


# Keys of a LLaMA-Omni config.json that are not the LLM's own.
_OMNI_KEYS = frozenset(OmniConfig(with_speech_generator=True).to_llama_omni_keys(0)) | {
    "omni_ds", "model_type", "architectures", "freeze_speech_projector", "tune_speech_projector", "auto_map"}


def omni_llm_config(raw_config: dict):
    """The LLM's config inside a LLaMA-Omni folder's config.json (the omni keys left out)."""
    llm_type = raw_config.get("omni_ds", {}).get("llm_model_type", "llama")
    return AutoConfig.for_model(llm_type, **{k: v for k, v in raw_config.items() if k not in _OMNI_KEYS})


def load_tokenizer(path: str | Path, llm_config=None):
    """The tokenizer of a LLaMA-Omni folder or of a plain LLM/tokenizer folder, pad token set.

    A LLaMA-Omni folder's LLM config is handed to AutoTokenizer: transformers 5 reads config.json
    itself, does not know model_type omni_speech2s_llama, and its generic-config fallback fails on
    the released folder's Llama-3 rope_scaling.
    """
    path = Path(path)
    if llm_config is None and (path / "config.json").is_file():
        raw = json.loads((path / "config.json").read_text())
        if str(raw.get("model_type", "")).startswith("omni_speech"):
            llm_config = omni_llm_config(raw)
    kwargs = {"config": llm_config} if llm_config is not None else {}
    tokenizer = AutoTokenizer.from_pretrained(str(path), **kwargs)
    _ensure_pad_token(tokenizer)
    return tokenizer


def folder_omni_config(raw_config: dict, omni_overrides: Optional[dict] = None,
                       with_speech_generator: Optional[bool] = None) -> OmniConfig:
    """The OmniConfig a folder's config.json gives, with a run's overrides: what load_omni_folder
    builds, and what the dry run plans with (no weights read)."""
    omni_config = OmniConfig.from_config_dict(raw_config)
    if with_speech_generator is not None:
        omni_config = omni_config.replace(with_speech_generator=with_speech_generator)
    if omni_overrides:
        omni_config = omni_config.replace(**omni_overrides)
    return omni_config


def load_omni_folder(path: str | Path, dtype: torch.dtype = torch.float32,
                     omni_overrides: Optional[dict] = None, attn_implementation: str = "sdpa",
                     with_speech_generator: Optional[bool] = None):
    """Load a LLaMA-Omni-layout folder (released, or written by save_omni_folder)."""
    path = Path(path)
    cfg_file = path / "config.json"
    if not cfg_file.exists():
        raise FileNotFoundError(f"{path}: no config.json; not a LLaMA-Omni model folder")
    raw = json.loads(cfg_file.read_text())
    omni_config = folder_omni_config(raw, omni_overrides, with_speech_generator)
    llm_config = omni_llm_config(raw)
    llm = _load_llm(path, dtype, attn_implementation, config=llm_config)

    enc_state = read_tensors(path, lambda n: n.startswith(_ENCODER_RELEASED))
    if enc_state:
        openai_named = {n[len(_ENCODER_RELEASED):]: t for n, t in enc_state.items()}
        whisper_config = _inline_encoder_config(path, raw, openai_named)
        enc_state = {openai_to_hf_name(n): t for n, t in openai_named.items()}
    else:
        # The official loader rebuilds the encoder from config["speech_encoder"] (large-v3.pt).
        enc_path = _resolve(path, raw.get("speech_encoder"))
        whisper_config, enc_state = load_whisper_encoder_weights(enc_path)
    _check_stated_width(raw, whisper_config, path)

    model = OmniSpeechModel(omni_config, whisper_config, llm)
    cast_parameters(model, dtype)
    load_into(model.speech_encoder.encoder, enc_state, f"{path}: model.speech_encoder")
    proj = read_tensors(path, lambda n: n.startswith("model.speech_projector."))
    load_into(model.speech_projector, {n[len("model.speech_projector."):]: t for n, t in proj.items()},
              f"{path}: model.speech_projector")
    if model.speech_generator is not None:
        gen = read_tensors(path, lambda n: n.startswith("speech_generator."))
        if gen:
            load_into(model.speech_generator, {n[len("speech_generator."):]: t for n, t in gen.items()},
                      f"{path}: speech_generator")
        else:
            log.info("%s has no speech_generator weights: the CTC decoder starts from random init", path)
    return model, load_tokenizer(path, llm_config)


def _check_stated_width(raw_config: dict, whisper_config: WhisperConfig, folder: Path) -> None:
    stated = raw_config.get("speech_encoder_hidden_size")
    if stated is not None and stated != whisper_config.d_model:
        raise WhisperDimsError(f"{folder}/config.json: speech_encoder_hidden_size = {stated} but the "
                               f"speech encoder is {whisper_config.d_model} wide")


def _resolve(folder: Path, ref: Optional[str]) -> Path:
    if not ref:
        raise FileNotFoundError(f"{folder}: no model.speech_encoder.* weights and no 'speech_encoder' "
                                "path in config.json")
    for candidate in (Path(ref), folder / ref, folder / Path(ref).name):
        if candidate.exists():
            return candidate
    raise FileNotFoundError(f"{folder}: config.json names speech_encoder={ref!r}, which was not found "
                            f"(tried it as given, relative to the folder, and as {folder / Path(ref).name})")


def save_omni_folder(out_dir: str | Path, model: OmniSpeechModel, tokenizer,
                     state_dict: Optional[dict[str, torch.Tensor]] = None,
                     metadata: Optional[dict] = None, dtype: Optional[torch.dtype] = None) -> Path:
    """Write the LLaMA-Omni folder. `state_dict` (internal names) overrides the live parameters,
    e.g. a ZeRO-3 consolidated state dict; `dtype` casts floating tensors on the way out."""
    out = Path(out_dir)
    tmp = out.with_name(out.name + ".tmp")
    tmp.mkdir(parents=True, exist_ok=True)
    state = state_dict if state_dict is not None else {k: v for k, v in model.state_dict().items()}
    tied = bool(getattr(model.llm.config, "tie_word_embeddings", False))
    state = omni_state_dict(state, tie_word_embeddings=tied)
    if dtype is not None:
        state = {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}
    write_safetensors(state, tmp)
    (tmp / "config.json").write_text(json.dumps(omni_config_json(model), indent=2, sort_keys=True))
    if getattr(model.llm, "generation_config", None) is not None:
        model.llm.generation_config.save_pretrained(str(tmp))
    save_portable_tokenizer(tokenizer, tmp)
    if metadata is not None:
        (tmp / "omni_ds_training.json").write_text(json.dumps(metadata, indent=2, default=str))
    # Replace atomically from the reader's view: a folder is either the old one or complete.
    if out.exists():
        old = out.with_name(out.name + ".old")
        os.replace(out, old)
        os.replace(tmp, out)
        _rmtree(old)
    else:
        os.replace(tmp, out)
    return out


def omni_config_json(model: OmniSpeechModel) -> dict[str, Any]:
    cfg = model.omni_config
    llm_cfg = legacy_rope_keys(model.llm.config.to_dict())
    enc_cfg = model.speech_encoder.config
    out = dict(llm_cfg)
    out.update(cfg.to_llama_omni_keys(enc_cfg.d_model))
    llama = llm_cfg.get("model_type") == "llama"
    if cfg.with_speech_generator:
        out["model_type"] = "omni_speech2s_llama" if llama else f"omni_speech2s_{llm_cfg['model_type']}"
        out["architectures"] = ["OmniSpeech2SLlamaForCausalLM"] if llama else out.get("architectures")
    else:
        out["model_type"] = "omni_speech_llama" if llama else f"omni_speech_{llm_cfg['model_type']}"
        out["architectures"] = ["OmniSpeechLlamaForCausalLM"] if llama else out.get("architectures")
    out["omni_ds"] = dict(cfg.to_omni_ds_keys(), llm_model_type=llm_cfg["model_type"],
                          speech_encoder_config=saved_dims(enc_cfg))
    return out


def _rmtree(path: Path) -> None:
    import shutil
    shutil.rmtree(path, ignore_errors=True)
