"""Cluster mode: many nodes on one Redis or Valkey, sessions that resume on any of them.

Imported only when ``--redis-url`` is set. The design (what lives where, what is
lost in which failure) is in ``docs/cluster.md``.
"""

from trio_agent.cluster.store import ClusterStore, StoreUnavailable

__all__ = ["ClusterStore", "StoreUnavailable"]
