"""Continuous batching in serve/engine.py with a real tiny model: late requests join a running batch.

The scripted decoder of test_engine.py turns continuous batching off (it replaces `decode`), so
these tests run the real `models.running.RunningBatch` path: a job that arrives while another is
decoding starts before that one ends, and every job's greedy tokens equal decoding it alone.
"""

from __future__ import annotations

import contextlib
import threading

import pytest
import torch
from transformers import AutoModelForCausalLM

from domaintune.models.decode import SamplingParams, generate
from domaintune.models.running import RunningBatch
from domaintune.serve.engine import Engine, Finished, Job, Tokens


@pytest.fixture(scope="module")
def model(tiny_llama):
    torch.manual_seed(0)
    net = AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.float32).eval()
    with torch.no_grad():
        net.lm_head.weight.mul_(8)  # sharp distributions: greedy ties cannot hide a wrong cache
    return net


class Sink:
    """Records the order in which jobs produce tokens and finish."""

    def __init__(self, name: str, log: list, first: threading.Event | None = None) -> None:
        self.name, self.log, self.first, self.tokens = name, log, first, []
        self.done = threading.Event()

    def __call__(self, event) -> None:
        if isinstance(event, Tokens):
            self.tokens += [t for _, t in event.pairs]
            self.log.append(("token", self.name))
            if self.first is not None:
                self.first.set()
        elif isinstance(event, Finished):
            self.log.append(("finished", self.name))
            self.done.set()


PROMPTS = {"a": [1, 5, 7, 9, 11, 13], "b": [2, 3], "c": [4, 4, 4, 4, 4, 4, 4, 4, 4, 4]}
PARAMS = SamplingParams(max_new_tokens=24)


def run(model, order: list[tuple[str, str]], max_batch_size: int = 4) -> tuple[dict[str, Sink], list]:
    """Submit the first job, wait for its first token, then submit the rest; returns sinks and the log."""
    log: list = []
    started = threading.Event()
    sinks = {name: Sink(name, log, started if i == 0 else None) for i, (name, _) in enumerate(order)}
    eng = Engine(lambda _route: contextlib.nullcontext(model), pad_id=0, max_batch_size=max_batch_size,
                 batch_window_s=0.0).start()
    name, route = order[0]
    eng.submit(Job(route, [PROMPTS[name]], [PARAMS], sinks[name]))
    assert started.wait(30)
    for name, route in order[1:]:
        eng.submit(Job(route, [PROMPTS[name]], [PARAMS], sinks[name]))
    for sink in sinks.values():
        assert sink.done.wait(60)
    eng.close()
    return sinks, log


def alone(model, name: str) -> list[int]:
    return generate(model, [PROMPTS[name]], PARAMS, pad_id=0)[0].token_ids


def test_late_jobs_join_the_running_batch_and_decode_as_alone(model):
    sinks, log = run(model, [("a", "base"), ("b", "base"), ("c", "base")])
    assert log.index(("token", "b")) < log.index(("finished", "a"))  # b started while a ran
    assert log.index(("token", "c")) < log.index(("finished", "a"))
    for name, sink in sinks.items():
        assert sink.tokens == alone(model, name), name


def test_a_job_for_another_model_at_the_head_stops_joining(model):
    _, log = run(model, [("a", "base"), ("c", "other"), ("b", "base")])
    assert log.index(("token", "c")) > log.index(("finished", "a"))  # another route waits for the batch
    assert log.index(("token", "b")) > log.index(("token", "c"))      # and b does not jump the queue


def test_batch_size_one_turns_joining_off(model):
    _, log = run(model, [("a", "base"), ("b", "base")], max_batch_size=1)
    assert log.index(("token", "b")) > log.index(("finished", "a"))


def test_running_batch_refuses_rows_without_tokens_to_make(model):
    batch = RunningBatch(model, pad_id=0)
    with pytest.raises(ValueError, match="max_new_tokens"):
        batch.add(["x"], [[1, 2]], [SamplingParams(max_new_tokens=0)])
    assert not batch


