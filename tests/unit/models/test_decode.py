"""Tests for models/decode.py: batched decoding equals one-by-one decoding, and its controls work.

Tolerance: left padding only changes the order of floating-point sums, so fp32 logits of a row
decoded in a batch differ from the same row decoded alone by at most 7.5e-6 (tiny LLaMA with
weights redrawn at std 0.3; 1.5e-7 at the fixture init), asserted below at 1e-4. Greedy token ids
are asserted exactly equal.
"""

from __future__ import annotations

import pytest
import torch

from domaintune.models.decode import FINISH_LENGTH, FINISH_STOP, Generation, SamplingParams, decode_stream, generate

FAMILIES = ["tiny_llama", "tiny_qwen2", "tiny_deepseek_v3"]
TEXTS = ["Hello there, how", "The quick brown fox jumps over the lazy dog near the river bank.", "你",
         "Machine learning models learn", "Please summarize the report in three sentences"]


def load(path):
    """The fixture model with its matrices redrawn at std 0.3 (seeded).

    At the fixtures' std 0.02 the logits are nearly flat and barely depend on position (a wrong
    position shifts them by ~1e-3), so a decoder with broken positions would still pass; at 0.3
    the logits are sharp and position-sensitive.
    """
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for param in model.parameters():
            if param.dim() > 1:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.3)
    return model


@pytest.fixture(scope="module")
def llama(tiny_llama):
    return load(tiny_llama)


@pytest.fixture(scope="module")
def prompts(tiny_tokenizer):
    out = [tiny_tokenizer(t, add_special_tokens=False)["input_ids"] for t in TEXTS]
    assert len(out[2]) == 1 and len({len(p) for p in out}) == len(out)  # a 1-token prompt, mixed lengths
    return out


class Recorder:
    """A duck-typed model: forwards to a real one and records each call's batch size and logits."""

    def __init__(self, model):
        self.model, self.calls = model, []

    def parameters(self):
        return self.model.parameters()

    def __call__(self, **kwargs):
        out = self.model(**kwargs)
        self.calls.append((kwargs["input_ids"].shape[0], out.logits[:, -1].clone()))
        return out


def run(model, prompts, params, pad_id, **kwargs) -> dict[int, list[int]]:
    tokens: dict[int, list[int]] = {}
    for step in decode_stream(model, prompts, params, pad_id, **kwargs):
        assert len({row for row, _ in step}) == len(step)  # one token per running row per step
        for row, token in step:
            tokens.setdefault(row, []).append(token)
    return tokens


@pytest.mark.parametrize("family", FAMILIES)
def test_greedy_batched_equals_one_by_one_and_hf_generate(family, prompts, tiny_tokenizer, request):
    model = load(request.getfixturevalue(family))
    params = SamplingParams(max_new_tokens=24)
    batched = generate(model, prompts, params, tiny_tokenizer.pad_token_id)
    alone = [generate(model, [p], params, tiny_tokenizer.pad_token_id)[0] for p in prompts]
    assert [g.token_ids for g in batched] == [g.token_ids for g in alone]
    assert all(len(g.token_ids) == 24 and g.finish_reason == FINISH_LENGTH for g in batched)
    for prompt, gen in zip(prompts[:3], alone):
        ref = model.generate(torch.tensor([prompt]), max_new_tokens=24, do_sample=False, min_new_tokens=24,
                             pad_token_id=tiny_tokenizer.pad_token_id)
        assert ref[0, len(prompt):].tolist() == gen.token_ids


def test_batched_logits_match_unbatched_within_tolerance(llama, prompts, tiny_tokenizer):
    params = SamplingParams(max_new_tokens=6)
    batched = Recorder(llama)
    run(batched, prompts, params, tiny_tokenizer.pad_token_id)
    worst = 0.0
    for row, prompt in enumerate(prompts):
        alone = Recorder(llama)
        run(alone, [prompt], params, tiny_tokenizer.pad_token_id)
        for (_, batch_logits), (_, row_logits) in zip(batched.calls, alone.calls):
            worst = max(worst, float((batch_logits[row] - row_logits[0]).abs().max()))
    assert worst < 1e-4


def test_stop_id_ends_row_and_is_yielded(llama, prompts, tiny_tokenizer):
    free = generate(llama, prompts, SamplingParams(max_new_tokens=12), tiny_tokenizer.pad_token_id)
    stop = free[1].token_ids[4]
    cut = free[1].token_ids.index(stop) + 1
    gens = generate(llama, prompts, SamplingParams(max_new_tokens=12, stop_ids=(stop,)), tiny_tokenizer.pad_token_id)
    assert gens[1].token_ids == free[1].token_ids[:cut] and gens[1].finish_reason == FINISH_STOP
    for before, after in zip(free, gens):  # other rows run on unchanged until they meet the stop id
        n = before.token_ids.index(stop) + 1 if stop in before.token_ids else len(before.token_ids)
        assert after.token_ids == before.token_ids[:n]


