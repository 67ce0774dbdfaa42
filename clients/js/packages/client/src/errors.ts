/**
 * The SDK rejects with plain `{code, message}` objects, the application's callbacks with Errors
 * or anything else: one readable text for all of them.
 */
export function describeError(error: unknown): string {
  if (error instanceof Error) return error.message;
  if (typeof error === 'object' && error !== null) {
    const { code, message } = error as { code?: unknown; message?: unknown };
    if (message !== undefined) return code !== undefined ? `${String(code)} ${String(message)}` : String(message);
    try {
      return JSON.stringify(error);
    } catch {
      return String(error);
    }
  }
  return String(error);
}

/** The numeric code of an SDK error, 0 when it has none. */
export function errorCode(error: unknown): number {
  const code = (error as { code?: unknown } | null)?.code;
  return typeof code === 'number' ? code : 0;
}
