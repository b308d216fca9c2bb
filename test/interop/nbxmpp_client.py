#!/usr/bin/python3
"""An XMPP client built on nbxmpp, Gajim's library (Debian: python3-nbxmpp),
driven by JSON commands on stdin; see interop_common.py for the line protocol.

nbxmpp is callback-based on a GLib main loop (its sockets and TLS are
Gio's), so stdin is read through a GLib IO watch on the same loop.

Logs in over STARTTLS (nbxmpp 4.2 has no -PLUS mechanisms: sasl.py discards
them because GLib does not expose channel-binding data), pins the server's
certificate from --cafile (Gio still checks the name against the JID's
domain), and sends initial presence like Gajim does.

Example:
  INTEROP_PASSWORD=pw /usr/bin/python3 nbxmpp_client.py \\
      --jid bob@localhost/nb --port 5222 --cafile server.pem
  then type: {"cmd": "disco", "jid": "localhost"}
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
from nbxmpp.protocol import Message, Presence  # noqa: E402
from nbxmpp.structs import StanzaHandler  # noqa: E402

IQ_TIMEOUT = 15


class NbxmppInterop:
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

    def on_connected(self, _client: Any, _signal: str) -> None:
        self.ready = True
        self.client.send_stanza(Presence())
        sasl = getattr(self.client, '_sasl', None)
        mechanism = getattr(getattr(sasl, '_mechanism', None), 'name', None)
        tls: Optional[str] = None
        try:
            version = self.client.tls_version
            tls = version.value_nick if version is not None else None
        except Exception:  # tls_version needs GLib >= 2.69
            tls = None
        emit('ready', {'jid': str(self.client.get_bound_jid()), 'mechanism': mechanism, 'tls': tls})
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

    # ---- stanzas --------------------------------------------------------

    def on_message(self, _client: Any, stanza: Any, _properties: Any) -> None:
        emit('message', {
            'from': str(stanza.getFrom()),
            'to': str(stanza.getTo()),
            'type': stanza.getType() or 'normal',
            'id': stanza.getID(),
            'body': stanza.getBody(),
        })

    # ---- commands: one at a time, in order -------------------------------

    def on_stdin(self, channel: Any, condition: Any) -> bool:
        data = os.read(sys.stdin.fileno(), 65536) if condition & GLib.IOCondition.IN else b''
        if data:
            self.reader.feed(data)
            return True
        self.reader.eof()
        return False

    def on_command(self, command: dict[str, Any]) -> None:
        self.commands.append(command)
        self.next_command()

    def next_command(self) -> None:
        if self.busy or not self.commands or self.quitting:
            return
        command = self.commands.pop(0)
        name = command['cmd']
        if name == 'quit':
            self.quitting = True
            self.client.disconnect()
            return
        if name == 'disco':
            self.busy = True
            jid = command.get('jid', self.domain)
            self.client.get_module('Discovery').disco_info(
                jid, timeout=IQ_TIMEOUT, callback=self.on_disco_result, user_data=jid)
        elif name == 'ping':
            self.busy = True
            jid = command.get('jid', self.domain)
            self.client.get_module('Ping').ping(jid, timeout=IQ_TIMEOUT, callback=self.on_ping_result, user_data=jid)
        elif name == 'send':
            message = Message(to=command['to'], body=command['body'], typ=command.get('type', 'chat'))
            message.setID(command.get('id') or 'nbxmpp-' + os.urandom(6).hex())
            self.client.send_stanza(message)
            emit('sent', {'to': command['to'], 'id': message.getID(), 'body': command['body']})
        else:
            log('unknown command %r' % name)
        GLib.idle_add(self.idle_next)

    def idle_next(self) -> bool:
        self.next_command()
        return False

    def on_disco_result(self, task: Any) -> None:
        jid = task.get_user_data()
        try:
            info = task.finish()
            emit('disco', {
                'ok': True,
                'jid': jid,
                'features': sorted(info.features),
                'identities': [[i.category, i.type, i.name] for i in info.identities],
            })
        except Exception as error:
            emit('disco', {'ok': False, 'jid': jid, 'error': repr(error)})
        self.busy = False
        self.next_command()

    def on_ping_result(self, task: Any) -> None:
        jid = task.get_user_data()
        try:
            task.finish()
            emit('ping', {'ok': True, 'jid': jid})
        except Exception as error:
            emit('ping', {'ok': False, 'jid': jid, 'error': repr(error)})
        self.busy = False
        self.next_command()


def main() -> None:
    args = parse_args('nbxmpp interop client')
    logging.basicConfig(level=logging.DEBUG if args.debug else logging.WARNING, stream=sys.stderr)
    try:
        code = NbxmppInterop(args).start()
    except KeyboardInterrupt:
        code = EXIT_USAGE
    sys.stdout.flush()
    os._exit(code)


if __name__ == '__main__':
    main()
