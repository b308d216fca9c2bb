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

import os
from typing import Any, Optional

from interop_common import emit, log
from nbxmpp_common import NbxmppScript, run_script

from gi.repository import GLib
from nbxmpp.protocol import Message

IQ_TIMEOUT = 15


class NbxmppInterop(NbxmppScript):
    def ready_fields(self) -> dict[str, Any]:
        tls: Optional[str] = None
        try:
            version = self.client.tls_version
            tls = version.value_nick if version is not None else None
        except Exception:  # tls_version needs GLib >= 2.69
            tls = None
        return {'mechanism': self.mechanism(), 'tls': tls}

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

    def run_command(self, name: str, command: dict[str, Any]) -> None:
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


if __name__ == '__main__':
    run_script('nbxmpp interop client', NbxmppInterop)
