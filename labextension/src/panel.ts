/**
 * The sandbox panel (right side bar): for the current notebook, the effective
 * policy and what it was made from (admin allow/block, ceiling, the notebook's
 * request with presets expanded), the latest denials, an editor for the
 * notebook's allow/block lists validated by the server's own grammar, and, for
 * a notebook that is not trusted yet, the domains it asks for with Confirm.
 *
 * All text comes from the server (some of it from the audit trail, i.e. chosen
 * by code in the kernel) and is inserted with textContent only (see dom.ts).
 */

import { INotebookTracker, NotebookPanel } from '@jupyterlab/notebook';
import { Widget } from '@lumino/widgets';

import { api, IKernelState, IRequestLists, IState, IValidation } from './api';
import { button, clear, h } from './dom';
import { markTrusted, readAwf, stateChanged, writeAwf } from './notebook';

const VALIDATE_DELAY = 300;

export class SandboxPanel extends Widget {
  constructor(tracker: INotebookTracker) {
    super();
    this.id = 'awf-kernel-sandbox';
    this.addClass('awf-Panel');
    this.title.label = 'Sandbox';
    this.title.caption = 'Network sandbox of the current notebook (awf-kernel)';
    this.title.closable = true;
    tracker.currentChanged.connect(() => this.follow(tracker.currentWidget), this);
    stateChanged.connect((_, path) => {
      if (this.notebook && path === this.notebook.context.path) {
        void this.refresh();
      }
    }, this);
  }

  /** Show the sandbox of this notebook. */
  follow(panel: NotebookPanel | null): void {
    if (panel === this.notebook) {
      return;
    }
    this.notebook = panel;
    this.edited = false;
    this.editorNode = null;
    void this.refresh();
  }

  protected onAfterShow(): void {
    void this.refresh();
  }

  async refresh(): Promise<void> {
    const panel = this.notebook;
    if (!panel) {
      this.draw(h('p', { class: 'awf-Panel-empty' }, 'Open a notebook on a sandboxed kernel (Python (AWF sandboxed)).'));
      return;
    }
    try {
      await panel.context.ready;
      const state = await api.policy(panel.context.path);
      if (panel === this.notebook) {
        this.render(panel, state);
      }
    } catch (error) {
      this.draw(h('p', { class: 'awf-Panel-error' }, `Cannot read the sandbox's state: ${(error as Error).message}`));
    }
  }

  private draw(...nodes: HTMLElement[]): void {
    clear(this.node);
    for (const node of nodes) {
      this.node.appendChild(node);
    }
  }

  private render(panel: NotebookPanel, state: IState): void {
    const kernel = state.kernels[0];
    const head = h(
      'div',
      { class: 'awf-Panel-head' },
      h('h2', {}, 'Network sandbox'),
      h('div', { class: 'awf-Panel-path' }, state.path),
      h('div', { class: 'awf-Panel-state', 'data-kind': state.state.kind }, state.state.label)
    );
    if (!kernel) {
      this.draw(
        head,
        h('p', { class: 'awf-Panel-empty' }, 'No sandboxed kernel runs this notebook. Start "Python (AWF sandboxed)" to see its policy.'),
        this.editorFor(panel)
      );
      return;
    }
    const v = kernel.policy;
    const sections: HTMLElement[] = [head];
    if (v.error) {
      sections.push(h('p', { class: 'awf-Panel-error' }, `The kernel's policy could not be read: ${v.error}`));
      this.draw(...sections);
      return;
    }
    if (v.pending) {
      sections.push(this.pending(panel, v.pending));
    }
    const last = kernel.last_apply;
    if (last && !last.ok) {
      sections.push(
        h(
          'div',
          { class: 'awf-Panel-error awf-Panel-applyError' },
          h('b', {}, 'The last saved policy was not applied (the kernel keeps its previous one): '),
          last.message ?? '',
          last.hint ? h('div', { class: 'awf-Hint' }, last.hint) : null
        )
      );
    }
    sections.push(
      v.hub
        ? section('Effective policy', h('p', {}, 'Decided by the broker at the kernel’s start (hub mode).'))
        : section(
        'Effective policy',
        v.mode === 'record'
          ? h('p', {}, v.allow_all ? 'Record mode: everything not blocked is let through and logged.' : 'Record mode: everything within the ceiling is let through and logged.')
          : null,
        labelled('Allowed', v.effective.allow_domains, 'nothing: every request is denied', 'awf-Effective-allow'),
        labelled('Blocked', v.effective.block_domains, 'nothing', 'awf-Effective-block')
      ),
      v.hub
        ? section('Admin bounds', h('p', {}, 'Hub mode: the broker’s configuration sets them, and the broker applies the notebook’s lists at the kernel’s next restart.'))
        : section(
        'Admin bounds',
        labelled('Always allowed', v.admin.allow_domains, 'nothing'),
        labelled('Always blocked', v.admin.block_domains, 'nothing'),
        v.admin.domain_ceiling === null
          ? h('div', { class: 'awf-Labelled' }, h('b', {}, 'Ceiling: '), 'none (the notebook may ask for any domain)')
          : labelled('Ceiling (the most a notebook may ask for)', v.admin.domain_ceiling, 'empty: notebooks may ask for nothing', 'awf-Ceiling')
      ),
      section(
        'The notebook asks for',
        v.pending
          ? h('p', { class: 'awf-Empty' }, 'held until you confirm it (above)')
          : requestView(v.request, 'nothing: no awf entry in the notebook’s metadata')
      ),
      this.denials(kernel),
      this.editorFor(panel)
    );
    this.draw(...sections);
  }

