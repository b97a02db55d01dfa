"""The training chat template written out for other runtimes: Jinja and Ollama's Go templates.

transformers, vLLM and llama.cpp (`--jinja`) format chats with a Jinja string stored beside the
tokenizer (`chat_template.jinja`, `tokenizer_config.json`, GGUF `tokenizer.chat_template`);
Ollama uses a Go template in its `Modelfile`. An exported model must format prompts exactly as
training did, so each built-in `ChatTemplate` of `models.templates` has a Jinja twin here, checked
against its Python renderer character for character (tests/unit/export/test_chat_formats.py), and
a Go twin for Ollama. The Jinja strings avoid literal newlines next to block tags, because
transformers compiles templates with `trim_blocks` and `lstrip_blocks`.

A tokenizer's own Jinja template is exported as it is. For Ollama it is matched against the
built-ins by rendering probe conversations; a template that is a built-in plus a default system
message (SmolLM2's) maps to that built-in's Go template plus a Modelfile `SYSTEM` line.

    >>> from domaintune.models.templates import get_template
    >>> jinja_template(get_template("chatml")).startswith("{% for message in messages %}")
    True
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from domaintune.errors import UserError
from domaintune.models.templates import (BOS, BUILTIN_TEMPLATES, DS_ASSISTANT, DS_USER, EOS, IM_END, IM_START,
                                         THINK_END, ChatTemplate)


def _fill(text: str) -> str:
    # Placeholders keep the Jinja/Go braces readable (no f-string brace doubling).
    for key, value in {"@BOS@": BOS, "@EOS@": EOS, "@USER@": DS_USER, "@ASSISTANT@": DS_ASSISTANT,
                       "@IM_START@": IM_START, "@IM_END@": IM_END, "@THINK_END@": THINK_END}.items():
        text = text.replace(key, value)
    return text


_CHATML = _fill(
    "{% for message in messages %}{{ '@IM_START@' + message['role'] + '\\n' + message['content'] + '@IM_END@' "
    "+ '\\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '@IM_START@assistant\\n' }}{% endif %}")
_DEEPSEEK_LLM = _fill(
    "{{ '@BOS@' }}{% for message in messages %}{% if message['role'] == 'system' %}{{ message['content'] + '\\n\\n' }}"
    "{% elif message['role'] == 'user' %}{{ 'User: ' + message['content'] + '\\n\\n' }}"
    "{% else %}{{ 'Assistant: ' + message['content'] + '@EOS@' }}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}")
# DeepSeek V3/R1 gather all system text right after BOS; R1 drops the reasoning of every
# assistant turn but the conversation's last message, as `models.templates` does.
_DEEPSEEK_TURNS = _fill(
    "{{ '@BOS@' }}{{ messages | selectattr('role', 'equalto', 'system') | map(attribute='content') | join('\\n\\n') }}"
    "{% for message in messages %}{% if message['role'] == 'user' %}{{ '@USER@' + message['content'] }}"
    "{% elif message['role'] == 'assistant' %}{% set content = message['content'] %}@STRIP@"
    "{{ '@ASSISTANT@' + content + '@EOS@' }}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ '@ASSISTANT@@OPEN@' }}{% endif %}")
_STRIP = _fill("{% if '@THINK_END@' in content and not loop.last %}{% set content = content.split('@THINK_END@')[-1] %}"
               "{% endif %}")

JINJA_TEMPLATES: dict[str, str] = {
    "chatml": _CHATML,
    "deepseek_llm": _DEEPSEEK_LLM,
    "deepseek_v3": _DEEPSEEK_TURNS.replace("@STRIP@", "").replace("@OPEN@", ""),
    "deepseek_r1": _DEEPSEEK_TURNS.replace("@STRIP@", _STRIP).replace("@OPEN@", "<think>\\n"),
}

# Ollama renders `.Messages` itself and appends nothing: the assistant header closes each template.
_GO_DEEPSEEK_TURNS = _fill(
    "@BOS@{{ $first := true }}{{ range .Messages }}{{ if eq .Role \"system\" }}{{ if not $first }}\n\n{{ end }}"
    "{{ .Content }}{{ $first = false }}{{ end }}{{ end }}{{ range .Messages }}{{ if eq .Role \"user\" }}"
    "@USER@{{ .Content }}{{ else if eq .Role \"assistant\" }}@ASSISTANT@{{ .Content }}@EOS@{{ end }}{{ end }}"
    "@ASSISTANT@")
GO_TEMPLATES: dict[str, str] = {
    "chatml": _fill(
        "{{ range .Messages }}@IM_START@{{ .Role }}\n{{ .Content }}@IM_END@\n{{ end }}@IM_START@assistant\n"),
    "deepseek_llm": _fill(
        "@BOS@{{ range .Messages }}{{ if eq .Role \"system\" }}{{ .Content }}\n\n{{ else if eq .Role \"user\" }}"
        "User: {{ .Content }}\n\n{{ else }}Assistant: {{ .Content }}@EOS@{{ end }}{{ end }}Assistant:"),
    "deepseek_v3": _GO_DEEPSEEK_TURNS,
    "deepseek_r1": _GO_DEEPSEEK_TURNS + "<think>\n",
}

_PROBES: tuple[tuple[dict[str, str], ...], ...] = (
    ({"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi there"}),
    ({"role": "system", "content": "S"}, {"role": "user", "content": "a"}, {"role": "assistant", "content": "b"},
     {"role": "user", "content": "c d"}),
    ({"role": "user", "content": "Hi there"},),
    ({"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}, {"role": "user", "content": "c"}),
)


@dataclass(frozen=True)
class OllamaTemplate:
    """What an Ollama Modelfile needs to format chats like the training template.

    Attributes:
        builtin: the built-in template it matches, e.g. "chatml".
        go_template: the Modelfile `TEMPLATE` text.
        default_system: a system message the template adds when a chat has none (Modelfile
            `SYSTEM`), or None.
    """

    builtin: str
    go_template: str
    default_system: str | None


def jinja_template(template: ChatTemplate, tokenizer: Any = None) -> str:
    """The Jinja chat template that renders conversations exactly as `template` does.

    Args:
        template: the training template.
        tokenizer: the tokenizer, for the "tokenizer" template (its own Jinja is used as is).

    Returns:
        A Jinja string for `tokenizer.chat_template`, vLLM and llama.cpp.

    Raises:
        UserError: a "tokenizer" template without a tokenizer that holds one.

    Example:
        >>> from domaintune.models.templates import get_template
        >>> "Assistant:" in jinja_template(get_template("deepseek_llm"))
        True
    """
    if template.name in JINJA_TEMPLATES:
        return JINJA_TEMPLATES[template.name]
    source = getattr(tokenizer, "chat_template", None)
    if not isinstance(source, str) or not source:
        raise UserError(f"no Jinja form of chat template '{template.name}'",
                        hint=f"train with one of: {', '.join(JINJA_TEMPLATES)}, or a tokenizer with a chat template")
    return source


def ollama_template(template: ChatTemplate) -> OllamaTemplate | None:
    """The Go template Ollama needs to format chats like `template`, or None when none is known.

    Built-ins map directly. Any other template (a tokenizer's own Jinja) is rendered on probe
    conversations and compared with each built-in, with and without a default system message.

    Args:
        template: the training template.

    Returns:
        The matching Go template and default system message, or None.

    Example:
        >>> from domaintune.models.templates import get_template
        >>> ollama_template(get_template("chatml")).builtin
        'chatml'
    """
    if template.name in GO_TEMPLATES:
        return OllamaTemplate(template.name, GO_TEMPLATES[template.name], None)
    for name, builtin in BUILTIN_TEMPLATES.items():
        found, system = _matches(template, builtin)
        if found:
            return OllamaTemplate(name, GO_TEMPLATES[name], system)
    return None


def _matches(template: ChatTemplate, builtin: ChatTemplate) -> tuple[bool, str | None]:
    with_system = [p for p in _PROBES if p[0]["role"] == "system"]
    without = [p for p in _PROBES if p[0]["role"] != "system"]
    try:
        if any(_render(template, p) != _render(builtin, p) for p in with_system):
            return False, None
        system = _default_system(template, builtin, without[0])
        prefix = [] if system is None else [{"role": "system", "content": system}]
        return all(_render(template, p) == _render(builtin, (*prefix, *p)) for p in without), system
    except (UserError, ValueError, TypeError):  # a template that rejects a probe is not a match
        return False, None


def _default_system(template: ChatTemplate, builtin: ChatTemplate, probe: Sequence[dict[str, str]]) -> str | None:
    """The system message `template` adds on its own, read off the text before the builtin's render."""
    text, plain = _render(template, probe), _render(builtin, probe)
    if text == plain or not text.endswith(plain):
        return None
    marker = "\x00"
    head, _, tail = builtin.render([{"role": "system", "content": marker}]).partition(marker)
    prefix = text[: len(text) - len(plain)]
    if not (prefix.startswith(head) and prefix.endswith(tail)) or len(prefix) < len(head) + len(tail):
        return None
    return prefix[len(head): len(prefix) - len(tail)]


def _render(template: ChatTemplate, messages: Sequence[dict[str, str]]) -> str:
    return template.render(list(messages), add_generation_prompt=True)
