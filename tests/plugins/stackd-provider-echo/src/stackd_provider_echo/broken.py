"""An entry point that fails on import, so tests can check how a broken plugin is reported."""

raise ImportError("this plugin is broken on purpose (missing native library)")
