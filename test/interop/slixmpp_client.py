#!/usr/bin/python3
"""An XMPP client built on slixmpp (Debian: python3-slixmpp), driven by JSON
commands on stdin; see interop_common.py for the line protocol.

Logs in over STARTTLS with exactly the SASL mechanism given by --mech (for
SCRAM-SHA-*-PLUS slixmpp 1.8 always uses the tls-unique channel binding),
verifies the server certificate against --cafile, and sends initial presence
like a real client so that messages to its bare JID reach it.

Example:
  INTEROP_PASSWORD=pw /usr/bin/python3 slixmpp_client.py \\
      --jid alice@localhost/sli --port 5222 --cafile server.pem
  then type: {"cmd": "ping", "jid": "localhost"}
"""

import asyncio
from typing import Any

from interop_common import (EXIT_LOGIN_FAILED, await_login, close_stream, connect_starttls, die,
                            emit, iq_error_text, log, read_commands, require, run_main,
                            slixmpp_client, start_asyncio)

require('slixmpp', 'python3-slixmpp')

from slixmpp.exceptions import IqError, IqTimeout  # noqa: E402

IQ_TIMEOUT = 15


async def run() -> int:
    args, loop = start_asyncio('slixmpp interop client')

    xmpp = slixmpp_client(args)
    xmpp.register_plugin('xep_0030')
    xmpp.register_plugin('xep_0199')

    ready: asyncio.Future[None] = loop.create_future()
    commands: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    state: dict[str, Any] = {'mechanism': None, 'failure': None, 'quitting': False}

    gone = asyncio.Event()

    def login_failed(reason: str) -> None:
        state['quitting'] = True
        if not ready.done():
            ready.set_exception(RuntimeError(reason))

    def on_auth_success(_stanza: Any) -> None:
        state['mechanism'] = xmpp['feature_mechanisms'].mech.name

    def on_failed_auth(failure: Any) -> None:
        state['failure'] = '%s %s' % (failure['condition'], failure['text'])
        log('SASL failure: %s' % state['failure'])

    def on_session_start(_event: Any) -> None:
        xmpp.send_presence()
        if not ready.done():
            ready.set_result(None)

    def on_disconnected(reason: Any) -> None:
        gone.set()
        if not ready.done():
            login_failed('disconnected before session start: %s' % reason)
        elif not state['quitting']:
            die(EXIT_LOGIN_FAILED, 'disconnected unexpectedly: %s' % reason)

    def on_message(msg: Any) -> None:
        emit('message', {
            'from': str(msg['from']),
            'to': str(msg['to']),
            'type': msg['type'],
            'id': msg['id'],
            'body': msg['body'],
        })

    xmpp.add_event_handler('auth_success', on_auth_success)
    xmpp.add_event_handler('failed_auth', on_failed_auth)
    xmpp.add_event_handler('failed_all_auth',
                           lambda _e: login_failed('authentication failed: %s' % state['failure']))
    xmpp.add_event_handler('no_auth', lambda _e: login_failed('no usable SASL mechanism offered'))
    xmpp.add_event_handler('ssl_invalid_chain', lambda e: login_failed('certificate not trusted: %s' % e))
    xmpp.add_event_handler('connection_failed', lambda e: login_failed('connection failed: %s' % e))
    xmpp.add_event_handler('stream_error', lambda e: log('stream error: %s' % e))
    xmpp.add_event_handler('disconnected', on_disconnected)
    xmpp.add_event_handler('session_start', on_session_start)
    xmpp.add_event_handler('message', on_message)

    connect_starttls(xmpp, args)
    if not await await_login(ready, gone):
        return EXIT_LOGIN_FAILED

    tls = xmpp.socket.version() if xmpp.socket is not None and hasattr(xmpp.socket, 'version') else None
    emit('ready', {'jid': str(xmpp.boundjid), 'mechanism': state['mechanism'], 'tls': tls})

    await read_commands(loop, commands)

    while True:
        command = await commands.get()
        name = command['cmd']
        if name == 'quit':
            break
        if name == 'disco':
            jid = command.get('jid', xmpp.boundjid.domain)
            try:
                iq = await xmpp['xep_0030'].get_info(jid=jid, timeout=IQ_TIMEOUT)
                info = iq['disco_info']
                emit('disco', {
                    'ok': True,
                    'jid': jid,
                    'features': sorted(info['features']),
                    'identities': [[i[0], i[1], i[3]] for i in info['identities']],
                })
            except (IqError, IqTimeout) as error:
                emit('disco', {'ok': False, 'jid': jid, 'error': iq_error_text(error)})
        elif name == 'ping':
            jid = command.get('jid', xmpp.boundjid.domain)
            try:
                rtt = await xmpp['xep_0199'].ping(jid=jid, timeout=IQ_TIMEOUT)
                emit('ping', {'ok': True, 'jid': jid, 'rtt_ms': round(rtt * 1000, 1)})
            except (IqError, IqTimeout) as error:
                emit('ping', {'ok': False, 'jid': jid, 'error': iq_error_text(error)})
        elif name == 'send':
            msg = xmpp.make_message(mto=command['to'], mbody=command['body'], mtype=command.get('type', 'chat'))
            msg['id'] = command.get('id') or xmpp.new_id()
            msg.send()
            emit('sent', {'to': command['to'], 'id': msg['id'], 'body': command['body']})
        else:
            log('unknown command %r' % name)

    # Close the stream politely and wait (briefly) for the server's </stream>.
    state['quitting'] = True
    return await close_stream(xmpp)


if __name__ == '__main__':
    run_main(run)
