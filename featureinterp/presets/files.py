"""Presets as files (TOML, YAML or JSON) and as plain data.

A user with their own model, SAEs or corpus writes a preset file instead of Python inside the
library: ``FEATUREINTERP_PRESET=./my-preset.toml``. ``featureinterp presets show NAME --format
toml`` prints any preset (built-in or file) in the same format, so the easiest way to start is to
print a built-in and edit it. Loading the printed text gives back an equal preset (tested for
every built-in).

The same data form carries the resolved preset into Dagster runs as resource config
(``preset_to_json``), so a run computes with the preset it was launched with, never with a
preset looked up again by name.

Format: the fields of ``featureinterp.config.Preset`` and its parts, nested as tables
(``[model]``, ``[sae]``, ``[sae.train]``, ``[corpus]``, ``[explain]``, ``[explain.simulator]``,
``[explain.explainer]``); a field left out takes its default; ``None`` is written by leaving the
field out. The explainer says which kind it is: ``kind = "api"`` (an OpenAI-compatible route) or
``kind = "local"`` (a local model). Every unknown field and every value outside its allowed set
fails with one error naming the file, the field and what is allowed.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import types
import typing
from pathlib import Path
from typing import Any, Literal, Union

from featureinterp.config import PRESET_ENV, ApiSpec, ModelSpec, Preset
from featureinterp.errors import ConfigError
from featureinterp.names import check_preset_name

__all__ = [
    "FORMATS",
    "dump_preset",
    "is_preset_file",
    "load_preset_file",
    "parse_preset",
    "preset_from_dict",
    "preset_from_json",
    "preset_reference",
    "preset_to_dict",
    "preset_to_json",
]

FORMATS = ("toml", "yaml", "json")
_SUFFIXES = {".toml": "toml", ".yaml": "yaml", ".yml": "yaml", ".json": "json"}
_KINDS: dict[type, str] = {ApiSpec: "api", ModelSpec: "local"}
"""Discriminator of a field that holds one of several config classes (the explainer)."""


def is_preset_file(name: str) -> bool:
    """Whether a preset name is a path to a preset file (by its suffix)."""
    return Path(name).suffix.lower() in _SUFFIXES


# ---------------------------------------------------------------- to data


def _to_data(value: Any, union: bool = False) -> Any:
    if dataclasses.is_dataclass(value):
        out = {"kind": _KINDS[type(value)]} if union else {}
        hints = typing.get_type_hints(type(value))
        for f in dataclasses.fields(value):
            v = getattr(value, f.name)
            if v is None:
                continue  # TOML has no null: a left-out field is None (or its default)
            out[f.name] = _to_data(v, union=_is_class_union(hints[f.name]))
        return out
    if isinstance(value, tuple | list):
        return [_to_data(v) for v in value]
    return value


def preset_to_dict(preset: Preset) -> dict[str, Any]:
    """The preset as nested plain data (dicts, lists, scalars), None fields left out."""
    return _to_data(preset)


def preset_to_json(preset: Preset) -> str:
    return json.dumps(preset_to_dict(preset), sort_keys=True)


def dump_preset(preset: Preset, fmt: str = "toml") -> str:
    """The preset as a file's text in ``fmt`` (toml, yaml or json)."""
    data = preset_to_dict(preset)
    if fmt == "toml":
        import tomlkit

        return tomlkit.dumps(data)
    if fmt == "yaml":
        import yaml

        return yaml.safe_dump(data, sort_keys=False)
    if fmt == "json":
        return json.dumps(data, indent=2) + "\n"
    raise ConfigError(f"preset format {fmt!r}: choose one of {', '.join(FORMATS)}")


# ---------------------------------------------------------------- from data


def _is_class_union(hint: Any) -> bool:
    return len([a for a in typing.get_args(hint) if dataclasses.is_dataclass(a)]) > 1


def _describe(hint: Any) -> str:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if origin in (Union, types.UnionType):
        return " or ".join(_describe(a) for a in args if a is not type(None))
    if origin is tuple:
        return "a list" + (f" of {_describe(args[0])}" if args and args[-1] is Ellipsis else "")
    if dataclasses.is_dataclass(hint):
        return f"a table ({', '.join(f.name for f in dataclasses.fields(hint))})"
    return getattr(hint, "__name__", str(hint))


class _Bad(Exception):
    """A value that does not fit its field: (field path, message)."""


