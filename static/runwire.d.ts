// Type declarations of the runwire client: the ES module `/runwire.mjs` and, as
// `window.runwire` (plus `window.Runwire`), the global script `/runwire.js`. Hand-written
// next to static/runwire.mjs; e2e/types.test.mjs checks that both export the same names and
// type-checks a program that uses them (with laravel-echo's own types).

export declare const VERSION: string;

/** An operation run as runwire streams it. */
export interface RunState {
  type: "operation_run";
  id: number;
  workspace_id: number;
  tenant_id: number | null;
  run_type: string | null;
  /** Free text: `queued` and `running` are active, anything else (null included) is terminal. */
  status: string | null;
  outcome: string | null;
  terminal: boolean;
  summary_counts: Record<string, unknown> | null;
  created_at: string | null;
  started_at: string | null;
  completed_at: string | null;
  updated_at: string | null;
  /** Seconds since `started_at` (or `created_at` while queued), as of `updated_at`; final once terminal. */
  elapsed_seconds: number | null;
  /** Where `summary_counts` has `processed` and `total`. */
  progress: RunProgress | null;
  version: number;
  [field: string]: unknown;
}

/** A run's progress and its estimated time to completion. */
export interface RunProgress {
  processed: number;
  total: number;
  fraction: number | null;
  rate_per_second: number | null;
  eta_seconds: number | null;
}

/** A tenant's latest review pack (`pack: null`: none yet). */
export interface ReviewPackState {
  type: "review_pack";
  tenant_id: number;
  terminal: boolean;
  pack: {
    id: number;
    /** Free text: `queued` and `generating` are active, anything else is terminal. */
    status: string;
    created_at: string | null;
    generated_at: string | null;
    expires_at: string | null;
    updated_at: string | null;
    version: number;
    [field: string]: unknown;
  } | null;
  [field: string]: unknown;
}

/** What a workspace feed's snapshot holds: replace everything you show with it. */
export interface WorkspaceSnapshot {
  type: "workspace_runs";
  workspace_id: number;
  /** Active runs, newest first. */
  runs: RunState[];
  /** Runs finished in the last 24 hours, newest first (at most 50). */
  recently_finished: RunState[];
  /** One card per tenant whose packs the user may view. */
  review_packs: ReviewPackState[];
  [field: string]: unknown;
}

/**
 * Why a subscription (or an Echo channel) is over: `terminal` (finished), `forbidden`
 * (access lost or refused), `gone` (deleted), `not_found` (never there, or not yours to
 * know), `unreadable` (runwire cannot decode the item's row), `bad_request`, or a reason this
 * client does not know yet (treat it as final).
 */
export type EndReason = "terminal" | "forbidden" | "gone" | "not_found" | "unreadable" | "bad_request" | (string & {});

export interface End<S = never> {
  reason: EndReason;
  /** The terminal state, when the item ended by becoming terminal. */
  state?: S;
}

/** Every error the client reports. */
export declare class RunwireError extends Error {
  constructor(message: string, options?: { status?: number; reason?: string; cause?: unknown });
  readonly name: "RunwireError";
  /** The HTTP status behind it; 0 when there was none. */
  status: number;
  /** `unauthorized` (runwire kept refusing the token), `unknown_channel`, … */
  reason: string;
}

/** The same three callbacks for every kind of watch. */
export interface Handlers<S> {
  /** Every state: the current one first, then each change (workspace feeds: each change). */
  onState?(state: S): void;
  /** Once, when the subscription is over. */
  onEnd?(end: End<S>): void;
  /** When the client gave up (runwire kept refusing the token): the subscription is over. */
  onError?(error: RunwireError): void;
}

export interface WorkspaceHandlers extends Handlers<RunState | ReviewPackState> {
  /** First, and whenever runwire sends it again. */
  onSnapshot?(snapshot: WorkspaceSnapshot): void;
}

export interface Subscription {
  /** Stops its callbacks at once. */
  close(): void;
}

/** A token, or a (possibly async) function that gives one; called again when refused. */
export type TokenSource = string | (() => string | null | undefined | Promise<string | null | undefined>);

export interface RunwireOptions {
  /** Where runwire answers, e.g. `https://ops.example.com/runwire`. */
  url?: string;
  /** The older name of `url`. */
  baseUrl?: string;
  /** Sent as `Authorization: Bearer`. Without it, the session cookie authenticates. */
  token?: TokenSource;
  /** Next to a string `token`: asked for a new one when runwire refuses it. */
  refreshToken?: () => string | null | undefined | Promise<string | null | undefined>;
  /** Send cookies cross-origin (cookie sessions from another origin). */
  withCredentials?: boolean;
  onError?(error: RunwireError): void;
  onStateChange?(state: ReadyState): void;
  /** `false`: this tab keeps its own connections instead of sharing the browser's. */
  shareConnection?: boolean;
  /** `false`: keep streaming while the tab is hidden. */
  pauseWhenHidden?: boolean;
}

export type ReadyState = "connecting" | "open" | "reconnecting" | "idle" | "failed" | "closed";

