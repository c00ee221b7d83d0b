/**
 * jupyter-tt's JupyterLab extension: the "Tenstorrent" side panel, a status-bar item and
 * notifications for kernels that wait for devices. Data: the jupyter-tt server extension's REST API
 * and its lease events on the server's event stream.
 */
import { ILabShell, JupyterFrontEnd, JupyterFrontEndPlugin } from '@jupyterlab/application';
import { ICommandPalette, ToolbarButton } from '@jupyterlab/apputils';
import { INotebookTracker, NotebookPanel } from '@jupyterlab/notebook';
import { ISettingRegistry } from '@jupyterlab/settingregistry';
import { IStatusBar } from '@jupyterlab/statusbar';
import { LabIcon } from '@jupyterlab/ui-components';

import chipSvg from '../style/chip.svg';
import { chooseDevices } from './choose';
import { DeviceModel } from './model';
import { DevicePanel } from './panel';
import { QueueNotifier, StatusItem } from './status';

export const chipIcon = new LabIcon({ name: 'jupyter-tt:chip', svgstr: chipSvg });

const OPEN = 'jupyter-tt:open-panel';
const CHOOSE = 'jupyter-tt:choose-devices';

const plugin: JupyterFrontEndPlugin<void> = {
  id: 'jupyter-tt:plugin',
  description: 'Tenstorrent devices, leases and queue in JupyterLab.',
  autoStart: true,
  optional: [ILabShell, IStatusBar, INotebookTracker, ICommandPalette, ISettingRegistry],
  activate: (
    app: JupyterFrontEnd,
    shell: ILabShell | null,
    statusBar: IStatusBar | null,
    tracker: INotebookTracker | null,
    palette: ICommandPalette | null,
    settingRegistry: ISettingRegistry | null
  ) => {
    const model = new DeviceModel(app.serviceManager.events ?? null);
    if (settingRegistry) {
      void settingRegistry
        .load(plugin.id)
        .then(settings => {
          const apply = () => (model.interval = settings.get('pollInterval').composite as number);
          apply();
          settings.changed.connect(apply);
        })
        .catch(reason => console.warn('jupyter-tt: its settings could not be read; polling every 5 s', reason));
    }
    const panel = new DevicePanel(model, path => void app.commands.execute('docmanager:open', { path }));
    panel.id = 'jupyter-tt-panel';
    panel.title.icon = chipIcon;
    panel.title.caption = 'Tenstorrent devices';
    app.shell.add(panel, 'left', { rank: 600 });

    app.commands.addCommand(OPEN, {
      label: 'Show Tenstorrent Devices',
      execute: () => app.shell.activateById(panel.id)
    });
    palette?.addItem({ command: OPEN, category: 'Tenstorrent' });

    app.commands.addCommand(CHOOSE, {
      label: 'Choose Tenstorrent Devices…',
      caption: "Choose this notebook's Tenstorrent devices (the kernel restarts on them)",
      icon: chipIcon,
      isEnabled: () => !!tracker?.currentWidget,
      execute: () => (tracker?.currentWidget ? chooseDevices(model, tracker.currentWidget) : undefined)
    });
    palette?.addItem({ command: CHOOSE, category: 'Tenstorrent' });
    tracker?.currentChanged.connect(() => app.commands.notifyCommandChanged(CHOOSE));
    // A button on every notebook's toolbar, for that notebook (whether or not it is the current one).
    app.docRegistry.addWidgetExtension('Notebook', {
      createNew: (panel: NotebookPanel) => {
        const button = new ToolbarButton({
          icon: chipIcon,
          label: 'Devices',
          tooltip: "Choose this notebook's Tenstorrent devices (the kernel restarts on them)",
          onClick: () => void chooseDevices(model, panel)
        });
        panel.toolbar.insertItem(10, 'jupyter-tt-devices', button);
        return button;
      }
    });

    if (statusBar) {
      const item = new StatusItem(model, tracker, () => void app.commands.execute(OPEN));
      statusBar.registerStatusItem('jupyter-tt:status', { item, align: 'left', rank: 4 });
    }
    new QueueNotifier(model, tracker);
    // A kernel's lease changes when it starts, restarts or stops: look again then too.
    tracker?.widgetAdded.connect((_, nb) => nb.sessionContext.statusChanged.connect(() => void model.refresh()));
    shell?.currentChanged.connect(() => void model.refresh());
  }
};

export default plugin;