def test_max_new_tokens_per_row_and_zero(llama, prompts, tiny_tokenizer):
    limits = [1, 5, 0, 3, 7]
    gens = generate(llama, prompts, [SamplingParams(max_new_tokens=n) for n in limits], tiny_tokenizer.pad_token_id)
    assert [len(g.token_ids) for g in gens] == limits
    assert all(g.finish_reason == FINISH_LENGTH for g in gens)
    assert [g.prompt_tokens for g in gens] == [len(p) for p in prompts]
    assert all(0 <= g.first_token_s <= g.total_s for g in gens)


def test_finished_rows_leave_the_batch_and_loop_stops_early(llama, prompts, tiny_tokenizer):
    model = Recorder(llama)
    limits = [2, 4, 4, 6, 1]
    run(model, prompts, [SamplingParams(max_new_tokens=n) for n in limits], tiny_tokenizer.pad_token_id)
    # One forward per step, each over the rows still running; none after the last row is done.
    assert [size for size, _ in model.calls] == [5, 4, 3, 3, 1, 1]


def test_should_stop_cancels_one_row(llama, prompts, tiny_tokenizer):
    params = SamplingParams(max_new_tokens=10)
    full = run(llama, prompts, params, tiny_tokenizer.pad_token_id)
    seen = {row: 0 for row in range(len(prompts))}

    def should_stop(row: int) -> bool:
        return row == 3 and seen[row] >= 2

    out: dict[int, list[int]] = {}
    for step in decode_stream(llama, prompts, params, tiny_tokenizer.pad_token_id, should_stop=should_stop):
        for row, token in step:
            seen[row] += 1
            out.setdefault(row, []).append(token)
    assert out[3] == full[3][:2]
    assert all(out[r] == full[r] for r in full if r != 3)
    assert run(llama, prompts, params, tiny_tokenizer.pad_token_id, should_stop=lambda r: True) == {}


def test_sampling_is_per_row_seeded(llama, prompts, tiny_tokenizer):
    pad = tiny_tokenizer.pad_token_id
    params = [SamplingParams(max_new_tokens=16, temperature=1.3, top_p=0.95, seed=s) for s in range(len(prompts))]
    batched = [g.token_ids for g in generate(llama, prompts, params, pad)]
    alone = [generate(llama, [p], [sp], pad)[0].token_ids for p, sp in zip(prompts, params)]
    assert batched == alone
    assert batched == [g.token_ids for g in generate(llama, prompts, params, pad, batch_size=2)]
    reseeded = SamplingParams(max_new_tokens=16, temperature=1.3, top_p=0.95, seed=99)
    assert generate(llama, [prompts[0]], reseeded, pad)[0].token_ids != alone[0]


def test_tiny_top_p_and_temperature_zero_are_greedy(llama, prompts, tiny_tokenizer):
    pad = tiny_tokenizer.pad_token_id
    greedy = generate(llama, prompts, SamplingParams(max_new_tokens=8), pad)
    nucleus = generate(llama, prompts, SamplingParams(max_new_tokens=8, temperature=1.0, top_p=1e-6, seed=0), pad)
    assert [g.token_ids for g in nucleus] == [g.token_ids for g in greedy]


def test_generate_keeps_input_order_across_batches(llama, prompts, tiny_tokenizer):
    pad = tiny_tokenizer.pad_token_id
    params = SamplingParams(max_new_tokens=5)
    one_batch = generate(llama, prompts, params, pad, batch_size=16)
    small = generate(llama, prompts, params, pad, batch_size=2)
    assert all(isinstance(g, Generation) for g in small)
    assert [g.token_ids for g in small] == [g.token_ids for g in one_batch]
    assert [g.prompt_tokens for g in small] == [len(p) for p in prompts]


def test_inference_mode_does_not_leak_between_steps(llama, prompts, tiny_tokenizer):
    stream = decode_stream(llama, prompts, SamplingParams(max_new_tokens=3), tiny_tokenizer.pad_token_id)
    next(stream)
    assert not torch.is_inference_mode_enabled()
    stream.close()


