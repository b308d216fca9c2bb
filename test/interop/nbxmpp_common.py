"""Shared plumbing for the nbxmpp (Gajim's library, Debian: python3-nbxmpp)
interop scripts: nbxmpp_client.py, im_nbxmpp.py and mam_nbxmpp.py.

NbxmppScript logs in over STARTTLS with exactly the mechanism of --mech,
pins the certificate of --cafile, sends initial presence like Gajim, prints
`RESULT ready=`, then reads commands from stdin through a GLib IO watch on
the same main loop and hands them to next_command() one at a time. A
subclass handles messages (on_message) and its commands (next_command).
"""

import logging
import os
import sys
from typing import Any, Optional

from interop_common import (EXIT_LOGIN_FAILED, EXIT_OK, EXIT_USAGE, EXIT_WATCHDOG,
                            LineReader, die, emit, log, parse_args, require)

require('gi', 'python3-gi')
require('nbxmpp', 'python3-nbxmpp')

from gi.repository import Gio, GLib  # noqa: E402
from nbxmpp.client import Client  # noqa: E402
from nbxmpp.const import ConnectionProtocol, ConnectionType  # noqa: E402
from nbxmpp.protocol import Presence  # noqa: E402
from nbxmpp.structs import StanzaHandler  # noqa: E402


class NbxmppScript:
    def __init__(self, args: Any) -> None:
        self.args = args
        self.loop = GLib.MainLoop()
        self.exit_code = EXIT_OK
        self.ready = False
        self.quitting = False
        self.commands: list[dict[str, Any]] = []
        self.busy = False

        local, rest = args.jid.split('@', 1)
        domain, resource = rest.split('/', 1)
        self.domain = domain
        self.bare = '%s@%s' % (local, domain)

        client = Client()
        client.set_domain(domain)
        client.set_username(local)
        client.set_resource(resource)
        client.set_password(args.password)
        client.set_custom_host('%s:%d' % (args.host, args.port), ConnectionProtocol.TCP, ConnectionType.START_TLS)
        client.set_mechs({args.mech})
        client.set_accepted_certificates([Gio.TlsCertificate.new_from_file(args.cafile)])
        client.subscribe('connected', self.on_connected)
        client.subscribe('disconnected', self.on_disconnected)
        client.subscribe('connection-failed', self.on_connection_failed)
        client.register_handler(StanzaHandler(name='message', callback=self.on_message))
        self.client = client

    # ---- connection ---------------------------------------------------

    def start(self) -> int:
        GLib.timeout_add_seconds(int(self.args.timeout), self.on_watchdog)
        self.client.connect()
        self.loop.run()
        return self.exit_code

    def on_watchdog(self) -> bool:
        die(EXIT_WATCHDOG, 'watchdog: still running after %ss' % self.args.timeout)

    def error_text(self) -> str:
        domain, error, text = self.client.get_error()
        return '%s %s %s' % (domain, error, text or '')

    def mechanism(self) -> Optional[str]:
        """The SASL mechanism nbxmpp used (from its internals)."""
        sasl = getattr(self.client, '_sasl', None)
        return getattr(getattr(sasl, '_mechanism', None), 'name', None)

    def ready_fields(self) -> dict[str, Any]:
        """What `RESULT ready=` says besides the bound JID."""
        return {'mechanism': None, 'tls': None}

    def on_connected(self, _client: Any, _signal: str) -> None:
        self.ready = True
        self.client.send_stanza(Presence())
        emit('ready', {'jid': str(self.client.get_bound_jid()), **self.ready_fields()})
        channel = GLib.IOChannel.unix_new(sys.stdin.fileno())
        self.reader = LineReader(self.on_command)
        GLib.io_add_watch(channel, GLib.PRIORITY_DEFAULT, GLib.IOCondition.IN | GLib.IOCondition.HUP, self.on_stdin)

    def on_connection_failed(self, _client: Any, _signal: str) -> None:
        emit('login_failed', {'reason': 'connection failed: %s' % self.error_text()})
        self.exit_code = EXIT_LOGIN_FAILED
        self.loop.quit()

    def on_disconnected(self, _client: Any, _signal: str) -> None:
        if not self.ready:
            emit('login_failed', {'reason': 'disconnected before session start: %s' % self.error_text()})
            self.exit_code = EXIT_LOGIN_FAILED
        elif not self.quitting:
            log('disconnected unexpectedly: %s' % self.error_text())
            self.exit_code = EXIT_LOGIN_FAILED
        else:
            emit('closed', {})
        self.loop.quit()

    # ---- stanzas and commands (the subclass's) ----------------------------

    def on_message(self, _client: Any, stanza: Any, properties: Any) -> None:
        raise NotImplementedError

    def run_command(self, name: str, command: dict[str, Any]) -> None:
        """Starts one command (not quit); sets `busy` while it waits for an answer."""
        raise NotImplementedError

    def next_command(self) -> None:
        """Starts the next queued command unless one is running; quit ends the stream."""
        if self.busy or not self.commands or self.quitting:
            return
        command = self.commands.pop(0)
        if command['cmd'] == 'quit':
            self.quitting = True
            self.client.disconnect()
            return
        self.run_command(command['cmd'], command)

    # ---- commands: one at a time, in order -------------------------------

    def on_stdin(self, _channel: Any, condition: Any) -> bool:
        data = os.read(sys.stdin.fileno(), 65536) if condition & GLib.IOCondition.IN else b''
        if data:
            self.reader.feed(data)
            return True
        self.reader.eof()
        return False

    def on_command(self, command: dict[str, Any]) -> None:
        self.commands.append(command)
        self.next_command()

    def idle_next(self) -> bool:
        self.next_command()
        return False


def run_script(description: str, script: Any) -> None:
    """Parses the arguments, runs `script(args)` on its main loop and exits with its code."""
    args = parse_args(description)
    logging.basicConfig(level=logging.DEBUG if args.debug else logging.WARNING, stream=sys.stderr)
    try:
        code = script(args).start()
    except KeyboardInterrupt:
        code = EXIT_USAGE
    sys.stdout.flush()
    os._exit(code)
