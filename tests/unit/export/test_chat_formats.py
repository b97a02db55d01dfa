"""Jinja twins of the built-in templates render exactly what training rendered; Go templates are matched."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from domaintune.errors import UserError
from domaintune.export.chat_formats import GO_TEMPLATES, JINJA_TEMPLATES, jinja_template, ollama_template
from domaintune.models.templates import ChatTemplate, get_template

# SmolLM2-135M-Instruct's own template: ChatML plus a default system message.
SMOLLM_JINJA = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}"
    "{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
TEXT = st.one_of(st.text(max_size=30), st.sampled_from(["<think>\nplan\n</think>\n\nanswer", "a</think>b", "", "\n\n"]))
MESSAGE = st.fixed_dictionaries({"role": st.sampled_from(["system", "user", "assistant"]), "content": TEXT})


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(name=st.sampled_from(sorted(JINJA_TEMPLATES)), messages=st.lists(MESSAGE, min_size=1, max_size=6),
       generation=st.booleans())
def test_jinja_twin_renders_exactly_like_the_builtin(tiny_tokenizer, name, messages, generation):
    template = get_template(name)
    jinja = tiny_tokenizer.apply_chat_template(messages, chat_template=jinja_template(template), tokenize=False,
                                               add_generation_prompt=generation)
    assert jinja == template.render(messages, add_generation_prompt=generation)


def test_tokenizer_template_is_exported_as_is(tiny_tokenizer):
    template = get_template("tokenizer", tiny_tokenizer)
    assert jinja_template(template, tiny_tokenizer) == tiny_tokenizer.chat_template


def test_tokenizer_template_without_a_tokenizer_is_a_user_error():
    template = ChatTemplate("tokenizer", (), (), lambda m, g, k: [])
    with pytest.raises(UserError, match="no Jinja form"):
        jinja_template(template, None)


@pytest.mark.parametrize("name", sorted(GO_TEMPLATES))
def test_builtins_have_go_templates_ending_with_the_assistant_header(name):
    found = ollama_template(get_template(name))
    assert found.builtin == name and found.default_system is None
    header = get_template(name).render([], add_generation_prompt=True).replace("<｜begin▁of▁sentence｜>", "")
    assert found.go_template.endswith(header) and "{{ range .Messages }}" in found.go_template


def test_tokenizer_template_equal_to_chatml_maps_to_chatml(tiny_tokenizer):
    found = ollama_template(get_template("tokenizer", tiny_tokenizer))
    assert (found.builtin, found.default_system) == ("chatml", None)


def test_default_system_message_is_read_off_the_template(tiny_tokenizer):
    tiny_tokenizer = tiny_tokenizer.__class__.from_pretrained(tiny_tokenizer.name_or_path)
    tiny_tokenizer.chat_template = SMOLLM_JINJA
    found = ollama_template(get_template("tokenizer", tiny_tokenizer))
    assert found.builtin == "chatml"
    assert found.default_system == "You are a helpful AI assistant named SmolLM, trained by Hugging Face"


def test_unknown_template_has_no_go_form(tiny_tokenizer):
    tiny_tokenizer = tiny_tokenizer.__class__.from_pretrained(tiny_tokenizer.name_or_path)
    tiny_tokenizer.chat_template = ("{% for m in messages %}[{{ m['role'] }}]{{ m['content'] }}<|im_end|>{% endfor %}"
                                    "{% if add_generation_prompt %}[assistant]{% endif %}")
    assert ollama_template(get_template("tokenizer", tiny_tokenizer)) is None
