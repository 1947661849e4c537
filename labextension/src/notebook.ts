/**
 * The notebook side of a policy change: the only writes the extension makes
 * are to the notebook model's `metadata.awf`, followed by a save. The server's
 * post-save hook then applies the file's policy to the running kernel (see
 * awf_kernel/jupyterlab/live.py); nothing here talks to the kernel.
 */

import { ISessionContext } from '@jupyterlab/apputils';
import { INotebookTracker, NotebookPanel } from '@jupyterlab/notebook';
import { Signal } from '@lumino/signaling';

import { api, IState } from './api';

export const PROVISIONER = 'awf-provisioner';

/** Emitted with the notebook's path whenever its sandbox state may have changed. */
export const stateChanged = new Signal<object, string>({});

/** The kernel spec names the awf provisioner (what `awf-kernel install` writes). */
export function isSandboxedSpec(sessionContext: ISessionContext): boolean {
  const name = sessionContext.session?.kernel?.name ?? sessionContext.kernelPreference.name;
  if (!name) {
    return false;
  }
  const spec: any = sessionContext.specsManager.specs?.kernelspecs[name];
  const provisioner = spec?.metadata?.kernel_provisioner?.provisioner_name;
  return provisioner === PROVISIONER;
}

export interface IAwfEntry {
  allow_domains?: unknown;
  block_domains?: unknown;
  mode?: unknown;
  [key: string]: unknown;
}

export function readAwf(panel: NotebookPanel): IAwfEntry {
  const value = panel.model?.getMetadata('awf');
  return value && typeof value === 'object' && !Array.isArray(value) ? { ...(value as IAwfEntry) } : {};
}

function asList(value: unknown, field: string): string[] {
  if (value === undefined || value === null) {
    return [];
  }
  if (!Array.isArray(value) || !value.every(v => typeof v === 'string')) {
    throw new Error(`the notebook's awf.${field} is not a list of strings: fix it in the sandbox panel`);
  }
  return [...value];
}

/** Write the lists into metadata.awf (other keys kept), save, and wait for the server to apply. */
export async function writeAwf(
  panel: NotebookPanel,
  lists: { allow_domains: string[]; block_domains: string[] }
): Promise<IState> {
  const model = panel.model;
  if (!model) {
    throw new Error('the notebook is not loaded');
  }
  const entry: IAwfEntry = { ...readAwf(panel), allow_domains: lists.allow_domains };
  if (lists.block_domains.length || entry.block_domains !== undefined) {
    entry.block_domains = lists.block_domains;
  }
  model.setMetadata('awf', entry);
  await panel.context.save();
  const state = await api.policy(panel.context.path, true);
  stateChanged.emit(panel.context.path);
  return state;
}

/** Add one host to metadata.awf.allow_domains and save. */
export async function allowHost(panel: NotebookPanel, host: string): Promise<IState> {
  const entry = readAwf(panel);
  const allow = asList(entry.allow_domains, 'allow_domains');
  const block = asList(entry.block_domains, 'block_domains');
  if (!allow.includes(host)) {
    allow.push(host);
  }
  return writeAwf(panel, { allow_domains: allow, block_domains: block });
}

/** The open notebook whose page holds this node (an output of one of its cells). */
export function notebookOf(tracker: INotebookTracker, node: HTMLElement): NotebookPanel | null {
  return tracker.find(panel => panel.node.contains(node)) ?? null;
}

/** What "Trust Notebook" does in the model, after the server signed the file. */
export function markTrusted(panel: NotebookPanel): void {
  const cells = panel.model?.cells;
  if (!cells) {
    return;
  }
  for (let i = 0; i < cells.length; i++) {
    cells.get(i).trusted = true;
  }
}
