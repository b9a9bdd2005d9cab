"""Who may do what to a resource: ``server.auth.access_policy``, Llama Stack 0.2.12's rules.

Rules are tried in order; the first whose scope (principal, action, resource ``kind::id`` or
``kind::*``) and condition match decides; none matches: deny. With no rules, API.md §4's
default: a caller may use a resource when, for every attribute category its owner has, they
share at least one value (an unowned resource, one of the config, is everyone's).

One policy decides for models, shields and stored chat completions.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import attrs
import orjson

from stackd.caller import Caller
from stackd.config.auth import AccessRule, AccessScope, parse_condition

__all__ = ["AccessPolicy", "Owner", "owner_from_json", "owner_json", "owner_of"]


@attrs.frozen
class Owner:
    """Who created a resource: its principal and access attributes, as they were then."""

    principal: str | None = None
    attributes: Mapping[str, list[str]] | None = None


def owner_of(caller: Caller) -> Owner:
    return Owner(caller.principal, {k: list(v) for k, v in caller.attributes.items() if v} or None)


def owner_json(caller: Caller) -> str | None:
    """How a stored record keeps its owner (None: unowned, the anonymous caller of a server
    without auth)."""
    if caller.principal is None and not caller.attributes:
        return None
    owner = owner_of(caller)
    return orjson.dumps({"principal": owner.principal, "attributes": owner.attributes}).decode()


def owner_from_json(text: str | None) -> Owner | None:
    if not text:
        return None
    try:
        data = orjson.loads(text)
        attributes = data.get("attributes") or None
        return Owner(data.get("principal"), {str(k): [str(v) for v in vs] for k, vs in attributes.items()}
                     if isinstance(attributes, dict) else None)
    except (orjson.JSONDecodeError, AttributeError, TypeError):
        # A record whose owner cannot be read is nobody's to see: deny rather than open it.
        return Owner("\0unreadable", {"\0unreadable": ["\0"]})


_Test = Callable[[Caller, Owner | None], bool]


def _owners_values(owner: Owner | None, category: str) -> list[str]:
    if owner is None or not owner.attributes:
        return []
    return list(owner.attributes.get(category) or [])


def _in_owners(category: str) -> _Test:
    # Llama Stack's reading: an owner without values in the category asks nothing of the caller.
    def test(caller: Caller, owner: Owner | None) -> bool:
        required = _owners_values(owner, category)
        return not required or bool(set(required) & set(caller.attributes.get(category, ())))

    return test


def _condition(text: str) -> _Test:
    parsed = parse_condition(text)
    assert parsed is not None, f"unchecked condition {text!r}"  # the config type checked it
    form, *args = parsed
    if form == "with_in":
        return lambda c, _o: args[0] in c.attributes.get(args[1], ())
    if form == "with_not_in":
        return lambda c, _o: args[0] not in c.attributes.get(args[1], ())
    if form == "is_owner":
        return lambda c, o: o is not None and o.principal is not None and o.principal == c.principal
    if form == "is_not_owner":
        return lambda c, o: not (o is not None and o.principal is not None and o.principal == c.principal)
    if form == "in_owners":
        return _in_owners(args[0])
    if form == "not_in_owners":
        inner = _in_owners(args[0])
        return lambda c, o: not inner(c, o)
    return lambda _c, o: o is None or (o.principal is None and not o.attributes)  # unowned


@attrs.frozen
class _Rule:
    permit: bool
    scope: AccessScope
    tests: tuple[_Test, ...]
    negate: bool  # ``unless``: the rule applies when not all of its conditions hold

    def scope_matches(self, caller: Caller, action: str, kind: str, identifier: str) -> bool:
        scope = self.scope
        if action not in scope.actions:
            return False
        if scope.principal is not None and scope.principal != caller.principal:
            return False
        if scope.resource is not None:
            rkind, rid = scope.resource.split("::", 1)
            if rkind != kind or (rid != "*" and rid != identifier):
                return False
        return True

    def condition_holds(self, caller: Caller, owner: Owner | None) -> bool:
        if not self.tests:
            return True
        held = all(test(caller, owner) for test in self.tests)
        return not held if self.negate else held


def _default(caller: Caller, owner: Owner | None) -> bool:
    if owner is None or not owner.attributes:
        return True
    for category, values in owner.attributes.items():
        if values and not set(values) & set(caller.attributes.get(category, ())):
            return False
    return True


@attrs.define
class AccessPolicy:
    rules: Sequence[AccessRule] = ()
    _compiled: tuple[_Rule, ...] = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        compiled = []
        for rule in self.rules:
            scope = rule.permit or rule.forbid
            if scope is None:
                continue  # the loader refuses such a rule; a policy built by hand skips it
            conditions = rule.when or rule.unless or []
            compiled.append(_Rule(rule.permit is not None, scope, tuple(_condition(c) for c in conditions),
                                  rule.when is None and rule.unless is not None))
        self._compiled = tuple(compiled)

    def allows(self, caller: Caller, action: str, kind: str, identifier: str, owner: Owner | None) -> bool:
        if not self._compiled:
            return _default(caller, owner)
        for rule in self._compiled:
            if rule.scope_matches(caller, action, kind, identifier) and rule.condition_holds(caller, owner):
                return rule.permit
        return False
