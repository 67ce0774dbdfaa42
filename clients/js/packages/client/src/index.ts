export { HeraldClient, type HeraldClientOptions } from './client.js';
export {
  HeraldSubscription,
  subscribeData,
  optionsIdentity,
  type AckEvent,
  type AckMode,
  type HeraldFilter,
  type HeraldPublication,
  type HeraldSubscriptionEvents,
  type HeraldSubscriptionOptions,
  type ResyncEvent,
  type SubscriptionHost,
} from './subscription.js';
export { applyChange, isChangeEnvelope, type ApplyResult, type ChangeEnvelope, type ChangeType, type JsonPatchOperation } from './changes.js';
export {
  EntityStore,
  emptyEntityState,
  entityReducer,
  snapshotToMap,
  type BulkHandler,
  type EntityAction,
  type EntityReducerOptions,
  type EntitySnapshot,
  type EntityState,
  type EntityStoreOptions,
  type EntityStoreState,
} from './entities.js';
export { PresenceStore, applyMemberEvents, presenceState, type PresenceState } from './presence.js';
export { ConnectionMonitor, type ConnectionMonitorOptions, type ConnectionState, type HeraldConnectionStatus } from './connection.js';
export { ReconnectBackoff, secondsUntil, type BackoffOptions } from './backoff.js';
export { parseGapSignal, normalizeOffsets, offsetsFromRanges, publicationsForGap, historyRequestForGap, type Gap } from './gaps.js';
export { Emitter, type Listener } from './emitter.js';
// The SDK itself, so a page needs one import for everything.
export { Centrifuge } from 'centrifuge';
export type { ClientInfo, PublicationContext, SubscribedContext, FilterNode } from 'centrifuge';
export { describeError, errorCode } from './errors.js';
