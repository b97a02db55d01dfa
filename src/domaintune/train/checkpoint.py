"""Crash-safe, pickle-free training checkpoints (the recipe and disk checks are in resume_checks.py).

One checkpoint is one folder, ``run_dir/checkpoints/step-000123/`` (or ``step-000123-micro-2/`` when
saved after 2 micro-batches of the next gradient-accumulation cycle), holding only safetensors, JSON
and YAML, so opening one never runs code (``torch.load`` of a pickle has been an attack path):

    model.safetensors        trainable parameters only
    optimizer.safetensors    every non-scalar tensor of optimizer.state_dict(), "state.<idx>.exp_avg"
    optimizer.json           the rest: param_groups, step counts as numbers (with dtype/device), index names
    scheduler.json           scheduler.state_dict()
    state.json               TrainState          rng.json   every RNG state (see rng.py)
    recipe.resolved.yaml     the recipe the run used
    accum_grads.safetensors  only mid-accumulation: the .grad tensors summed so far
    manifest.json            written last: sha256 and size of every other file

The folder is written as ``.tmp-<name>-<pid>/`` with every file and the folder fsynced, the manifest
last, then renamed into place. A folder without a manifest or whose files do not match it is not a
checkpoint; `latest_checkpoint` skips it with a warning. Restoring the optimizer, scheduler, RNG and
accumulated gradients makes a resumed CPU run bit-identical to an uninterrupted one.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from domaintune.errors import UserError
from domaintune.files import fsync_dir, publish_folder
from domaintune.methods.artifact import RECIPE_FILE
from domaintune.train.resume_checks import check_free_disk

log = logging.getLogger(__name__)

CHECKPOINTS_DIR = "checkpoints"
MANIFEST = "manifest.json"
REQUIRED_FILES = ("model.safetensors", "optimizer.safetensors", "optimizer.json", "scheduler.json",
                  "state.json", "rng.json", RECIPE_FILE)
_NAME_RE = re.compile(r"^step-(\d+)(?:-micro-(\d+))?$")
_TMP_PREFIX = ".tmp-"
# Test seam: called with each file's path once it is written and fsynced, so a test can kill the
# process at an exact point of a save. Always None in real runs.
_after_write_hook: Callable[[Path], None] | None = None


@dataclass(kw_only=True)
class TrainState:
    """Where a run stands; saved as state.json with every checkpoint.

    Attributes:
        step: optimizer steps completed.
        epoch: passes over the data started (the data order of an epoch derives from the seed).
        micro_step: micro-batches already accumulated toward step ``step + 1`` (0 at a step boundary).
        samples_seen: training samples consumed so far, which fixes the position in the data order.
        data_order_seed: the seed of the shuffled data order.
        best_metric: the best validation metric so far, if any.
        best_step: the step that reached ``best_metric``; its checkpoint is never rotated away.
        extra: any other JSON the loop wants back on resume.
    """

    step: int = 0
    epoch: int = 0
    micro_step: int = 0
    samples_seen: int = 0
    data_order_seed: int
    best_metric: float | None = None
    best_step: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------------
# Pickle-free encoding of state dicts: tensors go to safetensors, everything else to tagged JSON.

def _encode(obj: Any, path: str, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(obj, torch.Tensor):
        if obj.dim() == 0:  # step counts: numbers in JSON, dtype/device kept so restore is exact
            return {"__scalar__": obj.item(), "dtype": str(obj.dtype).removeprefix("torch."),
                    "device": str(obj.device)}
        tensors[path] = obj
        return {"__tensor__": path}
    if isinstance(obj, tuple):
        return {"__tuple__": _encode(list(obj), path, tensors)}
    if isinstance(obj, list):
        return [_encode(v, f"{path}.{i}".lstrip("."), tensors) for i, v in enumerate(obj)]
    if isinstance(obj, dict):
        items = {str(k): _encode(v, f"{path}.{k}".lstrip("."), tensors) for k, v in obj.items()}
        if all(isinstance(k, str) and not k.startswith("__") for k in obj):
            return items
        if all(type(k) is int for k in obj):  # optimizer param indices must come back as ints
            return {"__int_keys__": items}
        raise TypeError(f"cannot store dict keys {list(obj)[:5]} at {path!r} in JSON")
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise TypeError(f"cannot store {type(obj).__name__} at {path!r} in a checkpoint without pickle")


def _decode(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(obj, list):
        return [_decode(v, tensors) for v in obj]
    if not isinstance(obj, dict):
        return obj
    if "__scalar__" in obj:
        return torch.tensor(obj["__scalar__"], dtype=getattr(torch, obj["dtype"]),
                            device=_usable_device(obj["device"]))
    if "__tensor__" in obj:
        return tensors[obj["__tensor__"]]
    if "__tuple__" in obj:
        return tuple(_decode(v, tensors) for v in obj["__tuple__"])
    if "__int_keys__" in obj:
        return {int(k): _decode(v, tensors) for k, v in obj["__int_keys__"].items()}
    return {k: _decode(v, tensors) for k, v in obj.items()}


def _usable_device(name: str) -> str:
    return name if not name.startswith("cuda") or torch.cuda.is_available() else "cpu"


def _savable(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Detached contiguous tensors; a second name for the same memory (tied weights) gets a copy."""
    out, seen = {}, set()
    for name, t in tensors.items():
        t = t.detach().contiguous()
        key = (t.device, t.data_ptr())
        out[name] = t.clone() if key in seen else t
        seen.add(key)
    return out


