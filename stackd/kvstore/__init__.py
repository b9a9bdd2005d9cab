"""Key-value stores behind one interface: SQLite (default), Redis and PostgreSQL for several replicas."""

from stackd.kvstore.base import KVStore, open_kvstore
from stackd.kvstore.lock import StoreInUse, StoreLock, lock_store

__all__ = ["KVStore", "StoreInUse", "StoreLock", "lock_store", "open_kvstore"]
