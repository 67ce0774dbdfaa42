export { HeraldProvider, useHeraldClient, type HeraldProviderProps } from './context.js';
export { useConnectionState, useNow, type ConnectionView } from './useConnectionState.js';
export { ConnectionStatus, describeConnection, formatAge, type ConnectionStatusLabels, type ConnectionStatusProps } from './ConnectionStatus.js';
export { useSubscription, type SubscriptionView, type UseSubscriptionOptions } from './useSubscription.js';
export { useEntities, type EntitiesView, type UseEntitiesOptions } from './useEntities.js';
export { usePresence, type PresenceView } from './usePresence.js';
export { useRetainedSubscription } from './useRetainedSubscription.js';
