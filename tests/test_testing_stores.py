"""The throwaway servers of stackd.testing.stores keep their password out of other users' sight."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
import redis
from redis.exceptions import AuthenticationError

from stackd.testing.stores import RedisServer


def test_redis_gets_its_password_from_a_private_file_not_the_command_line(own_redis_server: RedisServer) -> None:
    assert own_redis_server.proc is not None
    cmdline = Path(f"/proc/{own_redis_server.proc.pid}/cmdline")
    if not cmdline.exists():
        pytest.skip("no /proc on this system")
    assert own_redis_server.password.encode() not in cmdline.read_bytes()  # what ps shows
    conf = own_redis_server.base / "redis.conf"
    assert stat.S_IMODE(conf.stat().st_mode) == 0o600
    own_redis_server.stop()
    own_redis_server.start()  # a restart (as the tests that kill the server do) needs the password again
    assert stat.S_IMODE(conf.stat().st_mode) == 0o600
    with redis.Redis(host=own_redis_server.host, port=own_redis_server.port) as anonymous, \
            pytest.raises(AuthenticationError):  # the file's password is in force
        anonymous.ping()
    with redis.Redis(host=own_redis_server.host, port=own_redis_server.port,
                     password=own_redis_server.password) as client:
        assert client.ping()
