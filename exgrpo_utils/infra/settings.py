"""Documented settings fields and the typed, flat parameter namespace built from them.

Every setting of the kit is a field of one frozen dataclass of its stage (``SFTSettings``,
``ExGRPOSettings``, ...), declared with :func:`setting`: the field's default is the only place that
default lives, and its metadata says what it means and where the value comes from:

* ``paper``: the paper states the value;
* ``kit default``: the paper is silent, the kit chose (overridable, documented);
* ``speed only``: changes speed or memory, never a result;
* ``run``: names a run, a path or a model.

A class's ``PREFIX`` turns its fields into the flat parameter names the notebooks, presets and
``--set`` use (``SFTSettings.learning_rate`` is ``sft_learning_rate``), so one name means one
thing everywhere. Values given as text (``--set``) are typed by the field they set, and a field
declared with ``choices`` takes only those values (:func:`check_choice`).
"""
from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Mapping

import yaml

SOURCES = {
    "paper": "the paper states this value",
    "kit default": "the paper is silent; the kit's choice",
    "speed only": "changes speed or memory, never a result",
    "run": "names a run, a path, a model or a data location",
}


class SettingsError(ValueError):
    """A parameter that is unknown, of the wrong type, or malformed; the message is one line."""


def setting(default: Any, help: str, source: str = "kit default", choices: tuple = (), added: bool = False):
    """A dataclass field with its meaning (``help``), where its value comes from (``source``) and,
    where only some values are meaningful, the values it accepts (``choices``). ``added``: a field
    added after outputs were made whose default does what the kit did before it existed; at that
    default it is left out of fingerprints (``result_fields``), so those outputs stay current."""
    if source not in SOURCES:
        raise ValueError(f"source must be one of {sorted(SOURCES)}, got {source!r}")
    if isinstance(default, (list, dict, set)):
        raise TypeError("mutable defaults: use a tuple")
    if choices and default not in choices:
        raise ValueError(f"default {default!r} is not one of the choices {choices}")
    return field(default=default, metadata={"help": help, "source": source, "choices": tuple(choices), "added": added})


@dataclass(frozen=True)
class Param:
    """One flat parameter: ``name`` = the class's ``PREFIX`` + the field's name."""
    name: str
    owner: type
    field: str
    type: Any
    default: Any
    help: str
    source: str
    choices: tuple = ()  # the values it accepts; empty: any value of its type
    added: bool = False  # setting(added=True): at its default it does what the kit did before it existed

    @property
    def type_name(self) -> str:
        return type_name(self.type)


def params_of(cls) -> list[Param]:
    """The flat parameters of a settings dataclass, in field order."""
    prefix = getattr(cls, "PREFIX", "")
    hints = typing.get_type_hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        if "help" not in f.metadata:
            raise TypeError(f"{cls.__name__}.{f.name} is not declared with setting(): no help text")
        out.append(Param(prefix + f.name, cls, f.name, hints[f.name], plain(f.default), f.metadata["help"],
                         f.metadata["source"], f.metadata.get("choices", ()), f.metadata.get("added", False)))
    return out


def plain(value: Any) -> Any:
    """JSON/papermill-friendly form: tuples become lists (recursively)."""
    if isinstance(value, (tuple, list)):
        return [plain(v) for v in value]
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    return value


def type_name(tp: Any) -> str:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        return " | ".join(type_name(a) for a in args)
    if origin in (tuple, list):
        return f"list[{type_name(args[0])}]" if args else "list"
    if origin is dict:
        return "dict"
    return "None" if tp is type(None) else getattr(tp, "__name__", str(tp))


_TRUE, _FALSE = {"true", "yes", "on", "1"}, {"false", "no", "off", "0"}


def coerce(name: str, tp: Any, value: Any) -> Any:
    """``value`` as the type ``tp`` of parameter ``name`` (plain form), or a one-line SettingsError."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None or (isinstance(value, str) and value.strip().lower() in ("null", "none")):
            if type(None) in args:
                return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return coerce(name, a, value)
            except SettingsError as exc:
                errors.append(str(exc))
        raise SettingsError(errors[0] if errors else f"{name}: expected {type_name(tp)}, got {value!r}")
    if origin in (tuple, list):
        if value is None:  # "--set report_to=": the empty list
            return []
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            raise SettingsError(f"{name}: expected a list, got {value!r}")
        return [coerce(name, args[0], v) for v in value] if args else list(value)
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise SettingsError(f"{name}: expected a mapping, got {value!r}")
        return dict(value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
            return value.strip().lower() in _TRUE
        raise SettingsError(f"{name}: expected true or false, got {value!r}")
    if tp in (int, float):
        if isinstance(value, str):
            try:
                return tp(value.strip())  # "1e-5" stays a float; "2.5" is no integer
            except ValueError:
                pass
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            if tp is float:
                return float(value)
            if isinstance(value, int) or value.is_integer():
                return int(value)
        raise SettingsError(f"{name}: expected {'an integer' if tp is int else 'a number'}, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        raise SettingsError(f"{name}: expected text, got {value!r}")
    raise SettingsError(f"{name}: unsupported type {tp!r}")


def check_choice(name: str, choices: tuple, value: Any) -> Any:
    """``value`` if ``choices`` is empty or holds it, else a one-line SettingsError naming the
    parameter, the value and the accepted values."""
    if choices and value not in choices:
        raise SettingsError(f"{name}: {value!r} is not accepted; use one of {', '.join(map(str, choices))}")
    return value


def parse_text(name: str, tp: Any, text: str) -> Any:
    """A ``--set`` value: text fields take the text as it is, others are read as YAML and typed."""
    if tp is str:
        return text
    try:
        value = yaml.safe_load(text) if text.strip() else None
    except yaml.YAMLError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else "not valid YAML"
        raise SettingsError(f"{name}={text!r}: malformed value ({first})") from None
    return coerce(name, tp, value.strip() if isinstance(value, str) else value)


def result_fields(settings) -> dict:
    """``asdict(settings)`` without the fields declared ``speed only``: what can change a result, for
    fingerprints and reuse checks (a new checkpoint interval must not make a finished run stale), and
    without ``added`` fields at their default (the behaviour from before they existed)."""
    return {f.name: plain(getattr(settings, f.name)) for f in dataclasses.fields(settings)
            if f.metadata.get("source") != "speed only"
            and not (f.metadata.get("added") and getattr(settings, f.name) == f.default)}


def build(cls, params: Mapping[str, Any], **fixed):
    """An instance of the settings class ``cls`` from flat ``params`` (prefixed names; missing names
    take the field's default), plus ``fixed`` fields by their own (unprefixed) names."""
    kwargs = {}
    for p in params_of(cls):
        if p.field in fixed:
            continue
        if p.name in params:
            value = check_choice(p.name, p.choices, coerce(p.name, p.type, params[p.name]))
            kwargs[p.field] = _as_field_value(p.type, value)
    kwargs.update(fixed)
    return cls(**kwargs)


def _as_field_value(tp: Any, value: Any) -> Any:
    origin = typing.get_origin(tp)
    if origin is tuple and isinstance(value, list):
        return tuple(value)
    if origin in (typing.Union, types.UnionType) and isinstance(value, list):
        return tuple(value)
    return value
