/**
 * Gap signals: when a client falls behind, Herald sheds `low`, then `normal` publications from its
 * outbound queue and sends, ahead of the next frames, an async `message` push naming what was
 * shed: `{"herald": {"gap": {"channel", "offsets": [...], "unnumbered": N}}}` (`unnumbered`:
 * publications of channels without history, which have no offset). Offsets a filter or an
 * audience withheld are not gaps and are never signalled. By default the subscription fetches the
 * missing publications from history and delivers them; when that is impossible (no history, or
 * unnumbered publications) it asks the application to resync.
 */
import type { PublicationContext } from 'centrifuge';

export interface Gap {
  channel: string;
  /** The skipped offsets, strictly increasing. */
  offsets: number[];
  /** Skipped publications without an offset (their channel keeps no history): not recoverable. */
  unnumbered?: number;
}

const MAX_GAP_OFFSETS = 100_000;

function isOffset(value: unknown): value is number {
  return typeof value === 'number' && Number.isSafeInteger(value) && value > 0;
}

/** Strictly increasing, duplicate-free offsets; throws on anything that is not an offset. */
export function normalizeOffsets(offsets: readonly unknown[]): number[] {
  const bad = offsets.find((offset) => !isOffset(offset));
  if (bad !== undefined) throw new Error(`gap offset ${JSON.stringify(bad)} is not a positive integer`);
  return [...new Set(offsets as number[])].sort((a, b) => a - b);
}

/** Offsets from the inclusive ranges `[from, to]` (bounded, so a bad signal cannot hang the tab). */
export function offsetsFromRanges(ranges: readonly (readonly [number, number])[]): number[] {
  const offsets: number[] = [];
  for (const [from, to] of ranges) {
    if (!isOffset(from) || !isOffset(to) || to < from) {
      throw new Error(`gap range [${from}, ${to}] is not a range of positive offsets`);
    }
    if (offsets.length + (to - from + 1) > MAX_GAP_OFFSETS) {
      throw new Error(`gap of more than ${MAX_GAP_OFFSETS} offsets: resync instead`);
    }
    for (let offset = from; offset <= to; offset++) offsets.push(offset);
  }
  return normalizeOffsets(offsets);
}

/**
 * Reads a gap signal from an async message push (`message` event of the SDK), or returns null
 * when the message is something else or malformed. Shape:
 * `{"herald": {"gap": {"channel", "offsets": [...], "unnumbered"?: N}}}`
 * (`ranges: [[from, to], ...]` is also accepted in place of `offsets`).
 */
export function parseGapSignal(data: unknown): Gap | null {
  const gap = (data as { herald?: { gap?: unknown } } | null)?.herald?.gap;
  if (typeof gap !== 'object' || gap === null) return null;
  const { channel, offsets, ranges, unnumbered } = gap as { channel?: unknown; offsets?: unknown; ranges?: unknown; unnumbered?: unknown };
  if (typeof channel !== 'string' || channel === '') return null;
  if (unnumbered !== undefined && !(typeof unnumbered === 'number' && Number.isSafeInteger(unnumbered) && unnumbered >= 0)) {
    return null;
  }
  const extra = typeof unnumbered === 'number' && unnumbered > 0 ? { unnumbered } : {};
  try {
    if (Array.isArray(offsets)) return { channel, offsets: normalizeOffsets(offsets), ...extra };
    if (Array.isArray(ranges)) return { channel, offsets: offsetsFromRanges(ranges as [number, number][]), ...extra };
    if (offsets === undefined && ranges === undefined && 'unnumbered' in extra) return { channel, offsets: [], ...extra };
  } catch {
    return null;
  }
  return null;
}

/** The part of a history answer that fills `gap`, in offset order. */
export function publicationsForGap(gap: Gap, publications: readonly PublicationContext[]): PublicationContext[] {
  const wanted = new Set(gap.offsets);
  return publications
    .filter((publication) => publication.offset !== undefined && wanted.has(publication.offset))
    .sort((a, b) => (a.offset ?? 0) - (b.offset ?? 0));
}

/** The history request that covers `gap`: everything after the offset before its first one. */
export function historyRequestForGap(gap: Gap, epoch: string): { since: { offset: number; epoch: string }; limit: number } {
  const first = gap.offsets[0];
  const last = gap.offsets[gap.offsets.length - 1];
  if (first === undefined || last === undefined) throw new Error(`empty gap on ${gap.channel}`);
  return { since: { offset: first - 1, epoch }, limit: last - first + 1 };
}
