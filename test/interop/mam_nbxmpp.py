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

import os
from datetime import datetime, timezone
from typing import Any, Optional

from interop_common import emit, log
from nbxmpp_common import NbxmppScript, run_script

from gi.repository import GLib

IQ_TIMEOUT = 20


class NbxmppMam(NbxmppScript):
    def __init__(self, args: Any) -> None:
        super().__init__(args)
        # The running catch-up: its current queryid, pages so far, results by queryid.
        self.queryid: Optional[str] = None
        self.max = 70
        self.pages = 0
        self.collected: list[dict[str, Any]] = []
        self.stray: list[dict[str, Any]] = []

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

    def run_command(self, name: str, command: dict[str, Any]) -> None:
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


if __name__ == '__main__':
    run_script('nbxmpp MAM interop client', NbxmppMam)