  private pending(panel: NotebookPanel, req: IRequestLists): HTMLElement {
    const status = h('div', { class: 'awf-Status' });
    const confirm = button('Confirm and trust this notebook', 'awf-Confirm jp-mod-accept', () => {
      confirm.disabled = true;
      status.textContent = 'Trusting and applying…';
      api
        .confirm(panel.context.path)
        .then(state => {
          markTrusted(panel);
          const failed = (state.applied ?? []).find(a => !a.ok);
          status.textContent = failed ? `Trusted, but not applied: ${failed.message ?? ''}` : 'Trusted and applied.';
          stateChanged.emit(panel.context.path);
        })
        .catch(error => {
          confirm.disabled = false;
          status.textContent = `Failed: ${(error as Error).message}`;
        });
    });
    return h(
      'div',
      { class: 'awf-Pending' },
      h('h3', {}, 'Waiting for your trust'),
      h(
        'p',
        {},
        'This notebook is not trusted (it came from elsewhere, or was changed outside this server), so its kernel gets only the admin policy. It asks for:'
      ),
      requestView(req, 'nothing'),
      h('p', {}, 'Confirming trusts the notebook (as "Trust Notebook" does) and applies these domains to the running kernel.'),
      confirm,
      status
    );
  }

  private denials(kernel: IKernelState): HTMLElement {
    if (!kernel.denials.length) {
      return section('Latest denials', h('p', { class: 'awf-Hint' }, 'None so far.'));
    }
    const rows = kernel.denials.map(d =>
      h(
        'tr',
        {},
        h('td', { class: 'awf-Host' }, d.host ?? ''),
        h('td', {}, d.kind === 'dns' ? 'dns' : `${d.kind ?? ''} ${d.port ?? ''}`.trim()),
        h('td', {}, d.reason ?? '')
      )
    );
    return section(
      'Latest denials',
      h('table', { class: 'awf-Denials' }, h('tr', {}, h('th', {}, 'host'), h('th', {}, 'how'), h('th', {}, 'why')), ...rows)
    );
  }

