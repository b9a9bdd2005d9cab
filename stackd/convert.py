"""The one cattrs converter of stackd, and the small value types whose checks it owns.

Config files, plugin configs and API request bodies are all structured here, so a wrong value
reads the same everywhere: ``expected an http(s) URL @ $.providers.inference[0].config.url``.

Scalars are strict: cattrs would turn ``url: 12`` into ``"12"`` and ``port: true`` into ``1``;
here they are errors.

Every hook is built inside :func:`make_converter` and structures nested values with the
converter it belongs to, so a fresh converter checks exactly what the global one checks.
Schemas never register hooks: a type that needs more than the generic rules says so on
itself with ``Annotated`` markers, read when the converter meets the type:

- ``Annotated[int, Check(test, "a port number ...")]``: structured as ``int``, then checked;
- ``Annotated[A | B, Tagged("type", "store")]``: attrs classes told apart by a ``Literal`` field;
- ``Annotated[T, Hook(factory)]``: ``factory(converter)`` returns the hook, for shapes no rule fits.
"""

from __future__ import annotations

import math
import types
import typing
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, NewType, TypeVar, Union, get_args, get_origin
from urllib.parse import urlsplit

import attrs
import cattrs
from cattrs.errors import ClassValidationError, ForbiddenExtraKeysError, IterableValidationError, IterableValidationNote
from cattrs.gen import make_dict_structure_fn

from stackd.errors import BadRequest, FieldError

__all__ = [
    "Check",
    "Hook",
    "HttpUrl",
    "Secret",
    "Seconds",
    "StructureError",
    "Tagged",
    "converter",
    "describe",
    "field_errors",
    "make_converter",
    "structure",
    "unknown_keys",
]

T = TypeVar("T")

HttpUrl = NewType("HttpUrl", str)
"""An ``http://`` or ``https://`` URL, with the trailing slash removed."""

Seconds = NewType("Seconds", float)
"""A positive number of seconds."""


class StructureError(ValueError):
    """A value check failed; the message is what the user reads, the path is added by cattrs."""


@attrs.frozen(repr=False)
class Secret:
    """A value that must never reach a log line or a response: repr and unstructure mask it."""

    _value: str

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('********')"

    def __bool__(self) -> bool:
        return bool(self._value)


MASK = "********"

_PRIMITIVES: dict[type, str] = {
    str: "a string",
    int: "an integer",
    float: "a number",
    bool: "true or false",
    type(None): "null",
    Path: "a path",
}


def _structure_str(value: Any, _: type) -> str:
    if isinstance(value, str):
        return value
    raise StructureError(f"expected a string, got {describe(value)}")


def _structure_int(value: Any, _: type) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str):
        try:
            return int(value.strip())
        except ValueError:
            pass
    raise StructureError(f"expected an integer, got {describe(value)}")


def _finite(number: float, value: Any) -> float:
    # NaN compares false with every bound, so a check like `timeout > 0` lets it through and it
    # breaks far from its field (every stream ending in an error); inf is as meaningless.
    if not math.isfinite(number):
        raise StructureError(f"expected a finite number, got {describe(value)}")
    return number


def _structure_float(value: Any, _: type) -> float:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        try:
            return _finite(float(value), value)
        except OverflowError:  # an int beyond the float range
            raise StructureError(f"expected a finite number, got {describe(value)}") from None
    if isinstance(value, str):
        try:
            number = float(value.strip())
        except ValueError:
            pass
        else:
            return _finite(number, value)
    raise StructureError(f"expected a number, got {describe(value)}")


def _structure_bool(value: Any, _: type) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    raise StructureError(f"expected true or false, got {describe(value)}")


def _structure_path(value: Any, _: type) -> Path:
    if isinstance(value, (str, Path)) and str(value):
        try:
            return Path(value).expanduser()
        except RuntimeError:  # ~name of a user this machine does not have (or no HOME for ~)
            raise StructureError(f"cannot expand {str(value).split('/', 1)[0]!r}: no such user's home "
                                 "directory; write the path out in full") from None
    raise StructureError(f"expected a path, got {describe(value)}")


def _structure_url(value: Any, _: type) -> HttpUrl:
    if isinstance(value, str):
        parts = urlsplit(value.strip())
        if parts.username is not None or parts.password is not None:
            # A password in a URL reaches error messages, logs and GET /v1/providers; a Secret
            # field does not. The value is not repeated here for the same reason.
            raise StructureError("a URL must not carry credentials (user:password@); put them in the "
                                 "provider's token or key setting")
        if parts.scheme in ("http", "https") and parts.netloc:
            return HttpUrl(value.strip().rstrip("/"))
    raise StructureError(f"expected an http(s) URL, got {describe(value)}")