export declare class Runwire {
  constructor(options?: RunwireOptions);
  /** Trades a bearer token for runwire's HttpOnly session cookie. */
  static startSession(url: string, token: string): Promise<{ user_id: number; expires_at: number }>;
  readonly baseUrl: string;
  readonly readyState: ReadyState;
  onError: ((error: RunwireError) => void) | null;
  onStateChange: ((state: ReadyState) => void) | null;
  /** Whether hold() is in effect. */
  readonly held: boolean;
  /**
   * The page's shared client, made on the first call from `options` or from the JSON in
   * `<script type="application/json" id="runwire-config">` (`{url, token, tokenUrl}`).
   */
  static page(options?: RunwireOptions): Runwire;
  /**
   * Keeps server-rendered `[data-runwire-run]` / `[data-runwire-review-pack]` elements live
   * (`data-status`, `data-terminal`, `[data-runwire-field]` children, a `runwire:state` event).
   */
  bind(root: Element | Document): Subscription;
  watchRun(runId: number | string, handlers?: Handlers<RunState>): Subscription;
  watchReviewPack(tenantId: number | string, handlers?: Handlers<ReviewPackState>): Subscription;
  watchMany(
    items: { runs?: Array<number | string>; reviewPackTenants?: Array<number | string> },
    handlers?: Handlers<RunState | ReviewPackState>,
  ): Subscription;
  /**
   * The workspace feed: `onSnapshot` first and whenever runwire sends one, `onState` for each
   * run or card change. Streamed on the page's one connection with its runs and packs (one
   * feed per connection: a second workspace's feed gets a connection of its own).
   */
  watchWorkspace(workspaceId: number | string, handlers?: WorkspaceHandlers): Subscription;
  /** Defers applying states (e.g. while a modal is open); calls nest. */
  hold(): void;
  /** Applies the newest held state of each item, once. */
  release(): void;
  /** Closes every connection and subscription and removes every listener it added. */
  close(): void;
}

export default Runwire;

/** The event-stream format of the HTML standard, fed text as it arrives. */
export declare class EventStreamParser {
  constructor(
    onEvent: (event: { type: string; data: string; lastEventId: string }) => void,
    onRetry?: ((ms: number) => void) | null,
    lastEventId?: string,
  );
  /** The id to send back as `Last-Event-ID`. */
  readonly lastEventId: string;
  feed(text: string): void;
  /** The stream ended: an unfinished event is dropped. */
  end(): void;
}

/** Coalesces and defers a refresh: at most one `fire` per `interval` ms, none while `deferred()`. */
export declare class RefreshGate {
  constructor(fire: () => void, options?: { interval?: number; deferred?: () => boolean; now?: () => number });
  readonly pending: boolean;
  trigger(): void;
  cancel(): void;
}

/** Laravel Echo's connection status. */
export type EchoConnectionStatus = "connected" | "disconnected" | "connecting" | "reconnecting" | "failed";

export interface RunwireConnectorOptions {
  /** Where runwire answers (`baseUrl` and `host` are accepted too). */
  url?: string;
  baseUrl?: string;
  host?: string | null;
  token?: TokenSource;
  /** Echo's own name for a fixed token. */
  bearerToken?: string | null;
  refreshToken?: () => string | null | undefined | Promise<string | null | undefined>;
  withCredentials?: boolean;
  /** A client to share (its channels then share its connection). */
  client?: Runwire;
  /** Whether a quiet refresh group must wait; default: a Filament action is mounted on the Livewire component of that id. */
  busy?(group: string): boolean;
  onError?(error: RunwireError): void;
  [option: string]: unknown;
}

/**
 * Events: `.updated` (the state; the current one first), `.ended` (`{reason}`, once),
 * `.snapshot` and `.review-pack.updated` (workspace channels), and the quiet
 * `.refresh` / `.refresh.{group}` for pages that re-render on change.
 */
export interface RunwireChannel {
  readonly name: string;
  listen(event: ".updated" | "updated", callback: (state: any) => void): this;
  listen(event: ".ended" | "ended", callback: (end: { reason: EndReason }) => void): this;
  listen(event: ".snapshot" | "snapshot", callback: (snapshot: WorkspaceSnapshot) => void): this;
  listen(event: ".review-pack.updated" | "review-pack.updated", callback: (card: ReviewPackState) => void): this;
  listen(event: string, callback: (payload: any) => void): this;
  stopListening(event: string, callback?: Function): this;
  listenToAll(callback: (event: string, payload: unknown) => void): this;
  stopListeningToAll(callback?: Function): this;
  /** Called once the first state arrived. */
  subscribed(callback: () => void): this;
  error(callback: (error: RunwireError) => void): this;
  notification(callback: Function): this;
  stopListeningForNotification(callback: Function): this;
  listenForWhisper(event: string, callback: Function): this;
  stopListeningForWhisper(event: string, callback?: Function): this;
  whisper(event: string, data: unknown): this;
}

/** runwire as a Laravel Echo broadcaster: `new Echo({ broadcaster: RunwireConnector, url, token })`. */
export declare class RunwireConnector {
  constructor(options: RunwireConnectorOptions);
  options: RunwireConnectorOptions;
  /** The client every channel of this connector shares. */
  readonly client: Runwire;
  channels: Record<string, RunwireChannel>;
  connect(): void;
  listen(channel: string, event: string, callback: (payload: any) => void): RunwireChannel;
  channel(name: string): RunwireChannel;
  privateChannel(name: string): RunwireChannel;
  /** runwire has no presence channels: throws a RunwireError. */
  presenceChannel(name: string): never;
  leave(name: string): void;
  leaveChannel(name: string): void;
  socketId(): string | undefined;
  connectionStatus(): EchoConnectionStatus;
  onConnectionChange(callback: (status: EchoConnectionStatus) => void): () => void;
  disconnect(): void;
}

/** What the global script `/runwire.js` puts on `window.runwire`. */
export interface RunwireGlobal {
  VERSION: typeof VERSION;
  Runwire: typeof Runwire;
  RunwireConnector: typeof RunwireConnector;
  RunwireError: typeof RunwireError;
  EventStreamParser: typeof EventStreamParser;
  RefreshGate: typeof RefreshGate;
}

declare global {
  interface Window {
    runwire: RunwireGlobal;
    Runwire: typeof Runwire;
  }
}
