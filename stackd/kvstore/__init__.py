"""Key-value stores behind one interface: SQLite (default), Redis and PostgreSQL for several replicas."""

from stackd.kvstore.base import ChangeFeed, KVStore, Unwatch, open_kvstore, watch_changes
from stackd.kvstore.lock import StoreClaim, StoreInUse, StoreLock, lock_store, lock_store_now

__all__ = [
    "ChangeFeed",
    "KVStore",
    "StoreClaim",
    "StoreInUse",
    "StoreLock",
    "Unwatch",
    "lock_store",
    "lock_store_now",
    "open_kvstore",
    "watch_changes",
]