def _structure_seconds(value: Any, _: type) -> Seconds:
    seconds = _structure_float(value, float)
    if seconds <= 0:
        raise StructureError(f"expected a positive number of seconds, got {value!r}")
    return Seconds(seconds)


def _structure_secret(value: Any, _: type) -> Secret:
    if isinstance(value, Secret):
        return value
    if isinstance(value, str):
        return Secret(value)
    # Never echo the value itself: it may be a key pasted in the wrong place.
    raise StructureError(f"expected a string, got {type(value).__name__}")


def describe(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (dict, Mapping)):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _is_primitive_union(tp: Any) -> bool:
    if get_origin(tp) not in (Union, types.UnionType):
        return False
    return all(arg in _PRIMITIVES for arg in get_args(tp))


def _primitive_union_hook(tp: Any) -> Callable[[Any, Any], Any]:
    members = get_args(tp)

    def hook(value: Any, _: Any) -> Any:
        for member in members:
            if member is type(None) and value is None:
                return None
            if member is bool and isinstance(value, bool):
                return value
            if member is float and isinstance(value, (int, float)) and not isinstance(value, bool):
                return _structure_float(value, float)
            if member is int and not isinstance(value, bool) and (
                isinstance(value, int) or (isinstance(value, float) and value.is_integer())
            ):
                return int(value)
            if member in (str, Path) and isinstance(value, str):
                return member(value)
        wanted = " or ".join(_PRIMITIVES[m] for m in members)
        raise StructureError(f"expected {wanted}, got {describe(value)}")

    return hook


def _is_optional(tp: Any) -> bool:
    args = get_args(tp)
    return (
        get_origin(tp) in (Union, types.UnionType)
        and type(None) in args
        and not _is_primitive_union(tp)
    )


def _optional_hook(conv: cattrs.Converter) -> Callable[[Any], Callable[[Any, Any], Any]]:
    def factory(tp: Any) -> Callable[[Any, Any], Any]:
        rest = tuple(a for a in get_args(tp) if a is not type(None))
        inner: Any = rest[0] if len(rest) == 1 else Union[rest]  # noqa: UP007 - built at run time

        def hook(value: Any, _: Any) -> Any:
            if value is None:
                return None
            return conv.structure(value, inner)

        return hook

    return factory


def _structure_dict_any(value: Any, _: Any) -> dict[str, Any]:
    if isinstance(value, Mapping):
        return dict(value)
    raise StructureError(f"expected a mapping, got {describe(value)}")


def _list_guard(conv: cattrs.Converter) -> Callable[[Any], Callable[[Any, Any], Any]]:
    def factory(tp: Any) -> Callable[[Any, Any], Any]:
        inner = get_args(tp)[0] if get_args(tp) else Any

        def hook(value: Any, _: Any) -> Any:
            if not isinstance(value, (list, tuple)):
                raise StructureError(f"expected a list, got {describe(value)}")
            errors: list[Exception] = []
            out = []
            for i, item in enumerate(value):
                try:
                    out.append(conv.structure(item, inner))
                except Exception as exc:  # noqa: BLE001 - collected and re-raised with positions
                    exc.__notes__ = [*getattr(exc, "__notes__", []),
                                     IterableValidationNote(f"Structuring {tp} @ index {i}", i, inner)]
                    errors.append(exc)
            if errors:
                raise IterableValidationError(f"While structuring {tp!r}", errors, tp)
            return out

        return hook

    return factory


def _mapping_guard(conv: cattrs.Converter) -> Callable[[Any], Callable[[Any, Any], Any]]:
    def factory(cls: Any) -> Callable[[Any, Any], Any]:
        inner = make_dict_structure_fn(cls, conv, _cattrs_detailed_validation=True)

        def hook(value: Any, tp: Any) -> Any:
            if not isinstance(value, Mapping):
                raise StructureError(f"expected a mapping, got {describe(value)}")
            return inner(value, tp)

        return hook

    return factory


def _is_list(tp: Any) -> bool:
    return get_origin(tp) is list


def _is_str_literal(tp: Any) -> bool:
    return get_origin(tp) is Literal and all(isinstance(v, str) for v in get_args(tp))


def _literal_hook(tp: Any) -> Callable[[Any, Any], Any]:
    values = get_args(tp)
    valid = ", ".join(repr(v) for v in values)

    def hook(value: Any, _: Any) -> Any:
        if isinstance(value, str) and value in values:
            return value
        raise StructureError(f"expected one of {valid}, got {describe(value)}")

    return hook


