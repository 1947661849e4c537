/**
 * The server extension's REST API (/awf-kernel/api/...), typed. Requests go
 * through ServerConnection, so they carry the server's token and XSRF header.
 */

import { URLExt } from '@jupyterlab/coreutils';
import { ServerConnection } from '@jupyterlab/services';

export interface IRequestLists {
  allow_domains: string[];
  block_domains: string[];
  allow_expanded: string[];
  block_expanded: string[];
  source: string;
  mode?: string;
}

export interface IPolicyView {
  mode: string;
  allow_all: boolean;
  effective: { allow_domains: string[]; block_domains: string[] };
  admin: { allow_domains: string[]; block_domains: string[]; domain_ceiling: string[] | null };
  request: IRequestLists | null;
  pending: IRequestLists | null;
  require_trust: boolean;
  hub: boolean;
  error?: string;
}

export interface IApplyOutcome {
  kernel_id: string;
  ok: boolean;
  message?: string;
  hint?: string | null;
  source: string;
  at: number;
}

export interface IDenial {
  time?: number;
  kind?: string;
  host?: string;
  port?: number;
  reason?: string;
  rule?: string;
  method?: string;
}

export interface IKernelState {
  id: string;
  policy: IPolicyView;
  last_apply: IApplyOutcome | null;
  denials: IDenial[];
}

export interface IState {
  path: string;
  sandboxed: boolean;
  trusted: boolean | null;
  metadata: {
    present: boolean;
    awf: { [key: string]: unknown } | null;
    expanded: { allow_domains: string[]; block_domains: string[] } | null;
  };
  kernels: IKernelState[];
  state: { kind: string; label: string };
  applied?: IApplyOutcome[];
}

export interface IValidationError {
  field: string;
  index: number | null;
  entry: string | null;
  message: string;
  hint: string | null;
}

export interface IValidation {
  valid: boolean;
  errors: IValidationError[];
  expanded: { allow_domains: string[]; block_domains: string[] };
  bounds_checked: boolean;
}

export interface IHostCheck {
  host: string | null;
  name: string | null;
  allowable: boolean;
  already?: boolean;
  pending?: boolean;
  reason: string;
}

export class ApiError extends Error {}

const RETRIES = 3;
const RETRY_DELAY = 250;

async function request<T>(endpoint: string, init: RequestInit = {}): Promise<T> {
  const settings = ServerConnection.makeSettings();
  const url = URLExt.join(settings.baseUrl, 'awf-kernel', 'api', endpoint);
  let response: Response | null = null;
  for (let attempt = 0; response === null; attempt++) {
    try {
      response = await ServerConnection.makeRequest(url, init, settings);
    } catch (error) {
      // A network change on the machine (Docker adding a pod's interfaces)
      // aborts requests in flight, even to loopback: every call here is
      // idempotent, so try again before giving up.
      if (attempt >= RETRIES) {
        throw new ServerConnection.NetworkError(error as TypeError);
      }
      await new Promise(resolve => setTimeout(resolve, RETRY_DELAY * (attempt + 1)));
    }
  }
  const body = await response.text();
  let data: any = null;
  try {
    data = body ? JSON.parse(body) : null;
  } catch {
    data = null;
  }
  if (!response.ok) {
    const message = data && typeof data.message === 'string' ? data.message : response.statusText;
    throw new ApiError(message);
  }
  return data as T;
}

function post<T>(endpoint: string, body: unknown): Promise<T> {
  return request<T>(endpoint, { method: 'POST', body: JSON.stringify(body) });
}

export const api = {
  policy(path: string, wait = false): Promise<IState> {
    const query = URLExt.objectToQueryString(wait ? { path, wait: '1' } : { path });
    return request<IState>('policy' + query);
  },
  validate(path: string, lists: { allow_domains: unknown; block_domains: unknown }): Promise<IValidation> {
    return post<IValidation>('validate', { ...lists, path });
  },
  check(path: string, hosts: string[]): Promise<{ results: IHostCheck[] }> {
    return post<{ results: IHostCheck[] }>('check', { path, hosts });
  },
  confirm(path: string): Promise<IState> {
    return post<IState>('confirm', { path });
  }
};
