#!/usr/bin/python3
"""An instant-messaging client built on slixmpp (Debian: python3-slixmpp),
driven by JSON commands on stdin, for im.test.ts. It speaks the line protocol
of interop_common.py and adds roster, presence, carbons (XEP-0280), offline
delivery (delay stamps, XEP-0203) and blocking (XEP-0191).

Extra options:
  --auto-authorize yes|no|ask   slixmpp's roster.auto_authorize (True, False,
                                None); "ask" leaves requests to the commands
  --auto-subscribe              slixmpp's roster.auto_subscribe (off unless given)

Events on stdout, besides interop_common's ready/sent/closed:
  RESULT message={"from", "to", "type", "id", "body", "delay": {"stamp", "from"}|null,
                  "error": condition|null, "blocked": bool}
  RESULT carbon={"dir": "received"|"sent", "from", "to", "id", "body"}
  RESULT presence={"from", "type", "show", "status"}
  RESULT roster={"ok": true, "items": {jid: {"subscription", "ask", "name", "groups"}}}
  RESULT roster_set|subscribe|subscribed|carbons|block|unblock|blocklist|status={"ok": ...}
  RESULT aborted={}               the TCP connection was cut without </stream:stream>

Commands on stdin, besides send and quit:
  {"cmd": "roster_get"}
  {"cmd": "roster_set", "jid": "bob@localhost", "name": "Bob", "groups": ["Friends"]}
  {"cmd": "subscribe", "jid": "bob@localhost"}     send_presence_subscription
  {"cmd": "subscribed", "jid": "bob@localhost"}    approve a request by hand
  {"cmd": "status", "show": "away", "status": "text"}
  {"cmd": "carbons"}                               xep_0280 enable
  {"cmd": "block", "jid": ...} / {"cmd": "unblock", "jid": ...} / {"cmd": "blocklist"}
  {"cmd": "abort"}       abort the transport (no closing tag) and exit 0
"""

import asyncio
import sys
from typing import Any, Optional

from interop_common import (EXIT_LOGIN_FAILED, EXIT_OK, EXIT_USAGE, SlixmppLogin, close_stream,
                            connect_starttls, die, emit, iq_error_text, log, read_commands, require,
                            run_main, slixmpp_client, start_asyncio)

require('slixmpp', 'python3-slixmpp')

from slixmpp.exceptions import IqError, IqTimeout  # noqa: E402

IQ_TIMEOUT = 15
NS_CARBONS = 'urn:xmpp:carbons:2'
NS_BLOCKING_ERRORS = 'urn:xmpp:blocking:errors'


def own_args() -> tuple[str, bool]:
    """Takes this script's extra options out of sys.argv before parse_args sees it."""
    auto_authorize = 'ask'
    auto_subscribe = False
    rest = [sys.argv[0]]
    argv = sys.argv[1:]
    i = 0
    while i < len(argv):
        if argv[i] == '--auto-authorize' and i + 1 < len(argv):
            auto_authorize = argv[i + 1]
            i += 2
            continue
        if argv[i] == '--auto-subscribe':
            auto_subscribe = True
            i += 1
            continue
        rest.append(argv[i])
        i += 1
    if auto_authorize not in ('yes', 'no', 'ask'):
        die(EXIT_USAGE, '--auto-authorize takes yes, no or ask')
    sys.argv = rest
    return auto_authorize, auto_subscribe


def message_fields(msg: Any) -> dict[str, Any]:
    return {
        'from': str(msg['from']),
        'to': str(msg['to']),
        'type': msg['type'],
        'id': msg['id'],
        'body': msg['body'],
    }


