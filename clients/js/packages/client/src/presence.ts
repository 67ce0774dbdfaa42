/**
 * Live presence of a channel: the members fetched once the subscription is up, then kept current
 * with join and leave pushes (the namespace needs `presence` and `join_leave`). Joins and leaves
 * that arrive while the presence request is in flight are applied on top of its answer.
 */
import type { ClientInfo } from 'centrifuge';
import { Emitter } from './emitter.js';
import { describeError } from './errors.js';
import type { HeraldSubscription } from './subscription.js';

export interface PresenceState {
  /** Members by client id. A new Map after every change. */
  members: ReadonlyMap<string, ClientInfo>;
  numClients: number;
  /** Distinct users among the members. */
  numUsers: number;
  /** False until the first presence answer, and while resubscribing. */
  live: boolean;
  error: string | null;
}

type MemberEvent = { kind: 'join' | 'leave'; info: ClientInfo };

export function presenceState(members: ReadonlyMap<string, ClientInfo>, live: boolean, error: string | null): PresenceState {
  const users = new Set<string>();
  for (const info of members.values()) users.add(info.user);
  return { members, numClients: members.size, numUsers: users.size, live, error };
}

/** Applies join/leave events to `members` (pure). */
export function applyMemberEvents(members: ReadonlyMap<string, ClientInfo>, events: readonly MemberEvent[]): Map<string, ClientInfo> {
  const next = new Map(members);
  for (const { kind, info } of events) {
    if (kind === 'join') next.set(info.client, info);
    else next.delete(info.client);
  }
  return next;
}

export class PresenceStore {
  private state: PresenceState = presenceState(new Map(), false, null);
  private readonly events = new Emitter<{ change: PresenceState }>();
  private fetching: MemberEvent[] | null = null;
  private generation = 0;
  private readonly detach: (() => void)[];

  constructor(readonly subscription: HeraldSubscription) {
    this.detach = [
      subscription.on('subscribed', () => void this.refresh()),
      subscription.on('subscribing', () => this.set(presenceState(this.state.members, false, this.state.error))),
      subscription.on('unsubscribed', () => this.set(presenceState(new Map(), false, null))),
      subscription.on('join', (ctx) => this.onMember({ kind: 'join', info: ctx.info })),
      subscription.on('leave', (ctx) => this.onMember({ kind: 'leave', info: ctx.info })),
    ];
    if (subscription.isSubscribed()) void this.refresh();
  }

  getState = (): PresenceState => this.state;

  subscribe = (listener: () => void): (() => void) => this.events.on('change', listener);

  /** Fetches the members again. */
  async refresh(): Promise<void> {
    const generation = ++this.generation;
    this.fetching = [];
    try {
      const answer = await this.subscription.presence();
      if (generation !== this.generation) return;
      const members = applyMemberEvents(new Map(Object.entries(answer.clients)), this.fetching ?? []);
      this.fetching = null;
      this.set(presenceState(members, true, null));
    } catch (error) {
      if (generation !== this.generation) return;
      this.fetching = null;
      this.set(presenceState(this.state.members, false, `presence of ${this.subscription.channel}: ${describeError(error)}`));
    }
  }

  close(): void {
    this.generation++;
    for (const detach of this.detach) detach();
    this.events.removeAll();
  }

  private onMember(event: MemberEvent): void {
    if (this.fetching) {
      this.fetching.push(event);
      return;
    }
    this.set(presenceState(applyMemberEvents(this.state.members, [event]), this.state.live, this.state.error));
  }

  private set(state: PresenceState): void {
    this.state = state;
    this.events.emit('change', state);
  }
}
