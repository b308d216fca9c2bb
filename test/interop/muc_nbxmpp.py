#!/usr/bin/python3
"""A client built on nbxmpp, Gajim's library (Debian: python3-nbxmpp), that
joins a multi-user chat room the way Gajim does, for muc.test.ts. It speaks
the line protocol of interop_common.py (ready/closed, quit; login as in
mam_nbxmpp.py).

Gajim (gajim/common/modules/muc.py) first asks the room for its disco#info,
then sends available presence to room@service/nick with an
<x xmlns='http://jabber.org/protocol/muc'><history .../></x> child. Today's
Gajim asks for maxchars='0' and fetches history with MAM; Gajim before MAM
(and any client on a room without it) asks for maxstanzas or since, which
is what "history" sets here. The stanzas are parsed by nbxmpp's MUC, delay
and occupant-id modules; what they found is reported.

Events on stdout, besides interop_common's ready/closed:
  RESULT roominfo={"ok": true, "is_muc", "name", "persistent", "features"} | {"ok": false, "error"}
      Discovery.disco_info of the room, as nbxmpp's DiscoInfo reads it
  RESULT presence={"n", "from", "type", "nick", "affiliation", "role", "jid", "codes", "occupant_id"}
      every presence from the room (n: its place among all room stanzas)
  RESULT groupchat={"n", "from", "nick", "id", "body", "delayed", "stamp", "delay_from", "occupant_id", "stanza_id"}
      every groupchat message with a body
  RESULT subject={"n", "from", "text"}   the subject (empty or not): the end of the join
  RESULT error={"n", "kind", "from", "condition"}   a presence or message error from the room
  RESULT sent={"to", "id", "body"}

Commands on stdin, besides quit:
  {"cmd": "roominfo", "room": "lounge@conference.localhost"}
  {"cmd": "join", "room": ..., "nick": "Bob", "history": {"maxstanzas": "20"}}
  {"cmd": "send", "room": ..., "body": "...", "id": "..."}
  {"cmd": "leave", "room": ..., "nick": "Bob"}
"""

from datetime import datetime, timezone
from typing import Any

from interop_common import emit, log
from nbxmpp_common import NbxmppScript, run_script

from gi.repository import GLib  # noqa: E402
from nbxmpp.errors import StanzaError  # noqa: E402
from nbxmpp.namespaces import Namespace  # noqa: E402
from nbxmpp.protocol import JID, Message, Presence  # noqa: E402
from nbxmpp.structs import StanzaHandler  # noqa: E402

IQ_TIMEOUT = 20


def iso(timestamp: Any) -> Any:
    if timestamp is None:
        return None
    return datetime.fromtimestamp(timestamp, timezone.utc).isoformat()


class NbxmppMuc(NbxmppScript):
    def __init__(self, args: Any) -> None:
        super().__init__(args)
        # Counts every stanza from a room, so that the test can check their order.
        self.n = 0
        self.client.register_handler(StanzaHandler(name='presence', callback=self.on_presence))

    # ---- stanzas from rooms ---------------------------------------------

    def from_room(self, stanza: Any) -> bool:
        frm = stanza.getFrom()
        return frm is not None and frm.domain != self.domain

    def on_presence(self, _client: Any, stanza: Any, properties: Any) -> None:
        if not self.from_room(stanza):
            return
        self.n += 1
        if properties.type.is_error:
            emit('error', {'n': self.n, 'kind': 'presence', 'from': str(stanza.getFrom()),
                           'condition': stanza.getError()})
            return
        user = properties.muc_user
        codes = properties.muc_status_codes or set()
        emit('presence', {
            'n': self.n,
            'from': str(stanza.getFrom()),
            'type': stanza.getType() or 'available',
            'nick': properties.muc_nickname,
            'affiliation': str(user.affiliation.value) if user and user.affiliation else None,
            'role': str(user.role.value) if user and user.role else None,
            'jid': str(user.jid) if user and user.jid else None,
            'codes': sorted(int(c.value) for c in codes),
            'occupant_id': properties.occupant_id,
        })

    def on_message(self, _client: Any, stanza: Any, properties: Any) -> None:
        if not self.from_room(stanza):
            return
        self.n += 1
        if properties.type.is_error:
            emit('error', {'n': self.n, 'kind': 'message', 'from': str(stanza.getFrom()),
                           'condition': stanza.getError()})
            return
        if not properties.type.is_groupchat:
            return
        if properties.muc_subject is not None or (properties.body is None and properties.subject is not None):
            emit('subject', {'n': self.n, 'from': str(stanza.getFrom()), 'text': properties.subject})
            return
        if properties.body is None:
            return
        delay = stanza.getTag('delay', namespace=Namespace.DELAY2)
        sid = stanza.getTag('stanza-id', namespace=Namespace.SID)
        emit('groupchat', {
            'n': self.n,
            'from': str(stanza.getFrom()),
            'nick': properties.muc_nickname,
            'id': stanza.getID(),
            'body': properties.body,
            # nbxmpp's reading: a delay from the room is the server's (has_server_delay).
            'delayed': bool(properties.has_server_delay),
            'stamp': iso(properties.timestamp) if properties.has_server_delay else None,
            'delay_from': delay.getAttr('from') if delay is not None else None,
            'occupant_id': properties.occupant_id,
            'stanza_id': [sid.getAttr('id'), sid.getAttr('by')] if sid is not None else None,
        })

    # ---- commands: one at a time, in order -------------------------------

    def run_command(self, name: str, command: dict[str, Any]) -> None:
        if name == 'roominfo':
            self.busy = True
            self.client.get_module('Discovery').disco_info(
                command['room'], timeout=IQ_TIMEOUT, callback=self.on_roominfo)
            return
        if name == 'join':
            self.join(command)
        elif name == 'send':
            message = Message(to=JID.from_string(command['room']), body=command['body'], typ='groupchat')
            if command.get('id'):
                message.setID(command['id'])
            self.client.send_stanza(message)
            emit('sent', {'to': command['room'], 'id': message.getID(), 'body': command['body']})
        elif name == 'leave':
            # Gajim's MUC.leave(): unavailable presence to the occupant JID.
            presence = Presence(to='%s/%s' % (command['room'], command['nick']), typ='unavailable')
            self.client.send_stanza(presence)
        else:
            log('unknown command %r' % name)
        GLib.idle_add(self.idle_next)

    def join(self, command: dict[str, Any]) -> None:
        # Gajim's MUC._join(): presence to the occupant JID with the MUC <x/>.
        presence = Presence(to='%s/%s' % (command['room'], command['nick']))
        muc_x = presence.setTag(Namespace.MUC + ' x')
        history = command.get('history')
        if history:
            muc_x.setTag('history', {k: str(v) for k, v in history.items()})
        self.client.send_stanza(presence)

    def done(self) -> None:
        self.busy = False
        GLib.idle_add(self.idle_next)

    def on_roominfo(self, task: Any) -> None:
        try:
            info = task.finish()
            emit('roominfo', {
                'ok': True,
                'is_muc': info.is_muc,
                'name': info.muc_name,
                'persistent': info.muc_is_persistent,
                'features': sorted(info.features),
            })
        except StanzaError as error:
            emit('roominfo', {'ok': False, 'error': '%s: %s' % (error.condition, error.get_text())})
        except Exception as error:
            emit('roominfo', {'ok': False, 'error': repr(error)})
        self.done()


if __name__ == '__main__':
    run_script('nbxmpp MUC interop client', NbxmppMuc)
