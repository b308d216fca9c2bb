#!/usr/bin/python3
"""A slixmpp (Debian: python3-slixmpp) client that creates, configures and
uses a multi-user chat room with the library's XEP-0045 plugin, for
muc.test.ts. It speaks the line protocol of interop_common.py (ready/closed,
quit; login as in mam_slixmpp.py).

Events on stdout, besides interop_common's ready/closed:
  RESULT joined={"ok": true, "room", "nick", "from", "codes", "affiliation", "role",
                 "occupants": [nick...], "history": [body...], "subject"}
      | {"ok": false, "error": ...}       the end of join_muc_wait()
  RESULT config={"ok": true, "values": {var: value}} | {"ok": false, "error"}
      the form of get_room_config()
  RESULT configured={"ok": true} | {"ok": false, "error"}     set_room_config()
  RESULT roominfo={"ok": true, "names": [...], "features": [...]}   disco#info of the room
  RESULT presence={"from", "type", "nick", "affiliation", "role", "jid", "codes"}
      every MUC presence the plugin reports (groupchat_presence)
  RESULT groupchat={"from", "id", "body", "delay_from", "stamp", "stanza_id"}
      every groupchat message with a body (groupchat_message)
  RESULT sent={"to", "id", "body"}

Commands on stdin, besides quit:
  {"cmd": "join", "room": "lounge@conference.localhost", "nick": "Alice", "maxstanzas": 0}
  {"cmd": "get_config", "room": ...}
  {"cmd": "set_config", "room": ..., "values": {"muc#roomconfig_roomname": "...", ...}}
      fills the form from get_room_config() and submits it with set_room_config()
  {"cmd": "roominfo", "room": ...}
  {"cmd": "send", "room": ..., "body": "...", "id": "..."}   send_message(mtype='groupchat')
"""

import asyncio
from typing import Any

from interop_common import (EXIT_LOGIN_FAILED, SlixmppLogin, close_stream, connect_starttls, emit, log,
                            read_commands, require, run_main, slixmpp_client, start_asyncio)

require('slixmpp', 'python3-slixmpp')

from slixmpp import JID  # noqa: E402
from slixmpp.exceptions import IqError, IqTimeout, PresenceError  # noqa: E402

IQ_TIMEOUT = 20
NS_DELAY = 'urn:xmpp:delay'
NS_SID = 'urn:xmpp:sid:0'


def error_text(error: BaseException) -> str:
    if isinstance(error, IqTimeout):
        return 'timeout'
    if isinstance(error, IqError):
        return '%s: %s' % (error.condition, error.text)
    if isinstance(error, PresenceError):
        return 'presence error %s: %s' % (error.condition, error.text)
    if isinstance(error, asyncio.TimeoutError):
        return 'timeout'
    return repr(error)


def presence_info(pres: Any) -> dict[str, Any]:
    muc = pres['muc']
    jid = muc['jid']
    return {
        'from': str(pres['from']),
        'type': pres['type'],
        'nick': muc['nick'],
        'affiliation': muc['affiliation'],
        'role': muc['role'],
        'jid': str(jid) if jid else None,
        'codes': sorted(int(c) for c in muc['status_codes']),
    }


def message_info(msg: Any) -> dict[str, Any]:
    # The raw XML, so that what is reported is what the server sent.
    delay = msg.xml.find('{%s}delay' % NS_DELAY)
    sid = msg.xml.find('{%s}stanza-id' % NS_SID)
    return {
        'from': str(msg['from']),
        'id': msg['id'] or None,
        'body': msg['body'],
        'delay_from': delay.get('from') if delay is not None else None,
        'stamp': delay.get('stamp') if delay is not None else None,
        'stanza_id': [sid.get('id'), sid.get('by')] if sid is not None else None,
    }


def form_values(form: Any) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for var, field in form.get_fields().items():
        value = field.get_value(convert=False)
        values[var] = value if isinstance(value, (str, list)) else str(value)
    return values


