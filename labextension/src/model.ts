/**
 * The host's Tenstorrent devices, leases and queue, as the jupyter-tt server extension reports them
 * (`/jupyter-tt/api/devices`, `/leases`, `/queue`, `/usage`). Kept fresh by the server's event stream, with
 * polling as the fallback (and for telemetry, which has no events).
 */
import { URLExt } from '@jupyterlab/coreutils';
import { Event, ServerConnection } from '@jupyterlab/services';
import { Poll } from '@lumino/polling';
import { ISignal, Signal } from '@lumino/signaling';

import { RequestError, requestAPI } from './request';

export const LEASE_SCHEMA = 'https://events.jupyter-tt.org/jupyter_tt/lease/v1';
/** Milliseconds between reads when no lease event comes (the `pollInterval` setting's default). */
export const DEFAULT_INTERVAL = 5000;
/** The longest wait between reads while they fail (the poll backs off). */
const MAX_INTERVAL = 60 * 1000;

export interface ITelemetry {
  temperature_c: number | null;
  temperature_max_c: number | null;
  power_w: number | null;
  aiclk_mhz: number | null;
}

/** Fields shared by devices, leases and queue requests that name a kernel's notebook. */
export interface IHeld {
  user: string | null;
  kernel_id: string | null;
  /** The notebook as a path of this server (null when it lies outside its root or is unknown). */
  notebook_path: string | null;
  /** The notebook as a file of the host (any server's), or null. */
  notebook: string | null;
}

export interface IDevice extends IHeld {
  id: number;
  /** The device node, /dev/tenstorrent/N. */
  path: string;
  bdf: string;
  card_type: string;
  chips: number;
  state: 'free' | 'leased' | 'resetting' | 'unhealthy';
  lease_id: string | null;
  problem: string | null;
  /** Set while the card is out of the pool for a reset after its holder died. */
  reset: { reason: string; waiting_for: string | null; failed: string | null; done: boolean } | null;
  simulated: boolean;
  /** Running containers given this card (Docker, Podman): it is theirs, open or not yet. */
  containers?: string[];
  telemetry: ITelemetry;
  /** [epoch seconds, temperature °C, power W], oldest first. */
  telemetry_history: [number, number | null, number | null][];
}

export interface ILease extends IHeld {
  id: string;
  devices: number[];
  card_types: string[];
  chips: number;
  server: string;
  since: number;
}

export interface IRequest extends IHeld {
  id: string;
  devices: number;
  card_type: string;
  position: number;
  since: number;
  /** Free cards set aside for it while it waits for the rest: nobody behind it takes them. */
  reserved?: number;
}

export interface IInventory {
  kind: string;
  simulated: boolean;
  label?: string;
  spec?: string;
}

/** Device-hours of the user this server accounts leases to, since local midnight and since Monday. */
export interface IUsage {
  user: string;
  today: number;
  week: number;
}

export interface IState {
  inventory: IInventory;
  devices: IDevice[];
  leases: ILease[];
  requests: IRequest[];
  usage: IUsage;
}

/** Epoch seconds of this day's local midnight, and of this week's (Monday's). */
export function periodStarts(now = new Date()): { today: number; week: number } {
  const midnight = new Date(now.getFullYear(), now.getMonth(), now.getDate());
  const monday = new Date(midnight);
  monday.setDate(midnight.getDate() - ((midnight.getDay() + 6) % 7));
  return { today: midnight.getTime() / 1000, week: monday.getTime() / 1000 };
}

interface IUsageAnswer {
  user: string;
  usage: { user: string; device_hours: number }[];
}

/** What the server reported, refreshed on every lease event and every `interval` ms. */
export class DeviceModel {
  constructor(events: Event.IManager | null, interval = DEFAULT_INTERVAL) {
    this._settings = ServerConnection.makeSettings();
    this._poll = new Poll({
      factory: () => this._fetch(),
      frequency: { interval, backoff: true, max: MAX_INTERVAL },
      standby: 'when-hidden',
      name: 'jupyter-tt:devices'
    });
    if (events) {
      events.stream.connect(this._onEvent, this);
    }
  }

  /** The last state read, or null before the first answer. */
  get state(): IState | null {
    return this._state;
  }