# ---------------------------------------------------------------------------------------------------
# Saving

def save_checkpoint(run_dir: Path, step: int, trainable: dict[str, torch.Tensor],
                    optimizer: torch.optim.Optimizer, scheduler: Any, state: TrainState,
                    recipe_yaml: str, rng: dict, keep_last: int = 2,
                    accum_grads: dict[str, torch.Tensor] | None = None,
                    protect: Iterable[int] = ()) -> Path:
    """Write a complete checkpoint atomically, then rotate old ones.

    Args:
        run_dir: the run's output folder; checkpoints go to ``run_dir/checkpoints/``.
        step: optimizer steps completed; must equal ``state.step``.
        trainable: name -> parameter for every trainable parameter (the optimizer's params).
        optimizer: the optimizer; its state_dict is split into safetensors and JSON. A sharded run
            passes a `sharding.Gathered` (its full tensors as `trainable`), so the files are the same.
        scheduler: the LR scheduler (anything with ``state_dict``), or None.
        state: the loop position; ``state.micro_step > 0`` names the folder ``step-N-micro-M``.
        recipe_yaml: the resolved recipe, saved as recipe.resolved.yaml.
        rng: `domaintune.train.rng.capture_rng()` taken at the moment of saving.
        keep_last: how many complete checkpoints to keep (0: all); older ones are deleted after
            this save, except the one just written, ``state.best_step`` and the steps in ``protect``.
        accum_grads: the ``.grad`` tensors when saving mid-accumulation (None at a step boundary).
        protect: steps whose checkpoints must never be rotated away.

    Returns:
        The path of the new checkpoint folder.

    Raises:
        UserError: when the disk has too little free space for the checkpoint.
    """
    if step != state.step:
        raise ValueError(f"step {step} does not match state.step {state.step}")
    root = Path(run_dir) / CHECKPOINTS_DIR
    if not root.is_dir():
        root.mkdir(parents=True)
        fsync_dir(root.parent)  # so the first checkpoint cannot lose its parent folder in a crash
    _remove_stale_tmp(root)
    opt_tensors: dict[str, torch.Tensor] = {}
    opt_json = {"state_dict": _encode(optimizer.state_dict(), "", opt_tensors),
                "param_names": _index_names(optimizer, trainable)}
    tensor_bytes = sum(t.nelement() * t.element_size()
                       for d in (trainable, opt_tensors, accum_grads or {}) for t in d.values())
    check_free_disk(root, tensor_bytes)
    name = checkpoint_name(step, state.micro_step)
    tmp = root / f"{_TMP_PREFIX}{name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        _write_all(tmp, trainable, opt_tensors, opt_json, scheduler, state, recipe_yaml, rng, accum_grads)
        final = publish_folder(tmp, root / name)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    protected = {*protect} | ({state.best_step} if state.best_step is not None else set())
    _rotate(root, final, keep_last, protected)
    return final


def checkpoint_name(step: int, micro_step: int = 0) -> str:
    """Folder name of a checkpoint: ``step-000123``, or ``step-000123-micro-2`` mid-accumulation."""
    return f"step-{step:06d}" + (f"-micro-{micro_step}" if micro_step else "")


def _index_names(optimizer: torch.optim.Optimizer, trainable: dict[str, torch.Tensor]) -> list[str | None]:
    """Name of each optimizer param index, so a resume can catch a changed parameter order."""
    by_id = {id(t): n for n, t in trainable.items()}
    return [by_id.get(id(p)) for group in optimizer.param_groups for p in group["params"]]


