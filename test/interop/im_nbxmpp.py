#!/usr/bin/python3
"""An instant-messaging client built on nbxmpp, Gajim's library (Debian:
python3-nbxmpp), driven by JSON commands on stdin, for im.test.ts. It speaks
the line protocol of interop_common.py (see nbxmpp_client.py for the login)
and adds roster, presence subscriptions, carbons (XEP-0280) and offline
delivery (delay stamps).

Events on stdout, besides interop_common's ready/sent/closed:
  RESULT message={"from", "to", "type", "id", "body", "delay": {"stamp", "from"}|null,
                  "error": condition|null, "blocked": bool}
  RESULT carbon={"dir": "received"|"sent", "from", "to", "id", "body"}   (unwrapped by nbxmpp)
  RESULT presence={"from", "type", "show", "status"}
  RESULT roster={"ok": true, "items": {jid: {"subscription", "ask", "name", "groups"}}}
  RESULT roster_set|subscribe|subscribed|carbons|status={"ok": ...}

Commands on stdin, besides send and quit:
  {"cmd": "roster_get"}                            Roster.request_roster
  {"cmd": "roster_set", "jid": ..., "name": ..., "groups": [...]}   Roster.set_item
  {"cmd": "subscribe", "jid": ...} / {"cmd": "subscribed", "jid": ...}   Presence module
  {"cmd": "status", "show": "away", "status": "text"}
  {"cmd": "carbons"}     <enable xmlns='urn:xmpp:carbons:2'/>, as Gajim sends it
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
from nbxmpp.namespaces import Namespace  # noqa: E402
from nbxmpp.protocol import Iq, Message, Presence  # noqa: E402
from nbxmpp.structs import StanzaHandler  # noqa: E402

IQ_TIMEOUT = 15
NS_DELAY = 'urn:xmpp:delay'
NS_BLOCKING_ERRORS = 'urn:xmpp:blocking:errors'


class NbxmppIm:
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
        client.register_handler(StanzaHandler(name='presence', callback=self.on_presence))
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
        emit('ready', {'jid': str(self.client.get_bound_jid()), 'mechanism': mechanism, 'tls': None})
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

    def on_message(self, _client: Any, stanza: Any, properties: Any) -> None:
        fields = {
            'from': str(stanza.getFrom()),
            'to': str(stanza.getTo()),
            'type': stanza.getType() or 'normal',
            'id': stanza.getID(),
            'body': stanza.getBody(),
        }
        carbon = getattr(properties, 'carbon', None)
        if carbon is not None:
            fields['dir'] = carbon.type
            emit('carbon', fields)
            return
        delay_tag = stanza.getTag('delay', namespace=NS_DELAY)
        delay: Optional[dict[str, Any]] = None
        if delay_tag is not None:
            delay = {'stamp': delay_tag.getAttr('stamp'), 'from': delay_tag.getAttr('from')}
        fields['delay'] = delay
        fields['error'] = stanza.getError() if stanza.getType() == 'error' else None
        error_tag = stanza.getTag('error')
        fields['blocked'] = error_tag is not None and error_tag.getTag('blocked', namespace=NS_BLOCKING_ERRORS) is not None
        emit('message', fields)

    def on_presence(self, _client: Any, stanza: Any, _properties: Any) -> None:
        emit('presence', {
            'from': str(stanza.getFrom()),
            'type': stanza.getType() or '',
            'show': stanza.getShow() or '',
            'status': stanza.getStatus() or '',
        })

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

    def next_command(self) -> None:
        if self.busy or not self.commands or self.quitting:
            return
        command = self.commands.pop(0)
        name = command['cmd']
        presence = self.client.get_module('BasePresence')
        if name == 'quit':
            self.quitting = True
            self.client.disconnect()
            return
        if name == 'send':
            message = Message(to=command['to'], body=command['body'], typ=command.get('type', 'chat'))
            message.setID(command.get('id') or 'nbxmpp-' + os.urandom(6).hex())
            self.client.send_stanza(message)
            emit('sent', {'to': command['to'], 'id': message.getID(), 'body': command['body']})
        elif name == 'roster_get':
            self.busy = True
            self.client.get_module('Roster').request_roster(callback=self.on_roster)
        elif name == 'roster_set':
            self.busy = True
            self.client.get_module('Roster').set_item(
                command['jid'], command.get('name'), command.get('groups', []),
                callback=self.on_task_result, user_data=('roster_set', command['jid']))
        elif name == 'subscribe':
            presence.subscribe(command['jid'])
            emit('subscribe', {'ok': True, 'jid': command['jid']})
        elif name == 'subscribed':
            presence.subscribed(command['jid'])
            emit('subscribed', {'ok': True, 'jid': command['jid']})
        elif name == 'status':
            presence.send(show=command.get('show'), status=command.get('status'))
            emit('status', {'ok': True})
        elif name == 'carbons':
            self.busy = True
            iq = Iq('set', Namespace.CARBONS)
            iq.setQuery('enable')
            self.client.send_stanza(iq, callback=self.on_carbons, timeout=IQ_TIMEOUT)
        else:
            log('unknown command %r' % name)
        GLib.idle_add(self.idle_next)

    def idle_next(self) -> bool:
        self.next_command()
        return False

    def done(self) -> None:
        self.busy = False
        self.next_command()

    def on_roster(self, task: Any) -> None:
        try:
            data = task.finish()
            items = {}
            for item in data.items or []:
                items[str(item.jid)] = {
                    'subscription': item.subscription,
                    'ask': item.ask,
                    'name': item.name,
                    'groups': sorted(item.groups or []),
                }
            emit('roster', {'ok': True, 'items': items})
        except Exception as error:
            emit('roster', {'ok': False, 'error': repr(error)})
        self.done()

    def on_task_result(self, task: Any) -> None:
        key, jid = task.get_user_data()
        try:
            task.finish()
            emit(key, {'ok': True, 'jid': jid})
        except Exception as error:
            emit(key, {'ok': False, 'jid': jid, 'error': repr(error)})
        self.done()

    def on_carbons(self, _client: Any, stanza: Any) -> None:
        if stanza.getType() == 'result':
            emit('carbons', {'ok': True})
        else:
            emit('carbons', {'ok': False, 'error': stanza.getError() or str(stanza)})
        self.done()


def main() -> None:
    args = parse_args('nbxmpp instant-messaging interop client')
    logging.basicConfig(level=logging.DEBUG if args.debug else logging.WARNING, stream=sys.stderr)
    try:
        code = NbxmppIm(args).start()
    except KeyboardInterrupt:
        code = EXIT_USAGE
    sys.stdout.flush()
    os._exit(code)


if __name__ == '__main__':
    main()