def _convert(value: Any, hint: Any, where: str) -> Any:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (Union, types.UnionType):
        options = [a for a in args if a is not type(None)]
        classes = [a for a in options if isinstance(a, type) and dataclasses.is_dataclass(a)]
        if len(classes) > 1:
            if not isinstance(value, dict) or value.get("kind") not in {_KINDS[c] for c in classes}:
                kinds = " or ".join(repr(_KINDS[c]) for c in classes)
                raise _Bad(where, f"needs kind = {kinds}")
            cls = next(c for c in classes if _KINDS[c] == value["kind"])
            return _from_dict(cls, {k: v for k, v in value.items() if k != "kind"}, where)
        for option in options:
            try:
                return _convert(value, option, where)
            except _Bad:
                continue
        raise _Bad(where, f"must be {_describe(hint)}, not {value!r}")
    if origin is Literal:
        if value not in args:
            raise _Bad(where, f"must be {_describe(hint)}, not {value!r}")
        return value
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise _Bad(where, f"must be {_describe(hint)}, not {value!r}")
        if args and args[-1] is Ellipsis:
            return tuple(_convert(v, args[0], f"{where}[{i}]") for i, v in enumerate(value))
        if len(value) != len(args):
            raise _Bad(where, f"must have {len(args)} items, not {len(value)}")
        return tuple(
            _convert(v, a, f"{where}[{i}]") for i, (v, a) in enumerate(zip(value, args, strict=True))
        )
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):  # a class, never an instance
        if not isinstance(value, dict):
            raise _Bad(where, f"must be {_describe(hint)}, not {value!r}")
        return _from_dict(hint, value, where)
    if hint is bool:
        if not isinstance(value, bool):
            raise _Bad(where, f"must be true or false, not {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise _Bad(where, f"must be an integer, not {value!r}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise _Bad(where, f"must be a number, not {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise _Bad(where, f"must be a string, not {value!r}")
        return value
    raise _Bad(where, f"has an unsupported type {hint!r}")  # a new config field type: extend _convert


def _from_dict(cls: type, data: dict, where: str) -> Any:
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    for key in data:
        if key not in names:
            raise _Bad(f"{where}.{key}".lstrip("."), f"is not a field; allowed: {', '.join(names)}")
    kwargs = {k: _convert(v, hints[k], f"{where}.{k}".lstrip(".")) for k, v in data.items()}
    missing = [
        f.name
        for f in dataclasses.fields(cls)
        if f.name not in kwargs
        and f.default is dataclasses.MISSING
        and f.default_factory is dataclasses.MISSING
    ]
    if missing:
        raise _Bad(where or cls.__name__, f"needs {', '.join(missing)}")
    try:
        return cls(**kwargs)
    except (ConfigError, TypeError, ValueError) as err:
        raise _Bad(where or "preset", str(err)) from err


def preset_from_dict(data: dict, source: str = "preset data") -> Preset:
    """A preset from nested plain data; ``source`` names where it came from in errors."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: a preset is a table of fields, not {type(data).__name__}")
    if isinstance(data.get("name"), str):  # named as a field of the file (Preset checks it again)
        try:
            check_preset_name(data["name"])
        except ConfigError as err:
            raise ConfigError(f"{source}: field name {err}") from None
    try:
        preset = _from_dict(Preset, data, "")
    except _Bad as err:
        field_name, message = err.args
        raise ConfigError(f"{source}: field {field_name} {message}") from None
    from featureinterp.explain.conditions import CONDITIONS

    generated = preset.generated.condition
    if generated is not None and generated not in CONDITIONS:
        raise ConfigError(f"{source}: field generated.condition {generated!r} is not a condition; allowed: {', '.join(CONDITIONS)}")
    unknown = [c for c in preset.explain.conditions if c not in CONDITIONS]
    if unknown:
        raise ConfigError(
            f"{source}: field explain.conditions has unknown {', '.join(map(repr, unknown))}; "
            f"allowed: {', '.join(CONDITIONS)}"
        )
    return preset


def preset_from_json(text: str) -> Preset:
    return preset_from_dict(json.loads(text), "preset JSON")


def _read(text: str, fmt: str, source: str) -> Any:
    try:
        if fmt == "toml":
            toml = __import__("tomllib") if sys.version_info >= (3, 11) else __import__("tomli")
            return toml.loads(text)
        if fmt == "yaml":
            import yaml

            return yaml.safe_load(text)
        if fmt == "json":
            return json.loads(text)
    except Exception as err:  # the parser's own message says where the syntax broke
        raise ConfigError(f"{source}: not valid {fmt.upper()}: {err}") from None
    raise ConfigError(f"{source}: preset format {fmt!r}: choose one of {', '.join(FORMATS)}")


def parse_preset(text: str, fmt: str, source: str, default_name: str | None = None) -> Preset:
    """A preset from a file's text in ``fmt``; ``default_name`` where the text names none."""
    data = _read(text, fmt, source)
    if isinstance(data, dict) and default_name and "name" not in data:
        data = {"name": default_name, **data}
    return preset_from_dict(data, source)


def load_preset_file(path: str | Path) -> Preset:
    """The preset in a TOML/YAML/JSON file; its ``name`` defaults to the file's stem."""
    path = Path(path)
    fmt = _SUFFIXES.get(path.suffix.lower())
    if fmt is None:
        raise ConfigError(f"{path}: a preset file ends in {', '.join(_SUFFIXES)}")
    if not path.is_file():
        raise ConfigError(
            f"preset file {path} does not exist (FEATUREINTERP_PRESET takes a preset name or a file path)"
        )
    preset = parse_preset(path.read_text(), fmt, str(path), default_name=path.stem)
    found = preset.sae.discovered_layers()  # SAE folders present now (sae.discover_layers)
    if found and not set(found) <= set(preset.layers):
        preset = preset.replace(layers=tuple(sorted(set(preset.layers) | set(found))))
    return preset


def preset_reference(name: str) -> str:
    """How a command line names the preset called ``name``: the preset file $FEATUREINTERP_PRESET
    names when that file holds this preset (a file's preset is not found by its name, so a hint
    like ``FEATUREINTERP_PRESET=<name> featureinterp run`` would not resolve), else the name."""
    import os

    source = os.environ.get(PRESET_ENV, "")
    if source and is_preset_file(source):
        try:
            if load_preset_file(source).name == name:
                return source
        except ConfigError:  # the file changed or went away since: the name is all we know
            pass
    return name
