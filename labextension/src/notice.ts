/**
 * The denial notice (`application/vnd.awf.denials+json`, made by
 * awf_kernel/kernel_side/awf_notice.py after each cell) as a table with an
 * Allow action per host.
 *
 * The bundle comes from the kernel, which runs untrusted code: it can put any
 * string in it. So every string is inserted with textContent, and a host gets
 * an Allow button only when (1) the bundle says it is a valid name that an
 * allow_domains entry alone would allow, (2) it passes the client-side name
 * check, and (3) the server, asked with the notebook's path, says the admin
 * bounds and the notebook's block list permit it. Otherwise the row says why.
 * Allow writes the host into the notebook's metadata and saves: the server
 * then applies it (see notebook.ts); the bundle's own `notebook` and
 * `kernel_id` fields are never used to decide what to write where.
 */

import { INotebookTracker } from '@jupyterlab/notebook';
import { IRenderMime } from '@jupyterlab/rendermime-interfaces';
import { Widget } from '@lumino/widgets';

import { api, IHostCheck } from './api';
import { button, clear, h } from './dom';
import { isHostName } from './hosts';
import { allowHost, notebookOf } from './notebook';

export const MIME_TYPE = 'application/vnd.awf.denials+json';
const MAX_ROWS = 200;

interface IDenialEntry {
  host: string;
  ports: number[];
  reason: string;
  fix: string;
  canAsk: boolean;
}

/** The bundle's entries, reduced to strings and flags of the expected types. */
function entries(data: unknown): IDenialEntry[] {
  const list = data && typeof data === 'object' ? (data as { denials?: unknown }).denials : undefined;
  if (!Array.isArray(list)) {
    return [];
  }
  return list.slice(0, MAX_ROWS).map(raw => {
    const d = raw && typeof raw === 'object' ? (raw as Record<string, unknown>) : {};
    const host = typeof d.host === 'string' ? d.host : String(d.host ?? '');
    const ports = Array.isArray(d.ports) ? d.ports.filter((p): p is number => Number.isInteger(p)) : [];
    return {
      host,
      ports,
      reason: typeof d.reason === 'string' ? d.reason : '',
      fix: typeof d.fix === 'string' ? d.fix : '',
      canAsk: d.valid_name === true && d.addable === true && isHostName(host)
    };
  });
}

export class DenialsRenderer extends Widget implements IRenderMime.IRenderer {
  constructor(private readonly tracker: INotebookTracker) {
    super();
    this.addClass('awf-Notice');
  }

  renderModel(model: IRenderMime.IMimeModel): Promise<void> {
    this.rows = entries(model.data[MIME_TYPE]);
    this.checked = false;
    clear(this.node);
    const table = h(
      'table',
      { class: 'awf-Notice-table' },
      h('tr', {}, h('th', {}, 'host'), h('th', {}, 'port'), h('th', {}, 'why'), h('th', {}, 'how to allow'))
    );
    this.actions = this.rows.map(row => {
      const action = h('td', { class: 'awf-Notice-action' }, row.canAsk ? 'checking…' : row.fix);
      table.appendChild(
        h(
          'tr',
          { class: 'awf-Notice-row', 'data-host': row.host },
          h('td', {}, h('code', { class: 'awf-Host' }, row.host)),
          h('td', {}, row.ports.length ? row.ports.join(',') : 'dns'),
          h('td', { class: 'awf-Notice-why' }, row.reason),
          action
        )
      );
      return action;
    });
    this.node.appendChild(h('div', { class: 'awf-Notice-title' }, 'awf-kernel blocked egress in this cell'));
    this.node.appendChild(table);
    if (this.isAttached) {
      void this.check();
    }
    return Promise.resolve();
  }

  protected onAfterAttach(): void {
    void this.check();
  }

  /** Ask the server which hosts can be allowed in this notebook; put a button or the reason in each row. */
  private async check(): Promise<void> {
    if (this.checked) {
      return;
    }
    this.checked = true;
    const asking = this.rows.map((row, i) => ({ row, i })).filter(({ row }) => row.canAsk);
    if (!asking.length) {
      return;
    }
    const panel = notebookOf(this.tracker, this.node);
    if (!panel) {
      for (const { row, i } of asking) {
        this.setAction(i, h('span', { class: 'awf-Why' }, `open this output in its notebook to allow it; or: ${row.fix}`));
      }
      return;
    }
    let results: IHostCheck[];
    try {
      results = (await api.check(panel.context.path, asking.map(a => a.row.host))).results;
    } catch (error) {
      for (const { i } of asking) {
        this.setAction(i, h('span', { class: 'awf-Why' }, `cannot ask the server: ${(error as Error).message}`));
      }
      return;
    }
    asking.forEach(({ row, i }, k) => {
      const result = results[k];
      if (!result || !result.allowable || result.name !== row.host.replace(/\.$/, '').toLowerCase() || !isHostName(result.name)) {
        const why = result?.reason || 'the server did not confirm it can be allowed';
        this.setAction(i, h('span', { class: result?.already ? 'awf-Allowed' : 'awf-Why' }, why));
        return;
      }
      const name = result.name;
      const status = h('span', { class: 'awf-Status' });
      const allow = button(`Allow ${name}`, 'awf-Allow jp-mod-accept', () => {
        allow.disabled = true;
        status.textContent = ' saving…';
        allowHost(panel, name)
          .then(state => {
            const last = state.kernels[0]?.last_apply;
            if (last && !last.ok) {
              status.textContent = ` saved in the notebook, not applied: ${last.message ?? ''}`;
              status.className = 'awf-Why';
            } else {
              allow.remove();
              status.textContent = `Allowed ${name}: saved in the notebook and applied. Run the cell again.`;
              status.className = 'awf-Allowed';
            }
          })
          .catch(error => {
            allow.disabled = false;
            status.textContent = ` failed: ${(error as Error).message}`;
          });
      });
      this.setAction(i, h('span', {}, allow, status));
    });
  }

  private setAction(i: number, content: HTMLElement): void {
    const cell = this.actions[i];
    if (cell) {
      clear(cell);
      cell.appendChild(content);
    }
  }

  private rows: IDenialEntry[] = [];
  private actions: HTMLElement[] = [];
  private checked = false;
}

export function denialsRendererFactory(tracker: INotebookTracker): IRenderMime.IRendererFactory {
  return {
    safe: true,
    mimeTypes: [MIME_TYPE],
    defaultRank: 10,
    createRenderer: () => new DenialsRenderer(tracker)
  };
}
