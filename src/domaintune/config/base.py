"""The base of every recipe section, and the YAML loading that keeps line numbers.

`Section` forbids unknown keys. The helpers here read YAML with the line of every key, parse
`--set a.b=c` overrides, merge them, and turn a pydantic `ValidationError` into one line that
names the file, the line, the key and a fix. `domaintune.config.recipe.load_recipe` puts them together.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from domaintune.errors import UserError

# Where each key of a YAML file sits: (key, subkey, list index, ...) -> 1-based line.
Lines = dict[tuple, int]


class Section(BaseModel):
    """Base of every recipe section: unknown keys are errors, not silently ignored."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


def read_yaml(path: str) -> tuple[dict[str, Any], Lines]:
    """Read a recipe file: its mapping and the line of every key.

    Raises:
        UserError: the file is missing, is not YAML, or is not a mapping.
    """
    file = Path(path)
    if not file.is_file():
        raise UserError("recipe file not found", file=path, hint="check the path, or list shipped ones with `domaintune recipe ls`")
    text = file.read_text(encoding="utf-8-sig")
    try:
        node = yaml.compose(text)
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        raise UserError(f"invalid YAML: {getattr(err, 'problem', err)}", file=path,
                        line=mark.line + 1 if mark else None, hint="fix the YAML syntax") from None
    if data is None:
        return {}, {}
    if not isinstance(data, dict):
        raise UserError("a recipe must be a mapping of sections (model:, prepare:, ...)", file=path, line=1)
    lines: Lines = {}
    _collect_lines(node, (), lines)
    return data, lines


def _collect_lines(node: yaml.Node | None, loc: tuple, out: Lines) -> None:
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            here = loc + (key.value,)
            out[here] = key.start_mark.line + 1
            _collect_lines(value, here, out)
    elif isinstance(node, yaml.SequenceNode):
        for i, value in enumerate(node.value):
            out[loc + (i,)] = value.start_mark.line + 1
            _collect_lines(value, loc + (i,), out)


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """`["a.b=3", "a.c=[1, 2]"]` -> `{"a": {"b": 3, "c": [1, 2]}}` (values parsed as YAML).

    Raises:
        UserError: an item without `=` or without a key.
    """
    result: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise UserError(f"bad --set '{item}'", hint="write --set section.key=value, e.g. --set prepare.seed=3")
        value = yaml.safe_load(raw) if raw.strip() else ""
        deep_merge(result, _nest(key.strip().split("."), value))
    return result


def _nest(keys: list[str], value: Any) -> dict[str, Any]:
    for key in reversed(keys):
        value = {key: value}
    return value


def deep_merge(into: dict[str, Any], other: dict[str, Any]) -> None:
    """Merge `other` into `into` in place; nested mappings merge, anything else is replaced."""
    for key, value in other.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            deep_merge(into[key], value)
        else:
            into[key] = value


def format_errors(err: ValidationError, path: str | None, lines: Lines, root: type[BaseModel]) -> str:
    """Every validation error of `root` in one line: `file:line: key: what (fix: ...)`, joined by '; '."""
    parts = []
    for e in err.errors():
        loc = tuple(x for x in e["loc"] if not (isinstance(x, str) and x.startswith("function-")))
        line = _nearest_line(loc, lines)
        where = f"{path}:{line}: " if path and line else (f"{path}: " if path else "")
        key = ".".join(str(x) for x in loc) or "recipe"
        parts.append(f"{where}{key}: {_describe(e, loc, root)}")
    return "; ".join(parts)


def _nearest_line(loc: tuple, lines: Lines) -> int | None:
    for n in range(len(loc), 0, -1):
        if loc[:n] in lines:
            return lines[loc[:n]]
    return None


def _describe(error: dict[str, Any], loc: tuple, root: type[BaseModel]) -> str:
    if error["type"] == "extra_forbidden":
        allowed = _allowed_keys(root, loc[:-1])
        close = difflib.get_close_matches(str(loc[-1]), allowed, n=1)
        fix = f"did you mean '{close[0]}'? " if close else ""
        return f"unknown key (fix: {fix}allowed keys: {', '.join(allowed)})"
    msg = error["msg"].removeprefix("Value error, ")
    return f"{msg} (got {error['input']!r})" if error["type"] != "missing" else "required key is missing"


def _allowed_keys(root: type[BaseModel], loc: tuple) -> list[str]:
    model: Any = root
    for key in loc:
        if isinstance(key, int):
            continue
        field = getattr(model, "model_fields", {}).get(key)
        if field is None:
            return []
        model = _section_type(field.annotation)
    return sorted(getattr(model, "model_fields", {}))


def _section_type(annotation: Any) -> Any:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()):
        found = _section_type(arg)
        if found is not None:
            return found
    return None


def field_help(model: type[BaseModel], name: str) -> str:
    """The description of a recipe field, for CLI help (one source of help text).

    Example:
        >>> from domaintune.config import TrainConfig
        >>> field_help(TrainConfig, "seed")
        'Seed for initialisation, data order and dropout. (default: 0)'
    """
    field = model.model_fields[name]
    default = field.get_default(call_default_factory=True)
    suffix = f" (default: {default})" if default not in (None, [], {}) and not isinstance(default, BaseModel) else ""
    return (field.description or "") + suffix
