/**
 * The left-sidebar "Tenstorrent" panel: every card of the host with its state, holder and telemetry,
 * then the queue. Plain DOM, rebuilt on every model change (a host has at most a few dozen cards).
 */
import { Widget } from '@lumino/widgets';

import { DeviceModel, describeRequest, IDevice, IHeld, IRequest, IState, since } from './model';

type Child = Node | string | null | false | undefined;

/** A tiny element builder: h('div', {class: 'x'}, 'text', h('span', {}, ...)). */
function h(tag: string, attrs: Record<string, string> = {}, ...children: Child[]): HTMLElement {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    node.setAttribute(key, value);
  }
  for (const child of children) {
    if (child) {
      node.append(child);
    }
  }
  return node;
}

/** A sparkline of a series (nulls skipped) as an inline SVG, with the last value's range in its title. */
export function sparkline(values: (number | null)[], label: string, width = 64, height = 16): SVGElement {
  const ns = 'http://www.w3.org/2000/svg';
  const svg = document.createElementNS(ns, 'svg');
  svg.setAttribute('class', 'jp-tt-spark');
  svg.setAttribute('width', `${width}`);
  svg.setAttribute('height', `${height}`);
  svg.setAttribute('viewBox', `0 0 ${width} ${height}`);
  const points = values.map((v, i) => [i, v] as const).filter((p): p is readonly [number, number] => p[1] !== null);
  const title = document.createElementNS(ns, 'title');
  if (points.length) {
    const ys = points.map(p => p[1]);
    const lo = Math.min(...ys);
    const hi = Math.max(...ys);
    title.textContent = `${label}: ${lo.toFixed(1)} to ${hi.toFixed(1)} over the last ${values.length} samples`;
    const n = Math.max(values.length - 1, 1);
    const line = document.createElementNS(ns, 'polyline');
    line.setAttribute(
      'points',
      points
        .map(([i, y]) => {
          const x = (i / n) * (width - 2) + 1;
          const yy = hi === lo ? height / 2 : height - 1 - ((y - lo) / (hi - lo)) * (height - 2);
          return `${x.toFixed(1)},${yy.toFixed(1)}`;
        })
        .join(' ')
    );
    svg.append(line);
  } else {
    title.textContent = `${label}: no samples yet`;
  }
  svg.append(title);
  return svg;
}

/** Device-hours as the panel shows them: "0", "< 0.01", "1.25". */
export function deviceHours(hours: number): string {
  return hours === 0 ? '0' : hours < 0.01 ? '< 0.01' : hours.toFixed(2);
}

function plural(n: number, what: string): string {
  return `${n} ${what}${n === 1 ? '' : 's'}`;
}

function fmt(value: number | null, unit: string, digits = 1): string {
  return value === null || value === undefined ? '–' : `${value.toFixed(digits)} ${unit}`;
}

export class DevicePanel extends Widget {
  constructor(model: DeviceModel, openNotebook: (path: string) => void) {
    super();
    this.model = model;
    this._open = openNotebook;
    this.addClass('jp-tt-panel');
    model.changed.connect(this.render, this);
    this.render();
  }

  readonly model: DeviceModel;

  render(): void {
    const state = this.model.state;
    const body: Child[] = [this._header(state)];
    if (this.model.error) {
      body.push(h('div', { class: 'jp-tt-error' }, this.model.error));
    }
    if (state) {
      body.push(
        h('h3', {}, 'Devices'),
        ...state.devices.map(d => this._device(d)),
        h('h3', {}, `Queue (${state.requests.length})`),
        state.requests.length
          ? h('ol', { class: 'jp-tt-queue' }, ...state.requests.map(r => this._request(r)))
          : h('div', { class: 'jp-tt-empty' }, 'No kernel is waiting for devices.')
      );
    } else if (!this.model.error) {
      body.push(h('div', { class: 'jp-tt-empty' }, 'Asking the server…'));
    }
    this.node.replaceChildren(...body.filter((c): c is Node | string => !!c));
  }

