"""`medaid` — a CLI for integrators and operators against a running topology (`make up`).

Argument order: people come first, the giving side before the receiving side (HELPER MEMBER,
SENDER RECIPIENT, HOLDER RELATIVE), then what is done (RELATION, AMOUNT, an id). A RELATION reads
"the second person is the first person's RELATION": `bind H M CHILD` says M is H's child.

Addresses come from build/run/topology.json (written by `make up`) unless given with
--router/--wallet/--registry/--directory. A person's registry is the one the national person
directory names (where the router sends their bills), else the one of the id number's birthplace;
the output says so when it asked another than the birthplace's.

Amounts are yuan with at most two decimals ("128.50") or fen with an `f` suffix ("12850f"), converted
exactly. Months are YYYY-MM (YYYYMM is read too). Times are Beijing time (Asia/Shanghai). `--json`
prints the whole response in the proto3 JSON mapping, zero-valued fields included (int64 as strings).
`medaid <command> --help` lists each command's arguments and allowed values.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

import grpc
from google.protobuf import json_format
from google.protobuf.message import Message

from medaid.cli import family_cmds, registry_cmds, router_cmds, testid, wallet_cmds
from medaid.cli.base import Client, Handler, UsageError, new_msgid, parse_amount, yuan
from medaid.common import config
from medaid.common.errors import OUTCOME_UNKNOWN, error_info
from medaid.topology import STATE_FILE

__all__ = ["build_parser", "main", "new_msgid", "parse_amount", "yuan"]

GROUPS = (("registry (operator)", registry_cmds), ("family accounts and 代缴 (operator)", family_cmds),
          ("wallet (operator)", wallet_cmds),
          ("router (an institution's transactions)", router_cmds), ("offline", testid))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="medaid", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--topology", default=str(STATE_FILE), help="state file written by `make up`")
    p.add_argument("--router", help="router address host:port")
    p.add_argument("--wallet", help="wallet address host:port")
    p.add_argument("--registry", action="append", metavar="PROVINCE=HOST:PORT", help="a registry (repeatable)")
    p.add_argument("--directory", default=os.environ.get("MEDAID_DIRECTORY_URL", ""), metavar="REDIS_URL",
                   help="the national person directory (the services' Redis; default: the topology file's, env "
                        "MEDAID_DIRECTORY_URL): a person's registry is the one it names, else the id number's "
                        "birthplace's")
    p.add_argument("--json", action="store_true", help="print the whole response as proto3 JSON, zero fields included")
    p.add_argument("--request-id", help="request id of a mutating registry/wallet call (default: generated, and "
                                        "printed when the call gets no answer); resend with the same id to repeat "
                                        "a call safely")
    p.add_argument("--tls-dir", default=os.environ.get("MEDAID_TLS_DIR", ""),
                   help="certificate folder (make certs): call over mTLS (env MEDAID_TLS_DIR)")
    p.add_argument("--identity", default=os.environ.get("MEDAID_IDENTITY", "operator"),
                   help="whose certificate in --tls-dir to present: operator (default), or an institution's "
                        "fixmedins_code")
    p.add_argument("--token", default=os.environ.get("MEDAID_TOKEN", ""),
                   help="an institution's bearer token for router calls (env MEDAID_TOKEN)")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    epilog = []
    for title, module in GROUPS:
        names: list[str] = []

        def add(name: str, handler: Handler, help_text: str, offline: bool = False,
                _names: list[str] = names) -> argparse.ArgumentParser:
            sp = sub.add_parser(name, help=help_text, description=help_text)
            sp.set_defaults(handler=handler, offline=offline)
            _names.append(name)
            return sp

        module.register(add)
        epilog.append(f"  {title}: {', '.join(names)}")
    p.epilog = "commands by service:\n" + "\n".join(epilog)
    return p


def _to_json(response: Any) -> str:
    if isinstance(response, Message):
        return json_format.MessageToJson(response, preserving_proto_field_name=True, ensure_ascii=False,
                                         always_print_fields_with_no_presence=True)
    return json.dumps({"id_numbers": response.ids}, ensure_ascii=False, indent=2)


# Codes after which a mutating call may still have taken effect (the service did not say no).
NO_ANSWER = OUTCOME_UNKNOWN


def _resend_option(args: argparse.Namespace) -> str:
    """The option that repeats this call with its id ("" for a read: one with no id, or one its command
    declares `read_only`, such as 1101 and 2206, whose msgid repeats nothing)."""
    if getattr(args, "read_only", False):
        return ""
    if getattr(args, "msgid", None):
        return f"--msgid {args.msgid}"
    return f"--request-id {args.request_id}" if args.request_id else ""


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    config.as_tool()
    client = None
    try:
        if not args.offline:
            client = Client(args)
        response, lines = args.handler(args, client)
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except grpc.RpcError as exc:
        info = error_info(exc)
        reason = info.reason if info is not None else ""
        # No answer: the call may still take effect. Only the same id repeats it safely, so name it.
        no_answer = exc.code() in NO_ANSWER
        resend = _resend_option(args) if no_answer else ""
        notes = client.notes if client is not None else []
        if args.json:
            error = {"code": exc.code().name, "reason": reason, "message": exc.details() or "",
                     "metadata": dict(info.metadata) if info is not None else {}}
            if resend:
                error["resend"] = resend
            print(json.dumps({"error": error}, ensure_ascii=False))
        else:
            said = " ".join(part for part in (exc.code().name, reason) if part)  # no ErrorInfo: the code alone
            print(f"{'no answer' if no_answer else 'refused'}: {said}: {exc.details()}", file=sys.stderr)
            if resend:
                print(f"no answer: the call may still take effect; repeat it with {resend} (one effect)",
                      file=sys.stderr)
        for note in notes:
            print(note, file=sys.stderr)
        return 1
    finally:
        if client is not None:
            client.close()
    notes = client.notes if client is not None else []
    if args.json:  # stdout is the response alone
        print(_to_json(response))
        for note in notes:
            print(note, file=sys.stderr)
    else:
        print("\n".join([*lines, *notes]))
    return client.status if client is not None else 0


if __name__ == "__main__":
    sys.exit(main())
