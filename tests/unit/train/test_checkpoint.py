"""Tests for domaintune.train.checkpoint: bit-identical resume, crash safety under SIGKILL, no pickles.

The training loop under test lives in `_resume_worker.py` (AdamW, warmup+cosine LambdaLR, gradient
accumulation 3, dropout, NumPy and Python randomness, a seeded shuffled data order over 3 epochs).
"""

from __future__ import annotations

import ast
import importlib.util
import json
import logging
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from safetensors.torch import load_file

from domaintune.errors import UserError
from domaintune.train import checkpoint, rng
from domaintune.train.checkpoint import TrainState, checkpoint_name, latest_checkpoint, load_checkpoint
from domaintune.train.resume_checks import check_free_disk, check_resume_recipe

HERE = Path(__file__).parent
_spec = importlib.util.spec_from_file_location("_resume_worker", HERE / "_resume_worker.py")
worker = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(worker)
STEPS = 6


def _weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def _equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def reference():
    """An uninterrupted run that never saves: final weights and the sample ids it consumed."""
    model, state = worker.train(None, STEPS)
    return _weights(model), state.extra["consumed"]


@pytest.fixture
def saved_run(tmp_path):
    """A run checkpointed after every micro-batch up to step 2 + 1 micro-batch."""
    worker.train(tmp_path, STEPS, stop_at=(2, 1))
    return tmp_path


# ------------------------------------------------------------------------------------------ resume

@pytest.mark.parametrize("position", [(1, 0), (2, 0), (2, 1), (1, 2)])
def test_resume_is_bit_identical(tmp_path, reference, position):
    worker.train(tmp_path, STEPS, stop_at=position)
    model, state = worker.train(tmp_path, STEPS, resume_from=tmp_path / "checkpoints" / checkpoint_name(*position))
    assert _equal(_weights(model), reference[0])
    assert state.extra["consumed"] == reference[1]  # the same data order, no sample skipped or repeated
    assert state.step == STEPS and state.samples_seen == STEPS * worker.ACCUM * worker.BATCH


@pytest.mark.parametrize("drop", ["restore_rng_state", "restore_grads"])
def test_resume_without_rng_or_accumulated_grads_diverges(saved_run, reference, drop):
    # Shows the test above has teeth: leave out one piece of mid-accumulation state and weights differ.
    model, _ = worker.train(saved_run, STEPS, resume_from=saved_run / "checkpoints" / "step-000002-micro-1",
                            **{drop: False})
    assert not _equal(_weights(model), reference[0])


def test_optimizer_and_scheduler_state_round_trip_exactly(tmp_path):
    model, opt, sched = worker.build(STEPS)
    worker.train(tmp_path, STEPS, stop_at=(3, 0))  # leaves the newest checkpoint at step 3
    path = latest_checkpoint(tmp_path)
    assert path.name == "step-000003"
    _, state, _, recipe, grads = load_checkpoint(path, opt, sched, [n for n, _ in model.named_parameters()])
    assert (state.step, state.micro_step, grads, recipe) == (3, 0, None, worker.RECIPE)
    assert sched.last_epoch == 3 and sched.get_last_lr() == [g["lr"] for g in opt.param_groups]
    first = opt.state[next(iter(model.parameters()))]
    assert first["step"].dtype == torch.float32 and first["step"].item() == 3.0
    saved = load_file(str(path / "optimizer.safetensors"))
    assert torch.equal(first["exp_avg"], saved["state.0.exp_avg"])
    assert isinstance(opt.param_groups[0]["betas"], tuple)


def test_layout_and_no_pickle(saved_run):
    path = saved_run / "checkpoints" / "step-000002-micro-1"
    names = {p.name for p in path.iterdir()}
    assert names == {*checkpoint.REQUIRED_FILES, "accum_grads.safetensors", "manifest.json"}
    manifest = json.loads((path / "manifest.json").read_text())
    assert set(manifest["files"]) == names - {"manifest.json"}
    for file in path.iterdir():
        assert _is_plain_data(file.read_bytes(), file.suffix), file
    assert "state.0.exp_avg_sq" in load_file(str(path / "optimizer.safetensors"))
    opt_json = json.loads((path / "optimizer.json").read_text())
    assert opt_json["param_names"] == ["0.weight", "0.bias", "3.weight", "3.bias"]
    assert opt_json["state_dict"]["state"]["__int_keys__"]["0"]["step"]["__scalar__"] == 2.0


def _is_plain_data(data: bytes, suffix: str) -> bool:
    """True for a well-formed safetensors, JSON or YAML file that is neither a pickle nor a torch.save zip."""
    if data.startswith(b"PK\x03\x04"):
        return False
    if suffix == ".safetensors":  # u64 header length, then that many bytes of JSON (its length may start 0x80)
        n = int.from_bytes(data[:8], "little")
        return isinstance(json.loads(data[8:8 + n]), dict)
    if data.startswith(b"\x80"):  # pickle protocol 2+ opcode
        return False
    if suffix == ".json":
        json.loads(data)  # raises unless it is JSON
    return True


