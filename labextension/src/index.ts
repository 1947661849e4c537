/**
 * awf-kernel's JupyterLab 4 / Notebook 7 extension: the sandbox made visible.
 *
 * - a notebook toolbar item with the sandbox's state, opening
 * - a side panel with the policy, the latest denials, list editing and Confirm
 *   for untrusted notebooks, and
 * - a renderer for the denial notice with an Allow action per host.
 *
 * Only tokens both JupyterLab and Notebook 7 provide are required
 * (INotebookTracker, IRenderMimeRegistry); the rest comes from `app`.
 */

import { JupyterFrontEnd, JupyterFrontEndPlugin } from '@jupyterlab/application';
import { INotebookTracker, NotebookPanel } from '@jupyterlab/notebook';
import { IRenderMimeRegistry } from '@jupyterlab/rendermime';

import { denialsRendererFactory } from './notice';
import { SandboxPanel } from './panel';
import { SandboxToolbarItem } from './toolbar';

const plugin: JupyterFrontEndPlugin<void> = {
  id: 'awf-kernel:plugin',
  description: 'The network sandbox of awf-kernel: state, policy panel, denial notices with Allow.',
  autoStart: true,
  requires: [INotebookTracker, IRenderMimeRegistry],
  activate: (app: JupyterFrontEnd, tracker: INotebookTracker, rendermime: IRenderMimeRegistry) => {
    rendermime.addFactory(denialsRendererFactory(tracker), 10);

    const sidePanel = new SandboxPanel(tracker);
    const open = (panel: NotebookPanel) => {
      if (!sidePanel.isAttached) {
        app.shell.add(sidePanel, 'right', { rank: 900 });
      }
      sidePanel.follow(panel);
      app.shell.activateById(sidePanel.id);
      void sidePanel.refresh();
    };

    const addItem = (panel: NotebookPanel) => {
      const item = new SandboxToolbarItem(panel, open);
      if (!panel.toolbar.insertAfter('spacer', 'awfSandbox', item)) {
        panel.toolbar.addItem('awfSandbox', item);
      }
    };
    tracker.widgetAdded.connect((_, panel) => addItem(panel));
    tracker.forEach(addItem);
  }
};

export default plugin;