async def run() -> int:
    auto_authorize, auto_subscribe = own_args()
    args, loop = start_asyncio('slixmpp instant-messaging interop client')

    xmpp = slixmpp_client(args)
    # The library's own subscription handling (basexmpp._handle_new_subscription).
    xmpp.auto_authorize = {'yes': True, 'no': False, 'ask': None}[auto_authorize]
    xmpp.auto_subscribe = auto_subscribe
    for plugin in ('xep_0030', 'xep_0199', 'xep_0203', 'xep_0280', 'xep_0191'):
        xmpp.register_plugin(plugin)

    login = SlixmppLogin(xmpp, loop)
    commands: asyncio.Queue[dict[str, Any]] = asyncio.Queue()

    def on_message(msg: Any) -> None:
        # Carbon wrappers are reported by the carbon_* handlers below.
        if msg.xml.find('{%s}received' % NS_CARBONS) is not None or \
                msg.xml.find('{%s}sent' % NS_CARBONS) is not None:
            return
        fields = message_fields(msg)
        delay: Optional[dict[str, Any]] = None
        if msg.xml.find('{urn:xmpp:delay}delay') is not None:
            stamp = msg['delay']['stamp']
            delay = {'stamp': stamp.isoformat() if stamp is not None else None,
                     'from': str(msg['delay']['from'])}
        fields['delay'] = delay
        fields['error'] = msg['error']['condition'] if msg['type'] == 'error' else None
        fields['blocked'] = msg.xml.find('.//{%s}blocked' % NS_BLOCKING_ERRORS) is not None
        emit('message', fields)

    def on_carbon(direction: str, msg: Any) -> None:
        inner = msg['carbon_%s' % direction]
        fields = message_fields(inner)
        fields['dir'] = direction
        emit('carbon', fields)

    def on_presence(pres: Any) -> None:
        emit('presence', {
            'from': str(pres['from']),
            # The attribute as sent ('' for available): slixmpp's pres['type']
            # reports the <show/> value for available presence.
            'type': pres.xml.get('type', ''),
            'show': pres['show'],
            'status': pres['status'],
        })

    xmpp.add_event_handler('message', on_message)
    xmpp.add_event_handler('carbon_received', lambda m: on_carbon('received', m))
    xmpp.add_event_handler('carbon_sent', lambda m: on_carbon('sent', m))
    xmpp.add_event_handler('presence', on_presence)

    connect_starttls(xmpp, args)
    if not await login.wait():
        return EXIT_LOGIN_FAILED

    emit('ready', {'jid': str(xmpp.boundjid), 'mechanism': login.mechanism, 'tls': None})
    await read_commands(loop, commands)

    async def iq_command(key: str, awaitable: Any, extra: Optional[dict[str, Any]] = None) -> Any:
        try:
            result = await awaitable
            emit(key, {'ok': True, **(extra or {})})
            return result
        except (IqError, IqTimeout) as error:
            emit(key, {'ok': False, 'error': iq_error_text(error), **(extra or {})})
            return None

    while True:
        command = await commands.get()
        name = command['cmd']
        if name == 'quit':
            break
        if name == 'send':
            msg = xmpp.make_message(mto=command['to'], mbody=command['body'], mtype=command.get('type', 'chat'))
            msg['id'] = command.get('id') or xmpp.new_id()
            msg.send()
            emit('sent', {'to': command['to'], 'id': msg['id'], 'body': command['body']})
        elif name == 'roster_get':
            try:
                iq = await xmpp.get_roster(timeout=IQ_TIMEOUT)
                items = {}
                for jid, values in iq['roster']['items'].items():
                    items[str(jid)] = {
                        'subscription': values.get('subscription'),
                        'ask': values.get('ask') or None,
                        'name': values.get('name') or None,
                        'groups': sorted(values.get('groups') or []),
                    }
                emit('roster', {'ok': True, 'items': items})
            except (IqError, IqTimeout) as error:
                emit('roster', {'ok': False, 'error': iq_error_text(error)})
        elif name == 'roster_set':
            await iq_command('roster_set', xmpp.update_roster(
                command['jid'], name=command.get('name', ''), groups=command.get('groups', []),
                timeout=IQ_TIMEOUT), {'jid': command['jid']})
        elif name == 'subscribe':
            xmpp.send_presence_subscription(pto=command['jid'])
            emit('subscribe', {'ok': True, 'jid': command['jid']})
        elif name == 'subscribed':
            xmpp.send_presence(pto=command['jid'], ptype='subscribed')
            emit('subscribed', {'ok': True, 'jid': command['jid']})
        elif name == 'status':
            xmpp.send_presence(pshow=command.get('show'), pstatus=command.get('status'))
            emit('status', {'ok': True})
        elif name == 'carbons':
            await iq_command('carbons', xmpp['xep_0280'].enable(timeout=IQ_TIMEOUT))
        elif name == 'block':
            await iq_command('block', xmpp['xep_0191'].block(command['jid'], timeout=IQ_TIMEOUT),
                             {'jid': command['jid']})
        elif name == 'unblock':
            await iq_command('unblock', xmpp['xep_0191'].unblock(command['jid'], timeout=IQ_TIMEOUT),
                             {'jid': command['jid']})
        elif name == 'blocklist':
            try:
                iq = await xmpp['xep_0191'].get_blocked(timeout=IQ_TIMEOUT)
                emit('blocklist', {'ok': True, 'items': sorted(str(j) for j in iq['blocklist']['items'])})
            except (IqError, IqTimeout) as error:
                emit('blocklist', {'ok': False, 'error': iq_error_text(error)})
        elif name == 'abort':
            # The connection ends without </stream:stream>, as when a phone
            # loses its network: the server has to notice on its own.
            login.quitting = True
            if xmpp.transport is not None:
                xmpp.transport.abort()
            try:
                await asyncio.wait_for(login.gone.wait(), timeout=5)
            except asyncio.TimeoutError:
                pass
            emit('aborted', {})
            return EXIT_OK
        else:
            log('unknown command %r' % name)

    login.quitting = True
    return await close_stream(xmpp)


if __name__ == '__main__':
    run_main(run)
