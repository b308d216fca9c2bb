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

from interop_common import (EXIT_LOGIN_FAILED, SlixmppLogin, close_stream, connect_starttls,
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

    login = SlixmppLogin(xmpp, loop)
    commands: asyncio.Queue[dict[str, Any]] = asyncio.Queue()

    def on_message(msg: Any) -> None:
        emit('message', {
            'from': str(msg['from']),
            'to': str(msg['to']),
            'type': msg['type'],
            'id': msg['id'],
            'body': msg['body'],
        })

    xmpp.add_event_handler('message', on_message)

    connect_starttls(xmpp, args)
    if not await login.wait():
        return EXIT_LOGIN_FAILED

    tls = xmpp.socket.version() if xmpp.socket is not None and hasattr(xmpp.socket, 'version') else None
    emit('ready', {'jid': str(xmpp.boundjid), 'mechanism': login.mechanism, 'tls': tls})

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
    login.quitting = True
    return await close_stream(xmpp)


if __name__ == '__main__':
    run_main(run)
