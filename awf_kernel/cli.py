"""The `awf-kernel` command. `main(argv)` returns an exit code; tests call it directly."""

from __future__ import annotations

import argparse
import json
import sys
import time

from . import __version__
from .errors import AWFError


def _install(args) -> int:
    from .kernelspec import display_name_for, install, parse_setting

    settings = dict(parse_setting(s) for s in args.set or [])
    prefix = sys.prefix if args.sys_prefix else args.prefix
    display_name = args.display_name or display_name_for(args.name)
    path = install(user=args.user, prefix=prefix, name=args.name, display_name=display_name, settings=settings)
    print(f"Installed kernel spec {args.name} ({display_name}) in {path}")
    return 0


def _build(args) -> int:
    from .images import IMAGES, build

    unknown = [i for i in args.image if i not in IMAGES]
    if unknown:
        raise AWFError(f"unknown image {unknown[0]!r}", hint=f"choose from: {', '.join(IMAGES)}")
    for name, tag in build(args.image or None).items():
        print(f"built {name}: {tag}")
    return 0


def _doctor(args) -> int:
    from .doctor import run_checks

    checks = run_checks()
    for c in checks:
        print(f"[{'ok' if c.ok else 'FAIL'}] {c.name}: {c.detail}")
        if not c.ok and c.fix:
            print(f"       fix: {c.fix}")
    bad = [c for c in checks if not c.ok]
    print("all checks passed" if not bad else f"{len(bad)} problem(s) found")
    return 0 if not bad else 1


def _audit_dir(args) -> str:
    """Where the kernel spec's provisioner (with the server's config) keeps the trail."""
    if args.audit_dir:
        return args.audit_dir
    from jupyter_client.kernelspec import NoSuchKernel

    from .check import provisioner_for

    try:
        return provisioner_for(args.kernel_name).audit_dir
    except NoSuchKernel:
        from .provisioner import AWFProvisioner

        return AWFProvisioner().audit_dir


def _broker_url(args) -> str:
    """Hub mode when the kernel spec (or --broker) names a broker: then the
    broker answers for the calling user, and nothing here reads Docker."""
    if getattr(args, "broker", None):
        return args.broker
    from .doctor import _spec_settings
    from .kernelspec import KERNEL_NAME

    return str(_spec_settings(getattr(args, "kernel_name", KERNEL_NAME)).get("broker") or "")


def _logs_from_broker(args, url: str) -> int:
    from . import audit
    from .broker.client import BrokerClient

    client = BrokerClient(url)
    kid = args.kernel_id
    if kid is None:
        kernels = client.call("list").get("kernels") or []
        if not kernels:
            raise AWFError("the broker lists no kernel of yours", hint="pass a kernel id: `awf-kernel logs ID`")
        kid = kernels[-1]["kernel_id"]
    if args.summary or args.follow:
        raise AWFError("--summary and --follow read the audit folder, which only the broker can read on a hub",
                       hint="use `awf-kernel logs ID` or `--json` there")
    for r in client.call("logs", kernel_id=kid).get("records") or []:
        print(_json_line(r) if args.json else audit.format_record(r), flush=True)
    return 0


def _logs(args) -> int:
    from . import audit
    from .naming import valid_kernel_id

    if args.kernel_id is not None:
        try:
            valid_kernel_id(args.kernel_id)
        except ValueError as exc:
            raise AWFError(str(exc), hint="`awf-kernel logs` with no id shows the latest kernel") from None
    url = "" if args.audit_dir else _broker_url(args)
    if url:
        return _logs_from_broker(args, url)
    audit_dir = _audit_dir(args)
    folder = audit.find_kernel(audit_dir, args.kernel_id)
    if folder is None:
        which = f"kernel {args.kernel_id}" if args.kernel_id else "any kernel"
        raise AWFError(f"no audit trail for {which} in {audit.safe_text(audit_dir)}",
                       hint="start a kernel first; `ls` that folder lists the kernel ids")
    recs = audit.read_kernel(folder)
    if args.summary:
        s = audit.summary(recs, audit.load_policy(folder))
        print(_json_line(s, indent=1) if args.json else audit.format_summary(s))
        return 0

    def emit(batch):
        for r in batch:
            print(_json_line(r) if args.json else audit.format_record(r), flush=True)

    emit(recs)
    while args.follow:
        time.sleep(0.5)
        now = audit.read_kernel(folder)
        emit(now[len(recs):])
        recs = now
    return 0


