"""Test helpers shipped with stackd for plugin authors: fake upstreams that speak real wire formats."""
