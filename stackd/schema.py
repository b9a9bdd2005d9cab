"""JSON Schema (2020-12, as OpenAPI 3.1 uses it) for the types the converter structures.

The schema is read off the same declarations :mod:`stackd.convert` acts on, so the document
cannot say something the server does not check: attrs fields (required when they have no
default), ``Literal`` enums, ``Check`` bounds (``Check.schema``), ``Tagged`` unions (``oneOf``
with a ``discriminator``), and for a ``Hook`` the type it structures into. attrs classes become
components referenced by name; extra keys are allowed, as the converter allows them. An answer's
field with ``metadata={"sent": True}`` is required although it has a default: the server always
sends it, the default is for a client structuring leniently.

A type the converter does not structure (an answer built as a dict) is described the same way,
from the attrs class that documents its shape.
"""

from __future__ import annotations

import types
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import attrs

from stackd.convert import Check, Hook, Tagged

__all__ = ["Schemas"]

_SCALARS: dict[Any, dict[str, Any]] = {
    str: {"type": "string"},
    int: {"type": "integer"},
    float: {"type": "number"},
    bool: {"type": "boolean"},
    type(None): {"type": "null"},
    Path: {"type": "string"},
}


@attrs.define
class Schemas:
    """Schemas of types, with the attrs classes they meet collected as components.

    ``schema(T)`` returns the schema of ``T`` (a ``$ref`` for an attrs class); ``components``
    then holds every class met so far, once, under its class name.
    """

    ref_prefix: str = "#/components/schemas/"
    components: dict[str, dict[str, Any]] = attrs.field(factory=dict)
    _owners: dict[str, type] = attrs.field(factory=dict)

    def schema(self, tp: Any) -> dict[str, Any]:
        if tp is Any or tp is object:
            return {}
        scalar = _SCALARS.get(tp)
        if scalar is not None:
            return dict(scalar)
        origin = get_origin(tp)
        if origin is Annotated:
            return self._annotated(tp)
        if origin is Literal:
            values = list(get_args(tp))
            return {"type": "string", "enum": values} if all(isinstance(v, str) for v in values) else {"enum": values}
        if origin in (Union, types.UnionType):
            return self._union(get_args(tp))
        if origin in (list, tuple, Sequence):
            args = get_args(tp)
            item = args[0] if args else Any
            return {"type": "array", "items": self.schema(item)}
        if origin in (dict, Mapping) or tp is dict:
            args = get_args(tp)
            value = args[1] if len(args) == 2 else Any
            out: dict[str, Any] = {"type": "object"}
            inner = self.schema(value)
            if inner:
                out["additionalProperties"] = inner
            return out
        if isinstance(tp, type) and attrs.has(tp):
            return self._ref(tp)
        raise TypeError(f"no JSON Schema for {tp!r}: describe it with an attrs class or a supported type")

    def _annotated(self, tp: Any) -> dict[str, Any]:
        base = tp.__origin__
        for marker in tp.__metadata__:
            if isinstance(marker, Check):
                out = self.schema(base)
                out.update(marker.schema)
                return out
            if isinstance(marker, Tagged):
                return self._tagged(base, marker)
            if isinstance(marker, Hook):
                return self.schema(base)  # the hook structures into base: base is what it accepts
        return self.schema(base)

    def _union(self, members: tuple[Any, ...]) -> dict[str, Any]:
        options: list[dict[str, Any]] = []
        for member in members:
            option = self.schema(member)
            if option not in options:
                options.append(option)
        if len(options) == 1:
            return options[0]
        if {} in options:
            return {}
        return {"anyOf": options}

    def _tagged(self, union: Any, marker: Tagged) -> dict[str, Any]:
        mapping: dict[str, str] = {}
        refs: list[dict[str, Any]] = []
        for cls in get_args(union):
            ref = self._ref(cls)
            refs.append(ref)
            mapping[str(attrs.fields_dict(cls)[marker.tag].default)] = ref["$ref"]
            # Within the union the tag names the member, so it is required there.
            component = self.components[cls.__name__]
            if marker.tag not in component.setdefault("required", []):
                component["required"].append(marker.tag)
        return {"oneOf": refs, "discriminator": {"propertyName": marker.tag, "mapping": mapping}}

    def _ref(self, cls: type) -> dict[str, Any]:
        name = cls.__name__
        owner = self._owners.get(name)
        if owner is None:
            self._owners[name] = cls
            self.components[name] = {}  # placeholder first: a class may refer to itself
            self.components[name] = self._object(cls)
        elif owner is not cls:
            raise TypeError(f"two classes named {name} ({owner.__module__} and {cls.__module__}): "
                            "rename one, OpenAPI components are named by class")
        return {"$ref": self.ref_prefix + name}

    def _object(self, cls: type) -> dict[str, Any]:
        hints = typing.get_type_hints(cls, include_extras=True)
        properties: dict[str, Any] = {}
        required: list[str] = []
        for field in attrs.fields(cls):
            if field.metadata.get("wire") is False:
                continue  # kept by the server, never sent or accepted
            key = field.alias or field.name
            prop = self.schema(hints[field.name])
            doc = field.metadata.get("doc")
            if doc:
                prop = {**prop, "description": doc} if "$ref" not in prop else {"allOf": [prop], "description": doc}
            properties[key] = prop
            if field.default is attrs.NOTHING or field.metadata.get("sent") is True:
                required.append(key)
        out: dict[str, Any] = {"type": "object", "properties": properties}
        if required:
            out["required"] = required
        if cls.__doc__:
            out["description"] = " ".join(cls.__doc__.split())
        # What a class's own structure hook checks beyond its fields (exactly one of two, say).
        out.update(getattr(cls, "json_schema_extra", {}))
        return out