async def run() -> int:
    args, loop = start_asyncio('slixmpp MUC interop client')

    xmpp = slixmpp_client(args)
    for plugin in ('xep_0030', 'xep_0004', 'xep_0045', 'xep_0203'):
        xmpp.register_plugin(plugin)

    login = SlixmppLogin(xmpp, loop)
    commands: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    xmpp.add_event_handler('groupchat_presence', lambda p: emit('presence', presence_info(p)))
    xmpp.add_event_handler('groupchat_message', lambda m: emit('groupchat', message_info(m)))

    connect_starttls(xmpp, args)
    if not await login.wait():
        return EXIT_LOGIN_FAILED

    emit('ready', {'jid': str(xmpp.boundjid), 'mechanism': xmpp['feature_mechanisms'].mech.name, 'tls': None})
    await read_commands(loop, commands)
    muc = xmpp['xep_0045']

    async def join(command: dict[str, Any]) -> None:
        room = JID(command['room'])
        nick = command['nick']
        try:
            pres, subject, occupants, history = await muc.join_muc_wait(
                room, nick, maxstanzas=command.get('maxstanzas'), timeout=IQ_TIMEOUT)
        except (PresenceError, asyncio.TimeoutError) as error:
            emit('joined', {'ok': False, 'error': error_text(error)})
            return
        info = presence_info(pres)
        emit('joined', {
            'ok': True,
            'room': str(room),
            'nick': muc.our_nicks.get(room),
            'from': info['from'],
            'codes': info['codes'],
            'affiliation': info['affiliation'],
            'role': info['role'],
            'occupants': sorted(muc.get_roster(room)),
            'others': [presence_info(p)['nick'] for p in occupants],
            'history': [m['body'] for m in history],
            'subject': subject['subject'],
        })

    async def get_config(command: dict[str, Any]) -> None:
        try:
            form = await muc.get_room_config(JID(command['room']), timeout=IQ_TIMEOUT)
        except (IqError, IqTimeout, ValueError) as error:
            emit('config', {'ok': False, 'error': error_text(error)})
            return
        emit('config', {'ok': True, 'type': form['type'], 'values': form_values(form)})

    async def set_config(command: dict[str, Any]) -> None:
        room = JID(command['room'])
        try:
            form = await muc.get_room_config(room, timeout=IQ_TIMEOUT)
            fields = form.get_fields()
            for var, value in command['values'].items():
                if var not in fields:
                    raise ValueError('the form has no field %s' % var)
                fields[var]['value'] = value
            await muc.set_room_config(room, form, timeout=IQ_TIMEOUT)
        except (IqError, IqTimeout, ValueError) as error:
            emit('configured', {'ok': False, 'error': error_text(error)})
            return
        emit('configured', {'ok': True})

    async def roominfo(command: dict[str, Any]) -> None:
        room = command['room']
        try:
            iq = await xmpp['xep_0030'].get_info(jid=room, cached=False, timeout=IQ_TIMEOUT)
        except (IqError, IqTimeout) as error:
            emit('roominfo', {'ok': False, 'error': error_text(error)})
            return
        info = iq['disco_info']
        emit('roominfo', {
            'ok': True,
            'names': [i[3] for i in info['identities']],
            'features': sorted(info['features']),
        })

    def send(command: dict[str, Any]) -> None:
        msg = xmpp.make_message(mto=JID(command['room']), mbody=command['body'], mtype='groupchat')
        if command.get('id'):
            msg['id'] = command['id']
        msg.send()
        emit('sent', {'to': command['room'], 'id': msg['id'], 'body': command['body']})

    while True:
        command = await commands.get()
        name = command['cmd']
        if name == 'quit':
            break
        if name == 'join':
            await join(command)
        elif name == 'get_config':
            await get_config(command)
        elif name == 'set_config':
            await set_config(command)
        elif name == 'roominfo':
            await roominfo(command)
        elif name == 'send':
            send(command)
        else:
            log('unknown command %r' % name)

    login.quitting = True
    return await close_stream(xmpp)


if __name__ == '__main__':
    run_main(run)
