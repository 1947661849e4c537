/**
 * The notebook toolbar item: the sandbox's state at a glance ("Sandboxed: 3
 * domains", "record mode", "waiting for trust"); a click opens the panel.
 * Shown only while the notebook's kernel is an awf-provisioner kernel.
 */

import { NotebookPanel } from '@jupyterlab/notebook';
import { Signal } from '@lumino/signaling';
import { Widget } from '@lumino/widgets';

import { api } from './api';
import { isSandboxedSpec, stateChanged } from './notebook';

const REFRESH_DELAY = 400;

export class SandboxToolbarItem extends Widget {
  constructor(
    private readonly panel: NotebookPanel,
    private readonly open: (panel: NotebookPanel) => void
  ) {
    super({ node: document.createElement('div') });
    this.addClass('awf-ToolbarItem');
    this.button = document.createElement('button');
    this.button.type = 'button';
    this.button.className = 'awf-ToolbarItem-button jp-ToolbarButtonComponent';
    this.button.title = 'The network sandbox of this kernel: click for its policy, denials and edits';
    this.button.addEventListener('click', () => this.open(this.panel));
    this.node.appendChild(this.button);
    this.hide();

    const ctx = panel.sessionContext;
    ctx.kernelChanged.connect(this.schedule, this);
    ctx.statusChanged.connect((_, status) => {
      if (status === 'idle' || status === 'restarting' || status === 'dead') {
        this.schedule();
      }
    }, this);
    panel.context.saveState.connect((_, state) => {
      if (state === 'completed') {
        this.schedule();
      }
    }, this);
    stateChanged.connect((_, path) => {
      if (path === this.panel.context.path) {
        this.schedule();
      }
    }, this);
    void ctx.ready.then(() => this.schedule());
  }

  dispose(): void {
    if (this.timer) {
      clearTimeout(this.timer);
    }
    Signal.disconnectReceiver(this);
    super.dispose();
  }

  private schedule(): void {
    if (this.isDisposed) {
      return;
    }
    if (this.timer) {
      clearTimeout(this.timer);
    }
    this.timer = setTimeout(() => void this.refresh(), REFRESH_DELAY);
  }

  private async refresh(): Promise<void> {
    this.timer = 0;
    if (this.isDisposed) {
      return;
    }
    if (!isSandboxedSpec(this.panel.sessionContext)) {
      this.hide();
      return;
    }
    this.show();
    try {
      const state = await api.policy(this.panel.context.path);
      this.render(state.state.label, state.state.kind, state.sandboxed);
    } catch (error) {
      this.render('Sandboxed: state unknown', 'error', true);
      this.button.title = `The sandbox's state could not be read: ${(error as Error).message}`;
    }
  }

  private render(label: string, kind: string, running: boolean): void {
    this.button.textContent = label;
    this.node.dataset.kind = kind;
    this.node.dataset.running = running ? 'true' : 'false';
  }

  private readonly button: HTMLButtonElement;
  private timer: ReturnType<typeof setTimeout> | 0 = 0;
}
