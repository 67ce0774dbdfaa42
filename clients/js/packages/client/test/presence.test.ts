import { describe, expect, it } from 'vitest';
import { PresenceStore, applyMemberEvents } from '../src/presence.js';
import { fakeSubscription, until } from './fakes.js';

const member = (client: string, user: string) => ({ client, user });

describe('presence', () => {
  it('applies joins and leaves to the members', () => {
    const members = applyMemberEvents(new Map([['c1', member('c1', 'u1')]]), [
      { kind: 'join', info: member('c2', 'u1') },
      { kind: 'join', info: member('c3', 'u2') },
      { kind: 'leave', info: member('c1', 'u1') },
    ]);
    expect([...members.keys()]).toEqual(['c2', 'c3']);
  });

  it('fetches members when subscribed and applies joins/leaves that race with the fetch', async () => {
    const { sdk, subscription } = fakeSubscription('room');
    let answer: () => void = () => {};
    sdk.presenceAnswer = () =>
      new Promise((resolve) => {
        answer = () => resolve({ clients: { c1: member('c1', 'u1'), c2: member('c2', 'u2') } });
      });
    const store = new PresenceStore(subscription);
    sdk.subscribed();
    expect(store.getState().live).toBe(false);
    sdk.emit('join', { channel: 'room', info: member('c3', 'u2') });
    sdk.emit('leave', { channel: 'room', info: member('c1', 'u1') });
    answer();
    await until(() => store.getState().live, 'the presence answer');
    expect(store.getState()).toMatchObject({ numClients: 2, numUsers: 1, error: null });
    expect([...store.getState().members.keys()]).toEqual(['c2', 'c3']);
    sdk.emit('join', { channel: 'room', info: member('c4', 'u4') });
    expect(store.getState()).toMatchObject({ numClients: 3, numUsers: 2 });
  });

  it('reports a refused presence request', async () => {
    const { sdk, subscription } = fakeSubscription('room');
    sdk.presenceAnswer = async () => {
      throw { code: 108, message: 'not available' };
    };
    const store = new PresenceStore(subscription);
    sdk.subscribed();
    await until(() => store.getState().error !== null, 'the error');
    expect(store.getState().error).toBe('presence of room: 108 not available');
  });
});
