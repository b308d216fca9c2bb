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

import os
from typing import Any, Optional

from interop_common import emit, log
from nbxmpp_common import NbxmppScript, run_script

from gi.repository import GLib
from nbxmpp.namespaces import Namespace
from nbxmpp.protocol import Iq, Message
from nbxmpp.structs import StanzaHandler

IQ_TIMEOUT = 15
NS_DELAY = 'urn:xmpp:delay'
NS_BLOCKING_ERRORS = 'urn:xmpp:blocking:errors'


class NbxmppIm(NbxmppScript):
    def __init__(self, args: Any) -> None:
        super().__init__(args)
        self.client.register_handler(StanzaHandler(name='presence', callback=self.on_presence))

    def ready_fields(self) -> dict[str, Any]:
        return {'mechanism': self.mechanism(), 'tls': None}

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


if __name__ == '__main__':
    run_script('nbxmpp instant-messaging interop client', NbxmppIm)
