/**
 * A first, client-side gate on host names from the kernel: a name that is not
 * a plain DNS name (letters, digits, '-' and dots; labels of 1-63) never gets
 * an Allow button. The server's grammar (awf_kernel.policy) is the authority
 * and is asked before any button shows; this only keeps garbage from being
 * sent to it or written into metadata.
 */

const LABEL = /^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$/;

export function isHostName(value: unknown): value is string {
  if (typeof value !== 'string' || value.length === 0 || value.length > 253) {
    return false;
  }
  const name = value.endsWith('.') ? value.slice(0, -1) : value;
  const labels = name.split('.');
  if (labels.length < 2 || !labels.every(l => LABEL.test(l))) {
    return false;
  }
  return !/^[0-9]+$/.test(labels[labels.length - 1]); // 1.2.3.4 is an address
}