def test_source_never_unpickles():
    for module in (checkpoint, rng):
        source = Path(module.__file__).read_text()
        calls = [n for n in ast.walk(ast.parse(source)) if isinstance(n, ast.Attribute) and n.attr == "load"
                 and isinstance(n.value, ast.Name) and n.value.id in {"torch", "pickle"}]
        assert not calls and "import pickle" not in source and "weights_only" not in source


# ---------------------------------------------------------------------------- incomplete checkpoints

def _corrupt(path: Path, how: str) -> str:
    model = path / "model.safetensors"
    if how == "no manifest":
        (path / "manifest.json").unlink()
        return "no manifest.json"
    if how == "truncated":
        model.write_bytes(model.read_bytes()[:100])
        return "truncated"
    data = bytearray(model.read_bytes())
    data[-1] ^= 0xFF  # same size, different bytes
    model.write_bytes(bytes(data))
    return "sha256"


@pytest.mark.parametrize("how", ["no manifest", "truncated", "bad hash"])
def test_latest_skips_incomplete_checkpoint_with_warning(saved_run, caplog, how):
    newest = saved_run / "checkpoints" / "step-000002-micro-1"
    reason = _corrupt(newest, how)
    (saved_run / "checkpoints" / ".tmp-step-000009-123").mkdir()  # an unfinished save: ignored silently
    with caplog.at_level(logging.WARNING, logger="domaintune.train.checkpoint"):
        assert latest_checkpoint(saved_run).name == "step-000002"
    assert len(caplog.records) == 1
    assert "step-000002-micro-1" in caplog.text and reason in caplog.text
    model, opt, sched = worker.build(STEPS)
    with pytest.raises(UserError, match="not a complete checkpoint"):
        load_checkpoint(newest, opt, sched, [n for n, _ in model.named_parameters()])


def test_latest_is_none_without_checkpoints(tmp_path):
    assert latest_checkpoint(tmp_path) is None


def test_load_refuses_other_parameters(saved_run):
    model, opt, sched = worker.build(STEPS)
    with pytest.raises(UserError, match="do not match the model"):
        load_checkpoint(latest_checkpoint(saved_run), opt, sched, ["0.weight", "0.bias"])
    with pytest.raises(UserError, match="different order"):
        load_checkpoint(latest_checkpoint(saved_run), opt, sched, ["3.weight", "3.bias", "0.weight", "0.bias"])


# ------------------------------------------------------------------------------- rotation and tmp

def _save_at(run_dir: Path, step: int, micro: int = 0, **kw) -> Path:
    model, opt, sched = worker.build(STEPS)
    state = TrainState(step=step, micro_step=micro, data_order_seed=1, best_step=kw.pop("best_step", None))
    return checkpoint.save_checkpoint(run_dir, step, dict(model.named_parameters()), opt, sched, state,
                                      worker.RECIPE, rng.capture_rng(), **kw)


def test_keep_last_rotates_but_protects_best_and_newer(tmp_path):
    _save_at(tmp_path, 9)  # a newer timeline (resumed from an older checkpoint): never deleted
    for step in range(1, 6):
        _save_at(tmp_path, step, keep_last=2, best_step=2)
    names = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert names == ["step-000002", "step-000004", "step-000005", "step-000009"]


def test_save_cleans_stale_tmp_but_not_live_ones(tmp_path):
    root = tmp_path / "checkpoints"
    dead, live = root / ".tmp-step-000003-4194999", root / f".tmp-step-000003-{os.getppid()}"
    for d in (dead, live):
        d.mkdir(parents=True)
    path = _save_at(tmp_path, 4)
    assert not dead.exists() and live.exists() and path.name == "step-000004"


def test_resave_same_position_replaces_it(tmp_path):
    first = _save_at(tmp_path, 3, 1)
    _corrupt(first, "bad hash")
    assert _save_at(tmp_path, 3, 1) == first and checkpoint.checkpoint_problem(first) is None
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == ["step-000003-micro-1"]


def test_step_must_match_state(tmp_path):
    model, opt, sched = worker.build(STEPS)
    with pytest.raises(ValueError, match="state.step"):
        checkpoint.save_checkpoint(tmp_path, 5, dict(model.named_parameters()), opt, sched,
                                   TrainState(step=4, data_order_seed=1), "", rng.capture_rng())


# ---------------------------------------------------------------------------------- resume checks

def test_recipe_change_refused_unless_forced(caplog):
    saved = "train:\n  learning_rate: 0.001\n  steps: 10\nmethod: lora\n"
    check_resume_recipe(saved, "method: lora\ntrain: {steps: 10, learning_rate: 1.0e-3}\n", force=False)
    changed = "train:\n  learning_rate: 0.0002\n  steps: 10\nmethod: lora\nseed: 3\n"
    with pytest.raises(UserError) as err:
        check_resume_recipe(saved, changed, force=False)
    assert "train.learning_rate: 0.001 -> 0.0002" in str(err.value) and "seed" in str(err.value)
    assert "steps" not in str(err.value) and "--force" in str(err.value)
    with caplog.at_level(logging.WARNING):
        check_resume_recipe(saved, changed, force=True)
    assert "train.learning_rate" in caplog.text


