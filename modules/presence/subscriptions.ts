// The presence subscription state machine of RFC 6121 section 3 and
// appendix A, as pure functions: given the state a user's server keeps about
// one contact and a subscription stanza, what the new state is and what the
// server must do. index.ts applies the outcome (storage, pushes, routing).
import { hasFrom, hasTo, type Subscription } from '../roster.ts';

export type SubscriptionType = 'subscribe' | 'subscribed' | 'unsubscribe' | 'unsubscribed';

export function isSubscriptionType(type: string | undefined): type is SubscriptionType {
  return type === 'subscribe' || type === 'subscribed' || type === 'unsubscribe' || type === 'unsubscribed';
}

/** What a server knows about one contact of one of its users. */
export interface SubState {
  subscription: Subscription;
  /** Pending out (ask='subscribe'). */
  ask: boolean;
  /** Pre-approved (RFC 6121 3.4). */
  approved: boolean;
  /** Pending in: the contact asked for the user's presence, no answer yet. */
  pendingIn: boolean;
}

export interface Outcome {
  state: SubState;
  /** Outbound: route the stanza to the contact. */
  route?: boolean;
  /** Inbound: deliver the stanza to the user's available resources. */
  deliver?: boolean;
  /** Inbound: answer the contact on the user's behalf with presence of type 'subscribed'. */
  autoReply?: boolean;
  /** Send the last presence of each of the user's available resources to the contact. */
  sendPresence?: boolean;
  /** Send unavailable presence from each of the user's available resources to the contact. */
  sendUnavailable?: boolean;
}

function withTo(s: Subscription, on: boolean): Subscription {
  const from = hasFrom(s);
  if (on) return from ? 'both' : 'to';
  return from ? 'from' : 'none';
}

function withFrom(s: Subscription, on: boolean): Subscription {
  const to = hasTo(s);
  if (on) return to ? 'both' : 'from';
  return to ? 'to' : 'none';
}

/** The user sent `type` to the contact (sections 3.1.2, 3.1.5, 3.2.2, 3.3.2, 3.4). */
export function outbound(type: SubscriptionType, s: SubState): Outcome {
  switch (type) {
    case 'subscribe':
      // Routed even when nothing changes: a repeated request is a reminder,
      // and a contact who already approved answers 'subscribed' again.
      if (hasTo(s.subscription)) return { state: s, route: true };
      return { state: { ...s, ask: true }, route: true };
    case 'subscribed':
      if (hasFrom(s.subscription)) return { state: { ...s, pendingIn: false }, route: true };
      if (s.pendingIn) {
        return {
          state: { ...s, subscription: withFrom(s.subscription, true), pendingIn: false, approved: false },
          route: true,
          sendPresence: true,
        };
      }
      // 3.4: nothing to approve yet, so this is a pre-approval; it is not routed.
      return { state: { ...s, approved: true } };
    case 'unsubscribe':
      return { state: { ...s, subscription: withTo(s.subscription, false), ask: false }, route: true };
    case 'unsubscribed':
      return {
        state: { ...s, subscription: withFrom(s.subscription, false), pendingIn: false, approved: false },
        route: true,
        // 3.2.2: the contact no longer sees the user's presence.
        sendUnavailable: hasFrom(s.subscription),
      };
  }
}

/** The contact sent `type` to the user (sections 3.1.3, 3.1.6, 3.2.3, 3.3.3). */
export function inbound(type: SubscriptionType, s: SubState): Outcome {
  switch (type) {
    case 'subscribe':
      // 3.1.3: already subscribed, the server answers for the user.
      if (hasFrom(s.subscription)) return { state: s, autoReply: true };
      if (s.approved) {
        return {
          state: { ...s, subscription: withFrom(s.subscription, true), approved: false, pendingIn: false },
          autoReply: true,
          sendPresence: true,
        };
      }
      // A repeated request is not shown again; the stored one is delivered at login.
      if (s.pendingIn) return { state: s };
      return { state: { ...s, pendingIn: true }, deliver: true };
    case 'subscribed':
      // 3.1.6: only an answer to a request the user made counts.
      if (!s.ask || hasTo(s.subscription)) return { state: { ...s, ask: false } };
      return { state: { ...s, subscription: withTo(s.subscription, true), ask: false }, deliver: true };
    case 'unsubscribe':
      if (!hasFrom(s.subscription) && !s.pendingIn) return { state: s };
      return {
        state: { ...s, subscription: withFrom(s.subscription, false), pendingIn: false },
        deliver: true,
        sendUnavailable: hasFrom(s.subscription),
      };
    case 'unsubscribed':
      if (!hasTo(s.subscription) && !s.ask) return { state: s };
      return { state: { ...s, subscription: withTo(s.subscription, false), ask: false }, deliver: true };
  }
}