@pytest.mark.parametrize("bad", [
    dict(prompts=[[1, 2], []]),
    dict(params=SamplingParams(temperature=-0.1)),
    dict(params=SamplingParams(top_p=0.0)),
    dict(params=SamplingParams(max_new_tokens=-1)),
    dict(params=[SamplingParams()]),
])
def test_bad_arguments_raise_at_call_time(llama, bad):
    args = {"prompts": [[1, 2], [3]], "params": SamplingParams(), **bad}
    with pytest.raises(ValueError):
        decode_stream(llama, args["prompts"], args["params"], 0)


def test_lora_peft_model_decodes_batched(tiny_llama, prompts, tiny_tokenizer):
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    model = get_peft_model(load(tiny_llama), LoraConfig(r=4, target_modules=["q_proj", "v_proj"],
                                                        init_lora_weights=False)).eval()
    pad, params = tiny_tokenizer.pad_token_id, SamplingParams(max_new_tokens=12)
    batched = [g.token_ids for g in generate(model, prompts, params, pad)]
    assert batched == [generate(model, [p], params, pad)[0].token_ids for p in prompts]
    with model.disable_adapter():
        base = [g.token_ids for g in generate(model, prompts, params, pad)]
    assert base != batched  # the adapter is in force through the duck-typed call


def cache_free_greedy(forward, prompt, n):
    """Greedy ids from re-running `forward(ids) -> [1, T, V] logits` over the whole sequence each step."""
    ids, out = list(prompt), []
    with torch.no_grad():
        for _ in range(n):
            token = int(forward(torch.tensor([ids]))[0, -1].argmax())
            out.append(token)
            ids.append(token)
    return out


@pytest.mark.parametrize("family", FAMILIES)
def test_cached_batched_path_equals_cache_free_forward(family, prompts, tiny_tokenizer, request):
    model = load(request.getfixturevalue(family))
    gens = generate(model, prompts, SamplingParams(max_new_tokens=12), tiny_tokenizer.pad_token_id)
    for prompt, gen in zip(prompts, gens):
        assert gen.token_ids == cache_free_greedy(lambda x: model(input_ids=x, use_cache=False).logits, prompt, 12)


def test_prompt_tuning_takes_uncached_path_and_equals_virtual_tokens_in_front(tiny_llama, prompts, tiny_tokenizer):
    """Prompt tuning = the learned embeddings in front of the prompt's, through the base model.

    The reference is built by hand (virtual embeddings + token embeddings -> base model, whole
    sequence each step), not with `PeftModel.generate`: peft 0.21.2 under transformers >= 5.24
    looks for the KV cache under `past_key_values` while generate passes it as `cache`, so it
    re-inserts the virtual tokens at every step (found when this test compared against it).
    """
    from peft import PromptTuningConfig, get_peft_model

    torch.manual_seed(0)
    model = get_peft_model(load(tiny_llama), PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=4)).eval()
    base, virtual = model.get_base_model(), model.get_prompt(batch_size=1)

    def by_hand(x):
        return base(inputs_embeds=torch.cat([virtual, base.get_input_embeddings()(x)], dim=1)).logits

    gens = generate(model, prompts[:3], SamplingParams(max_new_tokens=8), tiny_tokenizer.pad_token_id)
    for prompt, gen in zip(prompts[:3], gens):
        assert gen.token_ids == cache_free_greedy(by_hand, prompt, 8)
        with model.disable_adapter():
            assert gen.token_ids != cache_free_greedy(lambda x: base(input_ids=x).logits, prompt, 8)


def test_tiny_temperature_and_top_p_do_not_crash(tiny_llama):
    # Found by the server's fuzz test: T=1e-300 overflowed logits/T to inf; top_p=5e-57 dropped every token.
    from domaintune.models.load import load_model

    model = load_model(tiny_llama).eval()
    greedy = generate(model, [[1, 2, 3]], SamplingParams(max_new_tokens=3), 0)[0].token_ids
    tiny_t = generate(model, [[1, 2, 3]], SamplingParams(max_new_tokens=3, temperature=1e-300, seed=1), 0)
    tiny_p = generate(model, [[1, 2, 3]], SamplingParams(max_new_tokens=3, temperature=1.0, top_p=5e-57, seed=1), 0)
    assert tiny_t[0].token_ids == greedy and tiny_p[0].token_ids == greedy


def test_generate_reports_progress_per_batch(llama, prompts, tiny_tokenizer):
    done: list[int] = []
    generate(llama, prompts, SamplingParams(max_new_tokens=2), tiny_tokenizer.pad_token_id, batch_size=2,
             progress=done.append)
    assert done == [2, 2, 1]
