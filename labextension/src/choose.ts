/**
 * "Choose devices" for a notebook's kernel: a dialog limited to what the host has, then the kernel
 * restarts on a lease of the choice (waiting in the queue if it must; the notifications say so).
 */
import { Dialog, Notification, showDialog } from '@jupyterlab/apputils';
import { NotebookPanel } from '@jupyterlab/notebook';
import { Widget } from '@lumino/widgets';

import { DeviceModel, IState } from './model';

interface IChoice {
  devices: number;
  cardType: string;
}

/** The dialog's body: a count and a card type, bounded by the host's devices of that type. */
class ChoiceBody extends Widget implements Dialog.IBodyWidget<IChoice> {
  constructor(state: IState, current: IChoice) {
    super();
    this.addClass('jp-tt-choose');
    const types = [...new Set(state.devices.map(d => d.card_type))].sort();
    const count = (type: string) => state.devices.filter(d => d.card_type === type).length;
    // A lease is of one card type (the scheduler's rule): 'any' is bounded by the commonest type.
    this._max = (type: string) => (type === 'any' ? Math.max(0, ...types.map(count)) : count(type));
    this._count = document.createElement('input');
    this._count.type = 'number';
    this._count.min = '0';
    this._count.className = 'jp-tt-choose-count';
    this._count.setAttribute('aria-label', 'devices');
    this._type = document.createElement('select');
    this._type.className = 'jp-tt-choose-type';
    this._type.setAttribute('aria-label', 'card type');
    for (const type of ['any', ...types]) {
      const option = document.createElement('option');
      option.value = type;
      option.textContent = type === 'any' ? 'any card type' : `${type} (${this._max(type)} on this host)`;
      this._type.append(option);
    }
    this._type.value = types.includes(current.cardType) || current.cardType === 'any' ? current.cardType : 'any';
    this._count.value = `${current.devices}`;
    this._type.addEventListener('change', () => this._bound());
    this._bound();
    const row = document.createElement('label');
    row.append(this._count, ' × ', this._type);
    const note = document.createElement('div');
    note.className = 'jp-tt-choose-note';
    note.textContent = 'The kernel restarts on them: its variables are lost.';
    this.node.append(row, note);
  }

  getValue(): IChoice {
    return { devices: Math.max(0, Math.round(Number(this._count.value) || 0)), cardType: this._type.value };
  }

  private _bound(): void {
    const max = this._max(this._type.value);
    this._count.max = `${max}`;
    if (Number(this._count.value) > max) {
      this._count.value = `${max}`;
    }
  }

  private _count: HTMLInputElement;
  private _type: HTMLSelectElement;
  private _max: (type: string) => number;
}

export async function chooseDevices(model: DeviceModel, panel: NotebookPanel): Promise<void> {
  const path = panel.sessionContext.path;
  const kernelId = panel.sessionContext.session?.kernel?.id ?? (await model.kernelOf(path));
  const state = model.state;
  if (!state) {
    Notification.warning(`The jupyter-tt server extension has not answered yet: ${model.error ?? 'try again in a moment'}`);
    return;
  }
  if (!kernelId) {
    Notification.warning(`${path}: start its kernel first (Kernel > Restart Kernel).`);
    return;
  }
  const lease = state.leases.find(l => l.kernel_id === kernelId);
  const current = { devices: lease?.devices.length ?? 1, cardType: lease?.card_types.length === 1 ? lease.card_types[0] : 'any' };
  const result = await showDialog({
    title: `Tenstorrent devices for ${path}`,
    body: new ChoiceBody(state, current),
    buttons: [Dialog.cancelButton(), Dialog.okButton({ label: 'Restart on these devices' })]
  });
  if (!result.button.accept || !result.value) {
    return;
  }
  try {
    await model.choose(kernelId, result.value.devices, result.value.cardType);
  } catch (reason) {
    Notification.error(`${path}: ${(reason as Error).message}`, { autoClose: false });
  }
}