  private editor(panel: NotebookPanel): HTMLElement {
    const awf = readAwf(panel);
    const allow = textarea('awf-Edit-allow', awf.allow_domains);
    const block = textarea('awf-Edit-block', awf.block_domains);
    const errors = h('ul', { class: 'awf-Errors' });
    const status = h('div', { class: 'awf-Status' });
    let latest: IValidation | null = null;
    let timer: ReturnType<typeof setTimeout> | 0 = 0;
    const lists = () => ({ allow_domains: lines(allow.value), block_domains: lines(block.value) });
    const save = button('Save to notebook', 'awf-Save jp-mod-accept', () => {
      void (async () => {
        save.disabled = true;
        status.textContent = 'Validating…';
        const wanted = lists();
        const result = await validate();
        if (!result || !result.valid) {
          status.textContent = 'Not saved: fix the entries above.';
          return;
        }
        status.textContent = 'Saving and applying…';
        try {
          this.edited = false;
          this.editorKey = listsKey(wanted);
          const state = await writeAwf(panel, wanted);
          const last = state.kernels[0]?.last_apply;
          status.textContent = last && !last.ok ? `Saved, but not applied: ${last.message ?? ''}` : 'Saved and applied.';
        } catch (error) {
          status.textContent = `Failed: ${(error as Error).message}`;
        } finally {
          save.disabled = false;
        }
      })();
    });
    const validate = async (): Promise<IValidation | null> => {
      try {
        latest = await api.validate(panel.context.path, lists());
      } catch (error) {
        clear(errors);
        errors.appendChild(h('li', {}, (error as Error).message));
        return null;
      }
      clear(errors);
      for (const e of latest.errors) {
        errors.appendChild(h('li', { 'data-field': e.field }, e.message, e.hint ? h('div', { class: 'awf-Hint' }, e.hint) : null));
      }
      save.disabled = !latest.valid;
      return latest;
    };
    const onInput = () => {
      this.edited = true;
      status.textContent = '';
      if (timer) {
        clearTimeout(timer);
      }
      timer = setTimeout(() => void validate(), VALIDATE_DELAY);
    };
    allow.addEventListener('input', onInput);
    block.addEventListener('input', onInput);
    return section(
      'Edit the notebook’s lists',
      h('p', { class: 'awf-Hint' }, 'One entry per line: host, *.host (subdomains), .host (both), or a preset like @pypi. Saving writes metadata.awf and applies it to the running kernel, without a restart.'),
      h('label', {}, 'allow_domains', allow),
      h('label', {}, 'block_domains', block),
      errors,
      save,
      status
    );
  }

  /** The editor, kept while the user has unsaved edits in it (refreshes must not eat them). */
  private editorFor(panel: NotebookPanel): HTMLElement {
    const now = listsKey(readAwf(panel));
    if (!this.editorNode || (!this.edited && now !== this.editorKey)) {
      this.editorNode = this.editor(panel);
      this.editorKey = now;
    }
    return this.editorNode;
  }

  private notebook: NotebookPanel | null = null;
  private editorNode: HTMLElement | null = null;
  private editorKey = '';
  private edited = false;
}

function listsKey(awf: { allow_domains?: unknown; block_domains?: unknown }): string {
  return JSON.stringify([awf.allow_domains ?? [], awf.block_domains ?? []]);
}

function section(title: string, ...children: (HTMLElement | null)[]): HTMLElement {
  return h('section', { class: 'awf-Section' }, h('h3', {}, title), ...children);
}

function labelled(label: string, items: string[], empty: string, cls = ''): HTMLElement {
  return h(
    'div',
    { class: `awf-Labelled ${cls}` },
    h('b', {}, `${label}: `),
    items.length ? h('ul', { class: 'awf-List' }, ...items.map(i => h('li', {}, i))) : h('span', { class: 'awf-Empty' }, empty)
  );
}

function requestView(req: IRequestLists | null, empty: string): HTMLElement {
  if (!req) {
    return h('p', { class: 'awf-Empty' }, empty);
  }
  return h(
    'div',
    { class: 'awf-Request' },
    written('allow_domains', req.allow_domains, req.allow_expanded),
    written('block_domains', req.block_domains, req.block_expanded),
    req.source === 'AWF_POLICY' ? h('div', { class: 'awf-Hint' }, 'from the launcher (AWF_POLICY), which wins over the notebook file') : null
  );
}

function written(field: string, entries: string[], expanded: string[]): HTMLElement {
  const presets = entries.filter(e => e.startsWith('@'));
  return h(
    'div',
    { class: `awf-Labelled awf-Request-${field}` },
    h('b', {}, `${field}: `),
    entries.length ? h('ul', { class: 'awf-List' }, ...entries.map(e => h('li', {}, e))) : h('span', { class: 'awf-Empty' }, 'none'),
    presets.length ? h('div', { class: 'awf-Expanded' }, `${presets.join(', ')} expand to: `, expanded.join(', ')) : null
  );
}

function textarea(cls: string, value: unknown): HTMLTextAreaElement {
  const t = document.createElement('textarea');
  t.className = `awf-Edit ${cls}`;
  t.rows = 4;
  t.spellcheck = false;
  t.value = Array.isArray(value) ? value.map(v => String(v)).join('\n') : '';
  return t;
}

function lines(value: string): string[] {
  return value
    .split('\n')
    .map(l => l.trim())
    .filter(l => l.length > 0);
}
