/**
 * Change envelopes (Herald's `publish_change`): the publication `data` of an entity change, in the
 * full form (with `new`) or the patch form (RFC 6902 JSON Patch only, asked for with
 * `changes: 'patch'`). See docs/protocol.md, "Change events".
 */
// The default export: fast-json-patch's CommonJS build has no named ESM exports under Node.
import jsonPatch, { type Operation } from 'fast-json-patch';

export type ChangeType = 'create' | 'update' | 'delete' | 'bulk';

export type JsonPatchOperation = Operation;

export interface ChangeEnvelope<T = unknown> {
  entity_type: string;
  /** Absent on a bulk change, and on a delete published with `old` but no `entity_id`. */
  entity_id?: string;
  change_type: ChangeType;
  /** Top-level fields that differ between `old` and `new`. */
  changed_fields: string[];
  /** From `old` to `new`; empty for delete and bulk. */
  patch: JsonPatchOperation[];
  /** The new document; only in the full form. */
  new?: T;
  feature_area?: string;
  /** Only on bulk changes: whatever the publisher put there. */
  summary?: unknown;
}

const CHANGE_TYPES: ReadonlySet<string> = new Set(['create', 'update', 'delete', 'bulk']);

/** Whether publication `data` is a change envelope (checked field by field, not trusted). */
export function isChangeEnvelope(data: unknown): data is ChangeEnvelope {
  if (typeof data !== 'object' || data === null || Array.isArray(data)) return false;
  const envelope = data as Record<string, unknown>;
  return (
    typeof envelope.entity_type === 'string' &&
    typeof envelope.change_type === 'string' &&
    CHANGE_TYPES.has(envelope.change_type) &&
    (envelope.entity_id === undefined || typeof envelope.entity_id === 'string') &&
    Array.isArray(envelope.changed_fields) &&
    Array.isArray(envelope.patch)
  );
}

export type ApplyResult<T> =
  /** `document` undefined: the entity no longer exists (deleted). */
  | { ok: true; document: T | undefined }
  | { ok: false; reason: string };

/**
 * The entity after `envelope`, given what the client held before (`current`, undefined when it
 * did not know the entity). The full form's `new` is authoritative; the patch form needs the
 * document the patch was computed from, so an update of an unknown entity, or a patch that does
 * not apply, is reported (not guessed) and the caller resyncs. Never mutates `current`.
 */
export function applyChange<T>(current: T | undefined, envelope: ChangeEnvelope<T>): ApplyResult<T> {
  switch (envelope.change_type) {
    case 'delete':
      return { ok: true, document: undefined };
    case 'bulk':
      return { ok: false, reason: 'a bulk change does not describe one entity' };
    case 'create':
    case 'update': {
      if (envelope.new !== undefined) return { ok: true, document: envelope.new };
      // A create's patch is computed from `null`, so it applies without a previous document.
      const base = envelope.change_type === 'create' ? null : current;
      if (base === undefined) {
        return {
          ok: false,
          reason: `update of ${describe(envelope)} in patch form, but its previous state is unknown`,
        };
      }
      try {
        const { newDocument } = jsonPatch.applyPatch(base, envelope.patch, true, false);
        return { ok: true, document: newDocument as T };
      } catch (error) {
        return {
          ok: false,
          reason: `patch for ${describe(envelope)} does not apply: ${error instanceof Error ? error.message : String(error)}`,
        };
      }
    }
    default:
      return { ok: false, reason: `unknown change_type ${JSON.stringify((envelope as ChangeEnvelope).change_type)}` };
  }
}

function describe(envelope: ChangeEnvelope<unknown>): string {
  return `${envelope.entity_type} ${JSON.stringify(envelope.entity_id ?? '')}`;
}
