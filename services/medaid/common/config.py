"""Configuration from environment variables, overridable by command-line flags.

Every service reads `MEDAID_<NAME>`; a flag `--<name>` wins over the environment.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Option:
    name: str
    default: str
    help: str


def parse(service: str, options: Sequence[Option], argv: Sequence[str] | None = None) -> dict[str, str]:
    parser = argparse.ArgumentParser(prog=f"medaid-{service}")
    for opt in options:
        env_name = "MEDAID_" + opt.name.upper()
        parser.add_argument(
            "--" + opt.name.replace("_", "-"),
            dest=opt.name,
            default=os.environ.get(env_name, opt.default),
            help=f"{opt.help} (env {env_name}, default {opt.default!r})",
        )
    return {k: str(v) for k, v in vars(parser.parse_args(argv)).items()}


COMMON_OPTIONS = (
    Option("host", "127.0.0.1", "address to listen on"),
    Option("port", "0", "port to listen on; 0 picks a free one and prints it"),
    Option("redis_url", "redis://127.0.0.1:6379/0", "Redis holding this service's state"),
    Option("redis_username", "", "ACL user the service signs in to Redis as (empty: the default user)"),
    Option("redis_password_file", "", "file holding the Redis password (requirepass, or the ACL user's); "
           "empty: none, or the one in redis_url"),
    Option("redis_timeout_ms", "2000", "a Redis command not answered within this fails, and the call answers "
           "UNAVAILABLE (STORE_UNAVAILABLE); keep it below the callers' deadlines (0: no limit)"),
    Option("log_level", "INFO", "log level"),
    Option("grace_s", "5", "seconds in-flight calls get on SIGTERM"),
    Option("store_check_ms", "500", "how often the service pings its Redis: its grpc.health.v1 status is "
           "NOT_SERVING while Redis does not answer (0: never)"),
    Option("store_check_timeout_ms", "500", "a Redis ping slower than this counts as Redis down"),
)