  /** Why the last refresh failed (shown in the panel), or null. */
  get error(): string | null {
    return this._error;
  }

  get changed(): ISignal<this, void> {
    return this._changed;
  }

  /** Lease events as they arrive (`action`, `notebook_path`, `kernel_id`, `position`, ...). */
  get leaseEvent(): ISignal<this, Event.Emission> {
    return this._leaseEvent;
  }

  refresh(): Promise<void> {
    return this._poll.refresh();
  }

  /** Milliseconds between reads when no lease event arrives (the `pollInterval` setting). */
  set interval(ms: number) {
    this._poll.frequency = { ...this._poll.frequency, interval: Math.max(ms, 1000) };
  }

  /** The kernel of the session at ``path`` (the server's sessions; the frontend's view may lag). */
  async kernelOf(path: string): Promise<string | null> {
    const sessions = await requestAPI<{ path: string; kernel: { id: string } | null }[]>('api/sessions', {}, this._settings).catch(
      () => []
    );
    return sessions.find(s => s.path === path)?.kernel?.id ?? null;
  }

  /** Restart a kernel on other devices (the server answers at once; the restart follows). */
  async choose(kernelId: string, devices: number, cardType: string): Promise<void> {
    const init = { method: 'POST', body: JSON.stringify({ devices, card_type: cardType }) };
    await requestAPI(URLExt.join('jupyter-tt/api/kernels', kernelId, 'devices'), init, this._settings);
    void this.refresh();
  }

  dispose(): void {
    this._poll.dispose();
    Signal.clearData(this);
  }

  private _onEvent(_: unknown, emission: Event.Emission): void {
    if (emission.schema_id !== LEASE_SCHEMA) {
      return;
    }
    this._leaseEvent.emit(emission);
    void this.refresh();
  }

  private async _get<T>(what: string): Promise<T> {
    try {
      return await requestAPI<T>(URLExt.join('jupyter-tt/api', what), {}, this._settings);
    } catch (reason) {
      const status = reason instanceof RequestError ? `${reason.status} ` : '';
      throw new Error(`${what}: ${status}${(reason as Error).message}`);
    }
  }

  private async _fetch(): Promise<void> {
    try {
      const starts = periodStarts();
      const [devices, leases, queue, today, week] = await Promise.all([
        this._get<{ inventory: IInventory; devices: IDevice[] }>('devices'),
        this._get<{ leases: ILease[] }>('leases'),
        this._get<{ requests: IRequest[] }>('queue'),
        this._get<IUsageAnswer>(`usage?since=${starts.today}`),
        this._get<IUsageAnswer>(`usage?since=${starts.week}`)
      ]);
      const hours = (answer: IUsageAnswer) => answer.usage.find(u => u.user === answer.user)?.device_hours ?? 0;
      this._state = {
        inventory: devices.inventory,
        devices: devices.devices,
        leases: leases.leases,
        requests: queue.requests,
        usage: { user: today.user, today: hours(today), week: hours(week) }
      };
      this._error = null;
    } catch (reason) {
      this._error =
        `The jupyter-tt server extension did not answer (${reason}). Is it installed and enabled? ` +
        "Run `jupyter server extension list` in the server's environment.";
      this._changed.emit();
      throw reason; // the poll backs off
    }
    this._changed.emit();
  }

  private _settings: ServerConnection.ISettings;
  private _poll: Poll;
  private _state: IState | null = null;
  private _error: string | null = null;
  private _changed = new Signal<this, void>(this);
  private _leaseEvent = new Signal<this, Event.Emission>(this);
}

/** "1 n300" / "2 n150s" / "4 devices". */
export function describeRequest(count: number, cardType: string): string {
  const what = cardType === 'any' ? 'device' : cardType;
  return `${count} ${what}${count === 1 ? '' : 's'}`;
}

/** "12 s" / "4 min" / "2 h 5 min" since an epoch time in seconds. */
export function since(epochSeconds: number, now = Date.now() / 1000): string {
  const s = Math.max(0, Math.round(now - epochSeconds));
  if (s < 60) {
    return `${s} s`;
  }
  const m = Math.floor(s / 60);
  return m < 60 ? `${m} min` : `${Math.floor(m / 60)} h ${m % 60} min`;
}
