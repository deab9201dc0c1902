"""What workers send to the servers beyond MXNet's own commands, and how it is encoded.

MXNet hands a server's Python controller only the command id 0 (``kController``), which it
uses for the pickled optimizer. Our commands travel under the same id, as ASCII text (the body
is a C string, so it cannot hold NUL bytes): :data:`PREFIX` followed by a JSON object with an
``"op"`` field. A pickled optimizer never starts with that prefix, so the server can tell the two
apart.
"""

from __future__ import annotations

import json
import pickletools

from ..optim._gluon import send_to_servers
from ..validation import check_choice

CONTROLLER_COMMAND = 0  # mxnet's kController: the only command id forwarded to Python
PREFIX = "adagrad_gluon.command "
SAVE_STATES = "save_states"
LOAD_STATES = "load_states"
OPS = (SAVE_STATES, LOAD_STATES)
_BUILTIN_MODULES = ("__builtin__", "builtins", "copy_reg", "copyreg")


def encode_command(op: str, **fields) -> str:
    """The command body for ``op`` with JSON-serialisable ``fields``."""
    check_choice("op", op, OPS)
    return PREFIX + json.dumps({"op": op, **fields}, ensure_ascii=True, sort_keys=True)


def decode_command(body: bytes) -> dict | None:
    """The fields of a command body from :func:`encode_command`, or ``None`` if ``body`` is
    not one (then it is a pickled optimizer). A body with the prefix but a bad payload raises
    ``ValueError``."""
    if not body.startswith(PREFIX.encode()):
        return None
    try:
        fields = json.loads(body[len(PREFIX):].decode("ascii"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"malformed command body {body[:80]!r}: {exc}") from exc
    if not isinstance(fields, dict) or fields.get("op") not in OPS:
        raise ValueError(f"unknown command {body[:80]!r}")
    return fields


def send_command(kvstore, op: str, **fields) -> None:
    """Send a command to every server of ``kvstore``; returns once all have handled it."""
    send_to_servers(kvstore, CONTROLLER_COMMAND, encode_command(op, **fields))


def pickle_globals(data: bytes) -> list[str]:
    """The ``module.name`` globals that unpickling ``data`` imports, builtins left out: what a
    server must be able to import to receive a pickled optimizer."""
    found: list[str] = []
    for opcode, arg, _ in pickletools.genops(data):
        if opcode.name == "GLOBAL":  # protocol 0, as MXNet pickles the optimizer
            module, name = arg.split(" ", 1)
            if module not in _BUILTIN_MODULES and f"{module}.{name}" not in found:
                found.append(f"{module}.{name}")
    return found