def _json_line(obj, indent=None) -> str:
    """JSON whose strings are `audit.safe_text` already (so `jq -r` prints them
    safely too); ensure_ascii keeps any other character out of the output."""
    from .audit import safe_text

    def clean(value):
        if isinstance(value, str):
            return safe_text(value)
        if isinstance(value, dict):
            return {safe_text(k): clean(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [clean(v) for v in value]
        return value

    return json.dumps(clean(obj), sort_keys=True, indent=indent, ensure_ascii=True)


def _check(args) -> int:
    from .check import check

    decision, text = check(args.notebook, args.target, kernel_name=args.kernel_name)
    print(text)
    return 0 if decision else 1


def _record(args) -> int:
    from .record import record

    return record(args.notebook, kernel_name=args.kernel_name, write=not args.dry_run, timeout=args.timeout)


def _gc(args) -> int:
    from .sandbox.gc import collect

    url = _broker_url(args)
    if url:
        # Hub mode: the broker collects the caller's dead kernels (root: everyone's).
        if args.all or args.dry_run:
            raise AWFError("--all and --dry-run are not available through the broker",
                           hint="run `awf-kernel gc` plainly; as root it collects every user's dead kernels")
        from .broker.client import BrokerClient

        removed = [f"pod of kernel {k}" for k in BrokerClient(url).call("gc").get("removed") or []]
    else:
        removed = collect(everything=args.all, dry_run=args.dry_run)
    for line in removed:
        print(("would remove " if args.dry_run else "removed ") + line)
    if not removed:
        print("nothing to collect")
    return 0


def _broker(args) -> int:
    from .broker.server import main as serve

    return serve(args.config, args.socket)


def _presets(args) -> int:
    from .presets import PRESETS

    for p in PRESETS.values():
        print(f"@{p.name}: {p.description}")
        for d in p.domains:
            print(f"    {d}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from .kernelspec import DISPLAY_NAME, KERNEL_NAME

    p = argparse.ArgumentParser(prog="awf-kernel", description="A Jupyter kernel in an egress-filtered Docker sandbox.")
    p.add_argument("--version", action="version", version=f"awf-kernel {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("install", help="write the awf-python kernel spec")
    where = s.add_mutually_exclusive_group()
    where.add_argument("--user", action="store_true", help="install for the current user")
    where.add_argument("--sys-prefix", action="store_true", help="install into sys.prefix (a venv/conda env)")
    where.add_argument("--prefix", metavar="DIR", help="install under DIR/share/jupyter/kernels")
    s.add_argument("--name", default=KERNEL_NAME, help=f"kernel spec name (default: {KERNEL_NAME})")
    s.add_argument("--display-name", help=f"name shown in the kernel picker (default: {DISPLAY_NAME!r}, "
                                          "or 'Python (AWF sandboxed: NAME)' with --name NAME)")
    s.add_argument("--set", action="append", metavar="SETTING=VALUE",
                   help="store a provisioner setting in the spec (JSON or comma-separated lists), repeatable")
    s.set_defaults(func=_install)

    s = sub.add_parser("build", help="build the sandbox images")
    s.add_argument("image", nargs="*", metavar="IMAGE", help="proxy and/or kernel (default: both)")
    s.set_defaults(func=_build)

    s = sub.add_parser("doctor", help="check Docker, images, kernel spec and host support")
    s.set_defaults(func=_doctor)

    s = sub.add_parser("logs", help="show a kernel's egress audit trail")
    s.add_argument("kernel_id", nargs="?", help="kernel id or prefix (default: the latest kernel)")
    s.add_argument("--json", action="store_true", help="one JSON object per line")
    s.add_argument("--follow", "-f", action="store_true", help="keep printing new entries")
    s.add_argument("--summary", action="store_true", help="per-host counts and a paste-ready allow_domains")
    s.add_argument("--kernel-name", default=KERNEL_NAME, help="kernel spec whose audit_dir setting applies")
    s.add_argument("--audit-dir", help="read this folder instead of the kernel spec's audit_dir")
    s.add_argument("--broker", metavar="URL", help="ask this broker (hub mode; default: the kernel spec's `broker`)")
    s.set_defaults(func=_logs)

    s = sub.add_parser("check", help="would this notebook's kernel be allowed to reach HOST[:PORT]? (exit 1: denied)")
    s.add_argument("notebook")
    s.add_argument("target", metavar="HOST[:PORT]")
    s.add_argument("--kernel-name", default=KERNEL_NAME, help="kernel spec whose admin settings apply")
    s.set_defaults(func=_check)

    s = sub.add_parser("record", help="run a notebook once in record mode and write the allowlist it used")
    s.add_argument("notebook")
    s.add_argument("--kernel-name", default=KERNEL_NAME)
    s.add_argument("--dry-run", action="store_true", help="show the change without writing the notebook")
    s.add_argument("--timeout", type=float, default=600, help="seconds per cell")
    s.set_defaults(func=_record)

    s = sub.add_parser("presets", help="list the named domain bundles usable as @name in allow_domains")
    s.set_defaults(func=_presets)

    s = sub.add_parser("gc", help="remove sandbox resources left by dead kernels")
    s.add_argument("--all", action="store_true", help="remove every awf-kernel pod, running or not")
    s.add_argument("--dry-run", action="store_true")
    s.add_argument("--broker", metavar="URL",
                   help="ask this broker (hub mode; default: the awf-python spec's `broker`)")
    s.set_defaults(func=_gc)

    s = sub.add_parser("broker", help="run the hub-mode broker: the only process that talks to Docker "
                                      "(run by the operator as root; see docs/broker.md)")
    s.add_argument("--config", metavar="FILE", help="the broker's config file (Python or JSON: "
                                                    "c.BrokerConfig.allow_domains = [...])")
    s.add_argument("--socket", metavar="PATH", help="listen here instead of BrokerConfig.socket_path")
    s.set_defaults(func=_broker)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except AWFError as exc:
        print(f"awf-kernel: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def entrypoint() -> None:
    sys.exit(main())
