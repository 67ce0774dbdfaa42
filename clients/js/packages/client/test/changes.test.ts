import { describe, expect, it } from 'vitest';
import jsonPatch from 'fast-json-patch';
import { applyChange, isChangeEnvelope, type ChangeEnvelope } from '../src/changes.js';

const task = (change_type: ChangeEnvelope['change_type'], extra: Partial<ChangeEnvelope> = {}): ChangeEnvelope => ({
  entity_type: 'task',
  entity_id: '42',
  change_type,
  changed_fields: [],
  patch: [],
  ...extra,
});

describe('isChangeEnvelope', () => {
  it('accepts what publish_change sends and refuses other data', () => {
    expect(isChangeEnvelope(task('update', { patch: [{ op: 'replace', path: '/a', value: 1 }] }))).toBe(true);
    expect(isChangeEnvelope({ entity_type: 'task', change_type: 'bulk', changed_fields: [], patch: [], summary: {} })).toBe(true);
    expect(isChangeEnvelope({ text: 'hello' })).toBe(false);
    expect(isChangeEnvelope(null)).toBe(false);
    expect(isChangeEnvelope([task('create')])).toBe(false);
    expect(isChangeEnvelope({ ...task('create'), change_type: 'upsert' })).toBe(false);
    expect(isChangeEnvelope({ ...task('create'), entity_id: 42 })).toBe(false);
    expect(isChangeEnvelope({ ...task('create'), patch: 'x' })).toBe(false);
  });
});

describe('applyChange', () => {
  it('takes the full form document as it is', () => {
    const result = applyChange({ title: 'old' }, task('update', { new: { title: 'new' } }));
    expect(result).toEqual({ ok: true, document: { title: 'new' } });
  });

  it('applies a create in patch form (a whole-document replace from null)', () => {
    const result = applyChange(undefined, task('create', { patch: [{ op: 'replace', path: '', value: { title: 'a', done: false } }] }));
    expect(result).toEqual({ ok: true, document: { title: 'a', done: false } });
  });

  it('applies an update patch without touching the previous document', () => {
    const before = { title: 'a', status: 'open', tags: ['x'] };
    const result = applyChange(
      before,
      task('update', {
        patch: [
          { op: 'replace', path: '/status', value: 'done' },
          { op: 'add', path: '/tags/1', value: 'y' },
          { op: 'add', path: '/owner', value: 'u1' },
        ],
      }),
    );
    expect(result).toEqual({ ok: true, document: { title: 'a', status: 'done', tags: ['x', 'y'], owner: 'u1' } });
    expect(before).toEqual({ title: 'a', status: 'open', tags: ['x'] });
  });

  it('refuses a patch-form update of an unknown entity instead of guessing', () => {
    const result = applyChange(undefined, task('update', { patch: [{ op: 'replace', path: '/status', value: 'done' }] }));
    expect(result.ok).toBe(false);
    if (!result.ok) expect(result.reason).toMatch(/previous state is unknown/);
  });

  it('reports a patch that does not apply', () => {
    const result = applyChange({ title: 'a' }, task('update', { patch: [{ op: 'remove', path: '/missing/deep' }] }));
    expect(result.ok).toBe(false);
    if (!result.ok) expect(result.reason).toMatch(/does not apply/);
  });

  it('deletes, and refuses to treat a bulk change as one entity', () => {
    expect(applyChange({ title: 'a' }, task('delete'))).toEqual({ ok: true, document: undefined });
    expect(applyChange({ title: 'a' }, task('bulk', { summary: { n: 3 } })).ok).toBe(false);
  });

  it('reproduces the new document from any RFC 6902 diff', () => {
    // Random documents, diffed by an independent implementation; applying the diff must give
    // the new document back exactly.
    let seed = 7;
    const random = () => {
      seed = (seed * 1103515245 + 12345) % 2 ** 31;
      return seed / 2 ** 31;
    };
    const value = (depth: number): unknown => {
      const pick = random();
      if (depth > 2 || pick < 0.3) return Math.floor(random() * 5);
      if (pick < 0.45) return ['a', 'b/c', 'd~e'][Math.floor(random() * 3)];
      if (pick < 0.7) return Array.from({ length: Math.floor(random() * 4) }, () => value(depth + 1));
      const object: Record<string, unknown> = {};
      for (const key of ['x', 'y', 'z/w', 'q~']) if (random() < 0.6) object[key] = value(depth + 1);
      return object;
    };
    for (let i = 0; i < 300; i++) {
      const before = { root: value(0) };
      const after = { root: value(0) };
      const patch = jsonPatch.compare(before, after);
      const result = applyChange(before, task('update', { patch }));
      expect(result).toEqual({ ok: true, document: after });
    }
  });
});