def test_free_disk_check(tmp_path):
    check_free_disk(tmp_path / "not" / "yet", 1024)
    with pytest.raises(UserError, match="not enough free disk space") as err:
        check_free_disk(tmp_path, 10**18)
    assert "free at least" in str(err.value) and "GiB needed" in str(err.value)


_json_scalars = st.none() | st.booleans() | st.integers(-2**53, 2**53) | st.text(max_size=5) \
    | st.floats(allow_nan=False)


@given(st.recursive(_json_scalars, lambda inner: st.lists(inner, max_size=3) | st.tuples(inner, inner)
                    | st.dictionaries(st.text("ab", min_size=1, max_size=3), inner, max_size=3)
                    | st.dictionaries(st.integers(0, 9), inner, max_size=3), max_leaves=12))
def test_state_dict_encoding_round_trips(value):
    tensors: dict = {}
    encoded = json.loads(json.dumps(checkpoint._encode(value, "", tensors)))
    assert checkpoint._decode(encoded, tensors) == value and not tensors


def test_scalar_tensors_keep_dtype_and_bits():
    value = {"step": torch.tensor(7.0), "n": torch.tensor(3, dtype=torch.int64), "m": torch.arange(3.0)}
    tensors: dict = {}
    back = checkpoint._decode(json.loads(json.dumps(checkpoint._encode(value, "", tensors))), tensors)
    assert set(tensors) == {"m"}
    for k, v in value.items():
        assert back[k].dtype == v.dtype and torch.equal(back[k], v)


# ------------------------------------------------------------------------------------ SIGKILL

class _ForkServer:
    """Drives `_resume_worker.py`: each `run` is one training process, optionally SIGKILLed at a point."""

    def __init__(self, tmp: Path):
        env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
        self.proc = subprocess.Popen([sys.executable, str(HERE / "_resume_worker.py")], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True, env=env)
        self.watchdog = threading.Timer(120, self.proc.kill)  # never hang the suite
        self.watchdog.start()
        self.tmp, self.count = tmp, 0

    def run(self, run_dir: Path, kill: str | None = None, **kw) -> tuple[dict, Path]:
        self.count += 1
        out = self.tmp / f"out{self.count}.safetensors"
        self.proc.stdin.write(json.dumps({"run_dir": str(run_dir), "out": str(out), "kill": kill, **kw}) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        assert line, "fork server died"
        return json.loads(line), out

    def close(self) -> None:
        self.watchdog.cancel()
        self.proc.communicate(timeout=30)  # closes stdin (the server exits) and drains stdout


def _names(run_dir: Path) -> set[str]:
    return {p.name for p in (run_dir / "checkpoints").iterdir()}


def test_sigkill_anywhere_then_resume_is_bit_identical(tmp_path):
    server = _ForkServer(tmp_path)
    try:
        result, ref_out = server.run(tmp_path / "ref", no_save=True)
        assert result["exit"] == 0
        run = tmp_path / "run"
        # (kill point, checkpoint the next run resumes from); positions are (steps done).(micro-batches)
        chain = [("after_backward@1.2", "step-000001-micro-1"),           # mid-accumulation, before its save
                 ("save:optimizer.safetensors@2.1", "step-000002"),        # mid-save: half the files written
                 ("after_optimizer_step@3.0", "step-000002-micro-2"),      # mid-step: weights moved, not saved
                 ("after_backward@3.3", "step-000003-micro-2"),            # last micro-batch, before the step
                 ("save:manifest.json@4.1", "step-000004")]                # manifest written, not renamed
        resumed = []
        for kill, expect_next in chain:
            result, out = server.run(run, kill=kill)
            assert result.get("signal") == signal.SIGKILL, (kill, result)
            resumed.append(out.with_suffix(".resumed").read_text())
            assert latest_checkpoint(run).name == expect_next, kill
        assert resumed == ["", *(expect for _, expect in chain[:-1])]
        tmp_dirs = {n for n in _names(run) if n.startswith(".tmp-")}
        assert any(n.startswith(".tmp-step-000004-micro-1-") for n in tmp_dirs)
        assert not any(n.startswith(".tmp-step-000002-micro-1-") for n in tmp_dirs)  # cleaned by a later save
        _corrupt(run / "checkpoints" / "step-000004", "truncated")

        result, out = server.run(run)
        assert result["exit"] == 0
    finally:
        server.close()
    assert out.with_suffix(".resumed").read_text() == "step-000003-micro-2"
    log = out.with_suffix(".log").read_text()
    assert "skipping checkpoint" in log and "step-000004" in log and "truncated" in log
    assert _equal(load_file(str(out)), load_file(str(ref_out)))
    assert json.loads(out.with_suffix(".json").read_text()) == json.loads(ref_out.with_suffix(".json").read_text())
    assert _names(run) == {"step-000005-micro-2", "step-000006"}  # stale .tmp-* gone, rotation kept 2