  private _header(state: IState | null): HTMLElement {
    const header = h('div', { class: 'jp-tt-header' }, h('span', { class: 'jp-tt-title' }, 'Tenstorrent'));
    if (state?.inventory.simulated) {
      header.append(
        h(
          'span',
          { class: 'jp-tt-badge jp-tt-simulated', title: state.inventory.label ?? 'simulated inventory: no real card' },
          'SIMULATED'
        )
      );
    }
    if (state) {
      const free = state.devices.filter(d => d.state === 'free').length;
      const chips = state.devices.reduce((n, d) => n + d.chips, 0);
      header.append(
        h(
          'div',
          { class: 'jp-tt-summary' },
          `${free} of ${plural(state.devices.length, 'card')} free · ${plural(chips, 'chip')} · ` + plural(state.leases.length, 'lease')
        ),
        h(
          'div',
          { class: 'jp-tt-usage', title: 'device-hours of your leases (a lease of 2 cards for 1 hour is 2)' },
          `You (${state.usage.user}): ${deviceHours(state.usage.today)} device-hours today · ` +
            `${deviceHours(state.usage.week)} this week`
        )
      );
    }
    return header;
  }

  private _holder(item: IHeld): HTMLElement {
    const parts: Child[] = [h('span', { class: 'jp-tt-user', title: 'user' }, item.user ?? '?')];
    if (item.notebook_path) {
      const link = h('a', { class: 'jp-tt-notebook', href: '#', title: `open ${item.notebook_path}` }, item.notebook_path);
      link.addEventListener('click', event => {
        event.preventDefault();
        this._open(item.notebook_path!);
      });
      parts.push(' · ', link);
    } else if (item.notebook) {
      parts.push(' · ', h('span', { class: 'jp-tt-notebook', title: item.notebook }, item.notebook.split('/').pop()!));
    }
    if (item.kernel_id) {
      parts.push(' · ', h('span', { class: 'jp-tt-kernel', title: `kernel ${item.kernel_id}` }, `kernel ${item.kernel_id.slice(0, 8)}`));
    }
    return h('div', { class: 'jp-tt-holder' }, ...parts);
  }

  private _device(device: IDevice): HTMLElement {
    const history = device.telemetry_history ?? [];
    const t = device.telemetry;
    const chips = h('span', { class: 'jp-tt-chips', title: `${device.chips} chip${device.chips === 1 ? '' : 's'}` });
    for (let i = 0; i < device.chips; i++) {
      chips.append(h('span', { class: 'jp-tt-chip' }));
    }
    return h(
      'div',
      { class: `jp-tt-device jp-tt-${device.state}`, 'data-device-id': `${device.id}`, 'data-state': device.state },
      h(
        'div',
        { class: 'jp-tt-device-head' },
        h('span', { class: 'jp-tt-card' }, `${device.card_type} #${device.id}`),
        chips,
        h('span', { class: `jp-tt-state jp-tt-state-${device.state}` }, device.state)
      ),
      h('div', { class: 'jp-tt-meta' }, `${device.path} · ${device.bdf}`),
      (device.state === 'leased' || (device.state === 'resetting' && device.lease_id)) && this._holder(device),
      device.problem && h('div', { class: 'jp-tt-problem' }, device.problem),
      (device.containers ?? []).length > 0 &&
        h('div', { class: 'jp-tt-problem jp-tt-container' }, `given to container ${(device.containers ?? []).join(', ')}`),
      device.state === 'resetting' &&
        h(
          'div',
          { class: 'jp-tt-problem' },
          `reset after ${device.reset?.reason ?? 'a crash'}` + (device.reset?.waiting_for ? `: waits, ${device.reset.waiting_for}` : '')
        ),
      h(
        'div',
        { class: 'jp-tt-telemetry' },
        h('span', { title: 'temperature' }, fmt(t.temperature_c, '°C')),
        sparkline(
          history.map(s => s[1]),
          'temperature °C'
        ),
        h('span', { title: 'power' }, fmt(t.power_w, 'W')),
        sparkline(
          history.map(s => s[2]),
          'power W'
        ),
        h('span', { title: 'AI clock' }, fmt(t.aiclk_mhz, 'MHz', 0))
      )
    );
  }

  private _request(request: IRequest): HTMLElement {
    return h(
      'li',
      { class: 'jp-tt-request', 'data-request-id': request.id },
      h(
        'div',
        {},
        `#${request.position}: ${describeRequest(request.devices, request.card_type)}, waiting ${since(request.since)}` +
          (request.reserved ? ` · ${request.reserved} free kept for it` : '')
      ),
      this._holder(request)
    );
  }

  private _open: (path: string) => void;
}
