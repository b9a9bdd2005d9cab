"""Models and shields: from the config and from the API, persisted in the metadata kvstore.

Config resources are reconciled at every start (one removed from the file is gone); those
registered through the API persist across restarts. A lookup that misses the in-memory cache
reads the store, so a resource registered by another replica sharing the store is found.

Several processes on one store (workers, replicas) agree within :data:`CACHE_SECONDS`: a
new resource is found at once (a miss reads the store), lists read the store, and a removed
or changed one is dropped from another process's cache when its entry ages out, or as soon as
the notice arrives when the store has a change feed (:class:`stackd.kvstore.ChangeFeed`: the
Redis store; not SQLite or PostgreSQL). A feed's notices can be lost (while it reconnects), so
the cache time stays the bound either way. Registering and unregistering always decide on the
store's record, never on a cached one.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from typing import Any, Generic, TypeVar

import attrs
import orjson

from stackd.apis.models import Model, Shield
from stackd.auth.policy import AccessPolicy, Owner
from stackd.auth.policy import owner_of as owner_attributes
from stackd.caller import Caller
from stackd.config.schema import ModelInput, ShieldInput
from stackd.convert import converter
from stackd.errors import (
    BadRequest,
    Conflict,
    FieldError,
    Forbidden,
    NotFound,
    UpstreamTimeout,
    UpstreamUnavailable,
    quote_id,
)
from stackd.json_depth import STORED_MAX_DEPTH, deeper_than
from stackd.kvstore import KVStore, Unwatch, watch_changes

__all__ = ["CACHE_SECONDS", "Registry", "can_access", "owner_of"]

CACHE_SECONDS = 2.0
"""How long a process trusts its cached copy of a model or shield (docs/deployment.md)."""

log = logging.getLogger("stackd.registry")

R = TypeVar("R", Model, Shield)


def owner_of(caller: Caller) -> dict[str, list[str]] | None:
    """The access attributes a resource registered by ``caller`` is owned by."""
    return owner_attributes(caller).attributes  # type: ignore[return-value]


_DEFAULT_POLICY = AccessPolicy()


def can_access(owner: Mapping[str, list[str]] | None, caller: Caller) -> bool:
    """The default rule (no access_policy): for every attribute category of the owner, the
    caller shares at least one value."""
    return _DEFAULT_POLICY.allows(caller, "read", "model", "", Owner(None, owner))


def _owner(item: Model | Shield) -> Owner | None:
    if item.owner is None and item.owner_principal is None:
        return None
    return Owner(item.owner_principal, item.owner)


class _Table(Generic[R]):
    """One kind of resource: the store is the truth, the cache saves a store read per request.

    A cached entry is trusted for ``ttl`` seconds, so a resource that another replica sharing
    the store registered or removed is seen within that time, while a busy server reads the
    store about once per resource per ``ttl``, not once per request. Lists always read the store,
    but a record whose stored text has not changed is not structured again: re-structuring
    thousands of records on the event loop for each ``GET /v1/models`` was half of what made
    lists slow and delayed everyone else's calls.
    """

    def __init__(self, kind: str, cls: type[R], kv: KVStore, ttl: float = CACHE_SECONDS) -> None:
        self.kind = kind
        self.cls: type[R] = cls
        self.kv = kv
        self.ttl = ttl
        self.cache: dict[str, R] = {}
        self._fresh_until: dict[str, float] = {}
        self._parsed: dict[str, tuple[str, R]] = {}  # key -> (stored text, item made of it)
        self._unreadable: set[str] = set()  # keys logged already: one line per bad record, not per list
        # Change notices so far: a read that a notice overtook (the reply was on its way when the
        # notice came) may hold the old record, so it is not trusted for ``ttl``.
        self._notices = 0

    def _key(self, identifier: str) -> str:
        return f"{self.kind}:{identifier}"

    def _remember(self, item: R) -> None:
        self.cache[item.identifier] = item
        self._fresh_until[item.identifier] = time.monotonic() + self.ttl

    def _parse(self, key: str, value: str) -> R | None:
        known = self._parsed.get(key)
        if known is not None and known[0] == value:
            return known[1]
        try:
            data = orjson.loads(value)
            # stackd 0.1.0 accepted values nested deeper than orjson writes; such a record would
            # make every list that includes it fail, so it is left out (and can be deleted).
            too_deep = deeper_than(data, STORED_MAX_DEPTH)
            if too_deep is not None:
                if key not in self._unreadable:
                    self._unreadable.add(key)
                    log.warning("ignoring %s record %s in the metadata store: nested deeper than %d levels "
                                "at %s, so it cannot be answered; unregister it", self.kind,
                                quote_id(key), STORED_MAX_DEPTH, too_deep)
                return None
            item: R = converter.structure(data, self.cls)
        except Exception:
            if key not in self._unreadable:
                self._unreadable.add(key)
                log.exception("ignoring unreadable %s record %s in the metadata store", self.kind, quote_id(key))
            return None
        self._parsed[key] = (value, item)
        return item

    async def load(self) -> list[R]:
        """Every stored item (the cache is replaced by what the store holds now)."""
        cache: dict[str, R] = {}
        fresh_until = time.monotonic() + self.ttl
        notices = self._notices
        rows = await self.kv.scan(f"{self.kind}:")
        if self._notices != notices:
            fresh_until = 0.0  # kept, but read again at the next lookup
        for key, value in rows:
            item = self._parse(key, value)
            if item is not None:
                cache[item.identifier] = item
        if len(self._parsed) > len(rows):
            # Forget records removed from the store (by this replica or another).
            present = {key for key, _ in rows}
            self._parsed = {k: v for k, v in self._parsed.items() if k in present}
        self.cache, self._fresh_until = cache, dict.fromkeys(cache, fresh_until)
        return list(cache.values())

    async def put(self, item: R) -> None:
        await self.kv.set(self._key(item.identifier), orjson.dumps(converter.unstructure(item)).decode())
        self._remember(item)

    async def remove(self, identifier: str) -> None:
        await self.kv.delete(self._key(identifier))
        self._parsed.pop(self._key(identifier), None)
        self.cache.pop(identifier, None)
        self._fresh_until.pop(identifier, None)

    def changed(self, key: str) -> None:
        """A change notice from the store (another process wrote ``key``): read it next time."""
        identifier = key[len(self.kind) + 1:]
        self._notices += 1
        self.cache.pop(identifier, None)
        self._fresh_until.pop(identifier, None)

    async def find(self, identifier: str, *, fresh: bool = False) -> R | None:
        """The item, from the cache if it is younger than ``ttl``; ``fresh``: from the store."""
        item = self.cache.get(identifier)
        if not fresh and item is not None and self._fresh_until.get(identifier, 0.0) > time.monotonic():
            return item
        notices = self._notices
        raw = await self.kv.get(self._key(identifier))
        if raw is None:
            self.cache.pop(identifier, None)
            return None
        found = self._parse(self._key(identifier), raw)
        if found is not None and self._notices == notices:
            self._remember(found)
        else:
            self.cache.pop(identifier, None)
        return found

    async def forget_unreadable(self, identifier: str) -> bool:
        """Delete the record of ``identifier`` if it is one :meth:`_parse` cannot serve."""
        raw = await self.kv.get(self._key(identifier))
        if raw is None or self._parse(self._key(identifier), raw) is not None:
            return False
        await self.remove(identifier)
        return True


@attrs.define
class Registry:
    kv: KVStore
    providers: Mapping[str, Any]
    """provider_id -> provider instance"""
    provider_apis: Mapping[str, str]
    """provider_id -> API it serves"""
    max_models: int = 1000
    max_shields: int = 1000
    policy: AccessPolicy = attrs.field(factory=AccessPolicy)
    """``server.auth.access_policy``: who may read, create and delete which resource."""
    models: _Table[Model] = attrs.field(init=False)
    shields: _Table[Shield] = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        self.models = _Table("model", Model, self.kv)
        self.shields = _Table("shield", Shield, self.kv)

    async def watch(self) -> list[Unwatch]:
        """Follow the store's change feed, if it has one (else the cache time alone bounds staleness)."""
        stops = []
        for table in (self.models, self.shields):
            stop = await watch_changes(self.kv, f"{table.kind}:", table.changed)
            if stop is not None:
                stops.append(stop)
        return stops

    # -- start-up ---------------------------------------------------------------------------

    async def reconcile(self, models: list[ModelInput], shields: list[ShieldInput]) -> None:
        """Make the config's resources exactly those of the file; keep API registrations.

        Every provider accepts its resources before anything is written, so a start that fails
        here leaves the store as the last good start left it. The caller holds the store's lock
        (:mod:`stackd.kvstore.lock`), so no other live server's records are rewritten.
        """
        wanted_models = await self._checked([
            Model(
                identifier=m.model_id,
                provider_id=m.provider_id,
                provider_resource_id=m.provider_model_id or m.model_id,
                model_type=m.model_type,
                metadata=dict(m.metadata),
                owner=m.access_attributes,
                source="config",
                input_shields=tuple(m.input_shields),
                output_shields=tuple(m.output_shields),
            )
            for m in models
            if m.model_id is not None and m.provider_id is not None
        ])
        wanted_shields = await self._checked([
            Shield(
                identifier=s.shield_id,
                provider_id=s.provider_id,
                provider_resource_id=s.provider_shield_id or s.shield_id,
                params=dict(s.params),
                owner=s.access_attributes,
                source="config",
                on_failure=s.on_failure,
            )
            for s in shields
            if s.shield_id is not None and s.provider_id is not None
        ])
        await self._reconcile(self.models, wanted_models)
        await self._reconcile(self.shields, wanted_shields)

    async def _checked(self, wanted: list[R]) -> list[R]:
        return [await self._check(item, at_start=True) for item in wanted]

    async def _reconcile(self, table: _Table[R], checked: list[R]) -> None:
        stored = await table.load()
        names = {item.identifier for item in checked}
        for item in stored:
            if item.source == "config" and item.identifier not in names:
                log.info("%s %r was removed from the config; unregistering it", table.kind, item.identifier)
                await table.remove(item.identifier)
            elif item.provider_id not in self.providers:
                # An API registration whose provider left the config cannot be served: say so once.
                log.warning("%s %r belongs to provider %r, which is not configured; it is hidden until "
                            "the provider returns", table.kind, item.identifier, item.provider_id)
        for item in checked:
            await table.put(item)

    async def _check(self, item: R, *, at_start: bool = False) -> R:
        """Let the provider accept (and complete) the resource: ``register_model`` / ``register_shield``."""
        kind = "model" if isinstance(item, Model) else "shield"
        register = getattr(self.providers[item.provider_id], f"register_{kind}", None)
        if register is None:
            return item
        try:
            checked = await register(item)
        except (UpstreamUnavailable, UpstreamTimeout) as exc:
            if not at_start:
                raise
            # The upstream may start after stackd. The resource is served as configured; if the
            # upstream lacks it, the first call says so with the upstream's own error.
            log.warning("could not check %s %r with provider %r at start: %s",
                        kind, item.identifier, item.provider_id, exc.message)
            return item
        return checked if isinstance(checked, type(item)) else item

    # -- models -------------------------------------------------------------------------------

    def _visible(self, item: Model | Shield, caller: Caller) -> bool:
        return item.provider_id in self.providers and self._allows(caller, "read", item)

    def _allows(self, caller: Caller, action: str, item: Model | Shield) -> bool:
        kind = "model" if isinstance(item, Model) else "shield"
        return self.policy.allows(caller, action, kind, item.identifier, _owner(item))

    def _may_delete(self, item: Model | Shield, caller: Caller) -> None:
        if not self._allows(caller, "delete", item):
            kind = "model" if isinstance(item, Model) else "shield"
            raise Forbidden(f"not allowed to delete {kind} {quote_id(item.identifier)}: no rule of "
                            "server.auth.access_policy permits it to this caller")

    async def list_models(self, caller: Caller) -> list[Model]:
        return [m for m in await self.models.load() if self._visible(m, caller)]

    async def get_model(self, identifier: str, caller: Caller, *, fresh: bool = False) -> Model:
        model = await self.models.find(identifier, fresh=fresh)
        if model is None or not self._visible(model, caller):
            raise NotFound(f"model {quote_id(identifier)} not found; GET /v1/models lists the available ones")
        return model

    async def register_model(
        self,
        caller: Caller,
        model_id: str,
        provider_model_id: str | None = None,
        provider_id: str | None = None,
        model_type: str = "llm",
        metadata: dict[str, Any] | None = None,
        input_shields: list[str] | None = None,
        output_shields: list[str] | None = None,
    ) -> Model:
        provider_id = self._pick_provider("inference", provider_id, "model")
        await self._check_shields(caller, model_type, "input_shields", input_shields or [])
        await self._check_shields(caller, model_type, "output_shields", output_shields or [])
        metadata = dict(metadata or {})
        if model_type not in ("llm", "embedding"):
            raise BadRequest("model_type must be 'llm' or 'embedding'",
                             [FieldError("$.model_type", "expected 'llm' or 'embedding'")])
        if model_type == "embedding" and "embedding_dimension" not in metadata:
            raise BadRequest(
                "an embedding model needs metadata.embedding_dimension",
                [FieldError("$.metadata.embedding_dimension", "required for embedding models")],
            )
        owner = await self._may_register(self.models, model_id, provider_id, caller, self.max_models)
        model = Model(
            identifier=model_id,
            provider_id=provider_id,
            provider_resource_id=provider_model_id or model_id,
            model_type=model_type,  # type: ignore[arg-type]
            metadata=metadata,
            owner=owner.attributes,  # type: ignore[arg-type]
            owner_principal=owner.principal,
            source="api",
            input_shields=tuple(input_shields or ()),
            output_shields=tuple(output_shields or ()),
        )
        model = await self._check(model)
        await self.models.put(model)
        return model

    async def unregister_model(self, identifier: str, caller: Caller) -> None:
        # One the caller may not see is a 404 (get_model), so a stranger learns nothing of it.
        if not await self.models.forget_unreadable(identifier):
            model = await self.get_model(identifier, caller, fresh=True)
            self._may_delete(model, caller)
            await self.models.remove(model.identifier)

    async def _check_shields(self, caller: Caller, model_type: str, field: str, shields: list[str]) -> None:
        """A guarded model names shields that exist for its registrant, and chats (embeddings have
        no route that could apply them)."""
        if shields and model_type != "llm":
            raise BadRequest(f"{field}: only llm models can be guarded; embeddings have no answer to check",
                             [FieldError(f"$.{field}", "only for llm models")])
        for i, shield_id in enumerate(shields):
            try:
                await self.get_shield(shield_id, caller, fresh=True)
            except NotFound:
                raise BadRequest(f"{field}[{i}]: shield {quote_id(shield_id)} does not exist; register it first "
                                 "(GET /v1/shields lists them)", [FieldError(f"$.{field}[{i}]", "unknown shield")]
                                 ) from None

    # -- shields -------------------------------------------------------------------------------

    async def list_shields(self, caller: Caller) -> list[Shield]:
        return [s for s in await self.shields.load() if self._visible(s, caller)]

    async def get_shield(self, identifier: str, caller: Caller | None, *, fresh: bool = False) -> Shield:
        """``caller`` None: the server's own use (a model's guardrails, which the operator
        attached), never the access policy's to hide. ``fresh``: decide on the store's record."""
        shield = await self.shields.find(identifier, fresh=fresh)
        if shield is None or shield.provider_id not in self.providers or (
                caller is not None and not self._visible(shield, caller)):
            raise NotFound(f"shield {quote_id(identifier)} not found; GET /v1/shields lists the available ones")
        return shield

    async def register_shield(
        self,
        caller: Caller,
        shield_id: str,
        provider_shield_id: str | None = None,
        provider_id: str | None = None,
        params: dict[str, Any] | None = None,
        on_failure: str = "closed",
    ) -> Shield:
        provider_id = self._pick_provider("safety", provider_id, "shield")
        owner = await self._may_register(self.shields, shield_id, provider_id, caller, self.max_shields)
        shield = Shield(
            identifier=shield_id,
            provider_id=provider_id,
            provider_resource_id=provider_shield_id or shield_id,
            params=dict(params or {}),
            owner=owner.attributes,  # type: ignore[arg-type]
            owner_principal=owner.principal,
            source="api",
            on_failure="open" if on_failure == "open" else "closed",
        )
        shield = await self._check(shield)
        await self.shields.put(shield)
        return shield

    async def unregister_shield(self, identifier: str, caller: Caller) -> None:
        if not await self.shields.forget_unreadable(identifier):
            shield = await self.get_shield(identifier, caller, fresh=True)
            self._may_delete(shield, caller)
            guarded = [m.identifier for m in await self.models.load()
                       if identifier in m.input_shields or identifier in m.output_shields]
            if guarded:
                # Removing it would leave those models unguarded, or failing, until someone notices.
                raise Conflict(f"shield {quote_id(identifier)} guards model(s) {', '.join(map(quote_id, guarded))}; "
                               "remove it from their input_shields/output_shields first")
            await self.shields.remove(shield.identifier)

    # -- helpers -------------------------------------------------------------------------------

    async def _may_register(
        self, table: _Table[R], identifier: str, provider_id: str, caller: Caller, limit: int
    ) -> Owner:
        """Registering again with the same provider updates; anything else is refused. The
        owner of the registration: the caller for a new one, the first owner for an update
        (ownership never changes hands by registering again). Decided on the store's record:
        a cached one may be another process's removed registration."""
        existing = await table.find(identifier, fresh=True)
        kind = table.kind
        if existing is None:
            # A bound on what a server holds is what keeps its list answerable in one page
            # (neither client pages through GET /v1/models).
            if len(await table.load()) >= limit:
                raise BadRequest(
                    f"this server holds {limit} {kind}s, its limit (server.max_{kind}s); "
                    f"unregister one first, or raise server.max_{kind}s",
                    [FieldError(f"$.{kind}_id", f"no room for another {kind}")],
                )
            owner = owner_attributes(caller)
            if not self.policy.allows(caller, "create", kind, identifier, owner):
                raise Forbidden(f"not allowed to create {kind} {quote_id(identifier)}: no rule of "
                                "server.auth.access_policy permits it to this caller")
            return owner
        if existing.provider_id != provider_id:
            raise Conflict(f"{kind} {quote_id(identifier)} is already registered with provider "
                           f"{existing.provider_id!r}; unregister it first or choose another {kind}_id")
        if not self._allows(caller, "read", existing):
            raise Forbidden(f"{kind} {quote_id(identifier)} belongs to someone else; "
                            f"choose another {kind}_id")
        if not (self._allows(caller, "update", existing) or self._allows(caller, "create", existing)):
            raise Forbidden(f"not allowed to update {kind} {quote_id(identifier)}: no rule of "
                            "server.auth.access_policy permits it to this caller")
        return _owner(existing) or Owner()

    def _pick_provider(self, api: str, provider_id: str | None, kind: str) -> str:
        candidates = sorted(pid for pid, a in self.provider_apis.items() if a == api)
        if provider_id is None:
            if len(candidates) == 1:
                return candidates[0]
            if not candidates:
                raise BadRequest(f"no {api} provider is configured, so no {kind} can be registered")
            raise BadRequest(
                f"provider_id is required: several {api} providers are configured ({', '.join(candidates)})",
                [FieldError("$.provider_id", "required when several providers serve this API")],
            )
        if provider_id not in candidates:
            raise NotFound(f"no {api} provider with provider_id {quote_id(provider_id)}; "
                           f"configured: {', '.join(candidates) or 'none'}")
        return provider_id