def _write_all(tmp: Path, trainable, opt_tensors, opt_json, scheduler, state, recipe_yaml, rng,
               accum_grads) -> None:
    extra: dict[str, torch.Tensor] = {}
    sched_json = _encode(scheduler.state_dict(), "", extra) if scheduler is not None else None
    if extra:
        raise TypeError(f"scheduler state holds non-scalar tensors {sorted(extra)}; not supported")
    files = {"model.safetensors": trainable, "optimizer.safetensors": opt_tensors,
             "optimizer.json": _json_bytes(opt_json), "scheduler.json": _json_bytes(sched_json),
             "state.json": _json_bytes(asdict(state)),
             "rng.json": json.dumps(rng).encode("utf-8"),  # 5 KB of ints: no indent
             RECIPE_FILE: recipe_yaml.encode("utf-8")}
    if accum_grads is not None:
        files["accum_grads.safetensors"] = accum_grads
    hashes: dict[str, dict[str, Any]] = {}
    for name, payload in files.items():
        _write(tmp / name, payload, hashes)
    fsync_dir(tmp)
    manifest = {"format": 1, "step": state.step, "micro_step": state.micro_step, "files": hashes}
    _write(tmp / MANIFEST, _json_bytes(manifest), {})  # last: its presence marks the folder complete
    fsync_dir(tmp)


def _json_bytes(obj: Any) -> bytes:
    # Python floats print in their shortest round-trip form, so every float comes back bit-exact.
    return json.dumps(obj, indent=1).encode("utf-8")


def _write(path: Path, payload: bytes | dict[str, torch.Tensor], hashes: dict) -> None:
    """Write bytes or tensors (as safetensors) to ``path``, fsync it, record its size and sha256."""
    if isinstance(payload, dict):
        save_file(_savable(payload), str(path), metadata={"format": "pt"})
    else:
        path.write_bytes(payload)
    with open(path, "rb") as f:
        os.fsync(f.fileno())  # fsync flushes the file, whichever descriptor asks
    hashes[path.name] = {"sha256": _sha256(path), "bytes": path.stat().st_size}
    if _after_write_hook is not None:
        _after_write_hook(path)


def _sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _remove_stale_tmp(root: Path) -> None:
    for path in root.glob(".step-*.old"):  # a re-saved checkpoint's old copy that a crash left behind
        shutil.rmtree(path, ignore_errors=True)
    for path in root.glob(f"{_TMP_PREFIX}*"):
        pid = path.name.rsplit("-", 1)[-1]
        if pid.isdigit() and int(pid) != os.getpid() and _pid_alive(int(pid)):
            continue  # another live process may be writing it right now
        log.info("removing unfinished checkpoint folder %s", path)
        shutil.rmtree(path, ignore_errors=True)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # signal 0: existence check only
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by someone else
        pass
    return True


def _rotate(root: Path, just_written: Path, keep_last: int, protect: set[int]) -> None:
    """Delete complete checkpoints older than the newest ``keep_last`` (0 keeps all).

    Checkpoints newer than the one just written (another timeline, e.g. a resume from an older
    checkpoint) and step-boundary checkpoints of protected steps are left alone.
    """
    if keep_last <= 0:
        return
    mine = _position(just_written)
    older = sorted((p for p in _checkpoint_dirs(root) if (p / MANIFEST).is_file() and _position(p) < mine),
                   key=_position, reverse=True)
    for path in older[keep_last - 1:]:
        step, micro = _position(path)
        if micro == 0 and step in protect:
            continue
        log.info("removing old checkpoint %s (keep_last=%d)", path, keep_last)
        shutil.rmtree(path, ignore_errors=True)


# ---------------------------------------------------------------------------------------------------
# Finding and loading

def _checkpoint_dirs(root: Path) -> list[Path]:
    if not root.is_dir():
        return []
    return [p for p in root.iterdir() if p.is_dir() and _NAME_RE.match(p.name)]


def _position(path: Path) -> tuple[int, int]:
    m = _NAME_RE.match(path.name)
    return int(m.group(1)), int(m.group(2) or 0)


def latest_checkpoint(run_dir: Path) -> Path | None:
    """Return the newest complete checkpoint of a run, or None if there is none.

    Folders without a manifest, or whose files are missing, truncated or do not match their sha256,
    are skipped with a warning naming the folder and the reason. Unfinished ``.tmp-*`` folders are
    ignored.

    Args:
        run_dir: the run's output folder (the one holding ``checkpoints/``).

    Returns:
        The checkpoint folder, or None.
    """
    for path in sorted(_checkpoint_dirs(Path(run_dir) / CHECKPOINTS_DIR), key=_position, reverse=True):
        problem = checkpoint_problem(path)
        if problem is None:
            return path
        log.warning("skipping checkpoint %s: %s", path, problem)
    return None