def step_and_check(model, batch: RunningBatch, seen: dict) -> None:
    """Every running row's logits equal a cache-free forward over its tokens alone; then one step."""
    with torch.no_grad():
        for row, key in enumerate(batch.keys):
            expected = model(input_ids=torch.tensor([seen[key]])).logits[0, -1]
            torch.testing.assert_close(batch._logits[row], expected, atol=1e-4, rtol=0)
    for key, token in batch.step():
        seen[key].append(token)


def test_joined_rows_see_exactly_their_own_tokens(model):
    """Logits of every row at every step equal a cache-free forward over that row's tokens alone."""
    batch = RunningBatch(model, pad_id=0)
    seen: dict[str, list[int]] = {name: list(p) for name, p in PROMPTS.items()}
    batch.add(["a"], [PROMPTS["a"]], [PARAMS])
    joins = {2: ["b"], 5: ["c"]}
    for step in range(12):
        if step in joins:
            batch.add(joins[step], [PROMPTS[n] for n in joins[step]], [PARAMS] * len(joins[step]))
        step_and_check(model, batch, seen)


def test_a_joining_job_that_fails_fails_alone(model):
    from domaintune.serve.engine import Failed

    log: list = []
    started, failed = threading.Event(), threading.Event()
    first, other = Sink("a", log, started), Sink("c", log)

    def broken(event) -> None:  # a prompt id without an embedding row: the prefill raises
        if isinstance(event, Failed):
            log.append(("failed", "bad"))
            failed.set()

    eng = Engine(lambda _route: contextlib.nullcontext(model), pad_id=0, max_batch_size=4,
                 batch_window_s=0.0).start()
    eng.submit(Job("base", [PROMPTS["a"]], [PARAMS], first))
    assert started.wait(30)
    eng.submit(Job("base", [[1, 10**6]], [PARAMS], broken))
    eng.submit(Job("base", [PROMPTS["c"]], [PARAMS], other))
    assert failed.wait(30) and first.done.wait(60) and other.done.wait(60)
    eng.close()
    assert log.index(("failed", "bad")) < log.index(("finished", "a"))  # it failed while a was running
    assert first.tokens == alone(model, "a") and other.tokens == alone(model, "c")


def test_finished_rows_are_forgotten():
    from domaintune.serve.jobs import OpenRows

    events: list = []
    jobs = [Job("base", [[1], [2]], [PARAMS, PARAMS], events.append), Job("base", [[3]], [PARAMS], events.append)]
    rows = OpenRows(jobs)
    assert rows.extend([Job("base", [[4]], [PARAMS], events.append)]) == range(3, 4)
    rows.finish(0, "stop")
    rows.finish(0, "stop")  # once only
    rows.fail("boom", [1, 2])
    rows.finish_rest()
    assert not rows.rows and not rows.prompts and not rows.params and not rows.counts
    assert [type(e).__name__ for e in events] == ["Finished", "Failed", "Failed", "Finished"]
    assert rows.should_stop(0)  # a forgotten row is done


def test_sliding_window_models_decode_in_fixed_batches(model):
    from domaintune.models.running import supports

    assert supports(model)
    config = model.config
    try:
        config.sliding_window = 8  # Mistral's way of saying it
        assert not supports(model)
        config.use_sliding_window = False  # Qwen2 with the window switched off
        assert supports(model)
    finally:
        for name in ("sliding_window", "use_sliding_window"):
            if hasattr(config, name):
                delattr(config, name)


def test_a_batch_that_never_empties_stays_as_wide_as_its_longest_row(model):
    """Rows come and go for 60 steps; the cache keeps only the columns running rows attend to."""
    batch = RunningBatch(model, pad_id=0)
    seen: dict[int, list[int]] = {}
    lengths = [10, 2, 6, 3, 8, 2, 5]
    for step in range(60):
        if step % 3 == 0:  # a new row every third step, each making 7 tokens
            key = step
            seen[key] = [(key % 11) + 1] * lengths[(step // 3) % len(lengths)]
            batch.add([key], [list(seen[key])], [SamplingParams(max_new_tokens=7)])
        assert batch.width == max(len(seen[key]) for key in batch.keys)
        step_and_check(model, batch, seen)
