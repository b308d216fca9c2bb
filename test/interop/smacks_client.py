#!/usr/bin/python3
"""A slixmpp client (Debian: python3-slixmpp) with stream management (XEP-0198,
slixmpp's xep_0198 plugin) and resumption, driven by JSON commands on stdin;
see interop_common.py for the line protocol. Run by smacks.test.ts.

Besides the common results it prints:
  RESULT ready={"jid": ..., "sm_id": ..., "tls": ...}   bound, available, SM enabled with resumption
  RESULT cut={"handled": ..., "unacked": ...}           the TCP connection was aborted (no </stream:stream>)
  RESULT resumed={"previd": ..., "h": ..., "jid": ..., "handled": ...}
  RESULT sm_failed={"condition": ...}                   resumption (or enabling) refused
  RESULT new_session={"jid": ...}                       a session_start after a cut (not a resumption)
  RESULT state={"handled": ..., "seq": ..., "last_ack": ..., "unacked": ...}

Commands besides the common ones:
  {"cmd": "cut"}     abort the transport, then reconnect and let the plugin resume
  {"cmd": "state"}   print the plugin's counters
"""

import asyncio
from typing import Any

from interop_common import (EXIT_LOGIN_FAILED, close_stream, connect_starttls, die, emit, log,
                            read_commands, require, run_main, slixmpp_client, start_asyncio)

require('slixmpp', 'python3-slixmpp')


async def run() -> int:
    args, loop = start_asyncio('slixmpp stream management interop client')

    xmpp = slixmpp_client(args)
    xmpp.register_plugin('xep_0198')
    sm = xmpp['xep_0198']
    sm.allow_resume = True

    def connect() -> None:
        connect_starttls(xmpp, args)

    ready: asyncio.Future[None] = loop.create_future()
    enabled: asyncio.Future[None] = loop.create_future()
    commands: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    state: dict[str, Any] = {'quitting': False, 'cutting': False, 'sessions': 0}
    gone = asyncio.Event()

    def fail_login(reason: str) -> None:
        state['quitting'] = True
        for future in (ready, enabled):
            if not future.done():
                future.set_exception(RuntimeError(reason))

    def on_session_start(_event: Any) -> None:
        state['sessions'] += 1
        xmpp.send_presence()
        if state['sessions'] > 1:
            emit('new_session', {'jid': str(xmpp.boundjid)})
        if not ready.done():
            ready.set_result(None)

    def on_sm_enabled(_stanza: Any) -> None:
        if not enabled.done():
            enabled.set_result(None)

    def on_resumed(stanza: Any) -> None:
        state['cutting'] = False
        emit('resumed', {'previd': stanza['previd'], 'h': stanza['h'], 'jid': str(xmpp.boundjid),
                         'handled': sm.handled})

    def on_sm_failed(stanza: Any) -> None:
        condition = stanza.xml[0].tag.split('}')[-1] if len(stanza.xml) else None
        emit('sm_failed', {'condition': condition})

    def on_disconnected(reason: Any) -> None:
        gone.set()
        if state['quitting']:
            return
        if state['cutting']:
            # The plugin keeps its id and counters: connecting again resumes.
            log('connection cut (%s); reconnecting' % reason)
            connect()
            return
        if not ready.done():
            fail_login('disconnected before session start: %s' % reason)
        else:
            die(EXIT_LOGIN_FAILED, 'disconnected unexpectedly: %s' % reason)

    def on_message(msg: Any) -> None:
        emit('message', {'from': str(msg['from']), 'to': str(msg['to']), 'type': msg['type'],
                         'id': msg['id'], 'body': msg['body'],
                         'delayed': msg.xml.find('{urn:xmpp:delay}delay') is not None})

    xmpp.add_event_handler('failed_all_auth', lambda _e: fail_login('authentication failed'))
    xmpp.add_event_handler('ssl_invalid_chain', lambda e: fail_login('certificate not trusted: %s' % e))
    xmpp.add_event_handler('connection_failed', lambda e: fail_login('connection failed: %s' % e))
    xmpp.add_event_handler('stream_error', lambda e: log('stream error: %s' % e))
    xmpp.add_event_handler('disconnected', on_disconnected)
    xmpp.add_event_handler('session_start', on_session_start)
    xmpp.add_event_handler('sm_enabled', on_sm_enabled)
    xmpp.add_event_handler('session_resumed', on_resumed)
    xmpp.add_event_handler('sm_failed', on_sm_failed)
    xmpp.add_event_handler('message', on_message)

    connect()
    try:
        await ready
        await enabled
    except RuntimeError as error:
        emit('login_failed', {'reason': str(error)})
        return EXIT_LOGIN_FAILED

    tls = xmpp.socket.version() if xmpp.socket is not None and hasattr(xmpp.socket, 'version') else None
    emit('ready', {'jid': str(xmpp.boundjid), 'sm_id': sm.sm_id, 'tls': tls})

    await read_commands(loop, commands)

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
        elif name == 'cut':
            if xmpp.transport is None:
                log('cut: not connected')
                continue
            state['cutting'] = True
            emit('cut', {'handled': sm.handled, 'unacked': len(sm.unacked_queue)})
            # The network goes away: no closing tag, no TLS close_notify.
            xmpp.transport.abort()
        elif name == 'state':
            emit('state', {'handled': sm.handled, 'seq': sm.seq, 'last_ack': sm.last_ack,
                           'unacked': len(sm.unacked_queue)})
        else:
            log('unknown command %r' % name)

    state['quitting'] = True
    gone.clear()
    return await close_stream(xmpp)


if __name__ == '__main__':
    run_main(run)