# ---- markers: what a type says about its own structuring -----------------------------------


@attrs.frozen
class Check:
    """``Annotated[int, Check(test, wanted)]``: structure as the base type, then ``test`` it;
    a failure reads ``expected <wanted>, got <value><hint>`` at the field's path."""

    test: Callable[[Any], bool]
    wanted: str
    hint: str = ""
    schema: Mapping[str, Any] = attrs.field(factory=dict, eq=False)
    """The JSON Schema keywords ``test`` implies (``{"minimum": 1}``), for the OpenAPI document;
    tests/test_openapi.py checks that values on either side of each bound get the same verdict."""


@attrs.frozen
class Tagged:
    """``Annotated[A | B, Tagged("type", "store")]``: a union of attrs classes, each with a
    ``Literal`` default in its ``tag`` field naming it. An unknown or missing tag is reported at
    ``$.path.<tag>`` with the valid values; ``what`` names the thing in messages."""

    tag: str
    what: str


@attrs.frozen
class Hook:
    """``Annotated[T, Hook(factory)]``: ``factory(converter)`` returns the structure hook, for a
    shape no generic rule fits (a string or a list of parts, say)."""

    factory: Callable[[cattrs.Converter], Callable[[Any, Any], Any]]


_Marker = Check | Tagged | Hook


def _marker(tp: Any) -> _Marker | None:
    if get_origin(tp) is not Annotated:
        return None
    return next((m for m in tp.__metadata__ if isinstance(m, Check | Tagged | Hook)), None)


def _marked_hook(conv: cattrs.Converter) -> Callable[[Any], Callable[[Any, Any], Any]]:
    def factory(tp: Any) -> Callable[[Any, Any], Any]:
        marker = _marker(tp)
        base = tp.__origin__
        if isinstance(marker, Hook):
            return marker.factory(conv)
        if isinstance(marker, Tagged):
            return _tagged_hook(conv, marker, base)
        assert isinstance(marker, Check)
        check = marker

        def hook(value: Any, _: Any) -> Any:
            result = conv.structure(value, base)
            if not check.test(result):
                raise StructureError(f"expected {check.wanted}, got {describe(value)}{check.hint}")
            return result

        return hook

    return factory


class _TagError(StructureError):
    """A bad discriminator; carries the tag key so the path ends at it."""

    def __init__(self, tag: str, message: str) -> None:
        super().__init__(message)
        self.tag = tag


def _tagged_hook(conv: cattrs.Converter, marker: Tagged, union: Any) -> Callable[[Any, Any], Any]:
    tag, what = marker.tag, marker.what
    classes: dict[str, type] = {}
    for cls in get_args(union):
        classes[str(attrs.fields_dict(cls)[tag].default)] = cls
    valid = ", ".join(repr(k) for k in classes)

    def hook(value: Any, _: Any) -> Any:
        if not isinstance(value, Mapping):
            raise StructureError(f"expected a {what} (a mapping with {tag!r}: {valid}), got {describe(value)}")
        name = value.get(tag)
        if name is None:
            raise _TagError(tag, f"required field missing; a {what} needs {tag!r}: one of {valid}")
        cls = classes.get(name) if isinstance(name, str) else None
        if cls is None:
            raise _TagError(tag, f"unknown {what} {tag} {describe(name)}; expected one of {valid}")
        return conv.structure(value, cls)

    return hook


def make_converter() -> cattrs.Converter:
    """The converter with every rule of stackd; nothing is registered anywhere else."""
    conv = cattrs.Converter(detailed_validation=True)
    conv.register_structure_hook_factory(attrs.has, _mapping_guard(conv))
    conv.register_structure_hook(str, _structure_str)
    conv.register_structure_hook(int, _structure_int)
    conv.register_structure_hook(float, _structure_float)
    conv.register_structure_hook(bool, _structure_bool)
    conv.register_structure_hook(Path, _structure_path)
    conv.register_structure_hook(HttpUrl, _structure_url)
    conv.register_structure_hook(Seconds, _structure_seconds)
    conv.register_structure_hook(Secret, _structure_secret)
    conv.register_unstructure_hook(Secret, lambda _: MASK)
    conv.register_unstructure_hook(Path, str)
    conv.register_structure_hook(Any, lambda v, _: v)
    conv.register_structure_hook_func(lambda t: t == dict[str, Any], _structure_dict_any)
    conv.register_structure_hook_factory(_is_str_literal, _literal_hook)
    conv.register_structure_hook_factory(_is_primitive_union, _primitive_union_hook)
    conv.register_structure_hook_factory(_is_optional, _optional_hook(conv))
    conv.register_structure_hook_factory(_is_list, _list_guard(conv))
    conv.register_structure_hook_factory(lambda t: _marker(t) is not None, _marked_hook(conv))
    return conv


