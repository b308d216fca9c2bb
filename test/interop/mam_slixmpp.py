#!/usr/bin/python3
"""A slixmpp (Debian: python3-slixmpp) client that reads its account's message
archive with the library's XEP-0313 plugin, for mam.test.ts. It speaks the
line protocol of interop_common.py (ready/closed, disco, quit).

Events on stdout, besides interop_common's ready/closed/disco:
  RESULT page={"n", "ids", "bodies", "froms", "tos", "stamps", "queryids",
               "complete", "first", "last", "count"}
      one per page of a "pages" command, in the order the library gave them
  RESULT pages={"ok": true, "pages": n}  | {"ok": false, "error": ...}
  RESULT iterated={"ok": true, "ids": [...], "bodies": [...]}
  RESULT message={"from", "body", "mam": bool}   anything else that arrives

Commands on stdin, besides disco and quit:
  {"cmd": "pages", "max": 50, "reverse": false, "with": null}
      xep_0313.retrieve(iterator=True, rsm={"max": ...}): the library pages
      with RSM <after/> (<before/> when reverse) until a page comes back empty
  {"cmd": "iterate", "max": 50, "reverse": true}
      xep_0313.iterate(): one message at a time, across pages
"""

import asyncio
from typing import Any, Optional

from interop_common import (EXIT_LOGIN_FAILED, SlixmppLogin, close_stream, connect_starttls,
                            emit, iq_error_text, log, read_commands, require, run_main,
                            slixmpp_client, start_asyncio)

require('slixmpp', 'python3-slixmpp')

from slixmpp import JID  # noqa: E402
from slixmpp.exceptions import IqError, IqTimeout  # noqa: E402

IQ_TIMEOUT = 20
NS_MAM = 'urn:xmpp:mam:2'


def archived(msg: Any) -> dict[str, Any]:
    """What a client shows of one archived message (a <result/> wrapper)."""
    result = msg['mam_result']
    forwarded = result['forwarded']
    inner = forwarded['stanza']
    stamp = forwarded['delay']['stamp']
    return {
        'id': result['id'],
        'queryid': result['queryid'],
        'body': inner['body'] if inner != '' else None,
        'from': str(inner['from']) if inner != '' else None,
        'to': str(inner['to']) if inner != '' else None,
        'stamp': stamp.isoformat() if stamp is not None else None,
    }


async def run() -> int:
    args, loop = start_asyncio('slixmpp MAM interop client')

    xmpp = slixmpp_client(args)
    for plugin in ('xep_0030', 'xep_0059', 'xep_0297', 'xep_0313'):
        xmpp.register_plugin(plugin)

    login = SlixmppLogin(xmpp, loop)
    commands: asyncio.Queue[dict[str, Any]] = asyncio.Queue()

    def on_message(msg: Any) -> None:
        # MAM results are taken by the plugin's collectors; report the rest
        # (a result that reaches this handler would be a stray one).
        is_mam = msg.xml.find('{%s}result' % NS_MAM) is not None
        emit('message', {'from': str(msg['from']), 'body': msg['body'], 'mam': is_mam})

    xmpp.add_event_handler('message', on_message)

    connect_starttls(xmpp, args)
    if not await login.wait():
        return EXIT_LOGIN_FAILED

    emit('ready', {'jid': str(xmpp.boundjid), 'mechanism': xmpp['feature_mechanisms'].mech.name, 'tls': None})
    await read_commands(loop, commands)

    async def pages(command: dict[str, Any]) -> None:
        with_jid: Optional[JID] = JID(command['with']) if command.get('with') else None
        # The library's own RSM iterator: it sends <max/>, then <after/> the
        # last id of each page, and stops at the first empty page.
        iterator = xmpp['xep_0313'].retrieve(
            with_jid=with_jid, reverse=bool(command.get('reverse')), iterator=True,
            rsm={'max': int(command.get('max', 50))})
        iterator.iq_options = {'timeout': IQ_TIMEOUT}
        n = 0
        try:
            async for page in iterator:
                n += 1
                items = [archived(m) for m in page['mam']['results']]
                fin = page['mam_fin']
                rsm = fin['rsm']
                emit('page', {
                    'n': n,
                    'ids': [i['id'] for i in items],
                    'queryids': sorted({i['queryid'] for i in items}),
                    'bodies': [i['body'] for i in items],
                    'froms': [i['from'] for i in items],
                    'tos': [i['to'] for i in items],
                    'stamps': [i['stamp'] for i in items],
                    'complete': fin.xml.get('complete'),
                    'first': rsm['first'] or None,
                    'last': rsm['last'] or None,
                    'count': rsm['count'] or None,
                    'iq_id': page['id'],
                })
                if n > 1000:
                    raise RuntimeError('more than 1000 pages: the paging does not end')
            emit('pages', {'ok': True, 'pages': n})
        except (IqError, IqTimeout, RuntimeError) as error:
            emit('pages', {'ok': False, 'pages': n, 'error': iq_error_text(error)})

    async def iterate(command: dict[str, Any]) -> None:
        ids: list[str] = []
        bodies: list[Optional[str]] = []
        try:
            async for msg in xmpp['xep_0313'].iterate(
                    reverse=bool(command.get('reverse')), rsm={'max': int(command.get('max', 50))}):
                item = archived(msg)
                ids.append(item['id'])
                bodies.append(item['body'])
                if len(ids) > 100000:
                    raise RuntimeError('the iteration does not end')
            emit('iterated', {'ok': True, 'ids': ids, 'bodies': bodies})
        except (IqError, IqTimeout, RuntimeError) as error:
            emit('iterated', {'ok': False, 'ids': ids, 'bodies': bodies, 'error': iq_error_text(error)})

    while True:
        command = await commands.get()
        name = command['cmd']
        if name == 'quit':
            break
        if name == 'disco':
            jid = command.get('jid', xmpp.boundjid.bare)
            try:
                iq = await xmpp['xep_0030'].get_info(jid=jid, cached=False, timeout=IQ_TIMEOUT)
                emit('disco', {'ok': True, 'jid': jid, 'features': sorted(iq['disco_info']['features'])})
            except (IqError, IqTimeout) as error:
                emit('disco', {'ok': False, 'jid': jid, 'error': iq_error_text(error)})
        elif name == 'pages':
            await pages(command)
        elif name == 'iterate':
            await iterate(command)
        else:
            log('unknown command %r' % name)

    login.quitting = True
    return await close_stream(xmpp)


if __name__ == '__main__':
    run_main(run)
