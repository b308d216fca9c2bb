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
import asyncio
import json
import logging
import os
import sys
from typing import Any, Callable, Coroutine, NoReturn, Optional

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


# ---- asyncio (slixmpp) scripts ---------------------------------------------


class StdinProtocol(asyncio.Protocol):
    """Feeds stdin, read by the event loop, to a LineReader."""

    def __init__(self, reader: LineReader) -> None:
        self._reader = reader

    def data_received(self, data: bytes) -> None:
        self._reader.feed(data)

    def eof_received(self) -> bool:
        self._reader.eof()
        return False


def iq_error_text(error: Exception) -> str:
    """A slixmpp IQ failure (IqError or IqTimeout) as text for a result line."""
    from slixmpp.exceptions import IqError, IqTimeout
    if isinstance(error, IqTimeout):
        return 'timeout'
    if isinstance(error, IqError):
        return '%s: %s' % (error.condition, error.text)
    return repr(error)


def start_asyncio(description: str) -> tuple[argparse.Namespace, asyncio.AbstractEventLoop]:
    """parse_args, debug logging if asked for, and the watchdog on the running loop."""
    args = parse_args(description)
    if args.debug:
        logging.basicConfig(level=logging.DEBUG, stream=sys.stderr)
    loop = asyncio.get_running_loop()
    loop.call_later(args.timeout, lambda: die(EXIT_WATCHDOG, 'watchdog: still running after %ss' % args.timeout))
    return args, loop


def slixmpp_client(args: argparse.Namespace) -> Any:
    """A slixmpp ClientXMPP for --jid that uses exactly --mech and trusts exactly --cafile."""
    from slixmpp import ClientXMPP
    xmpp = ClientXMPP(args.jid, args.password, sasl_mech=args.mech)
    # Trust exactly the test server's self-signed certificate; slixmpp still
    # checks that it is valid for the JID's domain.
    xmpp.ca_certs = args.cafile
    # slixmpp 1.8 ignores the host of connect(address=...) and resolves the
    # JID's domain instead, IPv6 first; the test server listens on 127.0.0.1.
    xmpp.use_ipv6 = False
    return xmpp


def connect_starttls(xmpp: Any, args: argparse.Namespace) -> None:
    """Connects to --host:--port and requires STARTTLS."""
    xmpp.connect(address=(args.host, args.port), force_starttls=True, disable_starttls=False, use_ssl=False)


class SlixmppLogin:
    """The login life cycle every slixmpp script shares.

    `ready` resolves at session start, after initial presence is sent; any
    login failure rejects it with the reason. A disconnect after login ends
    the script, unless the script set `quitting` first. `mechanism` is the
    SASL mechanism that succeeded.
    """

    def __init__(self, xmpp: Any, loop: asyncio.AbstractEventLoop) -> None:
        self.xmpp = xmpp
        self.ready: asyncio.Future[None] = loop.create_future()
        self.gone = asyncio.Event()
        self.quitting = False
        self.failure: Optional[str] = None
        self.mechanism: Optional[str] = None
        on = xmpp.add_event_handler
        on('auth_success', self._auth_success)
        on('failed_auth', self._failed_auth)
        on('failed_all_auth', lambda _e: self.fail('authentication failed: %s' % self.failure))
        on('no_auth', lambda _e: self.fail('no usable SASL mechanism offered'))
        on('ssl_invalid_chain', lambda e: self.fail('certificate not trusted: %s' % e))
        on('connection_failed', lambda e: self.fail('connection failed: %s' % e))
        on('stream_error', lambda e: log('stream error: %s' % e))
        on('disconnected', self._disconnected)
        on('session_start', self._session_start)

    def fail(self, reason: str) -> None:
        self.quitting = True
        if not self.ready.done():
            self.ready.set_exception(RuntimeError(reason))

    async def wait(self) -> bool:
        """True once logged in; False (login_failed printed) when the login failed."""
        return await await_login(self.ready, self.gone)

    def _auth_success(self, _stanza: Any) -> None:
        self.mechanism = self.xmpp['feature_mechanisms'].mech.name

    def _failed_auth(self, failure: Any) -> None:
        self.failure = '%s %s' % (failure['condition'], failure['text'])
        log('SASL failure: %s' % self.failure)

    def _session_start(self, _event: Any) -> None:
        self.xmpp.send_presence()
        if not self.ready.done():
            self.ready.set_result(None)

    def _disconnected(self, reason: Any) -> None:
        self.gone.set()
        if not self.ready.done():
            self.fail('disconnected before session start: %s' % reason)
        elif not self.quitting:
            die(EXIT_LOGIN_FAILED, 'disconnected unexpectedly: %s' % reason)


async def await_login(ready: 'asyncio.Future[None]', gone: asyncio.Event) -> bool:
    """Waits for `ready`; when it fails, prints login_failed and lets slixmpp end the stream."""
    try:
        await ready
        return True
    except RuntimeError as error:
        emit('login_failed', {'reason': str(error)})
        try:  # let slixmpp close the stream it is ending, rather than reset it
            await asyncio.wait_for(gone.wait(), timeout=5)
        except asyncio.TimeoutError:
            pass
        return False


async def read_commands(loop: asyncio.AbstractEventLoop, commands: 'asyncio.Queue[dict[str, Any]]') -> None:
    """Puts each command read from stdin into `commands` (quit at the end of stdin)."""
    reader = LineReader(commands.put_nowait)
    await loop.connect_read_pipe(lambda: StdinProtocol(reader), sys.stdin)


async def close_stream(xmpp: Any) -> int:
    """Closes the stream politely, waits (briefly) for the server's </stream>, says so."""
    await asyncio.wait_for(xmpp.disconnect(wait=2.0), timeout=10)
    emit('closed', {})
    return EXIT_OK


def run_main(run: Callable[[], Coroutine[Any, Any, int]]) -> None:
    """Runs the script's coroutine and exits with its code, whatever threads remain."""
    try:
        code = asyncio.run(run())
    except KeyboardInterrupt:
        code = EXIT_USAGE
    sys.stdout.flush()
    os._exit(code)
