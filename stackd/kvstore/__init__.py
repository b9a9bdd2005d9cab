"""Key-value stores behind one interface: SQLite (default), Redis and PostgreSQL for several replicas."""

from stackd.kvstore.base import KVStore, open_kvstore

__all__ = ["KVStore", "open_kvstore"]
