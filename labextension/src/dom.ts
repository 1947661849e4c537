/**
 * Building DOM from data the kernel produced. Everything in a denial bundle
 * (and every host in the audit trail) was chosen by code in the kernel, which
 * is untrusted: text goes in with textContent only, never innerHTML, so no
 * string can become markup, a link or a script.
 */

export type Child = Node | string | null | undefined | false;

export function h(
  tag: string,
  attrs: { class?: string; title?: string; [key: string]: string | undefined } = {},
  ...children: Child[]
): HTMLElement {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === undefined) {
      continue;
    }
    if (key === 'class') {
      el.className = value;
    } else {
      el.setAttribute(key, value);
    }
  }
  append(el, ...children);
  return el;
}

export function append(el: HTMLElement, ...children: Child[]): HTMLElement {
  for (const child of children) {
    if (child === null || child === undefined || child === false) {
      continue;
    }
    el.appendChild(typeof child === 'string' ? text(child) : child);
  }
  return el;
}

/** A text node: the one way a string from the kernel or the server enters the page. */
export function text(value: unknown): Text {
  return document.createTextNode(typeof value === 'string' ? value : String(value ?? ''));
}

export function clear(el: HTMLElement): void {
  while (el.firstChild) {
    el.removeChild(el.firstChild);
  }
}

export function button(label: string, cls: string, onClick: () => void): HTMLButtonElement {
  const b = h('button', { class: `jp-Button jp-mod-styled ${cls}`, type: 'button' }, label) as HTMLButtonElement;
  b.addEventListener('click', event => {
    event.preventDefault();
    onClick();
  });
  return b;
}
