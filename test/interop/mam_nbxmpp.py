#!/usr/bin/python3
"""A client built on nbxmpp, Gajim's library (Debian: python3-nbxmpp), that
receives chat messages live and catches up from its account's message
archive the way Gajim does, for mam.test.ts. It speaks the line protocol of
interop_common.py (ready/closed, disco, quit; login as in nbxmpp_client.py).

Gajim's catch-up (gajim/common/modules/mam.py): MAM.make_query to the own
bare JID with a fresh queryid, `after` = the last archive id it knows, or on
a first start `start` = a point in time; as long as <fin/> is not
complete='true', the next query goes out with after = the page's RSM <last/>.
Results are accepted only from the own archive and with the current queryid.

Events on stdout, besides interop_common's ready/closed:
  RESULT message={"from", "to", "type", "id", "body", "stanza_ids": [[id, by], ...]}
      a live (not archived) message
  RESULT disco={"ok", "jid", "features", "has_mam_2"}    DiscoInfo.has_mam_2 is Gajim's switch
  RESULT page={"n", "queryid", "complete", "first", "last", "count",
               "items": [{"id", "body", "from", "to", "stamp", "archive"}]}
  RESULT catchup={"ok": true, "pages": n, "stray": [...]} | {"ok": false, "error": ...}
      "stray": archived messages that did not belong to the running query

Commands on stdin, besides disco and quit:
  {"cmd": "catchup", "after": "<archive id>"|null, "start": "YYYY-MM-DDTHH:MM:SSZ"|null, "max": 70}
"""

import logging
import os
import sys
from datetime import datetime, timezone
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

IQ_TIMEOUT = 20


class NbxmppMam:
    def __init__(self, args: Any) -> None:
        self.args = args
        self.loop = GLib.MainLoop()
        self.exit_code = EXIT_OK
        self.ready = False
        self.quitting = False
        self.commands: list[dict[str, Any]] = []
        self.busy = False
        # The running catch-up: its current queryid, pages so far, results by queryid.
        self.queryid: Optional[str] = None
        self.max = 70
        self.pages = 0
        self.collected: list[dict[str, Any]] = []
        self.stray: list[dict[str, Any]] = []

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

    def on_connected(self, _client: Any, _signal: str) -> None:
        self.ready = True
        self.client.send_stanza(Presence())
        emit('ready', {'jid': str(self.client.get_bound_jid()), 'mechanism': None, 'tls': None})
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

    # ---- messages -------------------------------------------------------

    def on_message(self, _client: Any, stanza: Any, properties: Any) -> None:
        mam = properties.mam
        if mam is None:
            emit('message', {
                'from': str(stanza.getFrom()),
                'to': str(stanza.getTo()),
                'type': stanza.getType() or 'normal',
                'id': stanza.getID(),
                'body': properties.body,
                'stanza_ids': [[s.id, str(s.by)] for s in properties.stanza_ids],
            })
            return
        item = {
            'id': mam.id,
            'queryid': mam.query_id,
            'archive': str(mam.archive),
            'body': properties.body,
            'from': str(stanza.getFrom()),
            'to': str(stanza.getTo()),
            'stamp': datetime.fromtimestamp(mam.timestamp, timezone.utc).isoformat(),
        }
        # Gajim's _from_valid_archive and _is_valid_request.
        if item['archive'] != self.bare or mam.query_id != self.queryid:
            self.stray.append(item)
        else:
            self.collected.append(item)

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
        if name == 'quit':
            self.quitting = True
            self.client.disconnect()
            return
        if name == 'disco':
            self.busy = True
            jid = command.get('jid', self.bare)
            self.client.get_module('Discovery').disco_info(
                jid, timeout=IQ_TIMEOUT, callback=self.on_disco_result, user_data=jid)
        elif name == 'catchup':
            self.busy = True
            self.pages = 0
            self.stray = []
            self.max = int(command.get('max', 70))
            start = None
            if command.get('start'):
                start = datetime.strptime(command['start'], '%Y-%m-%dT%H:%M:%SZ').replace(tzinfo=timezone.utc)
            self.query(command.get('after'), start)
        else:
            log('unknown command %r' % name)

    def done(self) -> None:
        self.busy = False
        GLib.idle_add(self.idle_next)

    def idle_next(self) -> bool:
        self.next_command()
        return False

    def on_disco_result(self, task: Any) -> None:
        jid = task.get_user_data()
        try:
            info = task.finish()
            emit('disco', {'ok': True, 'jid': jid, 'features': sorted(info.features), 'has_mam_2': info.has_mam_2})
        except Exception as error:
            emit('disco', {'ok': False, 'jid': jid, 'error': repr(error)})
        self.done()

    # ---- the catch-up ---------------------------------------------------

    def query(self, after: Optional[str], start: Optional[datetime]) -> None:
        self.queryid = 'gajim-' + os.urandom(6).hex()
        self.collected = []
        self.client.get_module('MAM').make_query(
            self.bare, queryid=self.queryid, start=start, after=after, max_=self.max,
            callback=self.on_query_finished)

    def on_query_finished(self, task: Any) -> None:
        try:
            result = task.finish()
        except Exception as error:
            emit('catchup', {'ok': False, 'pages': self.pages, 'error': repr(error)})
            self.done()
            return
        self.pages += 1
        rsm = result.rsm
        emit('page', {
            'n': self.pages,
            'queryid': self.queryid,
            'complete': result.complete,
            'first': rsm.first,
            'last': rsm.last,
            'count': rsm.count,
            'items': self.collected,
        })
        if result.complete:
            self.queryid = None
            emit('catchup', {'ok': True, 'pages': self.pages, 'stray': self.stray})
            self.done()
            return
        if self.pages > 1000:
            emit('catchup', {'ok': False, 'pages': self.pages, 'error': 'more than 1000 pages'})
            self.done()
            return
        # Gajim: "Request next page" after the page's last id, without start.
        self.query(rsm.last, None)


def main() -> None:
    args = parse_args('nbxmpp MAM interop client')
    logging.basicConfig(level=logging.DEBUG if args.debug else logging.WARNING, stream=sys.stderr)
    try:
        code = NbxmppMam(args).start()
    except KeyboardInterrupt:
        code = EXIT_USAGE
    sys.stdout.flush()
    os._exit(code)


if __name__ == '__main__':
    main()
