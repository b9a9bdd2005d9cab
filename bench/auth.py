"""What authentication costs: stackd's CPU per request with no auth, with ``oauth2_token`` (a
hot token: verified once, then found by hash) and with ``custom`` (a cached decision), in
one run, each target measured in turn in every round so all three share the machine's state.

    python -m bench.auth               # 3 rounds of non-stream chat completions at c=32
    python -m bench.auth --quick       # a smoke run

The machine is shared: absolute numbers move with the neighbours' load, the differences
between the three targets of one run are what this measures. Target: <= 0.15 ms added per
request. Results go to bench/results/auth-<time>.json.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from joserfc import jwt
from joserfc.jwk import RSAKey

from bench import peers
from bench.measure import measure, parse_round_args
from bench.procs import Server, free_port, start_server, start_upstream

__all__ = ["main"]

_RESULTS = Path(__file__).with_name("results")
TARGET_MS = 0.15


def _auth_yaml(kind: str, idp: str) -> str:
    if kind == "oauth2_token":
        return (f"  auth:\n    provider_type: oauth2_token\n    config:\n      jwks: {{uri: {idp}/jwks}}\n"
                "      issuer: bench-issuer\n      audience: stackd\n")
    return f"  auth:\n    provider_type: custom\n    config:\n      endpoint: {idp}/auth\n      cache_ttl: 3600\n"


def _start_stackd(name: str, work: Path, upstream: str, auth: str) -> Server:
    directory = work / name
    directory.mkdir()
    config = peers.write_stackd_config(directory, upstream)
    if auth:
        config.write_text(config.read_text() + auth)
    port = free_port()
    env = {**os.environ, "STACKD_HOME": str(directory / "home")}
    return start_server(name, peers.stackd_argv(config, port), f"http://127.0.0.1:{port}", "/v1/health",
                        directory / "stackd.log", env=env)


def main(argv: list[str] | None = None) -> int:
    args = parse_round_args(__doc__, argv)

    key = RSAKey.generate_key(2048, parameters={"kid": "bench", "use": "sig"}, private=True)
    now = int(time.time())
    token = jwt.encode({"alg": "RS256", "kid": "bench"}, {"sub": "bench", "iss": "bench-issuer", "aud": "stackd",
                                                           "iat": now, "exp": now + 7200, "groups": ["bench"]}, key)
    with tempfile.TemporaryDirectory(prefix="stackd-bench-auth-") as tmp:
        work = Path(tmp)
        (work / "jwks.json").write_text(json.dumps({"keys": [key.as_dict(private=False)]}))
        servers: list[Server] = []
        try:
            idp_port = free_port()
            upstream = start_upstream(work)
            servers.append(upstream)
            idp = start_server("idp", [sys.executable, "-m", "bench.idp", "--port", str(idp_port), "--jwks",
                                       str(work / "jwks.json")], f"http://127.0.0.1:{idp_port}", "/health",
                               work / "idp.log")
            servers.append(idp)
            targets = {
                "no-auth": (_start_stackd("no-auth", work, upstream.url, ""), None),
                "oauth2_token": (_start_stackd("oauth2_token", work, upstream.url,
                                               _auth_yaml("oauth2_token", idp.url)), token),
                "custom": (_start_stackd("custom", work, upstream.url, _auth_yaml("custom", idp.url)), token),
            }
            servers += [s for s, _ in targets.values()]
            results: list[dict[str, Any]] = []
            names = list(targets)
            for r in range(args.rounds):
                # Each round starts with another target, so none always runs on the warmest machine.
                for name in names[r % 3:] + names[:r % 3]:
                    server, bearer = targets[name]
                    results.append(measure(server, upstream, args, bearer) | {"round": r})
                    print(json.dumps(results[-1]), flush=True)
        finally:
            for server in reversed(servers):
                server.stop()
    median = {name: statistics.median(x["server_cpu_ms_per_req"] for x in results if x["target"] == name)
              for name in targets}
    summary = {
        "median_server_cpu_ms_per_req": median,
        "added_ms": {name: median[name] - median["no-auth"] for name in ("oauth2_token", "custom")},
        "target_added_ms": TARGET_MS,
        "note": "one run on a shared 2-core machine: compare the targets of this run, not runs of other days",
    }
    print(json.dumps(summary, indent=2))
    _RESULTS.mkdir(exist_ok=True)
    out = _RESULTS / f"auth-{time.strftime('%Y%m%dT%H%M%S')}.json"
    out.write_text(json.dumps({"args": vars(args), "results": results, "summary": summary}, indent=2))
    return 0 if all(v <= TARGET_MS for v in summary["added_ms"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
