"""Shared plumbing for the interop client scripts (run by interop.test.ts).

Every script speaks the same line protocol, so the mocha side can drive any
of them the same way:

stdout, one line per event, ``RESULT <key>=<JSON value>``:
  RESULT ready={"jid": ..., "mechanism": ..., "tls": ...}   logged in and bound
  RESULT disco={"ok": true, "jid": ..., "features": [...], "identities": [...]}
  RESULT ping={"ok": true, "jid": ...}
  RESULT sent={"to": ..., "id": ..., "body": ...}
  RESULT message={"from": ..., "to": ..., "type": ..., "id": ..., "body": ...}
  RESULT login_failed={"reason": ...}                       then exit 1
  RESULT closed={}                                          clean end, exit 0

stdin, one JSON command per line:
  {"cmd": "disco", "jid": "localhost"}
  {"cmd": "ping", "jid": "localhost"}
  {"cmd": "send", "to": "bob@localhost/nbxmpp", "body": "hello"}
  {"cmd": "quit"}
End of stdin means quit as well.

Diagnostics go to stderr. Exit codes: 0 clean, 1 login or connection
failure, 2 bad usage or a missing library, 3 the script's own watchdog fired.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any, Callable, NoReturn

EXIT_OK = 0
EXIT_LOGIN_FAILED = 1
EXIT_USAGE = 2
EXIT_WATCHDOG = 3


def emit(key: str, value: Any) -> None:
    """Prints one machine-readable result line and flushes it at once."""
    sys.stdout.write('RESULT %s=%s\n' % (key, json.dumps(value, sort_keys=True)))
    sys.stdout.flush()


def log(message: str) -> None:
    sys.stderr.write(message + '\n')
    sys.stderr.flush()


def die(code: int, message: str) -> NoReturn:
    log('ERROR ' + message)
    # os._exit: the event loops of the libraries may hold threads or sources
    # that would otherwise keep the process alive.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def require(module: str, package: str) -> None:
    """Fails with the Debian package to install when a library is missing."""
    try:
        __import__(module)
    except ImportError as error:
        die(EXIT_USAGE, 'cannot import %s (%s): install the Debian package %s and run '
            'this script with /usr/bin/python3' % (module, error, package))


def parse_args(description: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument('--jid', required=True, help='full JID to log in as, e.g. alice@localhost/res')
    parser.add_argument('--host', default='127.0.0.1')
    parser.add_argument('--port', type=int, required=True, help='STARTTLS (c2s) port')
    parser.add_argument('--cafile', required=True,
                        help="PEM file with the server's certificate, trusted for this connection")
    parser.add_argument('--mech', default='SCRAM-SHA-256', help='the only SASL mechanism to use')
    parser.add_argument('--timeout', type=float, default=60.0,
                        help='seconds after which the script gives up on its own')
    parser.add_argument('--debug', action='store_true', help='library debug logging on stderr')
    args = parser.parse_args()
    # The password comes from the environment so that it is not visible in ps.
    args.password = os.environ.get('INTEROP_PASSWORD')
    if not args.password:
        die(EXIT_USAGE, 'set INTEROP_PASSWORD to the password of %s' % args.jid)
    if '/' not in args.jid:
        die(EXIT_USAGE, '--jid must be a full JID (with a resource)')
    return args


class LineReader:
    """Splits bytes from a pipe into lines and hands out parsed commands."""

    def __init__(self, on_command: Callable[[dict[str, Any]], None]) -> None:
        self._buffer = b''
        self._on_command = on_command

    def feed(self, data: bytes) -> None:
        self._buffer += data
        while b'\n' in self._buffer:
            line, self._buffer = self._buffer.split(b'\n', 1)
            self._line(line)

    def eof(self) -> None:
        if self._buffer.strip():
            self._line(self._buffer)
        self._buffer = b''
        self._on_command({'cmd': 'quit'})

    def _line(self, raw: bytes) -> None:
        text = raw.decode('utf-8', 'replace').strip()
        if not text:
            return
        try:
            command = json.loads(text)
        except ValueError:
            log('ignoring a command that is not JSON: %r' % text)
            return
        if not isinstance(command, dict) or not isinstance(command.get('cmd'), str):
            log('ignoring a command without "cmd": %r' % text)
            return
        self._on_command(command)
