// Namespaces and status codes of XEP-0045 and the XEPs MUC clients expect with it.
export const NS_MUC = 'http://jabber.org/protocol/muc';
export const NS_USER = 'http://jabber.org/protocol/muc#user';
export const NS_ADMIN = 'http://jabber.org/protocol/muc#admin';
export const NS_OWNER = 'http://jabber.org/protocol/muc#owner';
export const NS_ROOMCONFIG = 'http://jabber.org/protocol/muc#roomconfig';
export const NS_ROOMINFO = 'http://jabber.org/protocol/muc#roominfo';
export const NS_SELF_PING_OPT = 'http://jabber.org/protocol/muc#self-ping-optimization';
export const NS_DATA = 'jabber:x:data';
export const NS_DELAY = 'urn:xmpp:delay';
export const NS_OCCUPANT_ID = 'urn:xmpp:occupant-id:0';
export const NS_DISCO_INFO = 'http://jabber.org/protocol/disco#info';
export const NS_DISCO_ITEMS = 'http://jabber.org/protocol/disco#items';
export const NS_PING = 'urn:xmpp:ping';
export const NS_SID = 'urn:xmpp:sid:0';
export const NS_REGISTER = 'jabber:iq:register';
/** FORM_TYPE of voice requests (XEP-0045 7.13, 8.6). */
export const NS_REQUEST = 'http://jabber.org/protocol/muc#request';
/** FORM_TYPE of room registration (XEP-0045 7.10). */
export const NS_MUC_REGISTER = 'http://jabber.org/protocol/muc#register';
/** The disco#info node that tells a user the nick reserved for them (XEP-0045 7.12). */
export const NODE_ROOMUSER_ITEM = 'x-roomuser-item';

/** XEP-0045 section 15.6.2 status codes used here. */
export const Status = {
  nonAnonymous: '100',
  configChanged: '104',
  self: '110',
  configNonAnonymous: '172',
  configSemiAnonymous: '173',
  created: '201',
  banned: '301',
  nickChanged: '303',
  kicked: '307',
  affiliationChanged: '321',
  membersOnly: '322',
  shutdown: '332',
} as const;