def checkpoint_problem(path: Path) -> str | None:
    """Why ``path`` is not a complete checkpoint, or None when it is (every hash checked)."""
    try:
        files = json.loads((path / MANIFEST).read_text(encoding="utf-8"))["files"]
    except FileNotFoundError:
        return "no manifest.json (the save was interrupted)"
    except (OSError, ValueError, KeyError, TypeError) as err:
        return f"manifest.json is unreadable ({err})"
    missing = [n for n in REQUIRED_FILES if n not in files]
    if missing:
        return f"manifest.json does not list {', '.join(missing)}"
    for name, entry in files.items():
        file = path / name
        if not file.is_file():
            return f"{name} is missing"
        if file.stat().st_size != entry.get("bytes"):
            return f"{name} has {file.stat().st_size} bytes, manifest says {entry.get('bytes')} (truncated?)"
        if _sha256(file) != entry.get("sha256"):
            return f"{name} does not match its sha256 in manifest.json"
    return None


def load_checkpoint(path: Path, optimizer: torch.optim.Optimizer, scheduler: Any,
                    param_names: list[str],
                    localize: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
                    ) -> tuple[dict[str, torch.Tensor], TrainState, dict, str, dict[str, torch.Tensor] | None]:
    """Verify a checkpoint, restore optimizer and scheduler in place, and return the rest.

    Args:
        path: a checkpoint folder (e.g. from `latest_checkpoint`).
        optimizer: a fresh optimizer over the same parameters, in the same order, as when saved.
        scheduler: a fresh scheduler on that optimizer, or None if the run had none.
        param_names: names of the trainable parameters, in the optimizer's order.
        localize: turns the saved (full) optimizer state into the one the optimizer holds, for a
            sharded run (`sharding.localize_optimizer_state`); None: as saved.

    Returns:
        ``(trainable, state, rng, recipe_yaml, accum_grads)``: trainable tensors (CPU, keyed and
        ordered by ``param_names``) to copy into the model, the TrainState, the RNG state for
        `restore_rng`, the saved recipe text, and the accumulated gradients (None at a step boundary).

    Raises:
        UserError: when the checkpoint is incomplete, or does not fit these parameters/optimizer.
    """
    path = Path(path)
    problem = checkpoint_problem(path)
    if problem is not None:
        raise UserError(f"not a complete checkpoint: {problem}", file=str(path),
                        hint="resume from another checkpoint, or delete this folder")
    tensors = load_file(str(path / "model.safetensors"), device="cpu")
    _check_names(path, set(tensors), param_names)
    _load_optimizer(path, optimizer, param_names, localize)
    _load_scheduler(path, scheduler)
    state = TrainState(**_read_json(path / "state.json"))
    accum = path / "accum_grads.safetensors"
    grads = load_file(str(accum), device="cpu") if accum.is_file() else None
    recipe = (path / RECIPE_FILE).read_text(encoding="utf-8")
    return {n: tensors[n] for n in param_names}, state, _read_json(path / "rng.json"), recipe, grads


def _read_json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


def _check_names(path: Path, saved: set[str], param_names: list[str]) -> None:
    missing, unexpected = sorted(set(param_names) - saved), sorted(saved - set(param_names))
    if missing or unexpected:
        raise UserError(f"checkpoint parameters do not match the model (missing {missing[:5]}, "
                        f"unexpected {unexpected[:5]})", file=str(path / "model.safetensors"),
                        hint="resume with the same model and training method the checkpoint was saved with")


def _load_optimizer(path: Path, optimizer: torch.optim.Optimizer, param_names: list[str],
                    localize: Callable[[dict[str, Any]], dict[str, Any]] | None = None) -> None:
    saved = _read_json(path / "optimizer.json")
    names = saved["param_names"]
    if None not in names and names != list(param_names):
        raise UserError("trainable parameters are in a different order than when the checkpoint was saved",
                        file=str(path / "optimizer.json"), hint="build the optimizer over the same parameters")
    state_dict = _decode(saved["state_dict"], load_file(str(path / "optimizer.safetensors"), device="cpu"))
    if localize is not None:
        state_dict = localize(state_dict)
    try:
        optimizer.load_state_dict(state_dict)
    except ValueError as err:
        raise UserError(f"optimizer state does not fit this optimizer: {err}",
                        file=str(path / "optimizer.json"), hint="resume with the same training method") from err


def _load_scheduler(path: Path, scheduler: Any) -> None:
    saved = _read_json(path / "scheduler.json")
    if (scheduler is None) != (saved is None):
        raise UserError("the checkpoint and this run disagree on whether there is an LR scheduler",
                        file=str(path / "scheduler.json"), hint="resume with the same recipe")
    if scheduler is not None:
        scheduler.load_state_dict(_decode(saved, {}))