converter = make_converter()


def _walk(exc: BaseException, path: str) -> Iterator[FieldError]:
    if isinstance(exc, ClassValidationError):
        for sub in exc.exceptions:
            note = _note_of(sub)
            yield from _walk(sub, f"{path}.{note}" if note else path)
    elif isinstance(exc, IterableValidationError):
        for sub in exc.exceptions:
            index = _index_of(sub)
            if isinstance(index, int):
                yield from _walk(sub, f"{path}[{index}]")
            elif index is not None:
                yield from _walk(sub, f"{path}.{index}")
            else:
                yield from _walk(sub, path)
    elif isinstance(exc, cattrs.BaseValidationError):
        for sub in exc.exceptions:
            yield from _walk(sub, path)
    elif isinstance(exc, ForbiddenExtraKeysError):
        for key in sorted(exc.extra_fields):
            yield FieldError(f"{path}.{key}", "unknown field")
    elif isinstance(exc, KeyError):
        yield FieldError(path, "required field missing")
    elif isinstance(exc, _TagError):
        yield FieldError(f"{path}.{exc.tag}", str(exc))
    elif isinstance(exc, StructureError):
        yield FieldError(path, str(exc))
    elif isinstance(exc, (ValueError, TypeError)):
        yield FieldError(path, str(exc) or type(exc).__name__)
    else:
        yield FieldError(path, f"invalid value ({type(exc).__name__})")


def _note_of(exc: BaseException) -> str | None:
    """The attribute name cattrs' detailed validation noted on ``exc``."""
    for note in getattr(exc, "__notes__", []):
        name = getattr(note, "name", None)
        if name is not None:
            return str(name)
    return None


def _index_of(exc: BaseException) -> int | str | None:
    """The list index (or mapping key) noted on ``exc``."""
    for note in getattr(exc, "__notes__", []):
        index = getattr(note, "index", None)
        if index is not None:
            return index if isinstance(index, int) else str(index)
    return None


def field_errors(exc: BaseException, path: str = "$") -> list[FieldError]:
    """Every leaf problem of a cattrs failure, each with its ``$.path``."""
    return list(_walk(exc, path))


def structure(data: Any, cls: type[T], path: str = "$", *, what: str = "request") -> T:
    """Structure ``data`` into ``cls`` or raise :class:`BadRequest` listing every problem."""
    try:
        return converter.structure(data, cls)
    except (cattrs.BaseValidationError, StructureError, KeyError, ValueError, TypeError) as exc:
        errors = field_errors(exc, path)
        summary = "; ".join(str(e) for e in errors[:5])
        raise BadRequest(f"invalid {what}: {summary}", errors) from None


def unknown_keys(data: Any, tp: Any, path: str = "$") -> list[str]:
    """Paths of mapping keys in ``data`` that no field of ``tp`` declares (for warnings)."""
    found: list[str] = []
    _unknown(data, tp, path, found)
    return found


def _unknown(data: Any, tp: Any, path: str, found: list[str]) -> None:
    origin = get_origin(tp)
    if origin in (Union, types.UnionType):
        # The member that explains the most keys is the one meant (tagged unions included).
        best: list[str] | None = None
        for arg in get_args(tp):
            if arg is type(None):
                continue
            trial: list[str] = []
            _unknown(data, arg, path, trial)
            if best is None or len(trial) < len(best):
                best = trial
        found.extend(best or [])
        return
    if origin is list and isinstance(data, list):
        (inner,) = get_args(tp) or (Any,)
        for i, item in enumerate(data):
            _unknown(item, inner, f"{path}[{i}]", found)
        return
    if origin is dict and isinstance(data, Mapping):
        args = get_args(tp)
        if len(args) == 2:
            for key, item in data.items():
                _unknown(item, args[1], f"{path}.{key}", found)
        return
    if isinstance(tp, type) and attrs.has(tp) and isinstance(data, Mapping):
        fields = {(f.alias or f.name): f for f in attrs.fields(tp)}
        hints = typing.get_type_hints(tp)
        for key, item in data.items():
            field = fields.get(key)
            if field is None:
                found.append(f"{path}.{key}")
            else:
                _unknown(item, hints.get(field.name, Any), f"{path}.{key}", found)
