/**
 * The status-bar item ("TT 3/4 free · this notebook: n300 #1") and the notifications that tell a
 * notebook's user that its kernel waits for devices, then that it got them.
 */
import { Notification } from '@jupyterlab/apputils';
import { INotebookTracker, NotebookPanel } from '@jupyterlab/notebook';
import { Event } from '@jupyterlab/services';
import { Widget } from '@lumino/widgets';

import { DeviceModel, describeRequest, ILease, IState } from './model';

/** The open notebook's kernel and path, as the frontend knows them. */
interface INotebookRef {
  path: string;
  kernelId: string | null;
}

function refOf(panel: NotebookPanel): INotebookRef {
  return { path: panel.sessionContext.path, kernelId: panel.sessionContext.session?.kernel?.id ?? null };
}

function openNotebooks(tracker: INotebookTracker | null): INotebookRef[] {
  const refs: INotebookRef[] = [];
  tracker?.forEach(panel => refs.push(refOf(panel)));
  return refs;
}

function leaseOf(state: IState, ref: INotebookRef): ILease | undefined {
  return state.leases.find(l => (ref.kernelId && l.kernel_id === ref.kernelId) || l.notebook_path === ref.path);
}

function describeLease(state: IState, lease: ILease): string {
  const names = lease.devices.map(id => {
    const device = state.devices.find(d => d.id === id);
    const resetting = device?.state === 'resetting' ? ' (resetting)' : '';
    return device ? `${device.card_type} #${id}${resetting}` : `#${id}`;
  });
  return names.join(', ');
}

export class StatusItem extends Widget {
  constructor(model: DeviceModel, tracker: INotebookTracker | null, onClick: () => void) {
    super();
    this._model = model;
    this._tracker = tracker;
    this.addClass('jp-tt-status');
    this.node.title = 'Tenstorrent devices: click to open the panel';
    this.node.addEventListener('click', onClick);
    model.changed.connect(this.update, this);
    tracker?.currentChanged.connect(this.update, this);
    this.update();
  }

  protected onUpdateRequest(): void {
    const state = this._model.state;
    if (!state) {
      this.node.textContent = this._model.error ? 'TT: no server extension' : 'TT …';
      return;
    }
    const free = state.devices.filter(d => d.state === 'free').length;
    let text = `TT ${free}/${state.devices.length} free${state.inventory.simulated ? ' (simulated)' : ''}`;
    const current = this._tracker?.currentWidget;
    if (current) {
      const ref = refOf(current);
      const lease = leaseOf(state, ref);
      const waiting = state.requests.find(r => r.notebook_path === ref.path);
      if (lease) {
        text += ` · this notebook: ${describeLease(state, lease)}`;
      } else if (waiting) {
        text += ` · this notebook waits: #${waiting.position} in the queue`;
      }
    }
    this.node.textContent = text;
  }

  private _model: DeviceModel;
  private _tracker: INotebookTracker | null;
}

/** Notifications for the kernels of the notebooks open here: waiting (with the position), then granted. */
export class QueueNotifier {
  constructor(model: DeviceModel, tracker: INotebookTracker | null) {
    this._model = model;
    this._tracker = tracker;
    model.changed.connect(this._onState, this);
    model.leaseEvent.connect(this._onEvent, this);
  }

  private _onState(): void {
    const state = this._model.state;
    if (!state) {
      return;
    }
    const open = openNotebooks(this._tracker);
    for (const ref of open) {
      const request = state.requests.find(r => r.notebook_path === ref.path);
      if (request) {
        const message =
          `${ref.path}: the kernel waits for ${describeRequest(request.devices, request.card_type)}, ` +
          `position ${request.position} in the queue`;
        const id = this._waiting.get(ref.path);
        if (id) {
          Notification.update({ id, message, type: 'warning', autoClose: false });
        } else {
          this._waiting.set(ref.path, Notification.warning(message, { autoClose: false }));
        }
      }
    }
    // Left the queue: granted (the poll saw it before the event did), or gave up.
    for (const [path, id] of [...this._waiting]) {
      if (state.requests.some(r => r.notebook_path === path)) {
        continue;
      }
      this._waiting.delete(path);
      const lease = leaseOf(state, { path, kernelId: null });
      if (lease) {
        this._granted(path, lease.id, describeLease(state, lease), id);
      } else {
        Notification.update({ id, message: `${path}: the kernel stopped waiting for devices`, type: 'info', autoClose: 5000 });
      }
    }
  }

  private _onEvent(_: DeviceModel, event: Event.Emission): void {
    const path = event.notebook_path as string | null;
    if (!path || !openNotebooks(this._tracker).some(ref => ref.path === path)) {
      return;
    }
    if (event.action === 'idle-warning') {
      // The server is about to give this idle kernel's devices to a waiting request.
      Notification.warning(`${path}: the kernel is ${event.reason}`, { autoClose: false });
      return;
    }
    if (event.action === 'lease-ended' && String(event.reason).startsWith('idle')) {
      Notification.info(`${path}: the kernel was shut down, ${event.reason}`, { autoClose: false });
      return;
    }
    if (event.action !== 'lease-granted') {
      return;
    }
    const id = this._waiting.get(path);
    this._waiting.delete(path);
    const devices = (event.devices as number[]).map(d => `#${d}`).join(', ');
    this._granted(path, event.lease_id as string, `${event.card_type} ${devices}`, id);
  }

  private _granted(path: string, leaseId: string, what: string, id?: string): void {
    if (this._announced.has(leaseId)) {
      // The event and the poll both saw it. A waiting notice made from a state read before the grant
      // (it came after the event) goes: the grant was said already.
      if (id) {
        Notification.dismiss(id);
      }
      return;
    }
    this._announced.add(leaseId);
    const message = `${path}: the kernel got its devices (${what})`;
    if (id) {
      Notification.update({ id, message, type: 'success', autoClose: 5000 });
    } else {
      Notification.success(message, { autoClose: 5000 });
    }
  }

  private _model: DeviceModel;
  private _tracker: INotebookTracker | null;
  private _waiting = new Map<string, string>(); // notebook path -> notification id
  private _announced = new Set<string>(); // lease ids
}
