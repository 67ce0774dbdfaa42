import { createContext, useContext, useEffect, useState, type ReactNode } from 'react';
import { HeraldClient, type HeraldClientOptions } from '@herald/client';

const HeraldContext = createContext<HeraldClient | null>(null);

export type HeraldProviderProps =
  | {
      /** A client you made (and close) yourself. */
      client: HeraldClient;
      options?: never;
      /** Call `connect()` when mounted (default true). */
      autoConnect?: boolean;
      children?: ReactNode;
    }
  | {
      client?: never;
      /** The provider makes the client, and closes it when unmounted. */
      options: HeraldClientOptions;
      autoConnect?: boolean;
      children?: ReactNode;
    };

/** Makes a Herald client available to the hooks below it. */
export function HeraldProvider(props: HeraldProviderProps) {
  const { autoConnect = true, children } = props;
  // The options are read once: a new connection per render would be a bug, not a feature.
  const [owned] = useState(() => (props.client ? null : new HeraldClient(props.options as HeraldClientOptions)));
  const client = props.client ?? owned;
  if (!client) throw new Error('HeraldProvider needs `client` or `options`');

  useEffect(() => {
    if (autoConnect) client.connect();
  }, [client, autoConnect]);

  useEffect(() => {
    if (!owned) return undefined;
    return () => owned.close();
  }, [owned]);

  return <HeraldContext.Provider value={client}>{children}</HeraldContext.Provider>;
}

/** The client of the nearest HeraldProvider. */
export function useHeraldClient(): HeraldClient {
  const client = useContext(HeraldContext);
  if (!client) throw new Error('Herald hooks must be used inside <HeraldProvider>');
  return client;
}
